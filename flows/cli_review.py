"""CLI commands: export, review import, score, report (registered by :mod:`flows.cli`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pipeline.errors import UsageError

console = Console()

ResultsOpt = Annotated[
    Path, typer.Option("--results", "-r", help="Output folder of `formdigits run`.")
]


def _results_dir(path: Path) -> Path:
    if not path.is_dir():
        raise UsageError(
            f"results folder {path} not found", hint="Pass the --out folder of `formdigits run`."
        )
    return path


def export_cmd(
    results: ResultsOpt,
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="FILE.xlsx (with review sheets) or FILE.csv (flat table)."
        ),
    ],
    min_status: Annotated[
        str,
        typer.Option(
            "--min-status",
            help="Keep pages whose worst field is at least: accepted (all), empty, needs_review.",
        ),
    ] = "accepted",
    doubtful_below: Annotated[
        float, typer.Option(help="doubtful_digits sheet: digits below this confidence.")
    ] = 0.9,
    per_class: Annotated[
        int,
        typer.Option(help="doubtful_digits sheet: at most this many crops per predicted digit."),
    ] = 30,
) -> None:
    """Export the results as a spreadsheet (one row per page) with review sheets."""
    from pipeline.review_export import export_results

    s = export_results(
        _results_dir(results),
        out,
        min_status=min_status,
        doubtful_below=doubtful_below,
        per_class=per_class,
    )
    extra = (
        f", {s.review_fields} fields to review, {s.doubtful_digits} doubtful digits"
        if s.path.suffix.lower() == ".xlsx"
        else ""
    )
    console.print(f"wrote {s.path}: {s.pages} pages{extra}", markup=False)


def import_cmd(
    workbook: Annotated[Path, typer.Argument(help="The filled review workbook (.xlsx).")],
    results: ResultsOpt,
    reviewer: Annotated[
        str | None,
        typer.Option(help="Reviewer name for rows with a blank reviewer cell (default: OS user)."),
    ] = None,
) -> None:
    """Store the corrections of a filled review workbook (the fields table is kept as is)."""
    from pipeline.review_import import import_corrections

    s = import_corrections(workbook, _results_dir(results), reviewer=reviewer)
    for line in s.messages:
        console.print(line, style="yellow", markup=False)  # messages hold paths and [..]
    console.print(
        f"stored {s.stored} corrections ({s.duplicates} already imported, "
        f"{s.rejected} rejected)" + (f" in {s.part}" if s.part else "")
    )


def score_cmd(
    results: ResultsOpt,
    truth: Annotated[Path, typer.Option("--truth", help="Folder of synth truth JSON files.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Score results against synthetic truth (accuracy, review rate, risk-coverage)."""
    from pipeline.score import score_results

    res = score_results(_results_dir(results), truth)
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    from rich.table import Table

    def fmt(v: object) -> str:
        return f"{v:.4f}" if isinstance(v, float) else "-" if v is None else str(v)

    t = Table("metric", "value", title="score")
    for k, v in res.items():
        if not isinstance(v, dict | list):
            t.add_row(k, fmt(v))
    console.print(t)
    pf = Table("field", "n", "accuracy", "review_rate", "accepted_error", title="per field")
    for name, m in res["per_field"].items():
        pf.add_row(name, *(fmt(m[k]) for k in ("n", "accuracy", "review_rate", "accepted_error")))
    console.print(pf)


def report_cmd(
    results: ResultsOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write.")],
    gallery: Annotated[int, typer.Option(help="Lowest-confidence fields shown.")] = 40,
) -> None:
    """Write a self-contained HTML audit report of a results folder."""
    from pipeline.report import write_report

    path = write_report(_results_dir(results), out, gallery=gallery)
    console.print(f"wrote {path}", markup=False)


def register(app: typer.Typer) -> None:
    """Add export, review import, score and report to ``app``."""
    app.command("export")(export_cmd)
    review = typer.Typer(help="Human review of uncertain readings.", no_args_is_help=True)
    review.command("import")(import_cmd)
    app.add_typer(review, name="review")
    app.command("score")(score_cmd)
    app.command("report")(report_cmd)
