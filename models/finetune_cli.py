"""The ``formdigits finetune`` command and its file-to-file core :func:`finetune_file`.

Registered by :mod:`flows.cli_models` as ``app.command("finetune")(finetune_command)``.
Heavy modules (torch) are imported inside the functions so ``formdigits --help`` stays fast.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.errors import DataNotFoundError, UsageError


def finetune_file(base: str, data: str, out: Path, *, epochs: int | None = None,
                  limit: int | None = None, replay: float = 0.0, seed: int = 0,
                  version: str = "", device: str = "auto", second: str = "auto",
                  on_eval: Any = None, on_stage: Any = None) -> dict[str, Any]:
    """Fine-tune weights file ``base`` on dataset ``data``; write ``out`` + its model card.

    Returns the model card written beside ``out``. ``data`` is anything
    :func:`models.datasets.load_digits` accepts (USPS, MNIST IDX, a folder of class
    sub-folders, or a formdigits results folder with reviewed corrections).

    ``second``: the second opinion (:mod:`models.second_opinion`) is fine-tuned the same
    way (same digits, split, replay and seed) and written as ``out``'s companion, paired
    with it on the held-out digits, so the fine-tuned reader keeps its cascade. ``"auto"``
    = the second model paired with ``base`` if there is one; a path = that model;
    ``"none"`` = the fine-tuned model reads alone. ``on_stage(text)`` is told which
    model is being fine-tuned.
    """
    from models.datasets import load_digits
    from models.finetune import FinetuneConfig, limit_indices
    from models.second_opinion import second_weights
    from models.weights import resolve_weights, save_model

    if not 0.0 <= replay < 1.0:
        raise UsageError(f"--replay must be a fraction in [0, 1), got {replay}")
    if limit is not None and limit < 2:
        raise UsageError(f"--limit must be at least 2 digits, got {limit}")
    base_path = resolve_weights(base)
    second_base = second_weights(second, base_path)  # checked before any training
    ds = load_digits(data, "train")
    idx = limit_indices(ds.labels, limit, seed)
    if len(idx) < 2:
        raise DataNotFoundError(f"{data}: only {len(idx)} labelled digit(s); need at least 2")
    pool = None
    if replay > 0:
        mnist = load_digits("mnist", "train")  # raises DataNotFoundError with a hint
        pool = (mnist.images, mnist.labels)
    cfg = FinetuneConfig(epochs=epochs, replay=replay, seed=seed, device=device)
    tuned = _tune(base_path, ds, idx, limit, cfg, pool, version, on_eval, on_stage)
    save_model(tuned.result.model, tuned.contract, out, tuned.card)
    if second_base is not None:
        other = _tune(second_base, ds, idx, limit, cfg, pool, "", on_eval, on_stage)
        _pair_tuned(tuned, other, second_base, base_path, Path(out), ds.images[idx],
                    ds.labels[idx])
    return dict(json.loads(Path(out).with_suffix(".json").read_text()))


@dataclass
class _Tuned:
    """One fine-tuned model: the recipe's result, its final contract and model card."""

    result: Any  # models.finetune.FinetuneResult
    contract: Any  # models.contract.Contract
    card: dict[str, Any]


def _tune(base_path: Path, ds: Any, idx: Any, limit: int | None, cfg: Any, pool: Any,
          version: str, on_eval: Any, on_stage: Any) -> _Tuned:
    """Fine-tune the model in ``base_path``; its new contract (lineage) and card."""
    import numpy as np

    from models.finetune import finetune
    from models.weights import file_sha256, load_model

    model, contract = load_model(base_path)
    if on_stage is not None:
        on_stage(f"fine-tuning {contract.version} ({base_path.name})")
    res = finetune(model, contract, ds.images[idx], ds.labels[idx], cfg, replay=pool,
                   on_eval=on_eval)
    base_sha = file_sha256(base_path)
    stamp = time.strftime("%Y%m%d")
    new_version = version or f"{contract.version}-ft{stamp}-{ds.sha256[:8]}-s{cfg.seed}"
    final = res.contract.with_(
        version=new_version, parent=contract.version,
        extra={**contract.extra, "parent_sha256": base_sha})
    counts = np.bincount(ds.labels[idx], minlength=10).tolist()
    card: dict[str, Any] = {
        "base_model": {"path": str(base_path), "version": contract.version, "sha256": base_sha,
                       "temperature": contract.temperature},
        "finetune_data": {"source": ds.source, "sha256": ds.sha256, "n_available": len(ds.labels),
                          "limit": limit, "n_used": len(idx), "n_train": res.n_train,
                          "n_val": res.n_val, "class_counts": counts},
        "finetune": {**res.config, "replay_source": "mnist:train" if cfg.replay > 0 else None,
                     "steps_run": res.steps_run, "epochs_run": res.epochs_run,
                     "best_step": res.best_step, "seconds": round(res.seconds, 1),
                     "temperature_fitted": res.temperature_fitted},
        "val_accuracy": res.val_accuracy,
        "base_val_accuracy": res.base_val_accuracy,
        "history": [h.__dict__ for h in res.history],
    }
    return _Tuned(res, final, card)


