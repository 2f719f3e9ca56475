"""The ``formdigits`` command line: one typer app, one error handler at the boundary.

Commands live in small modules by area and are registered here; heavy imports (torch,
Prefect) happen inside the commands so ``formdigits --help`` stays fast.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from pipeline.errors import FormdigitsError

app = typer.Typer(
    name="formdigits",
    help="Read handwritten digits from scanned forms into Parquet, with calibrated confidence.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)


def _register() -> None:
    # Each area registers its commands on ``app``; import order = order in --help.
    from flows import cli_bench, cli_flow, cli_forms, cli_models, cli_run

    for mod in (cli_run, cli_flow, cli_forms, cli_models, cli_bench):
        mod.register(app)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: run the app and map errors to exit codes."""
    _register()
    try:
        app(args=argv, standalone_mode=False)
    except FormdigitsError as exc:
        err_console.print(f"[bold red]error:[/] {exc.user_message()}")
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        return 130
    except SystemExit as exc:  # typer/click exits (e.g. --help) keep their code
        return int(exc.code or 0)
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            return exc.exit_code
        if isinstance(exc, click.exceptions.Abort):
            return 1
        raise
    return 0


def entry() -> None:
    """The ``formdigits`` console script: :func:`main`, then a quick interpreter exit.

    The command's work is done and written when ``main`` returns; what is left is the
    interpreter tearing down torch, Prefect and pandas object by object, which took
    0.4-0.8 s per command. ``gc.freeze()`` takes those objects out of the final garbage
    collections (exit handlers still run: logs are flushed, servers stopped). Only here,
    not in ``main``: tests call ``main`` many times in one process.
    """
    import gc

    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()
