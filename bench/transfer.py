"""Transfer-learning benchmark (issue 3): MNIST model → USPS handwriting.

Measures USPS test accuracy (2,007 digits) of

- the MNIST model zero-shot;
- the model fine-tuned (:func:`models.finetune.finetune`) on 100 / 500 / 1,000 / all 7,291
  USPS training digits, without and with MNIST replay (30 % of each batch);
- the same architecture trained from scratch (:func:`models.train.train`, ``init=None``)
  on the same subsets with the same budget (optimizer steps, batch size, validation size);

and MNIST test accuracy (10,000) after each fine-tune (forgetting). Small subsets are run
with 3 seeds (subset, split and training seed); the table gives mean ± std (sample std).
Writes ``bench/transfer_results.json`` and the table in ``docs/TRANSFER.md``.

Run: ``python -m bench.transfer --json`` (full: ~6 min wall on one free core) or
``--quick`` (1 seed, a short budget for all digits); ``--base FILE`` picks the model.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.finetune import FinetuneConfig, finetune, limit_indices, plan_schedule, split_holdout
from models.train import TrainConfig, predict_logits, train

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "transfer_results.json"
DOC = ROOT / "docs" / "TRANSFER.md"
BEGIN, END = "<!-- transfer:begin -->", "<!-- transfer:end -->"
SIZES: list[int | None] = [100, 500, 1000, None]  # None = all 7,291
REPLAY = 0.3
TARGETS = {
    "zero_shot_usps_acc_min": 0.95,
    "finetune_all_usps_err_max": 0.02,
    "finetune_500_minus_scratch_min": 0.03,
    "replay_mnist_drop_max": 0.003,
}


def _acc(model: torch.nn.Module, contract: Any, x: np.ndarray, y: np.ndarray) -> float:
    logits = predict_logits(model, contract, x, torch.device("cpu"))
    return float((logits.argmax(1).numpy() == y).mean())


class Clock:
    """Wall and process-CPU seconds of a block (CPU counts every thread of the process)."""

    def __enter__(self) -> Clock:
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.w
        self.cpu = time.process_time() - self.c


def run_one(base: Any, data: dict[str, np.ndarray], size: int | None, seed: int,
            quick: bool) -> list[dict[str, Any]]:
    """Fine-tune (no replay, replay) and train from scratch on one USPS subset."""
    model0, contract0 = base
    idx = limit_indices(data["usps_train_y"], size, seed)
    x, y = data["usps_train_x"][idx], data["usps_train_y"][idx]
    epochs = 2 if quick and size is None else None
    rows = []
    for replay in (0.0, REPLAY):
        cfg = FinetuneConfig(epochs=epochs, replay=replay, seed=seed, device="cpu")
        with Clock() as clk:
            res = finetune(copy.deepcopy(model0), contract0, x, y, cfg,
                           replay=(data["mnist_train_x"], data["mnist_train_y"]))
        rows.append({
            "method": "finetune_replay" if replay else "finetune", "size": len(idx),
            "seed": seed, "usps_test": _acc(res.model, res.contract, data["usps_test_x"],
                                            data["usps_test_y"]),
            "mnist_test": _acc(res.model, res.contract, data["mnist_test_x"],
                               data["mnist_test_y"]),
            "val_accuracy": res.val_accuracy, "base_val_accuracy": res.base_val_accuracy,
            "steps": res.steps_run, "epochs": res.epochs_run, "best_step": res.best_step,
            "n_train": res.n_train, "n_val": res.n_val,
            "temperature": res.contract.temperature, "wall_s": clk.wall, "cpu_s": clk.cpu})
    # From scratch: same digits, same validation size, same batch and step budget as the
    # fine-tune's plan (not its early-stopped length, which would favour fine-tuning).
    fcfg = FinetuneConfig(epochs=epochs)
    tr, va = split_holdout(y, fcfg.val_fraction, fcfg.min_val, seed)
    spe_ft = math.ceil(len(tr) / fcfg.batch_size)
    budget, _ = plan_schedule(len(tr), spe_ft, epochs)
    batch = min(fcfg.batch_size, len(tr))
    scfg = TrainConfig(epochs=max(1, math.ceil(budget / max(1, len(tr) // batch))),
                       batch_size=batch, val_size=len(va), seed=seed, device="cpu")
    with Clock() as clk:
        sres = train(x, y, scfg, init=None)
    rows.append({
        "method": "scratch", "size": len(idx), "seed": seed,
        "usps_test": _acc(sres.model, sres.contract, data["usps_test_x"], data["usps_test_y"]),
        "mnist_test": _acc(sres.model, sres.contract, data["mnist_test_x"],
                           data["mnist_test_y"]),
        "val_accuracy": sres.val_accuracy, "steps": scfg.epochs * (len(tr) // batch),
        "epochs": scfg.epochs, "n_train": len(tr), "n_val": len(va),
        "temperature": sres.contract.temperature, "wall_s": clk.wall, "cpu_s": clk.cpu})
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std per (method, size) over seeds."""
    out = []
    for method in ("finetune", "finetune_replay", "scratch"):
        for size in sorted({r["size"] for r in rows}):
            grp = [r for r in rows if r["method"] == method and r["size"] == size]
            if not grp:
                continue
            entry: dict[str, Any] = {"method": method, "size": size, "seeds": len(grp)}
            for key in ("usps_test", "mnist_test", "wall_s", "cpu_s", "steps"):
                v = np.asarray([r[key] for r in grp], float)
                entry[key] = float(v.mean())
                entry[key + "_std"] = float(v.std(ddof=1)) if len(v) > 1 else None
            out.append(entry)
    return out


