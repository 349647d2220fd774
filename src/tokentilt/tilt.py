"""The main job: tilt a model toward a token set, measure before and after, write one run folder."""

from __future__ import annotations

import json
import math
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from tokentilt import checkpoint, data, head_tilt
from tokentilt.config import UsageError, to_flat
from tokentilt.calibrate import RateFit, bias_at_rate, calibrate, check_rate, fit_trained_bias
from tokentilt.evaluate import (EvalConfig, decode_costs, excess_cost, held_out_text, held_out_windows, measure,
                                measure_rate)
from tokentilt.engine import on_main, process_state, resolve_device
from tokentilt.losses import OBJECTIVES, REFERENCE_OBJECTIVES, TEXT_OBJECTIVES, ObjectiveContext
from tokentilt.metrics import collapse_warnings
from tokentilt.models import lora
from tokentilt.models.load import load_model, save_model
from tokentilt.outputs import RunFolder
from tokentilt.report import excess_cost_note, fmt_rate, plot_rate, plot_series, summary_table, tilt_report
from tokentilt.targets import TokenSet, resolve_set
from tokentilt.train import TrainConfig, frozen_copy, train

INPUTS = ("auto", "random", "text")
PLACEMENTS = ("auto", "head-rows", "model")
FULL_LR = 1e-4  # the course's learning rate for full fine-tuning
# Settings that may differ between a run and its --resume.
RESUME_FREE = ("resume", "overwrite", "calibrated_bias")


def _auto_lr() -> TrainConfig:
    return TrainConfig(lr=0.0)  # 0 = FULL_LR, or lora.DEFAULT_LR with --lora (settled in check)


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
    placement: str = "auto"  # tilt-distill: head-rows | model | auto (head-rows, or model with --lora)
    contexts: str = "mix"  # head-rows: training contexts, mix | text (plays) | policy (tilted samples)
    head_fit: str = "offset"  # head-rows: offset (least-squares constant logit offset) | kl (Adam on the KL)
    head_steps: int = 300  # head-rows, kl fit: Adam steps on cached head inputs
    head_lr: float = 1e-2  # head-rows, kl fit: peak learning rate (cosine schedule)
    head_odds_weight: float = 0.0  # head-rows, kl fit: weight of the set log-odds error next to the KL
    inputs: str = "auto"  # random | text | auto (text for tilt-distill and mixed, else random)
    out: str = "runs/tilt"  # output folder
    overwrite: bool = False  # replace an existing run folder
    resume: bool = False  # continue the unfinished run in out.partial from its newest checkpoint
    train: TrainConfig = field(default_factory=_auto_lr)
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
        if self.rate:
            check_rate(self.rate)
            if self.objective != "tilt-distill":
                raise ValueError(f"rate calibrates tilt-distill's bias; it does not apply to {self.objective}")
        if not (isinstance(self.rate_rounds, int) and self.rate_rounds >= 1):
            raise ValueError(f"rate-rounds must be a positive integer, got {self.rate_rounds!r}")
        if self.rate and (self.resume or self.train.save_every or self.train.report_to != "none"):
            raise ValueError("--rate trains up to rate-rounds times from the start; "
                             "it takes no --resume, --save-every or --report-to")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}")
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
        if not (isinstance(self.head_odds_weight, (int, float)) and math.isfinite(self.head_odds_weight)
                and self.head_odds_weight >= 0):
            raise ValueError(f"head-odds-weight must be >= 0, got {self.head_odds_weight!r}")
        if self.head_rows() and (self.resume or self.train.save_every or self.train.report_to != "none"):
            raise ValueError("--placement head-rows fits in seconds on cached hidden states; "
                             "it takes no --resume, --save-every or --report-to (use --placement model)")
        if self.resume and self.overwrite:
            raise ValueError("--resume continues a run and --overwrite starts it afresh: give one of them")
        if self.train.lr == 0:
            self.train.lr = lora.DEFAULT_LR if self.lora.lora else FULL_LR
        self.lora.check()
        self.train.check()
        self.eval.check()

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
                 log=None, progress: bool = True, run_dir=None) -> list[dict]:
    """Train `model` in place with cfg's objective; `reference` is the frozen starting model.
    With run_dir, checkpoints go there and cfg.resume continues from the newest one."""
    ctx = ObjectiveContext(mask=tokens.mask, positions=cfg.positions, alpha=cfg.alpha, beta=cfg.beta,
                           bias=bias, ce_weight=cfg.ce_weight)
    next_batch = batch_source(cfg.input_kind(), tokenizer, tokens.vocab_size, cfg.train)
    return train(model, OBJECTIVES[cfg.objective], ctx, next_batch, cfg.train,
                 reference=reference if cfg.objective in REFERENCE_OBJECTIVES else None,
                 evaluate=evaluate, log=log, progress=progress, run_dir=run_dir,
                 resume=cfg.resume and run_dir is not None)


