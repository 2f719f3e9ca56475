"""Inference: a predictor object owns device placement, batching and ``inference_mode``.

Its transforms come from the model's contract; it returns calibrated probabilities
(logits divided by the fitted temperature before the softmax).
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.contract import Contract
from models.weights import load_model, resolve_weights
from pipeline.errors import UsageError

# On CPU a batch is run in pieces of at most this many crops: their feature maps stay in
# the core's cache, ~4 % more digits per CPU second than 256 at once on 1 or 2 threads
# (this 2-core EPYC, torch 2.14), with the same logits bit for bit.
CPU_CHUNK = 128


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was requested but no CUDA GPU is available")
    if device not in ("cpu", "cuda"):
        raise UsageError(f"unknown device '{device}' (use auto, cpu or cuda)")
    return torch.device(device)


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every ``Conv2d`` → ``BatchNorm2d`` pair inside an
    ``nn.Sequential`` folded into one convolution (the BatchNorm becomes ``Identity``).

    Same function up to float rounding (logits differ by ~1e-6), but the BatchNorm passes
    over the large early feature maps disappear: about 2x the digits/s on CPU at batch 256.
    A copy, so the caller's model (and its state_dict keys) stay untouched.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(model).eval()
    for mod in list(fused.modules()):
        if not isinstance(mod, nn.Sequential):
            continue
        names = list(mod._modules)
        for a, b in itertools.pairwise(names):
            conv, bn = mod._modules[a], mod._modules[b]
            if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
                    and bn.track_running_stats and bn.running_mean is not None):
                mod._modules[a] = fuse_conv_bn_eval(conv, bn)
                mod._modules[b] = nn.Identity()
    return fused


class Predictor:
    """Calibrated digit classifier over batches of normalized 28x28 crops."""

    def __init__(self, model: nn.Module, contract: Contract, device: str = "auto",
                 batch_size: int = 256, version: str | None = None) -> None:
        self.device = pick_device(device)
        self.contract = contract
        self.batch_size = batch_size
        self.model_version = version or contract.version
        # channels_last: oneDNN's fastest convolution kernels on CPU. On a GPU this small
        # model is bound by launches and copies, and the layout made no steady difference
        # (two H200 runs of bench.perf_gpu: 720k vs 436k digits/s, then 532k vs 645k), so
        # one layout serves every device.
        self.model = model.eval().to(self.device).to(memory_format=torch.channels_last)
        # What actually runs: BatchNorm folded into the convolutions (see fuse_conv_bn).
        self._infer = fuse_conv_bn(self.model).to(memory_format=torch.channels_last)
        self._amp = self.device.type == "cuda"

    @classmethod
    def load(cls, path: str | Path | None = "default", device: str = "auto",
             batch_size: int = 256) -> Predictor:
        """Load a weights file (``"default"`` = the shipped model)."""
        model, contract = load_model(resolve_weights(path))
        return cls(model, contract, device=device, batch_size=batch_size)

    @torch.inference_mode()
    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """Raw (uncalibrated) logits for uint8 crops ``(N, 28, 28)``, in batches."""
        outs = []
        step = self.batch_size if self.device.type == "cuda" else min(self.batch_size,
                                                                      CPU_CHUNK)
        for start in range(0, len(pixels), step):
            chunk = pixels[start : start + step]
            n = len(chunk)
            if self.device.type == "cuda" and n < self.batch_size:
                # One shape on the GPU: cuDNN and cuBLAS choose kernels by shape, and
                # another kernel sums in another order, so a crop's probabilities would
                # depend on which batch it fell into (by ~1e-4 in fp16; a page read alone
                # would not match the nightly run). Padding costs the GPU next to nothing.
                pad = chunk.new_zeros((self.batch_size - n, *chunk.shape[1:]))
                chunk = torch.cat([chunk, pad])
            x = chunk.to(self.device, non_blocking=True)
            x = self.contract.to_input(x).contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, enabled=self._amp):
                out = self._infer(x)[:n]
            outs.append(out.float())
        if not outs:
            return torch.zeros((0, len(self.contract.labels)))
        return torch.cat(outs).cpu()

    def predict_tensor(self, pixels: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities ``(N, 10)`` for uint8 crops ``(N, 28, 28)``."""
        return torch.softmax(self.logits(pixels) / self.contract.temperature, dim=1)

    def predict_proba(self, pixels: np.ndarray) -> np.ndarray:
        """Numpy version of :meth:`predict_tensor` (float32)."""
        t = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.uint8))
        if self.device.type == "cuda":
            t = t.pin_memory()
        return self.predict_tensor(t).numpy().astype(np.float32, copy=False)
