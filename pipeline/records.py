"""Typed immutable records that cross every stage boundary.

``Page → RegisteredPage → FieldCrop → DigitPrediction → FieldResult``; ``PageRecord`` and
``ErrorRecord`` account for every input page. ``FieldResult``, ``DigitRecord``,
``PageRecord`` and ``ErrorRecord`` are the rows of the Parquet tables (see docs/SCHEMA.md).
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import numpy as np

SCHEMA_VERSION = "1.0"


_NAMES: dict[type, tuple[str, ...]] = {}


def _names(cls: type) -> tuple[str, ...]:
    # dataclasses.fields() builds its answer afresh on every call (~60 rows per page)
    if (names := _NAMES.get(cls)) is None:
        names = _NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


_R = TypeVar("_R", bound=type)


def pickled_by_fields(cls: _R) -> _R:
    """Class decorator for the frozen, slotted records the page workers send: they pickle
    as ``cls(*field values)``.

    Python's own state functions for frozen slotted dataclasses ask ``dataclasses.fields``
    on every object, both ways; a page is ~70 records, and that was half of the time spent
    sending it from a worker to the run process (0.85 → 0.58 ms of CPU per page, pickled
    and unpickled). For final classes only: a subclass would be rebuilt as ``cls``.
    """
    names = _names(cls)
    assert len(names) > 1, "attrgetter of a single name gives the value, not a tuple"
    values: Callable[[Any], tuple[Any, ...]] = operator.attrgetter(*names)

    def __reduce__(self: Any) -> tuple[type, tuple[Any, ...]]:
        return cls, values(self)

    cls.__reduce__ = __reduce__  # type: ignore[method-assign,assignment]
    return cls


def _row(record: Any) -> dict[str, Any]:
    """A flat record as a Parquet row: its fields by name, tuples as lists.

    Not ``dataclasses.asdict``: that deep-copies every value (the PNG bytes of each crop
    included) and cost ~5 ms per page in the main process; these records are flat.
    """
    return {name: list(v) if isinstance(v := getattr(record, name), tuple) else v
            for name in _names(type(record))}


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class PageKey:
    """Identifies one page of one input file."""

    source: str  # path as given/discovered (relative to the input root when possible)
    file_sha256: str
    page: int  # 0-based page index inside the file


@dataclass(frozen=True, slots=True)
class Page:
    """A decoded page: grayscale uint8 image (ink dark on light paper)."""

    key: PageKey
    image: np.ndarray = dataclasses.field(repr=False, compare=False)
    dpi: float | None = None


@dataclass(frozen=True, slots=True)
class RegisteredPage:
    """A page aligned to its template: ``image`` is in template pixel coordinates."""

    key: PageKey
    template_id: str
    image: np.ndarray = dataclasses.field(repr=False, compare=False)
    homography: tuple[float, ...]  # 3x3 row-major, template px -> source px
    score: float  # registration quality in [0, 1]
    orientation: int  # rotation (degrees, 0/90/180/270) that was undone
    method: str  # "marks" or "features"


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class FieldCrop:
    """One digit position of one field, normalized to the model contract."""

    key: PageKey
    template_id: str
    field: str
    kind: str  # boxes | comb | date | string
    position: int  # digit index inside the field (0-based); for string fields a candidate id
    bbox: tuple[int, int, int, int]  # x, y, w, h in template pixel coordinates
    pixels: np.ndarray = dataclasses.field(repr=False, compare=False)  # (28, 28) uint8
    empty: bool = False
    flags: tuple[str, ...] = ()  # segmentation notes and doubts, e.g. ("touching", "overrun")
    # string fields: connected groups are numbered left to right (``group``); a group that
    # may hold several touching digits is offered as alternative splits, ``split`` = the
    # number of pieces in this hypothesis (0 = the only reading). Recognition keeps, per
    # group, the split whose pieces the model reads most confidently.
    group: int = 0
    split: int = 0
    # string fields: the piece verifier's probability that this crop is exactly one whole
    # digit (not half of one, not two touching ones); 1.0 where nothing was checked.
    single: float = 1.0
    # string fields: the piece at field scale (normalize_piece), the verifier's input; set
    # by segmentation, scored and dropped in the main process (pipeline.recognize).
    piece: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)


_crop_values = operator.attrgetter(*_names(FieldCrop))
_PIXELS, _PIECE = _names(FieldCrop).index("pixels"), _names(FieldCrop).index("piece")


def pack_crops(crops: tuple[FieldCrop, ...]) -> tuple[Any, ...]:
    """``crops`` for the trip from a page worker: their other fields, and their pixels and
    pieces as one ``(N, 28, 28)`` block each (see :func:`unpack_crops`).

    A page is ~60 crops and ~20 pieces; pickling each array on its own was most of the
    cost of sending a page (0.63 → 0.37 ms of CPU per page, both ways).
    """
    rows = [list(_crop_values(c)) for c in crops]
    arrays = [r[_PIXELS] for r in rows] + [r[_PIECE] for r in rows if r[_PIECE] is not None]
    if not all(isinstance(a, np.ndarray) for a in arrays) or \
            len({(a.shape, a.dtype) for a in arrays}) != 1:
        return (crops,)  # (no crops, or crops of another size: sent as they are)
    pixels = np.stack([r[_PIXELS] for r in rows])
    drawn = [r[_PIECE] for r in rows if r[_PIECE] is not None]
    pieces = np.stack(drawn) if drawn else None
    for r in rows:
        r[_PIXELS], r[_PIECE] = None, r[_PIECE] is not None
    return rows, pixels, pieces


def unpack_crops(packed: tuple[Any, ...]) -> tuple[FieldCrop, ...]:
    """The crops :func:`pack_crops` packed (their arrays are views of the blocks)."""
    if len(packed) == 1:
        return tuple(packed[0])
    rows, pixels, pieces = packed
    out = []
    n = 0
    for i, r in enumerate(rows):
        r[_PIXELS] = pixels[i]
        if r[_PIECE]:
            r[_PIECE], n = pieces[n], n + 1
        else:
            r[_PIECE] = None
        out.append(FieldCrop(*r))
    return tuple(out)


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class FieldLine:
    """A whole string field for the string reader (``models/stringnet``), and its reading.

    Segmentation draws it (:func:`pipeline.segment.string_line`) beside the field's digit
    candidates; the main process fills ``log_probs`` (:func:`pipeline.lines.read_lines`)
    and field assembly checks the segmenter's reading against it.
    """

    field: str
    pixels: np.ndarray = dataclasses.field(repr=False, compare=False)  # (32, W) uint8
    # (T, 11) CTC log-probabilities over blank, 0..9 per column; None until read.
    log_probs: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    # "string": a string field for the string reader (W 160, read for every such field);
    # "boxes": a row of boxes for the boxed-field reader (W 256, read only when doubtful).
    reader: str = "string"


@dataclass(frozen=True, slots=True)
class DigitPrediction:
    """The model's calibrated reading of one crop."""

    crop: FieldCrop
    digit: int
    confidence: float
    probs: tuple[float, ...]  # 10 calibrated probabilities


