"""Page workers: the DataLoader whose worker processes prepare pages.

A torch ``Dataset`` over ``(file, page)`` items runs :func:`pipeline.recognize.prepare_page`
(decode → register → segment) inside forked DataLoader workers, one thread each, which die
with the run; :func:`iter_works` yields the prepared pages in input order and turns a page
that kills its worker into an error row.
"""

from __future__ import annotations

import functools
import inspect
import logging
import multiprocessing
import multiprocessing.context
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.recognize import ErrorInfo, PageItem, PageWork, prepare_page
from pipeline.settings import RunSettings
from pipeline.templates import Template

log = logging.getLogger(__name__)

PREFETCH = 4  # pages handed to each worker ahead of the one it is reading
_HAS_IN_ORDER = "in_order" in inspect.signature(DataLoader.__init__).parameters


class PageDataset(Dataset[tuple[int, PageWork]]):
    """Map-style dataset: item ``i`` is ``(i, prepare_page(items[i]))`` (the index lets the
    main process put pages that arrive out of order back in order, see :func:`iter_works`)."""

    def __init__(self, items: Sequence[PageItem], templates: Sequence[Template],
                 settings: RunSettings) -> None:
        """Keep what workers need (all picklable)."""
        self.items = list(items)
        self.templates = list(templates)
        self.settings = settings

    def __len__(self) -> int:
        """Number of pages."""
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, PageWork]:
        """Prepare one page (runs inside a worker process)."""
        return index, prepare_page(self.items[index], self.templates, self.settings)


def _keep(x: Any) -> Any:
    # Module-level (picklable) identity collate: records travel as they are.
    return x


def _worker_init(_worker_id: int, parent: int | None = None) -> None:
    # One thread per worker: the parallelism is the worker count, not BLAS/OpenCV threads.
    # OpenCV is already single-threaded here (set in the parent before the fork, see
    # _loader); calling cv2.setNumThreads in a forked child would tear down the parent's
    # copied thread pool and hang forever in pthread_cond_destroy.
    _die_with_parent(parent)
    torch.set_num_threads(1)


def _die_with_parent(parent: int | None) -> None:
    """Linux: SIGKILL this worker when the run process dies.

    Found by the SIGKILL bench: a worker blocked on its full result queue never noticed a
    killed parent and lived on forever, holding memory (and, before store.py dropped
    inherited locks, the output folder's lock). Elsewhere this is a no-op.
    """
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)


def available_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure_main_threads(workers: int) -> int:
    """Give the main process (the CNN) the cores the workers leave free; returns that."""
    n = max(1, available_cores() - workers)
    torch.set_num_threads(n)  # (OpenCV threads are turned off before each fork: _loader)
    return n


def _worker_context() -> multiprocessing.context.BaseContext | None:
    """``fork`` where the platform has it, else the default start method.

    Said explicitly because the default is inherited: a process that was itself started
    with ``spawn`` (the benchmark's memory run, for one) would otherwise spawn
    its page workers too, and each would import torch afresh: ~600 MB RSS and ~350 MB of
    private memory per worker instead of ~450 MB RSS mostly shared with this process,
    plus a second of start-up. Forked workers are also what the thread and parent-death
    handling here (``_loader``, ``_die_with_parent``) is written for.
    """
    if "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return None


def _warm_before_fork(templates: Sequence[Template]) -> None:
    """Import the page stages and build the templates' registration references here, so
    that every forked page worker inherits them instead of paying for them at its first
    page (~70 ms of CPU per worker and run: 2 ms per page of a 64-page run on 2 workers).
    Best effort: a template that cannot be prepared fails in the workers, per page."""
    import importlib

    from pipeline.register_code import template_ref

    for name in ("ingest", "register", "segment", "segment_boxes", "segment_string"):
        importlib.import_module(f"pipeline.{name}")

    for t in templates:
        try:
            template_ref(t)
        except Exception as exc:  # the workers will report it as the pages' error
            log.debug("template %s not prepared before the fork: %s", t.id, exc)


def _loader(items: Sequence[PageItem], templates: Sequence[Template], settings: RunSettings,
            workers: int) -> DataLoader[tuple[int, PageWork]]:
    # Items are numpy crops, not tensors: pinning happens on the stacked CNN batch instead.
    n = min(workers, len(items))
    if n > 0:
        # Before every fork: an OpenCV thread pool alive in this process (any earlier cv2
        # call, e.g. synthesizing pages in the same process) must not be used or resized
        # by the children; with 0 threads they never touch it.
        import cv2

        cv2.setNumThreads(0)
        _warm_before_fork(templates)
    # Pages are handed to whichever worker has room (in_order=False) and come back as they
    # are done: in strict order, each worker gets every n-th page, and one that drew the
    # slow pages (PNG, no reduced decoding; a bad scan) held the other idle once it was
    # PREFETCH pages ahead. iter_works restores the order. (torch < 2.6: strict order.)
    # PREFETCH 4: 2 kept the cores less busy (93.7 against 95.8 %); 8 busier (96.5 %, +0.9 %
    # pages/s) but the main process ~13 MB larger, past the 1.5 GB summed-RSS budget.
    balance: dict[str, Any] = {"in_order": False} if n > 1 and _HAS_IN_ORDER else {}
    return DataLoader(
        PageDataset(items, templates, settings), batch_size=None, shuffle=False,
        num_workers=n, collate_fn=_keep,
        worker_init_fn=functools.partial(_worker_init, parent=os.getpid()),
        multiprocessing_context=_worker_context() if n else None,
        persistent_workers=False, prefetch_factor=PREFETCH if n else None, **balance,
    )


def _worker_died(exc: RuntimeError) -> bool:
    return "DataLoader worker" in str(exc)


def iter_works(items: Sequence[PageItem], templates: Sequence[Template],
               settings: RunSettings) -> Iterator[PageWork]:
    """Prepared pages in input order (in worker processes when ``settings.workers`` > 0).

    A page that kills its worker (a decoder crash, the OOM killer) becomes an error row:
    after a worker dies, the next page in order is retried alone in a fresh worker; if that
    one dies too it is the culprit, otherwise the run goes on from there. No innocent page
    is blamed and the batch survives. (With ``workers=0`` such a crash ends the run.)
    """
    if settings.workers == 0:
        dataset = PageDataset(items, templates, settings)
        yield from (dataset[i][1] for i in range(len(dataset)))
        return
    start, suspect = 0, False
    while start < len(items):
        if suspect:
            yield _isolated(items[start], templates, settings)
            start, suspect = start + 1, False
            continue
        base = start
        done: dict[int, PageWork] = {}  # arrived ahead of their turn (at most PREFETCH * n)
        try:
            for i, work in _loader(items[base:], templates, settings, settings.workers):
                done[base + i] = work
                while start in done:
                    yield done.pop(start)
                    start += 1
        except RuntimeError as exc:
            if not _worker_died(exc):
                raise
            log.warning("a page worker died (%s); isolating %s page %d", exc,
                        items[start].source, items[start].page)
            suspect = True


def _isolated(item: PageItem, templates: Sequence[Template], settings: RunSettings) -> PageWork:
    try:
        return next(iter(_loader([item], templates, settings, 1)))[1]
    except RuntimeError as exc:
        if not _worker_died(exc):
            raise
        return PageWork(item, "error", error=ErrorInfo(
            "worker_crashed", f"{item.source} page {item.page}: the process reading it died "
            f"({exc})", "The file may be malformed or too large for memory; check it, or run "
            "with --workers 0 to see the crash."))
