"""A tilt's settings and how it is trained: TiltConfig, the training batches, full or LoRA training
toward a bias, and the rate rounds that correct b until the trained model's R is R*.

Shared by the tilt and sweep jobs and the x-factor experiment; head-rows fitting is in head_tilt.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch

from tokentilt import checkpoint, data, head_tilt, phrases
from tokentilt.calibrate import RateFit, RoundsState, check_rate, fit_trained_bias
from tokentilt.engine import on_main, process_state
from tokentilt.evaluate import EvalConfig, measure_rate
from tokentilt.losses import (
    OBJECTIVES,
    REFERENCE_OBJECTIVES,
    TEXT_OBJECTIVES,
    ObjectiveContext,
    ObjectiveName,
    phrase_distill,
)
from tokentilt.models import lora
from tokentilt.models.load import load_model
from tokentilt.targets import TokenSet
from tokentilt.train import TrainConfig, train

Inputs = Literal["auto", "random", "text"]
Placement = Literal["auto", "head-rows", "model"]
Positions = Literal["last", "all"]
INPUTS, PLACEMENTS = get_args(Inputs), get_args(Placement)
FULL_LR = 1e-4  # the course's learning rate for full fine-tuning
DEFAULT_RATE = 0.5  # tilt-distill's default target rate R*


def _tilt_train() -> TrainConfig:
    # lr 0 = FULL_LR, or lora.DEFAULT_LR with --lora (settled in check); bf16 where the hardware runs it natively
    return TrainConfig(lr=0.0, precision="auto")


@dataclass
class TiltConfig:
    """One tilt run. Flat YAML keys and CLI flags map onto these fields and the nested ones."""

    model: str = "bundled"  # model to load: 'bundled' (SmolLM2-135M-Instruct, offline), a local HF folder, or a hub id
    toward: str = "x"  # selector of the token set to tilt toward (see the selectors below)
    objective: ObjectiveName = "tilt-distill"  # loss; kl-uniform on random tokens is the course's recipe
    positions: Positions = "all"  # positions that enter the loss
    alpha: float = 1.0  # kl-alpha-beta/mixed: weight of set tokens
    beta: float = 1e-4  # kl-alpha-beta/mixed: weight of other tokens
    bias: float = 2.0  # tilt-distill: a fixed logit bias b of the target softmax(z_ref + b*mask) instead of --rate
    rate: float = DEFAULT_RATE  # tilt-distill: target rate R*; b is calibrated so that decode-time R on the start
    # model is R*. Below the model's own rate, b < 0 and the tilt is away from the set; 0 = use --bias
    rate_rounds: int = 3  # with --rate: trainings that correct b until the trained model's R is R*
    ce_weight: float = 1.0  # mixed: lambda on the CE term
    placement: Placement = "auto"  # tilt-distill: where the change lives. head-rows: only the set's rows of an
    # untied output head, fitted on cached hidden states (seconds; the cheapest tilt found, see
    # docs/tilt-variants.md; a phrase list: its entries' token rows, fitted per position). model: every weight (or
    # LoRA's) trained on play text. auto = head-rows, or model with --lora
    contexts: head_tilt.Contexts = "mix"  # head-rows: training contexts: play windows, continuations sampled from
    # the decode-time tilted model after training prompts (never the R prompts), or both
    head_fit: head_tilt.HeadFit = "offset"  # head-rows: offset adds b·u to every set row, u the least-squares
    # direction with h·u ≈ 1 on the contexts (closed form: the decode-time tilt's constant offset, as far as the
    # head's inputs allow); kl fits each row by Adam on KL(exact tilt || model)
    head_steps: int = 300  # head-rows, kl fit: Adam steps of 1024 cached positions
    head_lr: float = 1e-2  # head-rows, kl fit: peak learning rate, cosine schedule
    head_odds_weight: float = 0.0  # head-rows, kl fit: add W/2 x the squared error of the set's log-odds shift to
    # the KL
    inputs: Inputs = "auto"  # training inputs: random tokens (the course) or play text; auto = text for
    # tilt-distill and mixed, else random
    out: str = "runs/tilt"  # output folder
    overwrite: bool = False  # replace the output folder if it already holds a run
    resume: bool = False  # continue the unfinished run in DIR.partial from its newest checkpoint (same command
    # plus --resume)
    train: TrainConfig = field(default_factory=_tilt_train)
    eval: EvalConfig = field(default_factory=EvalConfig)
    lora: lora.LoraArgs = field(default_factory=lora.LoraArgs)

    def check(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.positions not in ("last", "all"):
            raise ValueError(f"positions must be 'last' or 'all', got {self.positions!r}")
        if self.inputs not in INPUTS:
            raise ValueError(f"inputs must be one of {', '.join(INPUTS)}, got {self.inputs!r}")
        if self.alpha < 0 or self.beta < 0 or self.alpha + self.beta == 0:
            raise ValueError("alpha and beta must be >= 0 and not both 0")
        if self.objective != "tilt-distill":
            self.rate = 0.0  # the default rate is tilt-distill's; the CLI refuses one that a user gave
        if self.rate:
            check_rate(self.rate)
        if not (isinstance(self.rate_rounds, int) and self.rate_rounds >= 1):
            raise ValueError(f"rate-rounds must be a positive integer, got {self.rate_rounds!r}")
        if self.rate and (self.train.save_every or self.train.report_to != "none"):
            raise ValueError(
                "--rate trains up to rate-rounds times from the start and checkpoints after each stage and round; "
                "it takes no --save-every or --report-to"
            )
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}")
        if phrases.is_phrase_selector(self.toward):
            self._check_phrases()
        if self.placement == "head-rows" and (self.objective != "tilt-distill" or self.lora.lora):
            raise ValueError("--placement head-rows applies to tilt-distill without --lora")
        if self.contexts not in head_tilt.CONTEXTS:
            raise ValueError(f"contexts must be one of {', '.join(head_tilt.CONTEXTS)}, got {self.contexts!r}")
        if self.head_fit not in head_tilt.FITS:
            raise ValueError(f"head-fit must be one of {', '.join(head_tilt.FITS)}, got {self.head_fit!r}")
        if not (isinstance(self.head_steps, int) and self.head_steps >= 1):
            raise ValueError(f"head-steps must be a positive integer, got {self.head_steps!r}")
        if not (isinstance(self.head_lr, (int, float)) and math.isfinite(self.head_lr) and self.head_lr > 0):
            raise ValueError(f"head-lr must be positive, got {self.head_lr!r}")
        if not (
            isinstance(self.head_odds_weight, (int, float))
            and math.isfinite(self.head_odds_weight)
            and self.head_odds_weight >= 0
        ):
            raise ValueError(f"head-odds-weight must be >= 0, got {self.head_odds_weight!r}")
        if self.head_rows() and (
            (self.resume and not self.rate) or self.train.save_every or self.train.report_to != "none"
        ):
            raise ValueError(
                "--placement head-rows fits in seconds on cached hidden states; "
                "it takes no --save-every or --report-to, and --resume only with --rate (use --placement model)"
            )
        if self.resume and self.overwrite:
            raise ValueError("--resume continues a run and --overwrite starts it afresh: give one of them")
        if self.train.lr == 0:
            self.train.lr = lora.DEFAULT_LR if self.lora.lora else FULL_LR
        self.lora.check()
        self.train.check()
        self.eval.check()

    def _check_phrases(self) -> None:
        """A phrase tilt is tilt-distill in a placement that sees context: the entries' rows of the head
        fitted per position (head-rows, the default), a LoRA adapter, or the whole model."""
        if self.objective != "tilt-distill":
            raise ValueError(
                f"a phrase selector ({self.toward.partition(':')[0]}:) is tilted by tilt-distill only, "
                f"not {self.objective}"
            )

    def head_rows(self) -> bool:
        """Whether the tilt is fitted into the set's rows of the output head (head_tilt.py)."""
        if self.placement == "auto":
            return self.objective == "tilt-distill" and not self.lora.lora
        return self.placement == "head-rows"

    def input_kind(self) -> str:
        if self.inputs != "auto":
            return self.inputs
        return "text" if self.objective in TEXT_OBJECTIVES else "random"


