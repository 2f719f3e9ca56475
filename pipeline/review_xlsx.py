"""The review workbook's sheets (openpyxl): fields, review, doubtful_digits, readme.

:mod:`pipeline.review_export` gathers the rows; this module only lays them out: header
styles, status colours, embedded crop images, hidden ``key`` columns and digits-only
validation of the ``correction`` cells.
"""

from __future__ import annotations

import io

import pandas as pd
from openpyxl import Workbook
from openpyxl.comments import Comment
from openpyxl.drawing.image import Image as XLImage
from openpyxl.formatting.rule import FormulaRule
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.datavalidation import DataValidation
from openpyxl.worksheet.worksheet import Worksheet

DIGITS_ONLY = (
    'SUMPRODUCT(--ISNUMBER(FIND(MID({c},ROW(INDIRECT("1:"&LEN({c}))),1),"0123456789")))=LEN({c})'
)
SLOTS_PER_ROW = 6  # doubtful_digits: crops per grid row (3 columns each)
SCALE = 2  # crops are 28 px; ×2 is readable on screen without blurring

_HEADER_FILL = PatternFill("solid", fgColor="DDE3EA")
_REVIEW_FILL = PatternFill("solid", fgColor="FFD8A8")
_EMPTY_FILL = PatternFill("solid", fgColor="EEEEEE")
_BOLD = Font(bold=True)


def _header(ws: Worksheet, names: list[str]) -> None:
    ws.append(names)
    for cell in ws[1]:
        cell.font = _BOLD
        cell.fill = _HEADER_FILL
    ws.freeze_panes = "A2"


def _append(ws: Worksheet, values: list[object]) -> None:
    """Append a row; text is always stored as text, never as a formula.

    openpyxl writes any string starting with "=" as a formula: a scan named
    ``=HYPERLINK(...).png`` must not become live content in the reviewer's Excel.
    """
    ws.append(values)
    for cell in ws[ws.max_row]:
        if isinstance(cell.value, str) and cell.value.startswith("="):
            cell.data_type = "s"


def _add_image(ws: Worksheet, png: bytes, anchor: str) -> None:
    img = XLImage(io.BytesIO(png))
    img.anchor = anchor
    ws.add_image(img)


def _write_fields(ws: Worksheet, table: pd.DataFrame) -> None:
    cols = list(table.columns)
    _header(ws, cols)
    for row in table.itertuples(index=False):
        _append(ws, [None if (isinstance(v, float) and pd.isna(v)) else v for v in row])
    last = ws.max_row
    ws.auto_filter.ref = f"A1:{get_column_letter(len(cols))}{max(last, 1)}"
    for j, name in enumerate(cols, start=1):
        letter = get_column_letter(j)
        ws.column_dimensions[letter].width = max(10, min(40, len(name) + 2))
        if name.endswith("_confidence"):
            for (cell,) in ws.iter_rows(min_row=2, min_col=j, max_col=j):
                cell.number_format = "0.000"
        elif not name.endswith("_status") and name not in ("page",):
            # Values are text: keeps the leading zeros of zip codes and account numbers.
            for (cell,) in ws.iter_rows(min_row=2, min_col=j, max_col=j):
                cell.number_format = "@"
    if last < 2:
        return
    for j, name in enumerate(cols, start=1):
        if not name.endswith("_status"):
            continue
        st = get_column_letter(j)
        val = get_column_letter(j - 2)
        rng = f"{val}2:{st}{last}"
        ws.conditional_formatting.add(
            rng, FormulaRule(formula=[f'${st}2="needs_review"'], fill=_REVIEW_FILL)
        )
        ws.conditional_formatting.add(
            rng, FormulaRule(formula=[f'${st}2="empty"'], fill=_EMPTY_FILL)
        )


def _digits_validation(ws: Worksheet, col: str, last: int) -> None:
    dv = DataValidation(
        type="custom",
        formula1=DIGITS_ONLY.format(c=f"{col}2"),
        allow_blank=True,
        showErrorMessage=True,
        errorTitle="Digits only",
        error="Type the digits exactly as written (0-9, nothing else).",
    )
    ws.add_data_validation(dv)
    dv.add(f"{col}2:{col}{max(last, 2)}")


REVIEW_COLUMNS = [
    "key",
    "source",
    "page",
    "template",
    "field",
    "image",
    "reading",
    "raw_reading",
    "confidence",
    "alternatives",
    "reasons",
    "correction",
    "reviewer",
]


