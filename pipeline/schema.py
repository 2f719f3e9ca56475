"""Explicit Arrow schemas of the output tables (documented in docs/SCHEMA.md).

Columns are exactly the dataclass fields of the row records in :mod:`pipeline.records`
(a test checks that), in the same order. Writing with an explicit schema means an empty
table still has typed columns and every part file of a table has the same schema, so
pandas, pyarrow, DuckDB and Polars can read the folder as one dataset.
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.records import SCHEMA_VERSION

_STR = pa.string()
_I32 = pa.int32()
_F64 = pa.float64()

FIELDS = pa.schema(
    [
        ("run_id", _STR),
        ("source", _STR),
        ("file_sha256", _STR),
        ("page", _I32),
        ("template_id", _STR),
        ("field", _STR),
        ("kind", _STR),
        ("value", _STR),
        ("raw_value", _STR),
        ("confidence", _F64),
        ("status", _STR),
        ("reasons", pa.list_(_STR)),
        ("corrected", pa.bool_()),
        ("alternatives", pa.list_(_STR)),
        ("alternative_confidences", pa.list_(_F64)),
        ("n_digits", _I32),
        ("model_version", _STR),
        ("seconds", _F64),
    ]
)

DIGITS = pa.schema(
    [
        ("run_id", _STR),
        ("source", _STR),
        ("file_sha256", _STR),
        ("page", _I32),
        ("field", _STR),
        ("position", _I32),
        ("x", _I32),
        ("y", _I32),
        ("w", _I32),
        ("h", _I32),
        ("digit", _I32),
        ("confidence", _F64),
        ("top3_digits", pa.list_(_I32)),
        ("top3_probs", pa.list_(_F64)),
        ("crop_png", pa.binary()),
    ]
)

PAGES = pa.schema(
    [
        ("run_id", _STR),
        ("source", _STR),
        ("file_sha256", _STR),
        ("page", _I32),
        ("template_id", _STR),
        ("registration_score", _F64),
        ("orientation", _I32),
        ("method", _STR),
        ("status", _STR),
        ("n_fields", _I32),
        ("seconds", _F64),
    ]
)

ERRORS = pa.schema(
    [
        ("run_id", _STR),
        ("source", _STR),
        ("file_sha256", _STR),
        ("page", _I32),
        ("error_type", _STR),
        ("message", _STR),
        ("hint", _STR),
    ]
)

# One row per input file per commit: what makes a file's rows visible (see store.py).
MANIFEST = pa.schema(
    [
        ("key", _STR),  # file_sha256, or "path:<source>" when the file could not be hashed
        ("source", _STR),
        ("file_sha256", _STR),
        ("run_id", _STR),
        ("commit", _STR),
        ("committed_at", _STR),  # ISO 8601 UTC
        ("pages", _I32),
        ("errors", _I32),
        ("file_error", pa.bool_()),  # the whole file failed (retried by the next run)
    ]
)

RESULT_TABLES: dict[str, pa.Schema] = {
    "fields": FIELDS,
    "digits": DIGITS,
    "pages": PAGES,
    "errors": ERRORS,
}


def with_version(schema: pa.Schema) -> pa.Schema:
    """``schema`` with the formdigits schema version in its key-value metadata."""
    return schema.with_metadata({"formdigits.schema_version": SCHEMA_VERSION})
