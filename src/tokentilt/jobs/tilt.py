"""The main job: tilt a model toward a token set, measure before and after, write one run folder."""

from __future__ import annotations

import contextlib
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from tokentilt.config import UsageError, to_flat
from tokentilt.data.chat import check_template
from tokentilt.jobs.tilt_config import TiltConfig
from tokentilt.measurement import importance
from tokentilt.measurement.calibrate import RoundsState, ban_bias, bias_at_rate, calibrate, fit_budget_bias, match_bias
from tokentilt.measurement.evaluate import (
    decode_costs,
    excess_cost,
    held_out,
    held_out_text,
    measure,
    measure_rate,
    own_costs,
    phrase_perplexity_at,
    public,
    rates_of,
    sample_costs,
)
from tokentilt.measurement.intervals import own_cost_comparison
from tokentilt.measurement.metrics import collapse_warnings, perplexity_and_drift, split_windows, tilt_costs
from tokentilt.models import lora
from tokentilt.models.load import save_model
from tokentilt.runs.folder import RunFolder, keep_records_until, write_samples
from tokentilt.runs.report import (
    excess_cost_note,
    fmt_rate,
    hard_ban_note,
    plot_rate,
    plot_series,
    side_by_side,
    summary_table,
    tilt_report,
)
from tokentilt.training import checkpoint, head_rows, placements
from tokentilt.training.checkpoint import CheckpointError
from tokentilt.training.engine import Stages, on_main, process_state, resolve_device
from tokentilt.training.rate import load_with_set, train_to_rate
from tokentilt.training.rate_checkpoint import STATE, RateCheckpoint

# Settings that may differ between a run and its --resume.
RESUME_FREE = ("resume", "overwrite", "calibrated_bias")


def flat_costs(m: dict, suffix: str) -> dict:
    """measure()'s dict -> summary keys: ppl_before, drift_before, distinct_1_before, ..."""
    keys = ("ppl", "drift", "distinct_1", "distinct_2", "repetition", "ppl_text", "drift_text")
    return {f"{k}_{suffix}": m[k] for k in keys if k in m}  # *_text: a chat run's raw-text costs


def _quiet(*args, **kwargs) -> None:
    pass


def rate_folder(folder: RunFolder) -> Path:
    """Where a --rate run writes its stage and round checkpoints (rate_checkpoint.py)."""
    return folder.path("checkpoints") / "rate"


@contextlib.contextmanager
def says_where_to_resume(saved: RateCheckpoint | None):
    """Ctrl-C in a --rate run: say which boundary the same command plus --resume goes on from (a round's
    training keeps no step checkpoint of its own)."""
    try:
        yield
    except KeyboardInterrupt:
        if saved is None or saved.boundary is None:
            raise
        raise KeyboardInterrupt(
            f"interrupted; checkpoint {saved.folder} (after {saved.boundary}); "
            "continue with the same command plus --resume"
        ) from None


def check_resumable(folder: RunFolder, cfg: TiltConfig) -> tuple[int, RateCheckpoint | None]:
    """The step of the newest checkpoint of the unfinished run (0 for a --rate run) and, for a --rate run,
    its newest stage or round checkpoint; one-line errors if there is none, if it cannot be read, or if the
    run was started with other settings."""
    found = checkpoint.checkpoints(folder.path("checkpoints"))
    if cfg.rate and not (rate_folder(folder) / STATE).is_file():
        raise UsageError(
            f"nothing to resume: {folder.tmp} holds no checkpoint (a --rate run writes one after measuring "
            "before training, so it was stopped before that)"
        )
    if not cfg.rate and not found:
        raise UsageError(
            f"nothing to resume: {folder.tmp} holds no checkpoint (it needs --save-every, or a Ctrl-C during training)"
        )
    saved = yaml.safe_load(folder.path("config.yaml").read_text()) or {}
    now = to_flat(cfg)
    changed = [
        k
        for k in sorted(set(saved) | set(now))
        if k not in RESUME_FREE and saved.get(k, "<unset>") != now.get(k, "<unset>")
    ]
    if changed:
        k = changed[0]
        raise UsageError(
            f"--resume with other settings than the run's: {k.replace('_', '-')} was "
            f"{saved.get(k, '<unset>')!r}, now {now.get(k, '<unset>')!r} (run the same command plus --resume)"
        )
    if cfg.rate:
        return 0, RateCheckpoint.load(rate_folder(folder))
    return found[-1][0], None


