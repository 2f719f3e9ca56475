"""Recognition loop: worker processes prepare pages, the main process batches the CNN.

:func:`prepare_page` does decode → register → segment (inside the DataLoader workers of
:mod:`pipeline.page_workers`) and hands back a small picklable :class:`PageWork` (28x28
crops plus registration facts, or the error that stopped the page; a bad file never raises
out of a worker). The main process pools crops ACROSS pages into exact batches of
``settings.batch_size`` for the predictor, then assembles the pages whose crops are all
read, a few at a time (:data:`ASSEMBLE_PAGES`, so the line readers work in batches), and
emits their records in input order, so memory stays flat however many pages there are.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from pipeline.assemble_pages import PageOutcome, assemble_pages
from pipeline.errors import FormdigitsError, RegistrationError
from pipeline.pieces import piece_scorer, score_pages
from pipeline.records import (
    FieldCrop,
    FieldLine,
    RegisteredPage,
    pack_crops,
    pickled_by_fields,
    unpack_crops,
)
from pipeline.settings import RunSettings
from pipeline.templates import Template

log = logging.getLogger(__name__)

# Pages read by the CNN are assembled ASSEMBLE_PAGES at a time, so that their pieces, string
# lines and boxed-field lines are read in one batch each (pipeline.assemble_pages): on one
# thread the line readers take 1.2 / 1.7 ms per line in a batch of 4 against 2.4 / 3.8 ms
# alone. In the 2-worker run, assembly took 6.6 / 5.7 / 5.4 ms of CPU per page in groups
# of 4 / 8 / 16 (three interleaved runs each), but with 16 the cores were less busy
# (94-95 % against 96 %: the page workers wait while the run process assembles) and the
# run slower in each of three more pairs. (GRU batches sum in another order by batch
# size: a field's confidence may move by ~2e-7 with its group; no value, status or reason
# did.)
ASSEMBLE_PAGES = 8


class ProbaModel(Protocol):
    """What recognition needs from ``models.predictor.Predictor``."""

    model_version: str

    def predict_tensor(self, pixels: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities ``(N, 10)`` for uint8 crops ``(N, 28, 28)``."""
        ...


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class PageItem:
    """One page to read: the file, its identity, and the page index."""

    path: str
    source: str
    file_sha256: str
    page: int


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """Why a page could not be read (becomes an ``errors`` row)."""

    error_type: str
    message: str
    hint: str


@dataclass(frozen=True, slots=True)
class PageWork:
    """What a worker sends back for one page (picklable, a few KiB)."""

    item: PageItem
    status: str  # read | unregistered | error
    template_id: str | None = None
    registration_score: float = 0.0
    orientation: int = 0
    method: str | None = None
    crops: tuple[FieldCrop, ...] = ()
    lines: tuple[FieldLine, ...] = ()  # string fields whole, for the string reader
    error: ErrorInfo | None = None
    timings: dict[str, float] = field(default_factory=dict)
    debug_reg: RegisteredPage | None = None  # only with --debug: the picture needs the page

    def nonempty(self) -> list[FieldCrop]:
        """Crops the CNN must read (empty boxes are not sent to the model)."""
        return [c for c in self.crops if not c.empty]

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as its fields, the crops packed (pipeline.records.pack_crops): it crosses
        # from a page worker to the run process once per page.
        values = [getattr(self, name) for name in _PAGE_WORK_FIELDS]
        values[_CROPS] = pack_crops(self.crops)
        return _page_work, tuple(values)


_PAGE_WORK_FIELDS = tuple(f.name for f in fields(PageWork))
_CROPS = _PAGE_WORK_FIELDS.index("crops")


def _page_work(*values: Any) -> PageWork:
    """A PageWork from :meth:`PageWork.__reduce__`'s values."""
    unpacked = list(values)
    unpacked[_CROPS] = unpack_crops(values[_CROPS])
    return PageWork(*unpacked)


