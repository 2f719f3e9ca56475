"""A second opinion for the digits the shipped model is unsure of (a two-model cascade).

Every crop is read by the primary model (``digitnet``). The few it reads with less than
:data:`SECOND_OPINION_BELOW` confidence are read again by a second, differently built model
(``digitnet_wide``), and their probabilities become the pair's: the mean of the two models'
log-probabilities, softened by a *pair temperature* fitted on the same held-out validation
digits the primary was calibrated on. Two models rarely make the same mistake with the same
confidence, so averaging sharpens right readings and flattens wrong ones; running the second
model only on doubtful crops keeps the cost to a few percent of the CNN time.

The pairing lives in the second model's weights file (``contract.extra``):
``second_opinion_for`` = sha256 of the primary weights file it was paired with, and
``pair_temperature``. A pair temperature means nothing for any other primary, so ``"auto"``
uses a second model only with the exact primary it was paired with: first the primary's
*companion* ``NAME.second.safetensors`` beside ``NAME.safetensors`` (``formdigits finetune``
fine-tunes the base's second model too and writes it there, paired on the fine-tune's own
validation digits), then the shipped one; a primary with neither reads alone (its own
calibration). Two models trained by ``formdigits train`` are paired with::

    python -m models.second_opinion --primary models/digitnet.safetensors \\
        --second WIDE.safetensors --out models/digitnet_wide.safetensors

Training recipes stay in ``models.train``; this module only pairs and predicts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.contract import Contract
from models.predictor import Predictor
from models.weights import (
    SECOND_WEIGHTS,
    card_path,
    file_sha256,
    load_model,
    read_metadata,
    resolve_weights,
    save_model,
)
from pipeline.errors import ModelError

# Crops whose primary confidence is below this get the second opinion. On the 200
# development pages (seed 4242) that is 6 % of the crops, and the review rate it gives is
# within 0.3 points of asking about every crop (docs/BENCHMARKS.md, session 5).
SECOND_OPINION_BELOW = 0.99
PAIRED_FOR = "second_opinion_for"
PAIR_TEMPERATURE = "pair_temperature"


def mean_log_probs(primary_logits: torch.Tensor, second_logits: torch.Tensor) -> torch.Tensor:
    """The pair's untempered scores: the mean of both models' log-probabilities (the pair
    temperature is fitted on these, and divides them at prediction time)."""
    return (torch.log_softmax(primary_logits, 1) + torch.log_softmax(second_logits, 1)) / 2


class SecondOpinion:
    """Primary predictor plus a paired second model for its doubtful crops.

    Same interface as :class:`~models.predictor.Predictor` where the pipeline uses it
    (``predict_tensor``, ``predict_proba``, ``model_version``, ``device``, ``contract``).
    """

    def __init__(self, primary: Predictor, second: Predictor, pair_temperature: float,
                 below: float = SECOND_OPINION_BELOW) -> None:
        self.primary = primary
        self.second = second
        self.pair_temperature = float(pair_temperature)
        self.below = float(below)
        self.device = primary.device
        self.contract = primary.contract
        self.batch_size = primary.batch_size
        self.model_version = f"{primary.model_version}+{second.model_version}"
        self.asked = 0  # crops the second model has read (for benchmarks and tests)

    def pair_probs(self, primary_logits: torch.Tensor, second_logits: torch.Tensor
                   ) -> torch.Tensor:
        """The pair's calibrated probabilities from both models' raw logits."""
        mean = mean_log_probs(primary_logits, second_logits)
        return torch.softmax(mean / self.pair_temperature, dim=1)

    def predict_tensor(self, pixels: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities ``(N, 10)`` for uint8 crops ``(N, 28, 28)``."""
        logits = self.primary.logits(pixels)
        probs = torch.softmax(logits / self.primary.contract.temperature, dim=1)
        doubtful = torch.nonzero(probs.max(dim=1).values < self.below).squeeze(1)
        if len(doubtful):
            self.asked += len(doubtful)
            second = self.second.logits(pixels[doubtful])
            probs[doubtful] = self.pair_probs(logits[doubtful], second)
        return probs

    def predict_proba(self, pixels: np.ndarray) -> np.ndarray:
        """Numpy version of :meth:`predict_tensor` (float32)."""
        t = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.uint8))
        return self.predict_tensor(t).numpy().astype(np.float32, copy=False)


def load_reader(model: str | Path | None = "default", second: str | Path | None = "auto",
                device: str = "auto", batch_size: int = 256) -> Predictor | SecondOpinion:
    """The digit reader for ``model``: with its paired second opinion when there is one.

    ``second``: ``"auto"`` = the primary's companion file or the shipped second model,
    whichever was paired with this exact primary file (else none, see
    :func:`second_weights`); ``"none"``/``None`` = primary alone; a path = that file, which
    must have been paired with this primary (:class:`ModelError` otherwise).
    """
    primary_path = resolve_weights(model)
    primary = Predictor.load(primary_path, device=device, batch_size=batch_size)
    spec = "none" if second is None else str(second)
    second_path = second_weights(spec, primary_path)
    if second_path is None:
        return primary  # e.g. a fine-tuned primary without a companion: it reads alone
    pair_t = paired_temperature(second_path, file_sha256(primary_path))
    if pair_t is None:
        raise ModelError(
            f"{second_path}: this second model was not paired with {primary_path}",
            hint="Pair them with `python -m models.second_opinion --primary PRIMARY "
                 "--second SECOND --out FILE`, or pass --second-opinion none.",
        )
    return SecondOpinion(primary, Predictor.load(second_path, device=device,
                                                 batch_size=batch_size), pair_t)


