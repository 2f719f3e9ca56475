"""Ingest: find input files and decode their pages into grayscale ``Page`` records.

The format is taken from the file's magic bytes, never from its name. Every limit in
:class:`pipeline.settings.Limits` is checked *before* pixels are allocated: file size from
``stat``, page size from the image header (or PDF page box × dpi), page count from the
container. Image pixels are decoded by :mod:`pipeline.decode`; PDF pages are rendered
here. Colour pages become grayscale by keeping the RED channel (the light-red dropout
boxes vanish, blue/black ink stays dark).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.decode import check_pixels, decode_image_page, open_image
from pipeline.errors import (
    CorruptFileError,
    DataNotFoundError,
    EncryptedPdfError,
    InputError,
    LimitExceededError,
    UnsupportedFormatError,
)
from pipeline.records import Page, PageKey
from pipeline.settings import Limits

log = logging.getLogger(__name__)

# An output folder carries this marker so a later run never reads its own results back.
OUTPUT_MARKER = ".formdigits-output"
KNOWN_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".tif", ".tiff", ".pdf"})
# Scans saved in a format we cannot read must become an ``unsupported_format`` error row,
# not vanish silently (a scanner set to BMP would otherwise lose every page without a word).
UNSUPPORTED_IMAGE_SUFFIXES = frozenset({
    ".bmp", ".dib", ".gif", ".webp", ".heic", ".heif", ".avif", ".jp2", ".j2k", ".jpf",
    ".jxl", ".pbm", ".pgm", ".ppm", ".pnm", ".pcx", ".djvu", ".xps", ".oxps",
})
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),  # BigTIFF
    (b"MM\x00+", "tiff"),
)
_PDF_MAGIC = b"%PDF-"
_POINTS_PER_INCH = 72.0


# --------------------------------------------------------------------------- discovery


def discover(inputs: Sequence[Path], *, exclude: Sequence[Path] = ()) -> list[Path]:
    """Input files in deterministic order.

    Files named explicitly are always taken. Folders are walked recursively in sorted
    order; inside them hidden entries, formdigits output folders (and ``exclude``) are
    skipped, and a file is taken when its suffix is a known image/PDF suffix or its
    first bytes say it is one (so ``scan.dat`` holding a TIFF is read, a README is not).
    Symlinks are followed but each real folder/file is visited once (no loops).
    """
    excluded = {_real(p) for p in exclude}
    seen: set[str] = set()
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise DataNotFoundError(
                f"input {p} does not exist", hint="Check the path; pass files or folders."
            )
        if p.is_dir():
            found.extend(_walk(p, excluded, seen))
        elif _real(p) not in seen:
            seen.add(_real(p))
            found.append(p)
    return found


def _real(p: Path) -> str:
    return os.path.realpath(p)


def _walk(root: Path, excluded: set[str], seen: set[str]) -> Iterator[Path]:
    real = _real(root)
    if real in seen or real in excluded or (root / OUTPUT_MARKER).exists():
        return
    seen.add(real)
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        log.warning("cannot list folder %s: %s (skipped)", root, exc)
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = root / entry.name
        if entry.is_dir():
            yield from _walk(path, excluded, seen)
        elif entry.is_file() and _real(path) not in seen and _looks_like_input(path):
            seen.add(_real(path))
            yield path


def _looks_like_input(path: Path) -> bool:
    if path.suffix.lower() in KNOWN_SUFFIXES | UNSUPPORTED_IMAGE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            return sniff_format(fh.read(1024)) is not None
    except OSError:
        return False


# --------------------------------------------------------------------------- format


def sniff_format(head: bytes) -> str | None:
    """``png``/``jpeg``/``tiff``/``pdf`` from the first bytes of a file, else ``None``."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    # PDF readers accept the header anywhere in the first KiB (junk before it happens).
    return "pdf" if _PDF_MAGIC in head[:1024] else None


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of the file's bytes (the identity of an input across runs)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise InputError(f"{path}: cannot read file: {exc.strerror or exc}") from exc
    return h.hexdigest()


