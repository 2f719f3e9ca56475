"""Export → fill the workbook with openpyxl → import → corrections table and training set."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from openpyxl import load_workbook
from typer.testing import CliRunner

from flows.cli_review import register
from pipeline.errors import UsageError
from pipeline.records import DigitRecord, ErrorRecord, FieldResult, PageRecord
from pipeline.review import (
    corrections_dataset,
    decode_png,
    encode_png,
    load_corrections_dataset,
    read_table,
)
from pipeline.review_export import export_results, flat_table
from pipeline.review_import import import_corrections
from pipeline.store import FileEntry, OutputStore, PendingCommit

RUN = "20261125T000000Z-abcdef"


def crop(seed: int) -> bytes:
    """A distinct 28x28 crop per seed (white strokes on black)."""
    img = np.zeros((28, 28), np.uint8)
    img[4:24, 4 + seed % 16 : 8 + seed % 16] = 255
    img[seed % 20 + 4, 4:24] = 200
    return encode_png(img)


@dataclass(frozen=True)
class FieldSpec:
    """One field of a fixture page: value, status and per-digit (position, digit, conf)."""

    source: str
    field: str
    kind: str
    value: str
    confidence: float
    status: str
    digits: tuple[tuple[int, int, float], ...] = ()
    reasons: tuple[str, ...] = ()
    alternatives: tuple[str, ...] = ()
    page: int = 0

    @property
    def sha(self) -> str:
        return Path(self.source).stem.ljust(64, "0")


def write_results(
    out: Path,
    specs: list[FieldSpec],
    unregistered: tuple[str, ...] = (),
    errors: tuple[tuple[str, str], ...] = (),
) -> None:
    """Commit a results folder through the store, as a run would."""
    rows: dict[str, dict[str, list[dict[str, object]]]] = defaultdict(
        lambda: {"fields": [], "digits": [], "pages": [], "errors": []}
    )
    pages_seen: set[tuple[str, int]] = set()
    seed = 0
    for s in specs:
        r = rows[s.source]
        if (s.source, s.page) not in pages_seen:
            pages_seen.add((s.source, s.page))
            r["pages"].append(
                PageRecord(
                    RUN, s.source, s.sha, s.page, "delivery", 0.9, 0, "marks", "read", 0, 0.1
                ).to_row()
            )
        r["fields"].append(
            FieldResult(
                RUN,
                s.source,
                s.sha,
                s.page,
                "delivery",
                s.field,
                s.kind,
                s.value,
                s.value,
                s.confidence,
                s.status,
                s.reasons,
                False,
                s.alternatives,
                tuple(0.1 for _ in s.alternatives),
                len(s.digits),
                "test-model",
                0.01,
            ).to_row()
        )
        for pos, digit, conf in s.digits:
            seed += 1
            r["digits"].append(
                DigitRecord(
                    RUN,
                    s.source,
                    s.sha,
                    s.page,
                    s.field,
                    pos,
                    10 * pos,
                    5,
                    20,
                    24,
                    digit,
                    conf,
                    (digit, (digit + 1) % 10, (digit + 2) % 10),
                    (conf, (1 - conf) / 2, 0.0),
                    crop(seed),
                ).to_row()
            )
    for src in unregistered:
        sha = Path(src).stem.ljust(64, "0")
        rows[src]["pages"].append(
            PageRecord(RUN, src, sha, 0, None, 0.1, 0, None, "unregistered", 0, 0.1).to_row()
        )
    for src, msg in errors:
        rows[src]["errors"].append(
            ErrorRecord(RUN, src, None, None, "corrupt_file", msg, "rescan <it>").to_row()
        )
    with OutputStore(out, RUN) as store:
        pending = PendingCommit()
        for src, r in rows.items():
            sha = Path(src).stem.ljust(64, "0")
            pending.add(FileEntry(src, sha, len(r["pages"]), len(r["errors"]), False), r)
        store.commit(pending)


def _digits(value: str, confs: list[float]) -> tuple[tuple[int, int, float], ...]:
    return tuple((i, int(c), p) for i, (c, p) in enumerate(zip(value, confs, strict=True)))


SPECS = [
    FieldSpec(
        "in/a.png", "zip_code", "boxes", "12345", 0.95, "accepted", _digits("12345", [0.99] * 5)
    ),
    FieldSpec(
        "in/a.png",
        "parcels",
        "boxes",
        "17",
        0.405,
        "needs_review",
        _digits("17", [0.9, 0.45]),
        ("low_confidence",),
        ("11", "19"),
    ),
    FieldSpec("in/a.png", "amount", "string", "", 1.0, "empty"),
    FieldSpec(
        "in/b.png",
        "zip_code",
        "boxes",
        "04321",
        0.5,
        "needs_review",
        _digits("04321", [0.95, 0.95, 0.55, 0.95, 0.95]),
        ("low_confidence",),
    ),
    FieldSpec("in/b.png", "parcels", "boxes", "03", 0.97, "accepted", _digits("03", [0.99, 0.98])),
    FieldSpec(
        "in/d.png", "zip_code", "boxes", "99999", 0.97, "accepted", _digits("99999", [0.995] * 5)
    ),
    FieldSpec("in/d.png", "parcels", "boxes", "02", 0.97, "accepted", _digits("02", [0.99, 0.98])),
]


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    write_results(out, SPECS, unregistered=("in/c.png",))
    return out


def test_flat_table_one_row_per_page(results: Path, tmp_path: Path) -> None:
    t = flat_table(results)
    assert list(t["source"]) == ["in/a.png", "in/b.png", "in/c.png", "in/d.png"]
    # Form order of the delivery template: zip_code, amount, parcels.
    assert list(t.columns[:7]) == [
        "source",
        "page",
        "template",
        "page_status",
        "zip_code",
        "zip_code_confidence",
        "zip_code_status",
    ]
    assert list(t.columns[7:13]) == [
        "amount",
        "amount_confidence",
        "amount_status",
        "parcels",
        "parcels_confidence",
        "parcels_status",
    ]
    assert t.loc[1, "zip_code"] == "04321"
    assert t.loc[2, "page_status"] == "unregistered"
    worst = flat_table(results, "needs_review")
    assert list(worst["source"]) == ["in/a.png", "in/b.png", "in/c.png"]
    with pytest.raises(UsageError):
        flat_table(results, "fine")
    csv = tmp_path / "r.csv"
    export_results(results, csv)
    back = pd.read_csv(csv, dtype=str)
    assert back.loc[1, "zip_code"] == "04321" and len(back) == 4


def _fill(xlsx: Path) -> None:
    wb = load_workbook(xlsx)
    ws = wb["review"]
    head = {c.value: c.column for c in ws[1]}
    for row in range(2, ws.max_row + 1):
        key = ws.cell(row, head["key"]).value
        if "|parcels|" in key:
            ws.cell(row, head["correction"], "45")  # breaks max_value 40: stored with a warning
            ws.cell(row, head["reviewer"], "ann")
        elif "|zip_code|" in key:
            ws.cell(row, head["correction"], 4821)  # typed as a number: leading zero lost
    dd = wb["doubtful_digits"]
    for row in dd.iter_rows(min_row=2):
        for cell in row:
            if dd.cell(1, cell.column).value == "key" and cell.value:
                fix = "5" if "|parcels|" in cell.value else 8
                dd.cell(cell.row, cell.column - 1, fix)
    wb.save(xlsx)


def test_export_fill_import_dataset(results: Path, tmp_path: Path) -> None:
    xlsx = tmp_path / "review.xlsx"
    fields_before = read_table(results, "fields")
    s = export_results(results, xlsx)
    assert (s.pages, s.review_fields, s.doubtful_digits) == (4, 2, 2)
    wb = load_workbook(xlsx)
    assert wb.sheetnames == ["fields", "review", "doubtful_digits", "readme"]
    fs = wb["fields"]
    assert fs.freeze_panes == "A2" and fs.auto_filter.ref == "A1:N5"
    assert fs["E3"].value == "04321" and fs["F3"].number_format == "0.000"
    assert len(fs.conditional_formatting) >= 3
    rv = wb["review"]
    assert rv.column_dimensions["A"].hidden
    assert [rv.cell(r, 5).value for r in (2, 3)] == ["parcels", "zip_code"]
    assert rv.cell(2, 10).value == "11 (0.1); 19 (0.1)"
    assert len(rv._images) == 2 and rv.data_validations.dataValidation
    dd = wb["doubtful_digits"]
    assert [dd.cell(r, 1).value for r in (2, 4)] == ["3", "7"]  # classes, blank row between
    assert dd.cell(2, 2).value == pytest.approx(0.55) and len(dd._images) == 2

    _fill(xlsx)
    first = import_corrections(xlsx, results, reviewer="tester")
    assert (first.stored, first.duplicates, first.rejected) == (4, 0, 0)
    assert any("out_of_range" in m for m in first.messages)
    again = import_corrections(xlsx, results, reviewer="tester")
    assert (again.stored, again.duplicates, again.part) == (0, 4, None)

    corr = read_table(results, "corrections").sort_values(["field", "position"])
    assert len(corr) == 4
    rows = {(r.field, int(r.position)): r for r in corr.itertuples()}
    whole = rows[("parcels", -1)]
    assert (whole.original, whole.corrected, whole.reviewer) == ("17", "45", "ann")
    assert list(whole.warnings) == ["out_of_range"] and len(whole.crops_png) == 2
    assert list(whole.labels) == [4, 5] and list(whole.crop_positions) == [0, 1]
    zipc = rows[("zip_code", -1)]
    assert (zipc.original, zipc.corrected, zipc.reviewer) == ("04321", "04821", "tester")
    assert list(zipc.warnings) == ["leading_zeros_restored"]
    assert list(zipc.labels) == [0, 4, 8, 2, 1]
    assert zipc.reviewed_at.endswith("+00:00") and zipc.run_id == RUN
    single = rows[("zip_code", 2)]
    assert (single.original, single.corrected, single.sheet) == ("3", "8", "doubtful_digits")
    assert (rows[("parcels", 1)].original, rows[("parcels", 1)].corrected) == ("7", "5")
    pd.testing.assert_frame_equal(read_table(results, "fields"), fields_before)

    images, labels = corrections_dataset(results)
    # parcels: 4 (whole, pos 0) + 5 (digit); zip: 0,4,2,1 (whole, pos 2 from the digit) + 8.
    assert images.shape == (7, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and sorted(labels.tolist()) == [0, 1, 2, 4, 4, 5, 8]
    # The crop labelled 8 is exactly the crop of zip_code position 2 of b.png.
    digits = read_table(results, "digits")
    want = digits[
        (digits["source"] == "in/b.png")
        & (digits["field"] == "zip_code")
        & (digits["position"] == 2)
    ]["crop_png"].iloc[0]
    np.testing.assert_array_equal(images[labels.tolist().index(8)], decode_png(want))


def test_rejections_and_skipped_alignment(results: Path, tmp_path: Path) -> None:
    xlsx = tmp_path / "review.xlsx"
    export_results(results, xlsx)
    wb = load_workbook(xlsx)
    ws = wb["review"]
    ws.cell(2, 12, "4x")  # parcels: not digits → rejected
    ws.cell(3, 12, "1234")  # zip_code: 4 digits for 5 crops → stored, warned, not aligned
    wb.save(xlsx)
    s = import_corrections(xlsx, results, reviewer="bob")
    assert (s.stored, s.rejected) == (1, 1)
    assert any("not digits" in m for m in s.messages)
    stored = read_table(results, "corrections")
    assert list(stored["warnings"].iloc[0]) == ["invalid_length"]
    assert list(stored["labels"].iloc[0]) == [] and len(stored["crops_png"].iloc[0]) == 5
    ds = load_corrections_dataset(results)
    assert ds.images.shape == (0, 28, 28) and ds.skipped_fields == 1


def test_cli_export_and_import(results: Path, tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    xlsx = tmp_path / "cli.xlsx"
    res = runner.invoke(app, ["export", "--results", str(results), "--out", str(xlsx)])
    assert res.exit_code == 0, res.output
    _fill(xlsx)
    res = runner.invoke(
        app, ["review", "import", str(xlsx), "--results", str(results), "--reviewer", "cli"]
    )
    assert res.exit_code == 0, res.output
    assert "stored 4 corrections" in res.output
    res = runner.invoke(
        app, ["export", "--results", str(results), "--out", str(tmp_path / "x.pdf")]
    )
    assert isinstance(res.exception, UsageError)
