"""Builders of bad, odd and hostile input files for the reliability bench and its tests.

Every case names the file it writes into an input folder and the outcomes that count as
correct for it: ``read`` (every page read), ``unregistered_page`` (an error row per page),
a file-level error type (``corrupt_file``, ``limit_exceeded``, …), or ``ignored`` (not an
input at all: discovery must skip it without hanging or looping). Variants of a real form
page also carry ``same_as``: their readings must equal those of the untouched page.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

Builder = Callable[[Path, Image.Image], None]


@dataclass(frozen=True)
class Case:
    """One input file (or folder entry) and what a correct outcome is."""

    name: str  # file name inside the input folder
    what: str  # the row label in docs/RELIABILITY.md
    build: Builder
    expect: frozenset[str]
    same_as: str | None = None  # readings must equal those of this (clean) file
    pages: int = 1  # pages a reader must account for (0 for ignored entries)


# --------------------------------------------------------------------------- byte builders


def png_header_only(w: int, h: int) -> bytes:
    """A valid PNG header claiming ``w``×``h`` pixels with (almost) no pixel data."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    body = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = zlib.compress(b"\x00" * 64)
    body += struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(
        ">I", zlib.crc32(b"IDAT" + idat))
    return b"\x89PNG\r\n\x1a\n" + body


