"""Two looks at a scan folder: a file still being copied in waits for the next run.

Split from :mod:`pipeline.intake` so that it imports nothing heavy: the nightly command
takes the first look the moment it starts, before torch and Prefect are imported, and the
settle interval then passes while they load instead of being slept afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class FileStat:
    """What two looks at a file compare (and what the stat cache keys on)."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> FileStat | None:
        """The file's stat now (``None`` if it vanished or cannot be stat-ed)."""
        try:
            st = path.stat()
        except OSError:
            return None
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The first look: per file its stat, and when the look was taken."""

    stats: Mapping[Path, FileStat | None]
    taken: float  # time.monotonic()


def snapshot(paths: Iterable[Path]) -> Snapshot:
    """Take the first look at ``paths``."""
    return Snapshot({p: FileStat.of(p) for p in paths}, time.monotonic())


def settled(
    first: Snapshot, interval_s: float, sleep: Callable[[float], None] = time.sleep,
) -> tuple[list[Path], list[Path]]:
    """Second look, at least ``interval_s`` after the first: ``(settled, still_changing)``.

    A file counts as settled when size, mtime and inode are unchanged and it is not
    empty-and-new (an empty file is usually a copy that has not started). Only the time
    still missing since the first look is slept, so work done in between is free.
    """
    wait = interval_s - (time.monotonic() - first.taken)
    if wait > 0 and first.stats:
        sleep(wait)
    ok: list[Path] = []
    changing: list[Path] = []
    for path, before in first.stats.items():
        now = FileStat.of(path)
        if now is None:
            continue  # vanished (moved away by someone else): nothing to do with it
        same = before is not None and (before.size, before.mtime_ns, before.inode) == (
            now.size, now.mtime_ns, now.inode)
        (ok if same and now.size > 0 else changing).append(path)
    return ok, changing


def first_look(input_dir: Path, out_dir: Path, archive_dir: Path | None = None) -> Snapshot:
    """The nightly flow's first look at a scan folder (its output and archive excluded)."""
    from pipeline.ingest import discover

    exclude = [Path(out_dir)] + ([Path(archive_dir)] if archive_dir else [])
    return snapshot(discover([Path(input_dir)], exclude=exclude))
