"""CLI commands ``flow`` (the nightly flow, once) and ``schedule`` (serve it on a cron).

Registered by :mod:`flows.cli`. Prefect is imported inside the commands, after
:func:`prefect_environment` has switched telemetry off and set the log level: Prefect
reads both when it is first imported.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console(stderr=True)
DASK_ENV = "FORMDIGITS_DASK_ADDRESS"


def prefect_environment(verbose: bool = False) -> None:
    """No telemetry; Prefect logs at WARNING unless ``verbose`` (call before importing it).

    Explicit user settings win: only unset variables are filled in, except that
    ``verbose`` forces INFO.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    if verbose:
        os.environ["PREFECT_LOGGING_LEVEL"] = "INFO"
    else:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # Prefect may already be imported (tests, notebooks): set its loggers directly too.
    level = os.environ["PREFECT_LOGGING_LEVEL"]
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs", "prefect.server"):
        logging.getLogger(name).setLevel(level)


def die_with_parent() -> None:
    """In a child process (``preexec_fn``): get SIGTERM when the parent dies (Linux).

    atexit does not run when the command is killed (SIGKILL, a closed pipe, OOM); without
    this the server it started would be left running. The signal follows the *thread*
    that spawned the child, so spawn from the main thread.
    """
    import contextlib
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):  # not Linux/glibc: atexit only
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class BackgroundAPI:
    """The Prefect API for this command, made ready while the caller does other work.

    ``PREFECT_API_URL`` when configured (environment or Prefect profile); otherwise
    Prefect's ephemeral API server (SQLite under ``PREFECT_HOME``, 127.0.0.1, a free port)
    — the same uvicorn app Prefect's own ephemeral mode runs. It is spawned first thing,
    before this process imports Prefect, torch or the model, so its start-up (several
    seconds) overlaps those instead of adding to them; it is stopped at exit.
    """

    def __init__(self) -> None:
        """Spawn the server now if no URL is in the environment; check profiles in a thread."""
        self.url: str | None = os.environ.get("PREFECT_API_URL") or None
        if self.url is None and "prefect.settings" in sys.modules:
            # Already imported (tests, notebooks): settings may be set in this context.
            from prefect.settings import PREFECT_API_URL

            self.url = PREFECT_API_URL.value() or None
        self.proc: subprocess.Popen[bytes] | None = None
        self._error: BaseException | None = None
        self._port = 0
        if self.url is None:
            self._spawn()
        self.ephemeral = False  # True once wait() returns the server spawned here
        self._thread = threading.Thread(target=self._ready, name="prefect-api", daemon=True)
        self._thread.start()

    def _spawn(self) -> None:
        import importlib.util
        import socket

        spec = importlib.util.find_spec("prefect")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("prefect is not installed")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self._port = int(sock.getsockname()[1])
        app_dir = str(Path(next(iter(spec.submodule_search_locations))).parent)
        env = ephemeral_server_env(os.environ)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", app_dir, "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port",
             str(self._port), "--log-level", "error", "--lifespan", "on"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        atexit.register(self.stop)

    def _ready(self) -> None:
        try:
            from prefect.settings import PREFECT_API_URL

            configured = PREFECT_API_URL.value()
            if configured:  # set in a Prefect profile: the spawned server is not needed
                self.stop()
                self.url = str(configured)
                return
            if self.proc is None:
                return
            import httpx

            url = f"http://127.0.0.1:{self._port}/api"
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the ephemeral Prefect API exited with "
                                       f"{self.proc.returncode}")
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        _warm(url)
                        self.url, self.ephemeral = url, True
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            raise RuntimeError("the ephemeral Prefect API did not start within 120 s")
        except BaseException as exc:  # re-raised by wait(), in the caller's thread
            self._error = exc

    def wait(self) -> str | None:
        """The API URL once it answers (raises what went wrong starting it)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.url

    def stop(self) -> None:
        """Stop the server this object spawned (no-op otherwise)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def ephemeral_server_env(base: Mapping[str, str]) -> dict[str, str]:
    """The environment of the ephemeral API server: ``base`` plus start-up savings.

    Each saving is a default only: a variable the user set wins.
    """
    env = {**base, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
           "PREFECT__SERVER_FINAL": "1"}
    # Registering Prefect's block types keeps a fresh server busy into the first
    # requests (~0.2 s); these runs use no blocks.
    env.setdefault("PREFECT_API_BLOCKS_REGISTER_ON_START", "false")
    if env["PREFECT_API_BLOCKS_REGISTER_ON_START"].strip().lower() in ("false", "0", "no"):
        # Even with registration off, Prefect's memo of it first imports every installed
        # collection (prefect-dask: dask and distributed, 0.5 s of the server's start) to
        # hash the block registry; without registration there is nothing to memoize.
        env.setdefault("PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION", "false")
    # Automations (the triggers service) evaluate every event the run emits; this API
    # lives only as long as the command, so no automation could act on them anyway.
    # Off, the server starts ~0.35 s sooner and a 500-page flow ends ~0.45 s sooner.
    env.setdefault("PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED", "false")
    return env


