"""`tokentilt eval`'s settings (jobs/eval.py), without torch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from tokentilt.settings import EvalConfig


@dataclass
class EvalJobConfig:
    """`tokentilt eval`: which models, which set, which baseline; `eval` says how they are measured."""

    model: str = "bundled"  # model to measure: 'bundled', a local HF folder, a .gguf or a hub id
    reference: str = "bundled"  # reference for drift and the decode-time baseline
    toward: str = "x"  # selector of the token set counted by R
    bias: float = 0.0  # also measure the reference decoded with this logit bias on the set
    rate: float = 0.0  # also measure the reference decoded with the b calibrated to this R
    bf16: bool = False  # bf16 autocast on CPU
    out: str = ""  # also write the results as JSON to this file
    eval: EvalConfig = field(default_factory=EvalConfig)

    def resolved(self) -> EvalJobConfig:
        """A filled copy, made once at the top of the job: chat's default prompts."""
        return dataclasses.replace(self, eval=self.eval.resolved())
