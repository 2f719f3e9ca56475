"""Evaluation of a weights file on a labelled digit set, with report pictures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from models import metrics


def evaluate(model_path: str | Path | None, data: str | Path, split: str = "test",
             device: str = "auto", second: str = "none"
             ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Run the model over ``data``; returns (metrics dict, logits, labels).

    With a ``second`` opinion (``"auto"`` or a paired file, see models.second_opinion) the
    cascade's calibrated probabilities are scored: the returned "logits" are then their
    logs at temperature 1, so the uncalibrated metrics equal the calibrated ones.
    """
    import torch

    from models.datasets import load_digits
    from models.predictor import Predictor
    from models.second_opinion import SecondOpinion, load_reader

    ds = load_digits(data, split)
    pixels = torch.from_numpy(ds.images)
    reader = load_reader(model_path or "default", second, device=device, batch_size=1000)
    extra: dict[str, Any] = {}
    if isinstance(reader, SecondOpinion):
        probs = reader.predict_tensor(pixels).double()
        logits = torch.log(probs.clamp_min(1e-300)).numpy()
        temperature = 1.0
        extra = {"second_opinion_asked": reader.asked / max(1, len(ds.labels))}
    else:
        assert isinstance(reader, Predictor)
        logits = reader.logits(pixels).numpy().astype(np.float64)
        temperature = reader.contract.temperature
    result = metrics.summarize(logits, ds.labels, temperature)
    result = {"model": reader.model_version, "data": ds.source, **extra, **result}
    return result, logits, ds.labels


def write_report(result: dict[str, Any], logits: np.ndarray, labels: np.ndarray,
                 out_dir: str | Path) -> list[Path]:
    """metrics.json + confusion matrix, reliability diagram and risk-coverage PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "metrics.json"]
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    probs = metrics.softmax(logits, float(result["temperature"]))
    raw = metrics.softmax(logits, 1.0)

    cm = np.asarray(result["confusion"])
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    off = cm.copy()
    np.fill_diagonal(off, 0)
    im = ax.imshow(off, cmap="Reds")
    for i in range(10):
        for j in range(10):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="black" if i != j else "tab:green")
    ax.set(xticks=range(10), yticks=range(10), xlabel="predicted", ylabel="true",
           title=f"Confusion matrix — {result['n']} digits, {result['errors']} errors")
    fig.colorbar(im, ax=ax, label="off-diagonal count")
    fig.tight_layout()
    fig.savefig(out / "confusion_matrix.png", dpi=120)
    plt.close(fig)
    written.append(out / "confusion_matrix.png")

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for p, name in ((raw, "uncalibrated"), (probs, f"T={result['temperature']:.3f}")):
        conf, acc, counts = metrics.reliability_bins(p, labels)
        m = counts > 0
        ax.plot(conf[m], acc[m], "o-", label=f"{name} (ECE {metrics.ece(p, labels):.4f})")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    ax.set(xlabel="confidence", ylabel="accuracy", title="Reliability diagram (15 bins)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "reliability.png", dpi=120)
    plt.close(fig)
    written.append(out / "reliability.png")

    cov, risk = metrics.risk_coverage(probs, labels)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(cov, risk * 100)
    ax.set(xlabel="coverage (fraction of digits accepted)", ylabel="error among accepted (%)",
           title="Risk-coverage curve", xlim=(0.8, 1.0))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "risk_coverage.png", dpi=120)
    plt.close(fig)
    written.append(out / "risk_coverage.png")
    return written
