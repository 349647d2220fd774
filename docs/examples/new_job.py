"""A new job: its config dataclass beside run(cfg, *, echo, progress), the signature every job has."""

from dataclasses import dataclass

from tokentilt.measurement.evaluate import measure_rate
from tokentilt.models.load import load_model
from tokentilt.settings import EvalConfig
from tokentilt.targets.phrases import resolve_target


@dataclass
class RateConfig:  # measure a model's R; each field is one flag (config.options reads the comments)
    model: str = "bundled"  # model to load
    toward: str = "x"  # selector of the set
    samples_per_prompt: int = 4  # samples per prompt

    def check(self) -> None:  # only checks; the CLI calls it before torch is imported
        if self.samples_per_prompt < 1:
            raise ValueError("samples-per-prompt must be >= 1")


def run(cfg: RateConfig, *, echo=print, progress: bool = False) -> dict:
    cfg.check()
    model, tokenizer = load_model(cfg.model)
    target = resolve_target(cfg.toward, tokenizer, model, echo)
    rate, _ = measure_rate(model, tokenizer, target, EvalConfig(samples_per_prompt=cfg.samples_per_prompt))
    echo(f"R = {rate['mean']:.3f} [{rate['ci_low']:.3f}, {rate['ci_high']:.3f}]")
    return rate
