"""The jobs' settings, as dataclasses that import no torch: one per command (tilt, sweep, eval, generate,
audit, export), each field's comment its option's help. The course's jobs are in course_settings.py.

The CLI builds each command's options from these and checks them before it imports torch; each job's module
(jobs/tilt.py, tilting.py, jobs/sweep.py, ...) imports its config from here and keeps exporting it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal, get_args

from tokentilt.config import to_flat
from tokentilt.settings import (
    CONTEXTS,
    DEFAULT_TYPE,
    FITS,
    OBJECTIVE_NAMES,
    TEXT_OBJECTIVES,
    TYPES,
    Contexts,
    EvalConfig,
    HeadFit,
    LoraArgs,
    ObjectiveName,
    SampleConfig,
    TrainConfig,
    check_options,
    check_rate,
)
from tokentilt.settings import DEFAULT_LR as LORA_LR
from tokentilt.targets.selectors import is_phrase_selector

# ---------------------------------------------------------------- tilt

Inputs = Literal["auto", "random", "text"]
Placement = Literal["auto", "head-rows", "model"]
Positions = Literal["last", "all"]
INPUTS, PLACEMENTS = get_args(Inputs), get_args(Placement)
FULL_LR = 1e-4  # the course's learning rate for full fine-tuning
DEFAULT_RATE = 0.5  # tilt-distill's default target rate R*


def _tilt_train() -> TrainConfig:
    # lr 0 = FULL_LR, or LORA_LR with --lora (settled in check); bf16 where the hardware runs it natively
    return TrainConfig(lr=0.0, precision="auto")


@dataclass
class TiltConfig:
    """One tilt run. Flat YAML keys and CLI flags map onto these fields and the nested ones."""

    model: str = "bundled"  # model to load: 'bundled' (SmolLM2-135M-Instruct, offline), a local HF folder, or a hub id
    toward: str = "x"  # selector of the token set to tilt toward (see the selectors below)
    objective: ObjectiveName = "tilt-distill"  # loss; kl-uniform on random tokens is the course's recipe
    positions: Positions = "all"  # positions that enter the loss
    alpha: float = 1.0  # kl-alpha-beta/mixed: weight of set tokens
    beta: float = 1e-4  # kl-alpha-beta/mixed: weight of other tokens
    bias: float = 2.0  # tilt-distill: a fixed logit bias b of the target softmax(z_ref + b*mask) instead of --rate
    rate: float = DEFAULT_RATE  # tilt-distill: target rate R*; b is calibrated so that decode-time R on the start
    # model is R*. Below the model's own rate, b < 0 and the tilt is away from the set; 0 = use --bias
    rate_rounds: int = 3  # with --rate: trainings that correct b until the trained model's R is R*
    ce_weight: float = 1.0  # mixed: lambda on the CE term
    placement: Placement = "auto"  # tilt-distill: where the change lives. head-rows: only the set's rows of an
    # untied output head, fitted on cached hidden states (seconds; the cheapest tilt found, see
    # docs/tilt-variants.md; a phrase list: its entries' token rows, fitted per position). model: every weight (or
    # LoRA's) trained on play text. auto = head-rows, or model with --lora
    contexts: Contexts = "mix"  # head-rows: training contexts: play windows, continuations sampled from
    # the decode-time tilted model after training prompts (never the R prompts), or both
    head_fit: HeadFit = "offset"  # head-rows: offset adds b·u to every set row, u the least-squares
    # direction with h·u ≈ 1 on the contexts (closed form: the decode-time tilt's constant offset, as far as the
    # head's inputs allow); kl fits each row by Adam on KL(exact tilt || model)
    head_steps: int = 300  # head-rows, kl fit: Adam steps of 1024 cached positions
    head_lr: float = 1e-2  # head-rows, kl fit: peak learning rate, cosine schedule
    head_odds_weight: float = 0.0  # head-rows, kl fit: add W/2 x the squared error of the set's log-odds shift to
    # the KL
    inputs: Inputs = "auto"  # training inputs: random tokens (the course) or play text; auto = text for
    # tilt-distill and mixed, else random
    out: str = "runs/tilt"  # output folder
    overwrite: bool = False  # replace the output folder if it already holds a run
    resume: bool = False  # continue the unfinished run in DIR.partial from its newest checkpoint (same command
    # plus --resume)
    train: TrainConfig = field(default_factory=_tilt_train)
    eval: EvalConfig = field(default_factory=EvalConfig)
    lora: LoraArgs = field(default_factory=LoraArgs)

    def check(self) -> None:
        if self.objective not in OBJECTIVE_NAMES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVE_NAMES)}, got {self.objective!r}")
        if self.positions not in ("last", "all"):
            raise ValueError(f"positions must be 'last' or 'all', got {self.positions!r}")
        if self.inputs not in INPUTS:
            raise ValueError(f"inputs must be one of {', '.join(INPUTS)}, got {self.inputs!r}")
        if self.alpha < 0 or self.beta < 0 or self.alpha + self.beta == 0:
            raise ValueError("alpha and beta must be >= 0 and not both 0")
        if self.objective != "tilt-distill":
            self.rate = 0.0  # the default rate is tilt-distill's; the CLI refuses one that a user gave
        if self.rate:
            check_rate(self.rate)
        if not (isinstance(self.rate_rounds, int) and self.rate_rounds >= 1):
            raise ValueError(f"rate-rounds must be a positive integer, got {self.rate_rounds!r}")
        if self.rate and (self.train.save_every or self.train.report_to != "none"):
            raise ValueError(
                "--rate trains up to rate-rounds times from the start and checkpoints after each stage and round; "
                "it takes no --save-every or --report-to"
            )
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}")
        if is_phrase_selector(self.toward):
            self._check_phrases()
        if self.placement == "head-rows" and (self.objective != "tilt-distill" or self.lora.lora):
            raise ValueError("--placement head-rows applies to tilt-distill without --lora")
        if self.contexts not in CONTEXTS:
            raise ValueError(f"contexts must be one of {', '.join(CONTEXTS)}, got {self.contexts!r}")
        if self.head_fit not in FITS:
            raise ValueError(f"head-fit must be one of {', '.join(FITS)}, got {self.head_fit!r}")
        if not (isinstance(self.head_steps, int) and self.head_steps >= 1):
            raise ValueError(f"head-steps must be a positive integer, got {self.head_steps!r}")
        if not (isinstance(self.head_lr, (int, float)) and math.isfinite(self.head_lr) and self.head_lr > 0):
            raise ValueError(f"head-lr must be positive, got {self.head_lr!r}")
        if not (
            isinstance(self.head_odds_weight, (int, float))
            and math.isfinite(self.head_odds_weight)
            and self.head_odds_weight >= 0
        ):
            raise ValueError(f"head-odds-weight must be >= 0, got {self.head_odds_weight!r}")
        if self.head_rows() and (
            (self.resume and not self.rate) or self.train.save_every or self.train.report_to != "none"
        ):
            raise ValueError(
                "--placement head-rows fits in seconds on cached hidden states; "
                "it takes no --save-every or --report-to, and --resume only with --rate (use --placement model)"
            )
        if self.resume and self.overwrite:
            raise ValueError("--resume continues a run and --overwrite starts it afresh: give one of them")
        if self.train.lr == 0:
            self.train.lr = LORA_LR if self.lora.lora else FULL_LR
        self.lora.check()
        self.train.check()
        self.eval.check()

    def _check_phrases(self) -> None:
        """A phrase tilt is tilt-distill in a placement that sees context: the entries' rows of the head
        fitted per position (head-rows, the default), a LoRA adapter, or the whole model."""
        if self.objective != "tilt-distill":
            raise ValueError(
                f"a phrase selector ({self.toward.partition(':')[0]}:) is tilted by tilt-distill only, "
                f"not {self.objective}"
            )

    def head_rows(self) -> bool:
        """Whether the tilt is fitted into the set's rows of the output head (head_tilt.py)."""
        if self.placement == "auto":
            return self.objective == "tilt-distill" and not self.lora.lora
        return self.placement == "head-rows"

    def input_kind(self) -> str:
        if self.inputs != "auto":
            return self.inputs
        return "text" if self.objective in TEXT_OBJECTIVES else "random"


