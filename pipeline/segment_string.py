"""String fields: free digits in one rectangle, which may touch each other.

Components mostly inside the rectangle are merged when one is a fragment above/below
another (a broken stroke), then numbered left to right as *groups*. A group narrow enough
to be one digit is offered once (``split=0``). A wider group may hold touching digits; it
is offered as alternative hypotheses of 1, 2 and (when wide enough) 3 or 4 pieces, cut at the
columns of least ink near the even-split positions (``split`` = number of pieces).
Recognition keeps, per group, the hypothesis its model reads most confidently; the
heuristically most likely one carries the flag ``"likely"`` for model-free use (bench).
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import cv2
import numpy as np

from pipeline.segment import FieldInk, Piece, piece_ink
from pipeline.segment_cuts import least_ink_column, new_cut, path_cuts
from pipeline.templates import FormField, Template

SINGLE_MAX_RATIO = 0.85  # groups narrower than this × digit height are one digit
LENGTH_WEIGHT = 0.6  # see _likely_pieces
SPLIT_SCORES = (2.28, 3.9, 5.2)  # score thresholds for 2, 3 and 4 digits in one group
PATH_SPLIT = 10  # split ids k + 10 j: variant j of the hypothesis "k pieces" (see _variants)
CUT_SHIFTS = (0.0, -0.15, 0.15)  # cut positions tried, in fractions of a piece's width
BROKEN_MIN_DOTS = 3  # dropped dots that can add up to a broken digit (see _broken_digit)


def _groups(fi: FieldInk, rect: tuple[int, int, int, int]) -> tuple[list[list[int]], bool]:
    """Component ids per group, left to right: components inside ``rect``, fragments merged;
    and whether dots too small to keep add up to a digit (see :func:`_broken_digit`)."""
    rx, ry, rw, rh = rect
    n = fi.stats.shape[0]
    areas = fi.stats[:, cv2.CC_STAT_AREA]
    sub = fi.labels[max(0, ry) : ry + rh + 1, max(0, rx) : rx + rw + 1]
    inside = np.bincount(sub.ravel(), minlength=n)
    comps = [i for i in range(1, n) if areas[i] > 0 and inside[i] >= 0.5 * areas[i]]
    boxes = {}
    for i in comps:  # (x0, x1, y0, y1) of the component
        x, y, w, h = (int(v) for v in fi.stats[i, :4])
        boxes[i] = (x, x + w, y, y + h)
    if not comps:
        return [], False
    tall = sorted(boxes[i][3] - boxes[i][2] for i in comps)
    hd = float(tall[(3 * len(tall)) // 4]) if tall else 1.0  # fragments are many and small
    parent = {i: i for i in comps}

    def find(a: int) -> int:
        while parent[a] != a:
            a = parent[a]
        return a

    order = sorted(comps, key=lambda i: boxes[i][0])
    for a_i, a in enumerate(order):
        for b in order[a_i + 1 :]:
            ax0, ax1, ay0, ay1 = boxes[a]
            bx0, bx1, by0, by1 = boxes[b]
            if bx0 >= ax1:
                break
            ov = min(ax1, bx1) - max(ax0, bx0)
            small_h = min(ay1 - ay0, by1 - by0)
            # A fragment (much shorter than a digit) mostly above/below another: merge.
            if ov >= 0.6 * min(ax1 - ax0, bx1 - bx0) and small_h < 0.6 * hd:
                parent[find(b)] = find(a)
    groups: dict[int, list[int]] = {}
    for i in comps:
        groups.setdefault(find(i), []).append(i)
    out = list(groups.values())
    out.sort(key=lambda g: min(boxes[i][0] for i in g))
    # Drop tiny isolated groups (dots, residue) far smaller than a digit ...
    small = [g for g in out if max(boxes[i][3] - boxes[i][2] for i in g) < 0.3 * hd]
    out = [g for g in out if max(boxes[i][3] - boxes[i][2] for i in g) >= 0.3 * hd]
    # ... unless together they span a digit: a stroke a fax or a dry pen broke into dots.
    return _absorb_fragments(out, boxes, hd), _broken_digit(small, boxes, hd)


def _broken_digit(small: list[list[int]], boxes: dict[int, tuple[int, int, int, int]],
                  hd: float) -> bool:
    """Whether dropped dots cluster into something digit-sized (at least BROKEN_MIN_DOTS
    of them within gaps of a quarter digit height, together >= 0.6 digit heights tall):
    the reading would silently lose a digit, so the field must be looked at."""
    dots = sorted((boxes[i] for g in small for i in g), key=lambda b: b[0])
    cluster: list[tuple[int, int, int, int]] = []
    for b in dots:
        if cluster and b[0] - max(c[1] for c in cluster) > 0.25 * hd:
            cluster = []
        cluster.append(b)
        tall = max(c[3] for c in cluster) - min(c[2] for c in cluster)
        if len(cluster) >= BROKEN_MIN_DOTS and tall >= 0.6 * hd:
            return True
    return False


def _absorb_fragments(
    groups: list[list[int]], boxes: dict[int, tuple[int, int, int, int]], hd: float
) -> list[list[int]]:
    """Merge a short group (a detached bar of a 5 or 7) into the neighbour it touches.

    A fragment much shorter than a digit is never a digit of its own; it joins the
    neighbouring group it overlaps in x most, or the nearer one when it sits within a
    small gap of it.
    """
    def span(g: list[int]) -> tuple[int, int, int]:
        x0 = min(boxes[i][0] for i in g)
        x1 = max(boxes[i][1] for i in g)
        return x0, x1, max(boxes[i][3] for i in g) - min(boxes[i][2] for i in g)

    changed = True
    while changed and len(groups) > 1:
        changed = False
        for k, g in enumerate(groups):
            x0, x1, h = span(g)
            if h >= 0.5 * hd:
                continue
            best, best_gap = -1, 0.2 * hd
            for j in (k - 1, k + 1):
                if 0 <= j < len(groups):
                    a0, a1, _ = span(groups[j])
                    gap = max(a0 - x1, x0 - a1)  # negative = overlap
                    if gap < best_gap:
                        best, best_gap = j, gap
            if best >= 0:
                groups[best] = groups[best] + g
                del groups[k]
                changed = True
                break
    return groups


def _half(width: int, k: int) -> int:
    """How far (px) each cut between ``k`` pieces of a ``width``-wide group may move."""
    return max(1, int(0.22 * width / k))


def _cuts(proj: np.ndarray, k: int, shift: float = 0.0) -> list[int]:
    """Cut columns for ``k`` pieces: least ink near the even-split positions.

    ``shift`` moves those positions by a fraction of a piece's width (digits of one
    string differ in width: a 1 beside a 0).
    """
    w = len(proj)
    return [least_ink_column(proj, (i + shift) * w / k, _half(w, k), pull=0.15)
            for i in range(1, k)]


def _variants(m: np.ndarray, proj: np.ndarray, kmax: int
              ) -> dict[int, list[tuple[int, list[np.ndarray]]]]:
    """Cut hypotheses for 1 … ``kmax`` pieces of one group: per ``k``, a list of
    ``(split id, per-cut x of each row)``.

    Split ``k`` is the straight cut at the least-ink columns; ids ``k + PATH_SPLIT * j``
    are variants: the cuts shifted left/right, and each as an ink-avoiding path. The
    model picks among them (same piece count: the most probable reading). Every path
    of every ``k`` is computed in one call (:func:`pipeline.segment_cuts.path_cuts`).
    """
    h, w = m.shape
    cuts = {(k, shift): _cuts(proj, k, shift)
            for k in range(2, kmax + 1) for shift in CUT_SHIFTS}
    wanted = list(dict.fromkeys((c, _half(w, k)) for (k, _), cs in cuts.items() for c in cs))
    paths = dict(zip(wanted, path_cuts(m, wanted), strict=True))
    out: dict[int, list[tuple[int, list[np.ndarray]]]] = {1: [(1, [])]}
    for k in range(2, kmax + 1):
        out[k] = []
        seen: list[list[np.ndarray]] = []
        for shift in CUT_SHIFTS:
            cs = cuts[(k, shift)]
            for edges in ([np.full((h, 1), c) for c in cs],
                          [paths[(c, _half(w, k))][:, None] for c in cs]):
                if new_cut(edges, seen):
                    out[k].append((k + PATH_SPLIT * len(out[k]), edges))
    return out


def _likely_pieces(m: np.ndarray, ratio: float, hd: float) -> int:
    """Model-free guess of how many digits a group holds.

    Width alone confuses wide single digits (a flat 2, a long-barred 7) with touching
    pairs; touching digits also have about twice the stroke length (ink area over stroke
    width) of one. Weight and thresholds fitted on 800 groups of synthetic MNIST strings
    (98 % of groups right).
    """
    runs = np.diff(np.pad(m, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    n_runs = int(np.count_nonzero(runs == 1))
    sw = float(m.sum()) / max(n_runs, 1)  # mean horizontal run = stroke width
    length = float(m.sum()) / max(sw * hd, 1.0)
    score = ratio + LENGTH_WEIGHT * length
    return 1 + sum(score >= t for t in SPLIT_SCORES)


def string_pieces(fi: FieldInk, f: FormField, t: Template) -> list[Piece]:
    """Candidate pieces of a string field (see the module docstring)."""
    rect = fi.boxes[0]
    groups, broken = _groups(fi, rect)
    ox, oy = fi.origin
    if not groups:
        rx, ry, rw, rh = rect
        return [Piece(0, (rx + ox, ry + oy, rw, rh), np.zeros((1, 1), np.uint8), True,
                      flags=("broken",) if broken else ())]
    masks = [np.isin(fi.labels, g).astype(np.uint8) for g in groups]
    heights = []
    spans = []
    windows = []  # (x0, y0, x1, y1) of each group's ink: its pieces are cut there only
    for m in masks:
        x, y, w, h = cv2.boundingRect(m)
        heights.append(h)
        spans.append((x, x + w))
        windows.append((x, y, x + w, y + h))
    hd = float(np.median(heights))
    # A group as tall as the tallest is a full digit; use the taller half as digit height.
    hd = float(np.median([h for h in heights if h >= hd])) if heights else 1.0
    pieces: list[Piece] = []
    pos = 0
    for gi, (m, (sx0, sx1), win) in enumerate(zip(masks, spans, windows, strict=True)):
        ratio = (sx1 - sx0) / max(hd, 1.0)
        if ratio < SINGLE_MAX_RATIO:
            ink, bbox = piece_ink(fi, m, win)
            pieces.append(Piece(pos, bbox, ink, group=gi, split=0))
            pos += 1
            continue
        kmax = 2 if ratio <= 1.45 else 3 if ratio <= 2.0 else 4
        band = m[:, sx0:sx1]  # the group's columns: outside them every part is empty
        likely = min(kmax, _likely_pieces(band, ratio, hd))
        proj = band.sum(axis=0).astype(np.float32)
        cols = np.arange(sx1 - sx0)[None, :]
        for k, variants in _variants(band, proj, kmax).items():
            flags = ("touching", "likely") if k == likely else ("touching",)
            for split, edges in variants:
                lims = [np.zeros((m.shape[0], 1), np.int64), *edges,
                        np.full((m.shape[0], 1), sx1 - sx0)]
                for a, b in itertools.pairwise(lims):
                    cut = (band * ((cols >= a) & (cols < b))).astype(np.uint8)
                    if not cut.any():
                        continue
                    part = np.zeros_like(m)
                    part[:, sx0:sx1] = cut
                    ink, bbox = piece_ink(fi, part, win)
                    vflags = flags if split == k else ("touching",)
                    pieces.append(Piece(pos, bbox, ink, flags=vflags, group=gi, split=split))
                    pos += 1
    if broken:  # on every piece: whichever cut is chosen, the field carries the doubt
        pieces = [replace(p, flags=(*p.flags, "broken")) for p in pieces]
    return pieces
