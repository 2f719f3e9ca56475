"""Random field values that satisfy a field's validation rules (for synthetic forms).

Validity is decided by :func:`pipeline.validate.check_rules` (the reader's own rules, so
generated values and the pipeline cannot disagree, e.g. on the mod-11 weights); check
digits are found by trying the ten candidates against it.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from pipeline.errors import ConfigError
from pipeline.templates import FormField
from pipeline.validate import check_rules, luhn_valid, mod11_valid

DATE_MIN = dt.date(1930, 1, 1)
DATE_MAX = dt.date(2026, 12, 31)
MAX_TRIES = 2000
_DATE_PARTS = {"DDMMYYYY": "%d%m%Y", "MMDDYYYY": "%m%d%Y", "YYYYMMDD": "%Y%m%d"}


def check_digit(payload: str, check: str) -> str | None:
    """The digit that completes ``payload`` under ``check`` (luhn|mod11), None if none does."""
    ok = luhn_valid if check == "luhn" else mod11_valid
    for c in "0123456789":
        if ok(payload + c):
            return c
    return None


def value_ok(f: FormField, value: str) -> bool:
    """True when a non-empty ``value`` fits the field and satisfies all its rules."""
    limit = f.max_digits if f.kind == "string" else f.count
    return bool(value) and len(value) <= limit and not check_rules(f.validation, value)


def _length(f: FormField, rng: np.random.Generator) -> int:
    v = f.validation
    if v.length is not None:
        return v.length
    hi = f.max_digits if f.kind == "string" else f.count
    if v.max_length is not None:
        hi = min(hi, v.max_length)
    lo = 1 if f.kind == "string" else hi
    if v.min_length is not None:
        lo = max(lo, v.min_length, 1)
    return int(rng.integers(lo, max(lo, hi) + 1))


def _digits(n: int, rng: np.random.Generator, *, lead_nonzero: bool) -> str:
    ds = rng.integers(0, 10, size=n)
    if lead_nonzero and n > 1:
        ds[0] = rng.integers(1, 10)
    return "".join(map(str, ds.tolist()))


def _candidate(f: FormField, rng: np.random.Generator) -> str:
    v = f.validation
    n = _length(f, rng)
    if v.date_format is not None:
        # Within the field's own range too; the same draws when that range is wider.
        first = max(DATE_MIN, v.min_date or DATE_MIN)
        last = min(DATE_MAX, v.max_date or DATE_MAX)
        if first > last:  # a range wholly outside DATE_MIN..DATE_MAX: the field's own
            first, last = v.min_date or first, v.max_date or last
        days = (last - first).days
        d = first + dt.timedelta(days=int(rng.integers(0, days + 1)))
        return d.strftime(_DATE_PARTS[v.date_format])
    if v.min_value is not None or v.max_value is not None:
        lo = max(v.min_value if v.min_value is not None else 0, 0)
        hi = min(v.max_value if v.max_value is not None else 10**n - 1, 10**n - 1)
        if lo > hi:  # no number of this length is in range: let the caller report it
            return ""
        if f.kind == "string" and v.length is None:
            return str(int(rng.integers(lo, hi + 1)))
        return str(int(rng.integers(lo, hi + 1))).zfill(n)
    # Free numbers (amounts) rarely start with 0; fixed-length codes may.
    body = _digits(n, rng, lead_nonzero=f.kind == "string")
    if v.check is not None:
        c = check_digit(body[:-1], v.check)
        return body[:-1] + c if c is not None else ""
    return body


def generate_value(f: FormField, rng: np.random.Generator) -> str:
    """A random value (digits only) that satisfies ``f``'s validation rules.

    Raises ConfigError when the rules look unsatisfiable (nothing valid in many tries).
    """
    for _ in range(MAX_TRIES):
        value = _candidate(f, rng)
        if value and value_ok(f, value):
            return value
    raise ConfigError(
        f"field '{f.name}': could not generate a value satisfying its validation rules",
        hint="Check that length, range, regex and check digit of the field can all hold.",
    )
