"""CNN architectures, created by name: ``create_model("digitnet")``.

Every model takes ``(N, 1, 28, 28)`` float input normalized per the contract
(``(x/255 - mean) / std``, white ink on black) and returns ``(N, 10)`` logits
(``piecenet``: ``(N, 2)``, one digit or not; ``stringnet`` reads a whole string field,
``(N, 1, 32, 160)`` → ``(N, 40, 11)`` CTC logits).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

_REGISTRY: dict[str, Callable[[], nn.Module]] = {}


def register(name: str) -> Callable[[Callable[[], nn.Module]], Callable[[], nn.Module]]:
    """Decorator adding a model factory to the registry under ``name``."""

    def deco(fn: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        _REGISTRY[name] = fn
        return fn

    return deco


def available_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(_REGISTRY)


def create_model(name: str) -> nn.Module:
    """Instantiate a registered architecture (randomly initialized)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown model '{name}'; available: {', '.join(available_models())}")
    return _REGISTRY[name]()


def _cbr(cin: int, cout: int, k: int, pad: int) -> list[nn.Module]:
    # Conv without bias: the BatchNorm that follows has its own shift.
    return [nn.Conv2d(cin, cout, k, padding=pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]


class DigitNet(nn.Module):
    """Compact CNN: three conv blocks with BatchNorm, max-pooling and dropout (~0.1M params).

    Sized for CPU throughput: a 5x5 stem and valid convolutions shrink the maps early
    (28 → 24 → 12 → 10 → 5 → 3), so a forward pass costs ~3M multiply-adds while the
    flattened 3x3x128 head keeps the spatial layout that tells a 1 from a 7.
    """

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128), dropout: float = 0.25,
                 classes: int = 10):
        super().__init__()
        a, b, c = widths
        self.features = nn.Sequential(
            *_cbr(1, a, 5, 0),
            nn.MaxPool2d(2),
            *_cbr(a, b, 3, 0),
            nn.MaxPool2d(2),
            *_cbr(b, c, 3, 0),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c * 9, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, classes)`` for input ``(N, 1, 28, 28)``."""
        return self.head(self.features(x))


class SeedNet(nn.Module):
    """The seed article's baseline: one conv layer, max-pool, dense layer (for benchmarks)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 32, 3)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * 13 * 13, 100)
        self.fc2 = nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 10)``."""
        x = self.pool(torch.relu(self.conv(x)))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


@register("digitnet")
def digitnet() -> nn.Module:
    """The default production model."""
    return DigitNet()


@register("digitnet_wide")
def digitnet_wide() -> nn.Module:
    """A wider variant (more accurate, ~2x slower)."""
    return DigitNet(widths=(48, 96, 192))


@register("piecenet")
def piecenet() -> nn.Module:
    """String-field piece verifier: is this piece exactly one digit? (``models.pieces``)."""
    return DigitNet(widths=(32, 64, 128), dropout=0.1, classes=2)


class StringNet(nn.Module):
    """Segmentation-free reader of a whole string field (CRNN with a CTC head, ~0.23M params).

    Input ``(N, 1, 32, W)`` (the field's wall-free ink, :func:`pipeline.normalize.
    normalize_line`); four conv blocks shrink it to a sequence of ``W/4`` columns, a
    bidirectional GRU reads the sequence, and the head gives per-column log-odds over
    ``blank, 0..9`` (CTC, Graves et al. 2006). It never sees the segmenter's cuts, so it
    is an independent check of a string's reading where its digits touch.
    """

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64), hidden: int = 96,
                 classes: int = 11):
        super().__init__()
        a, b, c = widths
        self.features = nn.Sequential(
            *_cbr(1, a, 3, 1), nn.MaxPool2d(2),
            *_cbr(a, b, 3, 1), nn.MaxPool2d(2),
            *_cbr(b, c, 3, 1), *_cbr(c, c, 3, 1), nn.MaxPool2d((2, 1)),
            # The remaining 4 rows are read as one column feature.
            nn.Conv2d(c, 2 * c, (4, 1), bias=False), nn.BatchNorm2d(2 * c), nn.ReLU(True),
            nn.Dropout(0.2),
        )
        self.rnn = nn.GRU(2 * c, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, W/4, classes)`` for input ``(N, 1, 32, W)``; class 0 is CTC's blank."""
        f = self.features(x).squeeze(2).transpose(1, 2)
        return self.head(self.rnn(f)[0])


@register("stringnet")
def stringnet() -> nn.Module:
    """Whole-string reader for string fields (``models.strings``)."""
    return StringNet()


@register("boxnet")
def boxnet() -> nn.Module:
    """Whole-field reader for rows of boxes (``models.boxlines``): ``StringNet`` read over
    a wider ``(N, 1, 32, 256)`` line."""
    return StringNet()


@register("seednet")
def seednet() -> nn.Module:
    """One-conv-layer baseline from the seed article."""
    return SeedNet()