def _write_review(ws: Worksheet, rows: list[dict[str, object]]) -> None:
    _header(ws, REVIEW_COLUMNS)
    widths = {
        "key": 10,
        "source": 28,
        "page": 6,
        "template": 12,
        "field": 14,
        "reading": 14,
        "raw_reading": 14,
        "confidence": 11,
        "alternatives": 32,
        "reasons": 36,
        "correction": 14,
        "reviewer": 12,
    }
    max_px = 0
    for i, r in enumerate(rows, start=2):
        _append(ws, [r.get(c) if c != "image" else None for c in REVIEW_COLUMNS])
        ws.cell(i, REVIEW_COLUMNS.index("confidence") + 1).number_format = "0.000"
        for c in ("reading", "raw_reading", "correction"):
            ws.cell(i, REVIEW_COLUMNS.index(c) + 1).number_format = "@"
        png = r.get("image")
        if isinstance(png, bytes):
            img_col = get_column_letter(REVIEW_COLUMNS.index("image") + 1)
            _add_image(ws, png, f"{img_col}{i}")
            w, h = _png_size(png)
            max_px = max(max_px, w)
            ws.row_dimensions[i].height = h * 0.75 + 4  # points; 1 px = 0.75 pt
    for name, w in widths.items():
        ws.column_dimensions[get_column_letter(REVIEW_COLUMNS.index(name) + 1)].width = w
    ws.column_dimensions["F"].width = max(12, max_px / 7 + 2)  # ~7 px per character
    ws.column_dimensions["A"].hidden = True
    ws.auto_filter.ref = f"A1:{get_column_letter(len(REVIEW_COLUMNS))}{max(ws.max_row, 1)}"
    _digits_validation(ws, get_column_letter(REVIEW_COLUMNS.index("correction") + 1), ws.max_row)


def _write_doubtful(ws: Worksheet, groups: dict[int, list[dict[str, object]]]) -> None:
    # Each slot is three columns: crop (image, with its confidence as the cell text under
    # it), correction (one digit), key (hidden). Column A names the predicted class.
    _header(ws, ["predicted"] + ["crop", "correction", "key"] * SLOTS_PER_ROW)
    dv = DataValidation(
        type="whole",
        operator="between",
        formula1="0",
        formula2="9",
        allow_blank=True,
        showErrorMessage=True,
        errorTitle="One digit",
        error="Type the digit shown (0-9).",
    )
    ws.add_data_validation(dv)
    row = 2
    for digit, items in sorted(groups.items()):
        for start in range(0, len(items), SLOTS_PER_ROW):
            ws.cell(row, 1, f"{digit}" if start == 0 else None).font = _BOLD
            for s, item in enumerate(items[start : start + SLOTS_PER_ROW]):
                col = 2 + 3 * s
                cell = ws.cell(row, col, item["confidence"])
                cell.number_format = "0.00"
                cell.alignment = Alignment(vertical="bottom", horizontal="center")
                cell.comment = Comment(str(item["label"]), "formdigits")  # where it came from
                png = item["image"]
                assert isinstance(png, bytes)
                _add_image(ws, png, cell.coordinate)
                ws.cell(row, col + 2, str(item["key"]))
                dv.add(ws.cell(row, col + 1).coordinate)
            ws.row_dimensions[row].height = 28 * SCALE * 0.75 + 16
            row += 1
        row += 1  # blank row between classes
    ws.column_dimensions["A"].width = 10
    for s in range(SLOTS_PER_ROW):
        ws.column_dimensions[get_column_letter(2 + 3 * s)].width = 10
        ws.column_dimensions[get_column_letter(3 + 3 * s)].width = 10
        ws.column_dimensions[get_column_letter(4 + 3 * s)].hidden = True


README = [
    "How to review",
    "review: type the correct digits in 'correction' for each field (leave blank to skip; "
    "type the reading itself to confirm it). Optionally your name in 'reviewer'.",
    "doubtful_digits: crops the model was least sure of, grouped by the digit it read. "
    "Type the true digit in the 'correction' cell next to a crop when it differs (or to confirm).",
    "Then run: formdigits review import THIS_FILE.xlsx --results OUT --reviewer NAME",
    "Do not edit the hidden 'key' columns: they tie each cell to its page and field.",
]


def build_workbook(
    table: pd.DataFrame,
    review_rows: list[dict[str, object]],
    doubtful: dict[int, list[dict[str, object]]],
) -> Workbook:
    """The XLSX workbook: fields, review, doubtful_digits and readme sheets."""
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = "fields"
    _write_fields(ws, table)
    _write_review(wb.create_sheet("review"), review_rows)
    _write_doubtful(wb.create_sheet("doubtful_digits"), doubtful)
    help_ws = wb.create_sheet("readme")
    for line in README:
        help_ws.append([line])
    help_ws.column_dimensions["A"].width = 120
    return wb


def _png_size(png: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        return im.size
