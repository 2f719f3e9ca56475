"""One validated settings model for a run; the resolved settings are written beside outputs.

Settings come from (lowest to highest precedence) the defaults below, an optional YAML file
(``--config``), ``FORMDIGITS_*`` environment variables handled by the CLI, and CLI flags.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import ConfigError


class Limits(BaseModel):
    """Input size limits that protect the run from hostile or broken files."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_file_bytes: int = Field(200 * 1024 * 1024, gt=0, description="Largest input file.")
    max_pixels: int = Field(120_000_000, gt=0, description="Largest page (width*height).")
    max_pdf_pages: int = Field(500, gt=0, description="Most pages read from one PDF/TIFF.")


class RunSettings(BaseModel):
    """Everything that controls a ``formdigits run`` (and the Prefect flow)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    templates: tuple[str, ...] = Field(
        (), description="Template names or YAML paths; empty = all shipped templates."
    )
    model: str = Field("default", description="Weights file, or 'default' for the shipped one.")
    piece_model: str = Field(
        "default", description="String-field piece verifier weights ('default' = shipped, "
        "'none' = choose splits without it).")
    string_model: str = Field(
        "default", description="Whole-string reader for string fields ('default' = shipped, "
        "'none' = off): where digits touch, a reading it agrees with needs no review for "
        "the cut.")
    box_model: str = Field(
        "default", description="Whole-field reader for rows of boxes ('default' = shipped, "
        "'none' = off): it re-reads the boxed fields that would go to review for their "
        "digits' confidence or an unsure cut between boxes, and a reading it agrees with "
        "needs no review for them.")
    second_opinion: str = Field(
        "auto", description="Second digit model for the crops the first is unsure of: "
        "'auto' (the shipped one, when paired with the model in use), 'none', or a file "
        "paired with --model (models.second_opinion).")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # 128: as fast as 256 on CPU (12.9k vs 12.4k digits/s on one thread here; the smaller
    # activations stay in cache) and it halves the main process's transient memory.
    batch_size: int = Field(128, ge=1, le=65536, description="Crops per CNN batch.")
    workers: int = Field(2, ge=0, le=64, description="DataLoader worker processes.")
    # 0.95: accepted-field error 0.17 % on the 200 development pages (seed 4242; 0.94:
    # 0.16 %, 0.92: 0.24 %, 0.90: 0.32 %), one step above the lowest threshold under 0.2 %
    # for margin. See the threshold sweep in docs/BENCHMARKS.md.
    review_below: float = Field(
        0.95, ge=0.0, le=1.0, description="Fields below this confidence go to review."
    )
    pdf_dpi: int = Field(200, ge=50, le=600, description="Rasterization dpi for PDF pages.")
    min_registration_score: float = Field(0.5, ge=0.0, le=1.0)
    force: bool = Field(False, description="Reprocess files already committed in OUT.")
    strict: bool = Field(False, description="Exit non-zero if any input ended as an error.")
    debug_dir: str | None = None
    limits: Limits = Limits()

    def to_json(self) -> str:
        """The resolved settings as pretty JSON (written beside every output)."""
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)


def load_settings(path: str | Path | None = None, **overrides: object) -> RunSettings:
    """Build settings from an optional YAML file plus explicit overrides (``None`` ignored)."""
    data: dict[str, object] = {}
    if path is not None:
        p = Path(path)
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read settings file {p}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"settings file {p} must hold a mapping of keys to values")
        data.update(loaded)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return RunSettings.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(x) for x in first["loc"])
        raise ConfigError(f"invalid setting '{key}': {first['msg']}") from exc
