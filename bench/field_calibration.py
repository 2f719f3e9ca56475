"""Are the fields' confidences right? Observed errors against what the confidences predict.

``python -m bench.field_calibration OUT TRUTH [OUT TRUTH ...] [--json]`` reads runs'
``fields`` tables against synth truth. Fields with a written value and no review reason
other than ``low_confidence`` (the ones a threshold decides) are binned by confidence; per
bin it prints how many there are, how many were read wrong, and how many wrong their
confidences predict (the sum of 1 − confidence). If the two agree, the fields below the
review threshold are as doubtful as their confidence says, and accepting them would cost
what the threshold sweep shows: no other confidence formula can lower the review rate at
equal accepted error.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BINS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.999, 1.0001)


def calibration(runs: Sequence[tuple[Path, Path]]) -> list[dict[str, Any]]:
    """Per confidence bin (and kind, plus ``all``): fields, wrong, expected wrong."""
    from pipeline.score import truth_pairs
    from pipeline.validate import NOTE_REASONS

    rows: list[tuple[str, float, bool]] = []
    for out, truth in runs:
        for r, tv in truth_pairs(out, truth):
            doubt = [x for x in r.reasons if x != "low_confidence" and x not in NOTE_REASONS]
            if tv and not doubt:
                rows.append((str(r.kind), float(r.confidence), r.value == tv))
    table = []
    for kind in [*sorted({k for k, _, _ in rows}), "all"]:
        for lo, hi in itertools.pairwise(BINS):
            b = [(c, ok) for k, c, ok in rows if kind in ("all", k) and lo <= c < hi]
            if b:
                table.append({"kind": kind, "from": lo, "to": min(hi, 1.0), "fields": len(b),
                              "wrong": sum(not ok for _, ok in b),
                              "expected_wrong": round(sum(1.0 - c for c, _ in b), 2)})
    return table


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pairs", nargs="+", type=Path, help="OUT TRUTH [OUT TRUTH ...]")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if len(a.pairs) % 2:
        ap.error("give results folders and truth folders in pairs")
    table = calibration(list(zip(a.pairs[::2], a.pairs[1::2], strict=True)))
    if a.json:
        print(json.dumps(table, indent=1))
        return 0
    print("| kind | confidence | fields | wrong | expected wrong |\n|---|---|---|---|---|")
    for x in table:
        print(f"| {x['kind']} | {x['from']:.3f}–{x['to']:.3f} | {x['fields']} | {x['wrong']} "
              f"| {x['expected_wrong']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
