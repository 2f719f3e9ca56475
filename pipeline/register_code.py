"""Per-template references for registration: blank, code strip, features, scores.

Everything that depends only on a template (its rendered blank, the expected code bits,
ORB features of the blank) is computed once per process and cached. The strip's layout
and expected cell states come from :func:`pipeline.render.code_strip_mm`, so the encoding
lives in one place.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import cv2
import numpy as np

from pipeline.order_stats import percentile
from pipeline.templates import WORK_DPI, Template

DET_DPI = 75.0  # detection copy (marks, features): marks are ~24 px wide here
STRUCT_DPI = 25.0  # printed-structure comparison copy
ECC_DPI = 50.0  # fine alignment of the features fallback and of 3-mark poses
Region = tuple[int, int, int, int]  # x0, y0, x1, y1 in template px
_GRID = np.linspace(0.25, 0.75, 5)  # sample the inner half of a cell: robust to pose error


def resize_matrix(src_shape: tuple[int, ...], dst_shape: tuple[int, ...]) -> np.ndarray:
    """3x3 matrix taking pixel coordinates of an image to those of its resized copy."""
    fx = dst_shape[1] / src_shape[1]
    fy = dst_shape[0] / src_shape[0]
    # Pixel centres: x' + 0.5 = (x + 0.5) * f, as cv2.resize samples.
    return np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5], [0, 0, 1]], np.float64)


def _halvings(src_shape: tuple[int, ...], size: tuple[int, int]) -> int:
    """How many exact 2x2 halvings fit before a shrink of ``src_shape`` to ``size`` (w, h)."""
    k = 0
    while src_shape[1] >= (2 << k) * size[0] and src_shape[0] >= (2 << k) * size[1]:
        k += 1
    return k


def shrink(img: np.ndarray, f: float) -> np.ndarray:
    """``img`` scaled by ``f`` (< 1) to the size ``round(f * side)``, averaging areas.

    The size is passed to OpenCV instead of ``fx``/``fy`` on purpose: a page whose dpi is
    estimated from its size (300.01 for an untagged 300-dpi A4 scan) gives f = 0.49998,
    and with that factor OpenCV takes its generic area path (25 ms for a 300-dpi page)
    instead of the exact 2x2 averaging (2 ms). For the same reason a page of any other
    size is first halved with exact 2x2 averages as often as the factor allows (its last
    odd rows/columns dropped, see :func:`shrink_matrix`); the rest of the factor, when
    it is 0.9 or more, is a bilinear resample (a scan of 300 dpi on an oversized bed:
    3 ms instead of 25), else a (generic) area resample.
    """
    h, w = img.shape[:2]
    return shrink_to(img, (max(1, round(w * f)), max(1, round(h * f))))


def shrink_to(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``img`` shrunk to ``size`` = (w, h) as :func:`shrink` does it (exact halvings first)."""
    h, w = img.shape[:2]
    k = _halvings(img.shape, size)
    small = img[: h - h % (1 << k), : w - w % (1 << k)]
    for _ in range(k):
        half = (small.shape[1] // 2, small.shape[0] // 2)
        small = cv2.resize(small, half, interpolation=cv2.INTER_AREA)
    if (small.shape[1], small.shape[0]) == size:
        return small
    near = size[0] >= 0.9 * small.shape[1] and size[1] >= 0.9 * small.shape[0]
    return cv2.resize(small, size, interpolation=cv2.INTER_LINEAR if near else cv2.INTER_AREA)


def shrink_matrix(src_shape: tuple[int, ...], small_shape: tuple[int, ...]) -> np.ndarray:
    """3x3 matrix taking pixel coordinates of an image to those of its :func:`shrink` copy.

    Dropping the last rows/columns moves no pixel (the origin is the top-left corner), so
    the mapping is the resize of the part that was kept.
    """
    k = _halvings(src_shape, (small_shape[1], small_shape[0]))
    kept = (src_shape[0] - src_shape[0] % (1 << k), src_shape[1] - src_shape[1] % (1 << k))
    return resize_matrix(kept, small_shape)


def warp_to_template(base: np.ndarray, h_base: np.ndarray, size: tuple[int, int],
                     regions: Sequence[Region] | None = None) -> np.ndarray:
    """``base`` warped into template px (``size`` = (w, h); ``h_base``: template px ->
    base px): the whole page, or only ``regions`` with paper white elsewhere."""
    w, h = size
    flags, white = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, 255
    if regions is None:
        return cv2.warpPerspective(base, h_base, (w, h), flags=flags,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=white)
    out = np.full((h, w), white, np.uint8)
    for x0, y0, x1, y1 in regions:
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
        if x1 <= x0 or y1 <= y0:
            continue
        # Region px -> template px is a shift; every output pixel is sampled on its own,
        # so the region's pixels are those of the full warp (up to the rounding of a few
        # sample positions: one grey level).
        shift = np.array([[1, 0, x0], [0, 1, y0], [0, 0, 1]], np.float64)
        out[y0:y1, x0:x1] = cv2.warpPerspective(
            base, h_base @ shift, (x1 - x0, y1 - y0), flags=flags,
            borderMode=cv2.BORDER_CONSTANT, borderValue=white)
    return out


def struct_warp(det: np.ndarray, base_shape: tuple[int, ...], h_base: np.ndarray,
                size: tuple[int, int]) -> np.ndarray:
    """The detection copy warped onto the template at DET_DPI: the structure score's input.

    The score compares printed structure at STRUCT_DPI, so it needs no 150-dpi warp of
    the whole page (a quarter of the pixels; the read regions are warped separately).
    """
    w, h = size
    k = DET_DPI / WORK_DPI
    small = (max(1, round(h * k)), max(1, round(w * k)))
    to_small = resize_matrix((h, w), small)  # template px -> DET_DPI template px
    m = shrink_matrix(base_shape, det.shape) @ h_base @ np.linalg.inv(to_small)
    return cv2.warpPerspective(det, m, (small[1], small[0]),
                               flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=255)


def similarity_rms(src: np.ndarray, dst: np.ndarray) -> float:
    """RMS residual (dst units) of the best similarity transform src -> dst."""
    zs = src[:, 0] + 1j * src[:, 1]
    zd = dst[:, 0] + 1j * dst[:, 1]
    a = np.stack([zs, np.ones_like(zs)], axis=1)
    coef, *_ = np.linalg.lstsq(a, zd, rcond=None)
    res = zd - a @ coef
    return float(np.sqrt(np.mean(np.abs(res) ** 2)))


def orientation_of(h: np.ndarray) -> int:
    """Rotation (0/90/180/270, clockwise as seen in the scan) that the homography undoes."""
    p = cv2.perspectiveTransform(np.array([[[500.0, 500.0], [600.0, 500.0]]]), h)[0]
    ang = math.degrees(math.atan2(p[1, 1] - p[0, 1], p[1, 0] - p[0, 0]))
    return round(ang / 90.0) * 90 % 360


def _sample(img: np.ndarray, h: np.ndarray, rects: tuple[tuple[float, ...], ...]) -> np.ndarray:
    """Mean gray of the inner half of each template-px rect, seen through ``h``."""
    if not rects:
        return np.zeros(0, np.float32)
    q = cv2.perspectiveTransform(_sample_points(rects), h)[0]
    hh, ww = img.shape
    xi = np.clip(np.rint(q[:, 0]), 0, ww - 1).astype(np.intp)
    yi = np.clip(np.rint(q[:, 1]), 0, hh - 1).astype(np.intp)
    inside = (q[:, 0] >= 0) & (q[:, 0] < ww) & (q[:, 1] >= 0) & (q[:, 1] < hh)
    vals = np.where(inside, img[yi, xi].astype(np.float32), 255.0)
    return vals.reshape(len(rects), -1).mean(axis=1)


@lru_cache(maxsize=64)
def _sample_points(rects: tuple[tuple[float, ...], ...]) -> np.ndarray:
    """The template-px points :func:`_sample` reads in ``rects``, ``(1, N, 2)`` (a template's
    strip is read several times a page, always at the same points)."""
    r = np.asarray(rects, np.float64)
    gx, gy = np.meshgrid(_GRID, _GRID)
    xs = r[:, 0:1] + r[:, 2:3] * gx.ravel()[None, :]
    ys = r[:, 1:2] + r[:, 3:4] * gy.ravel()[None, :]
    pts = np.stack([xs.ravel(), ys.ravel()], axis=1)[None].astype(np.float64)
    pts.flags.writeable = False  # shared by every call
    return pts


def _ring(cells: Sequence[tuple[float, float, float, float]]) -> tuple[tuple[float, ...], ...]:
    """Small rects beside and just above the code strip: paper-level reference.

    Below the strip is the title, so the frame stays above it and at its two ends.
    """
    x0 = min(c[0] for c in cells)
    y0 = min(c[1] for c in cells)
    x1 = max(c[0] + c[2] for c in cells)
    y1 = max(c[1] + c[3] for c in cells)
    s = min(min(c[2], c[3]) for c in cells)
    out: list[tuple[float, ...]] = []
    n = max(4, int((x1 - x0) / s) + 1)
    for i in range(n + 1):
        out.append((x0 + (x1 - x0 - 0.5 * s) * i / n, y0 - 0.9 * s, s * 0.5, s * 0.5))
    for yy in np.linspace(y0, y1 - 0.5 * s, 3):
        out.append((x0 - 1.5 * s, float(yy), s * 0.5, s * 0.5))
        out.append((x1 + 1.0 * s, float(yy), s * 0.5, s * 0.5))
    return tuple(out)


@dataclass
class TemplateRef:
    """What registration needs to know about one template (built once, then cached)."""

    template: Template
    size_px: tuple[int, int]
    marks_px: np.ndarray  # (4, 2) mark centres, template px: TL, TR, BR, BL
    cells_px: tuple[tuple[float, float, float, float], ...]
    ring_px: tuple[tuple[float, ...], ...]
    code_bits: np.ndarray  # expected dark cells (bool)
    struct: np.ndarray  # blank at STRUCT_DPI, zero mean, unit norm
    blank: np.ndarray = field(repr=False)
    _features: tuple[Any, Any, np.ndarray] | None = None
    _ecc: np.ndarray | None = None

    @property
    def strip_key(self) -> tuple[tuple[tuple[float, ...], ...], ...]:
        """Where the code strip is read (its cells and paper ring): templates with equal
        keys read the same bits through the same pose."""
        return self.cells_px, self.ring_px

    def features(self) -> tuple[Any, Any, np.ndarray]:
        """ORB keypoints/descriptors of the blank at DET_DPI, and template px -> those px."""
        if self._features is None:
            f = DET_DPI / WORK_DPI
            small = cv2.resize(self.blank, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
            orb = cv2.ORB.create(nfeatures=3000, scaleFactor=1.2, nlevels=8, fastThreshold=15)
            kp, des = orb.detectAndCompute(small, None)
            self._features = (kp, des, resize_matrix(self.blank.shape, small.shape))
        return self._features

    def ecc_blank(self) -> np.ndarray:
        """The blank at ECC_DPI (cached)."""
        if self._ecc is None:
            f = ECC_DPI / WORK_DPI
            self._ecc = cv2.resize(self.blank, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        return self._ecc

    def read_code(self, img: np.ndarray, h: np.ndarray) -> np.ndarray | None:
        """Dark/light bits of the code cells of ``img`` seen through ``h`` (None: unreadable)."""
        cells = _sample(img, h, self.cells_px)
        # Every strip has filled cells (the start bar), so its darkest cell is the ink
        # level; the marks are not used because one may be off the page.
        dark = float(cells.min())
        paper = percentile(_sample(img, h, self.ring_px), 75.0)
        if paper - dark < 60.0:
            return None
        return cells < (paper + dark) / 2.0


_CACHE: dict[str, TemplateRef] = {}
_LOCK = threading.Lock()


def _to_struct(img: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
    if shape is None:
        f = STRUCT_DPI / WORK_DPI
        shape = (max(1, round(img.shape[0] * f)), max(1, round(img.shape[1] * f)))
    # Exact halvings first (1/6 of a 150-dpi page: 4 ms -> ~0.3 ms). Blank and page go
    # through the same steps; this copy only feeds the structure score, never the pixels
    # that are read.
    small = shrink_to(img, (shape[1], shape[0]))
    s = (255.0 - small.astype(np.float32))
    s -= float(s.mean())
    n = float(np.linalg.norm(s))
    return s / n if n > 0 else s


def template_ref(t: Template) -> TemplateRef:
    """The cached reference of template ``t`` (renders its blank on first use)."""
    key = t.model_dump_json()
    with _LOCK:
        ref = _CACHE.get(key)
    if ref is not None:
        return ref
    from pipeline.render import code_strip_mm, render_blank

    blank = render_blank(t, dpi=WORK_DPI, color=False)
    if blank.ndim == 3:
        # Same conversion as ingest: the red channel drops the dropout-coloured boxes.
        blank = blank[:, :, 0]  # render.py draws RGB
    blank = np.ascontiguousarray(blank, dtype=np.uint8)
    px = t.px
    marks = np.array([(px(x), px(y)) for x, y in t.mark_centers_mm()], np.float64) - 0.5
    strip = code_strip_mm(t)
    # (tuples: hashable, so the points sampled in them are computed once, _sample_points)
    cells = tuple((px(x) - 0.5, px(y) - 0.5, px(w), px(h)) for (x, y, w, h), _ in strip)
    ref = TemplateRef(
        template=t,
        size_px=(blank.shape[1], blank.shape[0]),
        marks_px=marks,
        cells_px=cells,
        ring_px=_ring(cells),
        # Every cell, guards included: read upside down, the guards cannot match.
        code_bits=np.array([bool(v) for _, v in strip]),
        struct=_to_struct(blank),
        blank=blank,
    )
    with _LOCK:
        _CACHE[key] = ref
    return ref


def code_match(img: np.ndarray, h: np.ndarray, ref: TemplateRef) -> tuple[float, bool]:
    """How well the code strip read through ``h`` matches ``ref``: (score, accepted).

    Only an exact match is accepted: codes of different forms may differ in one cell, and
    a stained cell must send the page to a person rather than to the wrong template (the
    printed structure cannot tell forms apart: marks and strip dominate it).
    """
    return code_score(ref.read_code(img, h), ref)


def code_score(bits: np.ndarray | None, ref: TemplateRef) -> tuple[float, bool]:
    """:func:`code_match` of code bits already read (None: the strip was unreadable)."""
    n = len(ref.code_bits)
    if bits is None or n == 0:
        return 0.0, False
    d = int(np.count_nonzero(bits != ref.code_bits))
    return max(0.0, 1.0 - 2.0 * d / n), d == 0


def refine_ecc(base: np.ndarray, h: np.ndarray, ref: TemplateRef, base_dpi: float) -> np.ndarray:
    """Polish a pose by ECC alignment of the page to the blank at ECC_DPI (features fallback).

    Feature matches cluster on the printed text, which leaves the homography loose far from
    it; ECC uses every printed pixel (marks, strip, labels, boxes) and pins it down.
    """
    small = shrink(base, ECC_DPI / base_dpi)
    s_page = shrink_matrix(base.shape, small.shape)
    tmpl = ref.ecc_blank()
    s_t = resize_matrix(ref.blank.shape, tmpl.shape)
    h_small = s_page @ h @ np.linalg.inv(s_t)
    warp = (h_small / h_small[2, 2]).astype(np.float32)
    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 40, 1e-4)
    mask = np.full(tmpl.shape, 255, np.uint8)
    try:
        _, warp = cv2.findTransformECC(
            tmpl.astype(np.float32), small.astype(np.float32), warp,
            cv2.MOTION_HOMOGRAPHY, crit, mask, 3,
        )
    except cv2.error:
        return h
    out = np.linalg.inv(s_page) @ warp.astype(np.float64) @ s_t
    return out / out[2, 2]


def structure_ncc(warped: np.ndarray, ref: TemplateRef) -> float:
    """Normalized cross-correlation of the warped page's ink with the blank's (-1..1)."""
    return float((_to_struct(warped, ref.struct.shape) * ref.struct).sum())
