"""How right are the fields that went to review only for a segmentation doubt?

``python -m bench.segmentation_doubts OUT TRUTH_DIR`` reads a run's ``fields`` table against
synth truth. It prints, per kind and segmentation reason, how many such fields were read right,
split by whether the reason was the field's only one. For the fields doubted only by
segmentation, it also prints how many reach each confidence and how many of those are right:
what accepting them would cost.
"""

from __future__ import annotations

import argparse
import collections
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.score import truth_pairs

THRESHOLDS = (0.9, 0.95, 0.98, 0.99, 0.995)


def doubts(out: Path, truth: Path) -> dict[str, Any]:
    """Counts of segmentation-doubted fields, right and wrong."""
    counts: collections.Counter[str] = collections.Counter()
    only: list[tuple[float, bool]] = []
    for r, tv in truth_pairs(out, truth):
        right = r.value == tv
        reasons = [str(x) for x in r.reasons]
        seg = [x for x in reasons if x.startswith("segmentation:")]
        alone = len(seg) == len(reasons)
        for reason in seg:
            counts[f"{r.kind} {reason} {'only' if alone else 'with others'} "
                   f"{'right' if right else 'wrong'}"] += 1
        if seg and alone:
            only.append((float(r.confidence), right))
    return {"fields": dict(sorted(counts.items())),
            "only_segmentation": {"fields": len(only), "wrong": sum(not ok for _, ok in only)},
            "by_confidence": [{"at_least": t, "fields": sum(c >= t for c, _ in only),
                               "wrong": sum(c >= t and not ok for c, ok in only)}
                              for t in THRESHOLDS]}


def main(argv: Sequence[str] | None = None) -> int:
    """Print the counts as JSON."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", type=Path)
    ap.add_argument("truth", type=Path)
    a = ap.parse_args(argv)
    print(json.dumps(doubts(a.out, a.truth), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
