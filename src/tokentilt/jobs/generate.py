"""The `tokentilt generate` job: samples from a model, optionally with a decode-time bias on a token set, and R."""

from __future__ import annotations

import sys

from tokentilt.data.chat import CHAT_PROMPTS, check_template
from tokentilt.jobs.generate_config import GenerateConfig
from tokentilt.measurement import sampling
from tokentilt.measurement.metrics import mean_ci
from tokentilt.models.load import load_model
from tokentilt.targets.phrases import resolve_target


def run(cfg: GenerateConfig, *, echo=print, progress: bool = False) -> dict:
    """Print each sample through echo (and R over them with --toward) -> {"prompts", "texts", "rate"}. The set's
    resolution notes go to stderr, so that stdout holds only the samples. No progress bar."""
    model, tokenizer = load_model(cfg.model)
    target = None
    if cfg.chat:
        check_template(tokenizer)
    if cfg.toward:
        target = resolve_target(cfg.toward, tokenizer, model, echo=lambda line: print(line, file=sys.stderr))
    prompts = cfg.prompt or list(CHAT_PROMPTS if cfg.chat else sampling.DEFAULT_PROMPTS)
    samples = sampling.sample(  # looked up when called, as the CLI did (tests stand in for it)
        model,
        tokenizer,
        prompts,
        cfg.samples,
        cfg.sample_config(),
        seed=cfg.seed,
        bias_mask=target,
        bias=cfg.bias,
        bf16=cfg.bf16,
        chat=cfg.chat,
        system=cfg.system,
    )
    for prompt, text in zip(samples.prompts, samples.texts):
        echo(f"--- user: {prompt!r}\n{text}" if cfg.chat else f"--- {prompt!r}\n{prompt}{text}")
    rate = None
    if target is not None:
        rate = mean_ci(target.rates(samples))
        echo(f"R = {rate['mean']:.3f} [{rate['ci_low']:.3f}, {rate['ci_high']:.3f}] over {len(samples.texts)} samples")
    return {"prompts": samples.prompts, "texts": samples.texts, "rate": rate}
