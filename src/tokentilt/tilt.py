"""The main job: tilt a model toward a token set, measure before and after, write one run folder."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import torch

from tokentilt import data
from tokentilt.config import to_flat
from tokentilt.calibrate import RateFit, calibrate, check_rate, fit_trained_bias
from tokentilt.evaluate import EvalConfig, held_out_text, held_out_windows, measure, measure_rate
from tokentilt.losses import OBJECTIVES, REFERENCE_OBJECTIVES, TEXT_OBJECTIVES, ObjectiveContext
from tokentilt.models.load import load_model, save_model
from tokentilt.outputs import RunFolder
from tokentilt.report import fmt_rate, plot_rate, plot_series, summary_table, tilt_report
from tokentilt.targets import TokenSet, resolve_set
from tokentilt.train import TrainConfig, frozen_copy, train

INPUTS = ("auto", "random", "text")


@dataclass
class TiltConfig:
    """One tilt run. Flat YAML keys and CLI flags map onto these fields and the nested ones."""

    model: str = "bundled"  # "bundled", a local HF folder, or a hub id
    toward: str = "x"  # selector of the token set (see targets.py)
    objective: str = "kl-uniform"  # one of losses.OBJECTIVES
    positions: str = "all"  # which positions enter the loss: last | all
    alpha: float = 1.0  # kl-alpha-beta / mixed: weight inside the set
    beta: float = 1e-4  # kl-alpha-beta / mixed: weight outside the set
    bias: float = 2.0  # tilt-distill: logit bias b of the target softmax(z_ref + b*mask)
    rate: float = 0.0  # tilt-distill: target rate R*; b is calibrated to it on the reference (0 = use bias)
    rate_rounds: int = 3  # with rate: training rounds that correct b until the trained model's R is R*
    ce_weight: float = 1.0  # mixed: lambda in KL + lambda * CE
    inputs: str = "auto"  # random | text | auto (text for tilt-distill and mixed, else random)
    out: str = "runs/tilt"  # output folder
    overwrite: bool = False  # replace an existing run folder
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def check(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.positions not in ("last", "all"):
            raise ValueError(f"positions must be 'last' or 'all', got {self.positions!r}")
        if self.inputs not in INPUTS:
            raise ValueError(f"inputs must be one of {', '.join(INPUTS)}, got {self.inputs!r}")
        if self.alpha < 0 or self.beta < 0 or self.alpha + self.beta == 0:
            raise ValueError("alpha and beta must be >= 0 and not both 0")
        if self.rate:
            check_rate(self.rate)
            if self.objective != "tilt-distill":
                raise ValueError(f"rate calibrates tilt-distill's bias; it does not apply to {self.objective}")
        if not (isinstance(self.rate_rounds, int) and self.rate_rounds >= 1):
            raise ValueError(f"rate-rounds must be a positive integer, got {self.rate_rounds!r}")
        self.train.check()
        self.eval.check()

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
    """Load a model and resolve the selector over its output vocabulary -> (model, tokenizer, TokenSet)."""
    echo(f"loading model {model_name!r} ...")
    model, tokenizer = load_model(model_name)
    tokens = resolve_set(toward, tokenizer, model.get_output_embeddings().weight.shape[0])
    echo(tokens.describe())
    return model, tokenizer, tokens


def batch_source(kind: str, tokenizer, vocab_size: int, cfg: TrainConfig):
    """-> next_batch(generator, rows) giving (rows, T) ids: random tokens, or windows of the plays' train split."""
    if kind == "random":
        return lambda g, rows: data.random_tokens(vocab_size, rows, cfg.seq_len, g)
    tokens = train_tokens(tokenizer)
    return lambda g, rows: data.text_windows(tokens, rows, cfg.seq_len, g)


