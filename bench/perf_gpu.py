"""GPU benchmark — the CUDA path of issue 7: ``python -m bench.perf_gpu --out FILE``.

Runs only where torch sees a CUDA GPU (the CPU bench is :mod:`bench.perf`). On that one
machine, in one run so the ratios are fair, it measures:

- **CNN**: digits/s of the shipped model on the GPU through ``Predictor.predict_tensor``
  from pinned host memory, results copied back (what the pipeline runs: fp16 autocast,
  channels_last), at batch 256 and larger; the same without autocast, in the default NCHW
  layout, the reader with its second opinion, and the CPU rate on the same machine. MNIST
  test accuracy on the GPU next to the CPU's, and how many readings differ.
- **end to end**: ``pipeline.run.process`` pages/s with the GPU reader for several worker
  counts, the CPU reader at the largest count, and the decode-only limit, on the synthetic
  300-dpi pages of :mod:`bench.perf_pages`.
- **training** (``--train``): wall time of the default recipe to 99.5 % MNIST test accuracy.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.perf import decode_rate, machine_info, run_pipeline, run_reader
from bench.perf_cnn import _throughput
from bench.perf_pages import generate_pages, mnist_bank_or_none


def gpu_info() -> dict[str, Any]:
    """The GPU, its driver's CUDA version and torch's build."""
    p = torch.cuda.get_device_properties(0)
    return {"gpu": p.name, "gpu_memory_gb": round(p.total_memory / 2**30, 1),
            "multiprocessors": p.multi_processor_count, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "torch": torch.__version__}


def _agreement(a: torch.Tensor, b: torch.Tensor) -> dict[str, Any]:
    return {"readings_differ": int((a.argmax(1) != b.argmax(1)).sum()),
            "max_prob_diff": round(float((a - b).abs().max()), 5)}


def cnn_gpu(min_s: float = 2.0) -> dict[str, Any]:
    """Digits/s and accuracy of the shipped model (and reader) on the GPU and on the CPU."""
    from models.datasets import load_digits
    from models.predictor import Predictor

    test = load_digits("mnist", "test")
    x = torch.from_numpy(np.ascontiguousarray(test.images)).pin_memory()
    y = torch.from_numpy(np.asarray(test.labels))
    out: dict[str, Any] = {}
    for bs in (256, 1024, 8192):
        pred = Predictor.load("default", device="cuda", batch_size=bs)
        out[f"amp_b{bs}_digits_per_s"] = _throughput(pred.predict_tensor, x, min_s)
    pred = Predictor.load("default", device="cuda", batch_size=256)
    gpu_probs = pred.predict_tensor(x)
    pred._amp = False
    out["fp32_b256_digits_per_s"] = _throughput(pred.predict_tensor, x, min_s)
    fp32_probs = pred.predict_tensor(x)
    pred._amp = True
    model = pred._infer.to(memory_format=torch.contiguous_format)  # the layout before

    @torch.inference_mode()
    def nchw(b: torch.Tensor) -> torch.Tensor:
        inp = pred.contract.to_input(b.to("cuda", non_blocking=True))
        with torch.autocast("cuda"):
            return model(inp).float().cpu()

    out["amp_nchw_b256_digits_per_s"] = _throughput(nchw, x, min_s)
    reader = run_reader("cuda")
    out["reader_amp_b256_digits_per_s"] = _throughput(reader.predict_tensor, x, min_s)
    cpu = Predictor.load("default", device="cpu", batch_size=256)
    out["cpu_fp32_b256_digits_per_s"] = _throughput(cpu.predict_tensor, x, min_s)
    cpu_probs = cpu.predict_tensor(x)
    out["accuracy_gpu_amp"] = float((gpu_probs.argmax(1) == y).float().mean())
    out["accuracy_gpu_fp32"] = float((fp32_probs.argmax(1) == y).float().mean())
    out["accuracy_cpu"] = float((cpu_probs.argmax(1) == y).float().mean())
    out["gpu_amp_vs_cpu"] = _agreement(gpu_probs, cpu_probs)
    out["gpu_fp32_vs_cpu"] = _agreement(fp32_probs, cpu_probs)
    return out


def end_to_end(work: Path, n_pages: int, workers: Sequence[int]) -> dict[str, Any]:
    """Pages/s of ``process`` with the GPU reader per worker count, and CPU at the largest."""
    bank, why = mnist_bank_or_none()
    if bank is None:
        raise SystemExit(why)
    paths = generate_pages(work / "pages", n_pages, bank, min(8, max(workers)))
    most = max(workers)
    res: dict[str, Any] = {"pages": len(paths),
                           "decode_pages_per_s": decode_rate(paths, most)}
    readers: dict[str, Callable[[], Any]] = {"cuda": lambda: run_reader("cuda"),
                                             "cpu": lambda: run_reader("cpu")}
    for device, counts in (("cuda", list(workers)), ("cpu", [most])):
        reader = readers[device]()
        run_pipeline(work / "pages", work / "warm", most, reader, device=device)
        for w in counts:
            r = run_pipeline(work / "pages", work / f"out_{device}_{w}", w, reader,
                             device=device)
            res[f"{device}_{w}workers_pages_per_s"] = round(r["pages_per_s"], 1)
            res[f"{device}_{w}workers_errors"] = r["errors"]
            if w == most:
                n = max(1, r["pages"])
                res[f"{device}_{w}workers_stage_ms"] = {
                    k: round(1000 * v / n, 2) for k, v in sorted(r["stage_seconds"].items())}
    res["ratio_to_decode"] = res[f"cuda_{most}workers_pages_per_s"] / res["decode_pages_per_s"]
    return res


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.perf_gpu [--pages N] [--workers 2,4,8] [--train] --out FILE``."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pages", type=int, default=64)
    ap.add_argument("--workers", default="2,4,8,14")
    ap.add_argument("--train", action="store_true")
    ap.add_argument("--train-limit-s", type=float, default=180.0)
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/formdigits-bench-gpu"))
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU: run bench.perf for the CPU numbers")
        return 2
    started = time.time()
    res: dict[str, Any] = {"machine": machine_info() | gpu_info(),
                           "measured_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}

    def save() -> None:
        res["bench_seconds"] = round(time.time() - started, 1)
        text = json.dumps(res, indent=1)
        if a.out:
            a.out.write_text(text + "\n")
        print(text, flush=True)

    res["cnn"] = cnn_gpu()
    save()
    workers = [int(w) for w in a.workers.split(",")]
    res["end_to_end"] = end_to_end(a.work_dir, a.pages, workers)
    save()
    if a.train:
        from bench.perf_cnn import train_bench

        res["train"] = train_bench(a.train_limit_s)
        save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
