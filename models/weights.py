"""Weights files: safetensors (never pickle) with the contract and provenance in metadata.

``save_model`` writes ``NAME.safetensors`` and a JSON model card ``NAME.json`` beside it
holding the file's sha256. ``load_model`` rebuilds the architecture named in the metadata,
checks the tensors' own digest (tampering) and, when a card is present, the file hash.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from models.contract import Contract
from models.registry import available_models, create_model
from pipeline.errors import ModelError

MODELS_DIR = Path(__file__).resolve().parent
DEFAULT_WEIGHTS = MODELS_DIR / "digitnet.safetensors"
PIECES_WEIGHTS = MODELS_DIR / "piecenet.safetensors"  # string-piece verifier (models.pieces)
STRINGS_WEIGHTS = MODELS_DIR / "stringnet.safetensors"  # whole-string reader (models.strings)
BOXES_WEIGHTS = MODELS_DIR / "boxnet.safetensors"  # boxed-field reader (models.boxlines)
SECOND_WEIGHTS = MODELS_DIR / "digitnet_wide.safetensors"  # second opinion (models.second_opinion)


def _tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def card_path(weights: str | Path) -> Path:
    """The model card that accompanies a weights file."""
    return Path(weights).with_suffix(".json")


def save_model(
    model: nn.Module, contract: Contract, path: str | Path, card: dict[str, Any] | None = None
) -> Path:
    """Write weights + contract (safetensors) and the model card; returns the weights path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": "formdigits-weights-1",
        "arch": contract.arch,
        "contract": contract.to_json(),
        "tensors_sha256": _tensor_digest(tensors),
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if card:
        meta["card"] = json.dumps(card, sort_keys=True, default=str)
    tmp = p.with_name(p.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.chmod(0o644)  # safetensors writes 0600; weights are shared, not secret
    tmp.replace(p)
    full_card = {
        "weights": p.name,
        "sha256": file_sha256(p),
        "arch": contract.arch,
        "version": contract.version,
        "parent": contract.parent,
        "contract": json.loads(contract.to_json()),
        "torch_version": torch.__version__,
        "created": meta["created"],
        **(card or {}),
    }
    card_path(p).write_text(json.dumps(full_card, indent=2, sort_keys=True, default=str) + "\n")
    return p


def read_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors metadata of a weights file (no tensors loaded)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable safetensors weights file ({exc})") from exc


def resolve_weights(path: str | Path | None) -> Path:
    """``None``/``"default"`` → the shipped model; else the given path (must exist)."""
    p = DEFAULT_WEIGHTS if path is None or str(path) == "default" else Path(path)
    if not p.is_file():
        raise ModelError(
            f"weights file not found: {p}",
            hint="Train one with `formdigits train --data mnist --out FILE`, or omit --model.",
        )
    return p


def load_model(
    path: str | Path | None = None, *, verify: bool = True
) -> tuple[nn.Module, Contract]:
    """Load weights → (model in eval mode on CPU, contract). Fails clearly on tampering."""
    p = resolve_weights(path)
    meta = read_metadata(p)
    if meta.get("format") != "formdigits-weights-1" or "contract" not in meta:
        raise ModelError(f"{p}: not a formdigits weights file (no contract in its metadata)")
    contract = Contract.from_json(meta["contract"])
    if contract.arch not in available_models() or meta.get("arch") != contract.arch:
        raise ModelError(
            f"{p}: architecture '{meta.get('arch')}' is unknown to this version "
            f"(known: {', '.join(available_models())})"
        )
    card = card_path(p)
    if verify and card.is_file():
        expected = json.loads(card.read_text()).get("sha256")
        actual = file_sha256(p)
        if expected and expected != actual:
            raise ModelError(
                f"{p}: sha256 {actual[:12]}… does not match its model card ({expected[:12]}…); "
                "the file was modified or replaced",
                hint="Restore the original weights file or retrain it.",
            )
    try:
        tensors = load_file(str(p))
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"{p}: cannot read tensors ({exc})") from exc
    if verify and _tensor_digest(tensors) != meta.get("tensors_sha256"):
        raise ModelError(f"{p}: tensor contents do not match their recorded digest (tampered)")
    model = create_model(contract.arch)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{p}: weights do not fit architecture '{contract.arch}': {exc}") from exc
    return model.eval(), contract
