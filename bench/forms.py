"""Forms benchmark (issue 4): registration and segmentation on synthetic scans.

Pages are made in memory with the ``formdigits synth`` machinery
(:func:`pipeline.synth.make_page`: real handwritten test digits, stamps, stray marks,
skew, scale, perspective, blur, noise, uneven light, colour or gray), then passed through
a file-format step (lossless, JPEG, or bilevel fax), converted to gray the way ingest
does (red channel), and some are turned to landscape. Pages of layouts that are not
templates are mixed in. Measured against the truth:

- pages registered correctly (right template and orientation, upside down included);
- unknown-layout pages flagged (RegistrationError);
- boxes/comb/date digits recovered as exactly one non-empty crop in their box;
- empty boxes called empty;
- string fields with the right digit count (no model: a group's ``split=0`` reading or
  its heuristic ``"likely"`` hypothesis; ``string_count_oracle`` = some choice of
  hypotheses gives the right count, the most a model choosing per group can reach;
  ``string_digit_count_model`` = the count after ``pipeline.assemble.choose_crops`` with
  the digit model and the piece verifier, as the pipeline reads them — the target metric;
  needs ``--model``).

Run: ``python -m bench.forms --pages 200 --seed 90210 --digits mnist --split test --json``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench.forms_pages import blank_scan, expected_orientation, to_scan_gray, unknown_page
from pipeline.errors import DataNotFoundError, RegistrationError
from pipeline.records import FieldCrop, Page, PageKey
from pipeline.register import register_page
from pipeline.segment import segment_page
from pipeline.segment_string import PATH_SPLIT
from pipeline.templates import Template, load_templates

DOC = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- forms:begin -->", "<!-- forms:end -->"
TARGETS = {
    "pages_registered": 99.5,
    "unknown_flagged": 100.0,
    "one_crop_per_digit": 99.8,
    "empty_as_empty": 99.9,
    "string_digit_count_model": 98.0,
}


def string_counts(crops: Sequence[FieldCrop]) -> tuple[int, set[int]]:
    """(heuristic digit count, every count some choice of split hypotheses gives)."""
    by_group: dict[int, set[int]] = {}
    likely: dict[int, int] = {}
    for c in crops:
        if c.empty:
            continue
        # split ids k + PATH_SPLIT * j are variants (other cut positions) of k pieces
        by_group.setdefault(c.group, set()).add(c.split % PATH_SPLIT)
        if c.split == 0 or "likely" in c.flags:
            likely[c.group] = c.split
    # split 0 (the only reading) and split 1 both mean one digit.
    count = sum(max(1, likely.get(g, 1)) for g in by_group)
    options: set[int] = {0}
    for splits in by_group.values():
        ks = [max(1, k) for k in splits]
        options = {a + k for a in options for k in ks}
    return count, options


def _model_count(crops: Sequence[FieldCrop], predictor: Any) -> int:
    """Digit count after the pipeline's own split choice (pipeline.assemble) by the model."""
    from pipeline.assemble import choose_crops

    ink = [c for c in crops if not c.empty]
    if not ink:
        return 0
    probs = predictor.predict_proba(np.stack([c.pixels for c in ink]))
    return len(choose_crops(ink, probs))


def _score_page(
    crops: list[FieldCrop], t: Template, truth: dict[str, Any], acc: Counter, predictor: Any
) -> None:
    by_field: dict[str, list[FieldCrop]] = {}
    for c in crops:
        by_field.setdefault(c.field, []).append(c)
    for f in t.fields:
        ft = truth["fields"][f.name]
        fc = sorted(by_field.get(f.name, []), key=lambda c: c.position)
        if f.kind == "string":
            count, options = string_counts(fc)
            acc["string_total"] += 1
            acc["string_ok"] += int(count == ft["digits"])
            acc["string_oracle"] += int(ft["digits"] in options)
            if predictor is not None:
                acc["string_model_ok"] += int(_model_count(fc, predictor) == ft["digits"])
            continue
        fc = [c for c in fc if c.split == 0]  # the default cut of touching digits
        boxes = [t.px(b[0]) for b in f.boxes_mm()], [t.px(b[0] + b[2]) for b in f.boxes_mm()]
        for i, want in enumerate(ft["boxes"]):
            crop = fc[i] if i < len(fc) else None
            if want is None:
                acc["empty_total"] += 1
                acc["empty_ok"] += int(crop is not None and crop.empty)
            else:
                acc["digit_total"] += 1
                ok = crop is not None and not crop.empty
                if ok and crop is not None:
                    cx = crop.bbox[0] + crop.bbox[2] / 2
                    ok = boxes[0][i] - 6 <= cx <= boxes[1][i] + 6
                acc["digit_ok"] += int(ok)


