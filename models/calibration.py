"""Temperature scaling (Guo et al., 2017): one scalar fitted on held-out logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 200) -> float:
    """The temperature ``T`` minimizing the NLL of ``softmax(logits / T)`` on held-out data."""
    if len(labels) == 0:
        return 1.0
    logits = logits.detach().float().clone()  # may come from inference_mode
    labels = labels.long().clone()
    log_t = torch.zeros(1, requires_grad=True)  # optimize log T so T stays positive
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    return t if 0.05 < t < 20.0 else 1.0
