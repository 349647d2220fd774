"""The main job: tilt a model toward a token set, measure before and after, write one run folder."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tokentilt import data
from tokentilt.evaluate import EvalConfig, measure_rate
from tokentilt.losses import OBJECTIVES, REFERENCE_OBJECTIVES, TEXT_OBJECTIVES, ObjectiveContext
from tokentilt.models.load import load_model, save_model
from tokentilt.outputs import RunFolder
from tokentilt.report import fmt_rate, markdown_table, plot_rate, plot_series, samples_section
from tokentilt.targets import TokenSet, resolve, token_texts
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
        self.train.check()
        self.eval.check()

    def input_kind(self) -> str:
        if self.inputs != "auto":
            return self.inputs
        return "text" if self.objective in TEXT_OBJECTIVES else "random"


def to_flat(cfg) -> dict:
    """Dataclass -> flat dict (nested sections merged in); the shape of config.yaml."""
    flat = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            flat.update(to_flat(value))
        else:
            flat[f.name] = value
    return flat


def from_flat(cls, values: dict):
    """Flat dict -> dataclass `cls`, routing each key to the (nested) field of that name."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        factory = f.default_factory
        if factory is not dataclasses.MISSING and dataclasses.is_dataclass(factory):
            kwargs[f.name] = from_flat(factory, values)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
    return cls(**kwargs)


def unknown_keys(cls, values: dict) -> list[str]:
    return sorted(set(values) - set(to_flat(cls())))


def resolve_set(spec: str, tokenizer, vocab_size: int) -> TokenSet:
    """Selector -> TokenSet over the model's output vocabulary (padded ids never match)."""
    texts = token_texts(tokenizer)[:vocab_size]
    texts += ["\0"] * (vocab_size - len(texts))
    return resolve(spec, texts)


def batch_source(kind: str, tokenizer, vocab_size: int, cfg: TrainConfig):
    """-> next_batch(generator) giving (B, T) ids: random tokens, or windows of the plays' train split."""
    if kind == "random":
        return lambda g: data.random_tokens(vocab_size, cfg.batch, cfg.seq_len, g)
    tokens = data.tokenize(tokenizer, data.split_text("train"))
    return lambda g: data.text_windows(tokens, cfg.batch, cfg.seq_len, g)


def run_tilt(cfg: TiltConfig, progress: bool = True, echo=print) -> dict:
    """Do the whole job and return summary.json's content. Raises ValueError on bad input."""
    cfg.check()
    folder = RunFolder(cfg.out, cfg.overwrite)  # refuse a used folder before the slow part
    started = time.time()
    echo(f"loading model {cfg.model!r} ...")
    model, tokenizer = load_model(cfg.model)
    vocab_size = model.get_output_embeddings().weight.shape[0]
    tokens = resolve_set(cfg.toward, tokenizer, vocab_size)
    echo(tokens.describe())
    folder.start()
    folder.write_yaml("config.yaml", to_flat(cfg))
    bf16 = cfg.train.bf16

    echo("measuring R before training ...")
    rate_before, samples_before = measure_rate(model, tokenizer, tokens.mask, cfg.eval, bf16=bf16)
    rate_points = [(0, rate_before)]

    def evaluate(step: int) -> dict:
        rate, _ = measure_rate(model, tokenizer, tokens.mask, cfg.eval, cfg.eval.during_samples_per_prompt, bf16=bf16)
        rate_points.append((step, rate))
        return {"rate": rate["mean"], "rate_ci_low": rate["ci_low"], "rate_ci_high": rate["ci_high"]}

    ctx = ObjectiveContext(mask=tokens.mask, positions=cfg.positions, alpha=cfg.alpha, beta=cfg.beta,
                           bias=cfg.bias, ce_weight=cfg.ce_weight)
    reference = frozen_copy(model) if cfg.objective in REFERENCE_OBJECTIVES else None
    next_batch = batch_source(cfg.input_kind(), tokenizer, vocab_size, cfg.train)
    train_started = time.time()
    history = train(model, OBJECTIVES[cfg.objective], ctx, next_batch, cfg.train, reference=reference,
                    evaluate=evaluate, log=lambda r: folder.append_jsonl("metrics.jsonl", r), progress=progress)
    train_seconds = time.time() - train_started
    del reference

    echo("measuring R after training ...")
    rate_after, samples_after = measure_rate(model, tokenizer, tokens.mask, cfg.eval, bf16=bf16)
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
        "samples": len(samples_after.texts),
        "new_tokens": cfg.eval.new_tokens,
        "train_seconds": round(train_seconds, 1),
        "seconds": round(time.time() - started, 1),
    }
    folder.path("report.md").write_text(tilt_report(cfg, summary, samples_before, samples_after))
    folder.write_json("summary.json", summary)
    out = folder.finish()
    echo(summary_table(summary))
    echo(f"run folder: {out}")
    return summary


def summary_table(s: dict) -> str:
    rows = [("R (share of set tokens)", fmt_rate(s["rate_before"]), fmt_rate(s["rate_after"])),
            ("loss", f"{s['loss_start']:.4f}", f"{s['loss_end']:.4f}")]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':{width}}  {'before':>22}  {'after':>22}"]
    lines += [f"{name:{width}}  {b:>22}  {a:>22}" for name, b, a in rows]
    return "\n".join(lines)


def tilt_report(cfg: TiltConfig, s: dict, before, after) -> str:
    table = markdown_table(
        [{"": "R", "before": fmt_rate(s["rate_before"]), "after": fmt_rate(s["rate_after"])},
         {"": "loss", "before": f"{s['loss_start']:.4f}", "after": f"{s['loss_end']:.4f}"}],
        ["", "before", "after"])
    return "\n".join([
        f"# tokentilt run: {cfg.objective} toward {cfg.toward!r}",
        "",
        f"- model: `{cfg.model}`; set: {s['target_size']} of {s['vocab_size']} tokens "
        f"({100 * s['target_share']:.2f}%)",
        f"- {s['steps']} steps of {cfg.train.optimizer} at lr {cfg.train.lr:g}, batch {cfg.train.batch} x "
        f"{cfg.train.seq_len} tokens, {cfg.input_kind()} inputs, {cfg.positions} positions"
        f"{', bf16 autocast' if cfg.train.bf16 else ''}; {s['seconds']:.0f} s in all",
        f"- R over {s['samples']} samples of {s['new_tokens']} tokens, 95% interval over samples",
        "",
        table,
        "",
        "![loss](loss.png) ![R](rate.png)",
        "",
        samples_section("Samples before", before.prompts, before.texts),
        samples_section("Samples after", after.prompts, after.texts),
    ])