def detect_format(path: Path, limits: Limits) -> str:
    """Check the size limit and return the format from the magic bytes (or raise)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(1024)
    except OSError as exc:
        raise InputError(f"{path}: cannot read file: {exc.strerror or exc}") from exc
    if size == 0:
        raise CorruptFileError(f"{path}: the file is empty (0 bytes)")
    if size > limits.max_file_bytes:
        raise LimitExceededError(
            f"{path}: file is {size:,} bytes, over limits.max_file_bytes={limits.max_file_bytes:,}"
        )
    fmt = sniff_format(head)
    if fmt is None:
        named = path.suffix.lower().lstrip(".") or "no suffix"
        raise UnsupportedFormatError(
            f"{path}: content is not PNG, JPEG, TIFF or PDF (named '{named}', "
            f"first bytes {head[:8]!r})"
        )
    return fmt


# --------------------------------------------------------------------------- pages


def count_pages(path: Path, limits: Limits) -> int:
    """Number of pages in the file (1 for PNG/JPEG); raises an ``InputError`` subclass."""
    fmt = detect_format(path, limits)
    if fmt == "pdf":
        with _open_pdf(path) as pdf:
            n = len(pdf)
    else:
        with open_image(path, fmt, limits) as im:
            check_pixels(path, im.size, limits)
            n = int(getattr(im, "n_frames", 1)) if fmt == "tiff" else 1
    if n < 1:
        raise CorruptFileError(f"{path}: the file holds no pages")
    if n > limits.max_pdf_pages:
        raise LimitExceededError(
            f"{path}: {n} pages, over limits.max_pdf_pages={limits.max_pdf_pages}"
        )
    return n


def load_page(
    path: Path, page_index: int, limits: Limits, pdf_dpi: int, *, source: str | None = None,
    sha256: str | None = None, min_dpi: float | None = None, long_mm: float | None = None,
) -> Page:
    """Decode one page as a 2-D uint8 grayscale ``Page`` (ink dark on light paper).

    ``source``/``sha256`` fill the ``PageKey`` (computed here when not given). With
    ``min_dpi`` (what the reader needs) and ``long_mm`` (the longest page side it
    expects), a JPEG page is decoded at the smallest libjpeg scale (1/2, 1/4, 1/8) that
    keeps at least ``min_dpi``: the pipeline works at 150 dpi, and decoding a 300-dpi
    JPEG at half size skips most of the inverse DCT and colour conversion.
    """
    fmt = detect_format(path, limits)
    if fmt == "pdf":
        image, dpi = _render_pdf_page(path, page_index, limits, pdf_dpi)
    else:
        image, dpi = decode_image_page(path, fmt, page_index, limits, min_dpi, long_mm)
    key = PageKey(
        source=source if source is not None else str(path),
        file_sha256=sha256 if sha256 is not None else file_sha256(path),
        page=page_index,
    )
    return Page(key=key, image=image, dpi=dpi)


# --------------------------------------------------------------------------- PDF


class _PdfCtx:
    """``PdfDocument`` that maps pdfium's failures to our error types and always closes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pdf: Any = None

    def __enter__(self) -> Any:
        import pypdfium2 as pdfium

        try:
            self.pdf = pdfium.PdfDocument(str(self.path))
        except pdfium.PdfiumError as exc:
            # pdfium's error code can be stale after a failed load, so also look for the
            # /Encrypt dictionary itself before calling the file password protected.
            if "password" in str(exc).lower() and _mentions_encrypt(self.path):
                raise EncryptedPdfError(f"{self.path}: the PDF is password protected") from exc
            if "password" in str(exc).lower():
                # Stale pdfium code (seen on PDFs with 0 pages): do not tell the user to
                # look for a password the file does not have.
                raise CorruptFileError(
                    f"{self.path}: cannot open PDF: the file is damaged or has no pages"
                ) from exc
            raise CorruptFileError(f"{self.path}: cannot open PDF: {exc}") from exc
        return self.pdf

    def __exit__(self, *exc: object) -> None:
        if self.pdf is not None:
            self.pdf.close()


def _mentions_encrypt(path: Path) -> bool:
    tail = b""
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            if b"/Encrypt" in tail + block:
                return True
            tail = block[-16:]
    return False


def _open_pdf(path: Path) -> _PdfCtx:
    return _PdfCtx(path)


def _render_pdf_page(
    path: Path, page_index: int, limits: Limits, pdf_dpi: int
) -> tuple[np.ndarray, float | None]:
    import pypdfium2 as pdfium

    with _open_pdf(path) as pdf:
        n = len(pdf)
        if n == 0:
            raise CorruptFileError(f"{path}: the PDF has no pages")
        if not 0 <= page_index < n:
            raise InputError(f"{path}: page {page_index} does not exist ({n} pages)")
        try:
            page = pdf[page_index]
            try:
                w_pt, h_pt = page.get_size()
                scale = pdf_dpi / _POINTS_PER_INCH
                check_pixels(path, (round(w_pt * scale), round(h_pt * scale)), limits)
                # RGB (not pdfium's luminance grayscale) so the red-channel rule applies.
                bitmap = page.render(scale=scale, rev_byteorder=True)
                arr = bitmap.to_numpy()
                gray = np.ascontiguousarray(arr[:, :, 0]) if arr.ndim == 3 else arr
                bitmap.close()
            finally:
                page.close()
        except pdfium.PdfiumError as exc:
            raise CorruptFileError(f"{path}: page {page_index} cannot be rendered: {exc}") from exc
    return gray.astype(np.uint8, copy=False), float(pdf_dpi)