def check_targets(zero: dict[str, float], summary: list[dict[str, Any]],
                  n_all: int) -> dict[str, Any]:
    """The issue's targets, each with the measured value and pass/fail."""
    get = {(s["method"], s["size"]): s for s in summary}
    res: dict[str, Any] = {"zero_shot_usps_acc": {"value": zero["usps_test"],
                                                  "pass": zero["usps_test"] >= 0.95}}
    if ("finetune", n_all) in get:
        err = 1.0 - get[("finetune", n_all)]["usps_test"]
        res["finetune_all_usps_err"] = {"value": err, "pass": err <= 0.02}
    if ("finetune", 500) in get and ("scratch", 500) in get:
        gap = get[("finetune", 500)]["usps_test"] - get[("scratch", 500)]["usps_test"]
        res["finetune_500_minus_scratch"] = {"value": gap, "pass": gap >= 0.03}
    drops = [zero["mnist_test"] - s["mnist_test"] for s in summary
             if s["method"] == "finetune_replay"]
    if drops:
        res["replay_mnist_drop_max"] = {"value": max(drops), "pass": max(drops) <= 0.003}
    return res


def _pm(mean: float, std: float | None, scale: float = 100.0) -> str:
    return f"{mean * scale:.2f}" + (f" ± {std * scale:.2f}" if std is not None else "")


def render_table(result: dict[str, Any]) -> str:
    """Markdown table + notes for docs/TRANSFER.md."""
    zero, summ = result["zero_shot"], result["summary"]
    get = {(s["method"], s["size"]): s for s in summ}
    lines = [
        f"Base model `{result['base_version']}`; USPS test n=2,007, MNIST test n=10,000; "
        f"torch threads: {result['threads']}; command `{result['command']}`; "
        f"total wall {result['wall_s'] / 60:.1f} min, process CPU {result['cpu_s'] / 60:.1f} "
        f"min ({result['date']}).",
        "",
        "| USPS train digits | fine-tuned: USPS test % | from scratch: USPS test % | "
        "fine-tuned + replay: USPS test % | MNIST test % after fine-tune | "
        "MNIST test % after fine-tune + replay | seeds | wall s (ft / ft+replay / scratch) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| 0 (zero-shot) | {zero['usps_test'] * 100:.2f} | — | — | "
        f"{zero['mnist_test'] * 100:.2f} | — | — | — |",
    ]
    for size in sorted({s["size"] for s in summ}):
        ft, sc, rp = (get.get((m, size)) for m in ("finetune", "scratch", "finetune_replay"))
        if ft is None or sc is None or rp is None:
            continue
        lines.append(
            f"| {size:,} | {_pm(ft['usps_test'], ft['usps_test_std'])} | "
            f"{_pm(sc['usps_test'], sc['usps_test_std'])} | "
            f"{_pm(rp['usps_test'], rp['usps_test_std'])} | "
            f"{_pm(ft['mnist_test'], ft['mnist_test_std'])} | "
            f"{_pm(rp['mnist_test'], rp['mnist_test_std'])} | {ft['seeds']} | "
            f"{ft['wall_s']:.0f} / {rp['wall_s']:.0f} / {sc['wall_s']:.0f} |")
    lines += ["", "| target | measured | met |", "| --- | --- | --- |"]
    names = {"zero_shot_usps_acc": "zero-shot USPS test accuracy ≥ 95 %",
             "finetune_all_usps_err": "fine-tuned on all USPS train: test error ≤ 2.0 %",
             "finetune_500_minus_scratch": "500 digits: fine-tuned − scratch ≥ 3 points",
             "replay_mnist_drop_max": "with replay: MNIST test drop ≤ 0.3 points (worst size)"}
    units = {"finetune_500_minus_scratch": " points", "replay_mnist_drop_max": " points"}
    for key, t in result["targets"].items():
        lines.append(f"| {names[key]} | {t['value'] * 100:.2f}{units.get(key, ' %')} | "
                     f"{'yes' if t['pass'] else '**no**'} |")
    return "\n".join(lines)


