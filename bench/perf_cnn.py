"""CNN parts of the performance benchmark: inference speed, int8 quantization, training time.

Inference is timed on real MNIST test digits in batches of 256 through the same path the
pipeline uses (``Predictor.predict_tensor``: fp32, channels_last, ``inference_mode``).
PT2E quantization lives in ``torchao`` (not installed here), so the int8 model is FX
graph-mode *static* quantization with the ``x86`` backend (fbgemm + oneDNN kernels, which
use AVX-512 VNNI), calibrated on 2,000 MNIST *training* digits; dynamic quantization is
measured too (it only touches the Linear head, so it is mostly a control).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

BATCH = 256


class StopTraining(Exception):
    """Raised from ``on_epoch`` to end training once the target is reached."""


def _throughput(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, min_s: float) -> float:
    """Digits per second of ``fn`` over batches of ``BATCH`` (after a warm-up batch)."""
    batches = [x[i : i + BATCH] for i in range(0, len(x) - BATCH + 1, BATCH)]
    fn(batches[0])
    n, t0 = 0, time.perf_counter()
    while True:
        for b in batches:
            fn(b)
            n += len(b)
        if time.perf_counter() - t0 >= min_s:
            return n / (time.perf_counter() - t0)


def _accuracy(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
              y: np.ndarray) -> float:
    preds = [fn(x[i : i + 1024]).argmax(1) for i in range(0, len(x), 1024)]
    return float((torch.cat(preds).numpy() == y).mean())


def _fx_static_int8(model: nn.Module, contract: Any, calib: torch.Tensor) -> nn.Module:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    example = (contract.to_input(calib[:BATCH]),)
    prepared = prepare_fx(model.eval(), get_default_qconfig_mapping("x86"), example)
    with torch.inference_mode():
        for i in range(0, len(calib), BATCH):
            prepared(contract.to_input(calib[i : i + BATCH]))
    return convert_fx(prepared)


def cnn_bench(quick: bool) -> dict[str, Any]:
    """Digits/s at batch 256 (shipped fp32, int8 variants, seednet) and accuracy changes."""
    import copy

    from models.datasets import load_digits
    from models.predictor import Predictor
    from models.registry import create_model

    min_s = 1.0 if quick else 3.0
    test = load_digits("mnist", "test")
    x = torch.from_numpy(np.ascontiguousarray(test.images))
    y = np.asarray(test.labels)
    pred = Predictor.load("default", device="cpu", batch_size=BATCH)
    contract = pred.contract
    out: dict[str, Any] = {"batch": BATCH, "torch_threads": torch.get_num_threads()}
    out["fp32_digits_per_s"] = _throughput(pred.predict_tensor, x, min_s)
    out["fp32_accuracy"] = _accuracy(pred.predict_tensor, x, y)

    base = copy.deepcopy(pred.model).to(memory_format=torch.contiguous_format).eval()

    def run_with(model: nn.Module, channels_last: bool) -> Callable[[torch.Tensor], Any]:
        def fn(b: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                inp = contract.to_input(b)
                if channels_last:
                    inp = inp.contiguous(memory_format=torch.channels_last)
                return model(inp)
        return fn

    variants: dict[str, Callable[[], nn.Module]] = {
        "int8_fx_static_x86": lambda: _fx_static_int8(
            copy.deepcopy(base), contract,
            torch.from_numpy(load_digits("mnist", "train").images[:2000].copy())),
        "int8_dynamic_linear": lambda: torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(base), {nn.Linear}, dtype=torch.qint8),
    }
    for name, make in variants.items():
        try:
            with warnings.catch_warnings():  # torch.ao deprecation notices: noise here
                warnings.simplefilter("ignore")
                qmodel = make()
            fn = run_with(qmodel, channels_last=False)
            out[f"{name}_digits_per_s"] = _throughput(fn, x, min_s)
            acc = _accuracy(fn, x, y)
            out[f"{name}_accuracy"] = acc
            out[f"{name}_accuracy_change"] = acc - out["fp32_accuracy"]
        except Exception as exc:  # report, never abort the whole bench
            out[f"{name}_error"] = f"{type(exc).__name__}: {exc}"
    seed = create_model("seednet").eval().to(memory_format=torch.channels_last)
    out["seed_cnn_digits_per_s"] = _throughput(run_with(seed, True), x, min_s)
    return out


def train_bench(limit_s: float, target: float = 0.995) -> dict[str, Any]:
    """Wall time of ``models.train.train`` (default TrainConfig) to ``target`` test accuracy."""
    from models.datasets import load_digits
    from models.train import EpochLog, TrainConfig, train

    tr, te = load_digits("mnist", "train"), load_digits("mnist", "test")
    history: list[dict[str, Any]] = []
    reached: dict[str, Any] = {}

    def on_epoch(log: EpochLog) -> None:
        history.append({"epoch": log.epoch, "seconds": round(log.seconds, 1),
                        "test_accuracy": log.test_accuracy})
        if log.test_accuracy is not None and log.test_accuracy >= target:
            reached.update(epoch=log.epoch, seconds=log.seconds)
            raise StopTraining
        if log.seconds > limit_s:
            raise StopTraining

    t0 = time.perf_counter()
    with contextlib.suppress(StopTraining):
        train(tr.images, tr.labels, TrainConfig(), test=(te.images, te.labels),
              on_epoch=on_epoch)
    return {
        "train_seconds_to_995": round(float(reached["seconds"]), 1) if reached else None,
        "train_epochs_to_995": reached.get("epoch"),
        "train_wall_s": round(time.perf_counter() - t0, 1),
        "train_limit_s": limit_s,
        "train_history": history,
    }
