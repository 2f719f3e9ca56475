"""Harvest labelled digit crops from a pipeline run over synthetic pages with known truth.

This is the *scan adaptation* data recipe: pages synthesized from MNIST **training**
digits (``formdigits synth --digits mnist --split train``) are read by the real pipeline,
and every crop it cut is labelled from the synth truth. Fine-tuning on these crops
teaches the model what registration, box-line removal and scanning do to digits, and
re-fits its temperature on them — the same loop reviewers' corrections feed. Digits of
the MNIST test set are never used, so accuracy claims on test-digit pages stay honest.

Usage: ``python -m models.harvest --results R --truth T --out DIR`` writes ``DIR/0 … DIR/9``.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np


def _truth_index(truth_dir: Path) -> dict[tuple[str, int], dict[str, dict[str, object]]]:
    index: dict[tuple[str, int], dict[str, dict[str, object]]] = {}
    for f in sorted(truth_dir.glob("*.json")):
        doc = json.loads(f.read_text())
        for page in doc["pages"]:
            index[(Path(doc["file"]).stem, int(page["page"]))] = page["fields"]
    return index


def harvest(results: Path, truth_dir: Path) -> tuple[list[np.ndarray], list[int], Counter[str]]:
    """Crops (28x28 uint8) and labels for every digit whose truth is unambiguous."""
    from pipeline.store import read_table

    digits = read_table(results, "digits")
    truth = _truth_index(truth_dir)
    images: list[np.ndarray] = []
    labels: list[int] = []
    stats: Counter[str] = Counter()
    for (source, page, field), grp in digits.groupby(["source", "page", "field"]):
        fields = truth.get((Path(str(source)).stem, int(page)))
        if fields is None or field not in fields:
            stats["no_truth"] += len(grp)
            continue
        t = fields[str(field)]
        boxes: list[str | None] = list(t.get("boxes") or [])  # type: ignore[call-overload]
        value = str(t.get("value") or "")
        grp = grp.sort_values("position")
        if boxes:
            pairs = [(row, boxes[int(row.position)] if int(row.position) < len(boxes) else None)
                     for row in grp.itertuples()]
        elif len(grp) == len(value):  # string field: only when the count came out right
            pairs = list(zip(grp.itertuples(), value, strict=False))
        else:
            stats["string_count_mismatch"] += len(grp)
            continue
        for row, label in pairs:
            if label is None:
                stats["crop_of_empty_box"] += 1
                continue
            img = cv2.imdecode(np.frombuffer(row.crop_png, np.uint8), cv2.IMREAD_GRAYSCALE)
            if img is None:
                stats["undecodable_crop"] += 1
                continue
            images.append(img)
            labels.append(int(str(label)))
            stats["labelled"] += 1
    return images, labels, stats


def write_folder(images: list[np.ndarray], labels: list[int], out: Path) -> None:
    """Write a folder-per-class dataset (ink-bright PNGs)."""
    for d in range(10):
        (out / str(d)).mkdir(parents=True, exist_ok=True)
    for i, (img, lab) in enumerate(zip(images, labels, strict=False)):
        # Stored inverted (dark ink on light), as a scan crop; the loader re-inverts.
        cv2.imwrite(str(out / str(lab) / f"{i:06d}.png"), 255 - img)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, required=True)
    ap.add_argument("--truth", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    images, labels, stats = harvest(a.results, a.truth)
    write_folder(images, labels, a.out)
    print(json.dumps({"written": len(labels), **stats}))


if __name__ == "__main__":
    main()
