"""Fit the string-field split-choice weights of ``pipeline.assemble`` on synthetic pages.

String fields are cut into candidate splits (``pipeline.segment_string``); the reading
keeps, per group of touching ink, the hypothesis with the best ``_split_score``: mean log
max-probability, less ``SPLIT_COUNT_PENALTY`` per piece away from the shape-based count
guess and ``SPLIT_PIECE_COST`` per extra piece, plus ``SPLIT_SINGLE_WEIGHT`` × the piece
verifier's mean log-probability that each piece is one digit. This script grid-searches the
three weights
on pages synthesized from MNIST **training** digits (never the test digits the accuracy
claims use) and prints the share of string fields read right for each triple, best first.

    formdigits synth --digits mnist --split train --pages 800 --seed 9001 --out /tmp/fit
    python -m bench.fit_split_choice /tmp/fit [--check DIR ...] [--piece-model FILE|none]

``--check`` folders (e.g. development pages) are scored with the best triple too.
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
GRID_SINGLE = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


def collect(folder: Path, piece_model: str = "default"
            ) -> list[tuple[str, list[FieldCrop], np.ndarray]]:
    """(true value, candidate crops, their probabilities) of every non-empty string field.

    (The crops' ``template_id`` and ``field`` name the template field they came from.)
    """
    from models.predictor import Predictor
    from pipeline.errors import RegistrationError
    from pipeline.ingest import count_pages, discover, load_page
    from pipeline.pieces import piece_scorer, score_pieces
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
            crops = score_pieces(segment_page(reg, by_id[reg.template_id]),
                                 piece_scorer(piece_model))
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


SURE_GRID = {"margin": (0.5, 1.0, 2.0, 4.0), "single": (0.0, 0.9), "below": (0.95, 0.98, 0.99)}


def sure_table(data: list[tuple[str, list[FieldCrop], np.ndarray]]
               ) -> tuple[int, list[tuple[float, float, float, int, int]]]:
    """String fields whose chosen pieces touch: how many the "sure cut" rule of
    ``pipeline.assemble`` would accept, and how many of those are wrong, per
    (SPLIT_SURE_MARGIN, SPLIT_SURE_SINGLE, TOUCHING_REVIEW_BELOW); returns
    (touching fields, rows of (margin, single, below, accepted, wrong))."""
    from pipeline.templates import load_templates
    from pipeline.validate import decide_field

    fields = {(t.id, f.name): f for t in load_templates() for f in t.fields}
    rows = []
    for value, crops, probs in data:
        picked, margin = assemble.choose_string_crops(crops, probs)
        flags = {f for i in picked for f in crops[i].flags}
        if "touching" not in flags:
            continue
        ff = fields[(crops[0].template_id, crops[0].field)]
        d = decide_field(ff, probs[picked], 0.0, sorted(flags - {"touching"}))
        single = min(crops[i].single for i in picked)
        rows.append((margin, single, d.confidence, d.value == value))
    out = []
    for m, one, below in itertools.product(*SURE_GRID.values()):
        ok = [right for mg, sg, conf, right in rows if mg >= m and sg >= one and conf >= below]
        out.append((m, one, below, len(ok), len(ok) - sum(ok)))
    return len(rows), out


def _print_sure(data: list[tuple[str, list[FieldCrop], np.ndarray]]) -> None:
    n, table = sure_table(data)
    print(f"  {n} fields with touching digits; accepted (wrong) by the sure-cut rule:")
    for m, one, below, acc, wrong in table:
        print(f"    margin>={m:<4} single>={one:<4} confidence>={below:<5} {acc:4d} ({wrong})")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path, help="synthetic pages (with truth/) to fit on")
    ap.add_argument("--check", type=Path, nargs="*", default=[])
    ap.add_argument("--piece-model", default="default", help="verifier weights or 'none'")
    ap.add_argument("--keep-weights", action="store_true",
                    help="score --check and the sure-cut table with the module's weights, "
                         "not the best of the grid")
    a = ap.parse_args(argv)
    data = collect(a.folder, a.piece_model)
    weights = (assemble.SPLIT_COUNT_PENALTY, assemble.SPLIT_PIECE_COST,
               assemble.SPLIT_SINGLE_WEIGHT)
    singles = GRID_SINGLE if a.piece_model != "none" else (0.0,)
    results = []
    for count, piece, single in itertools.product(GRID_COUNT, GRID_PIECE, singles):
        assemble.SPLIT_COUNT_PENALTY, assemble.SPLIT_PIECE_COST = count, piece
        assemble.SPLIT_SINGLE_WEIGHT = single
        results.append((share_right(data), count, piece, single))
    results.sort(key=lambda r: -r[0])
    print(f"{len(data)} string fields in {a.folder}")
    for share, count, piece, single in results[:8]:
        print(f"  SPLIT_COUNT_PENALTY={count:<4} SPLIT_PIECE_COST={piece:<5} "
              f"SPLIT_SINGLE_WEIGHT={single:<5} right {share:.4f}")
    assemble.SPLIT_COUNT_PENALTY, assemble.SPLIT_PIECE_COST, assemble.SPLIT_SINGLE_WEIGHT \
        = weights if a.keep_weights else results[0][1:]
    print(f"sure-cut rule on {a.folder} (weights {assemble.SPLIT_COUNT_PENALTY}, "
          f"{assemble.SPLIT_PIECE_COST}, {assemble.SPLIT_SINGLE_WEIGHT}):")
    _print_sure(data)
    for folder in a.check:
        more = collect(folder, a.piece_model)
        print(f"{folder}: right {share_right(more):.4f}")
        _print_sure(more)


if __name__ == "__main__":
    main()
