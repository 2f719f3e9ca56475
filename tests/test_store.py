"""Output store: atomic commits, crash safety, supersede on --force, lock, schemas."""

from __future__ import annotations

import dataclasses
import errno
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import records, schema, store
from pipeline.errors import OutputError, OutputLockedError
from pipeline.records import ErrorRecord, PageRecord
from pipeline.store import (
    FileEntry,
    OutputStore,
    PendingCommit,
    append_part,
    read_arrow,
    read_table,
)


def _page(sha: str, page: int, run_id: str = "r") -> dict[str, object]:
    return PageRecord(
        run_id, f"{sha}.png", sha, page, "delivery", 0.9, 0, "marks", "read", 3, 0.1
    ).to_row()


def _pending(*shas: str, pages: int = 2, run_id: str = "r") -> PendingCommit:
    pc = PendingCommit()
    for sha in shas:
        pc.add(
            FileEntry(f"{sha}.png", sha, pages, 0, False),
            {"pages": [_page(sha, i, run_id) for i in range(pages)]},
        )
    return pc


def test_schemas_match_record_dataclasses() -> None:
    for name, cls in [
        ("fields", records.FieldResult),
        ("digits", records.DigitRecord),
        ("pages", records.PageRecord),
        ("errors", records.ErrorRecord),
    ]:
        assert schema.RESULT_TABLES[name].names == [f.name for f in dataclasses.fields(cls)]


def test_read_table_on_missing_output_has_typed_columns(tmp_path: Path) -> None:
    for name, sch in schema.RESULT_TABLES.items():
        df = read_table(tmp_path / "nothing", name)
        assert df.empty and list(df.columns) == sch.names
    assert read_table(tmp_path, "manifest").empty
    assert read_table(tmp_path, "corrections").empty


def test_commit_makes_rows_visible_and_version_is_recorded(tmp_path: Path) -> None:
    with OutputStore(tmp_path, "run1") as st:
        assert st.commit(_pending("aaa", "bbb")) == "run1-00001"
        assert st.commit(PendingCommit()) is None
    df = read_table(tmp_path, "pages")
    assert sorted(zip(df.file_sha256, df.page, strict=True)) == [
        ("aaa", 0),
        ("aaa", 1),
        ("bbb", 0),
        ("bbb", 1),
    ]
    assert str(df["page"].dtype) == "Int32"
    meta = pq.read_schema(tmp_path / "pages" / "part-run1-00001.parquet").metadata
    assert meta[b"formdigits.schema_version"].decode() == records.SCHEMA_VERSION
    assert set(read_table(tmp_path, "manifest").key) == {"aaa", "bbb"}
    # Only the committed file names, no temp files left behind.
    assert not list(tmp_path.rglob("*.tmp"))


def test_crash_between_parts_and_commit_leaves_nothing_visible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with OutputStore(tmp_path, "run1") as st:
        st.commit(_pending("aaa"))
    real = store._write_parquet

    def crash_on_manifest(path: Path, table: pa.Table) -> None:
        if path.parent.name == store.MANIFEST_DIR:
            raise KeyboardInterrupt  # the process dies before the commit point
        real(path, table)

    monkeypatch.setattr(store, "_write_parquet", crash_on_manifest)
    st = OutputStore(tmp_path, "run2")
    with pytest.raises(KeyboardInterrupt):
        st.commit(_pending("bbb"))
    st.close()
    monkeypatch.setattr(store, "_write_parquet", real)
    assert (tmp_path / "pages" / "part-run2-00001.parquet").exists()  # orphan on disk
    assert set(read_table(tmp_path, "pages").file_sha256) == {"aaa"}  # ...but invisible
    with OutputStore(tmp_path, "run3") as st:  # next start cleans and resumes
        assert not (tmp_path / "pages" / "part-run2-00001.parquet").exists()
        assert "bbb" not in st.committed()
        st.commit(_pending("bbb"))
    df = read_table(tmp_path, "pages")
    assert len(df) == 4 and not df.duplicated(["file_sha256", "page"]).any()


