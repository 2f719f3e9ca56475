"""The nightly Prefect flow ``process-scan-folder``: it only wires the pipeline stages.

discover (first look) → lock the output folder and load the model (``pipeline.run.begin``)
→ second look: skip files still being copied, files whose content is already committed
(``pipeline.intake``) → plan → read chunks of whole files, one task per chunk (each task
commits its own files) → archive committed sources → ``pipeline.run.finish`` → artifacts.

Chunk tasks receive paths and hashes, never pixels, and have no cache key
(``cache_policy=NO_CACHE``). Locally they run one at a time in this process, each with the
run's DataLoader workers (chunks of ~512 pages, so worker start-up is rare); with
``dask_address`` they run on that Dask cluster in chunks of ~24 pages, each task reading
its pages one at a time (Dask provides the parallelism) with the model cached per worker
process. Only transient I/O failures are retried; a bad file is an error row, never a
failed night.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

from flows.cli_flow import BackgroundAPI, prefect_environment

prefect_environment()  # telemetry off, Prefect quiet: must precede the first prefect import

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.client.schemas.objects import TaskRun  # noqa: E402
from prefect.states import State  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402
from prefect.tasks import Task, exponential_backoff  # noqa: E402
from prefect.utilities.annotations import quote  # noqa: E402

from pipeline import intake  # noqa: E402
from pipeline.commit import Tally  # noqa: E402
from pipeline.errors import FormdigitsError  # noqa: E402
from pipeline.ingest import discover, file_sha256  # noqa: E402
from pipeline.looks import first_look  # noqa: E402
from pipeline.plan import Plan, WorkItem  # noqa: E402
from pipeline.run import RunContext, begin, finish, process_chunk  # noqa: E402
from pipeline.settings import RunSettings  # noqa: E402
from pipeline.store import read_arrow  # noqa: E402

FLOW_NAME = "process-scan-folder"
# Pages per chunk task. Locally each chunk starts its own DataLoader workers, so chunks
# are large; on Dask smaller chunks spread evenly over the workers.
LOCAL_CHUNK_PAGES = 512
DASK_CHUNK_PAGES = 24
DEFAULT_SETTLE_SECONDS = 2.0
RETRIES = 3
# Open runs of this process live in ``intake.OPEN_RUNS`` (by run id): local chunk tasks
# share the flow's locked store and model instead of receiving them as arguments. It is
# not a global of this module because Dask pickles task functions by value, with the
# globals they use, and a locked store cannot be pickled.


def retry_if_transient(_task: Task[Any, Any], _run: TaskRun, state: State[Any]) -> bool:
    """Prefect ``retry_condition_fn``: retry only I/O failures that may pass."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            got = state.result(raise_on_failure=False)
        except Exception as err:  # the result itself could not be loaded
            got = err
        exc = got if isinstance(got, BaseException) else None
    return exc is not None and intake.is_transient(exc)


_RETRY: dict[str, Any] = {
    "retries": RETRIES,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_if_transient,
    "cache_policy": NO_CACHE,
    "persist_result": False,
}


@task(name="look", **_RETRY)
def look(input_dir: str, exclude: Sequence[str]) -> intake.Snapshot:
    """Discover the scan folder's files and take the first look at them.

    ``run_once`` may have taken this look already, while the Prefect API was starting;
    then that one is used (files that arrived since wait for the next run).
    """
    early = intake.EARLY_LOOKS.pop(input_dir, None)
    if early is not None:
        return early
    return intake.snapshot(discover([Path(input_dir)], exclude=[Path(p) for p in exclude]))


@task(name="select", **_RETRY)
def select(run_id: str, first: intake.Snapshot, settle_seconds: float) -> intake.Selection:
    """Skip known-done files, wait out the settle interval, plan the settled new ones."""
    ctx = intake.OPEN_RUNS[run_id]
    sel = intake.select_files(first, ctx.store.out, ctx.settings, settle_seconds,
                              ctx.store.committed(), _exclude(ctx.store.out, ctx.settings))
    ctx.started += sel.waited  # waiting for copies is not processing time
    return sel


def _exclude(out: Path, s: RunSettings) -> list[Path]:
    """Folders the plan never reads from: the output and the debug pictures."""
    return [out] + ([Path(s.debug_dir)] if s.debug_dir else [])


