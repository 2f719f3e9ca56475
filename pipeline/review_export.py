"""Export results for people: a flat table (CSV/XLSX) and review sheets (XLSX).

Layout choice: ONE flat ``fields`` table, one row per form page, with the union of the
columns of every template in the results (``<field>``, ``<field>_confidence``,
``<field>_status``), ordered template by template as the fields appear on the form. A
user filters by the ``template`` column; one table is what pivoting, database import and
CSV need, and a field name shared by templates (``date``) stays one column.

The XLSX (sheets laid out by :mod:`pipeline.review_xlsx`) adds ``review`` (every
needs_review field with its reassembled image, reading, alternatives, reasons and empty
``correction``/``reviewer`` cells), ``doubtful_digits`` (the least confident digits grouped
by predicted class, one correction cell per digit) and ``readme``. Hidden ``key`` cells
(file sha256 | page | field | position) make the import unambiguous whatever the reviewer
sorts or hides.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.errors import FormdigitsError, OutputError, UsageError
from pipeline.review import (
    WHOLE_FIELD,
    crop_index,
    encode_png,
    field_strip,
    latest,
    latest_digits,
    latest_fields,
    make_key,
    read_table,
)
from pipeline.review_xlsx import SCALE, build_workbook

STATUS_ORDER = {"accepted": 0, "empty": 1, "needs_review": 2}
PAGE_COLUMNS = ["source", "page", "template", "page_status"]


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What an export wrote."""

    path: Path
    pages: int
    review_fields: int
    doubtful_digits: int


def _field_order(fields: pd.DataFrame) -> list[str]:
    """Field names in form order, template by template (table order when unknown)."""
    from pipeline.templates import load_template

    order: list[str] = []
    for tid in dict.fromkeys(fields["template_id"].dropna()):
        names = list(dict.fromkeys(fields.loc[fields["template_id"] == tid, "field"]))
        try:
            declared = [f.name for f in load_template(str(tid)).fields]
            names = [n for n in declared if n in names] + [n for n in names if n not in declared]
        except FormdigitsError:
            pass  # a template given by path at run time: keep the table's order
        order += [n for n in names if n not in order]
    return order


def flat_table(out_dir: str | Path, min_status: str = "accepted") -> pd.DataFrame:
    """One row per page: page columns, then ``<field>``, ``_confidence``, ``_status``.

    ``min_status`` keeps pages whose worst field status is at least this severe
    (accepted < empty < needs_review); ``accepted`` keeps every page. Pages that were not
    registered have no field values and count as needs_review.
    """
    if min_status not in STATUS_ORDER:
        raise UsageError(
            f"unknown --min-status '{min_status}'", hint=f"Use one of {', '.join(STATUS_ORDER)}."
        )
    fields = latest_fields(out_dir)
    pages = latest(read_table(out_dir, "pages"), ["file_sha256", "page"])
    names = _field_order(fields) if not fields.empty else []
    rows: dict[tuple[str, int], dict[str, object]] = {}
    severity: dict[tuple[str, int], int] = {}
    for p in pages.itertuples():
        k = (str(p.file_sha256), int(p.page))
        rows[k] = {
            "source": p.source,
            "page": int(p.page),
            "template": p.template_id,
            "page_status": p.status,
        }
        severity[k] = 0 if p.status == "read" else STATUS_ORDER["needs_review"]
    for f in fields.itertuples():
        k = (str(f.file_sha256), int(f.page))
        row = rows.setdefault(
            k,
            {
                "source": f.source,
                "page": int(f.page),
                "template": f.template_id,
                "page_status": "read",
            },
        )
        row[str(f.field)] = "" if f.value is None else str(f.value)
        row[f"{f.field}_confidence"] = float(f.confidence)
        row[f"{f.field}_status"] = str(f.status)
        severity[k] = max(severity.get(k, 0), STATUS_ORDER.get(str(f.status), 2))
    columns = PAGE_COLUMNS + [c for n in names for c in (n, f"{n}_confidence", f"{n}_status")]
    keep = [k for k in rows if severity[k] >= STATUS_ORDER[min_status]]
    df = pd.DataFrame([rows[k] for k in keep], columns=columns)
    df["file_sha256"] = [k[0] for k in keep]
    return df.sort_values(["source", "page"], kind="stable").reset_index(drop=True)


def export_results(
    out_dir: str | Path,
    dest: str | Path,
    *,
    min_status: str = "accepted",
    doubtful_below: float = 0.9,
    per_class: int = 30,
) -> ExportSummary:
    """Write ``dest`` (``.csv``: the flat table; ``.xlsx``: all sheets)."""
    dest = Path(dest)
    suffix = dest.suffix.lower()
    if suffix not in (".csv", ".xlsx"):
        raise UsageError(f"cannot export to '{dest.name}'", hint="Name the file .xlsx or .csv.")
    table = flat_table(out_dir, min_status)
    if suffix == ".csv":
        _atomic(dest, lambda tmp: table.to_csv(tmp, index=False))
        return ExportSummary(dest, len(table), 0, 0)
    fields = latest_fields(out_dir)
    digits = latest_digits(out_dir)
    pages = set(zip(table["file_sha256"], table["page"], strict=True))
    review = fields[
        (fields["status"] == "needs_review")
        & pd.Series(
            [
                (s, int(p)) in pages
                for s, p in zip(fields["file_sha256"], fields["page"], strict=True)
            ],
            index=fields.index,
            dtype=bool,
        )
    ]
    index = crop_index(digits)
    review_rows = []
    for f in review.sort_values(["source", "page"], kind="stable").itertuples():
        _, crops = index.get((str(f.file_sha256), int(f.page), str(f.field)), ([], []))
        alts = "; ".join(
            f"{a} ({c:.3g})"
            for a, c in zip(f.alternatives, f.alternative_confidences, strict=False)
        )
        review_rows.append(
            {
                "key": make_key(f.file_sha256, int(f.page), str(f.field), WHOLE_FIELD),
                "source": f.source,
                "page": int(f.page),
                "template": f.template_id,
                "field": f.field,
                "reading": "" if f.value is None else str(f.value),
                "raw_reading": "" if f.raw_value is None else str(f.raw_value),
                "confidence": float(f.confidence),
                "alternatives": alts,
                "reasons": ", ".join(f.reasons),
                "image": encode_png(field_strip(crops, SCALE)) if crops else None,
            }
        )
    doubtful = doubtful_digits(digits, doubtful_below, per_class)
    _atomic(dest, build_workbook(table, review_rows, doubtful).save)
    return ExportSummary(dest, len(table), len(review_rows), sum(len(v) for v in doubtful.values()))


def doubtful_digits(
    digits: pd.DataFrame, below: float, per_class: int
) -> dict[int, list[dict[str, object]]]:
    """Per predicted class: the least confident digits under ``below`` (at most ``per_class``)."""
    out: dict[int, list[dict[str, object]]] = {}
    if digits.empty:
        return out
    low = digits[digits["confidence"] < below].sort_values("confidence", kind="stable")
    for d, grp in low.groupby("digit", sort=True):
        out[int(d)] = [
            {
                "key": make_key(r.file_sha256, int(r.page), str(r.field), int(r.position)),
                "confidence": float(r.confidence),
                "image": encode_png(field_strip([bytes(r.crop_png)], SCALE)),
                "label": f"{r.source} p{int(r.page)} {r.field}[{int(r.position)}]",
            }
            for r in grp.head(per_class).itertuples()
        ]
    return out


def _atomic(dest: Path, write: Callable[[Path], object]) -> None:
    """Write via a temp file in the same folder and rename: no half-written exports."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {dest}: {exc}") from exc