def test_reprocessing_supersedes_older_rows(tmp_path: Path) -> None:
    with OutputStore(tmp_path, "run1") as st:
        st.commit(_pending("aaa", "bbb", run_id="run1"))
    with OutputStore(tmp_path, "run2") as st:
        st.commit(_pending("aaa", pages=1, run_id="run2"))
    df = read_table(tmp_path, "pages")
    got = sorted(zip(df.file_sha256, df.page, df.run_id, strict=True))
    assert got == [("aaa", 0, "run2"), ("bbb", 0, "run1"), ("bbb", 1, "run1")]


def test_read_arrow_is_read_table_without_pandas(tmp_path: Path) -> None:
    with OutputStore(tmp_path, "run1") as st:
        st.commit(_pending("aaa", "bbb", run_id="run1"))
    with OutputStore(tmp_path, "run2") as st:
        st.commit(_pending("aaa", pages=1, run_id="run2"))
    for name in ("pages", "manifest"):
        want = read_table(tmp_path, name)
        got = read_arrow(tmp_path, name)
        assert got.num_rows == len(want) > 0
        assert got.to_pydict()["file_sha256"] == list(want.file_sha256)
    with pytest.raises(ValueError, match="corrections"):
        read_arrow(tmp_path, "corrections")  # appended tables are read with pandas only


def test_reused_file_name_keeps_both_documents(tmp_path: Path) -> None:
    # Identity is the content: a new document under a reused name hides nothing.
    with OutputStore(tmp_path, "run1") as st:
        st.commit(_pending("old", pages=1))
    pc = PendingCommit()
    pc.add(FileEntry("old.png", "new", 1, 0, False), {"pages": [_page("new", 0)]})
    with OutputStore(tmp_path, "run2") as st:
        st.commit(pc)
        assert set(st.committed()) == {"old", "new"}
    assert sorted(read_table(tmp_path, "pages").file_sha256) == ["new", "old"]


def test_committed_reports_file_errors_and_unhashable_files(tmp_path: Path) -> None:
    pc = PendingCommit()
    err = ErrorRecord("r", "gone.png", None, None, "input", "cannot read", "").to_row()
    pc.add(FileEntry("gone.png", None, 0, 1, True), {"errors": [err]})
    with OutputStore(tmp_path, "r") as st:
        st.commit(pc)
        done = st.committed()
    assert done["path:gone.png"].file_error
    errs = read_table(tmp_path, "errors")
    assert len(errs) == 1 and errs.page.isna().all() and errs.file_sha256.isna().all()


def test_second_run_on_same_output_is_refused(tmp_path: Path) -> None:
    with OutputStore(tmp_path, "run1"), pytest.raises(OutputLockedError):
        OutputStore(tmp_path, "run2")
    OutputStore(tmp_path, "run3").close()  # free again once the first run closed


def test_disk_full_is_output_error_and_keeps_earlier_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with OutputStore(tmp_path, "run1") as st:
        st.commit(_pending("aaa"))

    def full(*_a: object, **_k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", full)
    with OutputStore(tmp_path, "run2") as st, pytest.raises(OutputError, match="No space"):
        st.commit(_pending("bbb"))
    monkeypatch.undo()
    assert set(read_table(tmp_path, "pages").file_sha256) == {"aaa"}
    assert not list(tmp_path.rglob("*.tmp"))


def test_append_part_for_corrections(tmp_path: Path) -> None:
    t = pa.table({"field": ["zip"], "value": ["12345"]})
    append_part(tmp_path, "corrections", t)
    append_part(tmp_path, "corrections", t)
    assert list(read_table(tmp_path, "corrections").value) == ["12345", "12345"]
    with pytest.raises(ValueError):
        append_part(tmp_path, "fields", t)


def test_unwritable_output_folder_is_output_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError):
        OutputStore(blocker / "out", "r")


