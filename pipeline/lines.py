"""The string reader in the pipeline: load it, read a page's string fields whole, and
check a reading against it.

Segmentation draws each string field whole (``FieldLine``, :func:`pipeline.segment.
string_line`) beside its digit candidates. Here the string reader (``models/stringnet``,
a CRNN with a CTC head trained by ``models.strings``) turns each into per-column
log-probabilities, and :func:`line_check` answers, for the value the segmenter chose:
what does the reader read on its own, and how probable does it find that value? Field
assembly (:mod:`pipeline.assemble`) uses the answer to lift the touching-digits doubt when
both readers agree.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch

from pipeline.errors import ModelError
from pipeline.records import FieldLine


@functools.lru_cache(maxsize=4)
def line_reader(path: str, arch: str = "stringnet"
                ) -> Callable[[np.ndarray], np.ndarray] | None:
    """The string reader (``arch`` ``stringnet``; ``boxnet``: the boxed-field reader) as
    ``lines (N, 32, W) uint8 → log-probs (N, T, 11)``, or None.

    Loaded once per process; it runs on the CPU in the main process, one page's string
    fields at a time (one or two lines: not worth a trip to a GPU). The contract's
    temperature is applied, so the log-probabilities are calibrated.
    """
    if path == "none":
        return None
    from models.predictor import fuse_conv_bn
    from models.weights import BOXES_WEIGHTS, STRINGS_WEIGHTS, load_model

    default = BOXES_WEIGHTS if arch == "boxnet" else STRINGS_WEIGHTS
    model, contract = load_model(default if path == "default" else path)
    if contract.arch != arch:
        what = "boxed-field" if arch == "boxnet" else "string"
        raise ModelError(f"{path}: a '{contract.arch}' model, not a {what} reader",
                         hint=f"Pass a {arch} weights file, 'default' or 'none'.")
    # BatchNorm folded into the convolutions, channels_last: 3.2 -> 2.4 ms per line on one
    # thread here (the same logits to ~3e-6).
    fused = fuse_conv_bn(model).to(memory_format=torch.channels_last)

    def read(pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = contract.to_input_np(pixels).contiguous(memory_format=torch.channels_last)
            logits = fused(x) / contract.temperature
            return torch.log_softmax(logits.float(), 2).numpy()

    return read


def read_lines(lines: Sequence[FieldLine], reader: Callable[[np.ndarray], np.ndarray] | None,
               kind: str = "string") -> tuple[FieldLine, ...]:
    """``lines`` with the ``log_probs`` of those for reader ``kind`` filled by ``reader``
    (unchanged when it is None)."""
    todo = [i for i, ln in enumerate(lines) if ln.reader == kind]
    if reader is None or not todo:
        return tuple(lines)
    lp = reader(np.stack([lines[i].pixels for i in todo]))
    out = list(lines)
    for j, i in enumerate(todo):
        out[i] = dataclasses.replace(lines[i], log_probs=lp[j])
    return tuple(out)


def best_path(log_probs: np.ndarray) -> str:
    """The reader's own reading: the most probable class per column, repeats merged and
    blanks (class 0) removed (best-path CTC decoding)."""
    out: list[str] = []
    prev = 0
    for k in np.asarray(log_probs).argmax(1).tolist():
        if k not in (prev, 0):
            out.append(str(k - 1))
        prev = k
    return "".join(out)


def value_log_prob(log_probs: np.ndarray, value: str) -> float:
    """``log P(value | line)`` summed over every CTC alignment (forward algorithm).

    An empty value is the all-blank path. Exact, in log space; a few dozen columns and at
    most a dozen digits, so a small numpy loop over columns.
    """
    lp = np.asarray(log_probs, np.float64)
    if not value:
        return float(lp[:, 0].sum())
    labels = [0]
    for ch in value:
        labels += [int(ch) + 1, 0]
    s = len(labels)
    lab = np.array(labels)
    # A label may skip the blank before it when it differs from the label two back.
    skip = np.zeros(s, bool)
    skip[2:] = (lab[2:] != 0) & (lab[2:] != lab[:-2])
    emit = lp[:, lab]  # (columns, labels): each label's log-probability in every column
    # ``padded`` holds two -inf cells before alpha, so alpha shifted by one or two labels
    # is a view; the per-column numpy calls (not arithmetic) are this loop's cost.
    padded = np.full(s + 2, -np.inf)
    alpha = padded[2:]
    alpha[0] = emit[0, 0]
    alpha[1] = emit[0, 1]
    prev2 = np.empty(s)
    for t in range(1, lp.shape[0]):
        np.copyto(prev2, -np.inf)
        np.copyto(prev2, padded[:-2], where=skip)
        np.logaddexp(np.logaddexp(alpha, padded[1:-1]), prev2, out=prev2)
        np.add(prev2, emit[t], out=alpha)
    return float(np.logaddexp(alpha[-1], alpha[-2]))


def line_check(line: FieldLine | None, value: str) -> tuple[str, float, float] | None:
    """``(the reader's own reading, P(value), P(its reading))`` for a read line; None when
    unread."""
    if line is None or line.log_probs is None:
        return None
    reading = best_path(line.log_probs)
    p_value = float(np.exp(value_log_prob(line.log_probs, value)))
    p_reading = p_value if reading == value else float(
        np.exp(value_log_prob(line.log_probs, reading)))
    return reading, p_value, p_reading
