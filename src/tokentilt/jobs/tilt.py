"""The main job: tilt a model toward a token set, measure before and after, write one run folder."""

from __future__ import annotations

import shutil
import sys
import time

import yaml

from tokentilt import checkpoint, head_tilt, tilting
from tokentilt.calibrate import bias_at_rate, calibrate
from tokentilt.chat import check_template
from tokentilt.config import UsageError, to_flat
from tokentilt.engine import on_main, peak_rss_mb, process_state, reset_peak_rss, resolve_device
from tokentilt.evaluate import (
    chat_windows,
    decode_costs,
    excess_cost,
    held_out_text,
    held_out_windows,
    measure,
    measure_rate,
)
from tokentilt.metrics import collapse_warnings
from tokentilt.models import lora
from tokentilt.models.load import save_model
from tokentilt.outputs import RunFolder, keep_records_until, write_samples
from tokentilt.phrases import WORD, PhraseSet, plays_reference
from tokentilt.report import excess_cost_note, fmt_rate, plot_rate, plot_series, summary_table, tilt_report
from tokentilt.tilting import TiltConfig, load_with_set, train_to_rate, train_toward
from tokentilt.train import frozen_copy

# Settings that may differ between a run and its --resume.
RESUME_FREE = ("resume", "overwrite", "calibrated_bias")


def flat_costs(m: dict, suffix: str) -> dict:
    """measure()'s dict -> summary keys: ppl_before, drift_before, distinct_1_before, ..."""
    keys = ("ppl", "drift", "distinct_1", "distinct_2", "repetition", "ppl_text", "drift_text")
    return {f"{k}_{suffix}": m[k] for k in keys if k in m}  # *_text: a chat run's raw-text costs


