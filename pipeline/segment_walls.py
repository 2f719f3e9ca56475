"""The printed walls of a field's boxes: where they can be, and how dark each one is.

Segmentation (:func:`pipeline.segment.field_ink`) subtracts a model of the printed box
walls from a field's ink: each wall segment (one side of one box) gets its own cross
profile, measured within ± the registration tolerance along the wall, so strokes that cross
or run along a wall survive while the wall goes. Where walls can be, and the segments to
measure, depend on the template only: :func:`field_geometry` builds them once per process.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np

from pipeline.order_stats import ranks

WALL_TOL_PX = 3  # registration error allowed around a printed wall (template px)


@dataclass(frozen=True)
class FieldGeometry:
    """What a field's region looks like before any ink is seen (read-only arrays)."""

    inner: np.ndarray  # bool: box interiors away from the walls (where the ink peak is taken)
    bands: np.ndarray  # bool: where printed walls can be
    paper: np.ndarray  # bool: ~bands
    segments: tuple[tuple[int, int, int, int, int, int, int], ...]  # see wall_model
    groups: tuple[tuple[tuple[int, int, int], tuple[int, ...]], ...]


@functools.lru_cache(maxsize=256)
def field_geometry(shape: tuple[int, int], boxes: tuple[tuple[int, int, int, int], ...], kind: str
              ) -> FieldGeometry:
    """The masks and wall segments of a field region of ``shape`` with ``boxes`` (region px).

    They depend on the template only, not on the page (registration warps every page onto
    the template), so each field's are built once per process: ~0.5 ms of every page.
    """
    hb, vb = _wall_bands(shape, list(boxes), kind)
    inner = np.zeros(shape, np.uint8)
    for bx, by, bw, bh in boxes:
        inner[by + 2 : by + bh - 1, bx + 2 : bx + bw - 1] = 1
    inner &= 1 - (hb | vb)
    bands = (hb | vb).astype(bool)
    segments, groups = _wall_segments(shape, boxes)
    geometry = FieldGeometry(inner > 0, bands, ~bands, segments, groups)
    for a in (geometry.inner, geometry.bands, geometry.paper):
        a.flags.writeable = False  # shared by every page
    return geometry


def _wall_bands(
    shape: tuple[int, int], boxes: list[tuple[int, int, int, int]], kind: str
) -> tuple[np.ndarray, np.ndarray]:
    """Masks of where horizontal and vertical printed walls can be (± WALL_TOL_PX)."""
    hb = np.zeros(shape, np.uint8)
    vb = np.zeros(shape, np.uint8)
    t = WALL_TOL_PX + 1
    for x, y, w, h in boxes:
        for yy in (y, y + h):
            hb[max(0, yy - t) : yy + t + 1, max(0, x - t) : x + w + t + 1] = 1
        for xx in (x, x + w):
            vb[max(0, y - t) : y + h + t + 1, max(0, xx - t) : xx + t + 1] = 1
    if kind == "date" and len(boxes) > 1:
        # Printed separators sit between groups, outside the boxes: treat the gaps like walls.
        for a, b in itertools.pairwise(boxes):
            if b[0] - (a[0] + a[2]) > 2 * t:
                vb[a[1] : a[1] + a[3] + 1, a[0] + a[2] : b[0] + 1] = 1
    return hb, vb


def wall_profile(ink: np.ndarray, axis: int) -> np.ndarray:
    """Ink of a printed wall across its thickness: a low percentile along its length.

    Strokes only add ink, so the 30th percentile along the wall is the printed wall
    even where a stroke runs along it for most of its length. (``np.percentile``'s
    linear interpolation, from :func:`pipeline.order_stats.ranks`.)
    """
    if not ink.size:
        return ink
    lo, hi, frac = ranks(ink, 30.0, axis)
    a, b = lo.astype(np.float64), hi.astype(np.float64)
    return (a + (b - a) * frac).astype(np.float32)


