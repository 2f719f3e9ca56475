"""Classification and calibration metrics on probability matrices (numpy, no torch)."""

from __future__ import annotations

import numpy as np

REJECT_FRACTIONS = (0.005, 0.01, 0.02, 0.05)


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose argmax equals the label."""
    return float((probs.argmax(1) == labels).mean()) if len(labels) else 0.0


def confusion(pred: np.ndarray, labels: np.ndarray, k: int = 10) -> np.ndarray:
    """``k``×``k`` counts, rows = true class, columns = predicted class."""
    m = np.zeros((k, k), np.int64)
    np.add.at(m, (labels, pred), 1)
    return m


def per_class(cm: np.ndarray) -> dict[str, dict[str, float]]:
    """Precision, recall and F1 per class from a confusion matrix."""
    out: dict[str, dict[str, float]] = {}
    for c in range(cm.shape[0]):
        tp = float(cm[c, c])
        col, row = float(cm[:, c].sum()), float(cm[c, :].sum())
        prec = tp / col if col else 0.0
        rec = tp / row if row else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        out[str(c)] = {"precision": prec, "recall": rec, "f1": f1, "support": row}
    return out


def macro_f1(cm: np.ndarray) -> float:
    """Unweighted mean of the per-class F1 scores."""
    return float(np.mean([v["f1"] for v in per_class(cm).values()]))


def nll(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of the true class."""
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], eps, 1.0)).mean())


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width confidence bin: (mean confidence, accuracy, count)."""
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Right-closed bins (0, 1/15], … as in Guo et al.; confidence 0 cannot occur.
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins).astype(np.float64)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return conf_sum / counts, acc_sum / counts, counts


def ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error: Σ_bins (n_b/N)·|acc_b − conf_b|."""
    conf, acc, counts = reliability_bins(probs, labels, n_bins)
    mask = counts > 0
    return float((counts[mask] / counts.sum() * np.abs(acc[mask] - conf[mask])).sum())


def risk_coverage(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage (fraction kept) and error among kept, rejecting lowest confidence first."""
    order = np.argsort(-probs.max(1), kind="stable")
    wrong = (probs.argmax(1) != labels)[order].astype(np.float64)
    kept = np.arange(1, len(order) + 1)
    return kept / len(order), np.cumsum(wrong) / kept


def error_at_reject(probs: np.ndarray, labels: np.ndarray,
                    fractions: tuple[float, ...] = REJECT_FRACTIONS) -> dict[str, float]:
    """Error among kept digits after rejecting each fraction of least-confident ones."""
    n = len(labels)
    order = np.argsort(-probs.max(1), kind="stable")
    wrong = (probs.argmax(1) != labels)[order]
    out = {}
    for f in fractions:
        keep = n - round(f * n)
        out[str(f)] = float(wrong[:keep].mean()) if keep > 0 else 0.0
    return out


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable softmax of ``logits / temperature``."""
    z = logits / temperature
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def summarize(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict[str, object]:
    """The evaluation JSON: accuracy, macro-F1, NLL, ECE (calibrated and not), reject curve."""
    probs = softmax(logits, temperature)
    raw = softmax(logits, 1.0)
    cm = confusion(probs.argmax(1), labels)
    return {
        "n": len(labels),
        "accuracy": accuracy(probs, labels),
        "errors": int((probs.argmax(1) != labels).sum()),
        "macro_f1": macro_f1(cm),
        "nll": nll(probs, labels),
        "nll_uncalibrated": nll(raw, labels),
        "ece": ece(probs, labels),
        "ece_uncalibrated": ece(raw, labels),
        "temperature": temperature,
        "error_at_reject": error_at_reject(probs, labels),
        "per_class": per_class(cm),
        "confusion": cm.tolist(),
    }
