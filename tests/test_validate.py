"""Validation rules and validation-aware field reading (hand-computed cases)."""

from __future__ import annotations

import datetime as dt
import itertools
import math

import numpy as np
import pytest

from pipeline.dates import prefix_ok, valid_date
from pipeline.errors import ConfigError
from pipeline.templates import FormField, Validation, load_template, parse_template
from pipeline.validate import (
    VALID_MASS_FLOOR,
    check_rules,
    check_value,
    decide_field,
    luhn_valid,
    mod11_valid,
    valid_readings,
)


def _field(
    count: int = 4, kind: str = "boxes", required: bool = True, **rules: object
) -> FormField:
    data: dict[str, object] = {
        "name": "f",
        "label": "F",
        "kind": kind,
        "x_mm": 0,
        "y_mm": 0,
        "count": count,
        "required": required,
        "validation": rules,
    }
    if kind == "date":
        data["groups"] = (2, 2, 4)
    return FormField.model_validate(data)


def _rules(**rules: object) -> Validation:
    return Validation.model_validate(rules)


def _peaked(value: str, p: float = 0.99) -> np.ndarray:
    """Rows putting ``p`` on each digit of ``value`` and the rest evenly elsewhere."""
    probs = np.full((len(value), 10), (1 - p) / 9)
    for i, c in enumerate(value):
        probs[i, int(c)] = p
    return probs


def test_two_digit_product_and_alternatives() -> None:
    probs = np.zeros((2, 10))
    probs[0, 1], probs[0, 7] = 0.7, 0.3
    probs[1, 2], probs[1, 3] = 0.6, 0.4
    d = decide_field(_field(2), probs, review_below=0.4)
    assert (d.value, d.raw_value, d.status, d.corrected) == ("12", "12", "accepted", False)
    assert d.confidence == pytest.approx(0.42)
    assert d.alternatives == ("13", "72", "73")
    assert d.alternative_confidences == pytest.approx((0.28, 0.18, 0.12))
    low = decide_field(_field(2), probs, review_below=0.5)
    assert low.status == "needs_review" and low.reasons == ("low_confidence",)


def test_luhn_and_mod11_checks() -> None:
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")
    assert mod11_valid("0306406152")  # ISBN-10 0-306-40615-2
    assert not mod11_valid("0306406153")
    # ISBN 0-8044-2957-X: the check digit would be 10, so no digit completes it.
    assert not any(mod11_valid("080442957" + str(c)) for c in range(10))


def test_luhn_correction_picks_the_single_digit_change() -> None:
    truth = "79927398713"
    probs = _peaked(truth)
    probs[3] = 0.0
    probs[3, 1], probs[3, 2] = 0.55, 0.45  # the model prefers 1 over the true 2
    d = decide_field(_field(11, check="luhn"), probs, review_below=0.3)
    assert d.raw_value == "79917398713" and not luhn_valid(d.raw_value)
    assert d.value == truth and d.corrected
    assert d.reasons == ("corrected_by_validation",)
    assert d.status == "accepted"
    assert all(luhn_valid(a) for a in d.alternatives)
    # Confidence = share of the valid readings' probability mass, whose denominator is at
    # least VALID_MASS_FLOOR: every other probable reading (a one-digit change) fails the
    # checksum, so the valid mass is ~0.41 and the truth's 0.45 * 0.99**10 becomes 0.81.
    assert d.confidence == pytest.approx(0.45 * 0.99**10 / VALID_MASS_FLOOR, rel=1e-3)
    # A length rule excludes nothing: the confidence is the plain product.
    plain = decide_field(_field(11), probs, review_below=0.3)
    assert plain.value == "79917398713"
    assert plain.confidence == pytest.approx(0.55 * 0.99**10)
    # A valid reading whose probable alternatives are invalid gets (nearly) all the mass.
    sure = np.zeros((11, 10))  # 0.97 on each true digit, 0.03 on its neighbour
    for i, c in enumerate(truth):
        sure[i, int(c)], sure[i, (int(c) + 1) % 10] = 0.97, 0.03
    assert decide_field(_field(11, check="luhn"), sure, 0.95).confidence > 0.99
    assert decide_field(_field(11), sure, 0.95).confidence == pytest.approx(0.97**11)
    # Same reading with a stricter threshold than its confidence goes to review.
    strict = decide_field(_field(11, check="luhn"), probs, 0.9)
    assert strict.status == "needs_review" and "low_confidence" in strict.reasons


