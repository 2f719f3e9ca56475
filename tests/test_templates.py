"""Template schema errors name the offending key; shipped templates load; values fit rules."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pytest
import yaml

from pipeline.errors import ConfigError
from pipeline.synth_values import generate_value
from pipeline.templates import (
    FormField,
    available_templates,
    load_template,
    load_templates,
    parse_template,
)

BASE: dict = {
    "id": "t",
    "title": "T",
    "code": 5,
    "fields": [
        {"name": "zip", "label": "Zip", "kind": "boxes", "x_mm": 20, "y_mm": 50, "count": 5},
        {
            "name": "d",
            "label": "Date",
            "kind": "date",
            "x_mm": 20,
            "y_mm": 80,
            "count": 8,
            "groups": [2, 2, 4],
        },
    ],
}


def _with(**field_changes: object) -> str:
    doc = yaml.safe_load(yaml.safe_dump(BASE))
    doc["fields"][0].update(field_changes)
    return yaml.safe_dump(doc)


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_template(text, "test.yaml")
    return str(info.value)


def test_base_document_is_valid() -> None:
    t = parse_template(yaml.safe_dump(BASE))
    assert [f.name for f in t.fields] == ["zip", "d"]


def test_bad_kind_names_the_key() -> None:
    msg = _error(_with(kind="box"))
    assert "fields[0].kind" in msg and "test.yaml" in msg


def test_unknown_key_names_the_key() -> None:
    msg = _error(_with(colour="red"))
    assert "fields[0].colour" in msg


def test_bad_separator_names_the_key() -> None:
    msg = _error(_with(separator=":"))
    assert "fields[0].separator" in msg


def test_comb_with_gap_is_rejected() -> None:
    msg = _error(_with(kind="comb", gap_mm=1.5))
    assert "fields[0]" in msg and "'zip'" in msg and "gap_mm" in msg


def test_date_groups_must_sum_to_count() -> None:
    doc = yaml.safe_load(yaml.safe_dump(BASE))
    doc["fields"][1]["groups"] = [2, 2, 2]
    msg = _error(yaml.safe_dump(doc))
    assert "fields[1]" in msg and "'d'" in msg and "groups" in msg


def test_field_outside_the_page_is_rejected() -> None:
    msg = _error(_with(x_mm=190))
    assert "'zip'" in msg and "outside the page" in msg


def test_duplicate_names_are_rejected() -> None:
    doc = yaml.safe_load(yaml.safe_dump(BASE))
    doc["fields"][1]["name"] = "zip"
    msg = _error(yaml.safe_dump(doc))
    assert "duplicate field names: zip" in msg


def test_unknown_top_level_key_and_code_range() -> None:
    doc = yaml.safe_load(yaml.safe_dump(BASE))
    doc["colour"] = "red"
    assert "'colour'" in _error(yaml.safe_dump(doc))
    doc = yaml.safe_load(yaml.safe_dump(BASE))
    doc["code"] = 256
    assert "'code'" in _error(yaml.safe_dump(doc))


def test_shipped_templates_load_and_differ() -> None:
    assert {"delivery", "survey"} <= set(available_templates())
    ts = load_templates()
    assert len({t.code for t in ts}) == len(ts)
    for t in ts:
        assert load_template(t.id) == t
        top = t.marks.inset_mm + t.marks.size_mm + 16.0  # title band stays free of fields
        for f in t.fields:
            x, y, w, _h = f.bounds_mm()
            assert y >= top, f.name
            assert x >= t.marks.inset_mm and x + w <= t.width_mm - t.marks.inset_mm, f.name


def test_shipped_delivery_has_the_required_fields() -> None:
    t = load_template("delivery")
    by = t.field_by_name
    assert by["zip_code"].count == 5 and by["phone"].kind == "comb"
    assert by["date_of_birth"].groups == (2, 2, 4)
    assert by["account_number"].validation.check == "luhn"
    assert by["customer_number"].validation.check == "mod11"
    assert by["amount"].kind == "string" and not by["amount"].required


# Independent implementations of the rules, to check the generator against.
def _luhn(s: str) -> bool:
    total = 0
    for i, ch in enumerate(s[::-1]):
        d = int(ch) * (2 if i % 2 else 1)
        total += d // 10 + d % 10
    return total % 10 == 0


def _mod11(s: str) -> bool:
    return sum(int(ch) * (i % 10 + 1) for i, ch in enumerate(s[::-1])) % 11 == 0


_FMT = {"DDMMYYYY": "%d%m%Y", "MMDDYYYY": "%m%d%Y", "YYYYMMDD": "%Y%m%d"}


@pytest.mark.parametrize("name", ["delivery", "survey"])
def test_generated_values_satisfy_their_rules(name: str) -> None:
    t = load_template(name)
    seen_check = 0
    for seed in range(300):
        rng = np.random.default_rng(seed)
        for f in t.fields:
            v = generate_value(f, rng)
            r = f.validation
            assert v.isdigit(), (f.name, v)
            assert len(v) <= (f.max_digits if f.kind == "string" else f.count)
            if r.length is not None:
                assert len(v) == r.length
            if r.min_length is not None:
                assert len(v) >= r.min_length
            if r.max_length is not None:
                assert len(v) <= r.max_length
            if r.regex is not None:
                assert re.fullmatch(r.regex, v), (f.name, v)
            if r.min_value is not None:
                assert int(v) >= r.min_value
            if r.max_value is not None:
                assert int(v) <= r.max_value
            if r.check == "luhn":
                assert _luhn(v), v
                seen_check += 1
            if r.check == "mod11":
                assert _mod11(v), v
                seen_check += 1
            if r.date_format is not None:
                d = dt.datetime.strptime(v, _FMT[r.date_format]).date()
                assert dt.date(1900, 1, 1) <= d <= dt.date(2026, 12, 31)
    assert seen_check == (600 if name == "delivery" else 0)


def test_generated_values_vary() -> None:
    f = load_template("delivery").field_by_name["account_number"]
    rng = np.random.default_rng(0)
    values = {generate_value(f, rng) for _ in range(200)}
    assert len(values) > 190


def test_generated_dates_keep_the_fields_range() -> None:
    """The synthesizer draws dates inside a field's min_date..max_date, also a range
    entirely outside its own default span (1930-2026)."""
    base = {"name": "d", "label": "D", "kind": "date", "x_mm": 0, "y_mm": 0, "count": 8,
            "groups": [4, 2, 2]}
    for lo, hi in (("2026-03-01", "2027-02-01"), ("1800-03-01", "1850-02-01")):
        f = FormField.model_validate({**base, "validation": {
            "length": 8, "date_format": "YYYYMMDD", "min_date": lo, "max_date": hi}})
        rng = np.random.default_rng(0)
        values = [generate_value(f, rng) for _ in range(300)]
        assert lo.replace("-", "") <= min(values) and max(values) <= hi.replace("-", "")
        assert len(set(values)) > 150


def test_unsatisfiable_rules_raise_config_error() -> None:
    t = parse_template(_with(validation={"length": 5, "min_value": 100000}))
    with pytest.raises(ConfigError, match="'zip'"):
        generate_value(t.fields[0], np.random.default_rng(0))


def test_shipped_codes_are_far_apart() -> None:
    # Registration accepts a code with one misread cell; two shipped forms must therefore
    # differ in at least three cells.
    codes = [t.code for t in load_templates()]
    for i, a in enumerate(codes):
        for b in codes[i + 1 :]:
            assert bin(a ^ b).count("1") >= 3, (a, b)


def test_fast_yaml_loader_reads_the_shipped_templates_as_the_safe_loader_does() -> None:
    """Templates are parsed with libyaml's safe loader where PyYAML has it: the same data
    as yaml.safe_load, and a bad document is still a ConfigError naming the template."""
    from pathlib import Path

    from pipeline import templates

    for path in sorted(Path(templates.__file__).parent.joinpath("templates").glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        assert templates._safe_load(text) == yaml.safe_load(text)
    with pytest.raises(ConfigError, match="not valid YAML"):
        templates.parse_template("fields: [unclosed", "broken.yaml")
    with pytest.raises(yaml.YAMLError):  # safe: Python tags are refused, never run
        templates._safe_load("a: !!python/object/apply:os.system ['true']\n")
