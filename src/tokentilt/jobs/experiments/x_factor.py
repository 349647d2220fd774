"""Experiment "x-factor": the course's "Maximize the X factor" on the bundled pretrained model.

Logits (B=4, T=64, V) from random token inputs are flattened to (256, V); the target puts weight
alpha on tokens containing "x" and beta on the rest (objective "kl-alpha-beta", all positions);
Adam. The same starting weights are trained once per learning rate, side by side, so that one
run shows both outcomes: a small lr barely moves R and keeps the text fluent, a large lr drives R
to ~1 and the text to gibberish.
"""

from __future__ import annotations

import dataclasses
import time

from tokentilt.jobs.experiments.x_factor_config import XFactorConfig
from tokentilt.measurement.evaluate import measure_rate
from tokentilt.objectives.losses import OBJECTIVES, ObjectiveContext
from tokentilt.runs.folder import RunFolder
from tokentilt.runs.report import fmt_rate, markdown_table, plot_series, samples_section
from tokentilt.training.loop import train
from tokentilt.training.placements import batch_source
from tokentilt.training.rate import load_with_set


def run(cfg: XFactorConfig, *, echo=print, progress: bool = True) -> dict:
    cfg.check()
    cfg = cfg.resolved()  # chat's default prompts
    folder = RunFolder(cfg.out, cfg.overwrite)  # refuse a used folder before loading the model
    started = time.time()
    model, tokenizer, tokens = load_with_set(cfg.model, cfg.toward, echo)
    folder.start()
    folder.write_yaml("config.yaml", dataclasses.asdict(cfg))
    start_state = {k: v.clone() for k, v in model.state_dict().items()}

    echo("measuring R before training ...")
    rate_before, samples_before = measure_rate(model, tokenizer, tokens, cfg.eval, bf16=cfg.bf16)
    runs, curves, samples_after = [], {}, {}
    for lr in cfg.lrs:
        echo(f"training at lr {lr:g} ...")
        model.load_state_dict(start_state)
        record, curves[f"lr {lr:g}"], samples_after[lr] = train_at(model, tokenizer, tokens, cfg, lr, folder, progress)
        record["rate_curve"] = [[0, rate_before["mean"]]] + record["rate_curve"]
        runs.append(record)
        echo(
            f"lr {lr:g}: R {fmt_rate(rate_before)} -> {fmt_rate(record['rate_after'])}, loss "
            f"{record['loss_start']:.3f} -> {record['final_loss']:.4f}"
        )
    del start_state

    plot_series(
        folder.path("loss.png"),
        curves,
        "x-factor: KL to the alpha/beta target (all positions)",
        "loss (nats)",
        logy=True,
    )
    plot_series(
        folder.path("rate.png"),
        {f"lr {r['lr']:g}": ([p[0] for p in r["rate_curve"]], [p[1] for p in r["rate_curve"]]) for r in runs},
        "x-factor: R over training",
        "R = share of generated tokens containing x",
    )
    summary = {
        "model": cfg.model,
        "target_size": tokens.size,
        "vocab_size": tokens.vocab_size,
        "target_share": tokens.share,
        "epochs": cfg.epochs,
        "rate_before": rate_before,
        "runs": runs,
        "seconds": round(time.time() - started, 1),
    }
    folder.path("report.md").write_text(report(cfg, summary, samples_before, samples_after))
    folder.write_json("summary.json", summary)
    out = folder.finish()
    echo(f"run folder: {out}")
    return summary


def train_at(model, tokenizer, tokens, cfg: XFactorConfig, lr: float, folder: RunFolder, progress: bool):
    """One learning rate's run from the model's current weights -> (its record for summary.json, its loss
    curve (steps, losses), its samples after training)."""
    train_cfg = cfg.train_config(lr)
    ctx = ObjectiveContext(mask=tokens.mask, positions="all", alpha=cfg.alpha, beta=cfg.beta)

    def evaluate(step: int) -> dict:
        rate, _ = measure_rate(model, tokenizer, tokens, cfg.eval, cfg.eval.during_samples_per_prompt, bf16=cfg.bf16)
        return {"rate": rate["mean"]}

    history = train(
        model,
        OBJECTIVES["kl-alpha-beta"],
        ctx,
        batch_source("random", tokenizer, tokens.vocab_size, train_cfg),
        train_cfg,
        evaluate=evaluate,
        log=lambda r: folder.append_jsonl("metrics.jsonl", {"run_lr": lr, **r}),
        progress=progress,
    )
    rate_after, samples_after = measure_rate(model, tokenizer, tokens, cfg.eval, bf16=cfg.bf16)
    record = {
        "lr": lr,
        "rate_after": rate_after,
        "loss_start": history[0]["loss"],
        "final_loss": history[-1]["loss"],
        "steps": len(history),
        "rate_curve": [[r["step"], r["rate"]] for r in history if "rate" in r][:-1]
        + [[history[-1]["step"], rate_after["mean"]]],  # the point before training is the caller's
    }
    return record, ([r["step"] for r in history], [r["loss"] for r in history]), samples_after


def report(cfg: XFactorConfig, s: dict, before, after: dict) -> str:
    rows = [
        {
            "lr": f"{r['lr']:g}",
            "R before": fmt_rate(s["rate_before"]),
            "R after": fmt_rate(r["rate_after"]),
            "loss start": r["loss_start"],
            "final loss": r["final_loss"],
        }
        for r in s["runs"]
    ]
    parts = [
        f"# x-factor: maximise tokens containing {cfg.toward!r}",
        "",
        f"- model `{cfg.model}`; {s['target_size']} of {s['vocab_size']} tokens in the set "
        f"({100 * s['target_share']:.2f}%)",
        f"- target alpha={cfg.alpha:g} on the set, beta={cfg.beta:g} elsewhere; KL at all positions of "
        f"B={cfg.batch} x T={cfg.seq_len} random tokens; Adam, {cfg.epochs} steps per lr; {s['seconds']:.0f} s in all",
        "- course (GPT-2 Medium, 300 epochs): lr 1e-6 → loss 6 → 2, few X, natural text; "
        "lr 1e-4 → loss 0.001, R ≈ 1, gibberish",
        "",
        markdown_table(rows, ["lr", "R before", "R after", "loss start", "final loss"]),
        "",
        "![loss](loss.png) ![R](rate.png)",
        "",
        samples_section("Samples before", before.prompts, before.texts),
    ]
    parts += [samples_section(f"Samples after lr {lr:g}", a.prompts, a.texts) for lr, a in after.items()]
    return "\n".join(parts)
