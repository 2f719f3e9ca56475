"""Import a filled review workbook into the ``corrections`` table.

Reads the ``correction`` cells of the ``review`` sheet (whole fields) and of the
``doubtful_digits`` sheet (single digits), ties each to its page and field through the
hidden ``key`` cells, checks it, and appends one :class:`~pipeline.review.CorrectionRecord`
per decision as an atomic part file (``pipeline.store.append_part``). The ``fields`` table is
never touched.

Checks: a correction must be digits only (a whole field no longer than the field's boxes, a
single digit exactly one digit) or it is rejected; breaking the field's validation rules
only warns (the reviewer sees the paper, the rules may be wrong for this form) and the
warning is stored with the row. Importing the same workbook again stores nothing new:
a decision already in the table (same file, page, field, position and corrected value) is
a duplicate.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.errors import ConfigError, FormdigitsError, UsageError
from pipeline.review import (
    CORRECTIONS_SCHEMA,
    WHOLE_FIELD,
    CorrectionRecord,
    crop_index,
    latest_digits,
    latest_fields,
    parse_key,
    read_table,
)
from pipeline.templates import FormField, load_template
from pipeline.validate import check_value


@dataclass(frozen=True, slots=True)
class ImportSummary:
    """Outcome of one import."""

    stored: int
    duplicates: int
    rejected: int
    messages: tuple[str, ...]  # one line per rejected or warned correction
    part: Path | None  # the part file written (None when nothing new)


@cache
def _template_field(template_id: str, name: str) -> FormField | None:
    try:
        return load_template(template_id).field_by_name.get(name)
    except FormdigitsError:
        return None  # a template given by path at run time: rules cannot be checked


def _cell_text(value: Any, expected_len: int | None) -> tuple[str, list[str]]:
    """A correction cell as text; numbers typed into General cells lose leading zeros."""
    notes: list[str] = []
    if isinstance(value, bool):
        return str(value), notes
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        text = str(int(value))
        if expected_len is not None and 0 < len(text) < expected_len:
            text = text.zfill(expected_len)
            notes.append("leading_zeros_restored")
        return text, notes
    return "".join(str(value).split()), notes


def _expected_len(ff: FormField | None) -> int | None:
    if ff is None:
        return None
    if ff.validation.length is not None:
        return ff.validation.length
    return 8 if ff.validation.date_format else None


def _capacity(ff: FormField | None, n_crops: int) -> int:
    if ff is None:
        return max(n_crops, 40)
    return ff.max_digits if ff.kind == "string" else ff.count


def _sheet_cells(wb: Any) -> list[tuple[str, int, str, Any, Any]]:
    """``(sheet, row, key, correction, reviewer)`` for every filled correction cell."""
    cells: list[tuple[str, int, str, Any, Any]] = []
    if "review" in wb.sheetnames:
        ws = wb["review"]
        head = {str(c.value): c.column - 1 for c in ws[1] if c.value is not None}
        if not {"key", "correction"} <= head.keys():
            raise UsageError(
                "the review sheet has no 'key'/'correction' columns",
                hint="Import a workbook written by `formdigits export`.",
            )
        for i, row in enumerate(ws.iter_rows(min_row=2, values_only=True), start=2):
            corr = row[head["correction"]] if head["correction"] < len(row) else None
            key = row[head["key"]] if head["key"] < len(row) else None
            rev = (
                row[head["reviewer"]]
                if "reviewer" in head and head["reviewer"] < len(row)
                else None
            )
            if key and corr is not None and str(corr).strip():
                cells.append(("review", i, str(key), corr, rev))
    if "doubtful_digits" in wb.sheetnames:
        ws = wb["doubtful_digits"]
        key_cols = [c.column - 1 for c in ws[1] if c.value == "key"]
        for i, row in enumerate(ws.iter_rows(min_row=2, values_only=True), start=2):
            for kc in key_cols:
                if kc >= len(row) or not row[kc]:
                    continue
                corr = row[kc - 1]
                if corr is not None and str(corr).strip():
                    cells.append(("doubtful_digits", i, str(row[kc]), corr, None))
    return cells


def import_corrections(
    xlsx: str | Path, out_dir: str | Path, *, reviewer: str | None = None
) -> ImportSummary:
    """Store the filled corrections of ``xlsx`` in ``out_dir``'s corrections table.

    ``reviewer`` names whoever reviewed rows whose ``reviewer`` cell is blank (default:
    the OS user name).
    """
    from openpyxl import load_workbook

    from pipeline.store import append_part

    path = Path(xlsx)
    if not path.is_file():
        raise UsageError(f"review workbook {path} not found")
    try:
        wb = load_workbook(path, data_only=True, read_only=False)
    except Exception as exc:  # openpyxl raises many types for a broken or foreign file
        raise ConfigError(
            f"cannot read {path} as an XLSX workbook: {exc}",
            hint="Save the workbook as .xlsx (Excel 2007+) and import again.",
        ) from exc
    fields = latest_fields(out_dir)
    by_field = {(str(r.file_sha256), int(r.page), str(r.field)): r for r in fields.itertuples()}
    digits = latest_digits(out_dir)
    crops = crop_index(digits)
    existing = read_table(out_dir, "corrections")
    seen = {
        (str(r.file_sha256), int(r.page), str(r.field), int(r.position), str(r.corrected))
        for r in existing.itertuples()
    }
    default_reviewer = reviewer or getpass.getuser()
    now = datetime.now(timezone.utc)
    import_id = now.strftime("%Y%m%dT%H%M%SZ")
    records: list[CorrectionRecord] = []
    messages: list[str] = []
    duplicates = rejected = 0
    for sheet, row, key, raw, rev in _sheet_cells(wb):
        where = f"{sheet}!row {row}"
        try:
            sha, page, name, pos = parse_key(key)
        except ValueError:
            messages.append(f"{where}: malformed key '{key}' (skipped)")
            rejected += 1
            continue
        f = by_field.get((sha, page, name))
        if f is None:
            messages.append(f"{where}: no field {name} of page {page} in the results (skipped)")
            rejected += 1
            continue
        ff = _template_field(str(f.template_id), name)
        positions, pngs = crops.get((sha, page, name), ([], []))
        whole = pos == WHOLE_FIELD
        text, notes = _cell_text(raw, _expected_len(ff) if whole else 1)
        if not text.isascii() or not text.isdigit():
            messages.append(f"{where}: '{raw}' is not digits only (rejected)")
            rejected += 1
            continue
        if whole:
            original = "" if f.value is None else str(f.value)
            if len(text) > _capacity(ff, len(pngs)):
                messages.append(f"{where}: '{text}' is longer than field {name} (rejected)")
                rejected += 1
                continue
            warns = [*notes, *(check_value(ff, text) if ff is not None else ["rules_unchecked"])]
        else:
            if len(text) != 1:
                messages.append(f"{where}: '{text}' must be a single digit (rejected)")
                rejected += 1
                continue
            if pos not in positions:
                messages.append(f"{where}: no crop for {name}[{pos}] (skipped)")
                rejected += 1
                continue
            i = positions.index(pos)
            positions, pngs = [pos], [pngs[i]]
            sel = digits[
                (digits["file_sha256"] == sha)
                & (digits["page"] == page)
                & (digits["field"] == name)
                & (digits["position"] == pos)
            ]
            original = str(int(sel["digit"].iloc[0]))
            warns = notes
        ident = (sha, page, name, pos, text)
        if ident in seen:
            duplicates += 1
            continue
        seen.add(ident)
        if warns:
            messages.append(f"{where}: {name} = '{text}' stored with warnings: {', '.join(warns)}")
        records.append(
            CorrectionRecord(
                run_id=str(f.run_id),
                import_id=import_id,
                source=str(f.source),
                file_sha256=sha,
                page=page,
                template_id=str(f.template_id),
                field=name,
                position=pos,
                original=original,
                corrected=text,
                reviewer=str(rev).strip() if rev and str(rev).strip() else default_reviewer,
                reviewed_at=now.isoformat(timespec="seconds"),
                sheet=sheet,
                warnings=tuple(warns),
                crop_positions=tuple(positions),
                labels=tuple(int(c) for c in text) if len(text) == len(pngs) else (),
                crops_png=tuple(pngs),
            )
        )
    part = None
    if records:
        table = pa.Table.from_pylist([r.to_row() for r in records], schema=CORRECTIONS_SCHEMA)
        part = append_part(Path(out_dir), "corrections", table)
    return ImportSummary(len(records), duplicates, rejected, tuple(messages), part)