_TRAIN_TOKENS: dict[int, torch.Tensor] = {}


def train_tokens(tokenizer) -> torch.Tensor:
    """Token ids of the plays' train split (never the eval text), tokenized once per tokenizer."""
    key = id(tokenizer)
    if key not in _TRAIN_TOKENS:
        _TRAIN_TOKENS.clear()
        _TRAIN_TOKENS[key] = data.tokenize(tokenizer, data.split_text("train"))
    return _TRAIN_TOKENS[key]


def load_with_set(model_name: str, toward: str, echo=print):
    """Load a model and resolve the selector over its output vocabulary -> (model, tokenizer, TokenSet),
    or a phrases.PhraseSet for a phrase selector (its completion probabilities taken from the model)."""
    echo(f"loading model {model_name!r} ...")
    model, tokenizer = load_model(model_name)
    return model, tokenizer, phrases.resolve_target(toward, tokenizer, model, echo)


def chat_batch_source(reference, tokenizer, target, bias: float, cfg: TrainConfig, system: str = ""):
    """-> next_batch(generator, rows) for a --chat tilt trained in the model: windows of a stream of chat
    exchanges, the reference's replies to the training requests, untilted and decoded with the tilt at b."""
    rows = head_tilt.context_batches(
        reference, tokenizer, None, target, bias, "mix", cfg.seed, cfg.bf16, chat=True, system=system
    )
    stream = torch.cat([row[0] for row in rows])  # (N,): each exchange ends with its end-of-turn token
    return lambda g, n: data.text_windows(stream, n, cfg.seq_len, g)


