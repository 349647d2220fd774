"""`tokentilt sweep`'s settings (jobs/sweep.py), without torch. A sweep is a grid of tilt runs: its shared
settings are checked as a tilt's, and tilt_config() gives each run's TiltConfig (the one job config that another
job's config imports)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from tokentilt.config import to_flat
from tokentilt.jobs.tilt_config import Positions, TiltConfig
from tokentilt.settings import OBJECTIVE_NAMES, EvalConfig, TrainConfig, check_rate

# Settings that must match for a finished run in the folder to count as done.
SHARED_KEYS = (
    "model",
    "toward",
    "positions",
    "alpha",
    "beta",
    "ce_weight",
    "rate_rounds",
    "optimizer",
    "steps",
    "batch",
    "grad_accum",
    "seq_len",
    "grad_clip",
    "weight_decay",
    "seed",
    "bf16",
    "prompts",
    "samples_per_prompt",
    "new_tokens",
    "temperature",
    "top_k",
    "top_p",
    "eval_seed",
    "eval_text",
    "eval_windows",
    "eval_seq_len",
    "chat",
    "system",
)


def _train_defaults() -> TrainConfig:
    return TrainConfig(eval_every=0)  # no R measurements during training: the sweep measures at the end


@dataclass
class SweepConfig:
    """A grid of tilt runs. Lists are the grid's axes; the rest is shared by every run."""

    model: str = "bundled"  # model to load: 'bundled' (SmolLM2-135M-Instruct, offline), a local HF folder, or a hub id
    toward: str = "x"  # selector of the token set to tilt toward
    objectives: list[str] = field(
        default_factory=lambda: ["tilt-distill", "kl-alpha-beta"]
    )  # objectives to train, comma-separated, from tilt's
    # --objective choices
    lrs: list[float] = field(default_factory=lambda: [1e-4])  # learning rates, comma-separated; one run each
    rates: list[float] = field(default_factory=lambda: [0.5])  # target rates R*, comma-separated; b is calibrated per
    # rate on the start model
    biases: list[float] = field(default_factory=list)  # explicit logit biases b, comma-separated (besides the
    # rates)
    rate_rounds: int = 3  # tilt-distill at a rate: trainings that correct b until the trained model's R is R*
    curve_points: int = 6  # extra b values on the decode-time baseline curve, 0 = none
    positions: Positions = "all"  # positions that enter the loss
    alpha: float = 1.0  # kl-alpha-beta/mixed: weight of set tokens
    beta: float = 1e-4  # kl-alpha-beta/mixed: weight of other tokens
    ce_weight: float = 1.0  # mixed: lambda on the CE term
    out: str = "runs/sweep"  # sweep folder
    overwrite: bool = False  # forget the runs already in the folder and start afresh
    train: TrainConfig = field(default_factory=_train_defaults)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def check(self) -> None:
        objectives = _objectives(self.objectives)
        if not objectives:
            raise ValueError("objectives must name at least one objective")
        for o in objectives:
            if o not in OBJECTIVE_NAMES:
                raise ValueError(f"objective must be one of {', '.join(OBJECTIVE_NAMES)}, got {o!r}")
        lrs, rates, biases = _floats("lr", self.lrs), _floats("rate", self.rates), _floats("bias", self.biases)
        if not lrs or any(not (math.isfinite(x) and x > 0) for x in lrs):
            raise ValueError(f"lr values must be positive, got {lrs}")
        for r in rates:
            check_rate(r)
        if any(not math.isfinite(b) for b in biases):
            raise ValueError(f"bias values must be finite, got {biases}")
        if "tilt-distill" in objectives and not (rates or biases):
            raise ValueError("tilt-distill needs at least one rate or bias")
        if self.curve_points < 0:
            raise ValueError(f"curve-points must be >= 0, got {self.curve_points}")
        self._tilt(objectives[0]).check()

    def resolved(self) -> SweepConfig:
        """A filled copy, made once at the top of the job: the axes as lists of stripped names and floats (YAML
        and flags may give a scalar or strings), the precision settled (imports torch), chat's default prompts."""
        tilt = self._tilt(_objectives(self.objectives)[0]).resolved()
        return dataclasses.replace(
            self,
            objectives=_objectives(self.objectives),
            lrs=_floats("lr", self.lrs),
            rates=_floats("rate", self.rates),
            biases=_floats("bias", self.biases),
            train=tilt.train,
            eval=tilt.eval,
        )

    def _tilt(self, objective: str) -> TiltConfig:
        """The settings every run of the grid shares, as one tilt's: checked and filled as a tilt's are."""
        return TiltConfig(
            objective=objective,
            positions=self.positions,
            alpha=self.alpha,
            beta=self.beta,
            rate_rounds=self.rate_rounds,
            train=self.train,
            eval=self.eval,
        )

    def tilt_config(self, objective: str, lr: float, bias: float, rate: float | None = None) -> TiltConfig:
        return TiltConfig(
            model=self.model,
            toward=self.toward,
            objective=objective,
            positions=self.positions,
            alpha=self.alpha,
            beta=self.beta,
            bias=bias,
            rate=rate or 0.0,
            rate_rounds=self.rate_rounds,
            ce_weight=self.ce_weight,
            placement="model",  # a sweep compares learning rates
            train=dataclasses.replace(self.train, lr=lr),
            eval=self.eval,
        )

    def shared(self) -> dict:
        flat = to_flat(self)
        return {k: flat[k] for k in SHARED_KEYS}


def _objectives(values) -> list[str]:
    return [str(o).strip() for o in values if str(o).strip()]


def _floats(name: str, values) -> list[float]:
    if isinstance(values, (int, float, str)):
        values = [values]
    out = []
    for v in values or []:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            raise ValueError(f"bad value for {name}: {v!r}") from None
    return out