def test_low_margin_correction_needs_review() -> None:
    # Raw "15" is below the range 20..39; "25" and "35" are valid and almost as likely.
    probs = np.zeros((2, 10))
    probs[0, 1], probs[0, 2], probs[0, 3] = 0.5, 0.26, 0.24
    probs[1, 5] = 1.0
    d = decide_field(_field(2, min_value=20, max_value=39), probs, review_below=0.1)
    assert d.value == "25" and d.corrected
    assert d.alternatives == ("35",)
    assert "low_margin_correction" in d.reasons and d.status == "needs_review"


def test_dates_and_leap_years() -> None:
    f = _field(8, kind="date", date_format="DDMMYYYY")
    assert check_value(f, "30022024") == ["invalid_date"]
    assert check_value(f, "29022024") == []
    assert check_value(f, "29022023") == ["invalid_date"]
    assert not valid_date("29021900", "DDMMYYYY")  # century, not leap
    assert valid_date("29022000", "DDMMYYYY")  # divisible by 400
    assert valid_date("20240229", "YYYYMMDD") and valid_date("02292024", "MMDDYYYY")
    assert not valid_date("00012024", "DDMMYYYY")


def test_date_range_is_a_rule() -> None:
    f = _field(8, kind="date", date_format="DDMMYYYY", min_date="1900-01-01",
               max_date="2026-12-31")
    assert check_value(f, "01011900") == [] and check_value(f, "31122026") == []
    assert check_value(f, "31121899") == ["date_out_of_range"]
    assert check_value(f, "01012027") == ["date_out_of_range"]
    assert check_value(f, "30022000") == ["invalid_date"]  # not a date at all, not "out"


def test_date_range_needs_a_format_and_an_order() -> None:
    with pytest.raises(ValueError, match="need a date_format"):
        _rules(length=8, min_date="1900-01-01")
    with pytest.raises(ValueError, match="is after max_date"):
        _rules(date_format="YYYYMMDD", min_date="2000-01-01", max_date="1999-12-31")
    # In a template file the same mistake is a ConfigError naming the field.
    yaml = (
        "id: t\nversion: 1\ntitle: T\ncode: 5\nwidth_mm: 210\nheight_mm: 297\nfields:\n"
        "  - {name: d, label: D, kind: date, x_mm: 10, y_mm: 10, count: 8, groups: [2, 2, 4],\n"
        "     validation: {length: 8, min_date: 1900-01-01}}\n"
    )
    with pytest.raises(ConfigError, match="date_format"):
        parse_template(yaml)


