"""Writing real handwritten digits into a rendered form (synthetic filled pages).

Digits come from a labelled digit set (white ink on black, e.g. MNIST); each is cut to its
bounding box, scaled to the box, thinned or thickened, slanted a little and composited as
dark ink (black or dark blue) onto an RGB page rendered at :data:`FILL_DPI`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.templates import FormField, Template

FILL_DPI = 300.0
INK_COLORS = {  # RGB; both stay dark in the red channel, so dropout keeps them
    "black": (22, 22, 28),
    "blue": (28, 40, 120),
}


@dataclass(frozen=True)
class DigitBank:
    """Handwritten digit images grouped by label, cut to their ink bounding boxes."""

    crops: tuple[tuple[np.ndarray, ...], ...]  # crops[d] = float32 images in [0, 1]

    @classmethod
    def from_arrays(cls, images: np.ndarray, labels: np.ndarray) -> DigitBank:
        """Build from ``(N, H, W)`` uint8 white-on-black images and ``(N,)`` labels."""
        by: list[list[np.ndarray]] = [[] for _ in range(10)]
        for img, lab in zip(images, labels, strict=True):
            ys, xs = np.nonzero(img > 30)
            if ys.size == 0 or not 0 <= int(lab) <= 9:
                continue
            crop = img[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
            by[int(lab)].append(crop.astype(np.float32) / 255.0)
        missing = [d for d in range(10) if not by[d]]
        if missing:
            raise ValueError(f"the digit set has no images of {missing}")
        return cls(tuple(tuple(b) for b in by))

    def pick(self, digit: int, rng: np.random.Generator) -> np.ndarray:
        """A random image of ``digit``."""
        pool = self.crops[digit]
        return pool[int(rng.integers(0, len(pool)))]


@dataclass(frozen=True)
class Pen:
    """How one writer writes on one page: ink colour, darkness, stroke change."""

    color: tuple[int, int, int]
    darkness: float  # peak ink opacity
    stroke: int  # < 0 thin the strokes (erode), > 0 thicken (dilate), in pixels at FILL_DPI
    slant_deg: float


def sample_pen(rng: np.random.Generator, color_page: bool) -> Pen:
    """A random pen; on grayscale pages blue ink looks like black anyway."""
    name = "blue" if color_page and rng.random() < 0.45 else "black"
    # MNIST strokes scaled to a 9 mm box are ~1 mm wide; real pens are 0.4-0.8 mm.
    stroke = int(rng.choice([-3, -3, -2, -2, -1, 0]))
    return Pen(INK_COLORS[name], float(rng.uniform(0.72, 1.0)), stroke,
               float(rng.normal(0.0, 6.0)))


def ink_patch(src: np.ndarray, height_px: float, pen: Pen, rng: np.random.Generator) -> np.ndarray:
    """Scale one digit image to ``height_px`` and apply the pen: float32 opacity in [0, 1]."""
    h, w = src.shape
    s = height_px / h
    nw, nh = max(2, round(w * s * rng.uniform(0.9, 1.15))), max(2, round(height_px))
    img = cv2.resize(src, (nw, nh), interpolation=cv2.INTER_CUBIC)
    # Pad so slant and dilation have room, then slant around the centre.
    pad = max(4, nh // 6)
    img = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0.0)
    shear = np.tan(np.radians(pen.slant_deg + rng.normal(0.0, 3.0)))
    cy = img.shape[0] / 2
    m = np.array([[1.0, -shear, shear * cy], [0.0, 1.0, 0.0]], np.float32)
    img = cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), flags=cv2.INTER_LINEAR)
    k = max(-3, pen.stroke + int(rng.integers(-1, 1)))  # -4 leaves hairlines at 150 dpi
    if k > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
        img = cv2.dilate(img, kernel)
    elif k < 0:
        img = thin_strokes(img, -k)
    # MNIST edges are soft: rescale so the stroke core is opaque whatever the erosion left.
    img = np.clip(img * (1.3 / max(float(img.max()), 1e-3)), 0.0, 1.0)
    return img * pen.darkness


def thin_strokes(img: np.ndarray, k: int) -> np.ndarray:
    """Make strokes ``k`` pixels thinner on each side without breaking them.

    Plain erosion wipes out the thin parts of a stroke (the narrow top of a 0, the join of
    a 4) and leaves a different figure; a fine pen draws the same path, only narrower. So
    the eroded image is united with the strokes' centre line (a morphological skeleton,
    widened to the pen's minimum width of 3 px at :data:`FILL_DPI`, about 0.25 mm).
    """
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
    eroded = cv2.erode(img, kernel)
    binary: np.ndarray = (img > 0.5).astype(np.uint8)
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    skeleton: np.ndarray = np.zeros(binary.shape, np.uint8)
    while binary.any():  # Lantuejoul: the union of (erosion minus its opening)
        opened = cv2.morphologyEx(binary, cv2.MORPH_OPEN, cross)
        skeleton = np.maximum(skeleton, binary - np.minimum(binary, opened))
        binary = cv2.erode(binary, cross)
    # A skeleton of a digit-sized image can have one-pixel gaps on diagonals: close them.
    core = cv2.dilate(cv2.morphologyEx(skeleton, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8)),
                      np.ones((3, 3), np.uint8))
    core = cv2.GaussianBlur(core.astype(np.float32), (3, 3), 0.8)
    return np.maximum(eroded, np.minimum(core, img.max())).astype(np.float32)


def composite(page: np.ndarray, patch: np.ndarray, cx: float, cy: float,
              color: tuple[int, int, int]) -> None:
    """Blend opacity ``patch`` centred at ``(cx, cy)`` into the RGB ``page`` (in place)."""
    ph, pw = patch.shape
    x0, y0 = round(cx - pw / 2), round(cy - ph / 2)
    H, W = page.shape[:2]
    px0, py0 = max(0, -x0), max(0, -y0)
    x0c, y0c = max(0, x0), max(0, y0)
    x1c, y1c = min(W, x0 + pw), min(H, y0 + ph)
    if x1c <= x0c or y1c <= y0c:
        return
    a = patch[py0 : py0 + (y1c - y0c), px0 : px0 + (x1c - x0c), None]
    region = page[y0c:y1c, x0c:x1c].astype(np.float32)
    ink = np.asarray(color, np.float32)
    page[y0c:y1c, x0c:x1c] = (region * (1.0 - a) + ink * a + 0.5).astype(np.uint8)


def _bbox_px(r: tuple[float, float, float, float], dpi: float) -> tuple[float, float, float, float]:
    k = dpi / 25.4
    return r[0] * k, r[1] * k, r[2] * k, r[3] * k


def write_boxes(page: np.ndarray, f: FormField, boxes: list[str | None], bank: DigitBank,
                pen: Pen, rng: np.random.Generator, dpi: float = FILL_DPI,
                origin: tuple[float, float] = (0.0, 0.0)) -> None:
    """Write one digit per box (``None`` = leave empty) for boxes/comb/date fields;
    ``origin`` is ``page``'s top-left in page px at ``dpi`` (a region of the page)."""
    for r, ch in zip(f.boxes_mm(), boxes, strict=True):
        if ch is None:
            continue
        x, y, w, h = _bbox_px(r, dpi)
        x, y = x - origin[0], y - origin[1]
        patch = box_patch(bank.pick(int(ch), rng), w, h, pen, rng)
        dx, dy = rng.normal(0.0, 0.06 * w), rng.normal(0.0, 0.05 * h)
        if rng.random() < 0.05:  # careless writer: the digit crosses a box wall
            dx += rng.choice([-1.0, 1.0]) * 0.22 * w
            dy += rng.uniform(0.0, 0.15) * h
        composite(page, patch, x + w / 2 + dx, y + h / 2 + dy, pen.color)