def train_toward(model, tokenizer, reference, tokens: TokenSet, cfg: TiltConfig, bias: float, evaluate=None,
                 log=None, progress: bool = True) -> list[dict]:
    """Train `model` in place with cfg's objective; `reference` is the frozen starting model."""
    ctx = ObjectiveContext(mask=tokens.mask, positions=cfg.positions, alpha=cfg.alpha, beta=cfg.beta,
                           bias=bias, ce_weight=cfg.ce_weight)
    next_batch = batch_source(cfg.input_kind(), tokenizer, tokens.vocab_size, cfg.train)
    return train(model, OBJECTIVES[cfg.objective], ctx, next_batch, cfg.train,
                 reference=reference if cfg.objective in REFERENCE_OBJECTIVES else None,
                 evaluate=evaluate, log=log, progress=progress)


def train_to_rate(model, tokenizer, reference, tokens: TokenSet, cfg: TiltConfig, bias: float, evaluate=None,
                  log=None, progress: bool = True, on_round=None, echo=print) -> tuple[RateFit, list[dict]]:
    """tilt-distill toward the rate cfg.rate: up to cfg.rate_rounds trainings, each from the reference's weights.

    `bias` is the decode-time calibration; calibrate.fit_trained_bias corrects it after each
    round from the trained model's R, measured on probe seeds (eval_seed + 1) so that the R the
    run reports afterwards (on eval_seed) is not the one b was fitted to. The model ends holding
    the kept round's weights. on_round() is called before each round trains.
    -> (the fit, the kept round's training history).
    """
    probe_cfg = dataclasses.replace(cfg.eval, eval_seed=cfg.eval.eval_seed + 1)

    def train_at(b: float):
        if on_round is not None:
            on_round()
        model.load_state_dict(reference.state_dict())
        history = train_toward(model, tokenizer, reference, tokens, cfg, b, evaluate, log, progress)
        return history, {k: v.detach().clone() for k, v in model.state_dict().items()}

    def probe() -> dict:
        return measure_rate(model, tokenizer, tokens.mask, probe_cfg, bf16=cfg.train.bf16)[0]

    n = len(cfg.eval.prompts) * cfg.eval.samples_per_prompt
    fit, (history, state) = fit_trained_bias(train_at, probe, cfg.rate, bias, cfg.rate_rounds, n, echo=echo)
    if fit.kept != len(fit.rounds) - 1:
        model.load_state_dict(state)
    return fit, history


def flat_costs(m: dict, suffix: str) -> dict:
    """measure()'s dict -> summary keys: ppl_before, drift_before, distinct_1_before, ..."""
    return {f"{k}_{suffix}": m[k] for k in ("ppl", "drift", "distinct_1", "distinct_2", "repetition")}


