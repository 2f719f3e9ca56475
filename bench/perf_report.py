"""The measured table of docs/BENCHMARKS.md's "Performance (issue 7)" section, from
bench/results.json (so the numbers in the doc are exactly the measured ones)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.perf import RATIO_TARGET


def _f(v: Any, fmt: str) -> str:
    return "not measured" if v is None else fmt.format(v)


def _ok(ok: bool | None) -> str:
    return "–" if ok is None else ("meets" if ok else "**misses**")


def table(res: dict[str, Any]) -> str:
    """Markdown table: metric, result, target, verdict."""
    c = res["cnn"]
    t995 = res.get("train_seconds_to_995")
    rows = [
        ("Decode-only pages/s (`load_page` as the pipeline calls it, 2 processes; 1 process)",
         f"{res['decode_pages_per_s']:.1f}; {res['decode_pages_per_s_1proc']:.1f}", "floor", None),
        *([("Decode-only pages/s at full size (every pixel of every page, 2 processes)",
            f"{res['decode_full_size_pages_per_s']:.1f}", "–", None)]
          if "decode_full_size_pages_per_s" in res else []),
        ("End-to-end pages/s, 1 worker", f"{res['pages_per_s_1worker']:.2f}", "–", None),
        ("End-to-end pages/s, 2 workers", f"{res['pages_per_s_2workers']:.2f}", "≥ 8",
         res["pages_per_s_2workers"] >= 8),
        ("ratio_to_decode (2-worker e2e / decode-only)", f"{res['ratio_to_decode']:.2f}",
         f"≥ {RATIO_TARGET:.2f}", res["ratio_to_decode"] >= RATIO_TARGET),
        *([("2-worker e2e / full-size decode-only (for comparison only)",
            f"{res['pages_per_s_2workers'] / res['decode_full_size_pages_per_s']:.2f}", "–",
            None)] if "decode_full_size_pages_per_s" in res else []),
        ("CNN digits/s, batch 256, fp32 (shipped digitnet, MNIST test acc "
         f"{c['fp32_accuracy']:.2%})", f"{res['cnn_digits_per_s']:,.0f}", "≥ 20,000",
         res["cnn_digits_per_s"] >= 20000),
        ("CNN digits/s, int8 FX static (x86 backend), accuracy change",
         f"{c.get('int8_fx_static_x86_digits_per_s', 0):,.0f}, "
         f"{c.get('int8_fx_static_x86_accuracy_change', 0):+.2%}", "–", None),
        ("CNN digits/s, int8 dynamic (Linear only), accuracy change",
         f"{c.get('int8_dynamic_linear_digits_per_s', 0):,.0f}, "
         f"{c.get('int8_dynamic_linear_accuracy_change', 0):+.2%}", "–", None),
        ("Seed article's one-conv CNN digits/s (random weights)",
         f"{res['seed_cnn_digits_per_s']:,.0f}", "–", None),
        ("Training to 99.5 % MNIST test (default TrainConfig)",
         _f(t995, "{:.0f} s") + (f" (epoch {res.get('train_epochs_to_995')})" if t995 else ""),
         "≤ 300 s", None if t995 is None and not res.get("train_history") else
         (t995 is not None and t995 <= 300)),
        (f"Peak RSS, {res['memory_pages']} pages, 2 workers (sum of 3 processes; PSS)",
         f"{res['peak_rss_mb']:.0f} MB; {res['peak_pss_mb']:.0f} MB", "≤ 1,500 MB",
         res["peak_rss_mb"] <= 1500),
        ("rss_growth_mb (mean of last quarter − first quarter; PSS)",
         f"{res['rss_growth_mb']:+.0f} MB; {res['pss_growth_mb']:+.0f} MB", "flat", None),
        (f"Pages/s over that run ({res['memory_pages']} pages)",
         f"{res['memory_pages_per_s']:.2f}", "–", None),
    ]
    out = ["| Metric | Result | Target | |", "|---|---|---|---|"]
    out += [f"| {m} | {r} | {t} | {_ok(ok)} |" for m, r, t, ok in rows]
    stages = " · ".join(f"{k} {v:.1f}" for k, v in res["stage_ms"].items())
    out += ["", f"Per-stage ms per page (1-worker run, summed over pages / pages): {stages}."]
    if "cpu_2workers" in res:  # results written before session 14 lack it
        c = res["cpu_2workers"]
        out += ["", f"CPU of the 2-worker run: main process {c['main_ms_per_page']:.1f} + page "
                f"workers {c['workers_ms_per_page']:.1f} ms per page, cores {c['busy']:.0%} busy; "
                f"a ratio of {RATIO_TARGET:.2f} at this busy share needs "
                f"≤ {c['ms_per_page_for_ratio_040']:.1f} ms per page."]
    return "\n".join(out)


if __name__ == "__main__":
    print(table(json.loads(Path(sys.argv[1]).read_text())))
