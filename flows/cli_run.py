"""CLI commands ``run`` (the batch) and ``read`` (already-cropped field images).

Registered by :mod:`flows.cli`; also registers :mod:`flows.cli_review` (export, review,
score, report) when that module is present, so those commands follow ``run`` in --help.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from pipeline.errors import InputError, StrictModeError

if TYPE_CHECKING:
    from pipeline.run import RunSummary
    from pipeline.settings import RunSettings

console = Console(stderr=True)
ENV_PREFIX = "FORMDIGITS_"


def env_overrides(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Settings from ``FORMDIGITS_<KEY>`` variables (e.g. FORMDIGITS_WORKERS=4)."""
    from pipeline.settings import RunSettings

    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for key in RunSettings.model_fields:
        value = env.get(ENV_PREFIX + key.upper())
        if value is None or key == "limits":
            continue
        out[key] = tuple(v for v in value.split(",") if v) if key == "templates" else value
    return out


def resolve_settings(config: Path | None, **flags: Any) -> RunSettings:
    """defaults < --config YAML < FORMDIGITS_* environment < command-line flags."""
    from pipeline.settings import load_settings

    cli = {k: v for k, v in flags.items() if v is not None}
    return load_settings(config, **{**env_overrides(), **cli})


def run_cmd(
    inputs: Annotated[list[Path], typer.Argument(help="Scan files or folders (recursive).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (Parquet tables).")],
    template: Annotated[list[str] | None, typer.Option(
        "--template", "-t", help="Template name or YAML file (repeat); default: all shipped.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Weights file, or 'default'.")] = None,
    piece_model: Annotated[str | None, typer.Option(
        help="String-piece verifier weights, 'default', or 'none' (off).")] = None,
    string_model: Annotated[str | None, typer.Option(
        help="Whole-string reader for string fields, 'default', or 'none' (off).")] = None,
    box_model: Annotated[str | None, typer.Option(
        help="Whole-field reader for doubtful rows of boxes, 'default', or 'none' (off).")
    ] = None,
    second_opinion: Annotated[str | None, typer.Option(
        help="Second digit model for doubtful crops: 'auto', 'none', or a paired file.")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Crops per CNN batch.")] = None,
    workers: Annotated[int | None, typer.Option(help="Page-preparing worker processes.")] = None,
    review_below: Annotated[float | None, typer.Option(
        help="Fields below this confidence go to review.")] = None,
    pdf_dpi: Annotated[int | None, typer.Option(help="Rasterization dpi for PDFs.")] = None,
    debug: Annotated[Path | None, typer.Option(
        "--debug", help="Write a debug picture per page into this folder.")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Reprocess files already in OUT (new rows replace old).")] = False,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Exit non-zero if any file or page ended as an error.")] = False,
    config: Annotated[Path | None, typer.Option(help="Settings YAML file.")] = None,
) -> None:
    """Read every page of the inputs into OUT (resumes: committed files are skipped)."""

    settings = resolve_settings(
        config, templates=tuple(template) if template else None, model=model,
        piece_model=piece_model, string_model=string_model, box_model=box_model,
        second_opinion=second_opinion, device=device,
        batch_size=batch_size, workers=workers, review_below=review_below, pdf_dpi=pdf_dpi,
        debug_dir=str(debug) if debug else None, force=force or None, strict=strict or None,
    )
    summary = _run_with_progress(inputs, out, settings)
    console.print(summary_table(summary, out))
    if summary.files == 0 and summary.skipped_files == 0:
        console.print("[yellow]no PNG, JPEG, TIFF or PDF files found in the inputs[/]")
    if settings.strict and summary.errors:
        raise StrictModeError(f"{summary.errors} error row(s) in this run (--strict)")


def _run_with_progress(inputs: list[Path], out: Path, settings: RunSettings) -> RunSummary:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from pipeline.run import process

    with Progress(
        TextColumn("[bold]pages"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False,
    ) as bar:
        task = bar.add_task("pages", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return process(inputs, out, settings, progress=progress)


def summary_table(s: RunSummary, out: Path) -> Table:
    """The closing table of ``formdigits run``."""
    # One row per figure: stays readable in narrow terminals and CI logs.
    t = Table(title=f"run {s.run_id} → {out}")
    t.add_column("", style="bold")
    t.add_column("", justify="right")
    rows = [("files", s.files), ("pages", s.pages), ("fields", s.fields),
            ("accepted", s.accepted), ("to review", s.needs_review), ("empty", s.empty),
            ("errors", s.errors), ("skipped (already done)", s.skipped_files),
            ("pages/s", f"{s.pages_per_s:.2f}")]
    for name, value in rows:
        t.add_row(name, str(value), style="red" if name == "errors" and s.errors else None)
    return t


def read_cmd(
    images: Annotated[list[Path], typer.Argument(help="Images of single fields.")],
    kind: Annotated[str, typer.Option(
        help="'string' (free writing) or 'boxes:N' (N equal boxes).")] = "string",
    model: Annotated[str, typer.Option(help="Weights file, or 'default'.")] = "default",
    second_opinion: Annotated[str, typer.Option(
        help="Second digit model for doubtful crops: 'auto', 'none', or a paired file.")
    ] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    string_model: Annotated[str, typer.Option(
        help="String images: also read whole by this string reader ('default', 'none').")
    ] = "default",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Read already-cropped field images and print value, confidence and digits."""
    from models.second_opinion import load_reader
    from pipeline.errors import FormdigitsError
    from pipeline.read_crops import parse_kind, read_crop_image

    parse_kind(kind)  # bad --kind fails before the model loads
    predictor = load_reader(model, second_opinion, device=device)
    failed = 0
    for path in images:
        try:
            row: dict[str, Any] = read_crop_image(path, kind, predictor,
                                                  string_model=string_model).to_json()
        except FormdigitsError as exc:
            failed += 1
            row = {"file": str(path), "error": {"type": exc.code, "message": str(exc)}}
        if as_json:
            typer.echo(json.dumps(row))
        elif "error" in row:
            console.print(f"[red]{path}[/]: {row['error']['message']}")
        else:
            conf = "-" if row["confidence"] is None else f"{row['confidence']:.3f}"
            whole = row.get("string_reader")
            also = f"\t(read whole: {whole['reading'] or '(empty)'})" if whole else ""
            typer.echo(f"{path}\t{row['value'] or '(empty)'}\t{conf}{also}")
    if failed:
        raise InputError(f"{failed} of {len(images)} image(s) could not be read")


def register(app: typer.Typer) -> None:
    """Add ``run`` and ``read`` (and the review commands, when present) to ``app``."""
    app.command("run")(run_cmd)
    app.command("read")(read_cmd)
    try:
        review = importlib.import_module("flows.cli_review")
    except ModuleNotFoundError as exc:
        if exc.name != "flows.cli_review":
            raise
        return
    review.register(app)