def write_doc(table: str) -> None:
    """Replace the generated block of docs/TRANSFER.md (the prose around it is kept)."""
    text = DOC.read_text() if DOC.is_file() else f"# Transfer learning\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    DOC.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print JSON with ``--json``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 seed; 2 epochs for all digits")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--base", default="default", help="pretrained weights (default: shipped)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds for the small subsets")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--no-write", action="store_true", help="do not write JSON/doc files")
    ap.add_argument("--render", action="store_true",
                    help="only re-render docs/TRANSFER.md from bench/transfer_results.json")
    args = ap.parse_args(argv)
    if args.render:
        write_doc(render_table(json.loads(RESULTS.read_text())))
        return 0
    torch.set_num_threads(args.threads)
    from models.datasets import load_digits
    from models.weights import file_sha256, load_model, resolve_weights

    t_wall, t_cpu = time.perf_counter(), time.process_time()
    base_path = resolve_weights(args.base)
    base = load_model(base_path)
    data: dict[str, np.ndarray] = {}
    for name in ("usps", "mnist"):
        for split in ("train", "test"):
            ds = load_digits(name, split)
            data[f"{name}_{split}_x"], data[f"{name}_{split}_y"] = ds.images, ds.labels
    zero = {"usps_test": _acc(*base, data["usps_test_x"], data["usps_test_y"]),
            "mnist_test": _acc(*base, data["mnist_test_x"], data["mnist_test_y"])}
    print(f"zero-shot: USPS {zero['usps_test']:.4f}, MNIST {zero['mnist_test']:.4f}",
          file=sys.stderr, flush=True)
    seeds = 1 if args.quick else args.seeds
    rows: list[dict[str, Any]] = []
    for size in SIZES:
        for seed in range(seeds if size is not None else 1):
            for r in run_one(base, data, size, seed, args.quick):
                rows.append(r)
                print(f"{r['method']:16s} n={r['size']:5d} seed={seed} USPS {r['usps_test']:.4f} "
                      f"MNIST {r['mnist_test']:.4f} steps {r['steps']} "
                      f"{r['wall_s']:.0f} s", file=sys.stderr, flush=True)
    summary = summarize(rows)
    n_all = len(data["usps_train_y"])
    result: dict[str, Any] = {
        "command": " ".join(["python -m bench.transfer", *(sys.argv[1:] if argv is None
                                                           else argv)]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "base": str(base_path.name), "base_version": base[1].version,
        "base_sha256": file_sha256(base_path), "threads": args.threads,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "torch": torch.__version__, "load_avg_at_end": os.getloadavg()},
        "replay_fraction": REPLAY, "zero_shot": zero, "rows": rows, "summary": summary,
        "targets": check_targets(zero, summary, n_all),
        "wall_s": time.perf_counter() - t_wall, "cpu_s": time.process_time() - t_cpu,
    }
    if not args.no_write:
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        write_doc(render_table(result))
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
