"""Planning a run: which files to read, which are already done, how many pages each has.

Runs in the main process before any worker starts: discover inputs, hash them, skip
what the output folder has already committed (unless ``force``), count pages from the
headers. A file that cannot even be opened here becomes a planned *file error*, so it
still ends up as an ``errors`` row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import FormdigitsError
from pipeline.ingest import count_pages, discover, file_sha256
from pipeline.recognize import ErrorInfo, PageItem, error_info
from pipeline.settings import RunSettings
from pipeline.store import FileEntry, file_key


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One input file to process (or the reason it cannot be)."""

    path: Path
    source: str
    file_sha256: str | None
    pages: int
    error: ErrorInfo | None = None

    @property
    def key(self) -> str:
        """Commit-log identity (see ``store.file_key``)."""
        return file_key(self.file_sha256, self.source)

    def page_items(self) -> list[PageItem]:
        """The pages to hand to recognition (none for a file error)."""
        if self.error is not None or self.file_sha256 is None:
            return []
        return [PageItem(str(self.path), self.source, self.file_sha256, i)
                for i in range(self.pages)]


@dataclass(frozen=True, slots=True)
class Plan:
    """The files of a run, in input order."""

    items: tuple[WorkItem, ...]
    skipped: tuple[str, ...]  # sources already committed (or duplicates in this run)

    @property
    def total_pages(self) -> int:
        """Pages that recognition will read."""
        return sum(w.pages for w in self.items if w.error is None)


def plan_files(
    inputs: Sequence[Path], settings: RunSettings, committed: dict[str, FileEntry],
    exclude: Sequence[Path] = (),
) -> Plan:
    """Discover inputs and decide, per file, whether and how much to read.

    ``committed`` is the output folder's latest outcome per file key; files committed
    without a file-level error are skipped unless ``settings.force``. Files with the same
    content as an earlier file of this run are skipped as duplicates.
    """
    items: list[WorkItem] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for path in discover(inputs, exclude=exclude):
        source = str(path)
        try:
            sha = file_sha256(path)
        except FormdigitsError as exc:
            items.append(WorkItem(path, source, None, 0, error_info(exc)))
            continue
        done = committed.get(sha)
        if sha in seen or (done is not None and not done.file_error and not settings.force):
            skipped.append(source)
            continue
        seen.add(sha)
        items.append(_count(path, source, sha, settings))
    return Plan(tuple(items), tuple(skipped))


def _count(path: Path, source: str, sha: str, settings: RunSettings) -> WorkItem:
    try:
        return WorkItem(path, source, sha, count_pages(path, settings.limits))
    except Exception as exc:  # any failure to open the file is that file's error row
        return WorkItem(path, source, sha, 0, error_info(exc, "page count"))