@dataclass(frozen=True, slots=True)
class FieldResult:
    """One field of one page: the row of the ``fields`` Parquet table."""

    run_id: str
    source: str
    file_sha256: str
    page: int
    template_id: str
    field: str
    kind: str
    value: str | None
    raw_value: str | None  # reading before validation-aware correction
    confidence: float
    status: str  # accepted | needs_review | empty
    reasons: tuple[str, ...]
    corrected: bool
    alternatives: tuple[str, ...]  # next most probable valid readings
    alternative_confidences: tuple[float, ...]
    n_digits: int
    model_version: str
    seconds: float

    def to_row(self) -> dict[str, Any]:
        """Plain dict for Parquet (tuples become lists)."""
        return _row(self)


@dataclass(frozen=True, slots=True)
class DigitRecord:
    """One digit crop with its reading: the row of the ``digits`` Parquet table."""

    run_id: str
    source: str
    file_sha256: str
    page: int
    field: str
    position: int
    x: int
    y: int
    w: int
    h: int
    digit: int
    confidence: float
    top3_digits: tuple[int, ...]
    top3_probs: tuple[float, ...]
    crop_png: bytes = dataclasses.field(repr=False)

    def to_row(self) -> dict[str, Any]:
        """Plain dict for Parquet."""
        return _row(self)


@dataclass(frozen=True, slots=True)
class PageRecord:
    """One input page's outcome: the row of the ``pages`` Parquet table."""

    run_id: str
    source: str
    file_sha256: str
    page: int
    template_id: str | None
    registration_score: float
    orientation: int
    method: str | None
    status: str  # read | unregistered | error
    n_fields: int
    seconds: float

    def to_row(self) -> dict[str, Any]:
        """Plain dict for Parquet."""
        return _row(self)


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """A file or page that could not be processed: the row of the ``errors`` table."""

    run_id: str
    source: str
    file_sha256: str | None
    page: int | None  # None when the whole file failed
    error_type: str  # FormdigitsError.code
    message: str
    hint: str

    def to_row(self) -> dict[str, Any]:
        """Plain dict for Parquet."""
        return _row(self)
