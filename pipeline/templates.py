"""Form templates: YAML files validated by pydantic, found by name or path.

All geometry is in millimetres from the page's top-left corner. The pipeline works in
*template pixels*: the page rendered at :data:`WORK_DPI`; ``Template.px`` converts.

A template declares four corner registration marks (filled squares), an optional
form-id code, and the fields. Field kinds:

- ``boxes``: ``count`` separate boxes, one digit each, ``gap_mm`` apart;
- ``comb``: ``count`` boxes sharing their walls (``gap_mm`` is 0);
- ``date``: boxes in groups (e.g. ``[2, 2, 4]`` for DD MM YYYY) with a printed separator;
- ``string``: one free rectangle holding up to ``max_digits`` digits, which may touch.
"""

from __future__ import annotations

import datetime as dt
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import ConfigError

WORK_DPI = 150.0
MM_PER_INCH = 25.4
TEMPLATE_DIR = Path(__file__).parent / "templates"

FieldKind = Literal["boxes", "comb", "date", "string"]
Rect = tuple[float, float, float, float]  # x, y, w, h (mm or px, as named)


class Validation(BaseModel):
    """Rules a field's value must satisfy (all optional)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    length: int | None = Field(None, ge=1, description="Exact number of digits.")
    min_length: int | None = Field(None, ge=0)
    max_length: int | None = Field(None, ge=1)
    regex: str | None = None
    min_value: int | None = None
    max_value: int | None = None
    check: Literal["luhn", "mod11"] | None = None
    date_format: Literal["DDMMYYYY", "MMDDYYYY", "YYYYMMDD"] | None = None
    min_date: dt.date | None = Field(None, description="date: earliest date accepted (ISO).")
    max_date: dt.date | None = Field(None, description="date: latest date accepted (ISO).")

    @model_validator(mode="after")
    def _check_dates(self) -> Validation:
        bounded = self.min_date is not None or self.max_date is not None
        if bounded and self.date_format is None:
            raise ValueError("min_date / max_date need a date_format (e.g. DDMMYYYY)")
        if self.min_date is not None and self.max_date is not None \
                and self.min_date > self.max_date:
            raise ValueError(f"min_date {self.min_date} is after max_date {self.max_date}")
        return self


class FormField(BaseModel):
    """One handwritten field of a form."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    label: str
    kind: FieldKind
    x_mm: float = Field(ge=0)
    y_mm: float = Field(ge=0)
    box_w_mm: float = Field(7.0, gt=2)
    box_h_mm: float = Field(9.0, gt=2)
    count: int = Field(1, ge=1, le=40, description="Boxes (boxes/comb/date).")
    gap_mm: float = Field(1.5, ge=0)
    groups: tuple[int, ...] | None = Field(None, description="date: digits per group.")
    group_gap_mm: float = Field(4.0, ge=0, description="date: space for the separator.")
    w_mm: float | None = Field(None, gt=0, description="string: rectangle width.")
    h_mm: float | None = Field(None, gt=0, description="string: rectangle height.")
    max_digits: int = Field(12, ge=1, le=40, description="string: most digits expected.")
    required: bool = True
    validation: Validation = Validation()
    # Printing only (pipeline/render.py); additive keys with defaults, old YAML stays valid.
    separator: Literal["/", ".", "-"] = Field("/", description="date: printed separator.")
    label_pos: Literal["above", "left"] = Field("above", description="Where the label prints.")

    @model_validator(mode="after")
    def _check_kind(self) -> FormField:
        if self.kind == "string" and (self.w_mm is None or self.h_mm is None):
            raise ValueError(f"field '{self.name}': a string field needs w_mm and h_mm")
        if self.kind == "comb" and self.gap_mm != 0:
            raise ValueError(f"field '{self.name}': a comb field has gap_mm 0 (shared walls)")
        if self.kind == "date":
            if not self.groups:
                raise ValueError(f"field '{self.name}': a date field needs groups, e.g. [2, 2, 4]")
            if sum(self.groups) != self.count:
                raise ValueError(f"field '{self.name}': sum(groups) must equal count")
        return self

    def boxes_mm(self) -> list[Rect]:
        """Digit boxes in mm (for ``string``: the one rectangle)."""
        if self.kind == "string":
            assert self.w_mm is not None and self.h_mm is not None
            return [(self.x_mm, self.y_mm, self.w_mm, self.h_mm)]
        rects: list[Rect] = []
        x = self.x_mm
        group_ends: set[int] = set()
        if self.kind == "date" and self.groups:
            acc = 0
            for g in self.groups[:-1]:
                acc += g
                group_ends.add(acc)
        for i in range(self.count):
            if i in group_ends:
                x += self.group_gap_mm
            rects.append((x, self.y_mm, self.box_w_mm, self.box_h_mm))
            x += self.box_w_mm + self.gap_mm
        return rects

    def bounds_mm(self) -> Rect:
        """Bounding rectangle of the whole field in mm."""
        rs = self.boxes_mm()
        x0 = min(r[0] for r in rs)
        y0 = min(r[1] for r in rs)
        x1 = max(r[0] + r[2] for r in rs)
        y1 = max(r[1] + r[3] for r in rs)
        return (x0, y0, x1 - x0, y1 - y0)


