"""Fit the string-field split-choice weights of ``pipeline.assemble`` on synthetic pages.

String fields are cut into candidate splits (``pipeline.segment_string``); the reading
keeps, per group of touching ink, the hypothesis with the best ``_split_score``: mean log
max-probability, less ``SPLIT_COUNT_PENALTY`` per piece away from the shape-based count
guess and ``SPLIT_PIECE_COST`` per extra piece. This script grid-searches the two weights
on pages synthesized from MNIST **training** digits (never the test digits the accuracy
claims use) and prints the share of string fields read right for each pair, best first.

    formdigits synth --digits mnist --split train --pages 800 --seed 9001 --out /tmp/fit
    python -m bench.fit_split_choice /tmp/fit [--check DIR ...]

``--check`` folders (e.g. development pages) are scored with the best pair too.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from pipeline import assemble
from pipeline.records import FieldCrop

GRID_COUNT = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0)
GRID_PIECE = (-0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3)


def collect(folder: Path) -> list[tuple[str, list[FieldCrop], np.ndarray]]:
    """(true value, candidate crops, their probabilities) of every non-empty string field."""
    from models.predictor import Predictor
    from pipeline.errors import RegistrationError
    from pipeline.ingest import count_pages, discover, load_page
    from pipeline.register import register_page
    from pipeline.score import load_truth
    from pipeline.segment import segment_page
    from pipeline.settings import Limits
    from pipeline.templates import load_templates

    truth = load_truth(folder / "truth")
    templates = load_templates()
    by_id = {t.id: t for t in templates}
    predictor = Predictor.load("default", device="cpu")
    limits = Limits()
    out = []
    for path in discover([folder]):
        for page in range(count_pages(path, limits)):
            want = truth.get((path.stem, page))
            if want is None:
                continue
            try:
                reg = register_page(load_page(path, page, limits, 200), templates)
            except RegistrationError:
                continue
            crops = segment_page(reg, by_id[reg.template_id])
            for name, tf in want.get("fields", {}).items():
                mine = [c for c in crops if c.field == name and not c.empty]
                value = str(tf.get("value") or "")
                if not mine or mine[0].kind != "string" or not value:
                    continue
                probs = predictor.predict_proba(np.stack([c.pixels for c in mine]))
                out.append((value, mine, probs))
    return out


def share_right(data: list[tuple[str, list[FieldCrop], np.ndarray]]) -> float:
    """Share of fields whose chosen reading equals the truth (current module weights)."""
    right = 0
    for value, crops, probs in data:
        picked = assemble.choose_crops(crops, probs)
        right += "".join(str(int(probs[i].argmax())) for i in picked) == value
    return right / max(len(data), 1)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path, help="synthetic pages (with truth/) to fit on")
    ap.add_argument("--check", type=Path, nargs="*", default=[])
    a = ap.parse_args(argv)
    data = collect(a.folder)
    results = []
    for count, piece in itertools.product(GRID_COUNT, GRID_PIECE):
        assemble.SPLIT_COUNT_PENALTY, assemble.SPLIT_PIECE_COST = count, piece
        results.append((share_right(data), count, piece))
    results.sort(key=lambda r: -r[0])
    print(f"{len(data)} string fields in {a.folder}")
    for share, count, piece in results[:8]:
        print(f"  SPLIT_COUNT_PENALTY={count:<4} SPLIT_PIECE_COST={piece:<5} right {share:.4f}")
    _, assemble.SPLIT_COUNT_PENALTY, assemble.SPLIT_PIECE_COST = results[0]
    for folder in a.check:
        print(f"best pair on {folder}: right {share_right(collect(folder)):.4f}")


if __name__ == "__main__":
    main()