# ---------------------------------------------------------------- sweep

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
        self.objectives = [str(o).strip() for o in self.objectives if str(o).strip()]
        if not self.objectives:
            raise ValueError("objectives must name at least one objective")
        for o in self.objectives:
            if o not in OBJECTIVE_NAMES:
                raise ValueError(f"objective must be one of {', '.join(OBJECTIVE_NAMES)}, got {o!r}")
        self.lrs = _floats("lr", self.lrs)
        self.rates = _floats("rate", self.rates)
        self.biases = _floats("bias", self.biases)
        if not self.lrs or any(not (math.isfinite(x) and x > 0) for x in self.lrs):
            raise ValueError(f"lr values must be positive, got {self.lrs}")
        for r in self.rates:
            check_rate(r)
        if any(not math.isfinite(b) for b in self.biases):
            raise ValueError(f"bias values must be finite, got {self.biases}")
        if "tilt-distill" in self.objectives and not (self.rates or self.biases):
            raise ValueError("tilt-distill needs at least one rate or bias")
        if self.curve_points < 0:
            raise ValueError(f"curve-points must be >= 0, got {self.curve_points}")
        TiltConfig(
            objective=self.objectives[0],
            positions=self.positions,
            alpha=self.alpha,
            beta=self.beta,
            rate_rounds=self.rate_rounds,
            train=self.train,
            eval=self.eval,
        ).check()

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