@task(name="read-chunk", **_RETRY)
def read_chunk(out_dir: str, run_id: str, settings: dict[str, Any],
               items: Sequence[WorkItem], chunk: int, distributed: bool) -> Tally:
    """Read and commit one chunk of files; returns what it committed.

    On a retry, files this run already committed are dropped first, so a file is never
    committed twice even when the failure came after some of its chunk's commits.
    """
    from prefect.runtime import task_run

    attempt = int(task_run.run_count or 1)
    if attempt > 1:
        done = intake.committed_in_run(Path(out_dir), run_id)
        items = [w for w in items if w.key not in done]
    ctx = intake.OPEN_RUNS.get(run_id) if not distributed else None
    if ctx is None:
        ctx = _worker_context(Path(out_dir), run_id, RunSettings.model_validate(settings),
                              writer=(chunk + 1) * 100 + min(attempt, 99))
    return process_chunk(ctx, items)


@task(name="archive", **_RETRY)
def archive(paths: Sequence[str], input_dir: str, archive_dir: str) -> list[str]:
    """Move committed sources into the archive (relative paths kept, nothing overwritten)."""
    moved = []
    for p in paths:
        if Path(p).exists():
            intake.archive_file(Path(p), Path(input_dir), Path(archive_dir))
            moved.append(p)
    return moved


def _worker_context(out_dir: Path, run_id: str, settings: RunSettings, writer: int
                    ) -> RunContext:
    """What a chunk needs inside a Dask worker: cached model, unlocked chunk store."""
    import cv2
    import torch

    from pipeline.templates import load_templates

    # One thread per task: a Dask worker's parallelism is its threads, not BLAS/OpenCV's.
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    s = settings.model_copy(update={"workers": 0})  # no DataLoader processes inside Dask
    predictor = intake.cached_predictor(s.model, s.device, s.batch_size, s.second_opinion)
    return RunContext(intake.ChunkStore(out_dir, run_id, writer), s,
                      load_templates(s.templates), predictor,  # type: ignore[arg-type]
                      time.perf_counter())


@flow(name=FLOW_NAME, log_prints=False, persist_result=False,
      description="Read new scans of a folder into Parquet, each file exactly once.")
def process_scan_folder(
    input_dir: str,
    out_dir: str,
    settings: dict[str, Any] | None = None,
    archive_dir: str | None = None,
    dask_address: str | None = None,
    chunk_pages: int | None = None,
    settle_seconds: float = DEFAULT_SETTLE_SECONDS,
) -> dict[str, Any]:
    """Process what is new in ``input_dir`` into ``out_dir``; returns the run summary.

    ``settings`` are :class:`pipeline.settings.RunSettings` fields (JSON); ``archive_dir``
    receives sources once their rows are committed; ``dask_address`` (``tcp://host:port``)
    runs the chunk tasks on that Dask cluster; ``chunk_pages`` defaults to
    ``LOCAL_CHUNK_PAGES`` or ``DASK_CHUNK_PAGES``.
    """
    log = get_run_logger()
    s = RunSettings.model_validate(settings or {})
    out = Path(out_dir)
    exclude = [str(out)] + ([archive_dir] if archive_dir else [])
    first = look(input_dir, exclude)
    reader = intake.cached_predictor(s.model, s.device, s.batch_size, s.second_opinion)
    ctx = begin(out, s, reader)  # type: ignore[arg-type]
    intake.OPEN_RUNS[ctx.run_id] = ctx
    failures: list[str] = []
    archived: list[str] = []
    try:
        sel = select(ctx.run_id, cast(Any, quote(first)), settle_seconds)
        plan_: Plan = sel.plan
        if archive_dir:  # content already committed earlier (renamed/copied again)
            archived += archive(_skipped_paths(sel, plan_), input_dir, archive_dir)
        tallies, ok_items = _read_chunks(ctx, plan_, s, dask_address, chunk_pages, failures)
        if archive_dir:
            archived += archive([str(w.path) for w in ok_items if w.error is None],
                                input_dir, archive_dir)
        _update_cache(ctx, sel, ok_items, set(archived))
    except BaseException:
        intake.OPEN_RUNS.pop(ctx.run_id, None)
        ctx.store.close()
        raise
    intake.OPEN_RUNS.pop(ctx.run_id, None)
    summary = finish(ctx, plan_, tallies)
    result = {**asdict(summary), "new_files": len(plan_.items),
              "known_files": len(sel.known), "waiting_files": len(sel.changing),
              "waiting": [str(p) for p in sel.changing], "archived": len(archived),
              "failed_chunks": failures, "out_dir": str(out)}
    _publish(result, out)
    if not plan_.items:
        log.info("Nothing new in %s: %d file(s) already processed, %d still being copied.",
                 input_dir, len(sel.known) + len(plan_.skipped), len(sel.changing))
    if failures:
        raise FormdigitsError(
            f"{len(failures)} chunk(s) failed: {'; '.join(failures)}",
            hint="Their files were not committed; the next run retries them. Run with "
                 "--verbose to see the Prefect logs.")
    return result


