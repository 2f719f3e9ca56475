"""The string reader: a segmentation-free CRNN + CTC model for whole string fields.

String fields are written freely, and neighbouring digits touch. The pipeline reads them
by cutting (``pipeline.segment_string``) and choosing among cuts with the digit model and
the piece verifier; where digits touch, the cut is the weak point, so such fields go to
review unless the cut is sure. ``stringnet`` reads the same field *without cutting it*:
a small CNN turns the field into a sequence of columns, a bidirectional GRU reads them,
and CTC (Graves et al., 2006) scores every digit string. Because it never sees the cuts,
agreeing with the segmenter's reading is independent evidence that the cut was right
(:mod:`pipeline.lines` applies it).

Training data are strings of MNIST **training** digits written into the shipped
templates' string fields exactly as the synthesizer writes them
(``pipeline.handwriting.layout_string``), scanned lightly (downscale, blur, noise) and
cleaned by the production code (``field_ink`` → :func:`pipeline.segment.string_line`),
the same function the pipeline calls. A temperature on the logits is fitted on a
held-out tenth (the sequence NLL), and stored in the contract.

    python -m models.strings --out models/stringnet.safetensors \\
        [--strings 40000] [--epochs 8] [--seed 21]
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.contract import Contract
from models.pieces import (
    StringFieldBlank,
    run_recipe,
    scan_region,
    seeded_split,
    string_field_blanks,
)
from models.registry import create_model
from models.weights import STRINGS_WEIGHTS
from pipeline.handwriting import FILL_DPI, DigitBank, composite, layout_string, sample_pen
from pipeline.lines import best_path
from pipeline.normalize import LINE_HEIGHT, LINE_WIDTH
from pipeline.segment import field_ink, string_line
from pipeline.templates import WORK_DPI

VERSION = "stringnet-1.0"
LABELS = ("blank", *(str(d) for d in range(10)))
LineSampler = Callable[[StringFieldBlank, DigitBank, np.random.Generator],
                       tuple[np.ndarray, str]]


def ctc_nll(logits: torch.Tensor, values: list[str]) -> torch.Tensor:
    """``-log P(value | line)`` per line under CTC; ``logits`` ``(N, T, 11)``, class 0 blank;
    every value has at least one digit (the training strings do)."""
    lp = F.log_softmax(logits.float(), 2)
    flat = torch.tensor([int(ch) + 1 for v in values for ch in v], dtype=torch.long)
    lens = torch.tensor([len(v) for v in values], dtype=torch.long)
    steps = torch.full((lp.shape[0],), lp.shape[1], dtype=torch.long)
    return F.ctc_loss(lp.transpose(0, 1), flat, steps, lens, blank=0, reduction="none",
                      zero_infinity=True)


def sample_line(fd: StringFieldBlank, bank: DigitBank, rng: np.random.Generator
                ) -> tuple[np.ndarray, str]:
    """Write one random string into a blank string field and return the string reader's
    input for it, as the pipeline would cut it, with its value."""
    f = fd.field
    s = round(FILL_DPI / WORK_DPI)
    n = int(rng.integers(1, (f.max_digits or 7) + 1))
    value = "".join(str(int(d)) for d in rng.integers(0, 10, n))
    pen = sample_pen(rng, color_page=True)
    canvas = fd.region_fill.copy()
    ox, oy = (v * s for v in fd.origin)
    for p, cx, cy in layout_string(f, value, bank, pen, rng, FILL_DPI):
        composite(canvas, p, cx - ox, cy - oy, pen.color)
    image, _ = scan_region(fd, canvas, rng)
    return string_line(field_ink(image, fd.template, f)), value


def write_lines(fields: list[StringFieldBlank], sample: LineSampler, bank: DigitBank,
                strings: int, seed: int, width: int, what: str
                ) -> tuple[np.ndarray, list[str]]:
    """``(strings, 32, width)`` uint8 lines and their values, ``sample`` called on the
    ``fields`` in turn (the string reader's data, and ``models.boxlines``')."""
    from rich.progress import track

    rng = np.random.default_rng(seed)
    x = np.zeros((strings, LINE_HEIGHT, width), np.uint8)
    y: list[str] = []
    for i in track(range(strings), description=f"writing {what}"):
        x[i], v = sample(fields[i % len(fields)], bank, rng)
        y.append(v)
    return x, y


def make_lines(bank: DigitBank, strings: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """``(N, 32, 160)`` uint8 lines and their values from ``strings`` written strings."""
    return write_lines(string_field_blanks(), sample_line, bank, strings, seed, LINE_WIDTH,
                       "strings")


def fit_ctc_temperature(logits: torch.Tensor, values: list[str]) -> float:
    """The logit temperature minimizing the mean sequence NLL (grid 0.5-2, then refined)."""
    def loss(t: float) -> float:
        return float(ctc_nll(logits / t, values).mean())

    grid = np.exp(np.linspace(np.log(0.5), np.log(2.0), 25))
    best = float(min(grid, key=loss))
    fine = best * np.exp(np.linspace(-0.06, 0.06, 13))
    return float(min(fine, key=loss))


STRING_INK = ("whole string field, white-on-black, height 32, left-aligned in width 160 "
              "(normalize_line)")


def train_lines(x: np.ndarray, y: list[str], *, epochs: int = 8, seed: int = 21,
                val_fraction: float = 0.05, arch: str = "stringnet", version: str = VERSION,
                ink: str = STRING_INK) -> tuple[nn.Module, Contract, dict[str, float]]:
    """Train a CTC line reader (``arch``: ``stringnet``, or ``boxnet`` for
    ``models.boxlines``) on ``(N, 32, W)`` lines; temperature and accuracy on a held-out
    share."""
    rng, val, tr = seeded_split(len(x), val_fraction, seed)
    contract = Contract(arch=arch, input_size=LINE_HEIGHT, fit_box=int(x.shape[2]),
                        mean=0.0, std=1.0, labels=LABELS, version=version, ink=ink)
    model = create_model(arch)
    xt = torch.from_numpy(x)
    bs = 128
    steps = epochs * math.ceil(len(tr) / bs)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps,
                                                pct_start=0.15)
    from rich.progress import Progress

    with Progress() as progress:
        task = progress.add_task("training stringnet", total=steps)
        for _ in range(epochs):
            model.train()
            perm = rng.permutation(tr)
            for b in range(0, len(perm), bs):
                idx = perm[b : b + bs]
                inp = contract.to_input(xt[idx])
                # A line sits anywhere in its box, and pens differ in darkness.
                shift = int(rng.integers(0, 8))
                if shift:
                    inp = torch.roll(inp, shift, dims=3)
                inp = inp * float(rng.uniform(0.7, 1.3))
                loss = ctc_nll(model(inp), [y[i] for i in idx]).mean()
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                opt.step()
                sched.step()
                progress.advance(task)
    model.eval()
    with torch.inference_mode():
        logits = torch.cat([model(contract.to_input(xt[val[i : i + 512]]))
                            for i in range(0, len(val), 512)])
    yv = [y[i] for i in val]
    temperature = fit_ctc_temperature(logits, yv)
    stats = {
        "val_string_accuracy": float(np.mean([best_path(lp) == v for lp, v in
                                              zip(logits.numpy(), yv, strict=True)])),
        "val_nll": float(ctc_nll(logits / temperature, yv).mean()),
        "val_strings": float(len(val)),
        "train_strings": float(len(tr)),
        "temperature": temperature,
    }
    return model, contract.with_(temperature=temperature), stats


def main(argv: list[str] | None = None) -> int:
    """Generate lines from MNIST training digits, train, and save the string reader."""
    return run_recipe(argv, __doc__ or "", STRINGS_WEIGHTS, 40000, 8, 21, make_lines,
                      train_lines)


if __name__ == "__main__":
    raise SystemExit(main())