@dataclass
class Setup:
    """What a run trains and measures: the model, the target, and the placement that trains."""

    tokenizer: object
    tokens: object  # the Target: a TokenSet, or a PhraseSet
    placement: placements.Placement  # head rows, the whole model, or LoRA
    counts: dict  # total_params, trainable_params

    @property
    def model(self):
        return self.placement.model

    @property
    def reference(self):  # the starting model: tilt-distill's target, drift's reference
        return self.placement.reference

    @property
    def head(self) -> head_rows.HeadRowsTilt | None:  # the head-rows fit
        return self.placement.fit if self.placement.head_only else None


@dataclass
class Start:
    """The measurements before training (main process only), and the bias b the training starts from."""

    bias: float
    windows: object = None  # held-out (W, T) windows, or a chat run's ReplyWindows
    text_windows: object = None  # a chat run's raw-text windows, measured beside its chat exchanges
    known: tuple = (None, None)  # the start model's metrics.TiltCosts on windows and text_windows (token sets)
    eval_pool: importance.Pool | None = None  # the draws of R before and of the baseline, for importance weights
    before: dict | None = None
    samples_before: object = None
    calibration: object = None  # calibrate()'s result with --rate
    ban: dict | None = None  # --ban: the b chosen and the decode-time perplexities it was chosen on
    baseline: dict | None = None  # tilt-distill: the decode-time tilt at the calibrated b (--ban: the trained b)
    baseline_samples: object = None  # its samples (not checkpointed)
    baseline_bias: float | None = None  # the b it was measured at
    ppl_at: object = None  # --ban: b -> the decode-time tilt's held-out perplexity (what the ban's b was chosen on)


def set_up(cfg: TiltConfig, say, device="cpu") -> Setup:
    """Load the model and the target, build the placement (LoRA's adapter, or the head-rows fit), and say
    what trains."""
    model, tokenizer, tokens = load_with_set(cfg.model, cfg.toward, say)
    # On the run's device before anything measures: a model left on the CPU would sample, calibrate and fit
    # its head rows there while --device cuda promised a GPU (train() alone moved it).
    model = model.to(device)
    if cfg.eval.chat:
        check_template(tokenizer)  # before the run folder is started
    if cfg.head_rows():
        placement = placements.head_rows_placement(model, tokenizer, tokens, cfg)
    elif cfg.lora.lora:
        placement = placements.lora(model, tokenizer, tokens, placements.Objective.of(cfg), cfg.train, cfg.lora)
    else:
        placement = placements.whole_model(model, tokenizer, tokens, placements.Objective.of(cfg), cfg.train)
    run = Setup(tokenizer, tokens, placement, lora.param_counts(placement.model))
    if run.head:
        run.counts["trainable_params"] = run.head.original.numel()  # the set's rows; the rest is frozen
    say(
        f"training {run.counts['trainable_params']:,} of {run.counts['total_params']:,} parameters"
        + (f" (LoRA r={cfg.lora.lora_r})" if cfg.lora.lora else "")
        + (f" ({run.head.trained_rows:,} rows of the untied output head)" if run.head else "")
    )
    return run


