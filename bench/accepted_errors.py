"""Where the accepted errors of a synthetic run come from: every wrong digit of an accepted
field traced back to the MNIST test image the synthesizer wrote there.

The synthesizer is deterministic: page ``i`` of seed ``S`` is drawn from
``numpy.random.default_rng([S, i])``. This module replays the pages that hold an accepted
error with a digit bank that records which image it handed out (the same ``make_page`` the
synthesizer ran, so nothing is re-implemented), checks that the replay wrote the values
the truth file says, and reads each traced MNIST image *as MNIST ships it* with the same
reader. An error whose source image the reader also misreads on MNIST itself is the digit
set's, not the scan's or the segmenter's.

    python -m bench.accepted_errors --results OUT --truth SCANS/truth --seed S --pages N [--json]

``--seed`` and ``--pages`` are the ones given to ``formdigits synth --digits mnist --split
test`` (default formats and dpi range). Needs the MNIST test set (``FORMDIGITS_DATA``).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.handwriting import DigitBank


@dataclass(frozen=True)
class RecordingBank(DigitBank):
    """A :class:`DigitBank` that remembers the dataset index of every image it hands out."""

    index: tuple[tuple[int, ...], ...] = ()  # index[d][j] = dataset index of crops[d][j]
    picked: list[tuple[int, int]] = field(default_factory=list, compare=False)

    @classmethod
    def of(cls, images: np.ndarray, labels: np.ndarray) -> RecordingBank:
        """Built like :meth:`DigitBank.from_arrays` (same crops in the same order)."""
        base = DigitBank.from_arrays(images, labels)
        index: list[list[int]] = [[] for _ in range(10)]
        for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
            if (img > 30).any() and 0 <= int(lab) <= 9:  # the images from_arrays keeps
                index[int(lab)].append(i)
        return cls(base.crops, tuple(tuple(x) for x in index))

    def pick(self, digit: int, rng: np.random.Generator) -> np.ndarray:
        """The same draw as :meth:`DigitBank.pick`, recorded as ``(digit, dataset index)``."""
        j = int(rng.integers(0, len(self.crops[digit])))
        self.picked.append((digit, self.index[digit][j]))
        return self.crops[digit][j]


def _sources(bank: RecordingBank, seed: int, pages: int, wanted: set[tuple[str, int]]
             ) -> dict[tuple[str, int, str], list[int]]:
    """``(file stem, page, field) -> dataset index per written digit`` for the ``wanted``
    pages, by replaying the synthesizer."""
    from pipeline.handwriting import FILL_DPI
    from pipeline.render import render_blank
    from pipeline.synth import FORMATS, make_page, plan_files
    from pipeline.templates import load_templates

    templates = load_templates(())
    blanks: dict[str, np.ndarray] = {}
    out: dict[tuple[str, int, str], list[int]] = {}
    for plan in plan_files(pages, FORMATS, seed):
        stem = Path(plan.name).stem
        for j, (i, color) in enumerate(zip(plan.pages, plan.colors, strict=True)):
            if (stem, j) not in wanted:
                continue
            t = templates[i % len(templates)]
            if t.id not in blanks:
                blanks[t.id] = render_blank(t, FILL_DPI, color=True)
            bank.picked.clear()
            _, truth = make_page(t, blanks[t.id], bank, np.random.default_rng([seed, i]),
                                 dpi=plan.dpi, color=color)
            picks = iter(bank.picked)
            for f in t.fields:  # fill_page's order: fields in order, digits left to right
                value = str(truth["fields"][f.name].get("value") or "")
                out[(stem, j, f.name)] = [next(picks)[1] for _ in value]
    return out


def trace(results: Path, truth_dir: Path, seed: int, pages: int, digits: str = "mnist",
          split: str = "test") -> dict[str, Any]:
    """Every wrong digit of the accepted fields of ``results`` with its source image in
    the digit set the pages were synthesized from (``formdigits synth --digits --split``)."""
    from models.datasets import load_digits
    from models.second_opinion import load_reader
    from pipeline.score import load_truth, truth_pairs

    truth = load_truth(truth_dir)
    wrong = [(r, tv) for r, tv in truth_pairs(results, truth_dir)
             if r.status == "accepted" and r.value != tv]
    ds = load_digits(digits, split)
    bank = RecordingBank.of(ds.images, ds.labels)
    wanted = {(Path(str(r.source)).stem, int(r.page)) for r, _ in wrong}
    sources = _sources(bank, seed, pages, wanted)
    for (stem, page, name), idx in sources.items():  # the replay must be the synth run
        value = str(truth[(stem, page)]["fields"][name].get("value") or "")
        if len(idx) != len(value):
            raise SystemExit(f"replay of {stem} page {page} does not match its truth: "
                             "wrong --seed or --pages?")
    reader = load_reader("default", "auto", device="cpu")
    rows: list[dict[str, Any]] = []
    for r, tv in wrong:
        key = (Path(str(r.source)).stem, int(r.page), str(r.field))
        if len(r.value) != len(tv):
            rows.append({"field": key[2], "source": key[0], "page": key[1], "read": r.value,
                         "true": tv, "mnist_index": None, "note": "length differs"})
            continue
        for k, (a, b) in enumerate(zip(r.value, tv, strict=True)):
            if a == b:
                continue
            i = sources[key][k]
            p = reader.predict_proba(ds.images[i : i + 1])[0]
            rows.append({"field": key[2], "source": key[0], "page": key[1], "position": k,
                         "read": a, "true": b, "field_confidence": round(float(r.confidence), 4),
                         "mnist_index": i, "mnist_label": int(ds.labels[i]),
                         "reader_on_mnist": int(p.argmax()),
                         "reader_on_mnist_confidence": round(float(p.max()), 4)})
    traced = [x for x in rows if x.get("mnist_index") is not None]
    hard = [x for x in traced if x["reader_on_mnist"] != x["mnist_label"]]
    uses = Counter(x["mnist_index"] for x in traced)
    return {"accepted_wrong_fields": len(wrong), "wrong_digits": len(rows),
            "misread_on_mnist_too": len(hard),
            "distinct_images": len(uses),
            "images_used_more_than_once": {str(k): v for k, v in uses.items() if v > 1},
            "digits": rows}


def main(argv: Sequence[str] | None = None) -> int:
    """Print the trace (a table, or JSON with ``--json``)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", type=Path, required=True)
    ap.add_argument("--truth", type=Path, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--pages", type=int, required=True)
    ap.add_argument("--digits", default="mnist", help="the synth's --digits (default mnist)")
    ap.add_argument("--split", default="test", help="the synth's --split (default test)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    from pipeline.errors import DataNotFoundError

    try:
        out = trace(a.results, a.truth, a.seed, a.pages, a.digits, a.split)
    except DataNotFoundError as exc:
        print(f"digit set {a.digits}:{a.split} unavailable ({exc}); nothing traced")
        return 0
    if a.json:
        print(json.dumps(out, indent=1))
        return 0
    for x in out["digits"]:
        if x.get("mnist_index") is None:
            print(f"{x['source']} p{x['page']} {x['field']}: read {x['read']}, true "
                  f"{x['true']} ({x['note']})")
            continue
        print(f"{x['source']} p{x['page']} {x['field']}[{x['position']}]: read {x['read']} "
              f"for {x['true']} (field {x['field_confidence']:.3f}); MNIST test "
              f"#{x['mnist_index']}, which the reader reads as {x['reader_on_mnist']} "
              f"({x['reader_on_mnist_confidence']:.3f}) on MNIST itself")
    print(f"{out['accepted_wrong_fields']} accepted fields wrong, {out['wrong_digits']} "
          f"wrong digits, {out['misread_on_mnist_too']} of them misread on MNIST too; "
          f"{out['distinct_images']} distinct images, used more than once: "
          f"{out['images_used_more_than_once'] or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
