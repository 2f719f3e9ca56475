"""Simulated paper handling and scanning for synthetic forms.

Two steps: things that happen *on the paper* (a rubber stamp, stray pen marks — placed
away from fields, marks and the code strip so the truth stays readable), then the *scan*
(printer scale, skew, a page fed upside down, translation, mild perspective, output dpi,
uneven illumination, blur, sensor noise, colour or grayscale). Compression artefacts come
from the file format the page is saved in (see :mod:`pipeline.synth`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.handwriting import FILL_DPI, INK_COLORS, composite
from pipeline.render import code_strip_mm
from pipeline.templates import Rect, Template

STAMP_COLORS = {"red": (196, 36, 48), "blue": (36, 64, 170)}
STAMP_WORDS = ("RECEIVED", "CHECKED", "PAID", "COPY", "ENTERED")


@dataclass(frozen=True)
class ScanParams:
    """How one page was scanned (the first four go into the truth file)."""

    rotation_deg: float  # skew, counter-clockwise as seen in the output image
    upside_down: bool  # fed turned by 180° (on top of the skew)
    dpi: int  # output resolution
    color: bool  # RGB output (else 8-bit grayscale, luma)
    scale: float  # printer/copier scaling of the content
    shift_mm: tuple[float, float]
    perspective: float  # corner jitter, fraction of the page's shorter side
    blur_sigma: float  # pixels at the output dpi
    noise_sigma: float  # grey levels
    illumination: float  # strength of the brightness gradient (0 = even)
    lid_gray: int  # scanner lid colour showing around the paper
    clean: float  # background clean-up: grey levels pushed past white on the brightest paper


def sample_scan_params(rng: np.random.Generator, *, dpi_range: tuple[int, int] = (150, 300),
                       color_prob: float = 0.5, flip_prob: float = 0.05,
                       dpi: int | None = None, color: bool | None = None) -> ScanParams:
    """Random, realistic-but-readable scan settings (``dpi``/``color`` may be fixed)."""
    return ScanParams(
        rotation_deg=float(np.clip(rng.normal(0.0, 2.0), -5.0, 5.0)),
        upside_down=bool(rng.random() < flip_prob),
        dpi=int(dpi if dpi is not None else rng.integers(dpi_range[0], dpi_range[1] + 1)),
        color=bool(color if color is not None else rng.random() < color_prob),
        scale=float(rng.uniform(0.9, 1.1)),
        shift_mm=(float(rng.normal(0.0, 3.0)), float(rng.normal(0.0, 3.0))),
        perspective=float(rng.uniform(0.0, 0.004)),
        blur_sigma=float(rng.uniform(0.3, 1.0)),
        noise_sigma=float(rng.uniform(1.0, 4.0)),
        illumination=float(rng.uniform(0.0, 0.15)),
        lid_gray=int(rng.integers(200, 250)),
        clean=float(rng.uniform(0.0, 30.0)),
    )


def _busy_rects_mm(t: Template, margin: float) -> list[Rect]:
    """Areas that must stay clean: fields (with labels), marks, code strip and title."""
    rects: list[Rect] = []
    for f in t.fields:
        x, y, w, h = f.bounds_mm()
        # Labels sit above or left of a field; reserve that space too.
        rects.append((x - 70.0, y - 6.0, w + 70.0, h + 6.0) if f.label_pos == "left"
                     else (x, y - 6.0, w, h + 6.0))
    s, i = t.marks.size_mm, t.marks.inset_mm
    for cx, cy in t.mark_centers_mm():
        rects.append((cx - s / 2, cy - s / 2, s, s))
    strip = code_strip_mm(t)
    x0, y0 = strip[0][0][0], strip[0][0][1]
    rects.append((x0, y0, strip[-1][0][0] + strip[-1][0][2] - x0, strip[0][0][3]))
    rects.append((0.0, 0.0, t.width_mm, i + s + 16.0))  # title band
    return [(x - margin, y - margin, w + 2 * margin, h + 2 * margin) for x, y, w, h in rects]


def _free_spot(t: Template, w: float, h: float, rng: np.random.Generator,
               margin: float = 3.0) -> tuple[float, float] | None:
    """Top-left (mm) of a ``w``×``h`` area inside the page clear of every busy rectangle."""
    busy = _busy_rects_mm(t, margin)
    edge = t.marks.inset_mm
    for _ in range(60):
        x = float(rng.uniform(edge, t.width_mm - edge - w))
        y = float(rng.uniform(edge, t.height_mm - edge - h))
        if all(x + w <= bx or bx + bw <= x or y + h <= by or by + bh <= y
               for bx, by, bw, bh in busy):
            return x, y
    return None


def add_stamp(page: np.ndarray, t: Template, rng: np.random.Generator,
              dpi: float = FILL_DPI) -> bool:
    """Press a red or blue rubber stamp (ring or frame with text) on a free area."""
    k = dpi / 25.4
    size_mm = float(rng.uniform(24.0, 34.0))
    spot = _free_spot(t, size_mm * 1.3, size_mm * 1.3, rng)
    if spot is None:
        return False
    side = round(size_mm * k)
    canvas = np.zeros((side, side), np.uint8)  # OpenCV text needs 8-bit images
    lw = max(2, round(0.7 * k))
    c = side // 2
    if rng.random() < 0.5:
        cv2.circle(canvas, (c, c), c - lw, 255, lw, cv2.LINE_AA)
        cv2.circle(canvas, (c, c), round(c * 0.72), 255, max(1, lw // 2), cv2.LINE_AA)
    else:
        cv2.rectangle(canvas, (lw, round(side * 0.2)), (side - lw, round(side * 0.8)), 255, lw)
    word = STAMP_WORDS[int(rng.integers(0, len(STAMP_WORDS)))]
    font = cv2.FONT_HERSHEY_SIMPLEX
    (tw, _th), _ = cv2.getTextSize(word, font, 1.0, 2)
    scale = side * 0.62 / tw
    (tw, th), _ = cv2.getTextSize(word, font, scale, max(1, lw // 2))
    cv2.putText(canvas, word, (c - tw // 2, c + th // 2), font, scale, 255, max(1, lw // 2),
                cv2.LINE_AA)
    patch = canvas.astype(np.float32) / 255.0
    # Rubber stamps print unevenly: random ink holes, overall partial opacity, a tilt.
    holes = rng.random(patch.shape, dtype=np.float32)
    patch *= np.where(holes < 0.12, 0.3, 1.0) * float(rng.uniform(0.55, 0.85))
    big = cv2.copyMakeBorder(patch, c // 2, c // 2, c // 2, c // 2, cv2.BORDER_CONSTANT, value=0.0)
    m = cv2.getRotationMatrix2D((big.shape[1] / 2, big.shape[0] / 2), float(rng.uniform(-25, 25)),
                                1.0)
    big = cv2.warpAffine(big, m, (big.shape[1], big.shape[0]))
    name = "red" if rng.random() < 0.6 else "blue"
    x, y = spot
    composite(page, big, (x + size_mm * 0.65) * k, (y + size_mm * 0.65) * k, STAMP_COLORS[name])
    return True


def add_stray_marks(page: np.ndarray, t: Template, rng: np.random.Generator,
                    dpi: float = FILL_DPI) -> int:
    """Scribbles, ticks and dots a person leaves on a form, away from fields and marks."""
    k = dpi / 25.4
    n = int(rng.integers(0, 4))
    done = 0
    for _ in range(n):
        w, h = float(rng.uniform(4.0, 22.0)), float(rng.uniform(2.0, 8.0))
        spot = _free_spot(t, w, h, rng)
        if spot is None:
            continue
        side_w, side_h = round(w * k) + 8, round(h * k) + 8
        patch = np.zeros((side_h, side_w), np.float32)
        npts = int(rng.integers(2, 6))
        pts = np.stack([rng.uniform(4, side_w - 4, npts), rng.uniform(4, side_h - 4, npts)], 1)
        cv2.polylines(patch, [pts.astype(np.int32)], False, 1.0, max(2, round(0.4 * k)),
                      cv2.LINE_AA)
        color = INK_COLORS["blue" if rng.random() < 0.4 else "black"]
        composite(page, patch * float(rng.uniform(0.5, 0.95)), (spot[0] + w / 2) * k,
                  (spot[1] + h / 2) * k, color)
        done += 1
    return done


def _page_transform(t: Template, p: ScanParams, rng: np.random.Generator,
                    src_size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """Homography from the resized page image to the output canvas, and the canvas size."""
    out_w, out_h = t.size_px(p.dpi)
    sw, sh = src_size
    angle = p.rotation_deg + (180.0 if p.upside_down else 0.0)
    shift = (p.shift_mm[0] * p.dpi / 25.4, p.shift_mm[1] * p.dpi / 25.4)
    m = cv2.getRotationMatrix2D((sw / 2, sh / 2), angle, 1.0)
    m[:, 2] += np.array([out_w / 2 - sw / 2 + shift[0], out_h / 2 - sh / 2 + shift[1]])
    src = np.array([[0, 0], [sw, 0], [sw, sh], [0, sh]], np.float32)
    dst = (np.hstack([src, np.ones((4, 1), np.float32)]) @ m.T).astype(np.float32)
    dst += rng.normal(0.0, p.perspective * min(out_w, out_h), dst.shape).astype(np.float32)
    h = cv2.getPerspectiveTransform(src, dst)
    # Keep all four marks on the scanner glass: pull the page in, or make the bed larger.
    k = sw / t.width_mm
    s = t.marks.size_mm
    pts = np.array([[(cx + dx) * k, (cy + dy) * k] for cx, cy in t.mark_centers_mm()
                    for dx in (-s, s) for dy in (-s, s)], np.float32)
    q = cv2.perspectiveTransform(pts[None], h)[0]
    (x0, y0), (x1, y1) = q.min(axis=0), q.max(axis=0)
    tx, out_w = _fit(float(x0), float(x1), out_w)
    ty, out_h = _fit(float(y0), float(y1), out_h)
    shift_m = np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]], np.float64)
    return shift_m @ h, (out_w, out_h)


def _fit(lo: float, hi: float, size: int) -> tuple[float, int]:
    """Shift (and, if the span is too long, a larger canvas) that puts ``[lo, hi]`` inside."""
    if hi - lo > size - 2:
        return 1.0 - lo, int(np.ceil(hi - lo)) + 2
    if lo < 0:
        return -lo, size
    return (size - hi if hi > size else 0.0), size


def simulate_scan(page: np.ndarray, t: Template, p: ScanParams, rng: np.random.Generator,
                  dpi: float = FILL_DPI) -> np.ndarray:
    """Scan the RGB ``page`` (rendered at ``dpi``): RGB or grayscale ``uint8`` image."""
    img = page if p.color else cv2.cvtColor(page, cv2.COLOR_RGB2GRAY)
    f = p.dpi / dpi * p.scale
    if abs(f - 1.0) > 1e-3:  # area resampling first: a plain warp would alias fine strokes
        img = cv2.resize(img, None, fx=f, fy=f,
                         interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    h, (w_out, h_out) = _page_transform(t, p, rng, (img.shape[1], img.shape[0]))
    border = (p.lid_gray,) * 3 if p.color else p.lid_gray
    out = cv2.warpPerspective(img, h, (w_out, h_out), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=border)
    out = cv2.GaussianBlur(out, (0, 0), p.blur_sigma)
    # Uneven lamp (a linear brightness ramp in a random direction), the white point and
    # sensor noise are applied together with OpenCV float ops: a 300-dpi colour page is
    # 26 M values, and numpy temporaries would dominate the synthesis time.
    theta = rng.uniform(0.0, 2 * np.pi)
    xs = np.linspace(-0.5, 0.5, w_out, dtype=np.float32) * np.float32(np.cos(theta))
    ys = np.linspace(-0.5, 0.5, h_out, dtype=np.float32) * np.float32(np.sin(theta))
    gain = np.minimum((1.0 - p.illumination / 2) + p.illumination * (ys[:, None] + xs[None, :]),
                      1.0).astype(np.float32) * np.float32(rng.uniform(0.94, 1.0))
    # Scanners level the background: the brightest paper (plus noise) lands at/after white,
    # the dim side of the lamp ramp stays visibly grey.
    white = np.float32((255.0 + 2.5 * p.noise_sigma + p.clean) / (255.0 * float(gain.max())))
    gain *= white
    # Noise drawn at half resolution: cheaper, and real sensor noise is not pixel-white.
    small = rng.standard_normal(((h_out + 1) // 2, (w_out + 1) // 2), dtype=np.float32)
    noise = cv2.resize(small * np.float32(p.noise_sigma) * white, (w_out, h_out),
                       interpolation=cv2.INTER_NEAREST)
    chans = cv2.split(out) if p.color else [out]
    res = [cv2.convertScaleAbs(cv2.add(cv2.multiply(c, gain, dtype=cv2.CV_32F), noise))
           for c in chans]
    return cv2.merge(res) if p.color else res[0]