def measure_start(
    cfg: TiltConfig,
    run: Setup,
    eval_text: str,
    folder: RunFolder,
    resume_step: int,
    clock: Stages,
    say,
    saved: RateCheckpoint | None = None,
) -> Start:
    """Main process: start the run folder, measure before training, calibrate b to --rate and measure the
    decode-time baseline at that b. With --rate, `saved` checkpoints each of these (rate_checkpoint.py) and,
    resumed, holds those already done: they are taken from it, not measured again."""
    model, tokenizer, target, bf16 = run.model, run.tokenizer, run.tokens, cfg.train.bf16
    start = Start(cfg.bias, *held_out(model, tokenizer, cfg.eval, eval_text, bf16, say))
    folder.start()
    if cfg.resume and cfg.rate:
        say(f"resuming {folder.tmp} after {saved.boundary}")
        keep_records_until(folder.path("metrics.jsonl"), len((saved.get("rounds") or {}).get("tried", [])), "round")
    elif cfg.resume:
        say(f"resuming {folder.tmp} after step {resume_step}")
        keep_records_until(folder.path("metrics.jsonl"), resume_step)
    else:
        folder.write_yaml("config.yaml", to_flat(cfg))  # before the first checkpoint: --resume compares with it
    clock.mark("load")
    if target.mask is not None:  # one pass gives the costs of every decode-time tilt of this model
        start.known = tuple(
            None if w is None else tilt_costs(model, w, target, bf16=bf16) for w in (start.windows, start.text_windows)
        )
    # tilt-distill's matched decode-time tilt reads R at other b off these draws and the baseline's
    weigh = cfg.objective == "tilt-distill" and importance.weighable(target, cfg.eval)
    if saved is not None and saved.get("before") is not None:
        start.before, start.samples_before = saved.get("before"), saved.get("samples_before")
        say("R and costs before training: from the checkpoint")
    else:
        say("measuring R and costs before training ...")
        start.before, start.samples_before = measure(
            model,
            tokenizer,
            target,
            cfg.eval,
            start.windows,
            bf16=bf16,
            text_windows=start.text_windows,
            known=start.known,
            score=weigh,
            per_window=True,  # for rho's interval
            own=cfg.hard_ban,  # for the comparison with a hard ban (hard_ban_comparison)
        )
        if saved is not None:
            saved.save("measure_before", before=start.before, samples_before=start.samples_before)
    clock.mark("measure_before")
    if saved is not None and saved.get("calibration") is not None:
        start.calibration = saved.get("calibration")
        start.bias = start.calibration.bias
        say(f"b = {start.bias:.3f} from the checkpoint's calibration")
    elif cfg.rate:  # on the probe seeds, like the rate rounds: the eval seeds only measure
        say(f"calibrating the decode-time bias to R = {cfg.rate} (probe seeds) ...")
        start.calibration = calibrate(
            model,
            tokenizer,
            target,
            cfg.rate,
            cfg.eval.probe(),
            start.windows,
            bf16=bf16,
            echo=say,
            log_mass=None if start.known[0] is None else start.known[0].log_mass,
        )
        start.bias = start.calibration.bias
        how = "estimated by importance weights" if "ess" in start.calibration.rate else "measured"
        say(f"b = {start.bias:.3f} gives decode-time R = {fmt_rate(start.calibration.rate)} on the probe seeds ({how})")
        folder.write_yaml("config.yaml", {**to_flat(cfg), "calibrated_bias": start.bias})
        saved.save("calibrate", calibration=start.calibration)
        clock.mark("calibrate")
    elif cfg.ban:
        budget = cfg.fluency_budget
        say(
            f"choosing the ban's b: the most negative whose held-out perplexity is within {budget:.0%} of the model's ..."
        )
        if target.mask is None:  # a phrase list: one pass, then each b from the entries' rows alone
            ppl_at = phrase_perplexity_at(model, target, start.windows, bf16)
        else:  # a token set: its one-pass costs (start.known) give every b
            ppl_at = lambda b: decode_costs(model, target, start.windows, b, bf16, known=start.known)["ppl"]  # noqa: E731
        start.ppl_at = ppl_at  # the budget rounds read other b off it
        start.bias, points = ban_bias(ppl_at, start.before["ppl"], budget, echo=say)
        start.ban = {"bias": start.bias, "fluency_budget": budget, "points": points}
        say(f"b = {start.bias:.3f}")
        folder.write_yaml("config.yaml", {**to_flat(cfg), "calibrated_bias": start.bias})
        clock.mark("calibrate")
    if saved is not None and saved.get("baseline") is not None:
        start.baseline, start.eval_pool = saved.get("baseline"), saved.get("eval_pool")
        start.baseline_bias = start.bias
        say(f"the decode-time baseline at b = {start.bias:.3f}: from the checkpoint")
    elif cfg.objective == "tilt-distill" and not cfg.ban:  # a ban's baseline sits at the trained b: after training
        measure_baseline(cfg, run, start, model, start.bias, say, weigh)
        if saved is not None:
            saved.save("baseline", baseline=start.baseline, eval_pool=start.eval_pool)
        clock.mark("baseline")
    if saved is not None and saved.boundary in ("measure_before", "calibrate", "baseline"):
        saved.restore_rng()  # where the checkpoint was written: what follows draws as it would have
    return start


