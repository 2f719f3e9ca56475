"""The nightly schedule: a served Prefect deployment of ``process-scan-folder``.

:func:`build_deployment` is pure (no server needed): it validates the cron string and
timezone and returns the ``RunnerDeployment`` with a cron schedule in that timezone and a
deployment concurrency limit of one whose collision strategy is ``CANCEL_NEW`` — a run
that would overlap a still-running night is cancelled (and shows as Cancelled in the UI
and the serve log) instead of queueing. Schedules need a Prefect server; where no
``PREFECT_API_URL`` is configured, :class:`LocalServer` starts ``prefect server start``
(SQLite under ``PREFECT_HOME``, bound to 127.0.0.1 on a free port) for the lifetime of the
command.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flows.cli_flow import die_with_parent, prefect_environment

prefect_environment()  # must precede the first prefect import

from prefect.client.schemas.objects import (  # noqa: E402
    ConcurrencyLimitConfig,
    ConcurrencyLimitStrategy,
)
from prefect.client.schemas.schedules import CronSchedule  # noqa: E402
from prefect.deployments.runner import EntrypointType, RunnerDeployment  # noqa: E402
from prefect.schedules import Cron  # noqa: E402

from pipeline.errors import FormdigitsError, UsageError  # noqa: E402

DEPLOYMENT_NAME = "nightly"


def build_deployment(
    input_dir: str | Path, out_dir: str | Path, *, cron: str = "0 2 * * *",
    timezone: str = "UTC", settings: dict[str, Any] | None = None,
    archive_dir: str | Path | None = None, dask_address: str | None = None,
    chunk_pages: int | None = None, settle_seconds: float | None = None,
    name: str = DEPLOYMENT_NAME,
) -> RunnerDeployment:
    """The deployment ``process-scan-folder/<name>`` (validated, not yet registered)."""
    from flows.nightly import process_scan_folder

    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise UsageError(f"unknown timezone '{timezone}'",
                         hint="Use an IANA name such as Europe/Berlin or UTC.") from exc
    try:
        CronSchedule(cron=cron, timezone=timezone)  # validates the expression
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise UsageError(f"invalid cron expression '{cron}'",
                         hint="Use five fields, e.g. --cron '0 2 * * *' for 02:00 every day."
                         ) from exc
    params: dict[str, Any] = {
        "input_dir": str(Path(input_dir).resolve()),
        "out_dir": str(Path(out_dir).resolve()),
        "settings": settings or {},
        "archive_dir": str(Path(archive_dir).resolve()) if archive_dir else None,
        "dask_address": dask_address,
    }
    if chunk_pages is not None:
        params["chunk_pages"] = chunk_pages
    if settle_seconds is not None:
        params["settle_seconds"] = settle_seconds
    dep = process_scan_folder.to_deployment(
        name=name,
        schedule=Cron(cron, timezone=timezone),
        concurrency_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
        parameters=params,
        description=f"formdigits: {params['input_dir']} → {params['out_dir']} at '{cron}' "
                    f"({timezone})",
        tags=["formdigits"],
        # flows.nightly.process_scan_folder: importable from any working directory.
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    assert isinstance(dep, RunnerDeployment)  # sync call: not the async variant
    return dep


def describe(dep: RunnerDeployment) -> dict[str, Any]:
    """What ``--dry-run`` prints: name, flow, schedule, concurrency, parameters."""
    schedules = []
    for s in dep.schedules or []:
        sch = s.schedule
        schedules.append({"cron": getattr(sch, "cron", None),
                          "timezone": getattr(sch, "timezone", None),
                          "active": s.active})
    limit = dep.concurrency_options
    return {
        "deployment": f"{dep.flow_name}/{dep.name}",
        "entrypoint": dep.entrypoint,
        "schedules": schedules,
        "concurrency_limit": dep.concurrency_limit,
        "collision_strategy": limit.collision_strategy.value if limit else None,
        "parameters": dep.parameters,
        "tags": dep.tags,
    }


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LocalServer:
    """``prefect server start`` as a child process on 127.0.0.1 (SQLite), for one command."""

    def __init__(self, port: int | None = None, startup_timeout_s: float = 120.0) -> None:
        """Pick the port (a free one unless given)."""
        self.port = port or free_port()
        self.timeout = startup_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The UI address."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        """What ``PREFECT_API_URL`` must be for clients of this server."""
        return f"{self.url}/api"

    def __enter__(self) -> LocalServer:
        """Start the server and wait until its health check answers."""
        import httpx

        env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
        env.pop("PREFECT_API_URL", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", str(self.port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr \
                    else ""
                raise FormdigitsError(f"prefect server exited with {self.proc.returncode}: "
                                      f"{err[-2000:]}", hint="Set PREFECT_API_URL to a "
                                      "running Prefect server instead.")
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.__exit__()
        raise FormdigitsError(f"prefect server did not answer within {self.timeout:.0f} s",
                              hint="Start one yourself (`prefect server start`) and set "
                                   "PREFECT_API_URL.")

    def __exit__(self, *exc: object) -> None:
        """Stop the server."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def serve_deployment(dep: RunnerDeployment) -> None:
    """Register ``dep`` and run its scheduled flow runs until interrupted."""
    from prefect import serve

    serve(dep, print_starting_message=False)