def phrase_batch_source(reference, tokenizer, phrase_set, bias: float, cfg: TrainConfig):
    """-> next_batch(generator, rows) for a phrase tilt: half the rows from continuations of the training
    prompts sampled from the decode-time tilt at b (where the entries occur, in the contexts they occur
    in), half from the plays' train split (ordinary text, where the tilt should change little)."""
    policy = head_tilt.context_batches(
        reference, tokenizer, train_tokens(tokenizer), phrase_set, bias, "policy", cfg.seed, cfg.bf16
    )
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    stream = torch.cat([torch.cat([row, torch.tensor([eos])]) for batch in policy for row in batch])  # (N,)
    plays = train_tokens(tokenizer)

    def next_batch(g, rows):
        half = (rows + 1) // 2
        return torch.cat(
            [data.text_windows(stream, half, cfg.seq_len, g), data.text_windows(plays, rows - half, cfg.seq_len, g)]
        )

    return next_batch


def batch_source(kind: str, tokenizer, vocab_size: int, cfg: TrainConfig):
    """-> next_batch(generator, rows) giving (rows, T) ids: random tokens, or windows of the plays' train split."""
    if kind == "random":
        return lambda g, rows: data.random_tokens(vocab_size, rows, cfg.seq_len, g)
    tokens = train_tokens(tokenizer)
    return lambda g, rows: data.text_windows(tokens, rows, cfg.seq_len, g)


def train_toward(
    model,
    tokenizer,
    reference,
    tokens: TokenSet,
    cfg: TiltConfig,
    bias: float,
    evaluate=None,
    log=None,
    progress: bool = True,
    run_dir=None,
) -> list[dict]:
    """Train `model` in place with cfg's objective; `reference` is the frozen starting model.
    With run_dir, checkpoints go there and cfg.resume continues from the newest one."""
    phrase = isinstance(tokens, phrases.PhraseSet)
    if phrase:
        ctx = ObjectiveContext(mask=None, bias=bias, phrases=tokens)
        objective = phrase_distill
    else:
        ctx = ObjectiveContext(
            mask=tokens.mask,
            positions=cfg.positions,
            alpha=cfg.alpha,
            beta=cfg.beta,
            bias=bias,
            ce_weight=cfg.ce_weight,
        )
        objective = OBJECTIVES[cfg.objective]
    if cfg.eval.chat and cfg.input_kind() == "text":  # trained where it is measured: in chat exchanges
        next_batch = chat_batch_source(reference, tokenizer, tokens.target, bias, cfg.train, cfg.eval.system)
    elif phrase:
        next_batch = phrase_batch_source(reference, tokenizer, tokens, bias, cfg.train)
    else:
        next_batch = batch_source(cfg.input_kind(), tokenizer, tokens.vocab_size, cfg.train)
    return train(
        model,
        objective,
        ctx,
        next_batch,
        cfg.train,
        reference=reference if cfg.objective in REFERENCE_OBJECTIVES else None,
        evaluate=evaluate,
        log=log,
        progress=progress,
        run_dir=run_dir,
        resume=cfg.resume and run_dir is not None,
    )


