"""Model 5's pretraining on the Shakespeare plays: next-token CE, AdamW, dropout, early stopping on val loss.

Shared by the pretrain job (jobs/pretrain.py, which writes the run folder) and the like-x experiment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tokentilt.course.gpt import GPT
from tokentilt.course.gpt2_tokenizer import gpt2_tokenizer
from tokentilt.course.pretraining_config import Pretraining
from tokentilt.data import corpus
from tokentilt.measurement.metrics import perplexity
from tokentilt.objectives.losses import ObjectiveContext, next_token_objective
from tokentilt.training.loop import train


def unigram_cross_entropy(train_tokens: torch.Tensor, eval_tokens: torch.Tensor, vocab_size: int) -> dict:
    """The no-context baseline, in nats per token.

    Token frequencies of the train split (add-one smoothed, so an unseen val token costs a finite
    amount) give a unigram model; we report its entropy and its cross-entropy on `eval_tokens`.
    A language model that uses context must beat the cross-entropy.
    """
    counts = torch.bincount(train_tokens, minlength=vocab_size).double() + 1.0  # (V,)
    log_p = counts.log() - counts.sum().log()  # (V,)
    return {"unigram_entropy": float(-(log_p.exp() * log_p).sum()), "unigram_val_ce": float(-log_p[eval_tokens].mean())}


def split_loss(model, windows: torch.Tensor, bf16: bool) -> float:
    """Mean next-token CE (nats) over fixed (W, T) windows, in eval mode."""
    return math.log(perplexity(model, windows, batch_size=8, bf16=bf16))


@dataclass
class Pretrained:
    """What pretrain_model hands back: the model with its best weights, and how it got there."""

    model: GPT
    tokenizer: object
    history: list[dict]  # train()'s per-step records
    evals: list[dict]  # train/val loss at step 0 and at every evaluation
    baseline: dict  # unigram_cross_entropy()
    final_val_loss: float  # val loss of the returned weights
    train_tokens: int
    val_tokens: int


def pretrain_model(cfg: Pretraining, progress: bool = True, log=None, echo=print) -> Pretrained:
    """Train Model 5 from scratch on the plays' train split, early-stopping on val loss.
    `log(record)` receives every metrics record (the job writes them to metrics.jsonl)."""
    cfg.check()
    log = log or (lambda record: None)
    tokenizer = gpt2_tokenizer()
    echo("tokenizing the plays ...")
    train_tokens = corpus.tokenize(tokenizer, corpus.split_text("train"))  # (N_train,)
    val_tokens = corpus.tokenize(tokenizer, corpus.split_text("val"))  # (N_val,)
    train_windows = corpus.eval_windows(train_tokens, cfg.seq_len, cfg.eval_windows)  # (W, T)
    val_windows = corpus.eval_windows(val_tokens, cfg.seq_len, cfg.eval_windows)  # (W, T)
    baseline = unigram_cross_entropy(train_tokens, val_tokens, len(tokenizer))

    torch.manual_seed(cfg.seed)
    model = GPT(cfg.gpt_config())
    echo(
        f"Model 5: {model.num_params() / 1e6:.1f}M parameters; {len(train_tokens)} train / {len(val_tokens)} val "
        f"tokens; unigram baseline {baseline['unigram_val_ce']:.3f} nats on val"
    )
    evals = [
        {
            "step": 0,
            "train_loss": split_loss(model, train_windows, cfg.bf16),
            "val_loss": split_loss(model, val_windows, cfg.bf16),
        }
    ]
    log(evals[0])

    def evaluate(step: int) -> dict:
        point = {
            "train_loss": split_loss(model, train_windows, cfg.bf16),
            "val_loss": split_loss(model, val_windows, cfg.bf16),
        }
        evals.append({"step": step, **point})
        return point

    train_cfg = cfg.train_config()
    history = train(
        model,
        next_token_objective,
        ObjectiveContext(mask=torch.zeros(0, dtype=torch.bool)),
        lambda g, rows: corpus.text_windows(train_tokens, rows, train_cfg.seq_len, g),
        train_cfg,
        evaluate=evaluate,
        log=log,
        progress=progress,
    )
    # train() restored the best weights when early stopping was on; measure what is returned.
    final_val = split_loss(model, val_windows, cfg.bf16)
    return Pretrained(model, tokenizer, history, evals, baseline, final_val, len(train_tokens), len(val_tokens))
