"""Experiment x-factor's settings (x_factor.py), without torch. bf16 defaults to what the hardware runs natively,
asked when an instance is made (settings.native_bf16)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from tokentilt.settings import EvalConfig, TrainConfig, native_bf16


@dataclass
class XFactorConfig:
    """The course's recipe, scaled to fit in ~10 minutes on 2 CPU cores."""

    model: str = "bundled"  # "bundled", a local HF folder, or a hub id
    toward: str = "x"  # selector of the X tokens
    lrs: list[float] = field(default_factory=lambda: [1e-6, 1e-4])  # one run per learning rate, same start
    epochs: int = 150  # Adam steps per learning rate
    batch: int = 4  # B
    seq_len: int = 64  # T
    alpha: float = 1.0  # target weight of X tokens
    beta: float = 1e-4  # target weight of all other tokens
    bf16: bool = field(default_factory=native_bf16)  # bf16 autocast where the CPU runs it natively
    eval_every: int = 50  # steps between light R measurements
    seed: int = 0  # seeds the random inputs
    out: str = "runs/exp/x-factor"  # output folder
    overwrite: bool = False  # replace an existing run folder
    eval: EvalConfig = field(default_factory=EvalConfig.course)  # R over the course's 8 prompts x samples

    def check(self) -> None:
        if not self.lrs or any(not lr > 0 for lr in self.lrs):
            raise ValueError("lrs must be a non-empty list of positive learning rates")
        if not self.alpha > self.beta >= 0:
            raise ValueError(f"x-factor needs alpha > beta >= 0, got {self.alpha}, {self.beta}")
        self.train_config(self.lrs[0]).check()
        self.eval.check()

    def resolved(self) -> XFactorConfig:
        """A filled copy, made once at the top of the job: chat's default prompts (what eval.check() once filled)."""
        return dataclasses.replace(self, eval=self.eval.resolved())

    def train_config(self, lr: float) -> TrainConfig:
        return TrainConfig(
            optimizer="adam",
            lr=lr,
            steps=self.epochs,
            batch=self.batch,
            seq_len=self.seq_len,
            grad_clip=0.0,
            seed=self.seed,
            bf16=self.bf16,
            eval_every=self.eval_every,
        )
