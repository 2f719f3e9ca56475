"""Whole pages' rows from their crops and CNN probabilities, several pages at a time.

:func:`assemble_pages` drafts every field of a group of pages (:func:`pipeline.assemble.
draft_field`), reads the group's string lines and then the boxed-field lines its drafts
ask about in one batch per reader, and finishes the fields into ``FieldResult`` /
``DigitRecord`` / ``PageRecord`` / ``ErrorRecord`` rows. A page that fails becomes its own
error row; the group goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from pipeline.assemble import FieldDraft, box_line_wanted, draft_field, finish_field
from pipeline.lines import line_reader, read_lines
from pipeline.records import DigitRecord, ErrorRecord, FieldResult, PageRecord
from pipeline.settings import RunSettings
from pipeline.templates import Template

if TYPE_CHECKING:
    from pipeline.recognize import PageWork

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PageOutcome:
    """All rows produced by one page, plus its stage timings (seconds)."""

    source: str
    file_sha256: str
    page: int
    record: PageRecord
    fields: tuple[FieldResult, ...]
    digits: tuple[DigitRecord, ...]
    errors: tuple[ErrorRecord, ...]
    timings: dict[str, float]


def assemble_pages(
    pages: Sequence[tuple[PageWork, np.ndarray, float]], templates: Mapping[str, Template],
    settings: RunSettings, run_id: str, model_version: str,
) -> list[PageOutcome]:
    """All rows of several pages, in order: ``(work, probs, cnn_seconds)`` each, where
    ``probs`` rows align with ``work.nonempty()`` and ``cnn_seconds`` is the page's share
    of the CNN time.

    The pages' string lines, and then the boxed-field lines their decisions ask about, are
    each read in one batch: on one CPU thread the line readers cost 2-3x less per line in
    a batch of four than one at a time. A page that fails becomes its own error row.
    """
    t0 = time.perf_counter()
    boxes = line_reader(settings.box_model, "boxnet")
    works = read_string_lines([w for w, _, _ in pages], line_reader(settings.string_model))
    lines_s = time.perf_counter() - t0
    drafts: list[list[FieldDraft] | ErrorRecord | None] = []
    spent = []
    for (_, probs, _), work in zip(pages, works, strict=True):
        t1 = time.perf_counter()
        drafts.append(_draft_page(work, probs, templates, settings, run_id))
        spent.append(time.perf_counter() - t1)
    t1 = time.perf_counter()
    drafts = _read_box_lines(drafts, boxes)
    lines_s += time.perf_counter() - t1
    outcomes = []
    for (_, _, cnn_s), work, drafted, own in zip(pages, works, drafts, spent, strict=True):
        t1 = time.perf_counter()
        timings = {**work.timings, "cnn": cnn_s, "lines": lines_s / len(pages)}
        outcomes.append(_page_outcome(work, drafted, timings, boxes, run_id,
                                      model_version, own, t1))
    return outcomes


def read_string_lines(works: Sequence[PageWork],
                      reader: Callable[[np.ndarray], np.ndarray] | None) -> list[PageWork]:
    """``works`` with every string line read by the string ``reader``, in one batch."""
    lines = [ln for w in works for ln in w.lines]
    if reader is None or not any(ln.reader == "string" for ln in lines):
        return list(works)
    read = iter(read_lines(lines, reader))
    return [replace(w, lines=tuple(next(read) for _ in w.lines)) if w.lines else w
            for w in works]


def _draft_page(work: PageWork, probs: np.ndarray, templates: Mapping[str, Template],
                settings: RunSettings, run_id: str) -> list[FieldDraft] | ErrorRecord | None:
    """The page's field drafts; an error row when it cannot be read; None when it has no
    fields to read (its own error, or an unregistered page)."""
    template = templates.get(work.template_id or "")
    if work.status != "read" or template is None:
        return None
    full = np.zeros((len(work.crops), 10), np.float32)
    full[[i for i, c in enumerate(work.crops) if not c.empty]] = probs
    lines = {ln.field: ln for ln in work.lines}
    try:
        return [draft_field(ff, [c for c in work.crops if c.field == ff.name],
                            full[[i for i, c in enumerate(work.crops) if c.field == ff.name]],
                            settings, lines.get(ff.name))
                for ff in template.fields]
    except Exception as exc:  # one bad page must not stop the batch
        return _bug(work, run_id, exc)


def _read_box_lines(drafts: list[list[FieldDraft] | ErrorRecord | None],
                    reader: Callable[[np.ndarray], np.ndarray] | None
                    ) -> list[list[FieldDraft] | ErrorRecord | None]:
    """The drafts with the boxed-field lines their decisions ask about read in one batch
    (left unread, to be read one by one, if the batch fails)."""
    asked = [(i, j) for i, page in enumerate(drafts) if isinstance(page, list)
             for j, d in enumerate(page) if reader is not None
             and box_line_wanted(d.decision, d.line)]
    if not asked or reader is None:
        return drafts
    try:
        read = read_lines([drafts[i][j].line for i, j in asked],  # type: ignore[index,misc]
                          reader, "boxes")
    except Exception as exc:  # pragma: no cover - each field then reads its own line
        log.warning("batched boxed-field read failed (%s); reading fields one by one", exc)
        return drafts
    out = [list(page) if isinstance(page, list) else page for page in drafts]
    for (i, j), line in zip(asked, read, strict=True):
        page = out[i]
        assert isinstance(page, list)
        page[j] = replace(page[j], line=line)
    return out


def _page_outcome(work: PageWork, drafted: list[FieldDraft] | ErrorRecord | None,
                  timings: dict[str, float],
                  box_reader: Callable[[np.ndarray], np.ndarray] | None, run_id: str,
                  model_version: str, own: float, t0: float) -> PageOutcome:
    """The page's rows from its drafts (``own``: seconds already spent drafting it)."""
    fields: list[FieldResult] = []
    digits: list[DigitRecord] = []
    errors: list[ErrorRecord] = []
    status = work.status
    if isinstance(drafted, list):
        per_field = sum(timings.values()) / max(1, len(drafted))
        try:
            for draft in drafted:
                res, digs = finish_field(work, draft, run_id, model_version, per_field,
                                         box_reader)
                fields.append(res)
                digits.extend(digs)
        except Exception as exc:  # one bad page must not stop the batch
            fields, digits, status = [], [], "error"
            errors.append(_bug(work, run_id, exc))
    elif isinstance(drafted, ErrorRecord):
        status = "error"
        errors.append(drafted)
    elif work.error is not None:
        errors.append(_error(work, run_id, work.error.error_type, work.error.message,
                             work.error.hint))
    else:  # registered to a template this run does not know: cannot happen unless a bug
        status = "error"
        errors.append(_error(work, run_id, "internal",
                             f"page registered to unknown template '{work.template_id}'",
                             "This is a formdigits bug; please report it."))
    timings["assemble"] = own + time.perf_counter() - t0
    record = PageRecord(
        run_id=run_id, source=work.item.source, file_sha256=work.item.file_sha256,
        page=work.item.page, template_id=work.template_id,
        registration_score=float(work.registration_score), orientation=int(work.orientation),
        method=work.method, status=status, n_fields=len(fields),
        seconds=float(sum(timings.values())),
    )
    return PageOutcome(work.item.source, work.item.file_sha256, work.item.page, record,
                       tuple(fields), tuple(digits), tuple(errors), timings)


def _bug(work: PageWork, run_id: str, exc: Exception) -> ErrorRecord:
    return _error(work, run_id, "internal", f"{type(exc).__name__} while reading fields: {exc}",
                  "This is a formdigits bug; please report it.")


def _error(work: PageWork, run_id: str, error_type: str, message: str, hint: str) -> ErrorRecord:
    return ErrorRecord(run_id=run_id, source=work.item.source,
                       file_sha256=work.item.file_sha256, page=work.item.page,
                       error_type=error_type, message=message, hint=hint)