def test_resuming_a_run_does_not_import_pandas(tmp_path: Path) -> None:
    """Opening an output folder and listing what it holds stays in Arrow: pandas would
    add ~40 MB to the run process and, through fork, to every page worker."""
    import subprocess
    import sys

    with OutputStore(tmp_path, "run1") as st:
        st.commit(_pending("aaa", "bbb", run_id="run1"))
    code = (
        "import sys\nfrom pathlib import Path\nimport pipeline.run\n"
        "from pipeline.store import OutputStore\n"
        f"with OutputStore(Path({str(tmp_path)!r}), 'run2') as st:\n"
        "    done = st.committed()\n"
        "assert sorted(done) == ['aaa', 'bbb'], done\n"
        "assert 'pandas' not in sys.modules, 'pandas was imported'\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=False, timeout=120)
    assert p.returncode == 0, p.stderr


def test_a_run_leaves_pandas_out_of_its_process(tmp_path: Path) -> None:
    """A run writes its tables without pyarrow importing pandas (~42 MB of RSS in the run
    process); afterwards pandas still works with pyarrow both ways. In a fresh interpreter:
    this test process has pandas already."""
    import subprocess
    import sys

    code = f"""
import sys
from pathlib import Path
from typing import Any
from pipeline.run import process
from pipeline.settings import RunSettings
from pipeline.store import read_table
scans = sorted(Path("sample_scans").glob("*.png"))[:2]
summary = process(scans, Path({str(tmp_path / "out")!r}), RunSettings(workers=0))
assert summary.pages == 2, summary
assert "pandas" not in sys.modules, "the run imported pandas"
fields = read_table({str(tmp_path / "out")!r}, "fields")
import pandas as pd, pyarrow as pa
assert len(fields) > 0 and "pandas" in sys.modules
t = pa.Table.from_pandas(pd.DataFrame({{"x": [1, 2], "y": ["a", None]}}))
assert t.num_rows == 2 and t.column("y").null_count == 1
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parent.parent, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


def test_records_and_dict_rows_commit_the_same_tables(tmp_path: Path) -> None:
    """The committer hands the store its records, written column by column; dict rows (and
    a mix) give the same tables, list and binary columns included."""
    field = records.FieldResult(
        "r", "a.png", "a" * 64, 0, "delivery", "zip_code", "boxes", "12345", "12845", 0.91,
        "needs_review", ("low_confidence",), True, ("12845", "12340"), (0.05, 0.01), 5,
        "digitnet-1.0", 0.02)
    digit = records.DigitRecord("r", "a.png", "a" * 64, 0, "zip_code", 2, 10, 20, 30, 40, 3,
                                0.7, (3, 8, 5), (0.7, 0.2, 0.05), b"\x89PNG-bytes")
    error = ErrorRecord("r", "b.png", "b" * 64, None, "corrupt_file", "bad", "re-scan")
    page = PageRecord("r", "a.png", "a" * 64, 0, "delivery", 0.9, 0, "marks", "read", 1, 0.1)
    tables: dict[str, dict[str, pa.Table]] = {}
    for how in ("records", "dicts", "mixed"):
        out = tmp_path / how
        pc = PendingCommit()
        rows: dict[str, list[Any]] = {"fields": [field], "digits": [digit],
                                      "errors": [error], "pages": [page]}
        if how != "records":
            rows = {k: [r.to_row() for r in v] if how == "dicts" or k == "digits" else v
                    for k, v in rows.items()}
        pc.add(FileEntry("a.png", "a" * 64, 1, 1, False), rows)
        with OutputStore(out, "r") as st:
            st.commit(pc)
        tables[how] = {name: read_arrow(out, name) for name in schema.RESULT_TABLES}
    for name in schema.RESULT_TABLES:
        assert tables["records"][name].num_rows == 1
        assert tables["records"][name].equals(tables["dicts"][name], check_metadata=True)
        assert tables["records"][name].equals(tables["mixed"][name], check_metadata=True)
    assert tables["records"]["digits"].column("top3_digits").to_pylist() == [[3, 8, 5]]
    # Crops (all different) are stored plain, the other columns with a dictionary.
    part = next((tmp_path / "records" / "digits").glob("*.parquet"))
    chunk = pq.ParquetFile(part).metadata.row_group(0)
    encodings = {chunk.column(i).path_in_schema: chunk.column(i).encodings
                 for i in range(chunk.num_columns)}
    assert "RLE_DICTIONARY" not in encodings["crop_png"]
    assert "RLE_DICTIONARY" in encodings["field"]