def measure_baseline(cfg: TiltConfig, run: Setup, start: Start, model, bias: float, say, weigh: bool) -> None:
    """The decode-time baseline: `model` (the reference) sampled and scored with the target's tilt at b, into
    start.baseline (and its samples and b); with `weigh`, the draws of R before and of the baseline become the
    importance-weight pool that matched_decode reads other b off. With --ban, the costs carry their per-window
    sums (matched_decode), and with --hard-ban the samples their own costs (hard_ban_comparison)."""
    say(f"measuring the decode-time baseline at b = {bias:.3f} ...")
    start.baseline, start.baseline_samples = measure(
        model,
        run.tokenizer,
        run.tokens,
        cfg.eval,
        start.windows,
        bias=bias,
        bf16=cfg.train.bf16,
        text_windows=start.text_windows,
        known=start.known,
        score=weigh,
        own=cfg.hard_ban,
        per_window=cfg.ban,  # a ban's R after training is about the baseline's: matched_decode takes these costs
    )
    start.baseline_bias = bias
    if weigh:  # scored by the sampler: no forward
        start.eval_pool = importance.Pool(
            [
                importance.draw_of(model, run.tokenizer, got, run.tokens, b, rates_of(run.tokens, got), cfg.train.bf16)
                for b, got in ((0.0, start.samples_before), (bias, start.baseline_samples))
            ]
        )


def matched_decode(cfg: TiltConfig, run: Setup, start: Start, after: dict, trained_bias: float, say) -> dict:
    """The decode-time tilt at the trained model's R, the cost to beat: its b read off the decode-time R(b)
    curve on the eval seeds (the seeds of the tuned R) at b = 0, the calibrated b and, when the rate
    rounds moved it, the trained b, with up to two more points where those do not bracket the tuned R
    (calibrate.match_bias); and its held-out perplexity and drift. A point at another b is estimated by
    importance weights from the draws at b = 0 and the calibrated b when they hold half a draw of
    effective samples there (curve points with "ess"), and sampled otherwise."""
    bf16 = cfg.train.bf16
    estimated = {}  # b -> effective samples, for the points read off the eval seeds' draws

    def rate_at(b: float) -> float:
        if start.eval_pool is not None:
            estimate = start.eval_pool.at_bias(b)
            if start.eval_pool.enough(estimate):
                say(
                    f"decode-time R at b = {b:.3f}: {estimate['mean']:.3f}, estimated by importance weights from the "
                    f"draws at b = 0 and {start.bias:.3f} ({estimate['ess']:.0f} effective samples)"
                )
                estimated[b] = estimate["ess"]
                return estimate["mean"]
        say(f"measuring the decode-time R at b = {b:.3f} ...")
        plan = after["rate"].get("plan")  # the tuned R's samples: the same prompts, seeds and count
        return measure_rate(run.reference, run.tokenizer, run.tokens, cfg.eval, bias=b, bf16=bf16, plan=plan)[0]["mean"]

    curve = [(0.0, start.before["rate"]["mean"]), (start.baseline_bias, start.baseline["rate"]["mean"])]
    if trained_bias != start.baseline_bias:
        curve.append((trained_bias, rate_at(trained_bias)))
    b_matched, curve = match_bias(curve, after["rate"]["mean"], after["rate"]["n"], rate_at)
    if b_matched == start.baseline_bias and "per_window" in start.baseline:  # the baseline's costs, at this very b
        costs = {k: v for k, v in start.baseline.items() if k.startswith(("ppl", "drift", "per_window"))}
    else:
        costs = decode_costs(
            run.reference, run.tokens, start.windows, b_matched, bf16, start.text_windows, start.known, per_window=True
        )
    return {
        "bias": b_matched,
        "curve": [{"bias": b, "rate": r, **({"ess": estimated[b]} if b in estimated else {})} for b, r in curve],
        **costs,
    }


def head_perplexity(model, windows, bf16: bool = False):
    """-> f() = the held-out perplexity of `model` on windows (ReplyWindows or plain), for a model whose body is
    frozen and whose output head changes between calls (head rows' budget rounds): the body runs once, here,
    and each call runs the head alone (perplexity_and_drift on the head inputs)."""
    ids_all, _ = split_windows(windows)
    h = head_rows.run_to_head(model, list(ids_all.split(8)), bf16).view(*ids_all.shape, -1)  # (W, T, d)
    return lambda: perplexity_and_drift(model, model, windows, head_inputs=h)[0]


