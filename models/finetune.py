"""Transfer learning: fine-tune a pretrained digit model on a user's own handwriting.

The recipe is built to work with 100 digits as well as with 10,000:

1. hold out a stratified validation split of the user's digits (15 %, at least 20);
2. warm up the head alone: the backbone's parameters get ``requires_grad=False`` and its
   BatchNorm layers stay in eval mode, so a randomly-ordered first few batches cannot
   wreck features learned from 60,000 MNIST digits;
3. unfreeze and train everything with discriminative learning rates (each layer group
   closer to the input gets ``lr_decay`` times the rate of the one above it) on a
   warm-up + cosine schedule;
4. optionally replay MNIST training digits (a fixed fraction of every batch) so the
   model does not forget the handwriting it was trained on;
5. keep the weights with the best validation accuracy (the base model itself is the
   first candidate, so fine-tuning can never make validation accuracy worse), stop early
   when it stops improving, and re-fit the temperature on the validation split.

Steps scale with the data (:func:`plan_schedule`): 100 digits take seconds on a CPU,
7,291 take a few minutes. :func:`finetune_file` is the file-to-file entry point used by
the ``formdigits finetune`` command; :func:`finetune` works on arrays (benchmarks, tests).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.calibration import fit_temperature
from models.contract import Contract
from models.train import GroupAugmenter, predict_logits


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyper-parameters of a fine-tuning run (recorded in the model card)."""

    epochs: int | None = None  # None: scaled to the data size by plan_schedule
    replay: float = 0.0  # fraction of every batch drawn from the replay set (MNIST train)
    seed: int = 0
    val_fraction: float = 0.15
    min_val: int = 20
    batch_size: int = 64
    lr: float = 2e-3  # head learning rate; earlier groups get lr * lr_decay**depth
    lr_decay: float = 0.5
    weight_decay: float = 0.01
    label_smoothing: float = 0.05
    augment: float = 1.0
    warmup_fraction: float = 0.15  # share of the steps spent training the head alone
    patience: float = 0.3  # stop after this share of the steps without improvement
    bn_train_min: int = 1000  # below this many training digits BatchNorm stays frozen
    device: str = "auto"


@dataclass
class EvalLog:
    """One validation check during fine-tuning."""

    step: int
    epoch: float
    phase: str  # "base" | "head" | "all"
    seconds: float
    train_loss: float
    val_accuracy: float
    val_nll: float


@dataclass
class FinetuneResult:
    """The fine-tuned model (calibrated contract) and what happened."""

    model: nn.Module
    contract: Contract
    history: list[EvalLog] = field(default_factory=list)
    best_step: int = 0
    val_accuracy: float = 0.0
    base_val_accuracy: float = 0.0
    steps_run: int = 0
    epochs_run: float = 0.0
    n_train: int = 0
    n_val: int = 0
    seconds: float = 0.0
    temperature_fitted: bool = False  # False: no validation error, base temperature kept
    val_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # held out
    config: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- data