def prepare_page(item: PageItem, templates: Sequence[Template], settings: RunSettings) -> PageWork:
    """Decode, register and segment one page; every failure becomes ``PageWork.error``."""
    from pipeline.ingest import load_page
    from pipeline.register import register_page
    from pipeline.segment import read_regions, segment_fields

    timings: dict[str, float] = {}
    stage = "decode"
    t0 = time.perf_counter()
    try:
        min_dpi, long_mm = decode_hint(templates)
        page = load_page(Path(item.path), item.page, settings.limits, settings.pdf_dpi,
                         source=item.source, sha256=item.file_sha256, min_dpi=min_dpi,
                         long_mm=long_mm)
        timings["decode"] = _lap(t0)
        stage, t0 = "register", time.perf_counter()
        # Only the field regions are warped, unless a debug picture wants the whole page.
        reg = register_page(page, templates, settings.min_registration_score,
                            None if settings.debug_dir else read_regions)
        timings["register"] = _lap(t0)
        stage, t0 = "segment", time.perf_counter()
        template = next(t for t in templates if t.id == reg.template_id)
        crops, lines = segment_fields(reg, template)
        timings["segment"] = _lap(t0)
    except RegistrationError as exc:
        timings[stage] = _lap(t0)
        return PageWork(item, "unregistered", error=error_info(exc), timings=timings)
    except Exception as exc:  # a worker must never die on one bad page
        timings[stage] = _lap(t0)
        return PageWork(item, "error", error=error_info(exc, stage), timings=timings)
    return PageWork(
        item, "read", template_id=reg.template_id, registration_score=float(reg.score),
        orientation=int(reg.orientation), method=reg.method, crops=tuple(crops),
        lines=tuple(lines), timings=timings,
        debug_reg=reg if settings.debug_dir else None,
    )


def debug_picture(debug_dir: str, work: PageWork, template: Template,
                  outcome: PageOutcome) -> None:
    """Write the ``--debug`` picture of a read page (best effort: warns on failure)."""
    if work.debug_reg is None:
        return
    from pipeline.debug import write_debug

    path = Path(debug_dir) / debug_file_name(work.item.source, work.item.page)
    try:
        write_debug(path, work.debug_reg, template, work.crops,
                    {f.field: f.value or "" for f in outcome.fields})
    except Exception as exc:  # a debug picture must never cost the page its reading
        log.warning("debug picture for %s page %d failed: %s", work.item.source,
                    work.item.page, exc)


