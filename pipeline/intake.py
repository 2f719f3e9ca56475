"""Intake of a scan folder for the nightly flow: settled files only, each file exactly once.

Plain functions (no Prefect) used by ``flows/nightly.py``:

* :func:`snapshot` / :func:`settled` (from :mod:`pipeline.looks`) — a file whose size or
  mtime changed between two looks a short interval apart is still being copied in; it
  waits for the next run.
* :class:`StatCache` — ``OUT/intake.json`` remembers (size, mtime, ctime, inode) → sha256 of
  files already committed, so an unchanged folder is not re-hashed every night. The
  exactly-once record itself is the output store's commit log (``OUT/manifest``: one row
  per file content hash, run and commit): this cache only saves reading bytes, and a
  miss just means the file is hashed and looked up in the commit log as usual.
* :func:`chunk_items` — groups planned files into chunks of about N pages (a file's pages
  never straddle two chunks: a file is committed whole).
* :class:`ChunkStore` — commits of one chunk from a process that does not hold the run's
  lock (a Dask worker).
* :func:`archive_file` — moves a committed source under the archive folder, keeping its
  path relative to the scan folder and never overwriting anything.
* :func:`is_transient` — which failures are worth a retry (I/O hiccups, not bad input).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import FormdigitsError, OutputError, OutputLockedError
from pipeline.looks import FileStat, Snapshot, settled, snapshot
from pipeline.plan import Plan, WorkItem, plan_files
from pipeline.settings import RunSettings
from pipeline.store import FileEntry, OutputStore, read_arrow, read_table

if TYPE_CHECKING:  # a flow never needs pandas (~0.4 s of CPU to import): see read_arrow
    import pandas as pd

__all__ = ["FileStat", "Snapshot", "settled", "snapshot"]  # re-exported from looks

STAT_CACHE = "intake.json"
# errnos that will not go away by waiting: retrying them only delays the failure.
_PERMANENT_ERRNOS = frozenset({
    errno.ENOENT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR,
    errno.EEXIST, errno.EINVAL, errno.ENAMETOOLONG, errno.EXDEV,
})


# --------------------------------------------------------------------------- stat cache


class StatCache:
    """``OUT/intake.json``: stat → sha256 of files whose content is already committed."""

    def __init__(self, out_dir: Path, entries: dict[str, tuple[FileStat, str]] | None = None
                 ) -> None:
        """A cache for ``out_dir`` (use :meth:`load`)."""
        self.path = Path(out_dir) / STAT_CACHE
        self.entries: dict[str, tuple[FileStat, str]] = dict(entries or {})

    @classmethod
    def load(cls, out_dir: Path) -> StatCache:
        """Read the cache; a missing or unreadable one is empty (it is only a shortcut)."""
        cache = cls(out_dir)
        try:
            raw = json.loads(cache.path.read_text(encoding="utf-8"))
            for key, (size, mtime, ctime, ino, sha) in raw.get("files", {}).items():
                cache.entries[key] = (FileStat(size, mtime, ctime, ino), str(sha))
        except (OSError, ValueError, TypeError, AttributeError):
            cache.entries.clear()
        return cache

    def split(self, paths: Sequence[Path], committed: Mapping[str, FileEntry]
              ) -> tuple[list[Path], list[Path]]:
        """``(known_done, to_check)``: unchanged files whose hash is committed, and the rest.

        A file is ``known_done`` only when its stat matches the cached one exactly (ctime
        changes on every write, rename and chmod) and the commit log holds its hash
        without a file-level error; everything else goes through hashing and planning.
        """
        done: list[Path] = []
        rest: list[Path] = []
        for p in paths:
            hit = self.entries.get(_cache_key(p))
            entry = committed.get(hit[1]) if hit is not None else None
            ok = entry is not None and not entry.file_error and FileStat.of(p) == hit[0]  # type: ignore[index]
            (done if ok else rest).append(p)
        return done, rest

    def remember(self, path: Path, sha: str) -> None:
        """Record ``path`` (stat taken now) as having content ``sha``."""
        st = FileStat.of(path)
        if st is not None:
            self.entries[_cache_key(path)] = (st, sha)

    def prune(self, keep: Iterable[Path]) -> None:
        """Forget files no longer in the folder (keeps the cache the folder's size)."""
        alive = {_cache_key(p) for p in keep}
        self.entries = {k: v for k, v in self.entries.items() if k in alive}

    def save(self, store: OutputStore) -> None:
        """Write atomically through the (locked) output store."""
        files = {k: [s.size, s.mtime_ns, s.ctime_ns, s.inode, sha]
                 for k, (s, sha) in sorted(self.entries.items())}
        store.write_json(self.path, {"version": 1, "files": files})


def _cache_key(path: Path) -> str:
    return os.path.abspath(path)


# --------------------------------------------------------------------------- manifest


def processed_files(out_dir: Path) -> pd.DataFrame:
    """Which content was processed in which run: the commit log, latest row per file hash.

    Columns: key, source, file_sha256, run_id, commit, committed_at, pages, errors,
    file_error (see docs/SCHEMA.md, ``manifest``).
    """
    m = read_table(out_dir, "manifest")
    if m.empty:
        return m
    m = m.sort_values(["committed_at", "commit"], kind="stable")
    return m.drop_duplicates("key", keep="last").reset_index(drop=True)


def committed_in_run(out_dir: Path, run_id: str) -> set[str]:
    """File keys committed by ``run_id`` (a retried chunk skips them: no file twice)."""
    m = read_arrow(out_dir, "manifest").to_pydict()
    return {k for k, r in zip(m["key"], m["run_id"], strict=True) if r == run_id}


def drop_failed_unchanged(plan: Plan, committed: Mapping[str, FileEntry]) -> Plan:
    """Skip files whose exact content already failed as a whole (corrupt, unsupported, …).

    ``plan_files`` retries such files on every run, which suits a person re-running
    ``formdigits run`` after fixing something; a nightly run would only add the same error
    row again each night. The same bytes fail the same way, so the flow retries a file
    only when its content changes (a new hash) or with ``force``. Files that could not
    even be hashed (key ``path:…``, e.g. a read error) are still retried.
    """
    keep: list[WorkItem] = []
    skipped = list(plan.skipped)
    for item in plan.items:
        done = committed.get(item.file_sha256) if item.file_sha256 else None
        if done is not None and done.file_error:
            skipped.append(item.source)
        else:
            keep.append(item)
    return Plan(tuple(keep), tuple(skipped))


# --------------------------------------------------------------------------- chunks


@dataclass
class Selection:
    """What one nightly run reads: the plan, and what it leaves alone and why."""

    plan: Plan
    known: list[Path]  # unchanged files whose content the stat cache knows is committed
    changing: list[Path]  # still being copied: the next run takes them
    cache: StatCache
    all: list[Path]  # every file of the first look
    failed: list[str]  # sources whose last commit was a file-level error, unchanged since
    waited: float  # seconds slept for the settle interval


def select_files(first: Snapshot, out_dir: Path, settings: RunSettings,
                 settle_seconds: float, committed: Mapping[str, FileEntry],
                 exclude: Sequence[Path]) -> Selection:
    """Skip known-done files, wait out the settle interval, plan the settled new ones.

    Pure reading: the flow's ``select`` task calls it under the run's lock.
    """
    cache = StatCache.load(out_dir)
    paths = list(first.stats)
    known, rest = ([], paths) if settings.force else cache.split(paths, committed)
    todo = Snapshot({p: first.stats[p] for p in rest}, first.taken)
    t0 = time.perf_counter()
    stable, changing = settled(todo, settle_seconds)
    waited = time.perf_counter() - t0
    plan_ = plan_files(stable, settings, {} if settings.force else dict(committed), exclude)
    failed: list[str] = []
    if not settings.force:
        kept = drop_failed_unchanged(plan_, committed)
        failed = sorted({w.source for w in plan_.items} - {w.source for w in kept.items})
        plan_ = kept
    return Selection(plan_, known, changing, cache, paths, failed, waited)


def chunk_items(items: Sequence[WorkItem], pages_per_chunk: int) -> list[tuple[WorkItem, ...]]:
    """Consecutive groups of about ``pages_per_chunk`` pages, whole files only.

    Unreadable files (0 pages, an error row each) ride along with the next chunk; a file
    with more pages than the chunk size forms a chunk of its own.
    """
    if pages_per_chunk < 1:
        raise ValueError("pages_per_chunk must be >= 1")
    chunks: list[tuple[WorkItem, ...]] = []
    current: list[WorkItem] = []
    pages = 0
    for item in items:
        n = item.pages if item.error is None else 0
        if current and pages + n > pages_per_chunk and pages > 0:
            chunks.append(tuple(current))
            current, pages = [], 0
        current.append(item)
        pages += n
    if current:
        chunks.append(tuple(current))
    return chunks


class ChunkStore(OutputStore):
    """Commits of one chunk, written by a process that does not hold the run's lock.

    The flow process holds ``OUT/.lock`` for the whole run; a Dask worker writes its
    chunk's part files beside it. So this store takes no lock and deletes nothing on open
    (another chunk may be between its result parts and its manifest part), and its commit
    ids live in their own range: ``<run_id>-<writer * 10**6 + n>``, with ``writer`` unique
    per chunk attempt. Rows and manifest entries still carry the run's own ``run_id``.
    """

    def __init__(self, out_dir: Path, run_id: str, writer: int) -> None:
        # Deliberately not calling OutputStore.__init__: no lock, no clean-up.
        if writer < 1:
            raise ValueError("writer must be >= 1 (0 is the locked store's range)")
        self.out = Path(out_dir)
        self.run_id = run_id
        self._seq = writer * 1_000_000
        self._mutex = threading.Lock()
        self._lock_fh = None


# --------------------------------------------------------------------------- archive


def archive_file(src: Path, input_root: Path, archive_dir: Path) -> Path:
    """Move ``src`` to ``archive_dir/<path relative to input_root>``; returns where it went.

    Never overwrites: when the name is taken, ``name.1.ext``, ``name.2.ext``, … is used.
    The move is a hard link plus unlink on one filesystem (atomic, fails if the target
    exists) and an exclusive-create copy plus fsync plus unlink across filesystems.
    """
    rel = Path(os.path.relpath(os.path.abspath(src), os.path.abspath(input_root)))
    if rel.parts and rel.parts[0] == os.pardir:
        rel = Path(src.name)  # outside the scan folder: keep just the name
    target = Path(archive_dir) / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    for n in range(10_000):
        dest = target if n == 0 else target.with_name(f"{target.stem}.{n}{target.suffix}")
        try:
            _move_no_overwrite(src, dest)
        except FileExistsError:
            continue
        return dest
    raise OutputError(f"cannot archive {src}: 10000 names under {target.parent} are taken")


def _move_no_overwrite(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
            raise
        with open(src, "rb") as fin, open(dest, "xb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        shutil.copystat(src, dest)
    os.unlink(src)


# --------------------------------------------------------------------------- retries


def is_transient(exc: BaseException) -> bool:
    """True for I/O failures that may pass on retry (not bad input, not a held lock).

    An ``OSError`` anywhere in the cause chain counts unless its errno is permanent
    (missing file, permission, read-only filesystem, …). Every other formdigits error
    (bad settings, broken model, a locked output folder) and every bug is not retried.
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OutputLockedError):
            return False
        if isinstance(cur, OSError):
            return cur.errno not in _PERMANENT_ERRNOS
        if isinstance(cur, FormdigitsError) and not isinstance(cur, OutputError):
            return False
        cur = cur.__cause__ or cur.__context__
    return False


# --------------------------------------------------------------------------- process state

# Runs open in this process, by run id (the flow's locked store and model; see
# flows/nightly.py). Chunk tasks of another process (a Dask worker) find nothing here.
OPEN_RUNS: dict[str, Any] = {}
# First looks taken before the flow started (by scan folder), see flows.nightly.run_once.
EARLY_LOOKS: dict[str, Snapshot] = {}

_MODELS: dict[tuple[str, str, str, str, str, int], object] = {}
_MODELS_LOCK = threading.Lock()


def cached_predictor(model: str, device: str = "auto", batch_size: int = 256,
                     second: str = "auto") -> object:
    """The reader for ``model`` (with its ``second`` opinion, see models.second_opinion),
    loaded once per process (keyed by paths + file sha256s).

    A Dask worker runs many chunk tasks: loading the weights per task would cost more than
    a small chunk. Replacing a weights file changes its hash, so the next task loads it.
    """
    from models.second_opinion import load_reader, second_weights
    from models.weights import file_sha256, resolve_weights

    path = resolve_weights(model)
    other = second_weights(second, path)
    other_key = (str(other), file_sha256(other)) if other else (second, "")
    key = (os.path.abspath(path), file_sha256(path), *other_key, device, batch_size)
    with _MODELS_LOCK:
        hit = _MODELS.get(key)
        if hit is None:
            hit = load_reader(path, second, device=device, batch_size=batch_size)
            _MODELS[key] = hit
    return hit
