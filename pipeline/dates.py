"""Date fields: calendar validity, the accepted date range, and prefix tests for the search.

A date field holds eight digits in one of three orders (``DDMMYYYY``, ``MMDDYYYY``,
``YYYYMMDD``). Its rules can also bound the date (``min_date`` / ``max_date`` in the
template, e.g. a date of birth between 1900-01-01 and the end of this year). A bound is
information the reader uses, not only a check: most of a date's doubtful readings are
ruled out by it (a year read as 1796 or 7990), so the validation-aware search in
:mod:`pipeline.validate` prunes prefixes that no date in range can complete.
"""

from __future__ import annotations

import datetime as dt

Span = tuple[int, int]  # (start, end) digit positions, end exclusive

# (start, end) of the day, month and year digits in each order.
DATE_PARTS: dict[str, tuple[Span, Span, Span]] = {
    "DDMMYYYY": ((0, 2), (2, 4), (4, 8)),
    "MMDDYYYY": ((2, 4), (0, 2), (4, 8)),
    "YYYYMMDD": ((6, 8), (4, 6), (0, 4)),
}


def parse_date(value: str, fmt: str) -> dt.date | None:
    """The calendar date ``value`` spells in ``fmt``; ``None`` when it is none (31 June)."""
    if len(value) != 8 or not value.isdigit():
        return None
    (d0, d1), (m0, m1), (y0, y1) = DATE_PARTS[fmt]
    try:
        return dt.date(int(value[y0:y1]), int(value[m0:m1]), int(value[d0:d1]))
    except ValueError:
        return None


def valid_date(value: str, fmt: str) -> bool:
    """Whether ``value`` is a real calendar date in ``fmt`` (Gregorian leap years, year ≥ 1)."""
    return parse_date(value, fmt) is not None


def in_range(day: dt.date, lo: dt.date | None, hi: dt.date | None) -> bool:
    """Whether ``day`` lies within ``[lo, hi]`` (a missing bound does not bound)."""
    return (lo is None or day >= lo) and (hi is None or day <= hi)


def prefix_ok(
    fmt: str, prefix: tuple[int, ...], lo: dt.date | None = None, hi: dt.date | None = None
) -> bool:
    """Cheap necessary conditions on the first digits of an eight-digit date.

    False when no completion of ``prefix`` can be a date of ``fmt`` within ``[lo, hi]``:
    a complete day outside 01–31, a complete month outside 01–12, year 0000, or a year
    whose digits so far already fall outside the bounds' years. Exact checks (30 February,
    a day before ``lo`` in ``lo``'s year) are left to :func:`parse_date` on whole strings.
    """
    m = len(prefix)
    (d0, d1), (m0, m1), (y0, y1) = DATE_PARTS[fmt]
    if m >= d1 and not 1 <= prefix[d0] * 10 + prefix[d0 + 1] <= 31:
        return False
    if m >= m1 and not 1 <= prefix[m0] * 10 + prefix[m0 + 1] <= 12:
        return False
    known = min(m, y1) - y0  # year digits known so far
    if known <= 0:
        return True
    base = int("".join(map(str, prefix[y0 : y0 + known])))
    rest = 10 ** (4 - known)
    first, last = base * rest, (base + 1) * rest - 1  # the years this prefix can complete to
    y_lo = max(1, lo.year if lo is not None else 1)
    y_hi = hi.year if hi is not None else 9999
    return first <= y_hi and last >= y_lo
