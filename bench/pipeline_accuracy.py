"""Issue 5 benchmark: end-to-end reading accuracy on synthetic pages of MNIST *test* digits.

Synthesizes pages (a held-out seed; see --seed), runs the real pipeline, scores the
results against the synth truth, and writes the "Pipeline accuracy (issue 5)" section of
docs/BENCHMARKS.md plus bench/pipeline_results.json.

    python -m bench.pipeline_accuracy --pages 200 --seed 6160 [--model FILE]
        [--second-opinion auto|none|FILE] [--json] [--no-doc]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- pipeline:begin -->", "<!-- pipeline:end -->"


def run_bench(pages: int, seed: int, model: str, workdir: Path, second: str = "auto"
              ) -> dict[str, object]:
    """Synthesize, run and score; returns the score dict with timings."""
    from flows.cli import main as cli

    scans, out = workdir / "scans", workdir / "results"
    t0 = time.perf_counter()
    rc = cli(["synth", "--digits", "mnist", "--split", "test", "--pages", str(pages),
              "--seed", str(seed), "--out", str(scans)])
    if rc:
        raise SystemExit(f"synth failed ({rc}); is MNIST available (FORMDIGITS_DATA)?")
    t1 = time.perf_counter()
    rc = cli(["run", str(scans), "--out", str(out), "--model", model,
              "--second-opinion", second])
    if rc:
        raise SystemExit(f"run failed ({rc})")
    t2 = time.perf_counter()
    from pipeline.score import score_results

    result = score_results(out, scans / "truth")
    result.update(threshold_sweep(out, scans / "truth"))
    from bench.clean_floor import clean_floor

    # The same fields written with clean MNIST test digits: what the digit model alone
    # costs in review, so the rest is known to come from scanning and segmentation.
    result["clean_floor"] = clean_floor(scans / "truth", model, second)
    # ... and with the synthetic handwriting (pens, slant, size) but no scan or segmentation.
    result["rendered_floor"] = clean_floor(scans / "truth", model, second, render=True)
    result["by_dpi"] = by_dpi(out, scans / "truth")
    result["synth_seconds"] = round(t1 - t0, 1)
    result["run_seconds"] = round(t2 - t1, 1)
    result["model"] = model
    result["second_opinion"] = second
    result["seed"] = seed
    return result


SWEEP = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98)


def threshold_sweep(out: Path, truth_dir: Path) -> dict[str, object]:
    """What other ``--review-below`` values would give, and why fields went to review.

    A field is accepted at threshold t when its confidence is >= t and it has no review
    reason other than ``low_confidence`` (validation and segmentation doubts stay; notes
    such as ``corrected_by_validation`` with a clear margin are no doubt).
    """
    from collections import Counter

    from pipeline.score import truth_pairs
    from pipeline.validate import NOTE_REASONS

    rows = []
    reasons: Counter[str] = Counter()
    for r, tv in truth_pairs(out, truth_dir):
        other = [x for x in r.reasons if x != "low_confidence" and x not in NOTE_REASONS]
        rows.append((float(r.confidence), bool(other), r.value == tv, r.value == "" == tv))
        if r.status == "needs_review":
            reasons.update(f"{r.kind}: {x}" for x in r.reasons)
    sweep = []
    for t in SWEEP:
        acc = [ok for c, doubt, ok, empty in rows if c >= t and not doubt and not empty]
        nonempty = sum(1 for *_, empty in rows if not empty)
        sweep.append({"threshold": t, "review_rate": 1 - len(acc) / max(nonempty, 1),
                      "accepted_error": (len(acc) - sum(acc)) / max(len(acc), 1)})
    return {"threshold_sweep": sweep, "review_reasons": dict(reasons.most_common())}


DPI_BANDS = ((0, 200), (200, 250), (250, 275), (275, 10_000))


def by_dpi(out: Path, truth_dir: Path) -> list[dict[str, object]]:
    """Review rate and unsure digits (< 0.95) by the scan's dpi band (boxed fields only for
    the digits: a string's unsure cut pieces are a segmentation matter)."""
    from pipeline.score import load_truth
    from pipeline.store import read_table

    dpi = {(stem, page): int(tp.get("dpi") or 0)
           for (stem, page), tp in load_truth(truth_dir).items()}
    fields, digits = read_table(out, "fields"), read_table(out, "digits")
    kind = {(s, int(p), f): k for s, p, f, k in zip(
        fields.source, fields.page, fields.field, fields.kind, strict=True)}

    def band(source: str, page: int) -> int:
        d = dpi.get((Path(source).stem, int(page)), 0)
        return next(i for i, (lo, hi) in enumerate(DPI_BANDS) if lo <= d < hi)

    n = len(DPI_BANDS)
    n_fields, n_review, n_digits, n_unsure = [0] * n, [0] * n, [0] * n, [0] * n
    for s, p, st in zip(fields.source, fields.page, fields.status, strict=True):
        i = band(s, p)
        n_fields[i] += 1
        n_review[i] += st == "needs_review"
    for s, p, fl, c in zip(digits.source, digits.page, digits.field, digits.confidence,
                           strict=True):
        if kind.get((s, int(p), fl)) != "string":
            i = band(s, p)
            n_digits[i] += 1
            n_unsure[i] += float(c) < 0.95
    rows = []
    for i, (lo, hi) in enumerate(DPI_BANDS):
        label = f"< {hi}" if lo == 0 else f"{lo}–{hi - 1}" if hi < 10_000 else f"≥ {lo}"
        rows.append({"dpi": label, "fields": n_fields[i],
                     "review_rate": n_review[i] / max(n_fields[i], 1),
                     "boxed_digits": n_digits[i],
                     "unsure_digits": n_unsure[i] / max(n_digits[i], 1)})
    return rows


