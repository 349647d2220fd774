"""Experiment "like-x": the course's "Train a model to like X" on Model 5.

Random token sequences of length 256 go in; only the final position's prediction enters the loss,
KL(Q || p) with Q uniform over the tokens whose text contains "x" (objective "kl-uniform",
positions "last"). Each epoch is one optimizer step on a fresh random batch. We count X tokens
among 200 generated tokens before and after, and also measure R with an interval over prompts.
"""

from __future__ import annotations

import dataclasses
import math
import time
from types import SimpleNamespace

import torch

from tokentilt.course.gpt import GPT
from tokentilt.course.gpt2_tokenizer import gpt2_tokenizer
from tokentilt.course.pretraining import pretrain_model
from tokentilt.course.pretraining_config import Pretraining
from tokentilt.data import corpus
from tokentilt.jobs.experiments.like_x_config import LikeXConfig
from tokentilt.measurement.evaluate import measure_rate
from tokentilt.measurement.sampling import SampleConfig, sample
from tokentilt.objectives.losses import OBJECTIVES, ObjectiveContext
from tokentilt.runs.folder import RunFolder
from tokentilt.runs.report import fmt_rate, markdown_table, plot_rate, plot_series, samples_section
from tokentilt.targets.tokens import resolve_set
from tokentilt.training.loop import train


class FinalPositionLogits(torch.nn.Module):
    """Model 5 that returns logits for the final position only, (B, 1, V).

    The loss reads nothing else, and the 50257-way head is most of Model 5's compute, so skipping
    it at the other 255 positions makes each step several times cheaper. Same weights, same result.
    """

    def __init__(self, gpt: GPT):
        super().__init__()
        self.gpt = gpt

    def forward(self, input_ids: torch.Tensor):
        t = self.gpt.transformer
        pos = torch.arange(input_ids.size(1), device=input_ids.device)  # (T,)
        x = t.drop(t.wte(input_ids) + t.wpe(pos))  # (B, T, C)
        for block in t.h:
            x, _ = block(x, None, None)  # (B, T, C), causal
        logits = self.gpt.lm_head(t.ln_f(x[:, -1:])).float()  # (B, 1, V)
        return SimpleNamespace(logits=logits)