def hard_ban_comparison(cfg: TiltConfig, run: Setup, start: Start, after: dict, samples_after, say) -> tuple:
    """--ban's cost against a hard ban at decode time (b = -inf: no entry can be completed), on each model's
    own samples, since a hard ban's perplexity of the reference's text is infinite wherever that text uses
    an entry: the reference's perplexity of the samples and the mean KL(sampled || reference) per step
    (sampling.OwnScores), for the model before, the decode-time tilt at b, the tuned model and the hard ban,
    with intervals (intervals.own_cost_comparison). The hard ban samples the tuned R's prompts and seeds.
    -> (summary's "hard_ban", the hard ban's samples). The tuned side needs a model that differs from the reference only
    in its head (head rows); for another placement it is left out, and so are the ratios."""
    say("sampling the hard ban at decode time (b = -inf), for the cost comparison ...")
    plan = after["rate"].get("plan")
    rate, samples = measure_rate(
        run.reference, run.tokenizer, run.tokens, cfg.eval, bias=-math.inf, bf16=cfg.train.bf16, plan=plan, own=True
    )
    sides = {"base": start.samples_before, "decode": start.baseline_samples, "hard_ban": samples}
    rates = {"base": start.before["rate"], "decode": start.baseline["rate"], "hard_ban": rate}
    if samples_after.own is not None:
        sides["tuned"], rates["tuned"] = samples_after, after["rate"]
    costs = own_cost_comparison(
        {k: own_costs(v) for k, v in sides.items()}, "tuned", ("decode", "hard_ban") if "tuned" in sides else ()
    )
    for name, side in sides.items():
        costs[name].update(rate=rates[name], **sample_costs(side.replies()))
    return costs, samples


def matched_decode_at(run: Setup, start: Start, matched: dict, n: int):
    """R -> the decode-time tilt's costs (with their WindowCosts) at the b that R reads off the matched
    curve, as matched_decode reads b_matched off it; for rho's interval to resample the tuned R. None for a
    target without one-pass costs (a phrase set): each R would cost a pass of the model."""
    if start.known[0] is None or (start.text_windows is not None and start.known[1] is None):
        return None
    points = [(p["bias"], p["rate"]) for p in matched["curve"]]
    return lambda rate: decode_costs(
        run.reference,
        run.tokens,
        start.windows,
        bias_at_rate(points, rate, n),
        text_windows=start.text_windows,
        known=start.known,
        per_window=True,
    )


