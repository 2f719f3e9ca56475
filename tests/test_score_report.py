"""Scoring against hand-made truth (hand-computed numbers) and the HTML report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from flows.cli_review import register
from pipeline.report import build_report, write_report
from pipeline.score import score_results
from tests.test_review import SPECS, FieldSpec, _digits, write_results


def _truth(d: Path) -> Path:
    d.mkdir()
    pages: dict[str, dict[str, tuple[str, list[str | None] | None]]] = {
        "f1": {
            "zip_code": ("12345", list("12345")),
            "parcels": ("07", ["0", "7"]),
            "amount": ("", None),
        },
        "f2": {"zip_code": ("54321", list("54321")), "parcels": ("12", ["1", "2"])},
        "f3": {
            "zip_code": ("99989", list("99989")),
            "parcels": ("", [None, None]),
            "amount": ("250", None),
        },
    }
    for stem, fields in pages.items():
        doc = {
            "file": f"{stem}.png",
            "pages": [
                {
                    "page": 0,
                    "template": "delivery",
                    "rotation_deg": 0.0,
                    "upside_down": False,
                    "dpi": 200,
                    "fields": {
                        n: {"value": v, "boxes": b, "digits": len(v)}
                        for n, (v, b) in fields.items()
                    },
                }
            ],
        }
        (d / f"{stem}.json").write_text(json.dumps(doc))
    return d


@pytest.fixture()
def scored(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "out"
    specs = [
        FieldSpec(
            "scans/f1.png",
            "zip_code",
            "boxes",
            "12345",
            0.95,
            "accepted",
            _digits("12345", [0.99] * 5),
        ),
        FieldSpec(
            "scans/f1.png", "parcels", "boxes", "01", 0.8, "accepted", _digits("01", [0.9, 0.8])
        ),
        FieldSpec(
            "scans/f1.png", "amount", "string", "3", 0.3, "needs_review", _digits("3", [0.3])
        ),
        # Box 3 was read as empty: the 4 digits sit at positions 0, 1, 2, 4.
        FieldSpec(
            "scans/f3.png",
            "zip_code",
            "boxes",
            "9999",
            0.5,
            "needs_review",
            ((0, 9, 0.9), (1, 9, 0.9), (2, 9, 0.9), (4, 9, 0.9)),
        ),
        FieldSpec("scans/f3.png", "parcels", "boxes", "", 1.0, "empty"),
        FieldSpec(
            "scans/f3.png",
            "amount",
            "string",
            "260",
            0.6,
            "needs_review",
            _digits("260", [0.9, 0.7, 0.9]),
        ),
    ]
    write_results(out, specs, unregistered=("scans/f2.png",))
    return out, _truth(tmp_path / "truth")


def test_score_matches_hand_computed_numbers(scored: tuple[Path, Path]) -> None:
    out, truth = scored
    s = score_results(out, truth)
    assert (s["pages"], s["pages_registered"], s["fields"], s["fields_matched"]) == (3, 2, 8, 6)
    assert s["field_accuracy"] == pytest.approx(2 / 8)
    # zip f1 5/5, parcels f1 1/2, zip f3 4/5, amount f3 2/3; amount f1 (len 1 vs 0) excluded.
    assert (s["digits"], s["digit_accuracy"]) == (15, pytest.approx(12 / 15))
    assert s["review_rate"] == pytest.approx(3 / 6)
    assert (s["accepted_fields"], s["accepted_field_error"]) == (2, pytest.approx(0.5))
    assert s["empty_accuracy"] == pytest.approx(5 / 6)
    pf = s["per_field"]
    assert pf["zip_code"] == {
        "n": 3,
        "accuracy": pytest.approx(1 / 3),
        "review_rate": 0.5,
        "accepted_error": 0.0,
    }
    assert pf["parcels"] == {
        "n": 3,
        "accuracy": pytest.approx(1 / 3),
        "review_rate": 0.0,
        "accepted_error": 1.0,
    }
    assert pf["amount"] == {"n": 2, "accuracy": 0.0, "review_rate": 1.0, "accepted_error": None}
    assert s["per_kind"]["string"] == pf["amount"]  # the only string field, both matched
    risk = {r["threshold"]: (r["coverage"], r["accepted_error"]) for r in s["risk_coverage"]}
    assert risk[0.0] == (1.0, pytest.approx(4 / 6))
    assert risk[0.5] == (pytest.approx(5 / 6), pytest.approx(3 / 5))
    assert risk[0.85] == (pytest.approx(2 / 6), 0.0)
    assert risk[1.0] == (pytest.approx(1 / 6), 0.0)


def test_score_cli_json(scored: tuple[Path, Path]) -> None:
    out, truth = scored
    app = typer.Typer()
    register(app)
    res = CliRunner().invoke(app, ["score", "--results", str(out), "--truth", str(truth), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["field_accuracy"] == pytest.approx(0.25)


def test_report_is_self_contained(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_results(
        out, SPECS, unregistered=("in/c.png",), errors=(("in/bad.tif", "truncated <TIFF> file"),)
    )
    page = build_report(out, gallery=10)
    assert "http://" not in page and "https://" not in page
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == 3 + 6  # three charts + the crop strips of the 6 non-empty fields
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<link" not in page and "<script" not in page
    assert "truncated &lt;TIFF&gt; file" in page  # error text is escaped
    # Gallery: lowest confidence first (parcels of a.png, 0.405), with its alternatives.
    gallery = page[page.index("Lowest-confidence fields") :]
    assert gallery.index("0.405") < gallery.index("0.500")
    assert "11 (0.1), 19 (0.1)" in gallery
    dest = write_report(out, tmp_path / "report.html")
    assert dest.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    res = CliRunner().invoke(
        _app(), ["report", "--results", str(out), "--out", str(tmp_path / "r2.html")]
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r2.html").is_file()


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_bench_by_dpi_counts_fields_and_unsure_boxed_digits(scored: tuple[Path, Path]) -> None:
    """All truth pages are 200 dpi: every field falls in that band, string digits do not count."""
    from bench.pipeline_accuracy import by_dpi

    out, truth = scored
    rows = {r["dpi"]: r for r in by_dpi(out, truth)}
    assert rows["200–249"]["fields"] == 6
    assert rows["200–249"]["review_rate"] == pytest.approx(3 / 6)
    # zip f1 (5 at 0.99), parcels f1 (0.9, 0.8), zip f3 (4 at 0.9); the amounts are strings.
    assert rows["200–249"]["boxed_digits"] == 11
    assert rows["200–249"]["unsure_digits"] == pytest.approx(6 / 11)
    assert all(r["fields"] == 0 for k, r in rows.items() if k != "200–249")
