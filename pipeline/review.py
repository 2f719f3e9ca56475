"""Human review: shared helpers, the corrections table and the corrections training set.

The review loop: ``formdigits export`` writes a spreadsheet (:mod:`pipeline.review_export`),
a person fills the ``correction`` cells, ``formdigits review import`` stores them as rows of
the ``corrections`` table (:mod:`pipeline.review_import`), and the fine-tune command reads
:func:`corrections_dataset`. The ``fields`` table is never modified: corrections are a
separate, append-only table keyed by (file_sha256, page, field, position).
"""

from __future__ import annotations

import dataclasses
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image

from pipeline.records import DigitRecord, ErrorRecord, FieldResult, PageRecord

log = logging.getLogger(__name__)

WHOLE_FIELD = -1  # ``position`` of a correction that covers the whole field
KEY_SEP = "|"


@dataclass(frozen=True, slots=True)
class CorrectionRecord:
    """One reviewer decision: the row of the ``corrections`` Parquet table.

    ``corrected == original`` is a confirmation (also training data). ``crops_png`` holds
    the field's digit crops in reading order (one crop for a single-digit correction), so
    the table is self-contained for fine-tuning.
    """

    run_id: str  # run that produced the reviewed reading
    import_id: str  # the ``review import`` that stored this row
    source: str
    file_sha256: str
    page: int
    template_id: str
    field: str
    position: int  # digit position, or -1 (WHOLE_FIELD) for a whole-field correction
    original: str
    corrected: str
    reviewer: str
    reviewed_at: str  # ISO 8601, UTC
    sheet: str  # review | doubtful_digits
    warnings: tuple[str, ...]
    crop_positions: tuple[int, ...]  # digit position of each crop
    labels: tuple[int, ...]  # label of each crop; () when the digits cannot be aligned
    crops_png: tuple[bytes, ...] = dataclasses.field(repr=False)

    def to_row(self) -> dict[str, Any]:
        """Plain dict for Parquet (tuples become lists)."""
        row = dataclasses.asdict(self)
        row["warnings"] = list(self.warnings)
        row["crop_positions"] = list(self.crop_positions)
        row["labels"] = list(self.labels)
        row["crops_png"] = list(self.crops_png)
        return row