def run_tilt(cfg: TiltConfig, progress: bool = True, echo=print) -> dict:
    """Do the whole job and return summary.json's content. Raises ValueError on bad input."""
    cfg.check()
    folder = RunFolder(cfg.out, cfg.overwrite)  # refuse a used folder before the slow part
    eval_text = held_out_text(cfg.eval)  # and a missing eval file
    started = time.time()
    model, tokenizer, tokens = load_with_set(cfg.model, cfg.toward, echo)
    windows = held_out_windows(tokenizer, cfg.eval, eval_text)  # (W, T)
    folder.start()
    bf16 = cfg.train.bf16

    echo("measuring R and costs before training ...")
    before, samples_before = measure(model, tokenizer, tokens.mask, cfg.eval, windows, bf16=bf16)
    rate_before = before["rate"]
    rate_points = [(0, rate_before)]
    bias, calibration = cfg.bias, None
    if cfg.rate:
        echo(f"calibrating the decode-time bias to R = {cfg.rate} ...")
        calibration = calibrate(model, tokenizer, tokens.mask, cfg.rate, cfg.eval, windows, bf16=bf16, echo=echo)
        bias = calibration.bias
        echo(f"b = {bias:.3f} gives decode-time R = {fmt_rate(calibration.rate)}")
    folder.write_yaml("config.yaml", {**to_flat(cfg), **({"calibrated_bias": bias} if cfg.rate else {})})
    baseline = None
    if cfg.objective == "tilt-distill":
        echo(f"measuring the decode-time baseline at b = {bias:.3f} ...")
        baseline, _ = measure(model, tokenizer, tokens.mask, cfg.eval, windows, bias=bias, bf16=bf16)

    round_points: list[list] = []  # R over training, one list per training round

    def evaluate(step: int) -> dict:
        rate, _ = measure_rate(model, tokenizer, tokens.mask, cfg.eval, cfg.eval.during_samples_per_prompt, bf16=bf16)
        round_points[-1].append((step, rate))
        return {"rate": rate["mean"], "rate_ci_low": rate["ci_low"], "rate_ci_high": rate["ci_high"]}

    def log(record: dict) -> None:
        folder.append_jsonl("metrics.jsonl", {**record, "round": len(round_points)} if cfg.rate else record)

    reference = frozen_copy(model)  # the starting model: target of tilt-distill, reference of drift
    train_started = time.time()
    fit, trained_bias = None, bias
    if cfg.rate:
        echo(f"training toward R = {cfg.rate}, correcting b from the trained model's R (<= {cfg.rate_rounds} rounds)")
        fit, history = train_to_rate(model, tokenizer, reference, tokens, cfg, bias, evaluate, log, progress,
                                     on_round=lambda: round_points.append(list(rate_points)), echo=echo)
        rate_points, trained_bias = round_points[fit.kept], fit.bias
    else:
        round_points.append(rate_points)
        history = train_toward(model, tokenizer, reference, tokens, cfg, bias, evaluate, log, progress)
    train_seconds = time.time() - train_started

    echo("measuring R and costs after training ...")
    after, samples_after = measure(model, tokenizer, tokens.mask, cfg.eval, windows, reference=reference, bf16=bf16)
    del reference
    rate_after = after["rate"]
    if rate_points[-1][0] == history[-1]["step"]:
        rate_points[-1] = (history[-1]["step"], rate_after)  # the full measurement replaces the light one
    else:
        rate_points.append((history[-1]["step"], rate_after))
    save_model(model, tokenizer, folder.path("model"))

    steps = [r["step"] for r in history]
    plot_series(folder.path("loss.png"), {cfg.objective: (steps, [r["loss"] for r in history])},
                f"{cfg.objective} loss ({cfg.positions} positions, lr {cfg.train.lr:g})", "loss", logy=True)
    plot_rate(folder.path("rate.png"), rate_points, f"R for {cfg.toward!r} over training")
    summary = {
        "model": cfg.model,
        "selector": cfg.toward,
        "target_size": tokens.size,
        "vocab_size": tokens.vocab_size,
        "target_share": tokens.share,
        "objective": cfg.objective,
        "positions": cfg.positions,
        "lr": cfg.train.lr,
        "steps": len(history),
        "loss_start": history[0]["loss"],
        "loss_end": history[-1]["loss"],
        "rate_before": rate_before,
        "rate_after": rate_after,
        **flat_costs(before, "before"),
        **flat_costs(after, "after"),
        "eval_text": cfg.eval.eval_text or "plays:test",
        "eval_tokens": int(windows.numel()),
        "samples": len(samples_after.texts),
        "new_tokens": cfg.eval.new_tokens,
        "train_seconds": round(train_seconds, 1),
        "seconds": round(time.time() - started, 1),
    }
    if cfg.objective == "tilt-distill":
        summary["bias"] = trained_bias
        summary["rate_target"] = cfg.rate or None
        if fit is not None:
            summary["calibrated_bias"] = bias
            summary["bias_rounds"] = fit.round_records()
        summary["baseline"] = {"objective": "decode-bias", "bias": bias, **baseline}
    folder.path("report.md").write_text(tilt_report(cfg, summary, samples_before, samples_after))
    folder.write_json("summary.json", summary)
    out = folder.finish()
    echo(summary_table(summary))
    echo(f"run folder: {out}")
    return summary