@pytest.mark.parametrize("fmt", ["DDMMYYYY", "MMDDYYYY", "YYYYMMDD"])
def test_date_prefix_pruning_never_drops_a_valid_date(fmt: str) -> None:
    """prefix_ok is a necessary condition: every prefix of every valid date passes it,
    and it rejects prefixes whose year already lies outside the bounds."""
    lo, hi = dt.date(1900, 1, 1), dt.date(2026, 12, 31)
    rules = _rules(date_format=fmt, min_date=lo, max_date=hi)
    rng = np.random.default_rng(0)
    for _ in range(3000):
        value = "".join(map(str, rng.integers(0, 10, 8)))
        digits = tuple(int(c) for c in value)
        if not check_rules(rules, value):
            assert all(prefix_ok(fmt, digits[:m], lo, hi) for m in range(9)), value
    for day in (lo, hi, dt.date(1957, 6, 30)):
        value = day.strftime({"DDMMYYYY": "%d%m%Y", "MMDDYYYY": "%m%d%Y",
                              "YYYYMMDD": "%Y%m%d"}[fmt])
        digits = tuple(int(c) for c in value)
        assert all(prefix_ok(fmt, digits[:m], lo, hi) for m in range(9)), value
    year_at = 0 if fmt == "YYYYMMDD" else 4
    head = (1, 1, 0, 1)[:year_at]
    assert not prefix_ok(fmt, (*head, 7), lo, hi)  # 7xxx
    assert not prefix_ok(fmt, (*head, 1, 8), lo, hi)  # 18xx
    assert not prefix_ok(fmt, (*head, 2, 0, 3), lo, hi)  # 203x
    assert prefix_ok(fmt, (*head, 2, 0, 2), lo, hi)


def test_date_range_search_matches_brute_force() -> None:
    """With the range pruning, the search yields exactly the valid readings, in order."""
    rules = _rules(length=8, date_format="DDMMYYYY", min_date="1900-01-01",
                   max_date="2026-12-31")
    rng = np.random.default_rng(3)
    for _ in range(20):
        probs = rng.dirichlet(np.full(10, 0.3), size=8)
        found = list(valid_readings(probs, rules, k=2))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :2]
        brute = []
        for pick in itertools.product(range(2), repeat=8):
            s = "".join(str(int(order[i, j])) for i, j in enumerate(pick))
            lp = sum(math.log(max(float(probs[i, int(c)]), 1e-12)) for i, c in enumerate(s))
            if not check_rules(rules, s) and all(
                    j == 0 or probs[i, order[i, j]] >= 1e-4 for i, j in enumerate(pick)):
                brute.append((s, lp))
        brute.sort(key=lambda x: -x[1])
        assert [s for s, _ in found] == [s for s, _ in brute]


def test_date_range_resolves_a_doubtful_year() -> None:
    """A year read 1957 (0.6) or 7957 (0.4) is doubtful by the calendar alone; once the
    range rules 7957 out, 1957 is all but certain. When 7957 is the likelier reading, the
    range corrects it, but the valid-mass floor keeps the field in review."""
    plain_f = _field(8, kind="date", date_format="DDMMYYYY")
    ranged_f = _field(8, kind="date", date_format="DDMMYYYY", min_date="1900-01-01",
                      max_date="2026-12-31")
    probs = _peaked("15061957", p=0.999)
    probs[4] = 0.0
    probs[4, 1], probs[4, 7] = 0.6, 0.4
    plain = decide_field(plain_f, probs, 0.95)
    assert plain.value == "15061957" and plain.status == "needs_review"
    assert plain.alternatives[0] == "15067957"
    ranged = decide_field(ranged_f, probs, 0.95)
    assert ranged.value == "15061957" and ranged.confidence > 0.95
    assert ranged.status == "accepted" and "15067957" not in ranged.alternatives
    probs[4, 1], probs[4, 7] = 0.45, 0.55
    corrected = decide_field(ranged_f, probs, 0.95)
    assert corrected.value == "15061957" and corrected.corrected
    assert corrected.confidence == pytest.approx(0.45 * 0.999**7 / VALID_MASS_FLOOR, rel=1e-3)
    assert corrected.status == "needs_review"


def test_shipped_date_fields_are_bounded() -> None:
    for name, field in (("delivery", "date_of_birth"), ("delivery", "delivery_date"),
                        ("survey", "survey_date")):
        rules = next(f for f in load_template(name).fields if f.name == field).validation
        assert rules.min_date == dt.date(1900, 1, 1) and rules.max_date == dt.date(2099, 12, 31)