def markdown(r: dict[str, object], cmd: str) -> str:
    """The BENCHMARKS.md section."""
    rc = r["risk_coverage"]
    assert isinstance(rc, list)
    rows = "\n".join(
        f"| {x['threshold']:.2f} | {x['coverage']:.3f} | "
        + (f"{x['accepted_error']:.4f}" if x["accepted_error"] is not None else "–") + " |"
        for x in rc if x["threshold"] >= 0.5
    )
    pk = r["per_kind"]
    assert isinstance(pk, dict)
    kinds = "\n".join(
        f"| {k} | {v['n']} | {v['accuracy']:.4f} | {v['review_rate']:.4f} | "
        + (f"{v['accepted_error']:.4f}" if v["accepted_error"] is not None else "–") + " |"
        for k, v in pk.items())
    sw = r["threshold_sweep"]
    assert isinstance(sw, list)
    sweep = "\n".join(f"| {x['threshold']:.2f} | {x['review_rate']:.4f} | "
                      f"{x['accepted_error']:.4f} |" for x in sw)
    rr = r["review_reasons"]
    assert isinstance(rr, dict)
    floor = r.get("clean_floor")
    assert floor is None or isinstance(floor, dict)
    rendered = r.get("rendered_floor")
    assert rendered is None or isinstance(rendered, dict)
    floor_text = "" if floor is None else _floor_text(floor, rendered, sw, r)
    dpi_rows = r.get("by_dpi")
    assert dpi_rows is None or isinstance(dpi_rows, list)
    if dpi_rows:
        floor_text += _dpi_text(dpi_rows, floor)
    reasons = "\n".join(f"| {k} | {v} |" for k, v in rr.items())
    return f"""## Pipeline accuracy (issue 5)

{r['pages']} synthetic pages from MNIST **test** digits (seed {r['seed']}), both templates,
all formats; model `{r['model']}`, second opinion `{r.get('second_opinion', 'none')}`;
default review threshold.
Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()},
2 cores (shared machine).

| metric | result | target |
|---|---|---|
| pages registered | {r['pages_registered']}/{r['pages']} | all |
| digit accuracy | {r['digit_accuracy']:.4f} | ≥ 0.995 |
| field accuracy (all fields) | {r['field_accuracy']:.4f} | – |
| review rate | {r['review_rate']:.4f} | ≤ 0.08 |
| accepted-field error | {r['accepted_field_error']:.4f} | ≤ 0.003 |
| empty-field agreement | {r['empty_accuracy']:.4f} | – |
| run time (s) | {r['run_seconds']} | – |

By field kind (fields on registered pages):

| kind | fields | accuracy | review rate | accepted error |
|---|---|---|---|---|
{kinds}

Review threshold sweep (`--review-below`; a field is accepted when its confidence reaches
the threshold and nothing else doubts it; rates over non-empty fields):

| threshold | review rate | accepted error |
|---|---|---|
{sweep}

{floor_text}Why fields went to review at the default threshold (a field may have several reasons):

| kind: reason | fields |
|---|---|
{reasons}

Risk–coverage by confidence alone (fields accepted vs. wrong among accepted):

| threshold | coverage | accepted error |
|---|---|---|
{rows}

```
{cmd}
```
"""


