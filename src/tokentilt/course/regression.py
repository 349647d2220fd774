"""The classroom's regression losses: L1 and L2 on a scalar, for the course's L1-vs-L2 experiment
(jobs/experiments/l1_vs_l2.py)."""

from __future__ import annotations

import torch
import torch.nn as nn

from tokentilt.objectives.losses import reduce_loss


def l1_loss(y_hat: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """|y - y_hat|. Its gradient is a constant +-1, so SGD oscillates around the optimum."""
    return reduce_loss((y - y_hat).abs(), reduction)


def l2_loss(y_hat: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """(y - y_hat)^2. Its gradient shrinks near the optimum, so SGD converges smoothly."""
    return reduce_loss((y - y_hat) ** 2, reduction)


class L1Loss(nn.Module):
    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return l1_loss(y_hat, y, self.reduction)


class L2Loss(nn.Module):
    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return l2_loss(y_hat, y, self.reduction)
