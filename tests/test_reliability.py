"""Reliability and security of whole runs: hostile folders, kills, locks, full disks.

Single-file decoding errors are covered by tests/test_ingest.py and commit atomicity by
tests/test_store.py; these tests run the real pipeline (shipped model) over folders of
bad inputs and inject faults into real runs. ``bench.reliability`` does the same at scale.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from bench.hostile_inputs import Case, build_folder, cases, png_header_only
from bench.reliability import outcome
from bench.reliability_faults import CLI, CLI_EVERY_FILE, canonical
from pipeline.errors import ConfigError, LimitExceededError, OutputError
from pipeline.ingest import count_pages, discover, load_page
from pipeline.settings import Limits, RunSettings, load_settings
from pipeline.store import OutputStore, read_table

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "sample_scans" / "scan_0006.png"
MODEL = ROOT / "models" / "digitnet.safetensors"
needs_model = pytest.mark.skipif(not MODEL.exists() or not PAGE.exists(),
                                 reason="shipped model or sample scans not present")
# The 100-page PDF and the slow fax/odd-name variants stay in the bench.
SKIP_IN_TESTS = {"hundred_pages.pdf", "fax72.tif", "x" * 240 + ".png", "gray16.png",
                 "a..b...png", "line\nbreak\\back.png"}


@pytest.fixture(scope="module")
def predictor():
    """The shipped model, loaded once (CPU)."""
    from models.predictor import Predictor

    return Predictor.load("default", device="cpu")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, predictor: object):
    """A folder of every hostile case (minus the slow ones) run once with --debug."""
    from pipeline.run import process

    root = tmp_path_factory.mktemp("hostile")
    chosen = build_folder(root / "in", Image.open(PAGE),
                          [c for c in cases() if c.name not in SKIP_IN_TESTS])
    before = {p for p in root.rglob("*")}
    s = RunSettings.model_validate({"workers": 0, "debug_dir": str(root / "debug")})
    summary = process([root / "in"], root / "out", s, predictor=predictor)  # type: ignore[arg-type]
    return root, chosen, summary, before


@needs_model
@pytest.mark.parametrize("name", [c.name for c in cases() if c.name not in SKIP_IN_TESTS])
def test_each_hostile_input_ends_as_result_or_specific_error(hostile, name: str) -> None:
    root, chosen, _, _ = hostile
    case = next(c for c in chosen if c.name == name)
    pages, errors = read_table(root / "out", "pages"), read_table(root / "out", "errors")
    got = outcome(case, str(root / "in" / name), pages, errors)
    assert got in case.expect
    rows = errors[errors.source == str(root / "in" / name)]
    assert not (rows.error_type == "internal").any()
    assert rows.hint.str.len().gt(10).all()  # every error row tells the user what to do
    if case.same_as is not None:  # odd encodings and names read like the clean page
        f = read_table(root / "out", "fields")
        mine = f[f.source == str(root / "in" / name)].set_index("field").value
        ref = f[f.source == str(root / "in" / case.same_as)].set_index("field").value
        assert (mine == ref.reindex(mine.index)).mean() >= 0.85


@needs_model
def test_every_page_accounted_for_and_nothing_written_outside_out(hostile) -> None:
    root, chosen, summary, before = hostile
    pages, errors = read_table(root / "out", "pages"), read_table(root / "out", "errors")
    for c in chosen:
        if "ignored" in c.expect:
            continue
        src = str(root / "in" / c.name)
        n, file_err = (pages.source == src).sum(), ((errors.source == src)
                                                    & errors.page.isna()).any()
        assert (file_err and n == 0) or (not file_err and n == c.pages), c.name
    assert not pages.duplicated(["file_sha256", "page"]).any()
    assert summary.errors == len(errors) > 0
    new = {p for p in root.rglob("*") if p not in before}
    stray = [p for p in new if not p.is_relative_to(root / "out")
             and not p.is_relative_to(root / "debug")]
    assert stray == []
    assert len(list((root / "debug").iterdir())) == int((pages.status == "read").sum())


def test_unsupported_image_formats_become_error_rows_not_silence(tmp_path: Path) -> None:
    Image.new("L", (8, 8)).save(tmp_path / "scan.bmp")
    Image.new("L", (8, 8)).save(tmp_path / "scan.gif")
    (tmp_path / "notes.txt").write_text("not a scan")
    assert sorted(p.name for p in discover([tmp_path])) == ["scan.bmp", "scan.gif"]


def test_pixel_limit_is_the_configured_one_even_above_pillows_guard(tmp_path: Path) -> None:
    p = tmp_path / "big.png"
    p.write_bytes(png_header_only(15_000, 15_000))  # 225 M px: above Pillow's 179 M guard
    with pytest.raises(LimitExceededError, match="max_pixels"):
        count_pages(p, Limits.model_validate({}))
    assert count_pages(p, Limits.model_validate({"max_pixels": 300_000_000})) == 1
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's global is restored


def test_limit_defaults_are_safe() -> None:
    lim = Limits.model_validate({})
    assert lim.max_file_bytes <= 512 * 2**20 and lim.max_pixels <= 200_000_000
    assert lim.max_pdf_pages <= 1000
    with pytest.raises(ConfigError):
        load_settings(None, limits={"max_pixels": 0})


def test_pdf_without_pages_does_not_ask_for_a_password(tmp_path: Path) -> None:
    from bench.hostile_inputs import minimal_pdf
    from pipeline.errors import CorruptFileError

    p = tmp_path / "none.pdf"
    p.write_bytes(minimal_pdf(pages=0))
    with pytest.raises(CorruptFileError) as info:
        load_page(p, 0, Limits.model_validate({}), 100)
    assert "password" not in str(info.value).lower()


@pytest.mark.parametrize("where", ["settings", "template"])
def test_yaml_with_python_object_tag_is_rejected(tmp_path: Path, where: str) -> None:
    from pipeline.templates import load_template

    marker = tmp_path / "PWNED"
    p = tmp_path / "evil.yaml"
    body = f"!!python/object/apply:os.system ['touch {marker}']"
    p.write_text(f"batch_size: {body}\n" if where == "settings" else body + "\n")
    with pytest.raises(ConfigError):
        (load_settings if where == "settings" else load_template)(p)
    assert not marker.exists()


@needs_model
def test_unreadable_file_is_an_error_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         predictor: object) -> None:
    from pipeline import ingest
    from pipeline.run import process

    (tmp_path / "in").mkdir()
    secret = tmp_path / "in" / "secret.png"
    secret.write_bytes(PAGE.read_bytes())
    if os.geteuid() == 0:  # root reads a chmod-000 file anyway: deny at open() instead
        real = open

        def denied(path: object, *a: object, **k: object) -> object:
            if Path(str(path)) == secret:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real(path, *a, **k)  # type: ignore[call-overload]

        monkeypatch.setitem(vars(ingest), "open", denied)
    else:
        secret.chmod(0)
    try:
        s = process([tmp_path / "in"], tmp_path / "out", RunSettings.model_validate(
            {"workers": 0}), predictor=predictor)  # type: ignore[arg-type]
    finally:
        secret.chmod(0o644)
    e = read_table(tmp_path / "out", "errors")
    assert s.errors == 1 and list(e.error_type) == ["input"]
    assert "cannot read" in e.message.iloc[0] and "Permission denied" in e.message.iloc[0]


@needs_model
def test_disk_full_mid_run_keeps_earlier_results_and_releases_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, predictor: object
) -> None:
    from pipeline.run import process

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes(PAGE.read_bytes())
    s = RunSettings.model_validate({"workers": 0})
    process([folder], tmp_path / "out", s, predictor=predictor)  # type: ignore[arg-type]
    before = canonical(tmp_path / "out")
    Image.open(PAGE).rotate(180).save(folder / "b.png")

    def full(*_a: object, **_k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", full)
    with pytest.raises(OutputError, match="No space left") as info:
        process([folder], tmp_path / "out", s, predictor=predictor)  # type: ignore[arg-type]
    assert info.value.exit_code == 7 and "earlier results are intact" in info.value.hint
    assert canonical(tmp_path / "out") == before
    assert not list((tmp_path / "out").rglob("*.tmp"))
    monkeypatch.undo()
    again = process([folder], tmp_path / "out", s, predictor=predictor)  # type: ignore[arg-type]
    assert again.pages == 1 and len(read_table(tmp_path / "out", "pages")) == 2


def test_lock_is_released_when_the_run_is_killed_despite_forked_children(
    tmp_path: Path,
) -> None:
    # The run forks a long-lived child (like a DataLoader worker), then is SIGKILLed.
    script = textwrap.dedent(f"""
        import os, sys, time
        from pipeline.store import OutputStore
        store = OutputStore({str(tmp_path / "out")!r}, "r1")
        r, w = os.pipe()
        if os.fork() == 0:
            os.write(w, b"1")  # fork() has returned here: the at-fork handlers have run
            time.sleep(60)
            os._exit(0)
        os.read(r, 1)  # (on a busy machine the child may not have run at all yet)
        print("locked", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            cwd=ROOT, start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"locked"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        with OutputStore(tmp_path / "out", "r2"):  # the orphaned child must not hold it
            pass
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the orphan (same session, started here)


@pytest.mark.slow
@needs_model
def test_sigkill_at_random_moments_then_rerun_gives_identical_tables(tmp_path: Path) -> None:
    import random

    inputs = ROOT / "sample_scans"
    ref = tmp_path / "ref"
    t0 = time.perf_counter()
    subprocess.run([*CLI, "run", str(inputs), "--out", str(ref)], cwd=tmp_path, check=True,
                   capture_output=True)
    full = time.perf_counter() - t0
    want = canonical(ref)
    rng = random.Random(3)
    for k in range(3):
        out = tmp_path / f"k{k}"
        proc = subprocess.Popen([*CLI_EVERY_FILE, "run", str(inputs), "--out", str(out)],
                                cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, full * 0.9))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        r = subprocess.run([*CLI, "run", str(inputs), "--out", str(out)], cwd=tmp_path,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-500:]
        assert canonical(out) == want
        assert not read_table(out, "pages").duplicated(["file_sha256", "page"]).any()


def test_outcome_labels() -> None:
    case = Case("a.png", "x", lambda p, i: None, frozenset({"read"}), pages=2)
    pages = pd.DataFrame({"source": ["a.png", "a.png"], "page": [0, 1],
                          "status": ["read", "unregistered"]})
    errors = pd.DataFrame({"source": ["a.png"], "page": pd.array([1], "Int32"),
                           "error_type": ["unregistered_page"]})
    assert outcome(case, "a.png", pages, errors) == "unregistered_page"
    assert outcome(case, "b.png", pages, errors) == "ignored"
