"""The nightly Prefect flow: exactly-once files, retries, artifacts, Dask, the schedule.

Registration, segmentation and the CNN are the deterministic fakes of ``tests/test_run.py``
(also installed inside Dask workers by a worker plugin), so these tests check the
orchestration; ``test_real_sample_scans`` runs the real stages when the shipped model and
``sample_scans/`` exist. All flows report to one ``prefect_test_harness`` API per session.
"""

from __future__ import annotations

import errno
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from distributed.diagnostics.plugin import WorkerPlugin

from flows import cli_flow, nightly
from pipeline import intake
from pipeline.errors import FormdigitsError, UsageError
from pipeline.run import process
from pipeline.settings import RunSettings
from pipeline.store import read_table
from tests.test_run import FakePredictor, _png, fake_register, fake_segment_fields

SETTINGS: dict[str, Any] = {"templates": ["delivery"], "workers": 0, "batch_size": 16}
SETTLE = 0.2
VOLATILE = {"run_id", "seconds"}  # differ between any two runs by design
TABLES = ("fields", "digits", "pages", "errors")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """One temporary Prefect API (SQLite) for the whole test session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


pytestmark = pytest.mark.usefixtures("prefect_api")


def install_fakes() -> None:
    """Replace register/segment/model by the fakes (in this process)."""
    import pipeline.register
    import pipeline.segment

    patches = [(pipeline.register, "register_page", fake_register),
               (pipeline.segment, "segment_fields", fake_segment_fields),
               (intake, "cached_predictor", lambda *a, **k: FakePredictor())]
    for module, name, value in patches:
        setattr(module, name, value)


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pipeline.register.register_page", fake_register)
    monkeypatch.setattr("pipeline.segment.segment_fields", fake_segment_fields)
    monkeypatch.setattr(intake, "cached_predictor", lambda *a, **k: FakePredictor())


@pytest.fixture
def scans(tmp_path: Path) -> Path:
    """Seven small pages (one unregistered), one corrupt file, in a folder tree."""
    import numpy as np
    from PIL import Image

    d = tmp_path / "scans"
    (d / "office" / "b").mkdir(parents=True)
    for i in range(4):
        _png(d / f"p{i}.png", corner=255 - i)
    _png(d / "office" / "b" / "q.png", corner=240)
    frames = [Image.fromarray(np.full((30, 20), v, np.uint8)) for v in (255, 0, 254)]
    frames[0].save(d / "office" / "multi.tif", save_all=True, append_images=frames[1:])
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return d


def run_flow(scans: Path, out: Path, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"settings": SETTINGS, "settle_seconds": SETTLE, "chunk_pages": 2}
    return nightly.process_scan_folder(str(scans), str(out), **{**args, **kw})


def artifact(key: str) -> Any:
    """The latest artifact with ``key`` (sync API)."""
    from prefect.artifacts import Artifact

    got = Artifact.get(key)
    assert got is not None and not hasattr(got, "__await__")
    return got


def contents(out: Path, table: str) -> pd.DataFrame:
    """A table without run ids and timings, in a stable row order."""
    df = read_table(out, table)
    df = df.drop(columns=[c for c in df.columns if c in VOLATILE])
    df = df.map(lambda v: tuple(v) if hasattr(v, "__len__") and not isinstance(v, (str, bytes))
                else v)
    return df.sort_values(list(df.columns)).reset_index(drop=True)


def assert_same_tables(a: Path, b: Path) -> None:
    for t in TABLES:
        pd.testing.assert_frame_equal(contents(a, t), contents(b, t), check_dtype=True)


def test_flow_writes_what_run_writes_then_does_nothing(fakes: None, scans: Path,
                                                       tmp_path: Path) -> None:
    r = run_flow(scans, tmp_path / "flow")
    assert (r["files"], r["pages"], r["errors"], r["new_files"]) == (7, 8, 2, 7)
    ref = process([scans], tmp_path / "run", RunSettings.model_validate(SETTINGS),
                  predictor=FakePredictor())
    assert (ref.files, ref.pages, ref.errors) == (7, 8, 2)
    assert_same_tables(tmp_path / "flow", tmp_path / "run")
    md = artifact(nightly.FLOW_NAME)
    assert r["run_id"] in str(md.data) and "| 7 | 8 |" in str(md.data)

    again = run_flow(scans, tmp_path / "flow")
    assert (again["new_files"], again["files"], again["pages"]) == (0, 0, 0)
    assert again["known_files"] + again["skipped_files"] == 7
    md = artifact(nightly.FLOW_NAME)
    assert "Nothing new to process" in str(md.data)
    assert_same_tables(tmp_path / "flow", tmp_path / "run")  # nothing added


def test_review_table_artifact_lists_lowest_confidence_first(fakes: None, scans: Path,
                                                            tmp_path: Path) -> None:
    r = run_flow(scans, tmp_path / "out")
    rows = nightly.lowest_confidence_reviews(tmp_path / "out", r["run_id"], limit=5)
    fields = read_table(tmp_path / "out", "fields")
    review = fields[fields.status == "needs_review"].sort_values("confidence")
    assert len(rows) == 5 and r["needs_review"] == len(review) > 5
    assert [x["confidence"] for x in rows] == [round(c, 4) for c in review.confidence[:5]]
    table = artifact(f"{nightly.FLOW_NAME}-review")
    assert table.type == "table" and "confidence" in str(table.data)


def test_new_renamed_and_copied_files(fakes: None, scans: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = run_flow(scans, out)
    (scans / "p1.png").rename(scans / "renamed.png")
    shutil.copy(scans / "p2.png", scans / "copy-a.png")
    shutil.copy(scans / "p2.png", scans / "office" / "copy-b.png")
    _png(scans / "late.png", corner=200)
    second = run_flow(scans, out)
    assert (second["new_files"], second["pages"]) == (1, 1)
    m = intake.processed_files(out)
    runs = dict(zip(m.source.map(lambda s: Path(s).name), m.run_id, strict=True))
    assert runs["late.png"] == second["run_id"]
    assert runs["p1.png"] == runs["p2.png"] == first["run_id"]
    assert "renamed.png" not in runs and "copy-a.png" not in runs
    pages = read_table(out, "pages")
    assert not pages.duplicated(["file_sha256", "page"]).any()  # no page read twice
    third = run_flow(scans, out)
    # all but the corrupt file come from the stat cache (it is hashed again, then skipped)
    assert (third["new_files"], third["known_files"], third["skipped_files"]) == (0, 9, 1)


def test_file_still_being_copied_waits_for_next_run(fakes: None, scans: Path,
                                                    tmp_path: Path) -> None:
    growing = scans / "incoming.png"
    payload = (scans / "p0.png").read_bytes()
    stop = threading.Event()
    growing.write_bytes(payload[:10])

    def copier() -> None:  # a slow copy: a few bytes every 20 ms, until the flow has finished
        n = 10
        while not stop.is_set():
            n = n + 8 if n + 8 < len(payload) else 10  # never completes while the flow looks
            growing.write_bytes(payload[:n])
            time.sleep(0.02)

    t = threading.Thread(target=copier)
    t.start()
    try:
        r = run_flow(scans, tmp_path / "out", settle_seconds=0.5)
    finally:
        stop.set()
        t.join()
    assert r["waiting"] == [str(growing)] and r["new_files"] == 7
    growing.write_bytes(payload[:-1] + b"\x01")  # the finished copy (a different page)
    r2 = run_flow(scans, tmp_path / "out")
    assert (r2["new_files"], r2["waiting_files"]) == (1, 0)


def test_settle_interval_runs_from_the_commands_first_look(fakes: None, scans: Path,
                                                          tmp_path: Path) -> None:
    """``formdigits flow`` looks at the folder before loading torch and Prefect; the flow's
    second look then needs no sleep when the interval has already passed meanwhile."""
    out = tmp_path / "out"
    from pipeline.looks import first_look

    looked = first_look(scans, out)
    assert looked.stats and all(out not in q.parents for q in looked.stats)
    earlier = intake.Snapshot(looked.stats, looked.taken - 60.0)  # taken a minute ago
    t0 = time.monotonic()
    r = nightly.run_once(scans, out, SETTINGS, looked=earlier, settle_seconds=30.0)
    assert time.monotonic() - t0 < 30.0  # the 30 s interval was not slept again
    assert (r["new_files"], r["waiting_files"]) == (7, 0)


def test_corrupt_file_is_an_error_row_and_the_run_succeeds(fakes: None, scans: Path,
                                                           tmp_path: Path) -> None:
    state = nightly.process_scan_folder(str(scans), str(tmp_path / "out"), settings=SETTINGS,
                                        settle_seconds=SETTLE, return_state=True)
    assert state.is_completed()
    errors = read_table(tmp_path / "out", "errors")
    bad = errors[errors.source.str.endswith("broken.png")]
    assert list(bad.error_type) == ["corrupt_file"] and bad.page.isna().all()
    r2 = run_flow(scans, tmp_path / "out")  # the same bytes are not retried every night
    assert r2["new_files"] == 0 and r2["errors"] == 0


def test_archive_after_commit(fakes: None, scans: Path, tmp_path: Path) -> None:
    arch = tmp_path / "archive"
    r = run_flow(scans, tmp_path / "out", archive_dir=str(arch))
    assert r["archived"] == 6
    assert (arch / "office" / "b" / "q.png").is_file() and (arch / "p0.png").is_file()
    left = sorted(p.name for p in scans.rglob("*") if p.is_file())
    assert left == ["broken.png"]  # failed as a whole: stays for a person to look at
    _png(scans / "p0.png", corner=255)  # the same content arrives again
    r2 = run_flow(scans, tmp_path / "out", archive_dir=str(arch))
    assert (r2["new_files"], r2["archived"]) == (0, 1)
    assert (arch / "p0.1.png").is_file() and (arch / "p0.png").is_file()


def test_transient_io_error_is_retried_without_repeating_files(
    fakes: None, scans: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = nightly.process_chunk
    calls: list[int] = []

    def flaky(ctx: Any, items: Any, progress: Any = None) -> Any:
        calls.append(len(items))
        if len(calls) == 1:  # first file committed, then the disk hiccups
            real(ctx, items[:1])
            raise OSError(errno.EIO, "Input/output error")
        return real(ctx, items)

    monkeypatch.setattr(nightly, "process_chunk", flaky)
    monkeypatch.setattr(nightly.read_chunk, "retry_delay_seconds", [0.1])
    r = run_flow(scans, tmp_path / "out", chunk_pages=100)
    assert calls[0] == 7 and calls[1] == 6  # the retry skipped the committed file
    m = read_table(tmp_path / "out", "manifest")
    assert len(m) == 7 and m.key.is_unique and set(m.run_id) == {r["run_id"]}


def test_bug_in_a_chunk_fails_the_run_but_not_the_other_chunks(
    fakes: None, scans: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = nightly.process_chunk

    def buggy(ctx: Any, items: Any, progress: Any = None) -> Any:
        if any(w.source.endswith("p1.png") for w in items):
            raise ValueError("a bug")
        return real(ctx, items)

    monkeypatch.setattr(nightly, "process_chunk", buggy)
    with pytest.raises(FormdigitsError, match="1 chunk"):
        run_flow(scans, tmp_path / "out")
    done = intake.processed_files(tmp_path / "out")
    assert len(done) == 5  # chunk (p0, p1) not committed, not retried (not transient)
    monkeypatch.setattr(nightly, "process_chunk", real)
    r = run_flow(scans, tmp_path / "out")
    assert r["new_files"] == 2 and len(intake.processed_files(tmp_path / "out")) == 7


def test_retry_condition_only_for_transient_errors() -> None:
    from prefect.states import Failed

    def cond(exc: BaseException) -> bool:
        return nightly.retry_if_transient(nightly.read_chunk, None, Failed(data=exc))  # type: ignore[arg-type]

    assert cond(OSError(errno.EIO, "io")) and cond(TimeoutError(errno.ETIMEDOUT, "t"))
    assert not cond(ValueError("bug")) and not cond(PermissionError(errno.EACCES, "no"))


def test_flow_module_does_not_import_pandas() -> None:
    """The flow reads its tables as Arrow: pandas would add ~0.4 s of CPU to its start."""
    import subprocess
    import sys

    code = "import sys, flows.nightly\nassert 'pandas' not in sys.modules, 'pandas imported'\n"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=False, timeout=120)
    assert p.returncode == 0, p.stderr


def test_ephemeral_server_env_saves_start_up_but_user_settings_win() -> None:
    env = cli_flow.ephemeral_server_env({"HOME": "/x"})
    assert env["PREFECT_API_BLOCKS_REGISTER_ON_START"] == "false"
    assert env["PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION"] == "false"
    assert env["PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED"] == "false"
    assert env["HOME"] == "/x" and env["PREFECT__SERVER_EPHEMERAL"] == "1"
    mine = cli_flow.ephemeral_server_env({"PREFECT_API_BLOCKS_REGISTER_ON_START": "true",
                                          "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "1"})
    assert mine["PREFECT_API_BLOCKS_REGISTER_ON_START"] == "true"
    assert "PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION" not in mine  # registering: memo helps
    assert mine["PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED"] == "1"


def test_cli_flow_command(fakes: None, scans: Path, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    argv = ["flow", "--input", str(scans), "--out", str(tmp_path / "out"), "-t", "delivery",
            "--workers", "0", "--settle-seconds", "0.1"]
    assert main(argv) == 0
    assert main(argv) == 0
    assert "Nothing new to process" in capsys.readouterr().err
    assert main([*argv, "--strict"]) == 0  # nothing new: no error rows in this run
    assert main(["flow", "--input", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 4


# --------------------------------------------------------------------------- schedule


def test_schedule_builder_cron_timezone_and_concurrency() -> None:
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy

    from flows.schedule import build_deployment, describe

    dep = build_deployment("/data/scans", "/data/out", cron="0 2 * * *",
                           timezone="Europe/Berlin", settings={"workers": 1})
    assert dep.name == "nightly" and dep.flow_name == nightly.FLOW_NAME
    (sched,) = dep.schedules or []
    assert sched.schedule.cron == "0 2 * * *"  # type: ignore[union-attr]
    assert sched.schedule.timezone == "Europe/Berlin"  # type: ignore[union-attr]
    assert dep.concurrency_limit == 1
    assert dep.concurrency_options is not None
    assert dep.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW
    assert dep.parameters["input_dir"] == "/data/scans"
    assert dep.parameters["settings"] == {"workers": 1}
    d = describe(dep)
    assert d["schedules"] == [{"cron": "0 2 * * *", "timezone": "Europe/Berlin",
                               "active": True}]
    assert d["collision_strategy"] == "CANCEL_NEW"
    with pytest.raises(UsageError, match="cron"):
        build_deployment("/a", "/b", cron="every night")
    with pytest.raises(UsageError, match="timezone"):
        build_deployment("/a", "/b", timezone="Mars/Olympus")


def test_schedule_dry_run_prints_the_deployment(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from flows.cli import main

    code = main(["schedule", "--input", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--cron", "30 1 * * 1-5", "--timezone", "Europe/Berlin", "--dry-run"])
    assert code == 0
    d = json.loads(capsys.readouterr().out)
    assert d["deployment"] == f"{nightly.FLOW_NAME}/nightly"
    assert d["schedules"][0] == {"cron": "30 1 * * 1-5", "timezone": "Europe/Berlin",
                                 "active": True}
    assert d["concurrency_limit"] == 1 and d["collision_strategy"] == "CANCEL_NEW"


# --------------------------------------------------------------------------- Dask


class FakeStagesPlugin(WorkerPlugin):
    """Dask worker plugin: the same fakes inside each worker process."""

    name = "formdigits-fakes"

    def setup(self, worker: object) -> None:
        install_fakes()


@pytest.mark.slow
def test_dask_local_cluster_gives_identical_tables(fakes: None, scans: Path,
                                                   tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    for i in range(6):  # a few more pages so both workers get chunks
        _png(scans / f"extra{i}.png", corner=100 + i)
    local = run_flow(scans, tmp_path / "local")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.register_plugin(FakeStagesPlugin())
        r = run_flow(scans, tmp_path / "dask", dask_address=cluster.scheduler_address)
        workers_used = client.run(lambda: True)
    assert len(workers_used) == 2
    assert (r["files"], r["pages"], r["errors"]) == (local["files"], local["pages"],
                                                     local["errors"])
    assert_same_tables(tmp_path / "local", tmp_path / "dask")
    m = read_table(tmp_path / "dask", "manifest")
    assert m.key.is_unique and m.commit.nunique() >= 2  # chunks committed separately


# --------------------------------------------------------------------------- real stages


@pytest.mark.slow
def test_real_sample_scans_on_dask_equal_run(tmp_path: Path) -> None:
    """Real stages and the shipped model: the flow on 2 Dask workers writes what run writes."""
    from distributed import LocalCluster

    from models.weights import DEFAULT_WEIGHTS

    if not DEFAULT_WEIGHTS.is_file() or not (REPO / "sample_scans").is_dir():
        pytest.skip("needs the shipped model (models/) and sample_scans/")
    scans = tmp_path / "scans"
    shutil.copytree(REPO / "sample_scans", scans, ignore=shutil.ignore_patterns("truth", "*.md"))
    settings = {"workers": 1}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        r = nightly.process_scan_folder(str(scans), str(tmp_path / "flow"), settings=settings,
                                        settle_seconds=SETTLE, chunk_pages=3,
                                        dask_address=cluster.scheduler_address)
    assert r["pages"] == 14 and r["new_files"] == 12 and not r["failed_chunks"]
    process([scans], tmp_path / "run", RunSettings.model_validate(settings))
    assert_same_tables(tmp_path / "flow", tmp_path / "run")


EMBEDDED = """
import sys
from tests.test_flows import install_fakes
install_fakes()
from flows.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_cli_runs_on_the_embedded_api_quietly(scans: Path, tmp_path: Path) -> None:
    """No PREFECT_API_URL: the command starts its own API; only the summary is printed."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PREFECT_") and k != "DO_NOT_TRACK"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    argv = [sys.executable, "-c", EMBEDDED, "flow", "--input", str(scans), "--out",
            str(tmp_path / "out"), "-t", "delivery", "--workers", "0"]
    p = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                       check=False)
    assert p.returncode == 0, p.stderr
    assert "pages" in p.stderr and "INFO" not in p.stderr + p.stdout
    assert len(intake.processed_files(tmp_path / "out")) == 7
    assert (tmp_path / "prefect-home").is_dir()  # the embedded API's SQLite lives there
