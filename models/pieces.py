"""The piece verifier: is a candidate piece of a string field exactly one digit?

String fields are over-segmented (``pipeline.segment_string``): each group of touching ink
is offered whole and cut into 2, 3 or 4 pieces, and recognition picks one hypothesis per
group. The digit model alone is a poor judge of that choice: a "41" whose digits touch can
read as a confident 4, and the halves of a wide 0 as two confident digits. ``piecenet``
answers the question the digit model was never asked: *is this piece one whole digit?*

Its training data are the segmenter's own candidate pieces. Strings of MNIST **training**
digits are written into the shipped templates' string fields exactly as the synthesizer
writes them (``pipeline.handwriting.layout_string``), each digit also drawn on its own
layer so that every pixel's owner is known; the field is cut by the production code
(``field_ink`` → ``string_pieces``), and a piece is labelled "one digit" when ≥ 85 % of its
ink belongs to one digit and it holds ≥ 75 % of that digit's ink, "not one digit" when it
is clearly neither (pieces in between are left out). Pieces are normalized at field scale
(``pipeline.normalize.normalize_piece``), the same function the pipeline calls.

    python -m models.pieces --out models/piecenet.safetensors \
        [--strings 16000] [--epochs 6] [--seed 11]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from models.calibration import fit_temperature
from models.contract import Contract
from models.registry import create_model
from models.weights import PIECES_WEIGHTS, save_model
from pipeline.handwriting import FILL_DPI, DigitBank, composite, layout_string, sample_pen
from pipeline.normalize import normalize_piece
from pipeline.render import render_blank
from pipeline.segment import field_ink, string_field_height
from pipeline.segment_string import string_pieces
from pipeline.templates import WORK_DPI, FormField, Template, load_templates

LABELS = ("one digit", "not one digit")
VERSION = "piecenet-1.0"
ONE_SHARE, ONE_COVER = 0.85, 0.75  # "one digit": share of the piece's ink, of the digit's
NOT_SHARE, NOT_COVER = 0.70, 0.55  # "not one digit" below either
MARGIN_MM = 4.0
OWNER_MIN = 60  # layer value (of 255) from which a pixel belongs to a digit


@dataclass
class StringFieldBlank:
    """One string field and its blank surroundings at both resolutions."""

    template: Template
    field: FormField
    blank_work: np.ndarray  # gray page at WORK_DPI
    region_fill: np.ndarray  # RGB blank region at FILL_DPI (2x WORK_DPI)
    origin: tuple[int, int]  # region's top-left in WORK px


def field_blanks(kinds: tuple[str, ...] = ("string",)) -> list[StringFieldBlank]:
    """Every field of ``kinds`` in the shipped templates, blank, ready to be written into
    (the training data of the piece verifier, the string reader ``models.strings`` and the
    boxed-field reader ``models.boxlines``). The region is the field's boxes plus
    :data:`MARGIN_MM`."""
    out = []
    for t in load_templates(()):
        for f in t.fields:
            if f.kind not in kinds:
                continue
            rects = f.boxes_mm()
            x, y = min(r[0] for r in rects), min(r[1] for r in rects)
            x1 = max(r[0] + r[2] for r in rects) + MARGIN_MM
            y1 = max(r[1] + r[3] for r in rects) + MARGIN_MM
            px0, py0 = int(t.px(x - MARGIN_MM)), int(t.px(y - MARGIN_MM))
            px1, py1 = int(t.px(x1)) + 1, int(t.px(y1)) + 1
            s = round(FILL_DPI / WORK_DPI)  # 2: regions line up pixel for pixel
            fill = render_blank(t, FILL_DPI, color=True)[s * py0 : s * py1, s * px0 : s * px1]
            work = render_blank(t, WORK_DPI, color=True)[:, :, 0].copy()
            out.append(StringFieldBlank(t, f, work, fill.copy(), (px0, py0)))
    return out


def string_field_blanks() -> list[StringFieldBlank]:
    """Every string field of the shipped templates, blank (:func:`field_blanks`)."""
    return field_blanks(("string",))


def _label(piece_ink: np.ndarray, own: np.ndarray, totals: np.ndarray) -> int | None:
    """0 = one digit, 1 = not one digit, None = in between (not used)."""
    pix = own[(piece_ink > 0) & (own >= 0)]
    if pix.size == 0:
        return 1
    counts = np.bincount(pix, minlength=len(totals))
    j = int(counts.argmax())
    share = counts[j] / pix.size
    cover = counts[j] / max(int(totals[j]), 1)
    if share >= ONE_SHARE and cover >= ONE_COVER:
        return 0
    if share < NOT_SHARE or cover < NOT_COVER:
        return 1
    return None


def scan_region(fd: StringFieldBlank, canvas: np.ndarray, rng: np.random.Generator
                ) -> tuple[np.ndarray, tuple[int, int]]:
    """A light scan of a written field region (``canvas``, RGB at FILL_DPI): area downscale
    to WORK_DPI, blur and noise, pasted into the blank page. Returns the page at WORK_DPI
    and the region's size there ``(w, h)``."""
    s = round(FILL_DPI / WORK_DPI)
    size = (canvas.shape[1] // s, canvas.shape[0] // s)
    small = cv2.resize(canvas[:, :, 0], size, interpolation=cv2.INTER_AREA).astype(np.float32)
    gray = cv2.GaussianBlur(small, (3, 3), float(rng.uniform(0.3, 0.9)))
    np.add(gray, rng.normal(0.0, rng.uniform(1.0, 6.0), gray.shape), out=gray,
           casting="unsafe")
    image = fd.blank_work.copy()
    x0, y0 = fd.origin
    image[y0 : y0 + size[1], x0 : x0 + size[0]] = np.clip(gray, 0, 255).astype(np.uint8)
    return image, size


def sample_pieces(fd: StringFieldBlank, bank: DigitBank, rng: np.random.Generator
                  ) -> tuple[list[np.ndarray], list[int]]:
    """Write one random string into ``fd`` and label the segmenter's candidate pieces."""
    f, s = fd.field, round(FILL_DPI / WORK_DPI)
    n = int(rng.integers(2, 8)) if rng.random() < 0.9 else 1
    value = "".join(str(int(d)) for d in rng.integers(0, 10, n))
    pen = sample_pen(rng, color_page=True)
    canvas = fd.region_fill.copy()
    layers = np.zeros((n, *canvas.shape), np.uint8)
    ox, oy = fd.origin[0] * s, fd.origin[1] * s
    for i, (p, cx, cy) in enumerate(layout_string(f, value, bank, pen, rng, FILL_DPI)):
        composite(canvas, p, cx - ox, cy - oy, pen.color)
        composite(layers[i], p, cx - ox, cy - oy, (255, 255, 255))
    image, size = scan_region(fd, canvas, rng)
    own_l = np.stack([cv2.resize(ly[:, :, 0], size, interpolation=cv2.INTER_AREA)
                      for ly in layers])
    own = np.where(own_l.max(axis=0) >= OWNER_MIN, own_l.argmax(axis=0), -1)
    totals = np.bincount(own[own >= 0], minlength=n)
    x0, y0 = fd.origin
    fi = field_ink(image, fd.template, f)
    field_h = string_field_height(f)
    xs, ys = [], []
    for piece in string_pieces(fi, f, fd.template):
        if piece.empty or (piece.split == 0 and rng.random() > 0.3):
            continue  # lone groups are mostly plain digits: keep a sample of them
        bx, by, bw, bh = piece.bbox
        sub = np.full(piece.ink.shape, -1, np.int64)
        rx, ry = bx - x0, by - y0
        h = min(bh, own.shape[0] - ry)
        w = min(bw, own.shape[1] - rx)
        if rx >= 0 and ry >= 0 and h > 0 and w > 0:
            sub[:h, :w] = own[ry : ry + h, rx : rx + w]
        label = _label(piece.ink, sub, totals)
        if label is not None:
            xs.append(normalize_piece(piece.ink, field_h))
            ys.append(label)
    return xs, ys


def make_dataset(bank: DigitBank, strings: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 28, 28)`` uint8 pieces and ``(N,)`` labels from ``strings`` written strings."""
    from rich.progress import track

    rng = np.random.default_rng(seed)
    fields = string_field_blanks()
    xs: list[np.ndarray] = []
    ys: list[int] = []
    for i in track(range(strings), description="writing and cutting strings"):
        x, y = sample_pieces(fields[i % len(fields)], bank, rng)
        xs += x
        ys += y
    return np.stack(xs), np.asarray(ys, np.int64)


def seeded_split(n: int, val_fraction: float, seed: int
                 ) -> tuple[np.random.Generator, np.ndarray, np.ndarray]:
    """Seed torch and numpy for a training run and hold out ``val_fraction`` of ``n``
    samples: ``(rng, validation indices, training indices)``."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_val = max(1, int(val_fraction * n))
    return rng, order[:n_val], order[n_val:]


def train_pieces(x: np.ndarray, y: np.ndarray, *, epochs: int = 4, seed: int = 7,
                 val_fraction: float = 0.1) -> tuple[torch.nn.Module, Contract, dict[str, float]]:
    """Train ``piecenet`` on labelled pieces; temperature fitted on a held-out tenth."""
    rng, val, tr = seeded_split(len(x), val_fraction, seed)
    contract = Contract(arch="piecenet", labels=LABELS, version=VERSION,
                        ink="white-on-black piece at field scale (normalize_piece), centred")
    model = create_model("piecenet")
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y)
    steps = epochs * (len(tr) // 256 + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    model.train()
    for _ in range(epochs):
        perm = torch.from_numpy(rng.permutation(tr))
        for b in range(0, len(perm), 256):
            idx = perm[b : b + 256]
            inp = contract.to_input(xt[idx])
            if rng.random() < 0.5:  # a mirrored piece is as (not) one digit as the original
                inp = inp.flip(-1)
            loss = F.cross_entropy(model(inp), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.inference_mode():
        logits = torch.cat([model(contract.to_input(xt[val[i : i + 1024]]))
                            for i in range(0, len(val), 1024)])
    temperature = fit_temperature(logits, yt[val])
    pred = logits.argmax(1)
    stats = {
        "val_accuracy": float((pred == yt[val]).float().mean()),
        "val_pieces": float(len(val)),
        "train_pieces": float(len(tr)),
        "share_not_one": float(y.mean()),
        "temperature": temperature,
    }
    return model, contract.with_(temperature=temperature), stats


def run_recipe(argv: list[str] | None, doc: str, out: Path, strings: int, epochs: int,
               seed: int, make: Callable[[DigitBank, int, int], tuple[Any, Any]],
               train: Callable[..., tuple[torch.nn.Module, Contract, dict[str, float]]]
               ) -> int:
    """The command line shared by the string-field recipes (this one, ``models.strings``):
    write ``--strings`` strings of the training digits with ``make``, ``train`` on them,
    save weights and card (with the recipe's settings and timings)."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--out", type=Path, default=out)
    ap.add_argument("--digits", default="mnist", help="digit source (training split)")
    ap.add_argument("--strings", type=int, default=strings)
    ap.add_argument("--epochs", type=int, default=epochs)
    ap.add_argument("--seed", type=int, default=seed)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    from pipeline.synth import load_bank

    torch.set_num_threads(a.threads)
    cv2.setNumThreads(1)
    t0 = time.perf_counter()
    x, y = make(load_bank(a.digits, "train"), a.strings, a.seed)
    t1 = time.perf_counter()
    model, contract, stats = train(x, y, epochs=a.epochs, seed=a.seed)
    t2 = time.perf_counter()
    card = {"training": {"digits": f"{a.digits}:train", "strings": a.strings,
                         "epochs": a.epochs, "seed": a.seed,
                         "data_seconds": round(t1 - t0, 1),
                         "train_seconds": round(t2 - t1, 1)}, **stats}
    save_model(model, contract, a.out, card)
    print({k: round(v, 4) for k, v in stats.items()}, f"data {t1 - t0:.0f} s, "
          f"training {t2 - t1:.0f} s → {a.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Generate pieces from MNIST training digits, train, and save the verifier."""
    return run_recipe(argv, __doc__ or "", PIECES_WEIGHTS, 16000, 6, 11, make_dataset,
                      train_pieces)


if __name__ == "__main__":
    raise SystemExit(main())
