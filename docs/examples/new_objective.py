"""A new objective: a pure function (logits, input_ids, ctx) -> scalar, registered by name."""

import torch

from tokentilt.objectives.losses import OBJECTIVES, ObjectiveContext, set_log_mass
from tokentilt.settings import TrainConfig
from tokentilt.training.loop import train
from tokentilt.training.placements import batch_source


def set_mass(logits, input_ids, ctx: ObjectiveContext) -> torch.Tensor:
    """-mean log p(set): raise the set's mass at every position (the mirror image of "away")."""
    return -set_log_mass(logits.float(), ctx.mask.to(logits.device)).mean()  # (B, T) -> ()


OBJECTIVES["set-mass"] = set_mass  # Python callers pick it by name; the CLI's choices: settings.OBJECTIVE_NAMES


def demo(model, tokenizer, target) -> list[dict]:
    """Train a few steps with it on random tokens, as loop.train trains every objective."""
    cfg = TrainConfig(steps=3, batch=2, seq_len=8, lr=1e-2, eval_every=0)
    ctx = ObjectiveContext(mask=target.mask)
    return train(model, OBJECTIVES["set-mass"], ctx, batch_source("random", tokenizer, target.vocab_size, cfg), cfg)