def _read_chunks(ctx: RunContext, plan_: Plan, s: RunSettings, dask_address: str | None,
                 chunk_pages: int | None, failures: list[str]
                 ) -> tuple[list[Tally], list[WorkItem]]:
    """Run the chunk tasks; returns their tallies and the items of chunks that committed."""
    size = chunk_pages or (DASK_CHUNK_PAGES if dask_address else LOCAL_CHUNK_PAGES)
    chunks = intake.chunk_items(plan_.items, size)
    if not chunks:
        return [], []
    settings_json = s.model_dump(mode="json")
    if dask_address:
        from prefect_dask import DaskTaskRunner

        runner: Any = DaskTaskRunner(address=dask_address)
    else:
        runner = ThreadPoolTaskRunner(max_workers=1)  # chunks use DataLoader workers already
    tallies: list[Tally] = []
    ok: list[WorkItem] = []
    # quote(): no walking the arguments for futures. Dask reads tuples (which quote is) as
    # its own task specs, so there the plain values go.
    wrap: Any = (lambda x: x) if dask_address else quote
    with runner:
        futures = [runner.submit(read_chunk, {
            "out_dir": str(ctx.store.out), "run_id": ctx.run_id, "settings": wrap(settings_json),
            "items": wrap(list(c)), "chunk": i, "distributed": bool(dask_address),
        }) for i, c in enumerate(chunks)]
        for i, (fut, c) in enumerate(zip(futures, chunks, strict=True)):
            try:
                tallies.append(fut.result())
                ok.extend(c)
            except Exception as exc:  # recorded; the other chunks still commit
                failures.append(f"chunk {i} ({len(c)} files): {type(exc).__name__}: {exc}")
    return tallies, ok


def _skipped_paths(sel: intake.Selection, plan_: Plan) -> list[str]:
    """Sources whose content is committed already (not those that failed as a whole)."""
    failed = set(sel.failed)
    return [str(p) for p in sel.known] + [s for s in plan_.skipped if s not in failed]


def _update_cache(ctx: RunContext, sel: intake.Selection, ok_items: Sequence[WorkItem],
                  archived: set[str]) -> None:
    """Remember committed files (and known duplicates) so tomorrow needs no hashing."""
    cache: intake.StatCache = sel.cache
    for w in ok_items:
        if w.file_sha256 and str(w.path) not in archived:
            cache.remember(w.path, w.file_sha256)
    for src in sel.plan.skipped:
        if src not in archived and Path(src).exists():
            try:
                cache.remember(Path(src), file_sha256(Path(src)))
            except Exception:  # only a shortcut: an unreadable file is hashed next time
                continue
    cache.prune(Path(p) for p in sel.all if str(p) not in archived)
    cache.save(ctx.store)


def _publish(result: dict[str, Any], out: Path) -> None:
    """Markdown summary and a table of the least confident fields sent to review."""
    errors = read_arrow(out, "errors").to_pydict()
    by_type: dict[str, int] = {}
    for rid, kind in zip(errors["run_id"], errors["error_type"], strict=True):
        if rid == result["run_id"]:
            by_type[kind] = by_type.get(kind, 0) + 1
    key = FLOW_NAME
    create_markdown_artifact(markdown=summary_markdown(result, by_type), key=key,
                             description="formdigits nightly run summary")
    rows = lowest_confidence_reviews(out, result["run_id"])
    create_table_artifact(table=rows or [{"note": "no field needs review in this run"}],
                          key=f"{key}-review", description="needs_review fields, least "
                          "confident first")


REVIEW_COLUMNS = ("confidence", "source", "page", "template_id", "field", "value",
                  "raw_value", "reasons")


def lowest_confidence_reviews(out: Path, run_id: str, limit: int = 25) -> list[dict[str, Any]]:
    """The ``limit`` needs_review fields of ``run_id`` with the lowest confidence.

    Plain Arrow rows: the flow never imports pandas (see :func:`pipeline.store.read_arrow`).
    """
    import pyarrow.compute as pc

    f = read_arrow(out, "fields")
    f = f.filter(pc.and_(pc.equal(f["run_id"], run_id), pc.equal(f["status"], "needs_review")))
    # Arrow sorts NaN and missing values last, as pandas does.
    f = f.sort_by([(c, "ascending") for c in ("confidence", "source", "page", "field")])
    cols = [c for c in REVIEW_COLUMNS if c in f.column_names]
    return [{k: _cell(v) for k, v in r.items()} for r in f.select(cols).slice(0, limit).to_pylist()]


