"""Cuts between touching digits: straight least-ink columns and ink-avoiding paths.

Shared by the boxed-field (:mod:`pipeline.segment_boxes`) and string-field
(:mod:`pipeline.segment_string`) segmenters; each cut is an x per row of a component's mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def least_ink_column(proj: np.ndarray, c: float, half: int, pull: float = 0.0) -> int:
    """The column within ``half`` of ``c`` where a straight cut crosses the least ink
    (``proj``: ink per column); ``pull`` × the peak column ink per ``half`` of distance
    keeps the cut near ``c`` when the ink is much the same."""
    w = len(proj)
    lo, hi = max(1, int(c) - half), min(w - 1, int(c) + half + 1)
    if hi <= lo:
        return int(c)
    xs = np.arange(lo, hi)
    cost = proj[lo:hi] + pull * float(proj.max()) * np.abs(xs - c) / max(half, 1)
    return int(xs[int(np.argmin(cost))])


def new_cut(edges: list[np.ndarray], seen: list[list[np.ndarray]]) -> bool:
    """Whether the cut ``edges`` (per-row x of each boundary) differs from all ``seen``;
    if so it is added to them. Cut variants often coincide (a clean gap)."""
    if any(all(np.array_equal(a, b) for a, b in zip(edges, e, strict=True)) for e in seen):
        return False
    seen.append(edges)
    return True


def path_cut(m: np.ndarray, c: float, half: int) -> np.ndarray:
    """A top-to-bottom cut through the least ink near column ``c``: its x for every row.

    Slanted touching digits overlap in x, so no straight column separates them; a path
    that may step one column per row (dynamic programming over the rows, crossing ink is
    expensive, straying from ``c`` a little) follows the gap between them.
    """
    return path_cuts(m, [(c, half)])[0]


def path_cuts(m: np.ndarray, cuts: Sequence[tuple[float, int]]) -> list[np.ndarray]:
    """:func:`path_cut` of ``m`` for every ``(c, half)`` of ``cuts``, computed together.

    The dynamic programme runs row by row in numpy calls whose overhead, not arithmetic,
    is its cost; the cuts of one mask run side by side in one array (each in its own
    window, padded with infinite cost, which no path takes), one set of calls per row.
    """
    h, w = m.shape
    wins = [(max(1, int(c) - 2 * half), min(w - 1, int(c) + 2 * half + 1)) for c, half in cuts]
    todo = [i for i, (lo, hi) in enumerate(wins) if hi - lo >= 3]
    out = [np.full(h, int(c)) for c, _ in cuts]
    if not todo:
        return out
    width = max(wins[i][1] - wins[i][0] for i in todo)
    # cost[y, i, 1 + x]: crossing ink is expensive, straying from c a little.
    cost = np.full((h, len(todo), width + 2), np.inf)
    for k, i in enumerate(todo):
        (c, half), (lo, hi) = cuts[i], wins[i]
        xs = np.arange(lo, hi)
        cost[:, k, 1 : 1 + hi - lo] = (m[:, lo:hi].astype(np.float32) * 10.0
                                       + (np.abs(xs - c) / max(half, 1))[None, :])
    # Forward pass: the cheapest path cost to every pixel, one row at a time; the min
    # over the three cells above is the min of two overlapping pairs (no argmin, no
    # fancy indexing). Costs add up in float64 but predecessors are compared in float32
    # (``pair``, and ``rows`` below): the rounding the first version of this cut had,
    # kept so that near-ties resolve as they always have.
    acc = np.empty_like(cost)
    acc[0] = cost[0]
    acc[1:, :, 0] = acc[1:, :, -1] = np.inf
    pair = np.empty((len(todo), width + 1), np.float32)
    for y in range(1, h):
        prev, cur = acc[y - 1], acc[y]
        np.minimum(prev[:, :-1], prev[:, 1:], out=pair)
        np.minimum(pair[:, :-1], pair[:, 1:], out=cur[:, 1:-1])
        cur += cost[y]
    for k, i in enumerate(todo):
        lo, hi = wins[i]
        out[i] = _trace(acc[:, k, 1 : 1 + hi - lo], lo)
    return out


def _trace(acc: np.ndarray, lo: int) -> np.ndarray:
    """Backward pass of :func:`path_cuts` over one cut's costs ``acc`` (rows × window):
    follow the cheapest predecessor, preferring left, then above, then right on ties."""
    h = acc.shape[0]
    rows = acc.astype(np.float32).tolist()
    last = len(rows[0]) - 1
    path = np.empty(h, np.int64)
    j = int(np.argmin(acc[-1]))
    for y in range(h - 1, 0, -1):
        path[y] = j + lo
        prev = rows[y - 1]
        best, step = prev[j], 0
        if j > 0 and prev[j - 1] <= best:
            best, step = prev[j - 1], -1
        if j < last and prev[j + 1] < best:
            step = 1
        j += step
    path[0] = j + lo
    return path
