"""What the reader's accuracy features cost in throughput (issue 7).

``formdigits run`` reads every crop with the shipped CNN, re-reads its doubtful crops with
the paired second model, scores string and cut pieces with the piece verifier and checks
fields with the whole-line readers. This measures the 2-worker run with all of that and
with none of it (the primary CNN alone), each next to a decode-only floor, in paired
rounds on the perf bench's own pages::

    python -m bench.perf_features [--rounds 3] [--pages 64] [--work DIR] [--json] [--out F]

It bounds how far issue 7's ratio could go by dropping accuracy: the bare reader's ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from bench.perf import decode_rate, median_pair, run_pipeline
from bench.perf_pages import generate_pages, mnist_bank_or_none

# Every accuracy feature off: what is left is registration, segmentation, the primary CNN,
# validation and the tables.
FEATURES_OFF = {"second_opinion": "none", "piece_model": "none", "string_model": "none",
                "box_model": "none"}


def readers() -> dict[str, tuple[Any, dict[str, str]]]:
    """``name -> (digit reader, RunSettings overrides)``: as shipped, and bare."""
    from models.second_opinion import load_reader
    from pipeline.settings import RunSettings

    s = RunSettings()
    return {
        "shipped": (load_reader(s.model, s.second_opinion, device="cpu",
                                batch_size=s.batch_size), {}),
        "bare": (load_reader(s.model, "none", device="cpu", batch_size=s.batch_size),
                 FEATURES_OFF),
    }


def compare(pages: Path, rounds: int, work: Path) -> dict[str, Any]:
    """Paired rounds (floor, shipped run, bare run); per reader the round of median ratio
    and the median CPU per page."""
    paths = sorted(p for p in pages.iterdir() if p.is_file())
    cfgs = readers()
    for name, (reader, extra) in cfgs.items():  # warm caches and the networks
        run_pipeline(pages, work / f"warm_{name}", 2, reader, **extra)
    raw: list[dict[str, Any]] = []
    for _ in range(rounds):
        row: dict[str, Any] = {"decode_pages_per_s": decode_rate(paths, 2)}
        for name, (reader, extra) in cfgs.items():
            row[name] = run_pipeline(pages, work / f"out_{name}", 2, reader, **extra)
        raw.append(row)
    out: dict[str, Any] = {"rounds": []}
    for row in raw:
        out["rounds"].append({"decode_pages_per_s": round(row["decode_pages_per_s"], 2), **{
            n: {"pages_per_s": round(row[n]["pages_per_s"], 2),
                "ratio_to_decode": round(row[n]["pages_per_s"] / row["decode_pages_per_s"], 4),
                "main_cpu_ms_per_page": round(row[n]["main_cpu_ms_per_page"], 1),
                "worker_cpu_ms_per_page": round(row[n]["worker_cpu_ms_per_page"], 1)}
            for n in cfgs}})
    for n in cfgs:
        k = median_pair([(r["decode_pages_per_s"], r[n]["pages_per_s"]) for r in raw])
        out[n] = {**out["rounds"][k][n],
                  "decode_pages_per_s": out["rounds"][k]["decode_pages_per_s"],
                  "median_main_cpu_ms_per_page": statistics.median(
                      r[n]["main_cpu_ms_per_page"] for r in out["rounds"]),
                  "median_worker_cpu_ms_per_page": statistics.median(
                      r[n]["worker_cpu_ms_per_page"] for r in out["rounds"])}
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.perf_features``: prints the comparison (JSON with ``--json``)."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pages", type=int, default=64)
    ap.add_argument("--work", type=Path, default=Path("/tmp/formdigits-bench-features"))
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    a = ap.parse_args(argv)
    bank, why = mnist_bank_or_none()
    if bank is None:
        print(f"skipped: {why}; set FORMDIGITS_DATA or put MNIST under ../shared/datasets")
        return 0
    generate_pages(a.work / "pages", a.pages, bank)
    res = compare(a.work / "pages", a.rounds, a.work)
    res["measured_utc"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    if a.out:
        a.out.write_text(json.dumps(res, indent=1) + "\n")
    if a.json:
        print(json.dumps(res, indent=1))
        return 0
    for n in ("shipped", "bare"):
        r = res[n]
        print(f"{n:8s} {r['pages_per_s']:6.2f} pages/s  ratio {r['ratio_to_decode']:.3f}  "
              f"CPU per page: main {r['median_main_cpu_ms_per_page']:.1f} + workers "
              f"{r['median_worker_cpu_ms_per_page']:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
