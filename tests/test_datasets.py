"""Dataset loaders: IDX (gzip and raw), USPS text, folder-per-class; clear errors on bad files."""

from __future__ import annotations

import gzip
import struct

import cv2
import numpy as np
import pytest

from models.datasets import detect_format, load_digits, read_idx, read_usps
from pipeline.errors import DatasetFormatError


def _idx_images(n: int, rows: int = 28, cols: int = 28) -> bytes:
    body = (np.arange(n * rows * cols) % 256).astype(np.uint8).tobytes()
    return struct.pack(">IIII", 2051, n, rows, cols) + body


def test_read_idx_raw_and_gzip(tmp_path):
    raw = _idx_images(3)
    (tmp_path / "a-idx3-ubyte").write_bytes(raw)
    (tmp_path / "b-idx3-ubyte.gz").write_bytes(gzip.compress(raw))
    a = read_idx(tmp_path / "a-idx3-ubyte")
    b = read_idx(tmp_path / "b-idx3-ubyte.gz")
    assert a.shape == (3, 28, 28) and np.array_equal(a, b)
    labels = struct.pack(">II", 2049, 4) + bytes([1, 2, 3, 9])
    (tmp_path / "l").write_bytes(labels)
    assert read_idx(tmp_path / "l").tolist() == [1, 2, 3, 9]


def test_read_idx_truncated_names_file(tmp_path):
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(_idx_images(3)[:-10])
    with pytest.raises(DatasetFormatError, match=r"train-images-idx3-ubyte.*truncated"):
        read_idx(p)


def test_read_idx_wrong_magic(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(struct.pack(">II", 1234, 0))
    with pytest.raises(DatasetFormatError, match="magic 1234"):
        read_idx(p)


def test_read_idx_bad_gzip(tmp_path):
    p = tmp_path / "x.gz"
    p.write_bytes(gzip.compress(_idx_images(2))[:30])
    with pytest.raises(DatasetFormatError, match="gzip"):
        read_idx(p)


def test_read_usps_and_errors(tmp_path):
    row = "3 " + " ".join(["-1"] * 100 + ["1"] * 56 + ["-1"] * 100)
    p = tmp_path / "zip.train"
    p.write_text(row + "\n" + row + "\n")
    imgs, labels = read_usps(p)
    assert imgs.shape == (2, 16, 16) and labels.tolist() == [3, 3]
    assert imgs.max() == 255 and imgs.min() == 0
    bad = tmp_path / "zip.test"
    bad.write_text("3 1 2 3\n")
    with pytest.raises(DatasetFormatError, match=r"zip\.test:1: expected 257"):
        read_usps(bad)


def test_folder_per_class_inverts_dark_ink(tmp_path):
    for d in (1, 7):
        (tmp_path / str(d)).mkdir()
        img = np.full((40, 30), 255, np.uint8)
        cv2.line(img, (15, 5), (15, 35), 0, 3)  # dark ink on white paper
        cv2.imwrite(str(tmp_path / str(d) / "a.png"), img)
    assert detect_format(tmp_path) == "folder"
    ds = load_digits(tmp_path)
    assert ds.images.shape == (2, 28, 28) and ds.labels.tolist() == [1, 7]
    # Ink is bright and fits the 20-pixel box, centred.
    ys, _xs = np.nonzero(ds.images[0] > 30)
    assert ys.max() - ys.min() + 1 <= 20 and ds.images[0, 0, 0] == 0


def test_unknown_folder_is_clear_error(tmp_path):
    with pytest.raises(DatasetFormatError, match="not a dataset folder"):
        detect_format(tmp_path)


@pytest.mark.data
def test_mnist_test_split_is_canonical(mnist_dir):
    ds = load_digits(mnist_dir, "test")
    assert ds.images.shape == (10000, 28, 28)
    assert np.bincount(ds.labels).tolist()[:3] == [980, 1135, 1032]


@pytest.mark.data
def test_usps_is_renormalized_to_contract(usps_dir):
    ds = load_digits(usps_dir, "test")
    assert ds.images.shape == (2007, 28, 28)
    # USPS digits fill their 16x16 frame; after normalization their box is 20 px like MNIST.
    for img in ds.images[:100]:
        ys, xs = np.nonzero(img > 0.12 * img.max())
        assert max(np.ptp(ys), np.ptp(xs)) + 1 in (19, 20, 21)
