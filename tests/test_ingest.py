"""Ingest: discovery, format sniffing, every supported encoding, and hostile inputs."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.hostile_inputs import minimal_pdf  # the same hand-written PDF the bench uses
from pipeline.errors import (
    CorruptFileError,
    EncryptedPdfError,
    LimitExceededError,
    UnsupportedFormatError,
)
from pipeline.ingest import OUTPUT_MARKER, count_pages, discover, file_sha256, load_page
from pipeline.settings import Limits

LIMITS = Limits.model_validate({})
DROPOUT = (235, 140, 140)
INK = (20, 30, 120)  # dark blue pen


def _colour_page() -> Image.Image:
    """White page with a dropout-red box and a blue ink stroke."""
    a = np.full((40, 60, 3), 255, np.uint8)
    a[5:35, 5:25] = DROPOUT
    a[10:30, 40:44] = INK
    return Image.fromarray(a, "RGB")


def _load(path: Path, page: int = 0, dpi: int = 100) -> np.ndarray:
    img = load_page(path, page, LIMITS, dpi).image
    assert img.dtype == np.uint8 and img.ndim == 2
    return img




# ------------------------------------------------------------------ encodings


def test_png_colour_uses_red_channel_and_reads_dpi(tmp_path: Path) -> None:
    p = tmp_path / "a.png"
    _colour_page().save(p, dpi=(300, 300))
    page = load_page(p, 0, LIMITS, 100)
    img = page.image
    assert img.shape == (40, 60)
    assert img[20, 15] == DROPOUT[0]  # dropout box nearly vanishes (235 of 255)
    assert img[20, 42] == INK[0]  # blue ink stays dark
    assert page.dpi == pytest.approx(300, abs=0.5)
    assert page.key.page == 0 and page.key.file_sha256 == file_sha256(p)


def test_jpeg_gray(tmp_path: Path) -> None:
    p = tmp_path / "a.jpg"
    Image.fromarray(np.full((32, 48), 200, np.uint8), "L").save(p, quality=95)
    img = _load(p)
    assert img.shape == (32, 48) and abs(int(img.mean()) - 200) <= 2


def test_cmyk_jpeg_and_palette_png(tmp_path: Path) -> None:
    cmyk = tmp_path / "c.jpg"
    _colour_page().convert("CMYK").save(cmyk, quality=95)
    img = _load(cmyk)
    assert img[20, 42] < 80 and img[2, 2] > 230  # ink dark, paper light
    pal = tmp_path / "p.png"
    _colour_page().convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(pal)
    img = _load(pal)
    assert img[20, 42] < 60 and img[20, 15] > 200 and img[2, 2] > 240


def test_sixteen_bit_png_is_scaled(tmp_path: Path) -> None:
    p = tmp_path / "g16.png"
    a = np.zeros((10, 10), np.uint16)
    a[:, 5:] = 65535
    a[0, 0] = 32896  # 128 * 257
    Image.fromarray(a).save(p)
    img = _load(p)
    assert img[5, 7] == 255 and img[5, 2] == 0 and img[0, 0] == 128


def test_rgba_transparent_is_paper(tmp_path: Path) -> None:
    p = tmp_path / "t.png"
    a = np.zeros((8, 8, 4), np.uint8)  # fully transparent black
    a[0, 0] = (0, 0, 0, 255)
    Image.fromarray(a, "RGBA").save(p)
    img = _load(p)
    assert img[4, 4] == 255 and img[0, 0] == 0


def test_multipage_tiff_and_g4(tmp_path: Path) -> None:
    p = tmp_path / "m.tif"
    frames = [Image.fromarray(np.full((20, 30), v, np.uint8), "L") for v in (10, 120, 250)]
    frames[0].save(p, save_all=True, append_images=frames[1:], dpi=(200, 200))
    assert count_pages(p, LIMITS) == 3
    assert [int(_load(p, i)[0, 0]) for i in range(3)] == [10, 120, 250]
    g4 = tmp_path / "fax.tiff"
    bits = np.full((64, 64), 255, np.uint8)
    bits[10:50, 30:34] = 0
    Image.fromarray(bits, "L").convert("1").save(g4, compression="group4", dpi=(204, 196))
    page = load_page(g4, 0, LIMITS, 100)
    assert set(np.unique(page.image)) == {0, 255} and page.image[20, 31] == 0
    assert page.dpi == pytest.approx(204, abs=0.5)


def test_pdf_multipage_rendered_at_dpi(tmp_path: Path) -> None:
    p = tmp_path / "doc.pdf"
    pages = [_colour_page(), Image.new("RGB", (60, 40), (0, 0, 0))]
    pages[0].save(p, save_all=True, append_images=pages[1:], resolution=50)
    assert count_pages(p, LIMITS) == 2
    first = load_page(p, 0, LIMITS, 100)
    h, w = first.image.shape  # 60x40 px at 50 dpi → 2x (pdfium may round up a pixel)
    assert first.dpi == 100 and abs(h - 80) <= 1 and abs(w - 120) <= 1
    assert first.image[40, 84] < 60 and first.image[40, 30] > 200  # ink dark, dropout gone
    assert _load(p, 1, 100).max() < 30
    assert count_pages(tmp_path / "doc.pdf", LIMITS) == 2


def test_handwritten_pdf_writer_output(tmp_path: Path) -> None:
    p = tmp_path / "blank.pdf"
    p.write_bytes(minimal_pdf(pages=3))
    assert count_pages(p, LIMITS) == 3
    assert _load(p, 2, 72).shape == (72, 144)


# ------------------------------------------------------------------ hostile inputs


@pytest.mark.parametrize(
    ("name", "payload", "error"),
    [
        ("empty.png", b"", CorruptFileError),
        (
            "random.png",
            bytes(np.random.default_rng(0).integers(0, 256, 512, np.uint8)),
            UnsupportedFormatError,
        ),
        ("text.pdf", b"this is not a pdf at all\n", UnsupportedFormatError),
        ("broken.pdf", b"%PDF-1.4\nnot really\n", CorruptFileError),
        ("locked.pdf", minimal_pdf(encrypt=True), EncryptedPdfError),
        ("nopages.pdf", minimal_pdf(pages=0), CorruptFileError),
    ],
)
def test_bad_files_raise_specific_errors(
    tmp_path: Path, name: str, payload: bytes, error: type[Exception]
) -> None:
    p = tmp_path / name
    p.write_bytes(payload)
    with pytest.raises(error) as info:
        count_pages(p, LIMITS)
    assert name in str(info.value)
    with pytest.raises(error):
        load_page(p, 0, LIMITS, 100)


def test_random_bytes_message_names_the_problem(tmp_path: Path) -> None:
    p = tmp_path / "x.png"
    p.write_bytes(b"GIF89a not supported either")
    with pytest.raises(UnsupportedFormatError, match="not PNG, JPEG, TIFF or PDF"):
        count_pages(p, LIMITS)


def test_truncated_png_is_corrupt(tmp_path: Path) -> None:
    p = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (200, 200), np.uint8)).save(p)
    p.write_bytes(p.read_bytes()[:3000])
    with pytest.raises(CorruptFileError):
        load_page(p, 0, LIMITS, 100)


def _textured(shape: tuple[int, ...]) -> np.ndarray:
    """Smooth gradients plus noise: JPEG-compressible yet different in every pixel."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    base = (xx * 3 + yy * 2) % 256
    if len(shape) == 3:
        base = np.stack([base, (base + 80) % 256, (255 - base)], axis=2)
    return np.clip(base + rng.integers(-20, 21, shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(("suffix", "mode"), [(".jpg", "RGB"), (".jpg", "L"),
                                              (".png", "RGB"), (".png", "L")])
def test_opencv_fast_path_gives_pillows_pixels(tmp_path: Path, suffix: str, mode: str) -> None:
    """Plain JPEG/PNG pages are decoded by OpenCV: exactly the pixels Pillow gives."""
    from pipeline.decode import to_gray

    p = tmp_path / f"a{suffix}"
    Image.fromarray(_textured((90, 70, 3) if mode == "RGB" else (90, 70)), mode).save(p)
    with Image.open(p) as im:
        im.load()
        expected = to_gray(im)
    got = _load(p)
    assert np.array_equal(got, expected)
    with p.open("ab") as fh:  # bytes after the end marker (some scanners pad files)
        fh.write(b"padding after the end")
    assert np.array_equal(_load(p), expected)


def test_truncated_jpeg_is_corrupt_not_half_grey(tmp_path: Path) -> None:
    """libjpeg fills a cut-short JPEG with grey and only warns: such files must not take
    the OpenCV path, and Pillow then reports them."""
    p = tmp_path / "cut.jpg"
    Image.fromarray(_textured((200, 200, 3)), "RGB").save(p, quality=95)
    p.write_bytes(p.read_bytes()[:4000])
    with pytest.raises(CorruptFileError):
        load_page(p, 0, LIMITS, 100)


def test_jpeg_decoded_at_reduced_scale_when_the_dpi_allows(tmp_path: Path) -> None:
    """A 300-dpi JPEG read for 150-dpi work is decoded at half size (dpi halved too);
    never below what the reader needs, and PNGs always at full size."""
    from pipeline.decode import estimate_dpi

    long_mm = 600 / 300 * 25.4  # a 600-px page side is 300 dpi on this "paper"
    jpg, png = tmp_path / "a.jpg", tmp_path / "a.png"
    Image.fromarray(_textured((600, 400)), "L").save(jpg, dpi=(300, 300), quality=95)
    Image.fromarray(_textured((600, 400)), "L").save(png, dpi=(300, 300))
    half = load_page(jpg, 0, LIMITS, 100, min_dpi=150, long_mm=long_mm)
    assert half.image.shape == (300, 200) and half.dpi == pytest.approx(150)
    full = _load(jpg)
    small = full.reshape(300, 2, 200, 2).mean(axis=(1, 3))  # what area averaging gives
    assert np.abs(half.image - small).mean() < 3.0
    assert load_page(jpg, 0, LIMITS, 100, min_dpi=200, long_mm=long_mm).image.shape == (600, 400)
    assert load_page(jpg, 0, LIMITS, 100, min_dpi=70, long_mm=long_mm).image.shape == (150, 100)
    assert load_page(png, 0, LIMITS, 100, min_dpi=150, long_mm=long_mm).image.shape == (600, 400)
    # an untagged page is judged by its size; a wrong tag (72 dpi) is overruled by it
    assert estimate_dpi(600, None, long_mm) == pytest.approx(300)
    assert estimate_dpi(600, 72.0, long_mm) == pytest.approx(300)


def _png_header_only(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    body = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = zlib.compress(b"\x00" * 64)
    body += (
        struct.pack(">I", len(idat))
        + b"IDAT"
        + idat
        + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    )
    return b"\x89PNG\r\n\x1a\n" + body


def test_pixel_bomb_header_refused_before_decoding(tmp_path: Path) -> None:
    p = tmp_path / "bomb.png"
    p.write_bytes(_png_header_only(60000, 60000))
    with pytest.raises(LimitExceededError, match=r"pixels|bomb"):
        count_pages(p, LIMITS)
    with pytest.raises(LimitExceededError):
        load_page(p, 0, LIMITS, 100)


def test_limits_file_bytes_pages_and_pdf_pixels(tmp_path: Path) -> None:
    p = tmp_path / "a.png"
    Image.new("L", (100, 100), 255).save(p)
    with pytest.raises(LimitExceededError, match="max_file_bytes"):
        count_pages(p, Limits.model_validate({"max_file_bytes": 10}))
    with pytest.raises(LimitExceededError, match="max_pixels"):
        load_page(p, 0, Limits.model_validate({"max_pixels": 5000}), 100)
    pdf = tmp_path / "many.pdf"
    pdf.write_bytes(minimal_pdf(pages=4))
    with pytest.raises(LimitExceededError, match="max_pdf_pages"):
        count_pages(pdf, Limits.model_validate({"max_pdf_pages": 3}))
    with pytest.raises(LimitExceededError):  # 2"x1" at 600 dpi = 720k px
        load_page(pdf, 0, Limits.model_validate({"max_pixels": 500_000}), 600)


# ------------------------------------------------------------------ discovery


def test_discover_is_sorted_recursive_and_skips_noise(tmp_path: Path) -> None:
    root = tmp_path / "in"
    (root / "b").mkdir(parents=True)
    (root / "a").mkdir()
    for rel in ("b/2.png", "a/1.tif", "z.pdf", "a/.hidden.png"):
        (root / rel).write_bytes(b"x")
    (root / "notes.txt").write_text("readme")
    Image.new("L", (4, 4)).save(root / "scan.dat", format="TIFF")  # sniffed, not by name
    out = root / "out"
    out.mkdir()
    (out / OUTPUT_MARKER).touch()
    (out / "crop.png").write_bytes(b"x")
    (root / "loop").symlink_to(root, target_is_directory=True)
    found = [p.relative_to(root).as_posix() for p in discover([root])]
    assert found == ["a/1.tif", "b/2.png", "scan.dat", "z.pdf"]
    assert discover([root]) == discover([root])  # deterministic
    assert [p.name for p in discover([root / "notes.txt"])] == ["notes.txt"]  # explicit wins
    excl = discover([root], exclude=[root / "b"])
    assert "b/2.png" not in [p.relative_to(root).as_posix() for p in excl]


def test_discover_missing_input(tmp_path: Path) -> None:
    from pipeline.errors import DataNotFoundError

    with pytest.raises(DataNotFoundError):
        discover([tmp_path / "nope"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read anything")
def test_unreadable_file_is_input_error(tmp_path: Path) -> None:
    from pipeline.errors import InputError

    p = tmp_path / "secret.png"
    Image.new("L", (4, 4)).save(p)
    p.chmod(0)
    try:
        with pytest.raises(InputError, match="cannot read"):
            file_sha256(p)
    finally:
        p.chmod(0o644)
