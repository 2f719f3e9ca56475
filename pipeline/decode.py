"""Decoding image files (PNG, JPEG, TIFF) into 2-D uint8 grayscale pages.

Pillow opens every file (format check, header-only page size and count, multi-page TIFF,
16-bit, palette and alpha modes, fail-loudly on truncation). Plain 8-bit gray or RGB JPEG
and PNG pages, the common case, are decoded by OpenCV instead: identical pixels, faster,
less memory, and JPEGs optionally at a reduced scale. Colour pages keep the RED channel
(the light-red dropout boxes vanish, blue/black ink stays dark).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from pipeline.errors import CorruptFileError, InputError, LimitExceededError
from pipeline.settings import Limits
from pipeline.templates import MM_PER_INCH

PIL_FORMATS = {"png": ["PNG"], "jpeg": ["JPEG"], "tiff": ["TIFF"]}


def check_pixels(path: Path, size: tuple[int, int], limits: Limits) -> None:
    """Refuse empty pages and pages over ``limits.max_pixels`` (before decoding)."""
    w, h = size
    if w <= 0 or h <= 0:
        raise CorruptFileError(f"{path}: page has no pixels ({w}x{h})")
    if w * h > limits.max_pixels:
        raise LimitExceededError(
            f"{path}: page is {w}x{h} = {w * h:,} pixels, over limits.max_pixels="
            f"{limits.max_pixels:,} (possible decompression bomb)"
        )


class _ImageCtx:
    """``Image.open`` that maps Pillow's failures to our error types."""

    def __init__(self, path: Path, fmt: str, limits: Limits | None = None) -> None:
        self.path, self.fmt = path, fmt
        self.max_pixels = limits.max_pixels if limits is not None else None
        self.im: Image.Image | None = None

    def __enter__(self) -> Image.Image:
        old_max = Image.MAX_IMAGE_PIXELS
        try:
            with warnings.catch_warnings():
                # Our own max_pixels check decides; Pillow's warning would only be noise.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                if self.max_pixels is not None:
                    # Pillow refuses at 2x MAX_IMAGE_PIXELS (179 M px by default) during
                    # open: tie that ceiling to limits.max_pixels, so raising the limit
                    # really admits bigger pages and the header is still refused before
                    # any pixel is allocated.
                    Image.MAX_IMAGE_PIXELS = self.max_pixels
                self.im = Image.open(self.path, formats=PIL_FORMATS[self.fmt])
        except Image.DecompressionBombError as exc:
            raise LimitExceededError(
                f"{self.path}: page too large, refused before decoding (possible "
                f"decompression bomb; limits.max_pixels={self.max_pixels or old_max:,}): {exc}"
            ) from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise CorruptFileError(f"{self.path}: cannot read {self.fmt.upper()}: {exc}") from exc
        finally:
            Image.MAX_IMAGE_PIXELS = old_max
        return self.im

    def __exit__(self, *exc: object) -> None:
        if self.im is not None:
            self.im.close()


def open_image(path: Path, fmt: str, limits: Limits | None = None) -> _ImageCtx:
    """``with open_image(...) as im``: a Pillow image, its failures as our error types."""
    return _ImageCtx(path, fmt, limits)


def estimate_dpi(long_px: int, declared: float | None, long_mm: float) -> float:
    """Source dpi: the declared one when it agrees with the page size, else from the size.

    Image files often carry wrong resolution tags (72 dpi on a 300-dpi scan), so the
    declared dpi is only trusted within a third of what the page's long side implies
    (``long_px`` pixels for ``long_mm`` millimetres).
    """
    by_size = long_px * MM_PER_INCH / long_mm
    if declared is not None and 0.75 * by_size <= declared <= 1.33 * by_size:
        return float(declared)
    return by_size


def _jpeg_scale(im: Image.Image, min_dpi: float | None, long_mm: float | None) -> int:
    """The largest libjpeg scale-down (1, 2, 4 or 8) that keeps ``min_dpi`` (5 % slack)."""
    if not min_dpi or not long_mm:
        return 1
    dpi = estimate_dpi(max(im.size), _image_dpi(im), long_mm)
    return next(k for k in (8, 4, 2, 1) if k == 1 or dpi / k >= 0.95 * min_dpi)


def _complete(fmt: str, data: bytes) -> bool:
    """The file is not cut short: its end marker follows its last image data.

    JPEG: an end-of-image marker after the last start-of-scan (neither can occur inside
    entropy-coded data, where 0xFF is byte-stuffed). PNG: the IEND chunk after the last
    IDAT. Bytes after the end (some scanners pad files) are allowed.
    """
    if fmt == "jpeg":
        last, end = b"\xff\xda", b"\xff\xd9"
    else:
        last, end = b"IDAT", b"IEND"
    pos = data.rfind(last)
    return pos != -1 and data.rfind(end) > pos