def run(cfg: TiltConfig, *, echo=print, progress: bool = True) -> dict:
    """Do the whole job and return summary.json's content. Raises ValueError on bad input.

    Under torchrun every process trains its share of each global batch; only the main process
    loads the eval text, measures, prints and writes the run folder (the others wait for it).
    """
    cfg.check()
    cfg = cfg.resolved()  # rate, lr, precision, prompts: the values config.yaml holds
    state = process_state(cfg.train.device)
    main = state.is_main_process
    say = echo if main else _quiet
    folder = RunFolder(cfg.out, cfg.overwrite, resume=cfg.resume)  # refuse a used folder before the slow part
    resume_step, saved = check_resumable(folder, cfg) if cfg.resume else (0, None)
    if cfg.rate and saved is None:
        saved = RateCheckpoint(rate_folder(folder))  # written after each stage and round, on the main process
    eval_text = held_out_text(cfg.eval) if main else None  # and a missing eval file
    started, clock = time.time(), Stages(resolve_device(cfg.train.device))  # seconds and memory per stage
    run = set_up(cfg, say, state.device)
    with says_where_to_resume(saved):
        start = measure_start(cfg, run, eval_text, folder, resume_step, clock, say, saved) if main else Start(cfg.bias)
        bias = on_main(lambda: start.bias, state)

        train_started = time.time()
        pool = start.calibration.pool if start.calibration is not None else None  # the probe seeds' draws
        budget = None
        if cfg.ban and main and state.num_processes == 1 and run.head is not None:  # the budget rounds
            budget = (head_perplexity(run.model, start.windows, cfg.train.bf16), start.ppl_at, start.before["ppl"])
        fit, history = train_stage(
            cfg, run, bias, folder, progress and main, say, pool, saved, save=main, budget=budget
        )
    trained_bias = fit.bias if fit is not None else bias
    train_seconds = time.time() - train_started
    clock.mark("train")  # with --rate: every round, its contexts and its probe
    if cfg.ban and main:  # the decode-time tilt at the b the model was trained toward
        measure_baseline(cfg, run, start, run.reference, trained_bias, say, importance.weighable(run.tokens, cfg.eval))
        clock.mark("baseline")
    if not main:
        state.wait_for_everyone()
        return {}

    say("measuring R and costs after training ...")
    after, samples_after = measure(
        run.model,
        run.tokenizer,
        run.tokens,
        cfg.eval,
        start.windows,
        reference=run.reference,
        bf16=cfg.train.bf16,
        text_windows=start.text_windows,
        known=start.known,
        head_only=run.head is not None,  # head-rows: the body is the start model's, whose head inputs are known
        per_window=True,  # for rho's interval
        own=cfg.hard_ban and run.head is not None,
        reference_head=run.reference.get_output_embeddings() if cfg.hard_ban and run.head is not None else None,
    )
    clock.mark("measure_after")
    matched, hard_ban, ban_samples = None, None, None
    if cfg.objective == "tilt-distill":
        matched = matched_decode(cfg, run, start, after, trained_bias, say)
        clock.mark("matched_decode")
    if cfg.hard_ban:
        hard_ban, ban_samples = hard_ban_comparison(cfg, run, start, after, samples_after, say)
        clock.mark("hard_ban")
    run.placement.reference = None  # free the copy before saving
    model = run.model
    if cfg.lora.lora:
        model = lora.save_adapter_and_merged(model, run.tokenizer, folder.tmp)  # adapter/ and model/ (merged)
    else:
        save_model(model, run.tokenizer, folder.path("model"))
    clock.mark("save")

    summary = tilt_summary(cfg, run, start, after, samples_after, history, state)
    summary.update(
        {
            "train_seconds": round(train_seconds, 1),
            "seconds": round(time.time() - started, 1),
            "stage_seconds": clock.seconds,  # load, measure_before, calibrate, baseline, train, measure_after, ...
            "peak_rss_mb": clock.peak(),  # the whole run
            # training alone (the optimizer, activations, the reference); None where the peak cannot be reset
            "train_peak_rss_mb": clock.peak_rss_mb["train"] if clock.resets else None,
            "stage_peak_rss_mb": clock.peak_rss_mb,  # per stage, as stage_seconds
            **({"stage_peak_device_mb": clock.peak_device_mb} if clock.peak_device_mb else {}),
            "resumed_after_step": resume_step or None,
            **({"resumed_after_stage": saved.resumed_from} if cfg.rate else {}),
            **({"checkpoint_mb": round(saved.size_mb(), 2)} if cfg.rate else {}),  # the newest, as it was
        }
    )
    if cfg.objective == "tilt-distill":
        rates = rates_of(run.tokens, samples_after)  # the tuned R's samples, which rho's interval resamples
        decode_at = matched_decode_at(run, start, matched, after["rate"]["n"])
        summary.update(distill_summary(cfg, start, after, matched, fit, trained_bias, rates, decode_at))
    if hard_ban is not None:
        summary["hard_ban"] = hard_ban
    if target_summary := run.tokens.summary(run.tokenizer, trained_bias):  # a phrase set's entries and collateral
        summary["phrases"] = target_summary
        summary["phrases"]["per_entry"] = run.tokens.entry_report(
            run.tokenizer, start.samples_before.texts, samples_after.texts, trained_bias
        )
    out = write_run(folder, cfg, summary, history, start, samples_after, ban_samples)
    state.wait_for_everyone()
    echo(side_by_side(start.samples_before, samples_after))
    echo(summary_table(summary))
    if summary.get("matched_decode"):
        echo(excess_cost_note(summary))
    if note := hard_ban_note(summary):
        echo(note)
    echo("seconds: " + ", ".join(f"{k} {v:g}" for k, v in summary["stage_seconds"].items()))
    echo("peak MB: " + ", ".join(f"{k} {v:.0f}" for k, v in summary["stage_peak_rss_mb"].items()))
    echo(f"run folder: {out}")
    return summary


def run_tilt(cfg: TiltConfig, progress: bool = True, echo=print) -> dict:
    """The API's name for run()."""
    return run(cfg, echo=echo, progress=progress)