def count_x(model, tokenizer, mask: torch.Tensor, cfg: LikeXConfig) -> tuple[int, list[str]]:
    """X tokens among cfg.generated multinomial tokens from cfg.prompt, from a fixed seed."""
    n = -(-cfg.generated // cfg.sample_len)  # samples needed
    s = sample(
        model,
        tokenizer,
        [cfg.prompt],
        n,
        SampleConfig(max_new_tokens=cfg.sample_len),
        seed=cfg.sample_seed,
        bf16=cfg.bf16,
    )
    return int(mask[s.tokens.reshape(-1)[: cfg.generated]].sum()), s.texts


def run(cfg: LikeXConfig, *, echo=print, progress: bool = True) -> dict:
    cfg.check()
    cfg = cfg.resolved()  # chat's default prompts
    folder = RunFolder(cfg.out, cfg.overwrite)  # refuse a used folder before the slow part
    started = time.time()
    model = start_model(cfg, folder, progress, echo)
    tokenizer = gpt2_tokenizer()
    vocab_size = model.config.vocab_size
    tokens = resolve_set(cfg.toward, tokenizer, vocab_size)
    echo(tokens.describe())

    x_before, text_before = count_x(model, tokenizer, tokens.mask, cfg)
    rate_before, samples_before = measure_rate(model, tokenizer, tokens, cfg.eval, bf16=cfg.bf16)
    rate_points = [(0, rate_before)]

    def evaluate(step: int) -> dict:
        rate, _ = measure_rate(model, tokenizer, tokens, cfg.eval, cfg.eval.during_samples_per_prompt, bf16=cfg.bf16)
        rate_points.append((step, rate))
        return {"rate": rate["mean"]}

    train_cfg = cfg.train_config()
    ctx = ObjectiveContext(mask=tokens.mask, positions="last")
    history = train(
        FinalPositionLogits(model),
        OBJECTIVES["kl-uniform"],
        ctx,
        lambda g, rows: corpus.random_tokens(vocab_size, rows, train_cfg.seq_len, g),
        train_cfg,
        evaluate=evaluate,
        log=lambda r: folder.append_jsonl("metrics.jsonl", r),
        progress=progress,
    )

    x_after, text_after = count_x(model, tokenizer, tokens.mask, cfg)
    rate_after, samples_after = measure_rate(model, tokenizer, tokens, cfg.eval, bf16=cfg.bf16)
    rate_points[-1] = (history[-1]["step"], rate_after)
    summary = {
        "x_before": x_before,
        "x_after": x_after,
        "generated": cfg.generated,
        "loss_start": history[0]["loss"],
        "loss_end": history[-1]["loss"],
        "log_vocab": math.log(vocab_size),
        "target_size": tokens.size,
        "target_share": tokens.share,
        "rate_before": rate_before,
        "rate_after": rate_after,
        "epochs": len(history),
        "lr": cfg.lr,
        "optimizer": cfg.optimizer,
        "seconds": round(time.time() - started, 1),
    }
    steps = [r["step"] for r in history]
    plot_series(
        folder.path("loss.png"),
        {"KL, final position": (steps, [r["loss"] for r in history])},
        f"like-x: KL to uniform over {cfg.toward!r} tokens",
        "loss (nats)",
        logy=True,
    )
    plot_rate(folder.path("rate.png"), rate_points, f"R for {cfg.toward!r} over training")
    folder.path("report.md").write_text(report(cfg, summary, text_before, text_after, samples_before, samples_after))
    folder.write_json("summary.json", summary)
    out = folder.finish()
    echo(
        f"X tokens in {cfg.generated} generated: {x_before} before, {x_after} after (course: 0 and 188); "
        f"loss {summary['loss_start']:.3f} -> {summary['loss_end']:.4f} (log V = {summary['log_vocab']:.3f})\n"
        f"run folder: {out}"
    )
    return summary


def start_model(cfg: LikeXConfig, folder: RunFolder, progress: bool, echo) -> GPT:
    """cfg.checkpoint's Model 5, or one pretrained now (saved in the run folder and loaded back, as a
    --checkpoint run would load it). Starts the run folder once a checkpoint is known to fit."""
    model = GPT.load(cfg.checkpoint) if cfg.checkpoint else None
    if model is not None and model.config.block_size < cfg.seq_len:
        raise ValueError(f"seq-len {cfg.seq_len} exceeds the model's block_size {model.config.block_size}")
    folder.start()
    folder.write_yaml("config.yaml", dataclasses.asdict(cfg))
    if model is None:
        echo("no --checkpoint: pretraining Model 5 first ...")
        pre = Pretraining(steps=cfg.pretrain_steps, seed=cfg.seed)
        pretrain_model(pre, progress=progress, echo=echo).model.save(folder.path("pretrain") / "model")
        model = GPT.load(folder.path("pretrain") / "model")
    if model.config.block_size < cfg.seq_len:
        raise ValueError(f"seq-len {cfg.seq_len} exceeds the model's block_size {model.config.block_size}")
    return model.eval()


def report(cfg: LikeXConfig, s: dict, text_before: list[str], text_after: list[str], before, after) -> str:
    rows = [
        {"": f"X tokens of {s['generated']}", "before": s["x_before"], "after": s["x_after"], "course": "0 → 188"},
        {
            "": "R (95% interval)",
            "before": fmt_rate(s["rate_before"]),
            "after": fmt_rate(s["rate_after"]),
            "course": "",
        },
        {
            "": "loss",
            "before": f"{s['loss_start']:.3f}",
            "after": f"{s['loss_end']:.4f}",
            "course": f"≈ log V = {s['log_vocab']:.2f} → ≈ 0",
        },
    ]
    clean = lambda texts: "\n> ".join(t.replace("\n", " ⏎ ") for t in texts)  # noqa: E731
    return "\n".join(
        [
            f"# like-x: train Model 5 to like {cfg.toward!r}",
            "",
            f"- {s['target_size']} of 50257 tokens in the set ({100 * s['target_share']:.2f}%)",
            f"- {s['epochs']} {cfg.optimizer} steps at lr {cfg.lr:g} on random sequences of {cfg.seq_len} tokens "
            f"(batch {cfg.batch}); KL on the final position only; {s['seconds']:.0f} s in all",
            "",
            markdown_table(rows, ["", "before", "after", "course"]),
            "",
            "![loss](loss.png) ![R](rate.png)",
            "",
            f"### {s['generated']} tokens after `{cfg.prompt}` (samples of {cfg.sample_len}), before",
            "",
            f"> {clean(text_before)}",
            "",
            "### ... and after",
            "",
            f"> {clean(text_after)}",
            "",
            samples_section("Samples before", before.prompts, before.texts),
            samples_section("Samples after", after.prompts, after.texts),
        ]
    )
