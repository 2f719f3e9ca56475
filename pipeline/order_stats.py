"""Order statistics at numpy's values, without ``np.percentile``'s general machinery.

``np.percentile`` costs ~80 us per call on the short arrays the page workers measure (a
field's ink peak, the walls' profiles, the paper level around a form's code strip): several
times the work itself. These give its values (linear interpolation, in the values' dtype)
from a partition or a sort of the two ranks needed.
"""

from __future__ import annotations

import numpy as np


def ranks(values: np.ndarray, q: float, axis: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The two order statistics around the ``q``-th percentile along ``axis`` and the
    fraction between them (np.percentile's linear interpolation). One long array is
    partitioned around those two ranks only; many short rows (wall profiles) are sorted
    whole, since numpy's vectorized sort of short rows costs half of partitioning them row
    by row."""
    n = values.shape[axis]
    pos = q / 100.0 * (n - 1)
    k = int(pos)
    k1 = min(k + 1, n - 1)
    if values.ndim > 1:
        part = np.sort(values, axis=axis)
    else:
        part = np.partition(values, [k, k1] if k1 != k else [k])
    return np.take(part, k, axis=axis), np.take(part, k1, axis=axis), pos - k


def percentile(values: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` of a non-empty array, the same value (interpolated in
    the values' dtype, as numpy does), via :func:`ranks`: it was 1.4 ms of a page's
    segmentation, and 0.34 ms of its registration (the code strip's paper level)."""
    lo, hi, frac = ranks(values.ravel(), q, 0)
    return float(lo + (hi - lo) * frac)
