"""CPU inference engines for the shipped model, against the eager path the pipeline runs:
``python -m bench.cnn_engines [--threads 1 2]``.

- ``torch``: ``Predictor.logits`` (eager fp32, BatchNorm folded, channels_last).
- ``torchscript``: the same module traced, frozen and ``optimize_for_inference`` (oneDNN
  weight pre-packing); reports its one-off preparation time.
- ``onnxruntime``: the same module exported to ONNX (opset 17) and run by ONNX Runtime's CPU
  provider; needs ``onnx`` and ``onnxruntime``, which formdigits does not install
  (``pip install onnx onnxruntime``), and is skipped without them.

Digits/s at batch 256 on 4,096 MNIST test digits, in interleaved rounds (the machine's speed
drifts), and the largest logit difference from the eager path.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

Fn = Callable[[torch.Tensor], torch.Tensor]


def engines(threads: int) -> tuple[dict[str, Fn], dict[str, Any]]:
    """Each engine's ``uint8 crops -> logits`` function, and notes (preparation times)."""
    from models.predictor import Predictor

    torch.set_num_threads(threads)
    pred = Predictor.load("default", device="cpu", batch_size=256)

    def to_input(b: torch.Tensor) -> torch.Tensor:
        return pred.contract.to_input(b).contiguous(memory_format=torch.channels_last)

    fns: dict[str, Fn] = {"torch": pred.logits}
    notes: dict[str, Any] = {}
    example = to_input(torch.zeros((256, 28, 28), dtype=torch.uint8))
    t0 = time.perf_counter()
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        module = copy.deepcopy(pred._infer).eval()
        script = torch.jit.optimize_for_inference(
            torch.jit.freeze(torch.jit.trace(module, example)))
    notes["torchscript_prepare_s"] = round(time.perf_counter() - t0, 2)

    @torch.inference_mode()
    def run_script(b: torch.Tensor) -> torch.Tensor:
        return script(to_input(b))

    fns["torchscript"] = run_script
    try:
        import onnxruntime as ort

        onnx_path = Path(tempfile.mkdtemp()) / "digitnet.onnx"
        plain = copy.deepcopy(pred._infer).to(memory_format=torch.contiguous_format).eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(plain, (example.contiguous(),), onnx_path, dynamo=False,
                              input_names=["x"], output_names=["y"], opset_version=17,
                              dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])

        def run_ort(b: torch.Tensor) -> torch.Tensor:
            x = pred.contract.to_input(b).numpy()
            return torch.from_numpy(sess.run(None, {"x": x})[0])

        fns["onnxruntime"] = run_ort
        notes["onnxruntime"] = ort.__version__
    except Exception as exc:  # not installed, or the exporter failed: say so, go on
        notes["onnxruntime_skipped"] = f"{type(exc).__name__}: {exc}"[:200]
    return fns, notes


def measure(threads: int, rounds: int = 3, seconds: float = 1.5) -> dict[str, Any]:
    """Interleaved digits/s per engine and its largest logit difference from ``torch``."""
    from models.datasets import load_digits

    x = torch.from_numpy(np.ascontiguousarray(load_digits("mnist", "test").images[:4096]))
    fns, out = engines(threads)
    batches = [x[i : i + 256] for i in range(0, len(x), 256)]
    ref = torch.cat([fns["torch"](b) for b in batches])
    for name, fn in fns.items():
        got = torch.cat([fn(b) for b in batches])
        out[f"{name}_max_logit_diff"] = float((got - ref).abs().max())
    rates: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                for b in batches:
                    fn(b)
                    n += len(b)
            rates[name].append(round(n / (time.perf_counter() - t0)))
    out["digits_per_s"] = rates
    out["threads"] = threads
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Print one JSON object per thread count."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    for t in ap.parse_args(argv).threads:
        print(json.dumps(measure(t)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
