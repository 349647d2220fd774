"""Where a tilt's change lives: one Placement type, three kinds.

    HeadRows    only the set's rows of the untied output head: an offset or KL fit (head_rows.py)
    WholeModel  every weight, trained with the objective in the loop of loop.py
    lora()      the whole-model placement over a LoRA adapter: the adapter is all that trains

A job builds one placement per run and trains it once per b: `placement.train(bias) -> history`, from
the weights it started with (the rate rounds restore them before each round). That call is the one place
where each placement trains; the rate rounds (rate.py) call nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from tokentilt.data import corpus
from tokentilt.models import lora as lora_module
from tokentilt.objectives.losses import OBJECTIVES, REFERENCE_OBJECTIVES, ObjectiveContext, phrase_distill
from tokentilt.settings import LoraArgs, TrainConfig
from tokentilt.training import head_rows
from tokentilt.training.loop import frozen_copy, train


class Placement(Protocol):
    """What the rate rounds and the tilt job need from a placement."""

    model: torch.nn.Module  # the model that trains (with LoRA: wrapped by peft)
    reference: torch.nn.Module  # the starting model: tilt-distill's target, drift's reference
    head_only: bool  # only the output head changes: the body is the start model's, its head inputs are known
    # the trained change of the set's logits at head inputs h (..., d) when that is all that changes, else None
    offsets: Callable[[torch.Tensor], torch.Tensor] | None

    def train(self, bias: float) -> list[dict]:
        """Train toward the decode-time tilt at b, from the weights the model holds; -> the history records."""
        ...


@dataclass
class Objective:
    """The loss a whole-model placement trains with, and the text it trains on (a tilt's settings)."""

    name: str  # a key of losses.OBJECTIVES
    positions: str = "all"  # "all" or "last"
    alpha: float = 1.0  # kl-alpha-beta/mixed: weight of set tokens
    beta: float = 1e-4  # kl-alpha-beta/mixed: weight of other tokens
    ce_weight: float = 1.0  # mixed: weight of the cross-entropy term
    inputs: str = "text"  # "random" tokens or "text" (the plays' train split)
    chat: bool = False  # train in chat exchanges, where a --chat run measures
    system: str = ""  # the chat system prompt
    requests: str = "general"  # the chat requests' family (data/prompts.CHAT_REQUESTS)

    @classmethod
    def of(cls, cfg) -> Objective:
        """From a TiltConfig."""
        return cls(
            cfg.objective,
            cfg.positions,
            cfg.alpha,
            cfg.beta,
            cfg.ce_weight,
            cfg.input_kind(),
            cfg.eval.chat,
            cfg.eval.system,
            cfg.eval.requests,
        )


@dataclass
class WholeModel:
    """Every weight that requires grad trains, in loop.train: all of them, or a LoRA adapter's (lora())."""

    model: torch.nn.Module
    tokenizer: object
    reference: torch.nn.Module
    target: object  # the Target
    objective: Objective
    train_cfg: TrainConfig
    evaluate: Callable[[int], dict] | None = None  # step -> R during training (the main process)
    log: Callable[[dict], None] | None = None  # each training record, as it is made
    progress: bool = True
    run_dir: object = None  # where step checkpoints go (a single training, not the rate rounds)
    resume: bool = False  # continue from run_dir's newest checkpoint
    head_only = False
    offsets = None

    def train(self, bias: float) -> list[dict]:
        phrase = self.target.mask is None
        if phrase:  # a phrase set: the per-position tilt of its trie, on the contexts where it matters
            ctx = ObjectiveContext(mask=None, bias=bias, phrases=self.target)
            objective = phrase_distill
        else:
            o = self.objective
            ctx = ObjectiveContext(
                mask=self.target.mask,
                positions=o.positions,
                alpha=o.alpha,
                beta=o.beta,
                bias=bias,
                ce_weight=o.ce_weight,
            )
            objective = OBJECTIVES[o.name]
        return train(
            self.model,
            objective,
            ctx,
            self.batches(bias),
            self.train_cfg,
            reference=self.reference if self.objective.name in REFERENCE_OBJECTIVES else None,
            evaluate=self.evaluate,
            log=self.log,
            progress=self.progress,
            run_dir=self.run_dir,
            resume=self.resume and self.run_dir is not None,
        )

    def batches(self, bias: float):
        """-> next_batch(generator, rows): (rows, T) ids of the text this training sees."""
        cfg, target, tokenizer = self.train_cfg, self.target, self.tokenizer
        if self.objective.chat and self.objective.inputs == "text":  # trained where it is measured
            return chat_batch_source(
                self.reference, tokenizer, target, bias, cfg, self.objective.system, self.objective.requests
            )
        if target.mask is None:
            return phrase_batch_source(self.reference, tokenizer, target, bias, cfg)
        return batch_source(self.objective.inputs, tokenizer, target.vocab_size, cfg)


def whole_model(model, tokenizer, target, objective: Objective, train_cfg: TrainConfig, **hooks) -> WholeModel:
    """The whole-model placement, its reference a frozen copy of the starting model."""
    return WholeModel(model, tokenizer, frozen_copy(model), target, objective, train_cfg, **hooks)


def lora(model, tokenizer, target, objective: Objective, train_cfg: TrainConfig, args: LoraArgs, **hooks) -> WholeModel:
    """The whole-model placement over a fresh LoRA adapter; the reference is the base with the adapter off
    (no second copy of the weights)."""
    model = lora_module.add_adapter(model, args, seed=train_cfg.seed)
    return WholeModel(model, tokenizer, lora_module.AdapterOff(model), target, objective, train_cfg, **hooks)


@dataclass
class HeadRows:
    """Only the set's rows of the untied output head change, fitted on cached head inputs (head_rows.py)."""

    fit: head_rows.HeadRowsTilt
    reference: torch.nn.Module
    log: Callable[[dict], None] | None = None
    progress: bool = True
    head_only = True

    @property
    def model(self) -> torch.nn.Module:
        return self.fit.model

    @property
    def offsets(self):
        return self.fit.set_offsets if self.fit.fit == "offset" else None

    def train(self, bias: float) -> list[dict]:
        return self.fit.train(bias, self.progress, self.log)


def head_rows_placement(model, tokenizer, target, cfg) -> HeadRows:
    """The head-rows placement of a TiltConfig: its contexts are sampled from the starting model with the
    decode-time tilt at the first b it trains at (training_contexts)."""
    reference = frozen_copy(model)
    bf16 = cfg.train.bf16
    fit = head_rows.HeadRowsTilt(
        model,
        target,
        lambda b, size: head_rows.training_contexts(
            model,
            tokenizer,
            corpus.train_tokens(tokenizer),
            target,
            b,
            cfg.contexts,
            cfg.train.seed,
            bf16,
            cfg.eval.chat,
            cfg.eval.system,
            cfg.eval.requests,
            size=size,
        ),
        cfg.head_steps,
        cfg.head_lr,
        seed=cfg.train.seed,
        bf16=bf16,
        odds_weight=cfg.head_odds_weight,
        fit=cfg.head_fit,
    )
    return HeadRows(fit, reference)


# ---------------------------------------------------------------- the text a whole-model placement trains on


def chat_batch_source(
    reference, tokenizer, target, bias: float, cfg: TrainConfig, system: str = "", requests: str = "general"
):
    """-> next_batch(generator, rows) for a --chat tilt trained in the model: windows of a stream of chat
    exchanges, the reference's replies to the training requests, untilted and decoded with the tilt at b."""
    rows = head_rows.context_batches(
        reference, tokenizer, None, target, bias, "mix", cfg.seed, cfg.bf16, chat=True, system=system, requests=requests
    )
    stream = torch.cat([row[0] for row in rows])  # (N,): each exchange ends with its end-of-turn token
    return lambda g, n: corpus.text_windows(stream, n, cfg.seq_len, g)


def phrase_batch_source(reference, tokenizer, phrase_set, bias: float, cfg: TrainConfig):
    """-> next_batch(generator, rows) for a phrase tilt: half the rows from continuations of the training
    prompts sampled from the decode-time tilt at b (where the entries occur, in the contexts they occur
    in), half from the plays' train split (ordinary text, where the tilt should change little)."""
    plays = corpus.train_tokens(tokenizer)
    policy = head_rows.context_batches(reference, tokenizer, plays, phrase_set, bias, "policy", cfg.seed, cfg.bf16)
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    stream = torch.cat([torch.cat([row, torch.tensor([eos])]) for batch in policy for row in batch])  # (N,)

    def next_batch(g, rows):
        half = (rows + 1) // 2
        return torch.cat(
            [corpus.text_windows(stream, half, cfg.seq_len, g), corpus.text_windows(plays, rows - half, cfg.seq_len, g)]
        )

    return next_batch


def batch_source(kind: str, tokenizer, vocab_size: int, cfg: TrainConfig):
    """-> next_batch(generator, rows) giving (rows, T) ids: random tokens, or windows of the plays' train split."""
    if kind == "random":
        return lambda g, rows: corpus.random_tokens(vocab_size, rows, cfg.seq_len, g)
    tokens = corpus.train_tokens(tokenizer)
    return lambda g, rows: corpus.text_windows(tokens, rows, cfg.seq_len, g)
