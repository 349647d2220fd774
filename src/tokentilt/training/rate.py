"""A tilt's settings and how it is trained: TiltConfig, the training batches, full or LoRA training
toward a bias, and the rate rounds that correct b until the trained model's R is R*.

Shared by the tilt and sweep jobs and the x-factor experiment; head-rows fitting is in head_tilt.py.
"""

from __future__ import annotations

import torch

from tokentilt.data import corpus

# TiltConfig and its names live in jobs/tilt_config.py, without torch; they stay importable from here
from tokentilt.jobs.tilt_config import (  # noqa: F401
    DEFAULT_RATE,
    FULL_LR,
    INPUTS,
    PLACEMENTS,
    Inputs,
    Placement,
    Positions,
    TiltConfig,
)
from tokentilt.measurement.calibrate import RateFit, RoundsState, fit_trained_bias
from tokentilt.measurement.evaluate import measure_rate
from tokentilt.models.load import load_model
from tokentilt.objectives.losses import OBJECTIVES, REFERENCE_OBJECTIVES, ObjectiveContext, phrase_distill
from tokentilt.targets import phrases
from tokentilt.targets.tokens import TokenSet
from tokentilt.training import checkpoint, head_rows
from tokentilt.training.engine import on_main, process_state
from tokentilt.training.loop import TrainConfig, train

_TRAIN_TOKENS: dict[int, torch.Tensor] = {}


def train_tokens(tokenizer) -> torch.Tensor:
    """Token ids of the plays' train split (never the eval text), tokenized once per tokenizer."""
    key = id(tokenizer)
    if key not in _TRAIN_TOKENS:
        _TRAIN_TOKENS.clear()
        _TRAIN_TOKENS[key] = corpus.tokenize(tokenizer, corpus.split_text("train"))
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
    rows = head_rows.context_batches(
        reference, tokenizer, None, target, bias, "mix", cfg.seed, cfg.bf16, chat=True, system=system
    )
    stream = torch.cat([row[0] for row in rows])  # (N,): each exchange ends with its end-of-turn token
    return lambda g, n: corpus.text_windows(stream, n, cfg.seq_len, g)


def phrase_batch_source(reference, tokenizer, phrase_set, bias: float, cfg: TrainConfig):
    """-> next_batch(generator, rows) for a phrase tilt: half the rows from continuations of the training
    prompts sampled from the decode-time tilt at b (where the entries occur, in the contexts they occur
    in), half from the plays' train split (ordinary text, where the tilt should change little)."""
    policy = head_rows.context_batches(
        reference, tokenizer, train_tokens(tokenizer), phrase_set, bias, "policy", cfg.seed, cfg.bf16
    )
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    stream = torch.cat([torch.cat([row, torch.tensor([eos])]) for batch in policy for row in batch])  # (N,)
    plays = train_tokens(tokenizer)

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
    tokens = train_tokens(tokenizer)
    return lambda g, rows: corpus.text_windows(tokens, rows, cfg.seq_len, g)


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
