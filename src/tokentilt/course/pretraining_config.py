"""How Model 5 is pretrained, as a dataclass that imports no torch until it is checked (the CLI builds the
pretrain command's help from it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tokentilt.settings import TrainConfig, native_bf16

if TYPE_CHECKING:
    from tokentilt.course.gpt import GPTConfig


@dataclass
class Pretraining:
    """How Model 5 is pretrained (course/pretraining.py), by the pretrain job and by like-x without a checkpoint.
    Sized so the defaults finish in minutes on 2 CPU cores."""

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

    def check(self) -> None:
        if self.seq_len > self.block_size:
            raise ValueError(f"seq-len ({self.seq_len}) must be <= block-size ({self.block_size})")
        if self.eval_windows < 1 or self.eval_every < 1:
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
