"""The batch run, as a table of contents: begin → plan → process chunks → finish.

``process`` does all of it for the CLI. The Prefect flow calls the same pieces: ``begin``
once (lock, settings, model), ``plan`` once, ``process_chunk`` per group of files (each
commits its own files), ``finish`` once. Every page of every input ends up in the
``pages`` or ``errors`` table; a broken file is an error row and the batch goes on.
"""

from __future__ import annotations

import gc
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.commit import Committer, Tally
from pipeline.lines import line_reader
from pipeline.page_workers import configure_main_threads, iter_works
from pipeline.pieces import piece_scorer
from pipeline.plan import Plan, WorkItem, plan_files
from pipeline.recognize import ProbaModel, recognize
from pipeline.settings import RunSettings
from pipeline.store import OutputStore, keep_pandas_out, new_run_id
from pipeline.templates import Template, load_templates

ProgressFn = Callable[[int], None]  # called with the number of pages just finished
ChunkResult = Tally  # what ``process_chunk`` returns: counts and stage seconds committed


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What one run did (also written to ``OUT/runs/<run_id>.json``)."""

    run_id: str
    files: int
    pages: int
    fields: int
    accepted: int
    needs_review: int
    empty: int
    errors: int
    skipped_files: int
    seconds: float
    pages_per_s: float


@dataclass
class RunContext:
    """An open run: the locked output store and what every chunk needs."""

    store: OutputStore
    settings: RunSettings
    templates: list[Template]
    predictor: ProbaModel
    started: float

    @property
    def run_id(self) -> str:
        """This run's id (in every row it writes)."""
        return self.store.run_id


def begin(out_dir: Path, settings: RunSettings, predictor: ProbaModel | None = None) -> RunContext:
    """Validate templates and model, then lock ``out_dir`` and write its settings."""
    started = time.perf_counter()
    templates = load_templates(settings.templates)
    if predictor is None:
        from models.second_opinion import load_reader

        predictor = load_reader(settings.model, settings.second_opinion,
                                device=settings.device, batch_size=settings.batch_size)
    # Loaded now, so that a bad --piece-model, --string-model or --box-model fails before
    # any page.
    piece_scorer(settings.piece_model)
    line_reader(settings.string_model)
    line_reader(settings.box_model, "boxnet")
    configure_main_threads(settings.workers)
    keep_pandas_out()  # ~42 MB less RSS in the run process (pipeline.store.keep_pandas_out)
    store = OutputStore(Path(out_dir), new_run_id())
    try:
        store.write_settings(settings)
    except Exception:
        store.close()
        raise
    return RunContext(store, settings, templates, predictor, started)


def plan(ctx: RunContext, inputs: Sequence[Path]) -> Plan:
    """Discover inputs and drop those already committed (unless ``force``)."""
    s = ctx.settings
    exclude = [ctx.store.out] + ([Path(s.debug_dir)] if s.debug_dir else [])
    committed = {} if s.force else ctx.store.committed()
    return plan_files(inputs, s, committed, exclude)


def process_chunk(ctx: RunContext, items: Sequence[WorkItem],
                  progress: ProgressFn | None = None) -> Tally:
    """Read ``items`` and commit them (in groups); returns what was committed."""
    # What exists now (modules, models, templates: ~200k objects) outlives the chunk: frozen,
    # the collector stops walking it (75 ms a full pass here), in the forked page workers
    # too, which then also stop writing to the pages they share with this process. Thawed
    # at the end, so nothing is kept from the collector for good. Freezing is process-wide:
    # where something else froze objects already (the host, or a chunk running beside this
    # one), it is left alone, and so are they.
    ours = gc.get_freeze_count() == 0
    if ours:
        gc.freeze()
    try:
        return _process_chunk(ctx, items, progress)
    finally:
        if ours:
            gc.unfreeze()


def _process_chunk(ctx: RunContext, items: Sequence[WorkItem],
                   progress: ProgressFn | None) -> Tally:
    committer = Committer(ctx.store, ctx.run_id)
    for item in items:
        if item.error is not None:
            committer.add_file_error(item)
    readable = [w for w in items if w.error is None]
    page_items = [p for w in readable for p in w.page_items()]
    works = iter_works(page_items, ctx.templates, ctx.settings)
    outcomes = recognize(works, ctx.predictor, ctx.templates, ctx.settings, ctx.run_id)
    files = iter(readable)
    current, pages = next(files, None), []
    for outcome in outcomes:
        pages.append(outcome)
        if progress is not None:
            progress(1)
        while current is not None and len(pages) == current.pages:
            committer.add_file(current, pages)
            current, pages = next(files, None), []
    committer.flush()
    return committer.tally


def environment(predictor: ProbaModel) -> dict[str, Any]:
    """Where a run ran: the reader's device and the versions that shape its numbers.

    On a GPU (fp16 autocast) confidences differ from the CPU's by up to ~0.002, and library
    versions change decoding and kernels, so an audit of a result needs them.
    """
    import cv2
    import numpy as np
    import torch

    device = getattr(predictor, "device", None)
    name = str(device) if device is not None else "unknown"
    if isinstance(device, torch.device) and device.type == "cuda":
        name = f"{device} ({torch.cuda.get_device_name(device)})"

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {"device": name, "formdigits": version("formdigits"), "torch": torch.__version__,
            "torchvision": version("torchvision"), "opencv": cv2.__version__,
            "numpy": np.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


def finish(ctx: RunContext, plan_: Plan, tallies: Sequence[Tally]) -> RunSummary:
    """Write ``OUT/runs/<run_id>.json``, release the lock, and summarize."""
    t = Tally()
    for x in tallies:
        t.files += x.files
        t.pages += x.pages
        t.fields += x.fields
        t.errors += x.errors
        t.commits += x.commits
        t.statuses.update(x.statuses)
        for k, v in x.timings.items():
            t.timings[k] = t.timings.get(k, 0.0) + v
    seconds = time.perf_counter() - ctx.started
    summary = RunSummary(
        run_id=ctx.run_id, files=t.files, pages=t.pages, fields=t.fields,
        accepted=t.statuses["accepted"], needs_review=t.statuses["needs_review"],
        empty=t.statuses["empty"], errors=t.errors, skipped_files=len(plan_.skipped),
        seconds=round(seconds, 3), pages_per_s=round(t.pages / seconds, 3) if seconds else 0.0,
    )
    try:
        ctx.store.write_json(ctx.store.out / "runs" / f"{ctx.run_id}.json", {
            **asdict(summary),
            "commits": t.commits,
            "stage_seconds": {k: round(v, 4) for k, v in sorted(t.timings.items())},
            "model_version": ctx.predictor.model_version,
            "environment": environment(ctx.predictor),
            "skipped": list(plan_.skipped),
            "settings": ctx.settings.model_dump(mode="json"),
        })
    finally:
        ctx.store.close()
    return summary


def process(inputs: Sequence[Path], out_dir: Path, settings: RunSettings,
            progress: Callable[[int, int], None] | None = None,
            predictor: ProbaModel | None = None) -> RunSummary:
    """Run the whole batch; ``progress(done_pages, total_pages)`` after every page."""
    ctx = begin(out_dir, settings, predictor)
    try:
        p = plan(ctx, inputs)
        done = 0

        def tick(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(done, p.total_pages)

        tick(0)
        tally = process_chunk(ctx, p.items, tick)
    except BaseException:
        ctx.store.close()
        raise
    return finish(ctx, p, [tally])
