"""Boxed fields (``boxes``, ``comb``, ``date``): which ink belongs to which box.

Each connected component of a field's ink goes to the box holding most of it. A component
spread over neighbouring boxes is digits touching across a wall; it is cut near each wall
in several ways (:data:`CUT_VARIANTS`), each offered to the model as its own set of crops
(``group`` = the component, ``split`` = the variant), and the reading keeps the variant it
reads most confidently (:func:`pipeline.assemble.choose_crops`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.segment import EMPTY_AREA_PX, EMPTY_EXTENT, FieldInk, Piece, piece_ink
from pipeline.segment_cuts import least_ink_column, new_cut, path_cuts
from pipeline.templates import FormField

# Cuts offered for digits touching across a wall: (path or straight, wall shift in box
# widths); the first is the default.
# (More shifts, ±0.3 and straight ±0.15, changed nothing on the development pages.)
CUT_VARIANTS = (("path", 0.0), ("straight", 0.0), ("path", -0.15), ("path", 0.15))


# ``(x0, y0, x1, y1)`` in region px: a window holding every set pixel of a mask, so that
# a box's piece is measured on its ink's window instead of the whole field (the masks are
# region-sized; summing and searching them whole was most of a boxed field's cost).
Window = tuple[int, int, int, int]


def _union(a: Window | None, b: Window | None) -> Window | None:
    if a is None or b is None:
        return a or b
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


@dataclass(frozen=True)
class Touching:
    """A component holding digits of neighbouring boxes, and the ways to cut it.

    ``parts[v][j]`` is the region-sized mask of the ink that cut variant ``v`` gives to
    box ``boxes[j]``; variant 0 is the default (see :func:`_assign`). Every part lies in
    ``window``, the component's bounding box.
    """

    boxes: tuple[int, ...]
    parts: tuple[tuple[np.ndarray, ...], ...]
    window: Window


def _cut_variants(fi: FieldInk, comp: np.ndarray, x: int, y: int,
                  big: list[int]) -> list[list[np.ndarray]]:
    """Ways to cut a component spanning boxes ``big`` at the walls between them.

    Variant 0 cuts along the least-ink path near each wall (touching digits are rarely
    separable by one straight column: a 0 leaning on its neighbour); the others are the
    least-ink straight column and paths around a wall shifted by 15 % of a box either way.
    The model picks among them (:func:`pipeline.assemble.choose_crops`).
    """
    h, w = comp.shape
    cols = np.arange(w)[None, :]
    proj = comp.sum(axis=0).astype(np.float32)
    out: list[list[np.ndarray]] = []
    seen: list[list[np.ndarray]] = []

    def wall_at(b1: int, b2: int, shift: float) -> tuple[float, int]:
        bw = fi.boxes[b1][2]
        wall = (fi.boxes[b1][0] + fi.boxes[b1][2] + fi.boxes[b2][0]) / 2 - x + shift * bw
        return wall, max(1, int(0.125 * bw))

    # Every variant's paths in one call (see path_cuts).
    wanted = list(dict.fromkeys(wall_at(b1, b2, shift) for kind, shift in CUT_VARIANTS
                                if kind == "path" for b1, b2 in itertools.pairwise(big)))
    paths = dict(zip(wanted, path_cuts(comp, wanted), strict=True))
    for kind, shift in CUT_VARIANTS:
        edges = [np.zeros((h, 1), np.int64)]
        for b1, b2 in itertools.pairwise(big):
            wall, half = wall_at(b1, b2, shift)
            if kind == "path":
                cut = paths[(wall, half)][:, None]
            else:
                cut = np.full((h, 1), least_ink_column(proj, wall, 2 * half))
            edges.append(np.maximum(cut, edges[-1] + 1))
        edges.append(np.full((h, 1), w))
        if not new_cut(edges, seen):
            continue
        parts = []
        for c0, c1 in itertools.pairwise(edges):
            part = np.zeros(fi.labels.shape, np.uint8)
            part[y : y + h, x : x + w] = comp * ((cols >= c0) & (cols < c1))
            parts.append(part)
        out.append(parts)
    return out


def _assign(fi: FieldInk
            ) -> tuple[list[np.ndarray], list[int], list[Touching], list[Window | None]]:
    """Per box: mask of the ink it holds (touching components excluded), how many of
    those pixels lie outside it, and the components touching across walls; and per box
    the window of its mask (None: no ink).

    A component goes to the box holding most of it (at least 40 %). A component with a
    large share (≥ 30 %) in neighbouring boxes, or wider than a box and spanning much of
    several, is digits touching across walls: it is returned as a :class:`Touching` with
    its cut variants.
    """
    nb = len(fi.boxes)
    n = fi.stats.shape[0]
    areas = fi.stats[:, cv2.CC_STAT_AREA]
    inside = np.zeros((nb, n))
    for bi, (bx, by, bw, bh) in enumerate(fi.boxes):
        sub = fi.labels[max(0, by) : by + bh + 1, max(0, bx) : bx + bw + 1]
        inside[bi] = np.bincount(sub.ravel(), minlength=n)
    masks = [np.zeros(fi.labels.shape, np.uint8) for _ in range(nb)]
    outside = [0] * nb
    windows: list[Window | None] = [None] * nb
    touching: list[Touching] = []
    # Per component as Python lists: numpy's per-call overhead, not the arithmetic, was
    # this loop's cost. fracs[i][b]: share of component i's area inside box b.
    with np.errstate(divide="ignore", invalid="ignore"):
        fracs = (inside / areas[None, :]).T.tolist()
    rects = fi.stats[:, :4].tolist()
    for i in range(1, n):
        if areas[i] == 0:
            continue
        fr = fracs[i]
        x, y, w, h = rects[i]
        comp = (fi.labels[y : y + h, x : x + w] == i).astype(np.uint8)
        if w > 1.15 * fi.boxes[fr.index(max(fr))][2]:
            # Wider than a box: digits joined across walls. Every box it spans for a good
            # part of the box's width gets its columns, however little ink is there.
            big = [
                bi for bi, (bx, _, bw, _) in enumerate(fi.boxes)
                if min(x + w, bx + bw) - max(x, bx) >= 0.35 * bw and fr[bi] >= 0.03
            ]
        else:
            big = [bi for bi in range(nb) if fr[bi] >= 0.3]
        if len(big) >= 2 and all(b2 == b1 + 1 for b1, b2 in itertools.pairwise(big)):
            variants = _cut_variants(fi, comp, x, y, big)
            touching.append(Touching(tuple(big), tuple(tuple(v) for v in variants),
                                     (x, y, x + w, y + h)))
            continue
        bi = fr.index(max(fr))
        if fr[bi] < 0.4:
            continue
        masks[bi][y : y + h, x : x + w] |= comp
        windows[bi] = _union(windows[bi], (x, y, x + w, y + h))
        outside[bi] += int(areas[i] - inside[bi, i])
    return masks, outside, touching, windows


def _box_piece(fi: FieldInk, bi: int, mask: np.ndarray, outside: int, window: Window | None,
               group: int = 0, split: int = 0) -> Piece:
    """The piece of box ``bi`` from its ink ``mask``, all of it inside ``window`` (empty
    when too little ink)."""
    bx, by, bw, bh = fi.boxes[bi]
    ox, oy = fi.origin
    box_bbox = (bx + ox, by + oy, bw, bh)
    x0, y0, x1, y1 = window or (0, 0, 0, 0)  # (no window: no ink, so an empty piece)
    sub = mask[y0:y1, x0:x1]
    total = int(sub.sum())
    if total == 0:
        return Piece(bi, box_bbox, np.zeros((1, 1), np.uint8), True, group=group, split=split)
    _, _, mw, mh = cv2.boundingRect(sub)
    extent = max(mh, 0.6 * mw)
    if total < EMPTY_AREA_PX or extent < EMPTY_EXTENT * bh:
        return Piece(bi, box_bbox, np.zeros((1, 1), np.uint8), True, ("residue",),
                     group=group, split=split)
    ink, bbox = piece_ink(fi, mask, window)
    flags: list[str] = []
    if outside > 0.1 * total:
        flags.append("overrun")
    if cv2.minMaxLoc(fi.ink[y0:y1, x0:x1], mask=sub)[1] < 90.0:  # its strongest ink
        flags.append("faint")
    return Piece(bi, bbox, ink, False, tuple(flags), group=group, split=split)


def _outside(fi: FieldInk, bi: int, part: np.ndarray, window: Window) -> int:
    bx, by, bw, bh = fi.boxes[bi]
    inner = int(part[max(0, by) : by + bh + 1, max(0, bx) : bx + bw + 1].sum())
    x0, y0, x1, y1 = window
    return int(part[y0:y1, x0:x1].sum()) - inner


def box_pieces(fi: FieldInk, f: FormField) -> list[Piece]:
    """One piece per box: the ink it holds (overruns included); empty boxes marked empty.

    Boxes sharing a touching component get one piece per cut variant instead, numbered
    ``group`` (the component, from 1) and ``split`` (the variant; 0 = default); variants
    that would leave one of its boxes empty are not offered.
    """
    masks, outside, touching, windows = _assign(fi)
    default = [m.copy() for m in masks]
    extra_out = [0] * len(masks)
    default_windows = list(windows)
    for t in touching:
        for bi, part in zip(t.boxes, t.parts[0], strict=True):
            default[bi] |= part
            default_windows[bi] = _union(default_windows[bi], t.window)
            extra_out[bi] += _outside(fi, bi, part, t.window)
    owner = {bi: g for g, t in enumerate(touching, 1) for bi in t.boxes}
    pieces: list[Piece] = []
    for bi in range(len(fi.boxes)):
        if bi not in owner:
            pieces.append(_box_piece(fi, bi, masks[bi], outside[bi], windows[bi]))
    for g, t in enumerate(touching, 1):
        for v, parts in enumerate(t.parts):
            cand = []
            for j, (bi, part) in enumerate(zip(t.boxes, parts, strict=True)):
                if v == 0:
                    cand.append(_box_piece(fi, bi, default[bi], outside[bi] + extra_out[bi],
                                           default_windows[bi], g))
                    continue
                # The box's own ink and other components' default parts, with this
                # component's part of variant v instead of its default one.
                mask = (default[bi] & (1 - t.parts[0][j])) | part
                out = outside[bi] + _outside(fi, bi, part, t.window)
                cand.append(_box_piece(fi, bi, mask, out, _union(default_windows[bi], t.window),
                                       g, v))
            if v == 0 or not any(c.empty for c in cand):
                pieces.extend(cand)
    pieces.sort(key=lambda p: (p.position, p.split))
    return pieces
