"""Measure a model: R (share of generated tokens in the set) with an interval over samples."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tokentilt.generate import DEFAULT_PROMPTS, SampleConfig, Samples, sample
from tokentilt.metrics import mean_ci, sample_rates


@dataclass
class EvalConfig:
    """How R is measured: prompts x samples, each sample one observation."""

    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))  # varied openings
    samples_per_prompt: int = 4  # continuations per prompt (8 prompts x 4 = 32 samples)
    new_tokens: int = 48  # tokens generated per sample
    temperature: float = 1.0  # 1.0 samples the model's own distribution
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    eval_seed: int = 1234  # fixed, so before/after/reloaded models see the same random draws
    during_samples_per_prompt: int = 1  # lighter R measurement at eval_every steps

    def check(self) -> None:
        if not self.prompts or not all(isinstance(p, str) and p for p in self.prompts):
            raise ValueError("prompts must be a non-empty list of non-empty strings")
        if self.samples_per_prompt <= 0 or self.new_tokens <= 0 or self.during_samples_per_prompt <= 0:
            raise ValueError("samples-per-prompt and new-tokens must be positive")

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