def limit_indices(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Indices of a stratified random subset of ``limit`` digits (all when ``None``).

    Each class keeps its share of the data (largest remainders), so 100 digits of a
    skewed set still cover every class the set has.
    """
    n = len(labels)
    if limit is None or limit >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * limit / n
    take = np.floor(quota).astype(int)
    extra = np.argsort(-(quota - take), kind="stable")[: limit - int(take.sum())]
    take[extra] += 1
    parts = [rng.permutation(np.flatnonzero(labels == c))[:k]
             for c, k in zip(classes, take, strict=True)]
    return np.sort(np.concatenate(parts))


def split_holdout(labels: np.ndarray, fraction: float, min_val: int,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, val) index split: ``fraction`` of the data, at least ``min_val``."""
    n = len(labels)
    n_val = min(max(min_val, round(fraction * n)), n // 2)
    val = limit_indices(labels, n_val, seed + 7919)  # its own stream: not the limit's draw
    train = np.setdiff1d(np.arange(n), val)
    return train, val


class BatchMixer:
    """Batches over the user's digits, a fixed share of each one replaced by replay digits.

    Every epoch visits each user digit once (shuffled); each batch carries
    ``round(batch_size * fraction)`` replay digits drawn at random from the replay set.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                 replay: tuple[torch.Tensor, torch.Tensor] | None = None,
                 fraction: float = 0.0, seed: int = 0) -> None:
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"replay fraction must be in [0, 1), got {fraction}")
        self.x, self.y, self.replay = x, y, replay
        self.n_replay = round(batch_size * fraction) if replay is not None else 0
        self.n_user = max(1, min(batch_size - self.n_replay, len(y)))
        self.gen = torch.Generator().manual_seed(seed)

    @property
    def steps_per_epoch(self) -> int:
        """Batches per pass over the user's digits (the last one may be short)."""
        return math.ceil(len(self.y) / self.n_user)

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """Yield ``(x uint8 (B,1,28,28), y (B,), n_replay)`` for one epoch."""
        perm = torch.randperm(len(self.y), generator=self.gen)
        for s in range(self.steps_per_epoch):
            idx = perm[s * self.n_user : (s + 1) * self.n_user]
            x, y = self.x[idx], self.y[idx]
            if self.n_replay and self.replay is not None:
                # Keep the configured share even for a short last batch.
                k = max(1, round(len(idx) * self.n_replay / self.n_user))
                r = torch.randint(len(self.replay[1]), (k,), generator=self.gen)
                x, y = torch.cat([x, self.replay[0][r]]), torch.cat([y, self.replay[1][r]])
                yield x, y, k
            else:
                yield x, y, 0


# ----------------------------------------------------------------------------- model
def layer_groups(model: nn.Module) -> list[list[nn.Module]]:
    """The model's layers from input to output, one group per Conv/Linear (+ its norm).

    The last group is the classifier head. Works for any registry architecture without
    naming its attributes.
    """
    groups: list[list[nn.Module]] = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            groups.append([m])
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and groups:
            groups[-1].append(m)
    if len(groups) < 2:
        raise ValueError("model needs at least two layers to fine-tune (backbone + head)")
    return groups


def set_backbone_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze (``requires_grad=False``) or unfreeze everything but the head group."""
    head = {id(p) for m in layer_groups(model)[-1] for p in m.parameters()}
    for p in model.parameters():
        p.requires_grad_(not frozen or id(p) in head)


def train_mode(model: nn.Module, freeze_bn: bool) -> None:
    """``model.train()``, but BatchNorm layers stay in eval mode when ``freeze_bn``.

    Frozen BatchNorm keeps the pretrained running statistics: with a frozen backbone
    (or a few dozen digits) batch statistics would silently drift the features.
    """
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def param_groups(model: nn.Module, lr: float, decay: float,
                 weight_decay: float) -> list[dict[str, Any]]:
    """Optimizer groups with discriminative rates: head ``lr``, each earlier group × decay."""
    groups = [[p for m in mods for p in m.parameters(recurse=False)]
              for mods in reversed(layer_groups(model))]
    # Parameters outside Conv/Linear/BatchNorm layers (none in the registry today) still
    # train, at the most careful rate, instead of silently staying at their initial values.
    grouped = {id(p) for g in groups for p in g}
    groups[-1] += [p for p in model.parameters() if id(p) not in grouped]
    return [{"params": params, "lr": lr * decay**depth, "weight_decay": weight_decay}
            for depth, params in enumerate(groups)]


# ----------------------------------------------------------------------------- recipe
def plan_schedule(n_train: int, steps_per_epoch: int, epochs: int | None) -> tuple[int, int]:
    """``(total_steps, eval_every)`` for ``n_train`` digits.

    Auto budget: ~25 epochs for small sets, fewer for big ones, bounded to 200–2,000
    steps — seconds for 100 digits, a few minutes for 7,291 on 2 CPU cores.
    """
    if epochs is not None:
        total = max(1, epochs * steps_per_epoch)
    else:
        total = int(np.clip(round(25 * steps_per_epoch * min(1.0, (2000 / max(n_train, 1)) ** 0.3)),
                            200, 2000))
    eval_every = max(1, min(max(steps_per_epoch, 20), total // 10 or 1))
    return total, eval_every


def warm_cosine(steps: int) -> Callable[[int], float]:
    """LR factor: linear ramp over the first 10 % of ``steps``, then cosine to zero.

    The ramp lets Adam's moment estimates settle before the unfrozen backbone moves.
    """
    n, ramp = max(1, steps), max(1, steps // 10)
    return lambda s: min((s + 1) / ramp, 0.5 * (1.0 + math.cos(math.pi * min(s, n) / n)))


def _evaluate(model: nn.Module, contract: Contract, x: np.ndarray, y: np.ndarray,
              device: torch.device) -> tuple[float, float, torch.Tensor]:
    logits = predict_logits(model, contract, x, device)
    acc = float((logits.argmax(1).numpy() == y).mean())
    nll = float(F.cross_entropy(logits, torch.from_numpy(y)))
    return acc, nll, logits


def finetune(
    model: nn.Module,
    contract: Contract,
    images: np.ndarray,
    labels: np.ndarray,
    cfg: FinetuneConfig,
    *,
    replay: tuple[np.ndarray, np.ndarray] | None = None,
    on_eval: Callable[[EvalLog], None] | None = None,
) -> FinetuneResult:
    """Fine-tune ``model`` (modified in place) on normalized uint8 digits ``(N, 28, 28)``.

    Returns the best-on-validation model with a re-fitted temperature; ``replay`` is the
    pool for ``cfg.replay`` (ignored when the fraction is 0).
    """
    from models.predictor import pick_device

    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    tr, va = split_holdout(labels, cfg.val_fraction, cfg.min_val, cfg.seed)
    if len(tr) == 0:
        raise ValueError(f"too few digits to fine-tune ({len(labels)})")
    x_val, y_val = images[va], labels[va].astype(np.int64)
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    rep = None
    if cfg.replay > 0 and replay is not None:
        rep = (as_t(replay[0]).unsqueeze(1), as_t(replay[1].astype(np.int64)))
    mixer = BatchMixer(as_t(images[tr]).unsqueeze(1), as_t(labels[tr].astype(np.int64)),
                       cfg.batch_size, rep, cfg.replay if rep else 0.0, cfg.seed)
    total, eval_every = plan_schedule(len(tr), mixer.steps_per_epoch, cfg.epochs)
    warm = max(1, round(cfg.warmup_fraction * total))
    patience = max(3 * eval_every, round(cfg.patience * total))
    freeze_bn_always = len(tr) < cfg.bn_train_min
    augment = GroupAugmenter(cfg.augment, group=4)

    model = model.to(device).to(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    res = FinetuneResult(model=model, contract=contract, n_train=len(tr), n_val=len(va),
                         config=asdict(cfg), val_index=va)
    acc, nll, _ = _evaluate(model, contract, x_val, y_val, device)
    best = (acc, -nll)
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    res.base_val_accuracy = res.val_accuracy = acc
    res.history.append(EvalLog(0, 0.0, "base", 0.0, float("nan"), acc, nll))

    # Phase 1: head only. Phase 2 (built at the switch): all layers, discriminative lrs.
    set_backbone_frozen(model, True)
    opt: torch.optim.Optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
        weight_decay=cfg.weight_decay)
    sched: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 1.0)
    step, loss_sum, loss_n, last_best = 0, 0.0, 0, 0
    while step < total and step - last_best <= patience:
        for x8, y, _ in mixer.epoch():
            if step == warm:
                set_backbone_frozen(model, False)
                opt = torch.optim.AdamW(param_groups(model, cfg.lr, cfg.lr_decay,
                                                     cfg.weight_decay))
                sched = torch.optim.lr_scheduler.LambdaLR(opt, warm_cosine(total - warm))
            phase = "head" if step < warm else "all"
            train_mode(model, freeze_bn=phase == "head" or freeze_bn_always)
            x = contract.to_input(augment(x8).to(device)).contiguous(
                memory_format=torch.channels_last)
            loss = F.cross_entropy(model(x), y.to(device), label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            loss_sum, loss_n = loss_sum + float(loss.detach()), loss_n + 1
            if step % eval_every == 0 or step in (total, warm):
                acc, nll, _ = _evaluate(model, contract, x_val, y_val, device)
                log = EvalLog(step, round(step / mixer.steps_per_epoch, 3), phase,
                              time.perf_counter() - t0, loss_sum / loss_n, acc, nll)
                loss_sum, loss_n = 0.0, 0
                res.history.append(log)
                if (acc, -nll) > best:
                    best, last_best, res.best_step, res.val_accuracy = (acc, -nll), step, step, acc
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if on_eval:
                    on_eval(log)
            if step >= total or step - last_best > patience:
                break
    set_backbone_frozen(model, False)
    model.load_state_dict(best_state)
    _, _, logits = _evaluate(model, contract, x_val, y_val, device)
    # With no validation error the NLL keeps falling as T -> 0 (a fit would claim certainty
    # from a few dozen digits); keep the base model's temperature then.
    res.temperature_fitted = bool((logits.argmax(1).numpy() != y_val).any())
    temperature = (fit_temperature(logits, torch.from_numpy(y_val)) if res.temperature_fitted
                   else contract.temperature)
    res.model = model.cpu().eval()
    res.contract = contract.with_(temperature=temperature)
    res.steps_run, res.epochs_run = step, round(step / mixer.steps_per_epoch, 2)
    res.seconds = time.perf_counter() - t0
    return res
