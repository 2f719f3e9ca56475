"""Intake of the nightly flow: settling, stat cache, chunks, chunk store, archive, retries."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from pipeline import intake
from pipeline.errors import CorruptFileError, OutputError, OutputLockedError
from pipeline.plan import Plan, WorkItem
from pipeline.recognize import ErrorInfo
from pipeline.store import FileEntry, OutputStore, PendingCommit, read_table


def _item(name: str, pages: int, *, error: bool = False, sha: str | None = None) -> WorkItem:
    err = ErrorInfo("corrupt_file", "bad", "rescan") if error else None
    return WorkItem(Path(name), name, sha or f"sha-{name}", 0 if error else pages, err)


# --------------------------------------------------------------------------- settling


def test_settled_waits_out_a_growing_file(tmp_path: Path) -> None:
    done, growing, empty = tmp_path / "done.png", tmp_path / "growing.png", tmp_path / "e.png"
    done.write_bytes(b"x" * 100)
    growing.write_bytes(b"y" * 10)
    empty.write_bytes(b"")
    first = intake.snapshot([done, growing, empty])
    slept: list[float] = []

    def copy_goes_on(seconds: float) -> None:  # the copy writes more while we wait
        slept.append(seconds)
        with open(growing, "ab") as fh:
            fh.write(b"y" * 10)

    ok, changing = intake.settled(first, 5.0, sleep=copy_goes_on)
    assert ok == [done]
    assert sorted(changing) == sorted([growing, empty])  # empty = copy not started yet
    assert len(slept) == 1 and 4.0 < slept[0] <= 5.0


def test_settled_sleeps_only_what_is_missing(tmp_path: Path) -> None:
    f = tmp_path / "a.png"
    f.write_bytes(b"abc")
    first = intake.snapshot([f])
    slept: list[float] = []
    ok, changing = intake.settled(first, 0.0, sleep=slept.append)
    assert (ok, changing, slept) == ([f], [], [])
    ok, _ = intake.settled(first, 0.2)  # real clock: returns after ~0.2 s
    assert ok == [f]


def test_settled_forgets_vanished_files(tmp_path: Path) -> None:
    f = tmp_path / "gone.png"
    f.write_bytes(b"abc")
    first = intake.snapshot([f])
    f.unlink()
    assert intake.settled(first, 0.0) == ([], [])


# --------------------------------------------------------------------------- stat cache


def _entry(sha: str, file_error: bool = False) -> FileEntry:
    return FileEntry(f"src-{sha}", sha, 1, 0, file_error)


def test_stat_cache_skips_only_unchanged_committed_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    a, b, c = (tmp_path / n for n in ("a.png", "b.png", "c.png"))
    for p in (a, b, c):
        p.write_bytes(p.name.encode())
    with OutputStore(out, "r1") as store:
        cache = intake.StatCache.load(out)
        assert cache.entries == {}
        cache.remember(a, "sha-a")
        cache.remember(b, "sha-b")
        cache.remember(c, "sha-c")
        cache.save(store)
    cache = intake.StatCache.load(out)
    committed = {"sha-a": _entry("sha-a"), "sha-b": _entry("sha-b")}  # c never committed
    b.write_bytes(b"changed content")
    done, rest = cache.split([a, b, c], committed)
    assert done == [a] and rest == [b, c]
    moved = tmp_path / "renamed.png"
    a.rename(moved)  # a rename is a new path: hashed (and then found in the commit log)
    done, rest = cache.split([moved], committed)
    assert done == [] and rest == [moved]
    cache.prune([moved])
    assert cache.entries == {}


def test_stat_cache_survives_garbage(tmp_path: Path) -> None:
    (tmp_path / intake.STAT_CACHE).write_text("{not json")
    assert intake.StatCache.load(tmp_path).entries == {}
    (tmp_path / intake.STAT_CACHE).write_text('{"files": {"x": [1, 2]}}')
    assert intake.StatCache.load(tmp_path).entries == {}


def test_drop_failed_unchanged() -> None:
    plan = Plan((_item("ok", 2), _item("bad", 0, error=True), _item("new", 1)), ("dup",))
    committed = {"sha-bad": _entry("sha-bad", file_error=True), "sha-x": _entry("sha-x")}
    out = intake.drop_failed_unchanged(plan, committed)
    assert [w.source for w in out.items] == ["ok", "new"]
    assert out.skipped == ("dup", "bad")


# --------------------------------------------------------------------------- chunks


def test_chunk_items_keeps_files_whole() -> None:
    items = [_item("a", 3), _item("b", 3), _item("bad", 0, error=True), _item("c", 10),
             _item("d", 1), _item("e", 2)]
    chunks = intake.chunk_items(items, 6)
    assert [[w.source for w in c] for c in chunks] == [
        ["a", "b", "bad"], ["c"], ["d", "e"]]
    assert [w.source for c in chunks for w in c] == [w.source for w in items]
    assert intake.chunk_items([], 5) == []
    with pytest.raises(ValueError):
        intake.chunk_items(items, 0)


# --------------------------------------------------------------------------- chunk store


def _pending(sha: str, run_id: str) -> PendingCommit:
    p = PendingCommit()
    p.add(FileEntry(f"/in/{sha}.png", sha, 1, 1, False), {"errors": [{
        "run_id": run_id, "source": f"/in/{sha}.png", "file_sha256": sha, "page": 0,
        "error_type": "unregistered_page", "message": "m", "hint": "h"}]})
    return p


def test_chunk_store_commits_beside_the_locked_store(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with OutputStore(out, "run1") as main:
        main.commit(_pending("aaa", "run1"))
        w1 = intake.ChunkStore(out, "run1", writer=101)
        w2 = intake.ChunkStore(out, "run1", writer=201)
        ids = [w1.commit(_pending("bbb", "run1")), w2.commit(_pending("ccc", "run1")),
               w1.commit(_pending("ddd", "run1"))]
        assert len(set(ids)) == 3 and all(i and i.startswith("run1-") for i in ids)
        assert intake.committed_in_run(out, "run1") == {"aaa", "bbb", "ccc", "ddd"}
        assert intake.committed_in_run(out, "other") == set()
    errors = read_table(out, "errors")
    assert sorted(errors.file_sha256) == ["aaa", "bbb", "ccc", "ddd"]
    assert set(errors.run_id) == {"run1"}
    m = intake.processed_files(out)
    assert sorted(m.key) == ["aaa", "bbb", "ccc", "ddd"] and set(m.run_id) == {"run1"}
    with pytest.raises(ValueError):
        intake.ChunkStore(out, "run1", writer=0)


# --------------------------------------------------------------------------- archive


def test_archive_keeps_relative_path_and_never_overwrites(tmp_path: Path) -> None:
    inbox, arch = tmp_path / "in", tmp_path / "archive"
    (inbox / "office" / "b").mkdir(parents=True)
    src = inbox / "office" / "b" / "scan.png"
    src.write_bytes(b"first")
    dest = intake.archive_file(src, inbox, arch)
    assert dest == arch / "office" / "b" / "scan.png" and dest.read_bytes() == b"first"
    assert not src.exists()
    src.write_bytes(b"second")  # same name arrives again: both kept
    dest2 = intake.archive_file(src, inbox, arch)
    assert dest2 == arch / "office" / "b" / "scan.1.png"
    assert dest.read_bytes() == b"first" and dest2.read_bytes() == b"second"
    outside = tmp_path / "elsewhere.tif"
    outside.write_bytes(b"x")
    assert intake.archive_file(outside, inbox, arch) == arch / "elsewhere.tif"


def test_archive_across_filesystems_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    def no_link(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    src = tmp_path / "in" / "a.pdf"
    src.parent.mkdir()
    src.write_bytes(b"%PDF-1.4 data")
    (tmp_path / "arch").mkdir()
    (tmp_path / "arch" / "a.pdf").write_bytes(b"older")
    dest = intake.archive_file(src, tmp_path / "in", tmp_path / "arch")
    assert dest.name == "a.1.pdf" and dest.read_bytes() == b"%PDF-1.4 data"
    assert (tmp_path / "arch" / "a.pdf").read_bytes() == b"older" and not src.exists()


# --------------------------------------------------------------------------- retries


def _chained(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as got:
        return got


@pytest.mark.parametrize(("exc", "expected"), [
    (OSError(errno.EIO, "I/O error"), True),
    (TimeoutError(errno.ETIMEDOUT, "timed out"), True),
    (OSError(errno.ESTALE, "stale NFS handle"), True),
    (OSError(errno.ENOENT, "missing"), False),
    (PermissionError(errno.EACCES, "denied"), False),
    (ValueError("bug"), False),
    (CorruptFileError("bad file"), False),
])
def test_is_transient(exc: BaseException, expected: bool) -> None:
    assert intake.is_transient(exc) is expected


def test_is_transient_follows_the_cause() -> None:
    assert intake.is_transient(_chained(OutputError("cannot write"), OSError(errno.EIO, "io")))
    assert not intake.is_transient(_chained(OutputError("cannot write"),
                                            OSError(errno.EROFS, "read-only")))
    assert not intake.is_transient(_chained(OutputLockedError("in use"),
                                            BlockingIOError(errno.EAGAIN, "locked")))
    assert not intake.is_transient(OutputError("no cause"))


# --------------------------------------------------------------------------- model cache


def test_predictor_loaded_once_per_weights_content(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from models.predictor import Predictor

    loads: list[str] = []

    def fake_load(path: object, device: str = "auto", batch_size: int = 256) -> object:
        loads.append(str(path))
        return object()

    monkeypatch.setattr(Predictor, "load", staticmethod(fake_load))
    monkeypatch.setattr(intake, "_MODELS", {})
    w = tmp_path / "w.safetensors"
    w.write_bytes(b"weights v1")
    a = intake.cached_predictor(str(w), "cpu", 64)
    b = intake.cached_predictor(str(w), "cpu", 64)
    assert a is b and len(loads) == 1
    w.write_bytes(b"weights v2")  # replaced weights: new hash, loaded again
    c = intake.cached_predictor(str(w), "cpu", 64)
    assert c is not a and len(loads) == 2