def _floor_text(floor: dict[str, Any], rendered: dict[str, Any] | None,
                sweep: list[dict[str, Any]], r: dict[str, Any]) -> str:
    """The digit-model floors' paragraph and table (bench.clean_floor)."""
    from bench.clean_floor import markdown as floor_table

    floors = {"clean": floor, **({"rendered": rendered} if rendered else {})}

    def at_default(f: dict[str, Any]) -> str:
        x = next(x for x in f["by_threshold"] if abs(x["threshold"] - 0.95) < 1e-9)
        return (f"**{x['review_rate']:.4f}** review at {x['accepted_error']:.4f} accepted "
                f"error (digit accuracy {f['digit_accuracy']:.4f}, "
                f"{100 * f['digits_below_0.95']:.1f} % of the digits below 0.95)")

    lines = [f"- *clean*: {at_default(floor)};"]
    if rendered:
        lines.append(f"- *rendered*: {at_default(rendered)};")
    lines.append(f"- the pipeline: **{r['review_rate']:.4f}** review at "
                 f"{r['accepted_field_error']:.4f} (digit accuracy {r['digit_accuracy']:.4f}).")
    summary = "\n".join(lines)
    return f"""What the digit model alone costs (`bench.clean_floor`, same reader, same rules,
same `decide_field`, no page): the same {floor['fields']} fields and values, each digit a
random MNIST test image of it (mean of {floor['draws']} draws, {floor['digits']} digits
each), *clean* = as MNIST ships it; *rendered* = first written as the synthetic forms write
it (`pipeline.handwriting`: pen width, slant, size, squeezed in narrow boxes) and shrunk to
the working resolution, still without scan or segmentation. At the default threshold, over
all fields:

{summary}

Per threshold (rates over written fields, as in the sweep; ranges over the draws):

{floor_table(floors, sweep)}
"""


def _dpi_text(rows: list[dict[str, Any]], floor: dict[str, Any] | None) -> str:
    """Review rate and unsure boxed digits by scan resolution."""
    clean = ("" if floor is None else
             f" (clean MNIST test digits, same reader: {floor['digits_below_0.95']:.4f})")
    body = "\n".join(f"| {x['dpi']} | {x['fields']} | {x['review_rate']:.4f} | "
                     f"{x['boxed_digits']} | {x['unsure_digits']:.4f} |" for x in rows)
    return f"""By the scan's resolution (pages are scanned at 150–300 dpi): review rate, and the
share of digits of boxed fields read below 0.95{clean}:

| dpi | fields | review rate | boxed digits | below 0.95 |
|---|---|---|---|---|
{body}

"""


def write_section(text: str) -> None:
    """Replace (or append) this benchmark's section of docs/BENCHMARKS.md."""
    path = ROOT / "docs" / "BENCHMARKS.md"
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n{text}{END}\n"
    if BEGIN in doc:
        doc = doc[: doc.index(BEGIN)] + block + doc[doc.index(END) + len(END) + 1 :]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block
    path.write_text(doc)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description="End-to-end accuracy on MNIST-test pages")
    ap.add_argument("--pages", type=int, default=200)
    # 4242 served for development (tuning segmentation, flags, thresholds); 5150 was the
    # first held-out run, whose accepted errors led to the ambiguous-cut doubt; 6160 is
    # the reporting seed since (docs/BENCHMARKS.md keeps both results).
    ap.add_argument("--seed", type=int, default=6160)
    ap.add_argument("--model", default="default")
    ap.add_argument("--second-opinion", default="auto", help="auto, none or a paired file")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-doc", action="store_true")
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fd-bench-"))
    try:
        r = run_bench(a.pages, a.seed, a.model, work, a.second_opinion)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cmd = (f"python -m bench.pipeline_accuracy --pages {a.pages} --seed {a.seed} "
           f"--model {a.model} --second-opinion {a.second_opinion}")
    (ROOT / "bench" / "pipeline_results.json").write_text(json.dumps(r, indent=2) + "\n")
    if not a.no_doc:
        write_section(markdown(r, cmd))
    if a.json:
        print(json.dumps({k: v for k, v in r.items() if k != "per_field"}))


if __name__ == "__main__":
    main()