def companion_path(primary: str | Path) -> Path:
    """Where a primary's own second model lives: ``NAME.second.safetensors`` beside it."""
    p = Path(primary)
    return p.with_name(f"{p.stem}.second{p.suffix or '.safetensors'}")


def second_weights(spec: str, primary: str | Path | None = None) -> Path | None:
    """The second model file ``spec`` names for ``primary`` (None: read alone).

    ``"none"`` = None. ``"auto"`` = the first of the primary's companion
    (:func:`companion_path`) and the shipped second model that exists and was paired with
    this primary file, else None; without ``primary`` only the shipped one is considered.
    Anything else is a path, which must exist.
    """
    if spec == "none":
        return None
    if spec != "auto":
        return resolve_weights(spec)
    if primary is None:
        return SECOND_WEIGHTS if SECOND_WEIGHTS.is_file() else None
    sha = file_sha256(resolve_weights(primary))
    for candidate in (companion_path(resolve_weights(primary)), SECOND_WEIGHTS):
        if candidate.is_file() and paired_temperature(candidate, sha) is not None:
            return candidate
    return None


def paired_temperature(second_path: str | Path, primary_sha256: str) -> float | None:
    """The pair temperature stored in ``second_path`` if it was paired with that primary."""
    p = resolve_weights(second_path)
    meta = read_metadata(p)
    try:
        extra = Contract.from_json(meta["contract"]).extra
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelError(f"{p}: not a formdigits weights file ({exc})") from exc
    if extra.get(PAIRED_FOR) != primary_sha256 or PAIR_TEMPERATURE not in extra:
        return None
    return float(extra[PAIR_TEMPERATURE])


def held_out_split(training: dict[str, Any]) -> tuple[int, int]:
    """``(size, seed)`` of the validation split a model card's training config held out."""
    seed = training.get("split_seed")
    return int(training["val_size"]), int(training["seed"] if seed is None else seed)


def pair(primary: Path, second: Path, out: Path, data: str = "mnist") -> dict[str, Any]:
    """Fit the pair temperature on the primary's validation split; write the paired file.

    The split is the one the primary was trained and calibrated with (seed and size from
    its model card). The second model must have held out the same split (same seed and
    size in its card), so neither model trained on the digits the pair is calibrated on.
    """
    from models.calibration import fit_temperature
    from models.datasets import load_digits
    from models.train import split_train_val

    cards = [json.loads(card_path(p).read_text()) if card_path(p).is_file() else {}
             for p in (primary, second)]
    if not all("training" in c for c in cards):
        raise ModelError("pairing needs two models trained by `formdigits train` (their cards "
                         "say which validation digits they held out)")
    cfg, old = cards[0]["training"], cards[1]
    split = held_out_split(cfg)
    if held_out_split(old["training"]) != split:
        raise ModelError(f"{second} held out another validation split than {primary}",
                         hint="Train the second model with --split-seed set to the "
                              "primary's validation seed.")
    ds = load_digits(data, "train")
    _, va_idx = split_train_val(len(ds.labels), *split)
    pixels = torch.from_numpy(np.ascontiguousarray(ds.images[va_idx]))
    labels = torch.from_numpy(ds.labels[va_idx].astype(np.int64))
    p1 = Predictor.load(primary, device="cpu", batch_size=1000)
    model, contract = load_model(second)
    p2 = Predictor(model, contract, device="cpu", batch_size=1000)
    t = fit_temperature(mean_log_probs(p1.logits(pixels), p2.logits(pixels)), labels)
    keep = {k: v for k, v in old.items() if k in (
        "history", "training", "training_data", "test_data", "test_metrics", "train_seconds",
        "best_epoch", "val_accuracy", "threads")}
    return save_paired(model, contract, out, primary, t, p1.model_version,
                       f"{data}:train validation split (seed {split[1]}, {split[0]} digits)",
                       keep)


def save_paired(model: torch.nn.Module, contract: Contract, out: Path, primary: Path,
                pair_temperature: float, primary_version: str, fitted_on: str,
                card: dict[str, Any]) -> dict[str, Any]:
    """Write second model ``model`` to ``out`` paired with the primary file ``primary``.

    The pairing (the primary's sha256 and the pair temperature) goes into the contract, so
    it travels with the weights; ``card`` (plus a ``second_opinion`` entry saying how the
    pair was fitted) becomes the model card. Returns that entry.
    """
    sha = file_sha256(primary)
    contract = contract.with_(extra={**contract.extra, PAIRED_FOR: sha,
                                     PAIR_TEMPERATURE: f"{pair_temperature:.6f}"})
    pairing = {"primary": str(Path(primary).name), "primary_sha256": sha,
               "primary_version": primary_version, "pair_temperature": pair_temperature,
               "fitted_on": fitted_on, "below": SECOND_OPINION_BELOW}
    save_model(model, contract, out, card={**card, "second_opinion": pairing})
    return pairing


def main(argv: list[str] | None = None) -> int:
    """``python -m models.second_opinion --primary P --second S --out F``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--primary", type=Path, default=resolve_weights("default"))
    ap.add_argument("--second", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=SECOND_WEIGHTS)
    ap.add_argument("--data", default="mnist")
    a = ap.parse_args(argv)
    print(json.dumps(pair(a.primary, a.second, a.out, a.data), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
