"""Pretrain Model 5 on the Shakespeare plays: next-token CE, AdamW, dropout, early stopping on val loss.

The run folder holds config.yaml, metrics.jsonl (train loss every step, train/val loss at every
evaluation), loss.png, summary.json (final val loss beside the unigram baseline), report.md and
model/ (GPT.save: gpt_config.json + gpt.safetensors).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import torch

from tokentilt import data
from tokentilt.engine import native_bf16
from tokentilt.generate import SampleConfig, sample
from tokentilt.losses import ObjectiveContext, next_token_objective
from tokentilt.metrics import perplexity
from tokentilt.models.gpt import GPT, GPTConfig
from tokentilt.models.gpt2_tokenizer import gpt2_tokenizer
from tokentilt.outputs import RunFolder
from tokentilt.report import markdown_table, plot_series, samples_section
from tokentilt.train import TrainConfig, train


@dataclass
class PretrainConfig:
    """One pretraining run of Model 5. Sized so the defaults finish in minutes on 2 CPU cores."""

    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # attention heads per block
    n_embd: int = 128  # residual width
    block_size: int = 256  # context length (like-x trains on 256-token inputs)
    dropout: float = 0.1  # on embeddings, attention and residual branches
    lr: float = 3e-3  # AdamW learning rate (constant)
    weight_decay: float = 0.1  # AdamW decoupled weight decay
    steps: int = 1000  # max optimizer steps (early stopping may end sooner)
    batch: int = 8  # windows per step
    seq_len: int = 64  # tokens per training window (<= block_size); short windows = more steps per minute
    grad_clip: float = 1.0  # max global grad norm
    eval_every: int = 50  # steps between train/val loss evaluations
    eval_windows: int = 24  # fixed windows of each split used for the train/val loss
    patience: int = 3  # stop after this many evaluations without a better val loss (0 = off)
    seed: int = 0  # seeds init, batches, dropout and samples
    bf16: bool = field(default_factory=native_bf16)  # bf16 autocast where the CPU runs it natively
    sample_tokens: int = 40  # tokens per sample shown in report.md
    out: str = "runs/pretrain"  # output folder
    overwrite: bool = False  # replace an existing run folder

    def check(self) -> None:
        if self.seq_len > self.block_size:
            raise ValueError(f"seq-len ({self.seq_len}) must be <= block-size ({self.block_size})")
        if self.eval_windows < 1 or self.eval_every < 1 or self.sample_tokens < 1:
            raise ValueError("eval-every, eval-windows and sample-tokens must be >= 1")
        self.gpt_config()  # validates n_embd % n_head and dropout
        self.train_config().check()

    def gpt_config(self) -> GPTConfig:
        return GPTConfig(n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd,
                         block_size=self.block_size, dropout=self.dropout)

    def train_config(self) -> TrainConfig:
        return TrainConfig(optimizer="adamw", lr=self.lr, steps=self.steps, batch=self.batch, seq_len=self.seq_len,
                           grad_clip=self.grad_clip, weight_decay=self.weight_decay, seed=self.seed, bf16=self.bf16,
                           eval_every=self.eval_every, patience=self.patience)


def unigram_cross_entropy(train_tokens: torch.Tensor, eval_tokens: torch.Tensor, vocab_size: int) -> dict:
    """The no-context baseline, in nats per token.

    Token frequencies of the train split (add-one smoothed, so an unseen val token costs a finite
    amount) give a unigram model; we report its entropy and its cross-entropy on `eval_tokens`.
    A language model that uses context must beat the cross-entropy.
    """
    counts = torch.bincount(train_tokens, minlength=vocab_size).double() + 1.0  # (V,)
    log_p = counts.log() - counts.sum().log()  # (V,)
    return {"unigram_entropy": float(-(log_p.exp() * log_p).sum()),
            "unigram_val_ce": float(-log_p[eval_tokens].mean())}


def split_loss(model, windows: torch.Tensor, bf16: bool) -> float:
    """Mean next-token CE (nats) over fixed (W, T) windows, in eval mode."""
    return math.log(perplexity(model, windows, batch_size=8, bf16=bf16))


def run_pretrain(cfg: PretrainConfig, progress: bool = True, echo=print) -> dict:
    """Train Model 5 from scratch, write the run folder, return summary.json's content."""
    cfg.check()
    folder = RunFolder(cfg.out, cfg.overwrite)
    started = time.time()
    tokenizer = gpt2_tokenizer()
    echo("tokenizing the plays ...")
    train_tokens = data.tokenize(tokenizer, data.split_text("train"))  # (N_train,)
    val_tokens = data.tokenize(tokenizer, data.split_text("val"))  # (N_val,)
    train_windows = data.eval_windows(train_tokens, cfg.seq_len, cfg.eval_windows)  # (W, T)
    val_windows = data.eval_windows(val_tokens, cfg.seq_len, cfg.eval_windows)  # (W, T)
    baseline = unigram_cross_entropy(train_tokens, val_tokens, len(tokenizer))

    folder.start()
    folder.write_yaml("config.yaml", dataclasses.asdict(cfg))
    torch.manual_seed(cfg.seed)
    model = GPT(cfg.gpt_config())
    echo(f"Model 5: {model.num_params() / 1e6:.1f}M parameters; {len(train_tokens)} train / {len(val_tokens)} val "
         f"tokens; unigram baseline {baseline['unigram_val_ce']:.3f} nats on val")
    evals = [{"step": 0, "train_loss": split_loss(model, train_windows, cfg.bf16),
              "val_loss": split_loss(model, val_windows, cfg.bf16)}]
    folder.append_jsonl("metrics.jsonl", evals[0])

    def evaluate(step: int) -> dict:
        point = {"train_loss": split_loss(model, train_windows, cfg.bf16),
                 "val_loss": split_loss(model, val_windows, cfg.bf16)}
        evals.append({"step": step, **point})
        return point

    train_cfg = cfg.train_config()
    history = train(model, next_token_objective, ObjectiveContext(mask=torch.zeros(0, dtype=torch.bool)),
                    lambda g, rows: data.text_windows(train_tokens, rows, train_cfg.seq_len, g), train_cfg,
                    evaluate=evaluate, log=lambda r: folder.append_jsonl("metrics.jsonl", r), progress=progress)
    # train() restored the best weights when early stopping was on; measure what we save.
    best = min(evals[1:], key=lambda e: e["val_loss"]) if cfg.patience else evals[-1]
    final_val = split_loss(model, val_windows, cfg.bf16)
    model.save(folder.path("model"))

    plot_series(folder.path("loss.png"),
                {"train (per step)": ([r["step"] for r in history], [r["loss"] for r in history]),
                 "train (fixed windows)": ([e["step"] for e in evals], [e["train_loss"] for e in evals]),
                 "val": ([e["step"] for e in evals], [e["val_loss"] for e in evals])},
                "Model 5 pretraining on Shakespeare", "next-token CE (nats)",
                hline=(baseline["unigram_val_ce"], "unigram baseline (val)"))
    samples = sample(model, tokenizer, ["KING:", "To be"], 1, SampleConfig(max_new_tokens=cfg.sample_tokens), seed=cfg.seed)
    summary = {
        "params": model.num_params(),
        "train_tokens": len(train_tokens),
        "val_tokens": len(val_tokens),
        "steps": len(history),
        "early_stopped": len(history) < cfg.steps,
        "best_step": best["step"],
        "val_loss": final_val,
        "train_loss": best["train_loss"],
        **baseline,
        "seconds": round(time.time() - started, 1),
    }
    folder.path("report.md").write_text(pretrain_report(cfg, summary, evals, samples))
    folder.write_json("summary.json", summary)
    out = folder.finish()
    echo(f"val loss {final_val:.3f} nats (unigram baseline {baseline['unigram_val_ce']:.3f}); "
         f"{summary['steps']} steps in {summary['seconds']:.0f} s\nrun folder: {out}")
    return summary


def pretrain_report(cfg: PretrainConfig, s: dict, evals: list[dict], samples) -> str:
    rows = [{"step": e["step"], "train loss": e["train_loss"], "val loss": e["val_loss"]} for e in evals]
    return "\n".join([
        "# Model 5 pretraining on Shakespeare",
        "",
        f"- {s['params'] / 1e6:.1f}M parameters ({cfg.n_layer} layers, d={cfg.n_embd}, {cfg.n_head} heads, "
        f"dropout {cfg.dropout}); GPT-2 tokenizer",
        f"- {s['steps']} AdamW steps (lr {cfg.lr:g}, weight decay {cfg.weight_decay}) of {cfg.batch} x {cfg.seq_len} "
        f"tokens{'; stopped early' if s['early_stopped'] else ''}; best step {s['best_step']}; {s['seconds']:.0f} s",
        f"- **val loss {s['val_loss']:.3f} nats** vs the unigram baseline {s['unigram_val_ce']:.3f} nats "
        f"(train-split unigram entropy {s['unigram_entropy']:.3f})",
        "",
        markdown_table(rows, ["step", "train loss", "val loss"]),
        "",
        "![loss](loss.png)",
        "",
        samples_section("Samples", samples.prompts, samples.texts),
    ])
