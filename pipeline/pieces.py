"""The string-piece verifier in the pipeline: load it, and score pages' pieces with it.

Segmentation draws every candidate piece of a string field, and every cut-variant piece of
digits touching across a box wall (at :func:`pipeline.segment.box_piece_height`), at field
scale (``FieldCrop.piece``, :func:`pipeline.normalize.normalize_piece`); here the verifier
(``models/piecenet``, trained by ``models.pieces``) turns that into ``FieldCrop.single``, the
probability that the piece is exactly one whole digit, which the split choice and the
review rule of :mod:`pipeline.assemble` use.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import numpy as np

from pipeline.errors import ModelError
from pipeline.records import FieldCrop


@functools.lru_cache(maxsize=4)
def piece_scorer(path: str) -> Callable[[np.ndarray], np.ndarray] | None:
    """The piece verifier as ``pixels (N, 28, 28) uint8 → P(one digit) (N,)``, or None.

    Loaded once per process; it runs on the CPU in the main process, a few pages' pieces
    at a time (:func:`score_pages`): a string field has a few dozen candidate pieces, far
    too few to be worth a trip to the GPU.
    """
    if path == "none":
        return None
    from models.predictor import Predictor
    from models.weights import PIECES_WEIGHTS

    pred = Predictor.load(PIECES_WEIGHTS if path == "default" else path, device="cpu",
                          batch_size=256)
    if pred.contract.arch != "piecenet":
        raise ModelError(f"{path}: a '{pred.contract.arch}' model, not a piece verifier",
                         hint="Pass a piecenet weights file, 'default' or 'none'.")

    def score(pixels: np.ndarray) -> np.ndarray:
        return pred.predict_proba(pixels)[:, 0] if len(pixels) else np.zeros(0, np.float32)

    return score


def score_pieces(crops: Sequence[FieldCrop],
                 scorer: Callable[[np.ndarray], np.ndarray] | None) -> list[FieldCrop]:
    """``crops`` with the verifier's ``single`` set where a ``piece`` was drawn (then dropped).

    Runs where the digit CNN runs (the main process): the page workers then never run a
    network, which keeps them small.
    """
    return score_pages([crops], scorer)[0]


def score_pages(pages: Sequence[Sequence[FieldCrop]],
                scorer: Callable[[np.ndarray], np.ndarray] | None) -> list[list[FieldCrop]]:
    """:func:`score_pieces` of several pages' crops, their pieces read in one batch (a
    page has ~20; the verifier costs ~15 % less per piece in batches of a few pages)."""
    outs = [list(crops) for crops in pages]
    todo = [(k, i) for k, crops in enumerate(pages) for i, c in enumerate(crops)
            if c.piece is not None]
    if not todo:
        return outs
    pixels = [p for k, i in todo if (p := pages[k][i].piece) is not None]
    single = scorer(np.stack(pixels)) if scorer is not None else None
    for n, (k, i) in enumerate(todo):
        outs[k][i] = dataclasses.replace(pages[k][i], piece=None,
                                         single=1.0 if single is None else float(single[n]))
    return outs
