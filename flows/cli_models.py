"""CLI commands for the model: ``train``, ``evaluate``, ``finetune``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def train_command(
    data: Annotated[str, typer.Option(help="Dataset: mnist, usps, or a folder.")] = "mnist",
    out: Annotated[Path, typer.Option(help="Weights file to write (.safetensors).")] = Path(
        "digitnet.safetensors"
    ),
    epochs: Annotated[int, typer.Option(min=1)] = 20,
    seed: Annotated[int, typer.Option()] = 0,
    split_seed: Annotated[int | None, typer.Option(
        help="Seed of the held-out validation split, when it must differ from --seed "
             "(a second-opinion model holds out its primary's split).")] = None,
    arch: Annotated[str, typer.Option(help="Architecture name from the registry.")] = "digitnet",
    lr: Annotated[float, typer.Option(help="Peak learning rate (one-cycle).")] = 4e-3,
    batch_size: Annotated[int, typer.Option(min=8)] = 128,
    resume: Annotated[bool, typer.Option(help="Continue from OUT.ckpt if present.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    version: Annotated[str, typer.Option(help="Version string stored in the model.")] = "",
) -> None:
    """Train a digit CNN from scratch; writes weights + model card (OUT.json)."""
    import time

    import torch
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from models.datasets import load_digits
    from models.metrics import summarize
    from models.train import TrainConfig, describe, predict_logits, train
    from models.weights import save_model

    console = Console(stderr=True)
    train_set = load_digits(data, "train")
    try:
        test_set = load_digits(data, "test")
    except Exception:
        test_set = None
    cfg = TrainConfig(arch=arch, epochs=epochs, seed=seed, lr=lr, batch_size=batch_size,
                      device=device, split_seed=split_seed)
    ckpt = out.with_name(out.name + ".ckpt")
    if not resume and ckpt.exists():
        ckpt.unlink()
    console.print(f"training {arch} on {train_set.source} ({len(train_set.labels)} digits, "
                  f"{cfg.val_size} held out for validation), torch threads "
                  f"{torch.get_num_threads()}")
    with Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.description}"),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("", total=None)

        def on_step(step: int, total: int) -> None:
            progress.update(task, completed=step, total=total)

        def on_epoch(log: object) -> None:
            progress.update(task, description=f"epoch {log.epoch}: loss {log.train_loss:.4f} "  # type: ignore[attr-defined]
                            f"val {log.val_accuracy:.4%}")  # type: ignore[attr-defined]
            progress.console.print(json.dumps(log.__dict__))

        result = train(train_set.images, train_set.labels, cfg, checkpoint=ckpt,
                       test=(test_set.images, test_set.labels) if test_set else None,
                       on_epoch=on_epoch, on_step=on_step)
    stamp = time.strftime("%Y%m%d")
    contract = result.contract.with_(version=version or f"{arch}-{stamp}-s{seed}")
    card: dict[str, object] = {
        "training": describe(cfg),
        "training_data": {"source": train_set.source, "sha256": train_set.sha256,
                          "n": len(train_set.labels)},
        "train_seconds": round(result.seconds, 1),
        "best_epoch": result.best_epoch,
        "val_accuracy": result.val_accuracy,
        "history": [h.__dict__ for h in result.history],
        "threads": torch.get_num_threads(),
    }
    if test_set is not None:
        logits = predict_logits(result.model, contract, test_set.images, torch.device("cpu"))
        m = summarize(logits.numpy().astype("float64"), test_set.labels, contract.temperature)
        card["test_data"] = {"source": test_set.source, "sha256": test_set.sha256}
        card["test_metrics"] = {k: m[k] for k in ("n", "accuracy", "errors", "macro_f1", "nll",
                                                   "ece", "ece_uncalibrated", "error_at_reject")}
    save_model(result.model, contract, out, card)
    if ckpt.exists():
        ckpt.unlink()
    console.print(f"wrote {out} (+ {out.with_suffix('.json').name}); "
                  f"{result.seconds:.0f} s, best val {result.val_accuracy:.4%}, "
                  f"T={contract.temperature:.3f}")


def evaluate_command(
    data: Annotated[str, typer.Option(help="Dataset: mnist, usps, or a folder.")] = "mnist",
    model: Annotated[str, typer.Option(help="Weights file (default: shipped).")] = "default",
    split: Annotated[str, typer.Option(help="train or test.")] = "test",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    report: Annotated[Path | None, typer.Option(help="Write metrics.json + PNGs here.")] = None,
    device: Annotated[str, typer.Option()] = "auto",
    second_opinion: Annotated[str, typer.Option(
        help="'none' (the model alone), 'auto' or a paired file: score the cascade.")
    ] = "none",
) -> None:
    """Evaluate a model: accuracy, macro-F1, NLL, ECE, error at reject, per-class scores."""
    from rich.console import Console

    from models.evaluate import evaluate, write_report

    result, logits, labels = evaluate(model, data, split, device, second_opinion)
    if report is not None:
        write_report(result, logits, labels, report)
    shown = {k: v for k, v in result.items() if k != "confusion"}
    if as_json:
        typer.echo(json.dumps(shown))
        return
    c = Console()
    c.print(f"[bold]{result['data']}[/] with model {result['model']}: n={result['n']}")
    for k in ("accuracy", "macro_f1", "nll", "ece", "ece_uncalibrated"):
        c.print(f"  {k:18s} {result[k]:.5f}")
    c.print(f"  error_at_reject    {json.dumps(result['error_at_reject'])}")


def register(app: typer.Typer) -> None:
    """Add ``train``, ``evaluate`` and ``finetune``."""
    app.command("train")(train_command)
    app.command("evaluate")(evaluate_command)
    try:
        from models.finetune_cli import finetune_command
    except ImportError:  # written in parallel; registered once it exists
        return
    app.command("finetune")(finetune_command)