class Stages:
    """Wall seconds per named stage: mark(name) charges the time since the previous mark to `name`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.time()

    def mark(self, name: str) -> None:
        now = time.time()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self._last, 1)
        self._last = now


def phrase_summary(phrases: PhraseSet, tokenizer, bias: float) -> dict:
    """How each entry tokenizes, and the collateral at the trained b: the reference words (the plays'
    train split) that are not entries but move with the tilt, the commonest first."""
    return {"word_rule": WORD.pattern, "keep_case": phrases.keep_case, "entries": phrases.tokenizations(tokenizer),
            "collateral": phrases.collateral(tokenizer, plays_reference(), bias)}


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
    clock = Stages()  # seconds per stage, for summary.json and the console
    model, tokenizer, tokens = load_with_set(cfg.model, cfg.toward, say)
    if cfg.eval.chat:
        check_template(tokenizer)  # before the run folder is started
    if cfg.lora.lora:
        model = lora.add_adapter(model, cfg.lora, seed=cfg.train.seed)
        reference = lora.AdapterOff(model)  # the base, with the adapter switched off: no second copy
    else:
        reference = frozen_copy(model)  # the starting model: target of tilt-distill, reference of drift
    bf16 = cfg.train.bf16
    head = None
    if cfg.head_rows():
        head = head_tilt.HeadRowsTilt(model, tokens.mask, lambda b: head_tilt.context_batches(
            model, tokenizer, tilting.train_tokens(tokenizer), tokens.mask, b, cfg.contexts, cfg.train.seed, bf16,
            cfg.eval.chat, cfg.eval.system),
            cfg.head_steps, cfg.head_lr, seed=cfg.train.seed, bf16=bf16, odds_weight=cfg.head_odds_weight,
            fit=cfg.head_fit)
    counts = lora.param_counts(model)
    if head:
        counts["trainable_params"] = head.original.numel()  # the set's rows; the rest is frozen
    say(f"training {counts['trainable_params']:,} of {counts['total_params']:,} parameters"
        + (f" (LoRA r={cfg.lora.lora_r})" if cfg.lora.lora else "")
        + (f" ({head.trained_rows:,} rows of the untied output head)" if head else ""))

    bias, calibration, baseline, before, samples_before, windows = cfg.bias, None, None, None, None, None
    text_windows = None  # a chat run's raw-text windows, measured beside its chat exchanges
    if main:
        windows = held_out_windows(tokenizer, cfg.eval, eval_text)  # (W, T)
        if cfg.eval.chat:
            say("sampling the held-out chat exchanges (the start model's replies to held-out requests) ...")
            text_windows, windows = windows, chat_windows(model, tokenizer, cfg.eval, bf16)
        folder.start()
        if cfg.resume:
            say(f"resuming {folder.tmp} after step {resume_step}")
            keep_records_until(folder.path("metrics.jsonl"), resume_step)
        clock.mark("load")
        say("measuring R and costs before training ...")
        before, samples_before = measure(model, tokenizer, tokens.target, cfg.eval, windows, bf16=bf16,
                                         text_windows=text_windows)
        clock.mark("measure_before")
        if cfg.rate:  # on the probe seeds, like the rate rounds: the eval seeds only measure
            say(f"calibrating the decode-time bias to R = {cfg.rate} (probe seeds) ...")
            calibration = calibrate(model, tokenizer, tokens.target, cfg.rate, cfg.eval.probe(), windows, bf16=bf16,
                                    echo=say)
            bias = calibration.bias
            say(f"b = {bias:.3f} gives decode-time R = {fmt_rate(calibration.rate)} on the probe seeds")
            clock.mark("calibrate")
        if not cfg.resume:
            folder.write_yaml("config.yaml", {**to_flat(cfg), **({"calibrated_bias": bias} if cfg.rate else {})})
        if cfg.objective == "tilt-distill":
            say(f"measuring the decode-time baseline at b = {bias:.3f} ...")
            baseline, _ = measure(model, tokenizer, tokens.target, cfg.eval, windows, bias=bias, bf16=bf16,
                                  text_windows=text_windows)
            clock.mark("baseline")
    bias = on_main(lambda: bias, state)
    round_no = 0  # with --rate: the training round that metrics.jsonl records belong to

    def next_round() -> None:
        nonlocal round_no
        round_no += 1

    def evaluate(step: int) -> dict:  # the main process only
        rate, _ = measure_rate(model, tokenizer, tokens.target, cfg.eval, cfg.eval.during_samples_per_prompt, bf16=bf16)
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
    clock.mark("train")  # with --rate: every round, its contexts and its probe
    train_peak = peak_rss_mb() if peak_was_reset else None  # None: this platform cannot reset the peak
    if not main:
        state.wait_for_everyone()
        return {}

    say("measuring R and costs after training ...")
    after, samples_after = measure(model, tokenizer, tokens.target, cfg.eval, windows, reference=reference, bf16=bf16,
                                   text_windows=text_windows)
    clock.mark("measure_after")
    matched = None
    if cfg.objective == "tilt-distill":  # the decode-time tilt at the trained model's R: the cost to beat
        # The decode-time R(b) curve on the eval seeds, the seeds of the tuned R: at b = 0, at the calibrated
        # b and, when the rate rounds moved it, at the trained b.
        curve = [(0.0, before["rate"]["mean"]), (bias, baseline["rate"]["mean"])]
        if trained_bias != bias:
            say(f"measuring the decode-time R at the trained b = {trained_bias:.3f} ...")
            curve.append((trained_bias, measure_rate(reference, tokenizer, tokens.target, cfg.eval, bias=trained_bias,
                                                     bf16=bf16)[0]["mean"]))
        b_matched = bias_at_rate(curve, after["rate"]["mean"], after["rate"]["n"])
        matched = {"bias": b_matched, **decode_costs(reference, tokens.target, windows, b_matched, bf16,
                                                      text_windows)}
        clock.mark("matched_decode")
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
    clock.mark("save")

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
        "eval_text": ("chat:held-out replies" if cfg.eval.chat else cfg.eval.eval_text or "plays:test"),
        "eval_tokens": int(windows.numel()),
        "chat": {"system": cfg.eval.system or None, "prompts": len(cfg.eval.prompts),
                 "reply_tokens_before": int(samples_before.lengths.sum()),
                 "reply_tokens_after": int(samples_after.lengths.sum()),
                 "text_eval": cfg.eval.eval_text or "plays:test"} if cfg.eval.chat else None,
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
        "stage_seconds": clock.seconds,  # load, measure_before, calibrate, baseline, train, measure_after, ...
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
    if isinstance(tokens, PhraseSet):
        summary["phrases"] = phrase_summary(tokens, tokenizer, trained_bias)
    write_samples(folder.path("samples.jsonl"), samples_before, samples_after)
    folder.path("report.md").write_text(tilt_report(cfg, summary, samples_before, samples_after))
    folder.write_json("summary.json", summary)
    shutil.rmtree(folder.path("checkpoints"), ignore_errors=True)  # a finished run needs none
    out = folder.finish()
    state.wait_for_everyone()
    echo(summary_table(summary))
    if summary.get("matched_decode"):
        echo(excess_cost_note(summary))
    echo("seconds: " + ", ".join(f"{k} {v:g}" for k, v in summary["stage_seconds"].items()))
    echo(f"run folder: {out}")
    return summary
