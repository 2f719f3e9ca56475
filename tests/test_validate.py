"""Validation rules and validation-aware field reading (hand-computed cases)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from pipeline.templates import FormField, Validation
from pipeline.validate import (
    VALID_MASS_FLOOR,
    check_rules,
    check_value,
    decide_field,
    luhn_valid,
    mod11_valid,
    valid_date,
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
