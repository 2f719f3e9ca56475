"""The output folder: Parquet tables, an atomic commit log, resume, and a run lock.

Layout of ``OUT`` (see docs/SCHEMA.md)::

    OUT/.formdigits-output      marker: ingest never reads an output folder as input
    OUT/.lock                   fcntl lock held by the running ``formdigits run``
    OUT/settings.json           resolved settings of the latest run
    OUT/runs/<run_id>.json      one summary per run
    OUT/manifest/part-<commit>.parquet   commit log: one row per input file per commit
    OUT/{fields,digits,pages,errors}/part-<commit>.parquet   result rows of that commit
    OUT/corrections/part-*.parquet       appended by review (no commit log needed)

Every part file is written to a hidden ``.tmp`` file in its folder, fsynced, then renamed
(``os.replace``) into place. A commit's result parts are written first and its manifest
part last, so a file's rows become visible only once its manifest row exists: a crash in
between leaves orphan parts that readers ignore and the next run deletes. Readers keep,
per input file (its content hash), only the rows of the latest commit, which makes
``--force`` reprocessing supersede older rows instead of duplicating them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import operator
import os
import secrets
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import OutputError, OutputLockedError
from pipeline.ingest import OUTPUT_MARKER
from pipeline.schema import MANIFEST, RESULT_TABLES, with_version
from pipeline.settings import RunSettings

if TYPE_CHECKING:  # pandas only for reading tables back: a run never imports it
    import pandas as pd

def keep_pandas_out() -> None:
    """Let pyarrow build tables in this process without importing pandas.

    pyarrow's first ``pa.array`` (every table a run writes starts there) imports pandas only
    to learn whether the data might be a pandas object: ~42 MB of RSS in the run process and
    ~0.3 s of CPU, for rows that are plain Python values. Here pyarrow makes that probe
    once with pandas' import refused, and remembers "no pandas". Code that does use pandas
    with pyarrow (``to_pandas``, ``from_pandas``) imports it itself and works as before.
    No-op once pandas is imported.
    """
    import sys

    if "pandas" in sys.modules:
        return

    class _Refuse:
        def find_spec(self, name: str, path: object = None, target: object = None) -> None:
            if name == "pandas" or name.startswith("pandas."):
                raise ImportError("pandas is kept out of the run process (see keep_pandas_out)")

    refuse = _Refuse()
    sys.meta_path.insert(0, refuse)
    try:
        pa.array([0])  # the probe
    finally:
        sys.meta_path.remove(refuse)


MANIFEST_DIR = "manifest"
PART_PREFIX = "part-"
_PART_SUFFIX = ".parquet"


# fds of run locks held by this process. A forked child (a DataLoader worker) shares the
# lock's open file description, so flock stays held while ANY child lives: when the run is
# SIGKILLed (OOM killer, power button) its orphaned workers kept OUT locked, and every later
# run was refused as "in use". Children therefore drop their copy right after fork.
_LOCK_FDS: set[int] = set()


def _drop_inherited_locks() -> None:
    """In a forked child: point inherited lock fds at /dev/null (the parent keeps its lock).

    ``dup2`` rather than ``close``: the parent's file object is copied into the child too and
    will close that fd number some day; it must not close an unrelated file by then.
    """
    if not _LOCK_FDS:
        return
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        for fd in _LOCK_FDS:
            os.dup2(null, fd)
    finally:
        os.close(null)
    _LOCK_FDS.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


def new_run_id() -> str:
    """Sortable, unique run id: UTC timestamp plus a random suffix."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def file_key(file_sha256: str | None, source: str) -> str:
    """Identity of an input file in the commit log (its hash; its path if unreadable)."""
    return file_sha256 if file_sha256 else f"path:{source}"


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One input file's outcome inside a commit (a manifest row)."""

    source: str
    file_sha256: str | None
    pages: int
    errors: int
    file_error: bool

    @property
    def key(self) -> str:
        """Commit-log identity of the file."""
        return file_key(self.file_sha256, self.source)


