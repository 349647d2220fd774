"""The course's jobs' settings, as dataclasses that import no torch: pretrain and the three experiments.

Their bf16 defaults to what the hardware runs natively, which only torch can tell: it is asked when a config is
made, not when this module is imported (the CLI builds its help from instances that give bf16).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tokentilt.settings import EvalConfig, TrainConfig

if TYPE_CHECKING:
    from tokentilt.course.gpt import GPTConfig


def native_bf16() -> bool:
    """device.native_bf16() on the default device (imports torch)."""

    from tokentilt.models import device  # imports torch

    return device.native_bf16()


@dataclass
class PretrainConfig:
    """One pretraining run of Model 5. Sized so the defaults finish in minutes on 2 CPU cores."""

    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # attention heads per block
    n_embd: int = 128  # residual width
    block_size: int = 256  # context length (like-x trains on 256-token inputs)
    dropout: float = 0.1  # on embeddings, attention and residual branches
    lr: float = 3e-3  # AdamW learning rate (constant)
    weight_decay: float = 0.1  # AdamW decoupled weight decay
    steps: int = 1000  # max AdamW steps; early stopping may end sooner
    batch: int = 8  # windows per step
    seq_len: int = 64  # tokens per window (<= block-size); short windows = more steps per minute
    grad_clip: float = 1.0  # max global gradient norm, 0 = off
    eval_every: int = 50  # steps between train/val loss evaluations
    eval_windows: int = 24  # fixed windows of each split used for the train/val loss
    patience: int = 3  # early stop after N evaluations without a better val loss, 0 = off
    seed: int = 0  # seed of init, batches, dropout and samples
    bf16: bool = field(
        default_factory=native_bf16
    )  # bf16 autocast on CPU; on by default where the CPU runs it natively
    sample_tokens: int = 40  # tokens per sample shown in report.md
    out: str = "runs/pretrain"  # output folder
    overwrite: bool = False  # replace the output folder if it already holds a run

    def check(self) -> None:
        if self.seq_len > self.block_size:
            raise ValueError(f"seq-len ({self.seq_len}) must be <= block-size ({self.block_size})")
        if self.eval_windows < 1 or self.eval_every < 1 or self.sample_tokens < 1:
            raise ValueError("eval-every, eval-windows and sample-tokens must be >= 1")
        self.gpt_config()  # validates n_embd % n_head and dropout
        self.train_config().check()

    def gpt_config(self) -> GPTConfig:
        from tokentilt.course.gpt import GPTConfig  # torch

        return GPTConfig(
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_embd=self.n_embd,
            block_size=self.block_size,
            dropout=self.dropout,
        )

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            optimizer="adamw",
            lr=self.lr,
            steps=self.steps,
            batch=self.batch,
            seq_len=self.seq_len,
            grad_clip=self.grad_clip,
            weight_decay=self.weight_decay,
            seed=self.seed,
            bf16=self.bf16,
            eval_every=self.eval_every,
            patience=self.patience,
        )


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