class Marks(BaseModel):
    """Four filled square registration marks at the page corners."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size_mm: float = Field(8.0, gt=1)
    inset_mm: float = Field(10.0, ge=0, description="Distance of each mark from the edges.")


class Template(BaseModel):
    """A form layout."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    version: int = Field(1, ge=1)
    title: str
    code: int = Field(ge=0, le=255, description="Form-id number printed as an 8-bit code.")
    width_mm: float = Field(210.0, gt=50)
    height_mm: float = Field(297.0, gt=50)
    marks: Marks = Marks()
    fields: tuple[FormField, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_fields(self) -> Template:
        names = [f.name for f in self.fields]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate field names: {', '.join(dupes)}")
        for f in self.fields:
            x, y, w, h = f.bounds_mm()
            if x + w > self.width_mm or y + h > self.height_mm:
                raise ValueError(f"field '{f.name}' lies outside the page")
        return self

    @staticmethod
    def px(mm: float, dpi: float = WORK_DPI) -> float:
        """Millimetres to pixels at ``dpi``."""
        return mm * dpi / MM_PER_INCH

    def size_px(self, dpi: float = WORK_DPI) -> tuple[int, int]:
        """Page size in pixels ``(width, height)`` at ``dpi``."""
        return round(self.px(self.width_mm, dpi)), round(self.px(self.height_mm, dpi))

    def mark_centers_mm(self) -> list[tuple[float, float]]:
        """Centres of the marks: top-left, top-right, bottom-right, bottom-left."""
        s, i = self.marks.size_mm, self.marks.inset_mm
        c = i + s / 2
        return [
            (c, c),
            (self.width_mm - c, c),
            (self.width_mm - c, self.height_mm - c),
            (c, self.height_mm - c),
        ]

    @cached_property
    def field_by_name(self) -> dict[str, FormField]:
        """Fields keyed by name."""
        return {f.name: f for f in self.fields}


def _format_error(exc: ValidationError, source: str) -> str:
    first = exc.errors()[0]
    loc = first["loc"]
    parts: list[str] = []
    for item in loc:
        parts.append(f"[{item}]" if isinstance(item, int) else f".{item}" if parts else str(item))
    key = "".join(parts) or "(top level)"
    return f"template {source}: invalid key '{key}': {first['msg']}"


# libyaml's parser where PyYAML was built with it (its wheels are): the pure-Python one took
# 16 ms per shipped template, most of a run's start-up before the first page. Both build
# the same data with the safe constructor (plain data, never code).
_SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _safe_load(text: str) -> Any:
    loader = _SAFE_LOADER(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_template(text: str, source: str = "<string>") -> Template:
    """Validate YAML text as a template (safe loading: data only, never code)."""
    try:
        data = _safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"template {source} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"template {source} must be a YAML mapping")
    try:
        return Template.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, source)) from exc


def available_templates() -> list[str]:
    """Names of the shipped templates."""
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.yaml"))


def load_template(name_or_path: str | Path) -> Template:
    """Load a shipped template by name (``delivery``) or any YAML file by path."""
    p = Path(name_or_path)
    if p.suffix.lower() not in (".yaml", ".yml"):
        p = TEMPLATE_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        raise ConfigError(
            f"template '{name_or_path}' not found",
            hint=f"Shipped templates: {', '.join(available_templates()) or 'none'}; "
            "or pass the path of a YAML file.",
        )
    return parse_template(p.read_text(encoding="utf-8"), str(p))


def load_templates(names: tuple[str, ...] | list[str] = ()) -> list[Template]:
    """Load the named templates, or every shipped template when ``names`` is empty."""
    return [load_template(n) for n in (names or available_templates())]