@dataclass
class PendingCommit:
    """Rows of a group of files, buffered until they are committed together.

    A row is a record of :mod:`pipeline.records` (its fields are the table's columns) or a
    plain dict by column name.
    """

    files: list[FileEntry] = field(default_factory=list)
    rows: dict[str, list[Any]] = field(
        default_factory=lambda: {name: [] for name in RESULT_TABLES}
    )
    started: float = field(default_factory=time.monotonic)

    def add(self, entry: FileEntry, rows: Mapping[str, Iterable[Any]]) -> None:
        """Add one file and its rows (``{"fields": [...], "pages": [...], ...}``)."""
        self.files.append(entry)
        for name, items in rows.items():
            self.rows[name].extend(items)

    def n_rows(self) -> int:
        """Rows buffered over all tables (bounds memory between commits)."""
        return sum(len(v) for v in self.rows.values())


class OutputStore:
    """An output folder opened for writing by one run (holds the lock until closed)."""

    def __init__(self, out_dir: Path, run_id: str) -> None:
        """Open ``out_dir`` (created if needed), take the lock, drop uncommitted parts."""
        self.out = Path(out_dir)
        self.run_id = run_id
        self._seq = 0
        self._mutex = threading.Lock()  # commits may come from several threads (Prefect)
        self._lock_fh = None
        try:
            for sub in (*RESULT_TABLES, MANIFEST_DIR, "corrections", "runs"):
                (self.out / sub).mkdir(parents=True, exist_ok=True)
            (self.out / OUTPUT_MARKER).touch()
            self._lock_fh = open(self.out / ".lock", "a+")  # noqa: SIM115 (held for the run)
        except OSError as exc:
            raise OutputError(f"cannot create output folder {self.out}: {exc}") from exc
        try:
            fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._lock_fh.close()
            self._lock_fh = None
            raise OutputLockedError(f"output folder {self.out} is in use by another run") from exc
        _LOCK_FDS.add(self._lock_fh.fileno())
        self.cleanup_uncommitted()

    def __enter__(self) -> OutputStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the lock."""
        if self._lock_fh is not None:
            _LOCK_FDS.discard(self._lock_fh.fileno())
            fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    # ------------------------------------------------------------------ state

    def cleanup_uncommitted(self) -> int:
        """Delete temp files and result parts no commit names (left by a crash)."""
        committed = set(_manifest_table(self.out).column("commit").to_pylist())
        removed = 0
        for sub in (*RESULT_TABLES, MANIFEST_DIR):
            for p in (self.out / sub).iterdir():
                orphan = p.name.startswith(PART_PREFIX) and _commit_of(p) not in committed
                if (p.name.startswith(".") and p.name.endswith(".tmp")) or (
                    orphan and sub != MANIFEST_DIR
                ):
                    p.unlink(missing_ok=True)
                    removed += 1
        return removed

    def committed(self) -> dict[str, FileEntry]:
        """Latest committed outcome per file key (what resume uses to skip files)."""
        return {
            key: FileEntry(
                source=str(r["source"]),
                file_sha256=None if r["file_sha256"] is None else str(r["file_sha256"]),
                pages=int(r["pages"]),
                errors=int(r["errors"]),
                file_error=bool(r["file_error"]),
            )
            for key, r in _latest_per_key(_manifest_table(self.out)).items()
        }

    # ------------------------------------------------------------------ writing

    def write_settings(self, settings: RunSettings) -> None:
        """Write the resolved settings as ``OUT/settings.json``."""
        self.write_json(self.out / "settings.json", json.loads(settings.to_json()))

    def write_json(self, path: Path, data: object) -> None:
        """Atomically write ``data`` as pretty JSON."""
        payload = (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode()
        _atomic_write(path, lambda tmp: tmp.write_bytes(payload))

    def commit(self, pending: PendingCommit) -> str | None:
        """Write ``pending`` as one commit; returns its id (``None`` if it held no file)."""
        if not pending.files:
            return None
        with self._mutex:
            self._seq += 1
            commit_id = f"{self.run_id}-{self._seq:05d}"
        name = f"{PART_PREFIX}{commit_id}{_PART_SUFFIX}"
        for table, schema in RESULT_TABLES.items():
            rows = pending.rows[table]
            if rows:
                _write_parquet(self.out / table / name, _table(rows, schema))
        now = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        manifest_rows = [
            {
                "key": f.key, "source": f.source, "file_sha256": f.file_sha256,
                "run_id": self.run_id, "commit": commit_id, "committed_at": now,
                "pages": f.pages, "errors": f.errors, "file_error": f.file_error,
            }
            for f in pending.files
        ]
        # The manifest part is the commit point: written last, atomically.
        _write_parquet(
            self.out / MANIFEST_DIR / name, pa.Table.from_pylist(manifest_rows, schema=MANIFEST)
        )
        return commit_id


def append_part(out_dir: Path, table: str, data: pa.Table) -> Path:
    """Atomically add a part file to a table outside the commit log (e.g. corrections)."""
    if table in RESULT_TABLES or table == MANIFEST_DIR:
        raise ValueError(f"table '{table}' is written through OutputStore.commit")
    path = Path(out_dir) / table / f"{PART_PREFIX}{new_run_id()}{_PART_SUFFIX}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {path.parent}: {exc}") from exc
    _write_parquet(path, data)
    return path


# ---------------------------------------------------------------------- reading


def read_table(out_dir: str | Path, name: str) -> pd.DataFrame:
    """A table of ``out_dir`` as a DataFrame: committed rows only, latest per input file.

    ``name`` is one of fields, digits, pages, errors, manifest, or an appended table such as
    corrections. Missing tables give an empty frame (with typed columns when the schema is
    known). Integer columns use pandas' nullable ``Int32``.
    """
    out = Path(out_dir)
    if name != MANIFEST_DIR and name not in RESULT_TABLES:
        import pandas as pd

        parts = sorted((out / name).glob("part-*.parquet")) if (out / name).is_dir() else []
        return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True) if parts \
            else pd.DataFrame()
    return _to_pandas(read_arrow(out, name))


def read_arrow(out_dir: str | Path, name: str) -> pa.Table:
    """:func:`read_table` for the manifest and the result tables, as an Arrow table.

    For callers that run inside a command that otherwise never needs pandas (the flow's
    artifacts, a retried chunk's check): importing pandas costs ~0.4 s of CPU there.
    """
    out = Path(out_dir)
    if name == MANIFEST_DIR:
        return _manifest_table(out)
    if name not in RESULT_TABLES:
        raise ValueError(f"read_arrow reads the manifest and {sorted(RESULT_TABLES)}, "
                         f"not {name!r}")
    schema = RESULT_TABLES[name]
    manifest = _manifest_table(out)
    winners: dict[str, set[str]] = {}
    for key, r in _latest_per_key(manifest).items():
        winners.setdefault(r["commit"], set()).add(key)
    all_keys: dict[str, set[str]] = {}
    for key, commit in zip(manifest.column("key").to_pylist(),
                           manifest.column("commit").to_pylist(), strict=True):
        all_keys.setdefault(commit, set()).add(key)
    tables: list[pa.Table] = []
    for commit_id, keys in sorted(winners.items()):
        path = out / name / f"{PART_PREFIX}{commit_id}{_PART_SUFFIX}"
        if not path.exists():
            continue  # that commit had no rows for this table
        t = _read_part(path, schema)
        if keys != all_keys[commit_id]:  # some files of this commit were reprocessed later
            sha = t.column("file_sha256").to_pylist()
            src = t.column("source").to_pylist()
            mask = [file_key(h, s) in keys for h, s in zip(sha, src, strict=True)]
            t = t.filter(pa.array(mask, pa.bool_()))
        tables.append(t)
    return pa.concat_tables(tables) if tables else pa.Table.from_batches([], schema=schema)


def _read_parts(paths: list[Path], schema: pa.Schema) -> pa.Table:
    if not paths:
        return pa.Table.from_batches([], schema=schema)  # (schema.empty_table imports pandas)
    try:
        return pa.concat_tables([_read_part(p, schema) for p in paths])
    except (OSError, pa.ArrowException) as exc:
        raise OutputError(f"cannot read {paths[0].parent}: {exc}") from exc


def _read_part(path: Path, schema: pa.Schema) -> pa.Table:
    """One part file as ``schema``. A part in the current layout is read directly;
    only an older one goes through Arrow's dataset reader (which fills columns it
    lacks), because that reader imports pandas, which a run would rather not carry."""
    f = pq.ParquetFile(path)
    try:
        t = f.read()
    finally:
        f.close()
    if t.schema.remove_metadata().equals(schema.remove_metadata()):
        return t.replace_schema_metadata(schema.metadata)
    return pq.read_table(path, schema=schema)


def _manifest_table(out: Path) -> pa.Table:
    d = out / MANIFEST_DIR
    paths = sorted(d.glob("part-*.parquet")) if d.is_dir() else []
    return _read_parts(paths, MANIFEST)


def _latest_per_key(manifest: pa.Table) -> dict[str, dict[str, Any]]:
    """Visible manifest rows by file key: the latest commit of each file content (hash).

    Identity is the content, never the path: scanners reuse names (scan_0001.png every
    day once yesterday's files are archived), and a reused name must not hide the rows
    of a different document. Plain Arrow, no pandas: a run calls this before its page
    workers fork, and pandas would add ~40 MB to the run and to every worker.
    """
    if manifest.num_rows:
        manifest = manifest.sort_by([("committed_at", "ascending"), ("commit", "ascending")])
    return {r["key"]: r for r in manifest.to_pylist()}  # in commit order: the last one wins


def _to_pandas(t: pa.Table) -> pd.DataFrame:
    import pandas as pd

    # Nullable Int32 keeps "page" an integer even where errors have no page.
    return t.to_pandas(types_mapper={pa.int32(): pd.Int32Dtype()}.get)


def _commit_of(part: Path) -> str:
    return part.name[len(PART_PREFIX) : -len(_PART_SUFFIX)]


# ---------------------------------------------------------------------- atomic IO


def _write_parquet(path: Path, table: pa.Table) -> None:
    table = table.replace_schema_metadata(with_version(table.schema).metadata)
    # No dictionary for binary columns (the crops' PNGs, all different): Parquet built one
    # for every commit only to give it up, which took half the digits table's write time
    # (17 -> 8 ms for 64 pages) and a transient ~2x the column's size in memory.
    plain = {f.name for f in table.schema if pa.types.is_binary(f.type)}
    use_dictionary = [n for n in table.column_names if n not in plain] if plain else True
    _atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd",
                                                   use_dictionary=use_dictionary))


def _table(rows: Sequence[Any], schema: pa.Schema) -> pa.Table:
    """``rows`` (records or dicts, see :class:`PendingCommit`) as an Arrow table.

    Records go column by column (one attribute getter per row, one array per column):
    a third of the cost of making a dict of every row and letting Arrow take them apart.
    """
    if any(isinstance(r, dict) for r in rows):
        return pa.Table.from_pylist([r if isinstance(r, dict) else r.to_row() for r in rows],
                                    schema=schema)
    values = operator.attrgetter(*schema.names)
    columns = zip(*map(values, rows), strict=True) if len(schema) > 1 else \
        [[getattr(r, schema.names[0]) for r in rows]]
    return pa.Table.from_arrays([pa.array(list(c), type=f.type)
                                 for c, f in zip(columns, schema, strict=True)], schema=schema)


def _atomic_write(path: Path, write: Any) -> None:
    """Write via a hidden temp file in the same folder, fsync, rename, fsync the folder."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except (OSError, pa.ArrowException) as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc}") from exc