def _cell(v: Any) -> Any:
    """A JSON-friendly table cell (lists joined, missing values empty, floats rounded)."""
    if isinstance(v, float):
        return "" if v != v else round(v, 4)
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v)
    return "" if v is None else v if isinstance(v, (int, str)) else str(v)


def summary_markdown(r: dict[str, Any], errors_by_type: dict[str, int]) -> str:
    """The run's markdown artifact: counts, throughput, review rate, errors."""
    read = r["accepted"] + r["needs_review"]
    rate = f"{100 * r['needs_review'] / read:.1f} %" if read else "n/a"
    lines = [
        f"# formdigits nightly run `{r['run_id']}`", "",
        f"Output: `{r['out_dir']}`", "",
        "| files | pages | fields | accepted | needs review | empty | errors | pages/s "
        "| seconds |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {r['files']} | {r['pages']} | {r['fields']} | {r['accepted']} | "
        f"{r['needs_review']} | {r['empty']} | {r['errors']} | {r['pages_per_s']:.2f} | "
        f"{r['seconds']:.1f} |", "",
        f"- review rate (needs review / non-empty fields): **{rate}**",
        f"- new files read: {r['new_files']}; already processed (skipped): "
        f"{r['known_files'] + r['skipped_files']}; still being copied (next run): "
        f"{r['waiting_files']}; archived: {r['archived']}",
    ]
    if not r["new_files"]:
        lines += ["", "**Nothing new to process.**"]
    if errors_by_type:
        lines += ["", "## Errors", "", "| type | rows |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(errors_by_type.items())]
    if r.get("failed_chunks"):
        lines += ["", "## Failed chunks (retried next run)", ""]
        lines += [f"- {x}" for x in r["failed_chunks"]]
    return "\n".join(lines) + "\n"


def run_once(input_dir: Path, out_dir: Path, settings: dict[str, Any], *,
             api: BackgroundAPI | None = None, archive_dir: Path | None = None,
             dask_address: str | None = None, chunk_pages: int | None = None,
             settle_seconds: float = DEFAULT_SETTLE_SECONDS,
             looked: intake.Snapshot | None = None) -> dict[str, Any]:
    """Run the flow once (what ``formdigits flow`` and cron call); returns its summary.

    ``api`` (started by the caller as early as possible) is the configured Prefect API or
    an ephemeral one; the model is loaded while it starts. Its address is put into the
    settings so Dask workers, which are other processes, report to the same API instead
    of each starting their own. ``looked`` is a :func:`pipeline.looks.first_look` the
    caller took earlier still (the settle interval runs from then); otherwise it is taken
    now.
    """
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )

    api = api or BackgroundAPI()
    s = RunSettings.model_validate(settings)
    # The settle interval starts at the first look, not once the API answers.
    intake.EARLY_LOOKS[str(input_dir)] = looked or first_look(input_dir, out_dir, archive_dir)
    # Meanwhile: the model.
    intake.cached_predictor(s.model, s.device, s.batch_size, s.second_opinion)
    # ... and what Prefect imports on its first flow call (0.3 s: it serializes the
    # parameters with FastAPI's encoder), so that it is not paid after the API is up.
    import fastapi.encoders  # noqa: F401

    url = api.wait()
    updates: dict[Any, Any] = {PREFECT_API_URL: url}
    if api.ephemeral:
        # Heartbeats let a server mark a run whose process died as crashed. The ephemeral
        # API dies with this process, so nobody could ever read them; and stopping
        # Prefect's heartbeat thread costs up to a second (it sleeps in 1 s steps).
        updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
    kwargs: dict[str, Any] = {
        "input_dir": str(input_dir), "out_dir": str(out_dir), "settings": settings,
        "archive_dir": str(archive_dir) if archive_dir else None,
        "dask_address": dask_address, "chunk_pages": chunk_pages,
        "settle_seconds": settle_seconds,
    }
    try:
        with temporary_settings(updates):
            return process_scan_folder(**kwargs)
    finally:
        intake.EARLY_LOOKS.pop(str(input_dir), None)  # unused if the flow failed early
