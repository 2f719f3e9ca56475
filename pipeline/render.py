"""Printable blank forms and the form-id code strip, drawn from a :class:`Template`.

Everything is drawn from the template's millimetre geometry, so a page rendered at
``WORK_DPI`` *is* the template-pixel reference image that registration warps scans onto.

Colours (see the shared conventions): paper white, marks/text/code strip black, digit
boxes and date separators in the dropout colour :data:`DROPOUT_RGB`. A grayscale render
draws the dropout colour as :data:`DROPOUT_GRAY`, the Rec. 601 luma of the dropout colour,
because that is what a grayscale scanner records for it (boxes stay visible as light grey
and segmentation must remove them; colour scans drop them by taking the red channel).

The code strip (top centre, vertically centred on the top marks) is a row of
:data:`CODE_SLOTS` square-ish cells: a 2-cell start bar, a quiet cell, 8 data cells (filled
= 1, most significant bit first), a quiet cell, and the end pattern filled-empty-filled.
Start and end differ, so a strip read in the wrong direction (page turned 180°) fails the
guard check instead of yielding a wrong code; :func:`decode_code_strip` reports which.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import OutputError, UsageError
from pipeline.templates import WORK_DPI, FormField, Rect, Template

DROPOUT_RGB = (235, 140, 140)
DROPOUT_GRAY = round(0.299 * 235 + 0.587 * 140 + 0.114 * 140)  # 168
PRINT_DPI = 300.0

CODE_BITS = 8
CODE_CELL_W_MM = 4.0
CODE_CELL_H_MM = 6.0
START_PATTERN = (1, 1, 0)  # start bar (2 cells) + quiet cell
END_PATTERN = (0, 1, 0, 1)  # quiet cell + end pattern filled-empty-filled
CODE_SLOTS = len(START_PATTERN) + CODE_BITS + len(END_PATTERN)

BOX_LINE_MM = 0.3  # wall thickness of digit boxes
TEXT_MM = 2.6  # cap height of labels
TITLE_MM = 5.0
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_TITLE_FONT = cv2.FONT_HERSHEY_DUPLEX


def code_bits(code: int) -> list[int]:
    """The 8 data bits of a form code, most significant first."""
    if not 0 <= code < 2**CODE_BITS:
        raise ValueError(f"form code {code} does not fit in {CODE_BITS} bits")
    return [(code >> (CODE_BITS - 1 - i)) & 1 for i in range(CODE_BITS)]


def code_strip_mm(t: Template) -> list[tuple[Rect, int]]:
    """Every cell of the code strip left to right, with its printed state (1 = filled).

    Start pattern, the 8 data cells of ``t.code`` and the end pattern: the complete layout
    a reader needs to verify the guards as well as read the bits.
    """
    total_w = CODE_SLOTS * CODE_CELL_W_MM
    x0 = (t.width_mm - total_w) / 2.0
    # Vertically centred on the top marks so the top 25 mm stay free for the title.
    y0 = t.marks.inset_mm + (t.marks.size_mm - CODE_CELL_H_MM) / 2.0
    states = [*START_PATTERN, *code_bits(t.code), *END_PATTERN]
    return [
        ((x0 + i * CODE_CELL_W_MM, y0, CODE_CELL_W_MM, CODE_CELL_H_MM), s)
        for i, s in enumerate(states)
    ]


def code_cells_mm(t: Template) -> list[Rect]:
    """The 8 data cells of the code strip (mm, ``x, y, w, h``), most significant bit first."""
    strip = code_strip_mm(t)
    return [r for r, _ in strip[len(START_PATTERN) : len(START_PATTERN) + CODE_BITS]]


def decode_code_strip(states: Sequence[int | bool]) -> tuple[int | None, bool]:
    """Decode the :data:`CODE_SLOTS` cell states read left to right at the strip cells.

    Returns ``(code, upside_down)``: ``upside_down`` is True when the cells only make sense
    read right to left (the page is turned 180° relative to the pose used for reading).
    ``(None, False)`` when neither direction has valid guards.
    """
    s = [int(bool(v)) for v in states]
    if len(s) != CODE_SLOTS:
        raise ValueError(f"expected {CODE_SLOTS} code cells, got {len(s)}")
    n0, n1 = len(START_PATTERN), len(START_PATTERN) + CODE_BITS
    for upside_down, seq in ((False, s), (True, s[::-1])):
        if tuple(seq[:n0]) == START_PATTERN and tuple(seq[n1:]) == END_PATTERN:
            return int("".join(map(str, seq[n0:n1])), 2), upside_down
    return None, False


def read_code_strip(
    image: np.ndarray, t: Template, dpi: float = WORK_DPI
) -> tuple[int | None, bool]:
    """Read the code strip of a page already in template pixels (grayscale, ink dark).

    Samples the central 60 % of every cell (so a slightly misaligned pose still reads) and
    splits dark from light at the midpoint between the darkest and lightest cell.
    """
    means: list[float] = []
    h, w = image.shape[:2]
    for (x, y, cw, ch), _ in code_strip_mm(t):
        x0, x1 = _px(x + 0.2 * cw, dpi), _px(x + 0.8 * cw, dpi)
        y0, y1 = _px(y + 0.2 * ch, dpi), _px(y + 0.8 * ch, dpi)
        x0, x1, y0, y1 = max(0, x0), min(w, x1), max(0, y0), min(h, y1)
        patch = image[y0:y1, x0:x1]
        means.append(float(patch.mean()) if patch.size else 255.0)
    lo, hi = min(means), max(means)
    if hi - lo < 60:  # no contrast: no strip here (blank area or wrong pose)
        return None, False
    mid = (lo + hi) / 2.0
    return decode_code_strip([m < mid for m in means])


def _px(mm: float, dpi: float) -> int:
    return round(mm * dpi / 25.4)


def _fill_mm(img: np.ndarray, r: Rect, dpi: float, color: int | tuple[int, ...]) -> None:
    x, y, w, h = r
    img[_px(y, dpi) : _px(y + h, dpi), _px(x, dpi) : _px(x + w, dpi)] = color


def _text(
    img: np.ndarray,
    text: str,
    org_mm: tuple[float, float],
    height_mm: float,
    dpi: float,
    color: int | tuple[int, ...],
    *,
    font: int = _FONT,
    align: str = "left",
) -> None:
    """Draw ``text`` with its baseline at ``org_mm``; ``align`` left/center/right."""
    (_w1, h1), _ = cv2.getTextSize(text, font, 1.0, 1)
    scale = max(height_mm * dpi / 25.4 / max(h1, 1), 0.05)
    thick = max(1, round(scale * 1.6))
    (w, _h), _ = cv2.getTextSize(text, font, scale, thick)
    x = _px(org_mm[0], dpi)
    if align == "center":
        x -= w // 2
    elif align == "right":
        x -= w
    cv2.putText(img, text, (x, _px(org_mm[1], dpi)), font, scale, color, thick, cv2.LINE_AA)


def _draw_field(
    img: np.ndarray, f: FormField, dpi: float, ink: int | tuple[int, ...], drop: int | tuple
) -> None:
    lw = max(1, round(BOX_LINE_MM * dpi / 25.4))
    boxes = f.boxes_mm()
    x0, y0, bw, bh = f.bounds_mm()
    if f.label_pos == "left":
        _text(img, f.label, (x0 - 3.0, y0 + bh / 2 + TEXT_MM / 2), TEXT_MM, dpi, ink,
              align="right")
    else:
        _text(img, f.label, (x0, y0 - 1.8), TEXT_MM, dpi, ink)

    def rect(r: Rect) -> None:
        x, y, w, h = r
        p0 = (_px(x, dpi), _px(y, dpi))
        p1 = (_px(x + w, dpi), _px(y + h, dpi))
        cv2.rectangle(img, p0, p1, drop, lw, cv2.LINE_8)

    if f.kind == "comb":
        # One frame with the inner walls shared and printed as short ticks from the bottom.
        rect((x0, y0, bw, bh))
        for x, y, _w, h in boxes[1:]:
            cv2.line(img, (_px(x, dpi), _px(y + h, dpi)), (_px(x, dpi), _px(y + 0.65 * h, dpi)),
                     drop, lw, cv2.LINE_8)
        return
    for r in boxes:
        rect(r)
    if f.kind == "date" and f.groups:
        ends, acc = [], 0
        for g in f.groups[:-1]:
            acc += g
            ends.append(acc)
        for i in ends:
            # Separator centred in the gap between the last box of a group and the next.
            xl = boxes[i - 1][0] + boxes[i - 1][2]
            xr = boxes[i][0]
            cx, y, h = (xl + xr) / 2, boxes[i][1], boxes[i][3]
            half = min((xr - xl) * 0.3, 1.5)
            if f.separator == "/":
                cv2.line(img, (_px(cx - half, dpi), _px(y + 0.85 * h, dpi)),
                         (_px(cx + half, dpi), _px(y + 0.15 * h, dpi)), drop, lw, cv2.LINE_AA)
            elif f.separator == "-":
                cv2.line(img, (_px(cx - half, dpi), _px(y + h / 2, dpi)),
                         (_px(cx + half, dpi), _px(y + h / 2, dpi)), drop, lw, cv2.LINE_AA)
            else:
                cv2.circle(img, (_px(cx, dpi), _px(y + 0.8 * h, dpi)),
                           max(1, _px(0.45, dpi)), drop, -1, cv2.LINE_AA)


def render_blank(t: Template, dpi: float = WORK_DPI, color: bool = False) -> np.ndarray:
    """Draw the blank form: ``uint8`` gray ``(H, W)`` or RGB ``(H, W, 3)`` when ``color``.

    Size is ``t.size_px(dpi)``; marks and code cells are exact pixel fills of their mm
    rectangles (``round(mm * dpi / 25.4)`` on both edges), so readers can rely on them.
    """
    w, h = t.size_px(dpi)
    ink: int | tuple[int, ...] = (0, 0, 0) if color else 0
    drop: int | tuple[int, ...] = DROPOUT_RGB if color else DROPOUT_GRAY
    img = np.full((h, w, 3) if color else (h, w), 255, np.uint8)
    s = t.marks.size_mm
    for cx, cy in t.mark_centers_mm():
        _fill_mm(img, (cx - s / 2, cy - s / 2, s, s), dpi, ink)
    for r, filled in code_strip_mm(t):
        if filled:
            _fill_mm(img, r, dpi, ink)
    top = t.marks.inset_mm + t.marks.size_mm
    _text(img, t.title, (t.width_mm / 2, top + 7.0), TITLE_MM, dpi, ink, font=_TITLE_FONT,
          align="center")
    _text(img, "Write one digit per box in black or blue ink.", (t.width_mm / 2, top + 13.0),
          TEXT_MM * 0.9, dpi, ink, align="center")
    for f in t.fields:
        _draw_field(img, f, dpi, ink, drop)
    foot_y = t.height_mm - t.marks.inset_mm - t.marks.size_mm / 2 + TEXT_MM * 0.35
    _text(img, f"form {t.id} v{t.version} - code {t.code}", (t.width_mm / 2, foot_y),
          TEXT_MM * 0.8, dpi, ink, align="center")
    return img


def write_blank(t: Template, path: str | Path, dpi: float = PRINT_DPI, color: bool = True) -> Path:
    """Write the blank form as PDF (printed size exactly ``width_mm × height_mm``) or PNG."""
    from PIL import Image

    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".pdf", ".png"):
        raise UsageError(f"cannot write a form as '{suffix or p.name}'", hint="Use .pdf or .png.")
    img = render_blank(t, dpi=dpi, color=color)
    pil = Image.fromarray(img)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".pdf":
            # Per-axis resolution from the rounded pixel size keeps the page exactly A4 (etc.).
            w_px, h_px = pil.size
            res = (w_px * 25.4 / t.width_mm, h_px * 25.4 / t.height_mm)
            pil.save(p, "PDF", dpi=res, quality=95, subsampling=0, title=t.title)
        else:
            pil.save(p, "PNG", dpi=(dpi, dpi), optimize=True)
    except OSError as exc:
        raise OutputError(f"cannot write {p}: {exc}") from exc
    return p


def render_pdf(t: Template, path: str | Path, dpi: float = PRINT_DPI) -> Path:
    """Write a printable colour PDF of the blank form (a raster at ``dpi``)."""
    return write_blank(t, Path(path).with_suffix(".pdf"), dpi=dpi, color=True)