_STR = pa.string()
CORRECTIONS_SCHEMA = pa.schema(
    [
        ("run_id", _STR),
        ("import_id", _STR),
        ("source", _STR),
        ("file_sha256", _STR),
        ("page", pa.int32()),
        ("template_id", _STR),
        ("field", _STR),
        ("position", pa.int32()),
        ("original", _STR),
        ("corrected", _STR),
        ("reviewer", _STR),
        ("reviewed_at", _STR),
        ("sheet", _STR),
        ("warnings", pa.list_(_STR)),
        ("crop_positions", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
        ("crops_png", pa.list_(pa.binary())),
    ]
)

_COLUMNS: dict[str, list[str]] = {
    "fields": [f.name for f in dataclasses.fields(FieldResult)],
    "digits": [f.name for f in dataclasses.fields(DigitRecord)],
    "pages": [f.name for f in dataclasses.fields(PageRecord)],
    "errors": [f.name for f in dataclasses.fields(ErrorRecord)],
    "corrections": [f.name for f in dataclasses.fields(CorrectionRecord)],
}


def read_table(out_dir: str | Path, name: str) -> pd.DataFrame:
    """Read one results table via :func:`pipeline.store.read_table`.

    Columns missing from what was read (an empty table, an older schema) are added as
    empty columns so callers can rely on the record's column names.
    """
    from pipeline.store import read_table as store_read

    df = store_read(Path(out_dir), name)
    for col in _COLUMNS.get(name, []):
        if col not in df.columns:
            df[col] = pd.Series(dtype=object)
    return df


def latest(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Keep the last written row per key (a re-run with --force supersedes older rows)."""
    if df.empty:
        return df
    return df.drop_duplicates(subset=keys, keep="last").reset_index(drop=True)


def latest_fields(out_dir: str | Path) -> pd.DataFrame:
    """The ``fields`` table, one (latest) row per (file_sha256, page, field)."""
    return latest(read_table(out_dir, "fields"), ["file_sha256", "page", "field"])


def latest_digits(out_dir: str | Path) -> pd.DataFrame:
    """The ``digits`` table, one (latest) row per digit position, sorted by position."""
    df = latest(read_table(out_dir, "digits"), ["file_sha256", "page", "field", "position"])
    if df.empty:
        return df
    return df.sort_values(["file_sha256", "page", "field", "position"], kind="stable")


def make_key(file_sha256: str, page: int, field: str, position: int = WHOLE_FIELD) -> str:
    """The unambiguous spreadsheet key of a field (or one digit of it)."""
    return KEY_SEP.join((str(file_sha256), str(int(page)), field, str(int(position))))


def parse_key(key: str) -> tuple[str, int, str, int]:
    """Inverse of :func:`make_key`; raises ValueError on a malformed key."""
    sha, page, name, pos = str(key).split(KEY_SEP)
    return sha, int(page), name, int(pos)


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes to a 2-D uint8 array (grayscale)."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("L"), dtype=np.uint8)


def encode_png(img: np.ndarray) -> bytes:
    """2-D uint8 array to PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def field_strip(crops: list[bytes], scale: int = 2, gap: int = 2) -> np.ndarray:
    """Reassemble a field image: its digit crops side by side, upscaled ``scale`` times.

    A thin grey gap separates the crops so a reviewer sees where the digits were cut.
    """
    tiles = [decode_png(c) for c in crops]
    if not tiles:
        return np.zeros((28 * scale, 28 * scale), np.uint8)
    h = max(t.shape[0] for t in tiles)
    parts: list[np.ndarray] = []
    for i, t in enumerate(tiles):
        if i:
            parts.append(np.full((h, gap), 96, np.uint8))
        pad = np.zeros((h, t.shape[1]), np.uint8)
        pad[: t.shape[0]] = t
        parts.append(pad)
    strip = np.concatenate(parts, axis=1)
    # Nearest-neighbour upscale keeps the pixels honest (no invented smoothness).
    return np.repeat(np.repeat(strip, scale, axis=0), scale, axis=1)


FieldKey = tuple[str, int, str]  # file_sha256, page, field


def crop_index(digits: pd.DataFrame) -> dict[FieldKey, tuple[list[int], list[bytes]]]:
    """Per field: digit positions and crop PNGs in position order (``digits``: latest rows)."""
    index: dict[FieldKey, tuple[list[int], list[bytes]]] = {}
    if digits.empty:
        return index
    for key, grp in digits.sort_values("position").groupby(
        ["file_sha256", "page", "field"], sort=False
    ):
        sha, page, name = key
        index[(str(sha), int(page), str(name))] = (
            [int(p) for p in grp["position"]],
            [bytes(b) for b in grp["crop_png"]],
        )
    return index


@dataclass(frozen=True, slots=True)
class CorrectionsDataset:
    """Labelled digit crops from reviewers, plus how many whole-field rows were skipped."""

    images: np.ndarray  # (N, 28, 28) uint8, white ink on black
    labels: np.ndarray  # (N,) int64
    skipped_fields: int  # whole-field corrections whose digit count != crop count


def load_corrections_dataset(out_dir: str | Path) -> CorrectionsDataset:
    """Build the training set from the ``corrections`` table.

    The latest decision per (file_sha256, page, field, position) wins. A single-digit
    correction labels its crop. A whole-field correction labels the field's crops only when
    the corrected string has exactly as many digits as there are crops (alignment is then
    unambiguous; the import stores ``labels`` only then); otherwise it is skipped and
    counted. A digit covered by both a digit and a whole-field correction is taken once,
    from the digit correction.
    """
    df = read_table(out_dir, "corrections")
    empty = CorrectionsDataset(np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64), 0)
    if df.empty:
        return empty
    df = latest(df, ["file_sha256", "page", "field", "position"])
    singles = df[df["position"] != WHOLE_FIELD]
    single_keys = {
        (r.file_sha256, int(r.page), r.field, int(r.position)) for r in singles.itertuples()
    }
    images: list[np.ndarray] = []
    labels: list[int] = []
    skipped = 0
    for r in df.itertuples():
        crops = [bytes(c) for c in r.crops_png]
        labs = [int(v) for v in r.labels]
        if len(labs) != len(crops) or not crops:
            skipped += int(r.position) == WHOLE_FIELD
            continue
        whole = int(r.position) == WHOLE_FIELD
        for pos, crop, lab in zip(r.crop_positions, crops, labs, strict=True):
            if whole and (r.file_sha256, int(r.page), r.field, int(pos)) in single_keys:
                continue  # the reviewer's verdict on that very digit wins
            images.append(decode_png(crop))
            labels.append(lab)
    if skipped:
        log.warning(
            "corrections: skipped %d whole-field corrections (digit count != crops)", skipped
        )
    if not images:
        return CorrectionsDataset(empty.images, empty.labels, skipped)
    return CorrectionsDataset(
        np.stack(images).astype(np.uint8), np.array(labels, np.int64), skipped
    )


def corrections_dataset(out_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Reviewed digit crops as training data: ``(images uint8 (N,28,28), labels int64 (N,))``.

    See :func:`load_corrections_dataset` for the rules (and the count of skipped rows).
    """
    ds = load_corrections_dataset(out_dir)
    return ds.images, ds.labels