def test_date_reading_rejects_feb_30() -> None:
    probs = _peaked("30022024")
    probs[0] = 0.0
    probs[0, 3], probs[0, 2] = 0.6, 0.4  # "30.02" is read first, "20.02" is the valid one
    d = decide_field(_field(8, kind="date", date_format="DDMMYYYY"), probs, 0.3)
    assert d.raw_value == "30022024" and d.value == "20022024" and d.corrected


def test_range_length_regex() -> None:
    f = _field(2, min_value=1, max_value=12)
    assert check_value(f, "13") == ["out_of_range"]
    assert check_value(f, "00") == ["out_of_range"]
    assert check_value(f, "07") == []
    assert check_rules(_rules(length=5), "1234") == ["invalid_length"]
    assert check_rules(_rules(min_length=2, max_length=3), "1234") == ["invalid_length"]
    assert check_rules(_rules(regex=r"9\d+"), "1234") == ["invalid_pattern"]
    assert check_rules(_rules(), "12a") == ["not_digits"]


def test_wrong_digit_count_has_no_valid_reading() -> None:
    d = decide_field(_field(5, length=5), _peaked("1234"), review_below=0.5)
    assert d.value == "1234" and d.status == "needs_review"
    assert d.reasons[:2] == ("invalid_length", "no_valid_reading")
    assert d.alternatives == ()


def test_empty_fields() -> None:
    none = np.zeros((0, 10))
    req = decide_field(_field(4), none, 0.9)
    assert (req.value, req.status, req.reasons) == ("", "needs_review", ("missing_required",))
    opt = decide_field(_field(4, required=False, length=4), none, 0.9)
    assert (opt.status, opt.reasons) == ("empty", ())
    assert check_value(_field(4, required=False, length=4), "") == []


def test_segmentation_flags_send_to_review() -> None:
    d = decide_field(_field(2), _peaked("12"), 0.5, seg_flags=("touching", "touching"))
    assert d.status == "needs_review"
    assert d.reasons == ("segmentation:touching",)
    info = decide_field(_field(2), _peaked("12"), 0.5, seg_flags=("likely",))
    assert info.status == "accepted" and info.reasons == ()


def test_unseen_digits_are_never_invented() -> None:
    onehot = np.zeros((10, 10))
    onehot[np.arange(10), [int(c) for c in "0804429570"]] = 1.0
    d = decide_field(_field(10, check="mod11"), onehot, 0.5)
    assert "no_valid_reading" in d.reasons and not d.corrected


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("check", ["luhn", "mod11"])
def test_search_finds_the_exact_best_valid_reading(seed: int, check: str) -> None:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(10), size=5)
    rules = _rules(check=check)
    top = np.argsort(-probs, axis=1)[:, :4]
    ranked = sorted(
        (
            (math.prod(probs[i, d] for i, d in enumerate(combo)), "".join(map(str, combo)))
            for combo in itertools.product(*top)
        ),
        reverse=True,
    )
    valid = [(p, s) for p, s in ranked if not check_rules(rules, s)]
    found = list(itertools.islice(valid_readings(probs, rules), 4))
    assert [s for s, _ in found] == [s for _, s in valid[:4]]
    assert [math.exp(lp) for _, lp in found] == pytest.approx([p for p, _ in valid[:4]])


def test_twenty_digit_luhn_is_corrected() -> None:
    rng = np.random.default_rng(1)
    body = "".join(str(d) for d in rng.integers(0, 10, 19))
    check = next(str(c) for c in range(10) if luhn_valid(body + str(c)))
    truth = body + check
    probs = _peaked(truth, 0.97)
    wrong = (int(truth[7]) + 3) % 10
    probs[7] = 0.01
    probs[7, wrong], probs[7, int(truth[7])] = 0.5, 0.41
    probs[7] /= probs[7].sum()
    d = decide_field(_field(20, check="luhn"), probs, 0.1)
    assert d.value == truth and d.corrected
