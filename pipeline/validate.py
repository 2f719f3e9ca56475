"""Field validation rules and validation-aware reading of a field's digits.

Two jobs:

- :func:`check_value` tells why a digit string breaks a field's
  :class:`~pipeline.templates.Validation` rules (an empty list = valid).
- :func:`decide_field` turns the model's per-digit probabilities into a value, a
  confidence and a status (``accepted`` / ``needs_review`` / ``empty``).

Confidence. The model's probabilities are calibrated and we treat digits as independent,
so the probability of a reading is the product of its digits' probabilities. The written
value obeys the field's rules, so what the accept threshold needs is that product as a
share of the mass of all *valid* readings, ``P(s) / Σ P(valid)``: a checksum rules out
every one-digit misreading, a date or a range most of them, and a field whose doubtful
digit has only one valid choice is not doubtful. Renormalizing without limit would be
dangerous, though: when the model believes every valid candidate unlikely (garbage, a
mis-cut field, a writer's slip), one surviving candidate of tiny mass would come out near 1.
So the denominator is never below :data:`VALID_MASS_FLOOR`: the renormalization can at
most double a reading's probability, and a reading of tiny mass stays tiny. On the 200
development pages this took the review rate at equal accepted-field error from 18 % to 17 %
(see docs/BENCHMARKS.md).

Validation-aware reading. When a field has rules, the value is the most probable digit
string (over each position's top-``k`` digits) that satisfies them, found by an A* search
over prefixes: the heuristic is the exact best log-probability of the remaining suffix
that still completes the check-digit residue (Luhn mod 10 or mod 11), computed by a
backward dynamic programme. With an exact heuristic complete strings leave the queue in
order of decreasing probability, so the first valid one is the best and the next three are
the alternatives; other rules (length, regex, range, date) are checked on complete strings.

Mod-11 check (documented contract): the rightmost digit is the check digit; weights from
the right are 1, 2, ..., 10, 1, 2, ... (ISBN-10 weights, cycled so no weight is ≡ 0 mod 11)
and the weighted sum must be ≡ 0 (mod 11). A body whose check digit would have to be 10
has no valid digit string (we do not accept "X").
"""

from __future__ import annotations

import heapq
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from pipeline.dates import in_range, parse_date, prefix_ok
from pipeline.templates import FormField, Validation

TOP_K = 4
# A* pops at most this many prefixes per field: bounds the time on hostile rule sets
# (e.g. a regex almost nothing matches) while being far above what real fields need.
MAX_POPS = 20_000
# Valid readings summed for the field confidence (see decide_field); enumeration stops
# earlier once a reading adds less than 1e-4 of the mass so far.
VALID_MASS_READINGS = 256
VALID_MASS_FLOOR = 0.5  # the valid mass a confidence is divided by is never below this
N_ALTERNATIVES = 3
# A correction is trusted only when the runner-up valid reading is clearly less likely:
# above this probability ratio (runner-up / best) the reviewer must decide.
LOW_MARGIN_RATIO = 0.5
_LOG_FLOOR = 1e-12
MIN_CANDIDATE_PROB = 1e-4  # non-top digits below this are never substituted

# Segmentation flags that describe rather than doubt; every other flag (touching, faint,
# residue, ...) is a doubt that sends the field to review. segment_string marks the split it
# expected as "likely". "overrun" (ink outside its box) is left to the confidence: on 200
# development pages (seed 4242) 183 fields had it, 8 were misread, and all 8 were below
# the default threshold anyway, while forcing review doubled the review rate of boxed fields.
# "touching_split": touching digits cut where the piece verifier was sure (assemble).
INFO_FLAGS = frozenset({"likely", "overrun", "touching_split"})

# Reasons that note what happened to an accepted field rather than doubt it: a reading
# corrected by the rules (with a clear margin), a string the whole-string reader agreed with.
NOTE_REASONS = frozenset({"corrected_by_validation", "string_reader_agrees",
                          "box_reader_agrees"})

STATUS_ACCEPTED = "accepted"
STATUS_REVIEW = "needs_review"
STATUS_EMPTY = "empty"


