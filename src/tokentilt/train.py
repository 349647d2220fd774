"""The training loop: setup -> step -> evaluate -> (early stop), in plain view."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from tokentilt.losses import ObjectiveContext

OPTIMIZERS = ("sgd", "adam", "adamw")


@dataclass
class TrainConfig:
    """Optimisation settings; the same dataclass is filled from YAML and from flags."""

    optimizer: str = "adam"  # sgd | adam | adamw
    lr: float = 1e-4  # learning rate
    steps: int = 40  # optimizer steps
    batch: int = 4  # sequences per step
    seq_len: int = 64  # tokens per sequence
    grad_clip: float = 1.0  # max global grad norm (0 = no clipping)
    weight_decay: float = 0.0  # decoupled for adamw, L2 for sgd/adam
    seed: int = 0  # seeds batches, dropout and sampling
    bf16: bool = False  # bf16 autocast on CPU (weights stay fp32)
    eval_every: int = 10  # call the evaluate hook every N steps (0 = never during training)
    patience: int = 0  # early stop after N evaluations without a better val_loss (0 = off)

    def check(self) -> None:
        """Raise ValueError with one clear line for any bad value."""
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        for name in ("lr", "steps", "batch", "seq_len"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name.replace('_', '-')} must be positive, got {value!r}")
        if self.grad_clip < 0 or self.weight_decay < 0 or self.eval_every < 0 or self.patience < 0:
            raise ValueError("grad-clip, weight-decay, eval-every and patience must be >= 0")


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def logits_of(model, input_ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=input_ids).logits  # (B, T, V)


def train(
    model,
    objective: Callable,
    ctx: ObjectiveContext,
    next_batch: Callable[[torch.Generator], torch.Tensor],
    cfg: TrainConfig,
    reference=None,
    evaluate: Callable[[int], dict] | None = None,
    log: Callable[[dict], None] | None = None,
    progress: bool = True,
) -> list[dict]:
    """Run cfg.steps optimizer steps of `objective` and return one record per step.

    next_batch(generator) -> (B, T) token ids. `reference`, if given, is a frozen model
    whose logits on the same batch are put in ctx.ref_logits (tilt-distill).
    evaluate(step) -> dict is merged into the record every cfg.eval_every steps; with
    cfg.patience > 0 its "val_loss" drives early stopping and the best weights are kept.
    """
    cfg.check()
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = make_optimizer(model.parameters(), cfg)
    history: list[dict] = []
    best_val, best_state, bad_evals = float("inf"), None, 0
    model.train()
    bar = tqdm(range(1, cfg.steps + 1), desc="train", disable=not progress, dynamic_ncols=True)
    for step in bar:
        input_ids = next_batch(generator)  # (B, T)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            if reference is not None:
                with torch.no_grad():
                    ctx.ref_logits = logits_of(reference, input_ids)  # (B, T, V)
            logits = logits_of(model, input_ids)  # (B, T, V)
        loss = objective(logits, input_ids, ctx)  # computed in fp32 inside the objective
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        )
        optimizer.step()
        record = {"step": step, "loss": loss.item(), "grad_norm": float(grad_norm), "lr": cfg.lr}
        if evaluate is not None and cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            model.eval()
            record.update(evaluate(step))
            model.train()
        bar.set_postfix(loss=f"{record['loss']:.4f}", **({"R": f"{record['rate']:.2f}"} if "rate" in record else {}))
        history.append(record)
        if log is not None:
            log(record)
        if cfg.patience and "val_loss" in record:
            if record["val_loss"] < best_val:
                best_val, bad_evals = record["val_loss"], 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad_evals += 1
                if bad_evals >= cfg.patience:
                    bar.write(f"early stop at step {step}: val_loss has not improved for {bad_evals} evaluations")
                    break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    ctx.ref_logits = None
    return history


def frozen_copy(model):
    """A detached reference copy of `model` that never trains."""
    reference = copy.deepcopy(model).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    return reference
