"""Read the pages of a plan ahead, in the background, before anyone asks for them.

The nightly flow needs its Prefect API before its first task runs; the ephemeral one takes
a few seconds to start. Meanwhile the pages it is about to read can already be decoded,
registered and segmented by the DataLoader workers (:func:`pipeline.recognize.iter_works`).
Nothing is committed here: a :class:`Prefetch` only holds prepared pages, and the chunk
that commits them takes them only if its own plan, made under the run's lock, asks for
exactly the same pages of exactly the same file contents (:meth:`Prefetch.take`);
otherwise they are thrown away and read again.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from pipeline.looks import Snapshot
from pipeline.plan import WorkItem
from pipeline.recognize import PageWork, iter_works
from pipeline.settings import RunSettings
from pipeline.templates import Template

# Pages held at most (~60-100 KB each): the workers wait when the flow is slow to start.
MAX_AHEAD = 256
_END = object()


@dataclass(frozen=True)
class _Failed:
    exc: BaseException


def _key(items: Sequence[WorkItem]) -> tuple[tuple[str, str | None, int], ...]:
    return tuple((w.source, w.file_sha256, w.pages) for w in items if w.error is None)


class Prefetch:
    """Prepared pages of ``items`` (readable ones, in order), produced by a thread."""

    def __init__(self, items: Sequence[WorkItem], templates: Sequence[Template],
                 settings: RunSettings, ahead: int = MAX_AHEAD) -> None:
        """Start reading now (the DataLoader workers fork from the prefetch thread)."""
        self.key = _key(items)
        pages = [p for w in items if w.error is None for p in w.page_items()]
        self._q: queue.Queue[object] = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._taken = False
        self._thread = threading.Thread(target=self._run, args=(pages, templates, settings),
                                        name="formdigits-prefetch", daemon=True)
        self._thread.start()

    def _put(self, x: object) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, pages: list[Any], templates: Sequence[Template], settings: RunSettings) -> None:
        works = iter_works(pages, templates, settings)
        try:
            for w in works:
                if not self._put(w):
                    break
        except BaseException as exc:  # handed to the consumer, raised in its thread
            self._put(_Failed(exc))
        finally:
            works.close()  # stops the DataLoader workers if we left early
            self._put(_END)

    def take(self, items: Sequence[WorkItem]) -> Iterator[PageWork] | None:
        """The prepared pages if ``items`` are exactly the prefetched plan, else None
        (and the prefetch is stopped). Can be taken once."""
        if self._taken or _key(items) != self.key:
            self.close()
            return None
        self._taken = True
        return self._drain()

    def _drain(self) -> Iterator[PageWork]:
        try:
            while True:
                x = self._q.get()
                if x is _END:
                    return
                if isinstance(x, _Failed):
                    raise x.exc
                yield cast(PageWork, x)
        finally:
            self.close()

    def close(self) -> None:
        """Stop reading and let the workers go (idempotent)."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._q.get(timeout=0.05)
            except queue.Empty:
                continue
        self._thread.join()


def read_key(out_dir: Path) -> str:
    """Key of ``intake.EARLY_READS``: the output folder, resolved."""
    return str(Path(out_dir).resolve())


def read_ahead(out_dir: Path, settings: RunSettings, looked: Snapshot, settle_seconds: float,
               chunk_pages: int) -> None:
    """Plan as the flow's ``select`` will and start preparing the first chunk's pages.

    Called while the Prefect API starts (before Prefect is even imported, by the CLI).
    Registers the :class:`Prefetch` in ``intake.EARLY_READS``; does nothing when one is
    registered already, when nothing is new, or with ``workers=0`` (the reading would
    share this process's CPU with Prefect's start-up instead of overlapping it). Never
    raises: it is only a head start, the flow plans, reads and reports for real.
    """
    from pipeline import intake
    from pipeline.recognize import configure_main_threads, piece_scorer
    from pipeline.store import committed_files
    from pipeline.templates import load_templates

    key = read_key(out_dir)
    if settings.workers == 0 or key in intake.EARLY_READS:
        return
    try:
        exclude = [Path(out_dir)] + ([Path(settings.debug_dir)] if settings.debug_dir else [])
        sel = intake.select_files(looked, Path(out_dir), settings, settle_seconds,
                                  committed_files(Path(out_dir)), exclude)
        chunks = intake.chunk_items(sel.plan.items, chunk_pages)
        if not chunks:
            return
        templates = load_templates(settings.templates)
        piece_scorer(settings.piece_model)  # loaded before the workers fork, as begin() does
        configure_main_threads(settings.workers)
    except Exception:
        return
    intake.EARLY_READS[key] = Prefetch(chunks[0], templates, settings)
