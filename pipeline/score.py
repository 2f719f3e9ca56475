"""Score a results folder against synthetic truth (``formdigits synth`` writes OUT/truth/*.json).

Matching: a truth page is ``(stem of its "file", page)``; a result row is
``(stem of its source, page)``, so results of ``in/a/form_001.png`` match
``truth/form_001.json``. Definitions (all fractions; ``None`` when the denominator is 0):

- ``pages``: truth pages; ``pages_registered``: those the results read (pages table status
  ``read``) as the truth's template.
- ``fields``: truth fields on all truth pages. ``field_accuracy`` = fields whose value
  equals the truth exactly (empty == empty) / ``fields``: a field the results lack (page
  not registered, wrong template) counts as wrong, so this is the end-to-end number.
- ``fields_matched``: truth fields that have a result row; every later rate uses those.
- ``digit_accuracy``: position-wise over truth digits. Box kinds (boxes/comb/date): each
  truth box holding a digit is compared with the digit read in that box (the field's value
  mapped onto the digit positions when its length equals the number of crops, so
  validation corrections count; else the raw per-box reading); a box read as empty is
  wrong. String fields take part only where the read string has the truth's length
  (position alignment is meaningless otherwise).
- ``review_rate``: matched fields with status needs_review.
- ``accepted_field_error``: wrong values among matched fields with status accepted.
- ``empty_accuracy``: matched fields whose emptiness (value "") agrees with the truth's.
- ``per_field``: by field name: ``n`` (truth count), ``accuracy`` (missing = wrong),
  ``review_rate`` and ``accepted_error`` over the matched ones.
- ``per_kind``: the same by field kind (``boxes``, ``comb``, ``date``, ``string``), over
  matched fields.
- ``risk_coverage``: for thresholds 0, 0.05, ..., 1 on the field confidence, ``coverage``
  (matched fields with confidence >= threshold) and ``accepted_error`` (wrong among them):
  what accepting by confidence alone would give at each threshold.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError, UsageError
from pipeline.review import latest, latest_digits, latest_fields, read_table

BOX_KINDS = ("boxes", "comb", "date")
THRESHOLDS = tuple(round(float(t), 2) for t in np.linspace(0.0, 1.0, 21))
PageId = tuple[str, int]


def load_truth(truth_dir: str | Path) -> dict[PageId, dict[str, Any]]:
    """Truth pages keyed by (file stem, page)."""
    d = Path(truth_dir)
    if not d.is_dir():
        raise UsageError(
            f"truth folder {d} not found",
            hint="Pass --truth OUT/truth as written by `formdigits synth`.",
        )
    pages: dict[PageId, dict[str, Any]] = {}
    for p in sorted(d.glob("*.json")):
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
            stem = Path(str(doc.get("file") or p.stem)).stem
            for pg in doc["pages"]:
                pages[(stem, int(pg["page"]))] = pg
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"truth file {p} is not valid synth truth: {exc}") from exc
    return pages


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


@dataclass
class _Tally:
    n: int = 0
    matched: int = 0
    correct: int = 0
    review: int = 0
    accepted: int = 0
    accepted_wrong: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def add(self, matched: bool, correct: bool, status: str | None) -> None:
        self.n += 1
        self.correct += correct
        if matched:
            self.matched += 1
            self.review += status == "needs_review"
            if status == "accepted":
                self.accepted += 1
                self.accepted_wrong += not correct

    def summary(self) -> dict[str, Any]:
        """``n``, ``accuracy`` (missing = wrong), ``review_rate`` and ``accepted_error``."""
        return {
            "n": self.n,
            "accuracy": _ratio(self.correct, self.n),
            "review_rate": _ratio(self.review, self.matched),
            "accepted_error": _ratio(self.accepted_wrong, self.accepted),
        }


def truth_pairs(out_dir: str | Path, truth_dir: str | Path) -> list[tuple[Any, str]]:
    """Every field row of ``out_dir`` that the truth knows, with its true value ('' = empty):
    ``(row, true value)``; ``row.value`` is normalized to a string ('' when empty)."""
    truth = load_truth(truth_dir)
    want = {(stem, page, name): str(tf.get("value") or "")
            for (stem, page), tp in truth.items() for name, tf in tp.get("fields", {}).items()}
    out = []
    for r in latest_fields(out_dir).itertuples():
        tv = want.get((Path(str(r.source)).stem, int(r.page), str(r.field)))
        if tv is not None:
            value = "" if r.value is None or r.value != r.value else str(r.value)
            out.append((r._replace(value=value), tv))
    return out


def _predicted_boxes(value: str, positions: list[int], digits: list[int]) -> dict[int, int]:
    if len(value) == len(positions) and value.isdigit():
        return {p: int(c) for p, c in zip(positions, value, strict=True)}
    return dict(zip(positions, digits, strict=True))


def score_results(out_dir: str | Path, truth_dir: str | Path) -> dict[str, Any]:
    """Compare ``out_dir``'s tables with the truth in ``truth_dir`` (see module docstring)."""
    truth = load_truth(truth_dir)
    fields = latest_fields(out_dir)
    pages = latest(read_table(out_dir, "pages"), ["file_sha256", "page"])
    digits = latest_digits(out_dir)
    by_field = {
        (Path(str(r.source)).stem, int(r.page), str(r.field)): r for r in fields.itertuples()
    }
    read_as = {
        (Path(str(r.source)).stem, int(r.page)): str(r.template_id)
        for r in pages.itertuples()
        if r.status == "read"
    }
    per_box: dict[tuple[str, int, str], tuple[list[int], list[int]]] = {}
    for key, grp in digits.groupby(["source", "page", "field"], sort=False):
        src, pg, name = key
        per_box[(Path(str(src)).stem, int(pg), str(name))] = (
            [int(p) for p in grp["position"]],
            [int(d) for d in grp["digit"]],
        )
    total = _Tally()
    per_field: defaultdict[str, _Tally] = defaultdict(_Tally)
    per_kind: defaultdict[str, _Tally] = defaultdict(_Tally)
    registered = digit_n = digit_ok = empty_ok = 0
    conf: list[float] = []
    right: list[bool] = []
    for (stem, page), tp in truth.items():
        registered += read_as.get((stem, page)) == tp.get("template")
        for name, tf in tp.get("fields", {}).items():
            tv = str(tf.get("value") or "")
            r = by_field.get((stem, page, name))
            value = "" if r is None or r.value is None or pd.isna(r.value) else str(r.value)
            ok = r is not None and value == tv
            status = None if r is None else str(r.status)
            total.add(r is not None, ok, status)
            per_field[name].add(r is not None, ok, status)
            if r is None:
                continue
            per_kind[str(r.kind)].add(True, ok, status)
            conf.append(float(r.confidence))
            right.append(ok)
            empty_ok += (value == "") == (tv == "")
            if str(r.kind) in BOX_KINDS and tf.get("boxes") is not None:
                pos, dig = per_box.get((stem, page, name), ([], []))
                pred = _predicted_boxes(value, pos, dig)
                for j, box in enumerate(tf["boxes"]):
                    if box is not None:
                        digit_n += 1
                        digit_ok += pred.get(j) == int(box)
            elif len(value) == len(tv):
                digit_n += len(tv)
                digit_ok += sum(a == b for a, b in zip(value, tv, strict=True))
    c, w = np.array(conf), np.array(right, dtype=bool)
    risk = []
    for t in THRESHOLDS:
        sel = c >= t
        risk.append(
            {
                "threshold": t,
                "coverage": _ratio(int(sel.sum()), len(c)),
                "accepted_error": _ratio(int((sel & ~w).sum()), int(sel.sum())),
            }
        )
    return {
        "pages": len(truth),
        "pages_registered": registered,
        "fields": total.n,
        "fields_matched": total.matched,
        "field_accuracy": _ratio(total.correct, total.n),
        "digits": digit_n,
        "digit_accuracy": _ratio(digit_ok, digit_n),
        "review_rate": _ratio(total.review, total.matched),
        "accepted_fields": total.accepted,
        "accepted_field_error": _ratio(total.accepted_wrong, total.accepted),
        "empty_accuracy": _ratio(empty_ok, total.matched),
        "per_field": {name: t.summary() for name, t in sorted(per_field.items())},
        "per_kind": {kind: t.summary() for kind, t in sorted(per_kind.items())},
        "risk_coverage": risk,
    }