def train_stage(
    cfg: TiltConfig,
    run: Setup,
    bias: float,
    folder: RunFolder,
    progress: bool,
    say,
    pool=None,
    saved: RateCheckpoint | None = None,
    save: bool = True,
    budget=None,
):
    """Train as the config says -> (RateFit, BudgetFit or None, history): toward R* with the rate rounds, within
    --ban's fluency budget with the budget rounds (`budget`: (the trained model's held-out perplexity, the
    decode-time tilt's at b, the model's own); head rows on one process), or the placement once at b.
    metrics.jsonl gets every record (with its round under --rate). With --rate, `saved` checkpoints every round
    (when `save`: the main process), and resumed, goes on after its last."""
    placement, head = run.placement, run.head
    resumed = rounds_state(saved, placement.model)
    round_no = len(resumed.tried) + 1 if resumed else 1  # with --rate: the round that metrics.jsonl records belong to

    def evaluate(step: int) -> dict:  # the main process only
        rate, _ = measure_rate(
            placement.model,
            run.tokenizer,
            run.tokens,
            cfg.eval,
            cfg.eval.during_samples_per_prompt,
            bf16=cfg.train.bf16,
        )
        return {"rate": rate["mean"], "rate_ci_low": rate["ci_low"], "rate_ci_high": rate["ci_high"]}

    def log(record: dict) -> None:
        folder.append_jsonl("metrics.jsonl", {**record, "round": round_no} if cfg.rate else record)

    def after_round(rounds, kept_changed: bool) -> None:
        nonlocal round_no
        round_no = len(rounds.tried) + 1
        if saved is None or not save:
            return
        history, weights = rounds.value
        record = {"tried": rounds.tried, "best": rounds.best, "history": history, "bias": rounds.bias}
        contexts = {"head_contexts": head.contexts_state()} if head and saved.get("head_contexts") is None else {}
        saved.save(
            f"round-{len(rounds.tried)}",
            weights if kept_changed else None,
            rounds={**record, "done": rounds.done},
            **contexts,
        )

    placement.log, placement.progress = log, progress
    if not head:
        placement.evaluate = evaluate
    if cfg.rate:
        say(f"training toward R = {cfg.rate}, correcting b from the trained model's R (<= {cfg.rate_rounds} rounds)")
        if resumed is not None:
            say(f"rounds 1-{len(resumed.tried)} from the checkpoint")
            if head:  # the contexts of the first round's b (sampled again if the checkpoint lacks them)
                head.prepare(resumed.tried[0][0], saved.get("head_contexts"))
            saved.restore_rng()
        return train_to_rate(
            placement,
            run.tokenizer,
            run.tokens,
            cfg,
            bias,
            pool=pool,
            echo=say,
            resumed=resumed,
            after_round=after_round,
        )
    if budget is not None and head:  # each round fits the rows afresh on the same contexts: seconds
        tuned_ppl, ppl_at, base = budget
        say(f"training at b = {bias:.3f}, moving b toward 0 while the trained model is over the fluency budget")
        histories = []
        fit = fit_budget_bias(
            lambda b: histories.append(placement.train(b)),
            tuned_ppl,
            ppl_at,
            base,
            cfg.fluency_budget,
            bias,
            cfg.rate_rounds,
            echo=say,
        )
        if not fit.within:
            say(f"tokentilt: warning: the trained model is over the fluency budget after {len(fit.rounds)} rounds")
        return fit, histories[-1]
    if not head:  # a single training keeps step checkpoints in the run folder (--save-every, --resume)
        placement.run_dir, placement.resume = folder.tmp, cfg.resume
    return None, placement.train(bias)


def rounds_state(saved: RateCheckpoint | None, model) -> RoundsState | None:
    """The rate rounds of a resumed --rate run, as calibrate.fit_trained_bias goes on from them; a one-line
    error when the kept round's weights do not fit the model."""
    if saved is None or saved.get("rounds") is None:
        return None
    rounds, weights = saved.get("rounds"), saved.weights
    expected = checkpoint.trainable(model)
    if set(weights) != set(expected) or any(weights[k].shape != v.shape for k, v in expected.items()):
        raise CheckpointError(f"checkpoint {saved.folder} does not match this model's trainable parameters")
    tried = [(b, r) for b, r in rounds["tried"]]
    return RoundsState(tried, rounds["best"], (rounds["history"], weights), rounds["bias"], rounds["done"])


