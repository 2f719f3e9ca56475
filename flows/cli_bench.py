"""CLI commands: bench (registered by :mod:`flows.cli`).

``formdigits bench [--quick] [--json] [--pages N]`` runs :mod:`bench.perf` on pages it
generates itself and prints a table (or the JSON). Heavy imports happen inside.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

_ROWS = (
    ("decode_pages_per_s", "decode-only pages/s (2 processes)", "{:.1f}"),
    ("pages_per_s_1worker", "end-to-end pages/s, 1 worker", "{:.2f}"),
    ("pages_per_s_2workers", "end-to-end pages/s, 2 workers", "{:.2f}"),
    ("ratio_to_decode", "2-worker end-to-end / decode-only", "{:.2f}"),
    ("cnn_digits_per_s", "CNN digits/s, batch 256 (fp32)", "{:,.0f}"),
    ("seed_cnn_digits_per_s", "seed CNN digits/s, batch 256", "{:,.0f}"),
    ("train_seconds_to_995", "training s to 99.5 % MNIST test", "{:.0f}"),
    ("peak_rss_mb", "peak RSS MB (main + workers)", "{:.0f}"),
    ("peak_pss_mb", "peak PSS MB (main + workers)", "{:.0f}"),
    ("rss_growth_mb", "RSS growth MB (last - first quarter)", "{:+.0f}"),
)


def _table(res: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table("measure", "value", title="formdigits bench")
    for key, label, fmt in _ROWS:
        v = res.get(key)
        table.add_row(label, "skipped" if v is None else fmt.format(v))
    for stage, ms in res.get("stage_ms", {}).items():
        table.add_row(f"  {stage} ms/page (1 worker)", f"{ms:.1f}")
    return table


def bench(
    quick: Annotated[bool, typer.Option("--quick", help="Small run (about a minute), "
                                        "no training.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    pages: Annotated[int | None, typer.Option("--pages", min=2, max=2000,
                                              help="Distinct synthetic pages to generate.")]
    = None,
    memory_pages: Annotated[int | None, typer.Option(
        "--memory-pages", min=10, help="Pages in the memory run (default 2000, quick 120).")]
    = None,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the JSON here.")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write the pages/s + RSS plot "
                                              "(PNG) here.")] = None,
    work_dir: Annotated[Path | None, typer.Option("--work-dir", help="Scratch folder "
                                                  "(default /tmp/formdigits-bench).")] = None,
) -> None:
    """Measure throughput, CNN speed, training time and memory on generated pages."""
    from dataclasses import replace

    from rich.console import Console

    from bench.perf import BenchConfig, run_bench

    console = Console(stderr=True)
    cfg = BenchConfig.make(quick, pages, work_dir)
    if memory_pages is not None:
        cfg = replace(cfg, memory_pages=memory_pages)
    res = run_bench(cfg, log=lambda msg: console.print(f"[dim]{msg}[/]"))
    if "skipped" in res:
        console.print(f"[yellow]bench skipped:[/] {res['skipped']}")
    if out is not None:
        out.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    if plot is not None and "rss_samples" in res:
        from bench.perf_plot import plot as draw

        draw(res, plot)
    if as_json:
        typer.echo(json.dumps(res, indent=1))
    elif "skipped" not in res:
        Console().print(_table(res))


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("bench")(bench)