def box_patch(src: np.ndarray, box_w: float, box_h: float, pen: Pen,
              rng: np.random.Generator) -> np.ndarray:
    """One digit as a writer puts it in a ``box_w`` x ``box_h`` px box: 60-95 % of the box
    height, and narrower where it would not fit the box's width (opacity patch)."""
    patch = ink_patch(src, box_h * rng.uniform(0.6, 0.95), pen, rng)
    a, b = _ink_span(patch)
    if b - a > 0.95 * box_w:  # people write narrower in a narrow box
        fx = 0.95 * box_w / (b - a)
        patch = cv2.resize(patch, None, fx=fx, fy=1.0, interpolation=cv2.INTER_AREA)
    return patch


def layout_string(f: FormField, value: str, bank: DigitBank, pen: Pen,
                  rng: np.random.Generator, dpi: float = FILL_DPI
                  ) -> list[tuple[np.ndarray, float, float]]:
    """Where a writer puts each digit of ``value`` in a string field, left to right.

    Returns ``(opacity patch, centre x, centre y)`` per digit in page px at ``dpi``;
    neighbours may touch or overlap (negative gaps). Used by :func:`write_string` and by
    the piece-verifier's training data (``models.pieces``), which needs each digit's ink.
    """
    x, y, w, h = _bbox_px(f.boxes_mm()[0], dpi)
    height = h * rng.uniform(0.5, 0.8)
    patches = [ink_patch(bank.pick(int(ch), rng), height, pen, rng) for ch in value]
    # Patches carry padding; advance by the ink width plus a gap that is sometimes negative.
    inks = [_ink_span(p) for p in patches]
    gaps = [rng.uniform(-0.18, 0.35) * height * 0.6 for _ in patches]
    total = sum(b - a for a, b in inks) + sum(gaps[:-1])
    scale = min(1.0, 0.9 * w / max(total, 1.0))
    if scale < 1.0:  # too long for the box: write smaller, as people do
        patches = [cv2.resize(p, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
                   for p in patches]
        inks = [_ink_span(p) for p in patches]
        gaps = [g * scale for g in gaps]
        total = sum(b - a for a, b in inks) + sum(gaps[:-1])
    cursor = x + rng.uniform(0.03, max(0.04, (w - total) / w * 0.6)) * w
    baseline = y + h / 2 + rng.normal(0.0, 0.04 * h)
    placed = []
    for p, (a, b), g in zip(patches, inks, gaps, strict=True):
        placed.append((p, cursor - a + p.shape[1] / 2, baseline + rng.normal(0.0, 0.03 * h)))
        cursor += (b - a) + g
    return placed


def write_string(page: np.ndarray, f: FormField, value: str, bank: DigitBank, pen: Pen,
                 rng: np.random.Generator, dpi: float = FILL_DPI) -> None:
    """Write ``value`` left to right in a string field; neighbours may touch or overlap."""
    for p, cx, cy in layout_string(f, value, bank, pen, rng, dpi):
        composite(page, p, cx, cy, pen.color)


def _ink_span(p: np.ndarray) -> tuple[int, int]:
    cols = np.nonzero(p.max(axis=0) > 0.1)[0]
    return (int(cols[0]), int(cols[-1]) + 1) if cols.size else (0, p.shape[1])


def boxes_for(f: FormField, value: str) -> list[str | None]:
    """Per-box digits of a boxes/comb/date value, left-aligned; ``None`` = empty box."""
    return [value[i] if i < len(value) else None for i in range(f.count)]


def fill_page(page: np.ndarray, t: Template, values: dict[str, str], bank: DigitBank,
              pen: Pen, rng: np.random.Generator, dpi: float = FILL_DPI) -> None:
    """Write every non-empty value of ``values`` into its field of the RGB ``page``."""
    for f in t.fields:
        value = values.get(f.name, "")
        if not value:
            continue
        if f.kind == "string":
            write_string(page, f, value, bank, pen, rng, dpi)
        else:
            write_boxes(page, f, boxes_for(f, value), bank, pen, rng, dpi)
