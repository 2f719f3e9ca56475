"""Issue 5 benchmark: end-to-end reading accuracy on synthetic pages of MNIST *test* digits.

Synthesizes pages (a seed never used in development), runs the real pipeline, scores the
results against the synth truth, and writes the "Pipeline accuracy (issue 5)" section of
docs/BENCHMARKS.md plus bench/pipeline_results.json.

    python -m bench.pipeline_accuracy --pages 200 --seed 4242 [--model FILE] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- pipeline:begin -->", "<!-- pipeline:end -->"


def run_bench(pages: int, seed: int, model: str, workdir: Path) -> dict[str, object]:
    """Synthesize, run and score; returns the score dict with timings."""
    from flows.cli import main as cli

    scans, out = workdir / "scans", workdir / "results"
    t0 = time.perf_counter()
    rc = cli(["synth", "--digits", "mnist", "--split", "test", "--pages", str(pages),
              "--seed", str(seed), "--out", str(scans)])
    if rc:
        raise SystemExit(f"synth failed ({rc}); is MNIST available (FORMDIGITS_DATA)?")
    t1 = time.perf_counter()
    rc = cli(["run", str(scans), "--out", str(out), "--model", model])
    if rc:
        raise SystemExit(f"run failed ({rc})")
    t2 = time.perf_counter()
    from pipeline.score import score_results

    result = score_results(out, scans / "truth")
    result["synth_seconds"] = round(t1 - t0, 1)
    result["run_seconds"] = round(t2 - t1, 1)
    result["model"] = model
    result["seed"] = seed
    return result


def markdown(r: dict[str, object], cmd: str) -> str:
    """The BENCHMARKS.md section."""
    rc = r["risk_coverage"]
    assert isinstance(rc, list)
    rows = "\n".join(
        f"| {x['threshold']:.2f} | {x['coverage']:.3f} | "
        + (f"{x['accepted_error']:.4f}" if x["accepted_error"] is not None else "–") + " |"
        for x in rc if x["threshold"] >= 0.5
    )
    return f"""## Pipeline accuracy (issue 5)

{r['pages']} synthetic pages from MNIST **test** digits (seed {r['seed']}, never used in
development), both templates, all formats; model `{r['model']}`; default review threshold.
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

Risk–coverage across review thresholds (fields accepted vs. wrong among accepted):

| threshold | coverage | accepted error |
|---|---|---|
{rows}

```
{cmd}
```
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
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--model", default="default")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-doc", action="store_true")
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fd-bench-"))
    try:
        r = run_bench(a.pages, a.seed, a.model, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cmd = f"python -m bench.pipeline_accuracy --pages {a.pages} --seed {a.seed} --model {a.model}"
    (ROOT / "bench" / "pipeline_results.json").write_text(json.dumps(r, indent=2) + "\n")
    if not a.no_doc:
        write_section(markdown(r, cmd))
    if a.json:
        print(json.dumps({k: v for k, v in r.items() if k != "per_field"}))


if __name__ == "__main__":
    main()