@dataclass(frozen=True, slots=True)
class FieldDecision:
    """The reading of one field: value, confidence, status and why."""

    value: str
    raw_value: str  # argmax per digit, before validation-aware correction
    confidence: float  # probability of the value among the valid readings (module docstring)
    status: str  # accepted | needs_review | empty
    reasons: tuple[str, ...]
    corrected: bool  # value differs from raw_value because of the rules
    alternatives: tuple[str, ...]  # next most probable valid readings
    alternative_confidences: tuple[float, ...]


def luhn_valid(value: str) -> bool:
    """Luhn (mod 10) check over a digit string, check digit rightmost."""
    return sum(_luhn_term(int(c), i) for i, c in enumerate(reversed(value))) % 10 == 0


def mod11_valid(value: str) -> bool:
    """Mod-11 check with cycled ISBN-10 weights (see module docstring)."""
    return sum(_mod11_term(int(c), i) for i, c in enumerate(reversed(value))) % 11 == 0


def _luhn_term(d: int, pos_from_right: int) -> int:
    if pos_from_right % 2 == 1:
        d *= 2
        return d - 9 if d > 9 else d
    return d


def _no_term(d: int, pos_from_right: int) -> int:
    return 0


def _mod11_term(d: int, pos_from_right: int) -> int:
    return (pos_from_right % 10 + 1) * d % 11


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def check_rules(v: Validation, value: str) -> list[str]:
    """Reasons a non-empty digit string breaks the rules ``v`` (empty list = valid)."""
    if not value.isdigit() or not value.isascii():
        return ["not_digits"]
    reasons: list[str] = []
    n = len(value)
    if (
        (v.length is not None and n != v.length)
        or (v.min_length is not None and n < v.min_length)
        or (v.max_length is not None and n > v.max_length)
    ):
        reasons.append("invalid_length")
    if v.regex is not None and _compiled(v.regex).fullmatch(value) is None:
        reasons.append("invalid_pattern")
    if (v.min_value is not None and int(value) < v.min_value) or (
        v.max_value is not None and int(value) > v.max_value
    ):
        reasons.append("out_of_range")
    if v.check == "luhn" and not luhn_valid(value):
        reasons.append("invalid_luhn")
    if v.check == "mod11" and not mod11_valid(value):
        reasons.append("invalid_mod11")
    if v.date_format is not None:
        day = parse_date(value, v.date_format)
        if day is None:
            reasons.append("invalid_date")
        elif not in_range(day, v.min_date, v.max_date):
            reasons.append("date_out_of_range")
    return reasons


def check_value(field: FormField, value: str | None) -> list[str]:
    """Reasons ``value`` is not acceptable for ``field`` (empty list = valid).

    An empty value is valid for an optional field (rules apply to what was written) and
    gives ``["missing_required"]`` for a required one.
    """
    if not value:
        return ["missing_required"] if field.required else []
    return check_rules(field.validation, value)


