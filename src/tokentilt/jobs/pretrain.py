"""Pretrain Model 5 on the Shakespeare plays: next-token CE, AdamW, dropout, early stopping on val loss.

The run folder holds config.yaml, metrics.jsonl (train loss every step, train/val loss at every
evaluation), loss.png, summary.json (final val loss beside the unigram baseline), report.md and
model/ (GPT.save: gpt_config.json + gpt.safetensors).
"""

from __future__ import annotations

import dataclasses
import time

from tokentilt.course.pretraining import next_token_objective, pretrain_model, split_loss, unigram_cross_entropy
from tokentilt.jobs.pretrain_config import PretrainConfig
from tokentilt.measurement.sampling import SampleConfig, sample
from tokentilt.runs.folder import RunFolder
from tokentilt.runs.report import markdown_table, plot_series, samples_section

__all__ = ["PretrainConfig", "next_token_objective", "run", "run_pretrain", "split_loss", "unigram_cross_entropy"]


def run(cfg: PretrainConfig, *, echo=print, progress: bool = True) -> dict:
    """Train Model 5 from scratch, write the run folder, return summary.json's content."""
    cfg.check()
    folder = RunFolder(cfg.out, cfg.overwrite)
    started = time.time()
    folder.start()
    folder.write_yaml("config.yaml", dataclasses.asdict(cfg))
    p = pretrain_model(cfg, progress, log=lambda r: folder.append_jsonl("metrics.jsonl", r), echo=echo)
    model, tokenizer, history, evals, baseline = p.model, p.tokenizer, p.history, p.evals, p.baseline
    best = min(evals[1:], key=lambda e: e["val_loss"]) if cfg.patience else evals[-1]
    final_val = p.final_val_loss
    model.save(folder.path("model"))

    plot_series(
        folder.path("loss.png"),
        {
            "train (per step)": ([r["step"] for r in history], [r["loss"] for r in history]),
            "train (fixed windows)": ([e["step"] for e in evals], [e["train_loss"] for e in evals]),
            "val": ([e["step"] for e in evals], [e["val_loss"] for e in evals]),
        },
        "Model 5 pretraining on Shakespeare",
        "next-token CE (nats)",
        hline=(baseline["unigram_val_ce"], "unigram baseline (val)"),
    )
    samples = sample(
        model, tokenizer, ["KING:", "To be"], 1, SampleConfig(max_new_tokens=cfg.sample_tokens), seed=cfg.seed
    )
    summary = {
        "params": model.num_params(),
        "train_tokens": p.train_tokens,
        "val_tokens": p.val_tokens,
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
    echo(
        f"val loss {final_val:.3f} nats (unigram baseline {baseline['unigram_val_ce']:.3f}); "
        f"{summary['steps']} steps in {summary['seconds']:.0f} s\nrun folder: {out}"
    )
    return summary


def run_pretrain(cfg: PretrainConfig, progress: bool = True, echo=print) -> dict:
    """The API's name for run()."""
    return run(cfg, echo=echo, progress=progress)


def pretrain_report(cfg: PretrainConfig, s: dict, evals: list[dict], samples) -> str:
    rows = [{"step": e["step"], "train loss": e["train_loss"], "val loss": e["val_loss"]} for e in evals]
    return "\n".join(
        [
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
        ]
    )
