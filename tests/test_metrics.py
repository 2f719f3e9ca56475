"""Metrics checked against small hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import metrics
from models.calibration import fit_temperature


def test_accuracy_confusion_f1_by_hand():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 1, 1])
    assert metrics.accuracy(probs, labels) == 0.75
    cm = metrics.confusion(probs.argmax(1), labels, k=2)
    assert cm.tolist() == [[1, 0], [1, 2]]
    pc = metrics.per_class(cm)
    assert pc["0"]["precision"] == 0.5 and pc["0"]["recall"] == 1.0
    assert pc["1"]["precision"] == 1.0 and pc["1"]["recall"] == pytest.approx(2 / 3)
    f1_0 = 2 * 0.5 * 1 / 1.5
    f1_1 = 2 * 1 * (2 / 3) / (1 + 2 / 3)
    assert metrics.macro_f1(cm) == pytest.approx((f1_0 + f1_1) / 2)


def test_nll_and_ece_by_hand():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = np.array([0, 1, 0, 0])
    assert metrics.nll(probs, labels) == pytest.approx(
        -(np.log(0.9) + np.log(0.1) + 2 * np.log(0.6)) / 4
    )
    # Bin of 0.9: acc 0.5 conf 0.9 → gap 0.4; bin of 0.6: acc 1.0, conf 0.6 → gap 0.4.
    assert metrics.ece(probs, labels, n_bins=10) == pytest.approx(0.4)


def test_error_at_reject_by_hand():
    # 200 digits: the 2 least confident are the only errors → rejecting 1% removes both.
    probs = np.tile([0.99, 0.01], (200, 1))
    labels = np.zeros(200, int)
    probs[:2] = [0.55, 0.45]
    labels[:2] = 1
    e = metrics.error_at_reject(probs, labels, (0.005, 0.01))
    assert e["0.005"] == pytest.approx(1 / 199)
    assert e["0.01"] == 0.0


def test_temperature_recovers_known_scale():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(4000, 10)) * 2
    labels = np.array([rng.choice(10, p=metrics.softmax(r[None])[0]) for r in true_logits])
    t = fit_temperature(torch.tensor(true_logits * 3.0), torch.tensor(labels))
    assert t == pytest.approx(3.0, rel=0.1)