def train_to_rate(model, tokenizer, reference, tokens: TokenSet, cfg: TiltConfig, bias: float, evaluate=None,
                  log=None, progress: bool = True, on_round=None, echo=print,
                  train_once=None) -> tuple[RateFit, list[dict]]:
    """tilt-distill toward the rate cfg.rate: up to cfg.rate_rounds trainings, each from the reference's weights.

    `bias` is the decode-time calibration; calibrate.fit_trained_bias corrects it after each
    round from the trained model's R, measured on probe seeds (eval_seed + 1) so that the R the
    run reports afterwards (on eval_seed) is not the one b was fitted to. The model ends holding
    the kept round's weights. on_round() is called before each round trains. train_once(b) ->
    history replaces train_toward (head-rows passes HeadRowsTilt.train).
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

    def probe() -> dict:
        return on_main(lambda: measure_rate(model, tokenizer, tokens.mask, probe_cfg, bf16=cfg.train.bf16)[0], state)

    n = len(cfg.eval.prompts) * cfg.eval.samples_per_prompt
    fit, (history, weights) = fit_trained_bias(train_at, probe, cfg.rate, bias, cfg.rate_rounds, n, echo=echo)
    if fit.kept != len(fit.rounds) - 1:
        restore(model, weights)
    return fit, history


def snapshot(model) -> dict[str, torch.Tensor]:
    """A copy of the weights that train."""
    return {name: p.detach().clone() for name, p in checkpoint.trainable(model).items()}


@torch.no_grad()
def restore(model, weights: dict[str, torch.Tensor]) -> None:
    for name, p in checkpoint.trainable(model).items():
        p.copy_(weights[name])


def flat_costs(m: dict, suffix: str) -> dict:
    """measure()'s dict -> summary keys: ppl_before, drift_before, distinct_1_before, ..."""
    return {f"{k}_{suffix}": m[k] for k in ("ppl", "drift", "distinct_1", "distinct_2", "repetition")}


def _quiet(*args, **kwargs) -> None:
    pass


def check_resumable(folder: RunFolder, cfg: TiltConfig) -> int:
    """The step of the newest checkpoint of the unfinished run; one-line errors if there is none
    or if the run was started with other settings."""
    found = checkpoint.checkpoints(folder.path("checkpoints"))
    if not found:
        raise UsageError(f"nothing to resume: {folder.tmp} holds no checkpoint (it needs --save-every, "
                         "or a Ctrl-C during training)")
    saved = yaml.safe_load(folder.path("config.yaml").read_text()) or {}
    now = to_flat(cfg)
    changed = [k for k in sorted(set(saved) | set(now))
               if k not in RESUME_FREE and saved.get(k, "<unset>") != now.get(k, "<unset>")]
    if changed:
        k = changed[0]
        raise UsageError(f"--resume with other settings than the run's: {k.replace('_', '-')} was "
                         f"{saved.get(k, '<unset>')!r}, now {now.get(k, '<unset>')!r} (run the same command plus --resume)")
    return found[-1][0]


def keep_records_until(path, step: int) -> None:
    """Drop the metrics.jsonl records after `step` (written after the checkpoint that resumes)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):  # a line cut short by kill -9
            continue
    path.write_text("".join(line + "\n" for line in kept))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (since reset_peak_rss), in MiB.
    VmHWM on Linux; ru_maxrss (KiB on Linux, bytes on macOS) elsewhere."""
    try:
        status = Path("/proc/self/status").read_text()
        return round(int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM:")).split()[1]) / 1024, 1)
    except (OSError, StopIteration):
        scale = 1024 * 1024 if sys.platform == "darwin" else 1024
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale, 1)