def _warm(url: str) -> None:
    """Make a fresh server's first answers now, while the command still loads its model.

    A new API server answers its first version check and first database query ~0.3 s
    slower than later ones (lazy set-up on its side); the flow's start makes exactly those
    calls, so without this the 0.3 s lands on the run's critical path. Only a shortcut:
    failures are left for the flow's own calls to report.
    """
    import httpx

    try:
        httpx.get(f"{url}/admin/version", timeout=10)
        httpx.post(f"{url}/flows/filter", json={"limit": 1}, timeout=10)
    except httpx.HTTPError:
        pass


Template = Annotated[list[str] | None, typer.Option(
    "--template", "-t", help="Template name or YAML file (repeat); default: all shipped.")]
Model = Annotated[str | None, typer.Option(help="Weights file, or 'default'.")]
Device = Annotated[str | None, typer.Option(help="auto, cpu or cuda.")]
BatchSize = Annotated[int | None, typer.Option(help="Crops per CNN batch.")]
Workers = Annotated[int | None, typer.Option(
    help="Page-preparing worker processes (local runs; Dask workers use none).")]
ReviewBelow = Annotated[float | None, typer.Option(
    help="Fields below this confidence go to review.")]
PdfDpi = Annotated[int | None, typer.Option(help="Rasterization dpi for PDFs.")]
Config = Annotated[Path | None, typer.Option(help="Settings YAML file.")]
Archive = Annotated[Path | None, typer.Option(
    "--archive", help="Move each source here once its rows are committed (relative path kept, "
    "never overwrites).")]
DaskAddress = Annotated[str | None, typer.Option(
    "--dask-address", help=f"Run chunk tasks on this Dask scheduler (tcp://HOST:PORT; or "
    f"{DASK_ENV}).")]
ChunkPages = Annotated[int | None, typer.Option(
    help="Pages per chunk task (whole files); default 512 locally, 24 on Dask.")]
Settle = Annotated[float, typer.Option(
    help="Seconds between the two looks that tell a settled file from one being copied.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's logs.")]


def _settings(config: Path | None, **flags: Any) -> dict[str, Any]:
    from flows.cli_run import resolve_settings

    s = resolve_settings(config, **flags)
    return s.model_dump(mode="json")


