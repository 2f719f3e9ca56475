"""Issue 5 over several seeds: the pooled review rate and accepted-field error, with 95 %
intervals, so a target near the noise of one 200-page set is judged on more than a coin.

One seed's 200 pages give ~1,350 accepted fields; at a 0.3 % error rate that is 4 wrong
fields, and 2 or 7 are just as likely (Poisson): a single seed cannot tell 0.2 % from
0.4 %. This command synthesizes each seed's pages (kept in ``--work`` and reused while the
synthesis code and templates are unchanged, :func:`synth_fingerprint`), runs the
pipeline on them with the given reader and threshold, scores every seed, and pools the
counts, with Wilson score intervals::

    python -m bench.seeds --seeds 4242,5150,6160,7321,8888 [--pages 200] [--work DIR]
        [--model default] [--second-opinion auto] [--review-below 0.95] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
from pathlib import Path
from typing import Any

Z95 = 1.959963984540054  # two-sided 95 % normal quantile


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials (``(0, 1)`` when n = 0).

    Unlike the normal approximation it stays inside [0, 1] and is honest for the handful of
    errors an accepted-error rate rests on.
    """
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    # (at k = 0 or k = n one bound is exactly 0 or 1; rounding would leave ~1e-17)
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def counts(score: dict[str, Any]) -> dict[str, int]:
    """The integer counts behind one seed's ``formdigits score`` rates."""
    matched, accepted = int(score["fields_matched"]), int(score["accepted_fields"])
    return {
        "pages": int(score["pages"]), "fields": matched, "accepted": accepted,
        "review": round((score["review_rate"] or 0.0) * matched),
        "accepted_wrong": round((score["accepted_field_error"] or 0.0) * accepted),
        "digits": int(score["digits"]),
        "digits_right": round((score["digit_accuracy"] or 0.0) * int(score["digits"])),
    }


def pool(per_seed: dict[int, dict[str, int]]) -> dict[str, Any]:
    """Pooled rates over seeds, each with its 95 % Wilson interval."""
    tot = {k: sum(c[k] for c in per_seed.values()) for k in next(iter(per_seed.values()))}
    out: dict[str, Any] = {"seeds": sorted(per_seed), **tot}
    for name, k, n in (("review_rate", "review", "fields"),
                       ("accepted_field_error", "accepted_wrong", "accepted"),
                       ("digit_accuracy", "digits_right", "digits")):
        lo, hi = wilson(tot[k], tot[n])
        out[name] = tot[k] / tot[n] if tot[n] else None
        out[f"{name}_ci95"] = [lo, hi]
    return out


SYNTH_STAMP = ".synth-fingerprint"
# What a seed's pages depend on besides the seed: the synthesis code and the templates.
SYNTH_SOURCES = ("synth.py", "synth_values.py", "handwriting.py", "scanner.py", "render.py",
                 "templates.py", "templates")


def synth_fingerprint() -> str:
    """SHA-256 over the files that make a seed's pages: pages stamped with another value
    were made by other code and are synthesized again rather than reused."""
    root = Path(__file__).resolve().parent.parent / "pipeline"
    h = hashlib.sha256()
    for name in SYNTH_SOURCES:
        top = root / name
        files = sorted(top.rglob("*")) if top.is_dir() else [top]
        for f in files:
            if f.is_file() and "__pycache__" not in f.parts:
                h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def run_seed(seed: int, pages: int, work: Path, digits: str, run_args: list[str],
             tag: str) -> dict[str, Any]:
    """Synthesize (unless already there), run and score one seed; its score dict."""
    from flows.cli import main as cli
    from pipeline.score import score_results

    scans, out = work / f"{digits}-test-{pages}p-seed{seed}", work / f"out-{tag}-seed{seed}"
    synth = ["synth", "--digits", digits, "--split", "test", "--pages", str(pages),
             "--seed", str(seed), "--out", str(scans)]
    stamp, made_by = scans / SYNTH_STAMP, synth_fingerprint()
    reuse = (scans / "truth").is_dir() and stamp.is_file() and stamp.read_text() == made_by
    if not reuse:
        if scans.exists():  # made by other synthesis code (or cut short): make them again
            print(f"seed {seed}: pages in {scans} were made by other synthesis code; "
                  "synthesizing them again")
            shutil.rmtree(scans)
        if cli(synth):
            raise SystemExit(f"synth of seed {seed} failed; is MNIST available "
                             "(FORMDIGITS_DATA or ../shared/datasets)?")
        stamp.write_text(made_by)
    if cli(["run", str(scans), "--out", str(out), "--force", *run_args]):
        raise SystemExit(f"run of seed {seed} failed")
    return score_results(out, scans / "truth")


def markdown(per_seed: dict[int, dict[str, int]], pooled: dict[str, Any]) -> str:
    """A table of each seed and the pooled rates with their intervals."""
    def pct(x: float | None) -> str:
        return "–" if x is None else f"{100 * x:.2f} %"

    rows = ["| seed | review | accepted wrong | accepted error |", "|---|---|---|---|"]
    for s, c in sorted(per_seed.items()):
        rows.append(f"| {s} | {pct(c['review'] / max(c['fields'], 1))} | "
                    f"{c['accepted_wrong']} of {c['accepted']:,} | "
                    f"{pct(c['accepted_wrong'] / max(c['accepted'], 1))} |")
    r, e = pooled["review_rate_ci95"], pooled["accepted_field_error_ci95"]
    rows.append(f"| pooled | {pct(pooled['review_rate'])} ({pct(r[0])}–{pct(r[1])}) | "
                f"{pooled['accepted_wrong']} of {pooled['accepted']:,} | "
                f"{pct(pooled['accepted_field_error'])} ({pct(e[0])}–{pct(e[1])}) |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", required=True, help="comma-separated, e.g. 4242,5150,6160")
    ap.add_argument("--pages", type=int, default=200)
    ap.add_argument("--work", type=Path, default=Path("/tmp/formdigits-seeds"),
                    help="where the synthetic pages (reused) and results go")
    ap.add_argument("--digits", default="mnist", help="handwriting source (test split)")
    ap.add_argument("--model", default="default")
    ap.add_argument("--second-opinion", default="auto")
    ap.add_argument("--review-below", type=float, default=None)
    ap.add_argument("--tag", default="run", help="name of this reader's result folders")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    run_args = ["--model", a.model, "--second-opinion", a.second_opinion]
    if a.review_below is not None:
        run_args += ["--review-below", str(a.review_below)]
    a.work.mkdir(parents=True, exist_ok=True)
    per_seed = {s: counts(run_seed(s, a.pages, a.work, a.digits, run_args, a.tag))
                for s in seeds}
    pooled = pool(per_seed)
    if a.json:
        print(json.dumps({"per_seed": per_seed, "pooled": pooled}, indent=1))
    else:
        print(markdown(per_seed, pooled))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
