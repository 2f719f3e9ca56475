"""The preprocessing contract a model carries inside its weights file.

Inference derives its transforms from this record, so training and production cannot
drift apart: the pipeline's crops are normalized with the same ``input_size``/``fit_box``
(:func:`pipeline.normalize.normalize_digit`) and scaled with the same ``mean``/``std``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from pipeline.normalize import FIT_BOX, INPUT_SIZE

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


@dataclass(frozen=True)
class Contract:
    """Architecture name, input preprocessing, labels, calibration and version of a model."""

    arch: str = "digitnet"
    input_size: int = INPUT_SIZE
    fit_box: int = FIT_BOX
    mean: float = MNIST_MEAN
    std: float = MNIST_STD
    ink: str = "white-on-black, bbox fit into fit_box, centred by mass"
    labels: tuple[str, ...] = tuple(str(d) for d in range(10))
    temperature: float = 1.0
    version: str = "0"
    parent: str | None = None  # version of the model this one was fine-tuned from
    extra: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        """Serialize (stored in the safetensors metadata)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Contract:
        """Parse what :meth:`to_json` wrote."""
        d = json.loads(text)
        d["labels"] = tuple(d.get("labels", ()))
        return cls(**d)

    def with_(self, **changes: object) -> Contract:
        """A copy with some values changed."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def to_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, 28, 28)`` (or ``(N, 1, 28, 28)``) → normalized float ``(N, 1, 28, 28)``."""
        x = pixels if pixels.dim() == 4 else pixels.unsqueeze(1)
        return (x.float() * (1.0 / 255.0) - self.mean) / self.std

    def to_input_np(self, pixels: np.ndarray) -> torch.Tensor:
        """Same as :meth:`to_input` for a numpy array."""
        return self.to_input(torch.from_numpy(np.ascontiguousarray(pixels)))