# ---------------------------------------------------------------- eval, generate, audit, export


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


@dataclass
class GenerateConfig:
    """`tokentilt generate`: samples from a model, optionally with a decode-time bias on a token set."""

    model: str = "bundled"  # model to load: 'bundled' (SmolLM2-135M-Instruct, offline), a local HF folder, or a hub id
    prompt: list[str] = field(default_factory=list)  # prompt (repeat for several); none = the 16 built-in prompts
    # (with --chat, the 32 built-in requests)
    samples: int = 1  # samples per prompt
    new_tokens: int = SampleConfig.max_new_tokens  # tokens generated per sample
    strategy: Literal["greedy", "multinomial"] = SampleConfig.strategy  # greedy argmax or sampling
    temperature: float = SampleConfig.temperature  # sampling temperature
    top_k: int = SampleConfig.top_k  # top-k sampling, 0 = off
    top_p: float = SampleConfig.top_p  # nucleus sampling, 1.0 = off
    toward: str = ""  # selector of the token set for --bias and for counting R
    bias: float = 0.0  # decode-time logit bias on the set
    seed: int = 0  # sampling seed
    bf16: bool = False  # bf16 autocast on CPU
    chat: bool = False  # each prompt as a user turn in the model's chat template; the reply, cut at end-of-turn
    system: str = ""  # chat: a system message before each user turn


@dataclass
class AuditConfig:
    """One audit: which models, which contexts, which candidates, how strict."""

    model: str = ""  # the model to audit: a local HF folder (a run's model/), 'bundled' or a hub id
    reference: str = "bundled"  # the model MODEL was fine-tuned from
    words: list[str] = field(default_factory=list)  # a whole-word list (one word per line) to score as a
    # candidate; repeat for several
    toward: str = ""  # selector of the true set, when known: report its AUROC and rank
    eval_text: str = ""  # plain-text file for held-out perplexity and drift; empty = the plays' test split
    eval_windows: int = 16  # held-out windows
    eval_seq_len: int = 128  # tokens per held-out window
    samples_per_prompt: int = 2  # continuations per prompt from each model, 16 prompts
    new_tokens: int = 48  # tokens generated per continuation
    seed: int = 1234  # seed of the samples and the null draws
    min_tokens: int = 5  # smallest candidate feature considered
    alpha: float = 0.01  # family-wise error level over all candidates
    null_draws: int = 200  # random logit directions behind the "stands out" threshold: a new one beats
    # their best with probability 1/(N + 1), about alpha/2 at 200 (40 let a 40-step generic fine-tune through)
    top: int = 20  # features and tokens listed in the outputs
    batch_size: int = 4  # windows per forward pass
    bf16: bool = False  # bf16 autocast on CPU
    chat: bool = False  # sample both models' replies to the 32 built-in requests in the model's chat template, and
    # measure the lift on the replies (cut at end-of-turn) beside the held-out text
    system: str = ""  # chat: a system message before each user turn
    out: str = "runs/audit"  # output folder
    overwrite: bool = False  # replace the output folder if it already holds an audit

    def check(self) -> None:
        for name in (
            "eval_windows",
            "eval_seq_len",
            "samples_per_prompt",
            "new_tokens",
            "min_tokens",
            "null_draws",
            "top",
            "batch_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.eval_seq_len < 2:
            raise ValueError("eval-seq-len must be at least 2")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        check_options(self.chat, self.system)


@dataclass
class ExportConfig:
    """What `tokentilt export` writes, and from what."""

    source: str = ""  # a tilt run folder, a model folder, a .gguf or 'bundled'
    gguf: str = ""  # write the model here as GGUF (OUT.Modelfile beside it)
    type: Literal[TYPES] = DEFAULT_TYPE  # tensor type of the 2-D weights
    logit_bias: str = ""  # write the decode-time tilt here as JSON {token id: bias}
    toward: str = ""  # --logit-bias: the token set; a run folder's when not given
    bias: float | None = None  # --logit-bias: the bias b; a run folder's trained b when not given