def reset_peak_rss() -> bool:
    """Start peak_rss_mb() afresh (Linux: clear_refs 5), so that training's peak is not loading's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_tilt(cfg: TiltConfig, progress: bool = True, echo=print) -> dict:
    """Do the whole job and return summary.json's content. Raises ValueError on bad input.

    Under torchrun every process trains its share of each global batch; only the main process
    loads the eval text, measures, prints and writes the run folder (the others wait for it).
    """
    cfg.check()
    state = process_state(cfg.train.device)
    main = state.is_main_process
    say = echo if main else _quiet
    folder = RunFolder(cfg.out, cfg.overwrite, resume=cfg.resume)  # refuse a used folder before the slow part
    resume_step = check_resumable(folder, cfg) if cfg.resume else 0
    eval_text = held_out_text(cfg.eval) if main else None  # and a missing eval file
    started = time.time()
    model, tokenizer, tokens = load_with_set(cfg.model, cfg.toward, say)
    if cfg.lora.lora:
        model = lora.add_adapter(model, cfg.lora, seed=cfg.train.seed)
        reference = lora.AdapterOff(model)  # the base, with the adapter switched off: no second copy
    else:
        reference = frozen_copy(model)  # the starting model: target of tilt-distill, reference of drift
    bf16 = cfg.train.bf16
    head = None
    if cfg.head_rows():
        head = head_tilt.HeadRowsTilt(model, tokens.mask, lambda b: head_tilt.context_batches(
            model, tokenizer, train_tokens(tokenizer), tokens.mask, b, cfg.contexts, cfg.train.seed, bf16),
            cfg.head_steps, cfg.head_lr, seed=cfg.train.seed, bf16=bf16, odds_weight=cfg.head_odds_weight,
            fit=cfg.head_fit)
    counts = lora.param_counts(model)
    if head:
        counts["trainable_params"] = head.original.numel()  # the set's rows; the rest is frozen
    say(f"training {counts['trainable_params']:,} of {counts['total_params']:,} parameters"
        + (f" (LoRA r={cfg.lora.lora_r})" if cfg.lora.lora else "")
        + (f" ({head.trained_rows:,} rows of the untied output head)" if head else ""))

    bias, calibration, baseline, before, samples_before, windows = cfg.bias, None, None, None, None, None
    if main:
        windows = held_out_windows(tokenizer, cfg.eval, eval_text)  # (W, T)
        folder.start()
        if cfg.resume:
            say(f"resuming {folder.tmp} after step {resume_step}")
            keep_records_until(folder.path("metrics.jsonl"), resume_step)
        say("measuring R and costs before training ...")
        before, samples_before = measure(model, tokenizer, tokens.mask, cfg.eval, windows, bf16=bf16)
        if cfg.rate:  # on the probe seeds, like the rate rounds: the eval seeds only measure
            say(f"calibrating the decode-time bias to R = {cfg.rate} (probe seeds) ...")
            calibration = calibrate(model, tokenizer, tokens.mask, cfg.rate, cfg.eval.probe(), windows, bf16=bf16,
                                    echo=say)
            bias = calibration.bias
            say(f"b = {bias:.3f} gives decode-time R = {fmt_rate(calibration.rate)} on the probe seeds")
        if not cfg.resume:
            folder.write_yaml("config.yaml", {**to_flat(cfg), **({"calibrated_bias": bias} if cfg.rate else {})})
        if cfg.objective == "tilt-distill":
            say(f"measuring the decode-time baseline at b = {bias:.3f} ...")
            baseline, _ = measure(model, tokenizer, tokens.mask, cfg.eval, windows, bias=bias, bf16=bf16)
    bias = on_main(lambda: bias, state)
    round_no = 0  # with --rate: the training round that metrics.jsonl records belong to

    def next_round() -> None:
        nonlocal round_no
        round_no += 1

    def evaluate(step: int) -> dict:  # the main process only
        rate, _ = measure_rate(model, tokenizer, tokens.mask, cfg.eval, cfg.eval.during_samples_per_prompt, bf16=bf16)
        return {"rate": rate["mean"], "rate_ci_low": rate["ci_low"], "rate_ci_high": rate["ci_high"]}

    def log(record: dict) -> None:
        folder.append_jsonl("metrics.jsonl", {**record, "round": round_no} if cfg.rate else record)

    start_peak = peak_rss_mb()  # loading and the measurements before training
    peak_was_reset = reset_peak_rss()
    train_started = time.time()
    fit, trained_bias = None, bias
    if cfg.rate:
        say(f"training toward R = {cfg.rate}, correcting b from the trained model's R (<= {cfg.rate_rounds} rounds)")
        fit, history = train_to_rate(model, tokenizer, reference, tokens, cfg, bias, evaluate, log, progress and main,
                                     on_round=next_round, echo=say,
                                     train_once=(lambda b: head.train(b, progress and main, log)) if head else None)
        trained_bias = fit.bias
    elif head:
        history = head.train(bias, progress and main, log)
    else:
        history = train_toward(model, tokenizer, reference, tokens, cfg, bias, evaluate, log, progress and main,
                               run_dir=folder.tmp)
    train_seconds = time.time() - train_started
    train_peak = peak_rss_mb() if peak_was_reset else None  # None: this platform cannot reset the peak
    if not main:
        state.wait_for_everyone()
        return {}

    say("measuring R and costs after training ...")
    after, samples_after = measure(model, tokenizer, tokens.mask, cfg.eval, windows, reference=reference, bf16=bf16)
    matched = None
    if cfg.objective == "tilt-distill":  # the decode-time tilt at the trained model's R: the cost to beat
        # The decode-time R(b) curve on the eval seeds, the seeds of the tuned R: at b = 0, at the calibrated
        # b and, when the rate rounds moved it, at the trained b.
        curve = [(0.0, before["rate"]["mean"]), (bias, baseline["rate"]["mean"])]
        if trained_bias != bias:
            say(f"measuring the decode-time R at the trained b = {trained_bias:.3f} ...")
            curve.append((trained_bias, measure_rate(reference, tokenizer, tokens.mask, cfg.eval, bias=trained_bias,
                                                     bf16=bf16)[0]["mean"]))
        b_matched = bias_at_rate(curve, after["rate"]["mean"], after["rate"]["n"])
        matched = {"bias": b_matched, **decode_costs(reference, tokens.mask, windows, b_matched, bf16)}
    del reference
    rate_before, rate_after = before["rate"], after["rate"]
    rate_points = [(0, rate_before)] + [(r["step"], {"mean": r["rate"], "ci_low": r["rate_ci_low"],
                                                     "ci_high": r["rate_ci_high"]})
                                        for r in history if "rate" in r and r["step"] != history[-1]["step"]]
    rate_points.append((history[-1]["step"], rate_after))  # the full measurement replaces the light one
    if cfg.lora.lora:
        model = lora.save_adapter_and_merged(model, tokenizer, folder.tmp)  # adapter/ and model/ (merged)
    else:
        save_model(model, tokenizer, folder.path("model"))

    steps = [r["step"] for r in history]
    how = ((f"head rows, {cfg.head_fit} fit" + (f", lr {cfg.head_lr:g}" if cfg.head_fit == "kl" else ""))
           if head else f"{cfg.positions} positions, lr {cfg.train.lr:g}")
    plot_series(folder.path("loss.png"), {cfg.objective: (steps, [r["loss"] for r in history])},
                f"{cfg.objective} loss ({how})", "loss", logy=True)
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
        "device": resolve_device(cfg.train.device),
        "precision": cfg.train.precision,
        "processes": state.num_processes,
        "global_batch": cfg.train.global_batch(state.num_processes),
        "placement": "head-rows" if head else ("lora" if cfg.lora.lora else "model"),
        "head": {"trained_rows": head.trained_rows, "via_complement": head.sign < 0, "contexts": cfg.contexts,
                 "context_positions": len(head.inputs.h), "fit": cfg.head_fit, "steps": len(history),
                 "lr": cfg.head_lr if cfg.head_fit == "kl" else None,
                 **{k: history[-1][k] for k in ("offset_mean", "offset_std") if k in history[-1]}} if head else None,
        "lora": {"r": cfg.lora.lora_r, "alpha": cfg.lora.lora_alpha, "dropout": cfg.lora.lora_dropout,
                 "targets": cfg.lora.lora_targets} if cfg.lora.lora else None,
        **counts,
        "resumed_after_step": resume_step or None,
        "train_seconds": round(train_seconds, 1),
        "seconds": round(time.time() - started, 1),
        "peak_rss_mb": max(start_peak, peak_rss_mb()),  # the whole run
        "train_peak_rss_mb": train_peak,  # training alone (the optimizer, activations, the reference)
    }
    summary["warnings"] = collapse_warnings(before["ppl"], after["ppl"], tokens.vocab_size)
    for warning in summary["warnings"]:
        print(f"tokentilt: warning: {warning}", file=sys.stderr)
    if cfg.objective == "tilt-distill":
        summary["bias"] = trained_bias
        summary["rate_target"] = cfg.rate or None
        if calibration is not None:  # the decode-time (b, R) points it measured, on the probe seeds
            summary["calibration"] = {"eval_seed": cfg.eval.probe().eval_seed, "proxy_bias": calibration.proxy_bias,
                                      "points": [{"bias": b, "rate": r} for b, r in calibration.history]}
        if fit is not None:
            summary["calibrated_bias"] = bias
            summary["bias_rounds"] = fit.round_records()
        summary["baseline"] = {"objective": "decode-bias", "bias": bias, **baseline}
        summary["matched_decode"] = matched
        # rho's three perplexities under the names it is defined with, all on the same held-out windows
        summary.update(ppl_base=before["ppl"], ppl_decode_matched=matched["ppl"], ppl_tuned=after["ppl"])
        summary.update(excess_cost(before, after, matched))
    folder.path("report.md").write_text(tilt_report(cfg, summary, samples_before, samples_after))
    folder.write_json("summary.json", summary)
    shutil.rmtree(folder.path("checkpoints"), ignore_errors=True)  # a finished run needs none
    out = folder.finish()
    state.wait_for_everyone()
    echo(summary_table(summary))
    if summary.get("matched_decode"):
        echo(excess_cost_note(summary))
    echo(f"run folder: {out}")
    return summary