def _top_k(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per position: the ``k`` most probable digits and their log-probabilities."""
    k = min(k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    p = np.take_along_axis(probs, order, axis=1)
    logp = np.log(np.clip(p, _LOG_FLOOR, None))
    # A digit the model all but rules out is no candidate: otherwise the search would
    # "find" valid readings of probability 1e-12 by inventing digits nobody saw.
    logp[:, 1:][p[:, 1:] < MIN_CANDIDATE_PROB] = -math.inf
    return order, logp


def valid_readings(
    probs: np.ndarray, rules: Validation, *, k: int = TOP_K, max_pops: int = MAX_POPS
) -> Iterator[tuple[str, float]]:
    """Yield ``(digit string, log-probability)`` satisfying ``rules``, most probable first.

    Only each position's top-``k`` digits are considered. Stops silently after
    ``max_pops`` queue pops.
    """
    n = probs.shape[0]
    if n == 0:
        return
    digits, logp = _top_k(np.asarray(probs, dtype=np.float64), k)
    k = digits.shape[1]
    term: Callable[[int, int], int]
    if rules.check == "luhn":
        mod, term = 10, _luhn_term
    elif rules.check == "mod11":
        mod, term = 11, _mod11_term
    else:
        mod, term = 1, _no_term  # no residue state: the heuristic is plain best-suffix
    # contrib[i, j]: residue contribution of candidate j at position i (reading order).
    contrib = np.array(
        [[term(int(digits[i, j]), n - 1 - i) % mod for j in range(k)] for i in range(n)],
        dtype=np.int64,
    ) if mod > 1 else np.zeros((n, k), np.int64)
    # h[i, r]: best log-prob of positions i..n-1 given residue r so far, ending at residue 0.
    h = np.full((n + 1, mod), -math.inf)
    h[n, 0] = 0.0
    residues = np.arange(mod)[:, None]
    for i in range(n - 1, -1, -1):
        # every residue r at once: candidate j leads to residue (r + contrib[i, j]) % mod
        h[i] = np.max(logp[i][None, :] + h[i + 1][(residues + contrib[i][None, :]) % mod],
                      axis=1)
    if not math.isfinite(h[0, 0]):
        return
    # Length is fixed by the number of crops; fail fast instead of enumerating.
    length_only = Validation(
        length=rules.length, min_length=rules.min_length, max_length=rules.max_length
    )
    if check_rules(length_only, "0" * n):
        return
    tie = 0
    heap: list[tuple[float, int, int, int, float, tuple[int, ...]]] = [
        (-h[0, 0], tie, 0, 0, 0.0, ())
    ]
    pops = 0
    # The search runs on Python lists: indexing numpy scalars was most of its cost.
    h_rows, lp_rows, con_rows, dig_rows = h.tolist(), logp.tolist(), contrib.tolist(), \
        digits.tolist()
    pruned = _has_prefix_rules(rules, n)  # else _prefix_ok is always True
    isfinite = math.isfinite
    # Per position, the digits worth expanding (finite log-probability), in top-k order,
    # as (log-probability, digit, residue contribution): tested once, not on every pop.
    cands = [[(lp, d, c) for lp, d, c in zip(lp_rows[i], dig_rows[i], con_rows[i], strict=True)
              if isfinite(lp)] for i in range(n)]
    while heap and pops < max_pops:
        _, _, i, r, g, prefix = heapq.heappop(heap)
        pops += 1
        if i == n:
            s = "".join(map(str, prefix))
            if not check_rules(rules, s):
                yield s, g
            continue
        h_next = h_rows[i + 1]
        for lp_ij, digit, con in cands[i]:
            r2 = (r + con) % mod
            rest = h_next[r2]
            if not isfinite(rest):
                continue
            child = (*prefix, digit)
            if pruned and not _prefix_ok(rules, child, n):
                continue
            g2 = g + lp_ij
            tie += 1
            heapq.heappush(heap, (-(g2 + rest), tie, i + 1, r2, g2, child))


def _has_ranges(rules: Validation) -> bool:
    return rules.min_value is not None or rules.max_value is not None


def _is_date(rules: Validation, n: int) -> bool:
    """Whether an ``n``-digit reading is checked as a date."""
    return rules.date_format is not None and n == 8


def _has_prefix_rules(rules: Validation, n: int) -> bool:
    """Whether :func:`_prefix_ok` can reject any prefix of an ``n``-digit reading."""
    return _has_ranges(rules) or _is_date(rules, n)


def _prefix_ok(rules: Validation, prefix: tuple[int, ...], n: int) -> bool:
    """Cheap necessary conditions on a prefix, so hopeless branches are never expanded."""
    m = len(prefix)
    if _has_ranges(rules):
        # All completions of the prefix lie between prefix+"00.." and prefix+"99..".
        base = int("".join(map(str, prefix)))
        lo, hi = base * 10 ** (n - m), (base + 1) * 10 ** (n - m) - 1
        if (rules.max_value is not None and lo > rules.max_value) or (
            rules.min_value is not None and hi < rules.min_value
        ):
            return False
    if _is_date(rules, n):
        assert rules.date_format is not None
        return prefix_ok(rules.date_format, prefix, rules.min_date, rules.max_date)
    return True


def decide_field(
    field: FormField,
    probs: np.ndarray,
    review_below: float,
    seg_flags: Sequence[str] = (),
) -> FieldDecision:
    """Read one field from its digits' calibrated probabilities and decide its status.

    Args:
        field: the template field (its rules and ``required`` flag are used).
        probs: ``(n, 10)`` probabilities of the non-empty positions in reading order;
            ``n == 0`` means the field is empty.
        review_below: fields whose confidence is below this go to review.
        seg_flags: segmentation flags of the field (e.g. ``"touching"``, ``"faint"``);
            every flag except the informational :data:`INFO_FLAGS` sends it to review.

    Returns:
        The :class:`FieldDecision`. Reasons: ``missing_required``, ``low_confidence``,
        ``corrected_by_validation``, ``low_margin_correction``, ``no_valid_reading`` (plus
        the rule reasons of the raw reading), ``segmentation:<flag>``.
    """
    probs = np.asarray(probs, dtype=np.float64).reshape(-1, 10)
    n = probs.shape[0]
    seg_reasons = tuple(
        f"segmentation:{f}" for f in dict.fromkeys(seg_flags) if f not in INFO_FLAGS
    )
    if n == 0:
        if field.required:
            return FieldDecision(
                "", "", 1.0, STATUS_REVIEW, ("missing_required", *seg_reasons), False, (), ()
            )
        status = STATUS_REVIEW if seg_reasons else STATUS_EMPTY
        return FieldDecision("", "", 1.0, status, seg_reasons, False, (), ())

    raw_digits = probs.argmax(axis=1)
    raw = "".join(str(int(d)) for d in raw_digits)
    raw_conf = float(np.prod(probs[np.arange(n), raw_digits]))
    rules = field.validation
    reasons: list[str] = []
    review = False
    found: list[tuple[str, float]] = []
    valid_mass = 0.0
    for i, (s, lp) in enumerate(valid_readings(probs, rules)):
        p = math.exp(lp)
        valid_mass += p
        if len(found) <= N_ALTERNATIVES:
            found.append((s, p))
        elif i >= VALID_MASS_READINGS or p < 1e-4 * valid_mass:
            break
    constrained = any(v is not None for v in (
        rules.regex, rules.min_value, rules.max_value, rules.check, rules.date_format))
    if found and constrained:
        # Share of the valid readings' mass, renormalized at most 2x (see module docstring).
        # Strings using a digit outside some position's top-k were not searched: count
        # their mass as if all were valid, so the estimate errs on the unsure side.
        top = np.sort(probs, axis=1)[:, -TOP_K:].sum(axis=1)
        norm = max(valid_mass + max(0.0, 1.0 - float(np.prod(top))), VALID_MASS_FLOOR)
        found = [(s, min(1.0, p / norm)) for s, p in found]
        raw_conf = min(1.0, raw_conf / norm) if not check_rules(rules, raw) else raw_conf
    if not found:
        value, conf, alts = raw, raw_conf, []
        reasons += [*check_rules(rules, raw), "no_valid_reading"]
        review = True
    else:
        if not check_rules(rules, raw):
            # Equal-probability ties may pop another string first; the raw reading wins them.
            found = [(raw, raw_conf)] + [(s, c) for s, c in found if s != raw]
        (value, conf), alts = found[0], found[1 : N_ALTERNATIVES + 1]
        if value != raw:
            reasons.append("corrected_by_validation")
            if alts and alts[0][1] > LOW_MARGIN_RATIO * conf:
                reasons.append("low_margin_correction")
                review = True
    if conf < review_below:
        reasons.append("low_confidence")
        review = True
    if seg_reasons:
        reasons += seg_reasons
        review = True
    return FieldDecision(
        value=value,
        raw_value=raw,
        confidence=conf,
        status=STATUS_REVIEW if review else STATUS_ACCEPTED,
        reasons=tuple(reasons),
        corrected=value != raw,
        alternatives=tuple(a for a, _ in alts),
        alternative_confidences=tuple(c for _, c in alts),
    )
