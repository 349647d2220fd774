"""Measure a model: R with an interval over samples, and what the tilt costs on held-out text.

One call, `measure`, gives every number a run reports, for a trained model or for the
decode-time baseline (the reference model sampled with a logit bias b), on the same footing:
the same prompts and seeds for R, the same held-out windows for perplexity and drift.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tokentilt import data
from tokentilt.generate import DEFAULT_PROMPTS, SampleConfig, Samples, sample
from tokentilt.metrics import (
    distinct_n,
    drift,
    mean_ci,
    perplexity,
    repetition_rate,
    sample_rates,
)


@dataclass
class EvalConfig:
    """How R and the costs are measured: prompts x samples for R, held-out windows for the rest."""

    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))  # varied openings
    samples_per_prompt: int = 4  # continuations per prompt (8 prompts x 4 = 32 samples)
    new_tokens: int = 48  # tokens generated per sample
    temperature: float = 1.0  # 1.0 samples the model's own distribution
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    eval_seed: int = 1234  # fixed, so before/after/reloaded models see the same random draws
    during_samples_per_prompt: int = 1  # lighter R measurement at eval_every steps
    eval_text: str = ""  # plain-text file for perplexity and drift ("" = the plays' held-out test split)
    eval_windows: int = 16  # held-out windows, spread over the text (a cap that keeps evaluation cheap)
    eval_seq_len: int = 128  # tokens per held-out window

    def check(self) -> None:
        if not self.prompts or not all(isinstance(p, str) and p for p in self.prompts):
            raise ValueError("prompts must be a non-empty list of non-empty strings")
        if self.samples_per_prompt <= 0 or self.new_tokens <= 0 or self.during_samples_per_prompt <= 0:
            raise ValueError("samples-per-prompt and new-tokens must be positive")
        if self.eval_windows <= 0 or self.eval_seq_len < 2:
            raise ValueError("eval-windows must be positive and eval-seq-len at least 2")

    def sample_config(self) -> SampleConfig:
        return SampleConfig(max_new_tokens=self.new_tokens, strategy="multinomial", temperature=self.temperature,
                            top_k=self.top_k, top_p=self.top_p)


def measure_rate(
    model, tokenizer, mask: torch.Tensor, cfg: EvalConfig, per_prompt: int | None = None,
    bias: float = 0.0, bf16: bool = False,
) -> tuple[dict, Samples]:
    """R with a 95% interval over samples, and the samples themselves."""
    samples = sample(model, tokenizer, cfg.prompts, per_prompt or cfg.samples_per_prompt, cfg.sample_config(),
                     seed=cfg.eval_seed, bias_mask=mask if bias else None, bias=bias, bf16=bf16)
    rates = sample_rates(samples.tokens, mask)  # (N,)
    return mean_ci(rates), samples


def held_out_text(cfg: EvalConfig) -> str:
    """The eval text: the user's file, or the plays' test split (which training never reads)."""
    return data.read_text_file(cfg.eval_text) if cfg.eval_text else data.split_text("test")


def held_out_windows(tokenizer, cfg: EvalConfig, text: str | None = None) -> torch.Tensor:
    """(W, T) windows of the eval text (or of `text`): at most cfg.eval_windows of cfg.eval_seq_len tokens.

    A text shorter than one window gives a single window of all its tokens (at least 2).
    """
    tokens = data.tokenize(tokenizer, held_out_text(cfg) if text is None else text)  # (N,)
    if tokens.numel() < 2:
        raise data.DataError(f"eval text has {tokens.numel()} token(s); perplexity needs at least 2")
    return data.eval_windows(tokens, min(cfg.eval_seq_len, tokens.numel()), cfg.eval_windows)


def sample_costs(tokens: torch.Tensor) -> dict:
    """Degeneration of generated samples (N, L): distinct-1, distinct-2 and 4-gram repetition."""
    return {"distinct_1": distinct_n(tokens, 1), "distinct_2": distinct_n(tokens, 2),
            "repetition": repetition_rate(tokens, 4)}


def measure(
    model, tokenizer, mask: torch.Tensor, cfg: EvalConfig, windows: torch.Tensor, reference=None,
    bias: float = 0.0, bf16: bool = False,
) -> tuple[dict, Samples]:
    """Every number of one model (optionally decoded with logit bias b on the set).

    Returns ({"rate", "ppl", "drift", "distinct_1", "distinct_2", "repetition"}, samples).
    ppl is the held-out perplexity of the distribution that is sampled (biased if bias != 0);
    drift is the mean per-token KL(reference || that distribution), 0 when there is no
    reference and no bias (the model is its own reference).
    """
    rate, samples = measure_rate(model, tokenizer, mask, cfg, bias=bias, bf16=bf16)
    ppl = perplexity(model, windows, bias_mask=mask if bias else None, bias=bias, bf16=bf16)
    if reference is None and not bias:
        kl = 0.0  # the model is its own reference
    else:
        kl = drift(model, reference or model, windows, bf16=bf16, bias_mask=mask if bias else None, bias=bias)
    return {"rate": rate, "ppl": ppl, "drift": kl, **sample_costs(samples.tokens)}, samples


def evaluate_model(model_name: str, reference_name: str, toward: str, cfg: EvalConfig, bias: float = 0.0,
                   rate: float = 0.0, bf16: bool = False, echo=print) -> dict:
    """`tokentilt eval`: a model's R and costs against a reference, optionally beside the decode-time
    baseline (the reference sampled with bias b, or with the b calibrated to `rate`).

    Returns {"model", "reference", "selector", "rows": [{"name", "bias", "rate", "ppl", ...}]}.
    """
    from tokentilt.calibrate import calibrate, check_rate
    from tokentilt.models.load import load_model
    from tokentilt.tilt import resolve_set

    cfg.check()
    if rate:
        check_rate(rate)
        if bias:
            raise ValueError("give --bias or --rate, not both")
    text = held_out_text(cfg)  # a missing file fails before the slow load
    echo(f"loading model {model_name!r} ...")
    model, tokenizer = load_model(model_name)
    reference = model
    if reference_name != model_name:
        echo(f"loading reference {reference_name!r} ...")
        reference, _ = load_model(reference_name)
    vocab = model.get_output_embeddings().weight.shape[0]
    if reference.get_output_embeddings().weight.shape[0] != vocab:
        raise ValueError(f"model and reference have different vocabularies ({vocab} vs "
                         f"{reference.get_output_embeddings().weight.shape[0]} tokens)")
    tokens = resolve_set(toward, tokenizer, vocab)
    echo(tokens.describe())
    windows = held_out_windows(tokenizer, cfg, text)
    rows = []
    result, _ = measure(model, tokenizer, tokens.mask, cfg, windows,
                        reference=None if reference is model else reference, bf16=bf16)
    rows.append({"name": model_name, "bias": 0.0, **result})
    if rate:
        echo(f"calibrating the decode-time bias to R = {rate} on the reference ...")
        bias = calibrate(reference, tokenizer, tokens.mask, rate, cfg, windows, bf16=bf16, echo=echo).bias
    if bias:
        result, _ = measure(reference, tokenizer, tokens.mask, cfg, windows, bias=bias, bf16=bf16)
        rows.append({"name": f"decode-bias b={bias:.3f} on {reference_name}", "bias": bias, **result})
    return {"model": model_name, "reference": reference_name, "selector": toward, "target_size": tokens.size,
            "eval_text": cfg.eval_text or "plays:test", "eval_tokens": int(windows.numel()),
            "rate_target": rate or None, "rows": rows}


def eval_table(result: dict) -> str:
    """Plain-text table of evaluate_model's rows."""
    head = f"{'':<44} {'R [95% CI]':>22} {'ppl':>9} {'drift':>8} {'dist-1':>7} {'dist-2':>7} {'rep':>6}"
    lines = [head]
    for r in result["rows"]:
        rate = f"{r['rate']['mean']:.3f} [{r['rate']['ci_low']:.3f}, {r['rate']['ci_high']:.3f}]"
        lines.append(f"{r['name'][:44]:<44} {rate:>22} {r['ppl']:>9.2f} {r['drift']:>8.4f} {r['distinct_1']:>7.3f} "
                     f"{r['distinct_2']:>7.3f} {r['repetition']:>6.3f}")
    return "\n".join(lines)