_CV2_FLAGS = {  # (mode, scale) -> cv2.imread flags; EXIF orientation is ignored like Pillow
    ("L", 1): "IMREAD_GRAYSCALE", ("L", 2): "IMREAD_REDUCED_GRAYSCALE_2",
    ("L", 4): "IMREAD_REDUCED_GRAYSCALE_4", ("L", 8): "IMREAD_REDUCED_GRAYSCALE_8",
    ("RGB", 1): "IMREAD_COLOR", ("RGB", 2): "IMREAD_REDUCED_COLOR_2",
    ("RGB", 4): "IMREAD_REDUCED_COLOR_4", ("RGB", 8): "IMREAD_REDUCED_COLOR_8",
}


def _decode_fast(path: Path, fmt: str, im: Image.Image, scale: int) -> np.ndarray | None:
    """A plain 8-bit gray or RGB JPEG/PNG through OpenCV (gray, or the red channel).

    OpenCV hands libjpeg-turbo's and libpng's output over as a numpy array, without
    Pillow's per-row unpacking (into 4-byte pixels for RGB) and the copies out of it: the
    pixels are identical, the decode is faster (JPEG ~40 %) and a worker's peak memory
    lower. JPEGs may be decoded at 1/``scale`` (libjpeg then skips most of the work).
    ``None`` for anything else (16-bit, palette, alpha, gamma, cut-short files): Pillow
    then decodes, and reports what is wrong with the file.
    """
    import cv2

    if (im.mode, scale) not in _CV2_FLAGS or (fmt == "png" and scale != 1):
        return None
    if fmt == "png" and ("gamma" in im.info or "transparency" in im.info):
        return None
    data = path.read_bytes()
    if not _complete(fmt, data):
        return None
    flags = getattr(cv2, _CV2_FLAGS[im.mode, scale]) | cv2.IMREAD_IGNORE_ORIENTATION
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if img is None:
        return None
    return img if img.ndim == 2 else cv2.extractChannel(img, 2)  # BGR: red is channel 2


def decode_image_page(
    path: Path, fmt: str, page_index: int, limits: Limits, min_dpi: float | None = None,
    long_mm: float | None = None,
) -> tuple[np.ndarray, float | None]:
    """Page ``page_index`` of an image file: gray pixels and the dpi (of those pixels).

    ``min_dpi``/``long_mm``: see :func:`pipeline.ingest.load_page`.
    """
    with open_image(path, fmt, limits) as im:
        n = int(getattr(im, "n_frames", 1))
        if not 0 <= page_index < n:
            raise InputError(f"{path}: page {page_index} does not exist ({n} pages)")
        try:
            if page_index:
                im.seek(page_index)
            check_pixels(path, im.size, limits)
            if fmt in ("jpeg", "png") and n == 1:
                scale = _jpeg_scale(im, min_dpi, long_mm) if fmt == "jpeg" else 1
                fast = _decode_fast(path, fmt, im, scale)
                if fast is not None:
                    dpi = _image_dpi(im)
                    return fast, None if dpi is None else dpi * fast.shape[1] / im.size[0]
            # Truncated files must fail loudly, never decode as half-grey pages.
            ImageFile.LOAD_TRUNCATED_IMAGES = False
            im.load()
            gray = to_gray(im)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise CorruptFileError(
                f"{path}: page {page_index} cannot be decoded ({fmt.upper()}): {exc}"
            ) from exc
        return gray, _image_dpi(im)


def _image_dpi(im: Image.Image) -> float | None:
    dpi = im.info.get("dpi")
    try:
        value = float(dpi[0]) if dpi else 0.0
    except (TypeError, ValueError, IndexError):
        return None
    # 1 dpi and absurd values come from files that store an aspect ratio, not a resolution.
    return round(value, 2) if 20.0 <= value <= 4800.0 else None


def to_gray(im: Image.Image) -> np.ndarray:
    """Pillow image → 2-D uint8 (RED channel for colour; 16-bit scaled to 8-bit)."""
    mode = im.mode
    if mode == "L":
        # No convert("L"): for an L image it is only a full-page copy (~2 ms at 300 dpi).
        return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))
    if mode == "1":
        return np.ascontiguousarray(np.asarray(im.convert("L"), dtype=np.uint8))
    if mode == "RGB":
        # Pull the red band out inside Pillow: converting the whole RGB page to numpy and
        # slicing it cost ~50 ms per 300-dpi page (3 bytes/pixel copied twice); same pixels.
        return np.array(im.getchannel(0), dtype=np.uint8)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(im).astype(np.float64)
        top = 1.0 if mode == "F" and arr.size and arr.max() <= 1.0 else 65535.0
        return np.rint(np.clip(arr, 0.0, top) * (255.0 / top)).astype(np.uint8)
    if mode == "LA":
        return _red_over_white(np.asarray(im.convert("RGBA")))
    if mode in ("RGBA", "PA", "P") and (mode != "P" or "transparency" in im.info):
        return _red_over_white(np.asarray(im.convert("RGBA")))
    rgb = np.asarray(im.convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, 0])


def _red_over_white(rgba: np.ndarray) -> np.ndarray:
    # Transparent pixels are paper: composite the red channel over white.
    red = rgba[:, :, 0].astype(np.float32)
    alpha = rgba[:, :, 3].astype(np.float32) / 255.0
    return np.rint(red * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