def flow_cmd(
    input_dir: Annotated[Path, typer.Option("--input", "-i", help="The scan folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (Parquet tables).")],
    template: Template = None, model: Model = None, device: Device = None,
    batch_size: BatchSize = None, workers: Workers = None, review_below: ReviewBelow = None,
    pdf_dpi: PdfDpi = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Reprocess files already in OUT (new rows replace old).")] = False,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Exit non-zero if any file or page ended as an error.")] = False,
    config: Config = None, archive: Archive = None, dask_address: DaskAddress = None,
    chunk_pages: ChunkPages = None, settle_seconds: Settle = 2.0, verbose: Verbose = False,
) -> None:
    """Run the nightly flow once: read what is new in the scan folder into OUT."""
    prefect_environment(verbose)
    from pipeline.errors import DataNotFoundError, StrictModeError

    if not input_dir.is_dir():
        raise DataNotFoundError(f"scan folder {input_dir} does not exist or is not a folder")
    api = BackgroundAPI()
    # The first look at the folder, before torch and Prefect load: the settle interval
    # between the two looks then passes during the imports instead of being slept.
    from pipeline.looks import first_look

    looked = first_look(input_dir, out, archive)
    from flows.cli_run import summary_table
    from pipeline.run import RunSummary

    settings = _settings(
        config, templates=tuple(template) if template else None, model=model, device=device,
        batch_size=batch_size, workers=workers, review_below=review_below, pdf_dpi=pdf_dpi,
        force=force or None, strict=strict or None,
    )
    from flows.nightly import run_once

    r = run_once(input_dir, out, settings, api=api, archive_dir=archive,
                 dask_address=dask_address or os.environ.get(DASK_ENV) or None,
                 chunk_pages=chunk_pages, settle_seconds=settle_seconds, looked=looked)
    fields = {k: r[k] for k in RunSummary.__dataclass_fields__}
    console.print(summary_table(RunSummary(**fields), out))
    if not r["new_files"]:
        console.print(f"Nothing new to process: {r['known_files'] + r['skipped_files']} "
                      f"file(s) already processed, {r['waiting_files']} still being copied.")
    elif r["waiting_files"]:
        console.print(f"{r['waiting_files']} file(s) still being copied: next run.")
    if r["archived"]:
        console.print(f"archived {r['archived']} file(s) to {archive}")
    if settings.get("strict") and r["errors"]:
        raise StrictModeError(f"{r['errors']} error row(s) in this run (--strict)")


def schedule_cmd(
    input_dir: Annotated[Path, typer.Option("--input", "-i", help="The scan folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (Parquet tables).")],
    cron: Annotated[str, typer.Option(help="Cron expression (5 fields).")] = "0 2 * * *",
    timezone: Annotated[str, typer.Option(help="IANA timezone of the cron.")] = "UTC",
    name: Annotated[str, typer.Option(help="Deployment name.")] = "nightly",
    template: Template = None, model: Model = None, device: Device = None,
    batch_size: BatchSize = None, workers: Workers = None, review_below: ReviewBelow = None,
    pdf_dpi: PdfDpi = None, config: Config = None, archive: Archive = None,
    dask_address: DaskAddress = None, chunk_pages: ChunkPages = None, settle_seconds: Settle = 2.0,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the deployment and schedule; register nothing.")] = False,
    verbose: Verbose = False,
) -> None:
    """Serve the nightly flow on a cron schedule (one run at a time; overlaps cancelled)."""
    prefect_environment(verbose)
    from flows.schedule import LocalServer, build_deployment, describe, serve_deployment

    settings = _settings(
        config, templates=tuple(template) if template else None, model=model, device=device,
        batch_size=batch_size, workers=workers, review_below=review_below, pdf_dpi=pdf_dpi,
    )
    dep = build_deployment(
        input_dir, out, cron=cron, timezone=timezone, settings=settings, archive_dir=archive,
        dask_address=dask_address or os.environ.get(DASK_ENV) or None,
        chunk_pages=chunk_pages, settle_seconds=settle_seconds, name=name)
    if dry_run:
        typer.echo(json.dumps(describe(dep), indent=2, default=str))
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        console.print(f"serving {dep.flow_name}/{dep.name} on {PREFECT_API_URL.value()}; "
                      "Ctrl-C stops")
        serve_deployment(dep)
        return
    console.print("No PREFECT_API_URL: starting a local Prefect server (SQLite) …")
    with LocalServer() as server, temporary_settings({PREFECT_API_URL: server.api_url}):
        console.print(f"Prefect UI: [bold]{server.url}[/]  — serving {dep.flow_name}/"
                      f"{dep.name} at '{cron}' ({timezone}); Ctrl-C stops")
        serve_deployment(dep)


def register(app: typer.Typer) -> None:
    """Add ``flow`` and ``schedule`` to ``app``."""
    app.command("flow")(flow_cmd)
    app.command("schedule")(schedule_cmd)