def train_to_rate(
    model,
    tokenizer,
    reference,
    tokens: TokenSet,
    cfg: TiltConfig,
    bias: float,
    evaluate=None,
    log=None,
    progress: bool = True,
    on_round=None,
    echo=print,
    train_once=None,
    pool=None,
    head_only: bool = False,
    offsets=None,
    resumed: RoundsState | None = None,
    after_round=None,
) -> tuple[RateFit, list[dict]]:
    """tilt-distill toward the rate cfg.rate: up to cfg.rate_rounds trainings, each from the reference's weights.

    `bias` is the decode-time calibration; calibrate.fit_trained_bias corrects it after each
    round from the trained model's R, measured on probe seeds (eval_seed + 1) so that the R the
    run reports afterwards (on eval_seed) is not the one b was fitted to. The model ends holding
    the kept round's weights. on_round() is called before each round trains. train_once(b) ->
    history replaces train_toward (head-rows passes HeadRowsTilt.train). With `pool`, the calibration's
    draws on the probe seeds (importance.Pool), a round's R is first estimated from them by importance
    weights (one teacher-forced forward of the trained model) and sampled only when the estimate rests
    on too few effective samples. head_only: only the output head trains (head-rows), so that forward is
    the head alone, on the head inputs the sampler recorded. offsets(h) -> the trained model's change of
    the set's logits at head inputs h, where that is all it changes (a head-rows offset fit): the weights
    then come from the recorded head inputs and set masses, with no head at all. after_round(RoundsState,
    kept_changed) checkpoints each round (its value: (history, weights)); `resumed` goes on from one.
    -> (the fit, the kept round's training history).
    """
    probe_cfg = cfg.eval.probe()
    state = process_state(cfg.train.device)
    start = snapshot(model)  # every round starts here (the full weights, or a fresh LoRA adapter)

    def train_at(b: float):
        if on_round is not None:
            on_round()
        restore(model, start)
        if train_once is None:
            history = train_toward(model, tokenizer, reference, tokens, cfg, b, evaluate, log, progress)
        else:
            history = train_once(b)
        return history, snapshot(model)

    def probe_once() -> dict:
        if pool is not None:
            if offsets is not None and pool.recorded():
                estimate = pool.of_offsets(offsets)
            else:
                estimate = pool.of_model(model, cfg.train.bf16, head_only)
            if pool.enough(estimate):
                return estimate
        return measure_rate(model, tokenizer, tokens.target, probe_cfg, bf16=cfg.train.bf16)[0]

    def probe() -> dict:
        return on_main(probe_once, state)

    n = len(cfg.eval.prompts) * cfg.eval.samples_per_prompt
    fit, (history, weights) = fit_trained_bias(
        train_at, probe, cfg.rate, bias, cfg.rate_rounds, n, echo=echo, resumed=resumed, after_round=after_round
    )
    if fit.kept != len(fit.rounds) - 1 or (resumed is not None and resumed.done):  # (resumed: no round trained)
        restore(model, weights)
    return fit, history


def snapshot(model) -> dict[str, torch.Tensor]:
    """A copy of the weights that train."""
    return {name: p.detach().clone() for name, p in checkpoint.trainable(model).items()}


@torch.no_grad()
def restore(model, weights: dict[str, torch.Tensor]) -> None:
    for name, p in checkpoint.trainable(model).items():
        p.copy_(weights[name])
