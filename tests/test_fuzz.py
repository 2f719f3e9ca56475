"""Property/fuzz tests: random bytes and random images never crash ingest, registration,
segmentation or a page worker — each ends as a result or a specific (non-internal) error.

Example counts are small (each test well under ~20 s on a shared core); the seeds are
fixed by hypothesis' database-free derandomized mode so a failure reproduces.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.errors import InputError, RegistrationError
from pipeline.ingest import count_pages, load_page
from pipeline.recognize import PageItem, debug_file_name, prepare_page
from pipeline.records import FieldCrop, Page, PageKey, RegisteredPage
from pipeline.settings import Limits, RunSettings
from pipeline.templates import load_templates

TEMPLATES = load_templates()
LIMITS = Limits.model_validate({"max_pixels": 4_000_000})
FUZZ = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
# Cheap per example (small files): many more examples in the same time.
FUZZ_CHEAP = settings(FUZZ, max_examples=100)
MAGICS = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"%PDF-1.4\n"]


def _ingest_outcome(path: Path) -> str:
    """``ok`` or the error code; anything but an InputError propagates (= a crash)."""
    try:
        n = count_pages(path, LIMITS)
        for i in range(min(n, 3)):
            img = load_page(path, i, LIMITS, 72).image
            assert img.dtype == np.uint8 and img.ndim == 2 and img.size > 0
    except InputError as exc:
        assert str(path) in str(exc) and exc.hint  # says which file and what to do
        return exc.code
    return "ok"


@FUZZ_CHEAP
@given(magic=st.sampled_from(MAGICS), body=st.binary(max_size=2048))
def test_random_bytes_never_crash_ingest(tmp_path: Path, magic: bytes, body: bytes) -> None:
    p = tmp_path / "fuzz.png"
    p.write_bytes(magic + body)
    assert _ingest_outcome(p) != "input"  # a specific subclass, not the generic one


def _encode(arr: np.ndarray, mode: str, fmt: str) -> bytes:
    im = Image.fromarray(arr)
    if mode != im.mode:
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


@FUZZ_CHEAP
@given(
    h=st.integers(1, 48), w=st.integers(1, 48), seed=st.integers(0, 2**16),
    mode_fmt=st.sampled_from([("L", "PNG"), ("RGB", "PNG"), ("RGBA", "PNG"), ("P", "PNG"),
                              ("1", "PNG"), ("I;16", "PNG"), ("LA", "PNG"), ("L", "JPEG"),
                              ("RGB", "JPEG"), ("CMYK", "JPEG"), ("L", "TIFF"), ("RGB", "TIFF"),
                              ("1", "TIFF"), ("CMYK", "TIFF"), ("F", "TIFF"), ("I", "TIFF")]),
    cut=st.one_of(st.none(), st.floats(0.05, 0.95)),
)
def test_random_images_decode_or_fail_cleanly(
    tmp_path: Path, h: int, w: int, seed: int, mode_fmt: tuple[str, str], cut: float | None
) -> None:
    mode, fmt = mode_fmt
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)
    data = _encode(arr, mode, fmt)
    if cut is not None:
        data = data[: max(1, int(len(data) * cut))]  # truncated at a random point
    p = tmp_path / f"img.{fmt.lower()}"
    p.write_bytes(data)
    got = _ingest_outcome(p)
    if cut is None:
        assert got == "ok"
        assert load_page(p, 0, LIMITS, 72).image.shape == (h, w)


def _random_page(seed: int, h: int, w: int, kind: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "noise":
        return rng.integers(0, 256, (h, w), np.uint8)
    img = np.full((h, w), 255 if kind != "black" else 0, np.uint8)
    if kind == "blobs":
        for _ in range(rng.integers(1, 40)):
            y, x = rng.integers(0, h), rng.integers(0, w)
            img[y : y + rng.integers(1, 60), x : x + rng.integers(1, 60)] = 0
    return img


PAGE_KINDS = st.sampled_from(["noise", "blank", "black", "blobs"])


@FUZZ
@given(h=st.integers(1, 700), w=st.integers(1, 700), seed=st.integers(0, 2**16),
       kind=PAGE_KINDS, dpi=st.sampled_from([None, 1.0, 72.0, 150.0, 4800.0]))
def test_registration_registers_or_raises_registration_error(
    h: int, w: int, seed: int, kind: str, dpi: float | None
) -> None:
    from pipeline.register import register_page

    page = Page(PageKey("fuzz.png", "0" * 64, 0), _random_page(seed, h, w, kind), dpi)
    try:
        reg = register_page(page, TEMPLATES, 0.5)
    except RegistrationError:
        return
    t = next(t for t in TEMPLATES if t.id == reg.template_id)
    assert reg.image.shape == t.size_px()[::-1] or reg.image.shape == t.size_px()


@FUZZ
@given(seed=st.integers(0, 2**16), kind=PAGE_KINDS, tpl=st.sampled_from(TEMPLATES))
def test_segmentation_of_random_pages_gives_valid_crops(seed: int, kind: str, tpl: object) -> None:
    from pipeline.segment import segment_page
    from pipeline.templates import Template

    assert isinstance(tpl, Template)
    w, h = tpl.size_px()
    # register_page always hands over a template-sized page (segment_page's contract).
    img = _random_page(seed, h, w, kind)
    reg = RegisteredPage(PageKey("fuzz.png", "0" * 64, 0), tpl.id, img,
                         (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), 0.9, 0, "marks")
    crops = segment_page(reg, tpl)
    assert {c.field for c in crops} == {f.name for f in tpl.fields}
    for c in crops:
        assert isinstance(c, FieldCrop)
        assert c.pixels.shape == (28, 28) and c.pixels.dtype == np.uint8


@FUZZ_CHEAP
@given(magic=st.sampled_from(MAGICS), body=st.binary(max_size=1024),
       name=st.sampled_from(["a.png", "b.tif", "c.pdf", "d.jpg"]))
def test_page_worker_turns_any_file_into_a_result_or_error_row(
    tmp_path: Path, magic: bytes, body: bytes, name: str
) -> None:
    p = tmp_path / name
    p.write_bytes(magic + body)
    s = RunSettings.model_validate({"limits": {"max_pixels": 4_000_000}})
    work = prepare_page(PageItem(str(p), str(p), "0" * 64, 0), TEMPLATES, s)
    assert work.status in ("read", "unregistered", "error")
    if work.status != "read":
        assert work.error is not None and work.error.error_type != "internal", work.error


@settings(max_examples=200, deadline=None, derandomize=True)
@given(source=st.text(min_size=1, max_size=400), page=st.integers(0, 9999))
def test_debug_file_names_are_safe(source: str, page: int) -> None:
    name = debug_file_name(source, page)
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert name.isprintable() and not name.startswith(".") and name.endswith(".png")
    assert len(name.encode("utf-8", "surrogateescape")) <= 200
    assert Path("/debug", name).parent == Path("/debug")


def test_debug_file_names_do_not_collide() -> None:
    assert debug_file_name("a/b.png", 0) != debug_file_name("a__b.png", 0)
    assert debug_file_name("a/b.png", 0) != debug_file_name("a_b.png", 0)


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


_SAMPLE = Path(__file__).resolve().parents[1] / "sample_scans" / "scan_0006.png"


@pytest.mark.skipif(not _SAMPLE.exists(), reason="sample_scans/scan_0006.png not present")
@settings(FUZZ, max_examples=8)
@given(angle=st.floats(-180, 180), scale=st.floats(0.25, 0.8), crop=st.floats(0.0, 0.4),
       noise=st.integers(0, 120), seed=st.integers(0, 2**16))
def test_mangled_real_pages_register_or_raise_registration_error(
    angle: float, scale: float, crop: float, noise: int, seed: int
) -> None:
    """A real form page rotated, shrunk, cropped and noised: a result or a clean refusal."""
    import cv2

    from pipeline.register import register_page

    img = np.asarray(Image.open(_SAMPLE).convert("L"))
    img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    h, w = img.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    img = cv2.warpAffine(img, m, (w, h), borderValue=255)
    img = img[: max(1, round(h * (1 - crop))), : max(1, round(w * (1 - crop / 2)))]
    rng = np.random.default_rng(seed)
    img = np.clip(img.astype(np.int16) + rng.integers(-noise, noise + 1, img.shape), 0,
                  255).astype(np.uint8)
    try:
        reg = register_page(Page(PageKey("m.png", "0" * 64, 0), img, None), TEMPLATES, 0.5)
    except RegistrationError:
        return
    assert reg.template_id in {t.id for t in TEMPLATES} and 0.5 <= reg.score <= 1.0