def _pair_tuned(primary: _Tuned, second: _Tuned, second_base: Path, base_path: Path,
                out: Path, images: Any, labels: Any) -> None:
    """Write ``second`` as ``out``'s companion, paired on the fine-tune's held-out digits.

    Neither model trained on those digits (both held out the same split). When the pair
    reads all of them right the fit has nothing to go on (the NLL keeps falling as T -> 0),
    so the base pair's temperature is kept, as the primary keeps its own then (a second
    model that was not paired with the base has none: the primary's temperature stands in).
    """
    import numpy as np
    import torch

    from models.calibration import fit_temperature
    from models.second_opinion import (
        companion_path,
        mean_log_probs,
        paired_temperature,
        save_paired,
    )
    from models.train import predict_logits
    from models.weights import file_sha256

    va = primary.result.val_index
    x, y = images[va], labels[va].astype(np.int64)
    cpu = torch.device("cpu")
    mean = mean_log_probs(predict_logits(primary.result.model, primary.contract, x, cpu),
                          predict_logits(second.result.model, second.contract, x, cpu))
    fitted = bool((mean.argmax(1).numpy() != y).any())
    base_t = paired_temperature(second_base, file_sha256(base_path))
    if fitted:
        t = fit_temperature(mean, torch.from_numpy(y))
    else:
        t = base_t if base_t is not None else primary.contract.temperature
    card = {**second.card, "pair_temperature_fitted": fitted}
    save_paired(second.result.model, second.contract, companion_path(out), out, t,
                primary.contract.version,
                f"{second.card['finetune_data']['source']}: the fine-tune's validation split "
                f"(seed {primary.result.config['seed']}, {len(va)} digits)", card)


def finetune_command(
    data: Annotated[str, typer.Option(
        help="Your digits: usps, mnist, a folder of 0/…9/ image sub-folders, MNIST IDX or "
             "USPS files, or a formdigits results folder (reviewed corrections).")],
    out: Annotated[Path, typer.Option(help="Weights file to write (.safetensors).")],
    base: Annotated[str, typer.Option(help="Pretrained weights file, or 'default'.")] = "default",
    epochs: Annotated[int | None, typer.Option(
        min=1, help="Epochs over your digits (default: scaled to the data size).")] = None,
    limit: Annotated[int | None, typer.Option(
        min=2, help="Use only N of the digits (stratified random, by --seed).")] = None,
    replay: Annotated[float, typer.Option(
        min=0.0, max=0.95,
        help="Fraction of each batch drawn from MNIST train (guards against forgetting).")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the subset, split and training.")] = 0,
    version: Annotated[str, typer.Option(help="Version string stored in the model.")] = "",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    second_opinion: Annotated[str, typer.Option(
        help="auto: also fine-tune the base's paired second model and write it beside --out "
             "(NAME.second.safetensors), paired with the new model; none: the new model reads "
             "alone; or a second model's weights file.")] = "auto",
    threads: Annotated[int, typer.Option(
        min=0, help="CPU threads for torch (0: torch's default). On a busy shared machine "
                    "1 is several times faster than 2.")] = 0,
) -> None:
    """Fine-tune a pretrained model on your own handwriting (transfer learning)."""
    from rich.console import Console

    if threads:
        import torch

        torch.set_num_threads(threads)

    console = Console(stderr=True)

    def on_eval(log: Any) -> None:
        console.print(f"  step {log.step:5d} (epoch {log.epoch:6.2f}, {log.phase}): "
                      f"loss {log.train_loss:.4f} val {log.val_accuracy:.2%} "
                      f"[{log.seconds:.0f} s]")

    with console.status("fine-tuning…"):
        card = finetune_file(base, data, out, epochs=epochs, limit=limit, replay=replay,
                             seed=seed, version=version, device=device,
                             second=second_opinion, on_eval=on_eval, on_stage=console.print)
    fd, ft = card["finetune_data"], card["finetune"]
    console.print(
        f"wrote {out} (+ {out.with_suffix('.json').name}): {fd['n_train']} digits trained, "
        f"{fd['n_val']} validation; val accuracy {card['base_val_accuracy']:.2%} → "
        f"{card['val_accuracy']:.2%} after {ft['epochs_run']} epochs ({ft['seconds']} s), "
        f"T={card['contract']['temperature']:.3f}")
    from models.second_opinion import companion_path

    companion = companion_path(out)
    if second_opinion != "none" and companion.is_file():
        pairing = json.loads(companion.with_suffix(".json").read_text())["second_opinion"]
        if pairing["primary_sha256"] == card["sha256"]:
            console.print(f"wrote {companion}: its second opinion, paired on the held-out "
                          f"digits (pair T={pairing['pair_temperature']:.3f})")
    else:
        console.print("no second opinion: the new model reads alone")