def tilt_summary(
    cfg: TiltConfig, run: Setup, start: Start, after: dict, samples_after, history: list[dict], state
) -> dict:
    """summary.json's fields that every run has: the set, the training, R and the costs before and after."""
    tokens, head, before = run.tokens, run.head, start.before
    return {
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
        "rate_before": before["rate"],
        "rate_after": after["rate"],
        # the expected count (measurement.evaluate.expected_rates_of), beside R; None for a phrase set
        "rate_expected_before": before.get("rate_expected"),
        "rate_expected_after": after.get("rate_expected"),
        **flat_costs(before, "before"),
        **flat_costs(after, "after"),
        "eval_text": ("chat:held-out replies" if cfg.eval.chat else cfg.eval.eval_text or "plays:test"),
        "eval_tokens": int(start.windows.numel()),
        "chat": {
            "system": cfg.eval.system or None,
            "prompts": len(cfg.eval.prompts),
            "reply_tokens_before": int(start.samples_before.lengths.sum()),
            "reply_tokens_after": int(samples_after.lengths.sum()),
            "text_eval": cfg.eval.eval_text or "plays:test",
        }
        if cfg.eval.chat
        else None,
        "samples": len(samples_after.texts),
        "new_tokens": cfg.eval.new_tokens,
        "device": resolve_device(cfg.train.device),
        "precision": cfg.train.precision,
        "processes": state.num_processes,
        "global_batch": cfg.train.global_batch(state.num_processes),
        "placement": "head-rows" if head else ("lora" if cfg.lora.lora else "model"),
        "head": {
            "trained_rows": head.trained_rows,
            "via_complement": head.sign < 0,
            "contexts": cfg.contexts,
            "context_positions": len(head.inputs.h),
            "fit": head.fit,
            "steps": len(history),
            "lr": cfg.head_lr if head.fit == "kl" else None,
            **{k: history[-1][k] for k in ("offset_mean", "offset_std") if k in history[-1]},
        }
        if head
        else None,
        "lora": {
            "r": cfg.lora.lora_r,
            "alpha": cfg.lora.lora_alpha,
            "dropout": cfg.lora.lora_dropout,
            "targets": cfg.lora.lora_targets,
        }
        if cfg.lora.lora
        else None,
        **run.counts,
        "warnings": collapse_warnings(before["ppl"], after["ppl"], tokens.vocab_size),
    }


def distill_summary(
    cfg: TiltConfig, start: Start, after: dict, matched: dict, fit, trained_bias: float, rates=None, decode_at=None
) -> dict:
    """tilt-distill's summary fields: b, the calibration and its rounds, the baseline, and rho with its
    interval (rates, decode_at: see evaluate.excess_cost)."""
    out = {"bias": trained_bias, "rate_target": cfg.rate or None, **({"ban": start.ban} if start.ban else {})}
    if start.calibration is not None:  # the decode-time (b, R) points it measured, on the probe seeds
        out["calibration"] = {
            "eval_seed": cfg.eval.probe().eval_seed,
            "proxy_bias": start.calibration.proxy_bias,
            "points": [{"bias": b, "rate": r} for b, r in start.calibration.history],
            "method": "importance weights" if "ess" in start.calibration.rate else "bisection",
            "rate": start.calibration.rate,
        }
    if fit is not None:
        out["calibrated_bias"] = start.bias
        out["bias_rounds"] = fit.round_records()
    out["baseline"] = {"objective": "decode-bias", "bias": start.baseline_bias, **public(start.baseline)}
    out["matched_decode"] = public(matched)
    # rho's three perplexities under the names it is defined with, all on the same held-out windows
    out.update(ppl_base=start.before["ppl"], ppl_decode_matched=matched["ppl"], ppl_tuned=after["ppl"])
    out.update(excess_cost(start.before, after, matched, rates, decode_at))
    return out


def write_run(
    folder: RunFolder, cfg: TiltConfig, summary: dict, history: list[dict], start: Start, samples_after, ban=None
) -> Path:
    """Plots, samples.jsonl, report.md and summary.json into the run folder, then finish it -> its path.
    ban: the hard ban's samples (--ban), whose replies report.md sets beside the others'."""
    for warning in summary["warnings"]:
        print(f"tokentilt: warning: {warning}", file=sys.stderr)
    rate_points = [(0, summary["rate_before"])] + [
        (r["step"], {"mean": r["rate"], "ci_low": r["rate_ci_low"], "ci_high": r["rate_ci_high"]})
        for r in history
        if "rate" in r and r["step"] != history[-1]["step"]
    ]
    rate_points.append((history[-1]["step"], summary["rate_after"]))  # the full measurement replaces the light one
    steps = [r["step"] for r in history]
    how = (
        (f"head rows, {cfg.head_fit} fit" + (f", lr {cfg.head_lr:g}" if cfg.head_fit == "kl" else ""))
        if summary["head"]
        else f"{cfg.positions} positions, lr {cfg.train.lr:g}"
    )
    plot_series(
        folder.path("loss.png"),
        {cfg.objective: (steps, [r["loss"] for r in history])},
        f"{cfg.objective} loss ({how})",
        "loss",
        logy=True,
    )
    plot_rate(folder.path("rate.png"), rate_points, f"R for {cfg.toward!r} over training")
    write_samples(folder.path("samples.jsonl"), start.samples_before, samples_after)
    folder.path("report.md").write_text(tilt_report(cfg, summary, start.samples_before, samples_after, ban))
    folder.write_json("summary.json", summary)
    shutil.rmtree(folder.path("checkpoints"), ignore_errors=True)  # a finished run needs none
    return folder.finish()
