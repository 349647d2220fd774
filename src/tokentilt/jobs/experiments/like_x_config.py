"""Experiment like-x's settings (like_x.py), without torch. bf16 defaults to what the hardware runs natively,
asked when an instance is made (settings.native_bf16)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from tokentilt.settings import EvalConfig, TrainConfig, native_bf16


@dataclass
class LikeXConfig:
    """The course's setup; lr and optimizer tuned for our Model 5."""

    checkpoint: str = ""  # Model 5 folder (GPT.save or HF GPT-2); empty = run `pretrain` first, inside the run
    toward: str = "x"  # selector of the liked tokens
    epochs: int = 200  # optimizer steps, each on a fresh random batch
    batch: int = 8  # random sequences per step
    seq_len: int = 256  # tokens per random sequence (the course's length)
    optimizer: str = "adam"  # sgd | adam | adamw
    lr: float = 1e-3  # learning rate
    bf16: bool = field(default_factory=native_bf16)  # bf16 autocast where the CPU runs it natively
    prompt: str = "The king said"  # prompt of the 200-token count
    generated: int = 200  # tokens generated for the before/after count
    sample_len: int = 50  # ... as samples of this many tokens (within the context pretraining saw)
    sample_seed: int = 1234  # seed of that multinomial sample (same before and after)
    eval_every: int = 25  # steps between light R measurements
    seed: int = 0  # seeds the random inputs (and the pretraining, if any)
    out: str = "runs/exp/like-x"  # output folder
    overwrite: bool = False  # replace an existing run folder
    eval: EvalConfig = field(default_factory=EvalConfig.course)  # R over the course's 8 prompts x samples
    pretrain_steps: int = 300  # steps of the pretraining run without --checkpoint (300 keeps the experiment short)

    def check(self) -> None:
        if self.checkpoint and not Path(self.checkpoint).is_dir():
            raise FileNotFoundError(f"checkpoint folder not found: {self.checkpoint}")
        if self.generated < 1 or self.sample_len < 1:
            raise ValueError("generated and sample-len must be >= 1")
        self.train_config().check()
        self.eval.check()

    def resolved(self) -> LikeXConfig:
        """A filled copy, made once at the top of the job: chat's default prompts (what eval.check() once filled)."""
        return dataclasses.replace(self, eval=self.eval.resolved())

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            optimizer=self.optimizer,
            lr=self.lr,
            steps=self.epochs,
            batch=self.batch,
            seq_len=self.seq_len,
            grad_clip=1.0,
            seed=self.seed,
            bf16=self.bf16,
            eval_every=self.eval_every,
        )
