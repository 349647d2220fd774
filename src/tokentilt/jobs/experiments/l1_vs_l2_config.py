"""Experiment l1-vs-l2's settings (l1_vs_l2.py), without torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class L1VsL2Config:
    """The course's toy problem."""

    target: float = 5.0  # y
    start: float = 0.0  # initial value of the single parameter y_hat
    probe: float = 2.0  # the prediction at which both losses are reported (L1 = 3, L2 = 9)
    lr: float = 0.05  # SGD learning rate
    epochs: int = 200  # SGD steps for each loss (L1 needs 100 to reach the target from 0)
    window: int = 20  # last steps over which the oscillation amplitude is measured
    out: str = "runs/exp/l1-vs-l2"  # output folder
    overwrite: bool = False  # replace an existing run folder
    seed: int = 0  # unused by this deterministic experiment; kept for a uniform interface

    def check(self) -> None:
        if not self.lr > 0 or self.epochs < 1 or not 1 <= self.window <= self.epochs:
            raise ValueError("lr must be > 0, epochs >= 1 and 1 <= window <= epochs")