def debug_file_name(source: str, page: int) -> str:
    """A safe, unique file name for the debug picture of ``source`` page ``page``.

    Derived from an input path the user does not control: only word characters, ``.``
    and ``-`` survive (no separators, so nothing lands outside the debug folder; no
    control characters), a leading dot is dropped (no hidden files), the readable part is
    capped so the name stays under the 255-byte limit of file systems, and a hash of the
    full source keeps ``a/b.png`` and ``a__b.png`` from overwriting each other.
    """
    readable = re.sub(r"[^\w.-]+", "_", source.replace("\\", "/").strip("/")).lstrip("._")
    while len(readable.encode()) > 120:  # bytes, not characters: non-ASCII names count more
        readable = readable[1:]
    digest = hashlib.sha1(source.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{readable or 'page'}-{digest}.p{page:03d}.png"


def error_info(exc: BaseException, stage: str = "") -> ErrorInfo:
    """An exception as error-row facts (unknown exceptions are reported as ``internal``)."""
    if isinstance(exc, FormdigitsError):
        return ErrorInfo(exc.code, str(exc), exc.hint)
    where = f" during {stage}" if stage else ""
    return ErrorInfo(
        "internal", f"{type(exc).__name__}{where}: {exc}",
        "This is a formdigits bug; please report it with the file if you can share it.",
    )


def decode_hint(templates: Sequence[Template]) -> tuple[float | None, float | None]:
    """``(min_dpi, long_mm)`` for :func:`pipeline.ingest.load_page`: registration works at
    ``WORK_DPI``, so a JPEG scanned at twice that is decoded at half size."""
    from pipeline.register import longest_side_mm
    from pipeline.templates import WORK_DPI

    return (WORK_DPI, longest_side_mm(templates)) if templates else (None, None)


def _lap(t0: float) -> float:
    return time.perf_counter() - t0


@dataclass
class _Slot:
    work: PageWork
    probs: np.ndarray
    todo: int
    cnn_seconds: float = 0.0


def _score_pieces(slots: Sequence[_Slot], scorer: Callable[[np.ndarray], np.ndarray] | None
                  ) -> None:
    """The piece verifier's ``single`` for the pieces of a group of pages about to be
    assembled, read in one batch (:func:`pipeline.pieces.score_pages`); each page is
    charged an equal share of the time."""
    todo = [s for s in slots if any(c.piece is not None for c in s.work.crops)]
    if not todo:
        return
    t0 = time.perf_counter()
    scored = score_pages([s.work.crops for s in todo], scorer)
    share = (time.perf_counter() - t0) / len(todo)
    for slot, crops in zip(todo, scored, strict=True):
        # (the crops' order and emptiness are unchanged: the CNN rows still align)
        slot.work = dataclasses.replace(slot.work, crops=tuple(crops))
        slot.work.timings["pieces"] = share


def recognize(
    works: Iterable[PageWork], predictor: ProbaModel, templates: Sequence[Template],
    settings: RunSettings, run_id: str,
    on_batch: Callable[[int, float], None] | None = None,
) -> Iterator[PageOutcome]:
    """Read every crop with the CNN in cross-page batches; yield pages in input order.

    The piece verifier reads the pieces of each group of pages just before the group is
    assembled (the split choice is the first to need its answers), in one batch.
    """
    by_id = {t.id: t for t in templates}
    bs = settings.batch_size
    scorer = piece_scorer(settings.piece_model)
    pending: deque[_Slot] = deque()
    queue: deque[tuple[_Slot, int, np.ndarray]] = deque()
    done: list[_Slot] = []  # read by the CNN, waiting to be assembled together

    def run_batch(n: int) -> None:
        batch = [queue.popleft() for _ in range(n)]
        t = torch.from_numpy(np.stack([px for _, _, px in batch]))
        device = getattr(predictor, "device", None)
        if isinstance(device, torch.device) and device.type == "cuda":
            t = t.pin_memory()  # page-locked host memory: faster, asynchronous H2D copy
        t0 = time.perf_counter()
        probs = predictor.predict_tensor(t)
        probs_np = probs.detach().cpu().numpy() if isinstance(probs, torch.Tensor) \
            else np.asarray(probs)
        dt = time.perf_counter() - t0
        for (slot, row, _), p in zip(batch, probs_np, strict=True):
            slot.probs[row] = p
            slot.todo -= 1
            slot.cnn_seconds += dt / n
        if on_batch is not None:
            on_batch(n, dt)

    def ready(final: bool = False) -> Iterator[PageOutcome]:
        while pending and pending[0].todo == 0:
            done.append(pending.popleft())
        if done and (final or len(done) >= ASSEMBLE_PAGES):
            _score_pieces(done, scorer)
            outs = assemble_pages([(s.work, s.probs, s.cnn_seconds) for s in done], by_id,
                                  settings, run_id, predictor.model_version)
            for s, out in zip(done, outs, strict=True):
                if settings.debug_dir and s.work.template_id in by_id:
                    debug_picture(settings.debug_dir, s.work, by_id[s.work.template_id], out)
                yield out
            done.clear()

    for work in works:
        crops = work.nonempty()
        slot = _Slot(work, np.zeros((len(crops), 10), np.float32), len(crops))
        pending.append(slot)
        queue.extend((slot, i, c.pixels) for i, c in enumerate(crops))
        while len(queue) >= bs:
            run_batch(bs)
        yield from ready()
    while queue:
        run_batch(min(bs, len(queue)))
    yield from ready(final=True)