def _load_model(spec: str | None) -> tuple[Any, str]:
    """The digit model for the model-chosen string count, or None with the reason."""
    if not spec:
        return None, "not requested"
    try:
        import torch

        from models.predictor import Predictor

        torch.set_num_threads(1)
        p = Predictor.load(spec, device="cpu")
    except Exception as exc:  # any failure only drops the optional metric
        return None, f"model unavailable: {exc}"
    return p, str(p.model_version)


def run(
    pages: int, seed: int, digits: str, split: str, unknown: int, model: str | None = "default",
    piece_model: str = "default",
) -> dict[str, Any]:
    """Synthesize, register, segment and score; returns the metrics.

    Segmentation time includes the string-piece verifier (``piece_model``, 'none' = off;
    in the pipeline it runs in the main process, beside the digit CNN).
    """
    from pipeline.pieces import piece_scorer, score_pieces
    from pipeline.render import render_blank
    from pipeline.synth import load_bank, make_page

    scorer = piece_scorer(piece_model)

    bank = load_bank(digits, split)
    predictor, model_note = _load_model(model)
    templates = load_templates()
    blanks = {t.id: render_blank(t, 300.0, color=True) for t in templates}
    acc: Counter = Counter()
    reg_ms: list[float] = []
    reg_ms_300: list[float] = []
    methods: Counter = Counter()
    seg_ms: list[float] = []
    failures: list[str] = []
    n_blank = max(4, pages // 10)
    for i in range(pages + n_blank):
        t = templates[i % len(templates)]
        rng = np.random.default_rng([seed, i])
        dpi = int(rng.choice([100, 150, 200, 200, 300, 300]))
        color = bool(rng.random() < 0.5)
        if i < pages:
            img, truth = make_page(t, blanks[t.id], bank, rng, dpi=dpi, color=color)
        else:  # unfilled forms: every box must come out empty
            img, truth = blank_scan(t, blanks[t.id], rng, dpi, color)
        gray, turn = to_scan_gray(img, rng, dpi)
        want = expected_orientation(bool(truth["upside_down"]), turn)
        page = Page(PageKey(f"bench_{i:04d}", "", 0), gray, float(dpi))
        t0 = time.perf_counter()
        try:
            reg = register_page(page, templates)
        except RegistrationError as exc:
            failures.append(f"page {i}: {exc}")
            continue
        finally:
            reg_ms.append((time.perf_counter() - t0) * 1000)
            if dpi == 300:
                reg_ms_300.append(reg_ms[-1])
        methods[reg.method] += 1
        good = reg.template_id == t.id and reg.orientation == want
        acc["pages_ok"] += int(good)
        if not good:
            failures.append(f"page {i}: got {reg.template_id}/{reg.orientation}, "
                            f"want {t.id}/{want}")
            continue
        t1 = time.perf_counter()
        crops = score_pieces(segment_page(reg, t), scorer)
        seg_ms.append((time.perf_counter() - t1) * 1000)
        _score_page(crops, t, truth, acc, predictor)
    for j in range(unknown):
        rng = np.random.default_rng([seed, 1_000_000 + j])
        img = unknown_page(rng, templates, j)
        try:
            reg = register_page(Page(PageKey(f"unknown_{j}", "", 0), img, None), templates)
            failures.append(f"unknown {j} (kind {j % 4}) accepted as {reg.template_id} "
                            f"score {reg.score:.2f}")
        except RegistrationError:
            acc["unknown_ok"] += 1

    def pct(a: str, b: int) -> float:
        return round(100.0 * acc[a] / b, 2) if b else float("nan")

    return {
        "pages": pages,
        "blank_pages": n_blank,
        "unknown_pages": unknown,
        "seed": seed,
        "digits": f"{digits}:{split}",
        "pages_registered": pct("pages_ok", pages + n_blank),
        "unknown_flagged": pct("unknown_ok", unknown),
        "one_crop_per_digit": pct("digit_ok", acc["digit_total"]),
        "empty_as_empty": pct("empty_ok", acc["empty_total"]),
        "string_digit_count": pct("string_ok", acc["string_total"]),
        "string_count_oracle": pct("string_oracle", acc["string_total"]),
        "string_digit_count_model": (
            pct("string_model_ok", acc["string_total"]) if predictor is not None else None
        ),
        "model": model_note,
        "piece_model": piece_model,
        "counts": {k: int(v) for k, v in sorted(acc.items())},
        "register_ms_median": round(float(np.median(reg_ms)), 1) if reg_ms else None,
        "register_ms_p95": round(float(np.percentile(reg_ms, 95)), 1) if reg_ms else None,
        "register_ms_300dpi_median": (
            round(float(np.median(reg_ms_300)), 1) if reg_ms_300 else None
        ),
        "segment_ms_median": round(float(np.median(seg_ms)), 1) if seg_ms else None,
        "methods": dict(methods),
        "failures": failures[:30],
        "opencv": cv2.__version__,
    }


def write_doc(res: dict[str, Any], cmd: str, path: Path = DOC) -> None:
    """Create or update the "Forms (issue 4)" section of docs/BENCHMARKS.md."""
    rows = [
        ("Pages registered (template + orientation)", "pages_registered", "≥ 99.5 %"),
        ("Unknown layouts flagged", "unknown_flagged", "100 %"),
        ("Box digits → exactly one non-empty crop", "one_crop_per_digit", "≥ 99.8 %"),
        ("Empty boxes called empty", "empty_as_empty", "≥ 99.9 %"),
        ("String fields: digit count as the pipeline reads them (digit model + piece "
         "verifier choose the splits)", "string_digit_count_model", "≥ 98 %"),
        ("String fields: digit count, shape heuristic alone (no model)",
         "string_digit_count", "–"),
        ("String fields: count reachable by split choice (ceiling)", "string_count_oracle",
         "–"),
    ]
    c = res["counts"]
    lines = [
        BEGIN,
        "## Forms (issue 4)",
        "",
        f"Registration + segmentation on {res['pages']} synthetic filled scans "
        f"({res['digits']} digits, seed {res['seed']}), {res['blank_pages']} unfilled scans "
        f"and {res['unknown_pages']} pages of unknown layouts; one CPU thread "
        "(cv2.setNumThreads(1)). Pages come from `pipeline.synth.make_page` (skew ±5°, "
        "scale 0.9-1.1, perspective, blur, noise, uneven light, stamps, stray marks, "
        "5 % upside down) at 100-300 dpi, half colour (gray = red channel, as ingest), "
        "then 35 % JPEG, 10 % bilevel fax (≥ 200 dpi), 10 % turned to landscape.",
        "",
        "| Metric | Result | Target |",
        "|---|---|---|",
        *[f"| {name} | {res[key]} % | {tgt} |" for name, key, tgt in rows if res[key] is not None],
        f"| Registration time, median / p95 | {res['register_ms_median']} / "
        f"{res['register_ms_p95']} ms | – |",
        f"| Registration time, 300-dpi A4 pages, median | {res['register_ms_300dpi_median']} ms "
        "| < 60 ms |",
        f"| Segmentation time per page, median | {res['segment_ms_median']} ms | – |",
        "",
        f"Counts: digits {c.get('digit_ok', 0)}/{c.get('digit_total', 0)}, empty boxes "
        f"{c.get('empty_ok', 0)}/{c.get('empty_total', 0)}, string fields "
        f"{c.get('string_model_ok', 0)}/{c.get('string_total', 0)} (heuristic alone "
        f"{c.get('string_ok', 0)}). Models: {res['model']}, piece verifier "
        f"{res.get('piece_model', 'default')}.",
        "",
        "```",
        cmd,
        "```",
        END,
    ]
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    block = "\n".join(lines)
    if BEGIN in text and END in text:
        a, b = text.index(BEGIN), text.index(END) + len(END)
        text = text[:a] + block + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m bench.forms", description=__doc__.split("\n")[0])
    ap.add_argument("--pages", type=int, default=200)
    ap.add_argument("--seed", type=int, default=90210)
    ap.add_argument("--digits", default="mnist")
    ap.add_argument("--split", default="test", choices=["train", "test"])
    ap.add_argument("--unknown", type=int, default=None, help="unknown-layout pages (pages/10)")
    ap.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ap.add_argument("--model", default="default",
                    help="weights for the model-chosen string count ('' = skip)")
    ap.add_argument("--piece-model", default="default",
                    help="string-piece verifier weights ('none' = choose splits without it)")
    ap.add_argument("--no-doc", action="store_true", help="do not update docs/BENCHMARKS.md")
    a = ap.parse_args(argv)
    cv2.setNumThreads(1)
    unknown = a.unknown if a.unknown is not None else max(8, a.pages // 10)
    try:
        res = run(a.pages, a.seed, a.digits, a.split, unknown, a.model or None, a.piece_model)
    except DataNotFoundError as exc:
        print(f"skipped: digit set '{a.digits}' not available ({exc}); set FORMDIGITS_DATA "
              "to the folder holding mnist/", file=sys.stderr)
        return 0
    cmd = "python -m bench.forms " + " ".join(argv if argv is not None else sys.argv[1:])
    if not a.no_doc:
        write_doc(res, cmd)
    if a.json:
        print(json.dumps(res, indent=1))
    else:
        for k in TARGETS:
            if res[k] is not None:
                print(f"{k:24s} {res[k]:7.2f} %   (target {TARGETS[k]} %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