def _wall_segments(shape: tuple[int, int], boxes: tuple[tuple[int, int, int, int], ...]
                   ) -> tuple[tuple[tuple[int, int, int, int, int, int, int], ...],
                              tuple[tuple[tuple[int, int, int], tuple[int, ...]], ...]]:
    """The wall segments of ``boxes`` in a region of ``shape`` for :func:`wall_model`:
    ``(axis, start, end along the wall, across-band lo, hi, measured part a0, b0)`` each,
    and the segments grouped by band shape ``((axis, hi - lo, b0 - a0), indices)``."""
    H, W = shape
    t = WALL_TOL_PX + 1
    segs: list[tuple[int, int, int, int, int, int, int]] = []
    for x, y, w, h in boxes:
        for axis, pos, a, b in ((0, y, x, x + w), (0, y + h, x, x + w),
                                (1, x, y, y + h), (1, x + w, y, y + h)):
            lo, hi = max(0, pos - t), min(H if axis == 0 else W, pos + t + 1)
            a0, b0 = max(0, a + 3), min(W if axis == 0 else H, b - 2)
            if hi > lo and b0 > a0:
                segs.append((axis, a, b, lo, hi, a0, b0))
    # The walls of a row of equal boxes share one band shape: each shape is measured in
    # one stacked call (per-segment numpy calls, not arithmetic, were the cost).
    groups: dict[tuple[int, int, int], list[int]] = {}
    for i, (axis, _, _, lo, hi, a0, b0) in enumerate(segs):
        groups.setdefault((axis, hi - lo, b0 - a0), []).append(i)
    return tuple(segs), tuple((key, tuple(idx)) for key, idx in groups.items())


def wall_model(ink: np.ndarray, geo: FieldGeometry) -> np.ndarray:
    """Expected ink of the printed walls alone (0 where no wall is printed).

    Each wall segment (one side of one box, :func:`_wall_segments`) gets its own cross
    profile, measured within ± the registration tolerance, so the model follows the local
    wall darkness and position; where a stroke crosses or overlaps the wall, ink minus the
    model is the stroke's own contribution, so strokes survive while the wall goes.
    """
    model = np.zeros(ink.shape, np.float32)
    t = WALL_TOL_PX + 1
    segs = geo.segments
    if not segs:
        return model
    stacks: list[tuple[tuple[int, ...], np.ndarray]] = []
    for (axis, _, _), idx in geo.groups:
        bands = [ink[segs[i][3] : segs[i][4], segs[i][5] : segs[i][6]] if axis == 0
                 else ink[segs[i][5] : segs[i][6], segs[i][3] : segs[i][4]] for i in idx]
        stacks.append((idx, wall_profile(np.stack(bands), 2 if axis == 0 else 1)))
    # A segment much darker than the field's typical wall holds a stroke along it: cap it.
    peaks = np.concatenate([p.max(axis=1) for _, p in stacks]).astype(np.float64)
    ordered = np.sort(peaks)  # the median (np.median's value; its overhead was 0.4 ms a page)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0
    cap = 1.3 * float(median) + 5.0
    for idx, profs in stacks:
        profs = np.minimum(profs, cap)
        # One pixel of slack across the wall: registration is not sub-pixel exact.
        wide = profs.copy()  # max with both neighbours (ink is >= 0, so the ends keep theirs)
        np.maximum(wide[:, :-1], profs[:, 1:], out=wide[:, :-1])
        np.maximum(wide[:, 1:], profs[:, :-1], out=wide[:, 1:])
        wide = np.where(wide < 8.0, 0.0, wide).astype(np.float32)
        for i, prof in zip(idx, wide, strict=True):
            axis, a, b, lo, hi = segs[i][:5]
            a1, b1 = max(0, a - t), b + t + 1
            if axis == 0:
                sl = model[lo:hi, a1:b1]
                np.maximum(sl, prof[:, None], out=sl)
            else:
                sl = model[a1:b1, lo:hi]
                np.maximum(sl, prof[None, :], out=sl)
    return model
