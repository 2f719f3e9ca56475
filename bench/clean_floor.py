"""The review-rate floor of the digit model alone: the issue-5 fields read from clean digits.

The pipeline's review rate mixes three causes: scan damage (blur, JPEG, fax, stamps),
segmentation doubts (touching digits, ambiguous cuts) and digits the model is unsure of
however cleanly they are cut. This module measures the last one by itself. It takes the
synthetic pages' truth (the same fields, values and templates the pipeline read), writes
every digit of every value with a random MNIST *test* image of that digit, exactly as
MNIST ships it (no page, no scan, no segmentation), reads those images with the same reader
and decides each field with the same :func:`pipeline.validate.decide_field` (same rules,
same threshold). So its review rate and accepted-field error are what the pipeline would
give with perfect scanning and segmentation: a floor that only a better digit model can
lower.

``--render`` inserts the synthetic handwriting between the two: each MNIST image is written
as :mod:`pipeline.handwriting` writes it onto a form (a random pen's stroke width and
slant, the digit's size in its box, a squeeze in a narrow box) at the fill resolution,
shrunk to the working resolution and normalized like a crop, still without a page, scan
or segmentation. The step from the clean to the rendered floor is what the writers'
variation costs; the step from the rendered floor to the pipeline is what scanning and
segmentation cost.

    python -m bench.clean_floor --truth SCANS/truth [--render] [--draws 5] [--seed 0] [--json]

``bench.pipeline_accuracy`` runs it on its own pages and reports it beside the pipeline.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

DRAWS = 5
THRESHOLDS = (0.8, 0.9, 0.95, 0.98)


def _truth_fields(truth_dir: Path) -> list[tuple[str, str, str]]:
    """(template id, field name, value) of every field of every truth page ('' = empty)."""
    from pipeline.score import load_truth

    return [(str(tp["template"]), str(name), str(tf.get("value") or ""))
            for tp in load_truth(truth_dir).values()
            for name, tf in tp.get("fields", {}).items()]


def _rendered(src: np.ndarray, f: Any, rng: np.random.Generator) -> np.ndarray:
    """One MNIST image written as the synthetic forms write it in field ``f``, as a crop."""
    import cv2

    from pipeline.handwriting import FILL_DPI, box_patch, ink_patch, sample_pen
    from pipeline.normalize import normalize_digit
    from pipeline.templates import WORK_DPI

    ys, xs = np.nonzero(src > 30)
    digit = src[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.float32) / 255.0
    k = FILL_DPI / 25.4
    _, _, w, h = (v * k for v in f.boxes_mm()[0])
    pen = sample_pen(rng, False)
    # A string field's digit height as pipeline.handwriting.layout_string draws it.
    patch = (ink_patch(digit, h * rng.uniform(0.5, 0.8), pen, rng) if f.kind == "string"
             else box_patch(digit, w, h, pen, rng))
    f_work = WORK_DPI / FILL_DPI
    small = cv2.resize(patch, None, fx=f_work, fy=f_work, interpolation=cv2.INTER_AREA)
    return normalize_digit(np.clip(small * 255.0, 0, 255).astype(np.uint8))


def clean_floor(truth_dir: Path, model: str = "default", second: str = "auto",
                draws: int = DRAWS, seed: int = 0, render: bool = False) -> dict[str, Any]:
    """Review rate and accepted-field error of the truth's fields written with clean digits.

    ``review_rate`` is over all fields (empty ones included, as ``formdigits score`` counts
    them), ``review_rate_nonempty`` over the written ones (as the pipeline bench's threshold
    sweep counts them); each draw samples new MNIST test images for the same values.
    Returns per threshold the mean over draws and each draw's value, plus the digits' own
    numbers.
    """
    from models.datasets import load_digits
    from models.second_opinion import load_reader
    from pipeline.templates import load_templates
    from pipeline.validate import STATUS_REVIEW, decide_field

    fields = _truth_fields(truth_dir)
    templates = {t.id: t for t in load_templates(())}
    spec = {(t.id, f.name): f for t in templates.values() for f in t.fields}
    test = load_digits("mnist", "test")
    by_class = [np.flatnonzero(test.labels == d) for d in range(10)]
    reader = load_reader(model, second, device="cpu", batch_size=1024)
    values = "".join(v for *_, v in fields)
    want = np.array([int(c) for c in values], np.int64)
    owner = [spec[(t, n)] for t, n, v in fields for _ in v]  # each digit's field
    rng = np.random.default_rng(seed)
    runs: dict[float, list[tuple[float, float, float]]] = {t: [] for t in THRESHOLDS}
    written = sum(1 for *_, v in fields if v)
    digit_acc, digit_below, digit_unsure = [], [], []
    for _ in range(draws):
        idx = np.array([rng.choice(by_class[d]) for d in want], np.int64)
        images = test.images[idx]
        if render:
            images = np.stack([_rendered(im, f, rng) for im, f in zip(images, owner,
                                                                     strict=True)])
        probs = reader.predict_proba(images) if len(idx) else np.zeros((0, 10))
        digit_acc.append(float((probs.argmax(1) == want).mean()))
        digit_below.append(float((probs.max(1) < 0.99).mean()))
        digit_unsure.append(float((probs.max(1) < 0.95).mean()))
        for t in THRESHOLDS:
            review = accepted = wrong = 0
            at = 0
            for template, name, value in fields:
                p = probs[at : at + len(value)]
                at += len(value)
                d = decide_field(spec[(template, name)], p, t)
                if d.status == STATUS_REVIEW:
                    review += 1
                elif value:
                    accepted += 1
                    wrong += d.value != value
            runs[t].append((review / len(fields), review / max(written, 1),
                             wrong / max(accepted, 1)))
    return {
        "fields": len(fields), "written_fields": written, "digits": len(want),
        "draws": draws, "seed": seed, "render": render, "model": model, "second_opinion": second,
        "digit_accuracy": float(np.mean(digit_acc)),
        "digits_below_0.99": float(np.mean(digit_below)),
        "digits_below_0.95": float(np.mean(digit_unsure)),
        "by_threshold": [
            {"threshold": t, "review_rate": float(np.mean([r for r, _, _ in v])),
             "review_rate_nonempty": float(np.mean([r for _, r, _ in v])),
             "accepted_error": float(np.mean([e for *_, e in v])),
             "review_rate_each": [round(r, 4) for r, _, _ in v],
             "review_rate_nonempty_each": [round(r, 4) for _, r, _ in v],
             "accepted_error_each": [round(e, 5) for *_, e in v]}
            for t, v in runs.items()],
    }


def markdown(floors: dict[str, dict[str, Any]],
             pipeline_sweep: list[dict[str, Any]] | None = None) -> str:
    """A table of the floors per threshold (``{name: clean_floor result}``), beside the
    pipeline's sweep when given; review rates over written fields, as the sweep counts them
    (each floor's review rate with its range over the draws)."""
    pipe = {round(x["threshold"], 2): x for x in pipeline_sweep or []}
    names = list(floors)
    head = "| threshold | " + " | ".join(f"{n}: review rate | {n}: accepted error"
                                          for n in [*names, "pipeline"]) + " |\n"
    rows = []
    for i, t in enumerate(THRESHOLDS):
        cells = []
        for n in names:
            x = floors[n]["by_threshold"][i]
            each = x["review_rate_nonempty_each"]
            cells.append(f"{x['review_rate_nonempty']:.4f} ({min(each):.4f}–{max(each):.4f}) "
                         f"| {x['accepted_error']:.4f}")
        p = pipe.get(round(t, 2))
        cells.append(f"{p['review_rate']:.4f} | {p['accepted_error']:.4f}" if p else "– | –")
        rows.append(f"| {t:.2f} | " + " | ".join(cells) + " |")
    return head + "|---" * (1 + 2 * (len(names) + 1)) + "|\n" + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--truth", type=Path, required=True, help="a synth truth folder")
    ap.add_argument("--model", default="default")
    ap.add_argument("--second-opinion", default="auto")
    ap.add_argument("--draws", type=int, default=DRAWS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--render", action="store_true",
                    help="write the digits with the synthetic handwriting first")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    r = clean_floor(a.truth, a.model, a.second_opinion, a.draws, a.seed, a.render)
    print(json.dumps(r, indent=2) if a.json else markdown({"floor": r}))


if __name__ == "__main__":
    main()