def minimal_pdf(pages: int = 1, encrypt: bool = False) -> bytes:
    """A hand-written PDF of blank pages (optionally with an unopenable /Encrypt)."""
    objs = ["<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{3 + i} 0 R" for i in range(pages))
    objs.append(f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>")
    objs += ["<< /Type /Page /Parent 2 0 R /MediaBox [0 0 144 72] >>"] * pages
    if encrypt:
        objs.append("<< /Filter /Standard /V 1 /R 2 /O <" + "11" * 32 + "> /U <" + "22" * 32
                    + "> /P -4 >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, o in enumerate(objs, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{o}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{off:010d} 00000 n \n".encode() for off in offsets)
    trailer = f"<< /Size {len(objs) + 1} /Root 1 0 R"
    if encrypt:
        trailer += f" /Encrypt {len(objs)} 0 R /ID [<{'ab' * 16}> <{'ab' * 16}>]"
    out += f"trailer\n{trailer} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def _encoded(page: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    page.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _write(data: bytes | Callable[[Image.Image], bytes]) -> Builder:
    def build(path: Path, page: Image.Image) -> None:
        path.write_bytes(data(page) if callable(data) else data)
    return build


def _save(convert: Callable[[Image.Image], Image.Image], **kw: Any) -> Builder:
    def build(path: Path, page: Image.Image) -> None:
        convert(page).save(path, **kw)
    return build


def _tagged(path: Path, page: Image.Image) -> None:
    """The page as PNG with its file name in a text chunk: same pixels, distinct content
    (identical bytes would be skipped as a duplicate of the clean page)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("case", path.name)
    page.save(path, format="PNG", dpi=_dpi(page), pnginfo=info)


def _dpi(page: Image.Image) -> tuple[float, float]:
    d = page.info.get("dpi", (200, 200))
    return float(d[0]), float(d[1])


# --------------------------------------------------------------------------- page variants


def _blank(page: Image.Image) -> Image.Image:
    return Image.new("L", page.size, 255)


def _unknown_form(page: Image.Image) -> Image.Image:
    """A page of some other form: lines, boxes and text, no registration marks or code."""
    import cv2

    a = np.full((page.height, page.width), 255, np.uint8)
    for i in range(12):
        y = 200 + i * 150
        cv2.rectangle(a, (150, y), (page.width - 150, y + 90), 0, 2)
        cv2.putText(a, f"Item {i}: ____", (170, y + 60), cv2.FONT_HERSHEY_SIMPLEX, 1.5, 0, 3)
    return Image.fromarray(a, "L")


def _fax72(page: Image.Image) -> Image.Image:
    """72 dpi, bilevel: a poor fax of the page."""
    f = 72.0 / _dpi(page)[0]
    small = page.convert("L").resize((round(page.width * f), round(page.height * f)),
                                     Image.Resampling.BILINEAR)
    return small.point(lambda v: 255 if v > 160 else 0).convert("1")


def _gray16(page: Image.Image) -> Image.Image:
    return Image.fromarray(np.asarray(page.convert("L"), np.uint16) * 257)


def _palette(page: Image.Image) -> Image.Image:
    return page.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16)


def _truncated(fmt: str, keep: float = 0.5, **kw: object) -> Builder:
    def cut(page: Image.Image) -> bytes:
        data = _encoded(page, fmt, **kw)
        return data[: int(len(data) * keep)]
    return _write(cut)


def _hundred_pdf(path: Path, page: Image.Image) -> None:
    # One small JPEG page object repeated: a 100-page PDF of ~100 KiB rendered per page.
    small = page.convert("L").resize((page.width // 2, page.height // 2))
    small.save(path, format="PDF", save_all=True, append_images=[small] * 99,
               resolution=_dpi(page)[0] / 2)


def _loop(path: Path, _page: Image.Image) -> None:
    path.symlink_to(".", target_is_directory=True)


def _dangling(path: Path, _page: Image.Image) -> None:
    path.symlink_to(path.parent / "does-not-exist.png")


def _fifo(path: Path, _page: Image.Image) -> None:
    os.mkfifo(path)  # opening it would block forever: discovery must not try


def cases() -> list[Case]:
    """Every hostile/odd input of the bench (the clean page is ``clean.png``)."""
    rnd = bytes(np.random.default_rng(8).integers(0, 256, 4096, np.uint8))
    keep = _tagged
    read, ign = frozenset({"read"}), frozenset({"ignored"})
    unreg = frozenset({"unregistered_page"})
    return [
        Case("clean.png", "clean form page (reference)", keep, read),
        Case("zero_byte.png", "zero-byte file", _write(b""), frozenset({"corrupt_file"})),
        Case("truncated.png", "truncated PNG (half the bytes)", _truncated("PNG"),
             frozenset({"corrupt_file"})),
        Case("truncated.jpg", "truncated JPEG (half the bytes)", _truncated("JPEG"),
             frozenset({"corrupt_file"})),
        Case("truncated.tif", "truncated TIFF (half the bytes)",
             _truncated("TIFF", compression="tiff_lzw"), frozenset({"corrupt_file"})),
        Case("random_bytes.png", "random bytes named .png", _write(rnd),
             frozenset({"unsupported_format"})),
        Case("text.pdf", "text file named .pdf", _write(b"Dear office,\nnot a PDF.\n" * 20),
             frozenset({"unsupported_format"})),
        Case("notes.txt", "non-image file in the folder", _write(b"meeting notes\n"), ign, pages=0),
        Case("picture.bmp", "image in an unsupported format (BMP)",
             _save(lambda p: p, format="BMP"), frozenset({"unsupported_format"})),
        Case("bomb.png", "PNG header claiming 60,000×60,000 px",
             _write(png_header_only(60_000, 60_000)), frozenset({"limit_exceeded"})),
        Case("encrypted.pdf", "password-protected PDF", _write(minimal_pdf(encrypt=True)),
             frozenset({"encrypted_pdf"})),
        Case("corrupt.pdf", "corrupt PDF (header, then garbage)",
             _write(b"%PDF-1.7\n" + rnd), frozenset({"corrupt_file"})),
        Case("zero_pages.pdf", "PDF with 0 pages", _write(minimal_pdf(pages=0)),
             frozenset({"corrupt_file"})),
        Case("hundred_pages.pdf", "100-page PDF (limit 500 by default)", _hundred_pdf, read,
             same_as="clean.png", pages=100),
        Case("blank.png", "blank page", _save(_blank, format="PNG"), unreg),
        Case("unknown_form.png", "page of an unknown form", _save(_unknown_form, format="PNG"),
             unreg),
        Case("upside_down.png", "upside-down page",
             _save(lambda p: p.rotate(180), format="PNG", dpi=(200, 200)), read,
             same_as="clean.png"),
        Case("fax72.tif", "72-dpi bilevel fax-quality page",
             _save(_fax72, format="TIFF", compression="group4", dpi=(72, 72)),
             frozenset({"read", "unregistered_page"}), same_as="clean.png"),
        Case("colour.png", "RGB colour image", _save(lambda p: p.convert("RGB"), format="PNG"),
             read, same_as="clean.png"),
        Case("gray16.png", "16-bit grayscale PNG", _save(_gray16, format="PNG"), read,
             same_as="clean.png"),
        Case("cmyk.jpg", "CMYK JPEG", _save(lambda p: p.convert("CMYK"), format="JPEG",
                                           quality=95), read, same_as="clean.png"),
        Case("palette.png", "palette (16-colour) PNG", _save(_palette, format="PNG"), read,
             same_as="clean.png"),
        Case("loop", "symlink loop (folder → itself)", _loop, ign, pages=0),
        Case("dangling.png", "dangling symlink named .png", _dangling, ign, pages=0),
        Case("pipe.png", "named pipe (FIFO) named .png", _fifo, ign, pages=0),
        Case("scan with spaces ñ 東京 #1.png", "name with spaces and non-ASCII", keep, read,
             same_as="clean.png"),
        Case("a..b...png", "name with '..' runs", keep, read, same_as="clean.png"),
        Case(".hidden.png", "hidden file (leading dot: skipped by design)", keep, ign, pages=0),
        Case("$(touch PWNED); rm -rf ~.png", "name with shell metacharacters", keep, read,
             same_as="clean.png"),
        Case("line\nbreak\\back.png", "name with newline and backslash", keep, read,
             same_as="clean.png"),
        Case("x" * 240 + ".png", "240-character file name", keep, read, same_as="clean.png"),
    ]


def build_folder(folder: Path, page: Image.Image, only: list[Case] | None = None) -> list[Case]:
    """Write every case (or ``only``) into ``folder``; returns the cases written."""
    folder.mkdir(parents=True, exist_ok=True)
    chosen = cases() if only is None else only
    for case in chosen:
        case.build(folder / case.name, page)
    return chosen
