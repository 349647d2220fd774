"""The rate rounds: train a placement toward b, measure the trained model's R, correct b, until R is R*.

The decode-time calibration (measurement/calibrate.py) gives the first b; each round trains the placement
(placements.py) from the starting weights at the current b, and calibrate.fit_trained_bias corrects b from
the R the trained model reaches. Shared by the tilt and sweep jobs.
"""

from __future__ import annotations

import dataclasses

import torch

from tokentilt.measurement.calibrate import RateFit, RoundsState, fit_trained_bias
from tokentilt.measurement.evaluate import measure_rate, narrow_enough
from tokentilt.models.load import load_model
from tokentilt.settings import EvalConfig
from tokentilt.targets import phrases
from tokentilt.training import checkpoint
from tokentilt.training.engine import on_main, process_state

CONFIRM_BUDGET = 4  # the confirming measurement's sample budget, in EvalConfig.max_samples


def load_with_set(model_name: str, toward: str, echo=print):
    """Load a model and resolve the selector over its output vocabulary -> (model, tokenizer, TokenSet),
    or a phrases.PhraseSet for a phrase selector (its completion probabilities taken from the model)."""
    echo(f"loading model {model_name!r} ...")
    model, tokenizer = load_model(model_name)
    return model, tokenizer, phrases.resolve_target(toward, tokenizer, model, echo)


def train_to_rate(
    placement,
    tokenizer,
    target,
    cfg,
    bias: float,
    pool=None,
    echo=print,
    resumed: RoundsState | None = None,
    after_round=None,
) -> tuple[RateFit, list[dict]]:
    """Train `placement` (placements.Placement) toward the rate cfg.rate: up to cfg.rate_rounds trainings,
    each from the weights the model holds now. cfg: the TiltConfig (its rate, rate_rounds, eval, train).

    `bias` is the decode-time calibration; calibrate.fit_trained_bias corrects it after each round from
    the trained model's R, measured on probe seeds (eval_seed + 1) so that the R the run reports afterwards
    (on eval_seed) is not the one b was fitted to. The model ends holding the kept round's weights. With
    `pool`, the calibration's draws on the probe seeds (importance.Pool), a round's R is first estimated
    from them by importance weights (one teacher-forced forward of the trained model, of its head alone
    for a head-only placement, or none at all where the placement gives its `offsets`) and sampled (until
    known, by measure_rate's rule) only when the estimate rests on too few effective samples or its
    interval is wider than that rule asks. A round whose probe lands within the tolerance, or holds R* in
    its interval, is sampled again on the probe seeds, to half the half-width (with CONFIRM_BUDGET times the
    sample budget): the rounds stop only if that R is within the tolerance too, and b moves on it if not.
    after_round(RoundsState, kept_changed) checkpoints each round (its value: (history, weights)); `resumed`
    goes on from one.
    -> (the fit, the kept round's training history).
    """
    model, probe_cfg = placement.model, cfg.eval.probe()
    # a round near R* is sampled to half the probe's half-width (4x the samples)
    confirm_cfg = dataclasses.replace(
        probe_cfg, half_width=probe_cfg.half_width / 2, max_samples=CONFIRM_BUDGET * probe_cfg.max_samples
    )
    state = process_state(cfg.train.device)
    start = snapshot(model)  # every round starts here (the full weights, or a fresh LoRA adapter)

    def train_at(b: float):
        restore(model, start)
        history = placement.train(b)
        return history, snapshot(model)

    def probe_once() -> dict:
        if pool is not None:
            if placement.offsets is not None and pool.recorded():
                estimate = pool.of_offsets(placement.offsets)
            else:
                estimate = pool.of_model(model, cfg.train.bf16, placement.head_only)
            if pool.enough(estimate) and narrow_enough(estimate, probe_cfg):
                return estimate
        return sampled()

    def sampled(how: EvalConfig = probe_cfg) -> dict:
        return measure_rate(model, tokenizer, target, how, bf16=cfg.train.bf16)[0]

    def probe() -> dict:
        return on_main(probe_once, state)

    def confirm() -> dict:
        return on_main(lambda: sampled(confirm_cfg), state)

    n = len(cfg.eval.prompts) * cfg.eval.samples_per_prompt
    fit, (history, weights) = fit_trained_bias(
        train_at,
        probe,
        cfg.rate,
        bias,
        cfg.rate_rounds,
        n,
        echo=echo,
        resumed=resumed,
        after_round=after_round,
        width=probe_cfg.half_width,
        confirm=confirm if probe_cfg.half_width > 0 else None,  # (fixed samples: the probe's own again)
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
