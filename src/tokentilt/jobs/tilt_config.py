"""`tokentilt tilt`'s settings (jobs/tilt.py), without torch: each field's comment is its option's help."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal, get_args

from tokentilt.settings import (
    CONTEXTS,
    FITS,
    OBJECTIVE_NAMES,
    TEXT_OBJECTIVES,
    Contexts,
    EvalConfig,
    HeadFit,
    LoraArgs,
    ObjectiveName,
    TrainConfig,
    check_rate,
)
from tokentilt.settings import DEFAULT_LR as LORA_LR
from tokentilt.targets.selectors import is_phrase_selector

Inputs = Literal["auto", "random", "text"]
Placement = Literal["auto", "head-rows", "model"]
Positions = Literal["last", "all"]
INPUTS, PLACEMENTS = get_args(Inputs), get_args(Placement)
FULL_LR = 1e-4  # the course's learning rate for full fine-tuning
# The head rows' kl fit: Adam steps and peak learning rate, and for a ban of a phrase list. Its per-position targets
# needed a longer, gentler fit: on the shipped slop list at b = -5.53 (the demo's ban), 300 steps at 0.01 left the
# trained model 1.48x the decode-time tilt's held-out perplexity rise, 1,000 at 0.01 1.11x, 1,000 at 0.003 0.92x,
# for a second or two more of fitting (docs/deslop.md). Toward a 10-word list at R* 0.05 (b = +6.1) one run each
# gave the same perplexity and half the R with the longer fit (0.034 against 0.066), so a tilt toward keeps 300.
KL_STEPS, KL_LR = 300, 1e-2
PHRASE_KL_STEPS, PHRASE_KL_LR = 1000, 3e-3
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
    rate_rounds: int = 3  # with --rate: trainings that correct b until the trained model's R is R*; with --ban:
    # until its held-out perplexity is within the budget (head rows)
    ban: bool = False  # tilt-distill: away from the set as far as --fluency-budget allows, instead of --rate: b is
    # the most negative bias whose decode-time tilt keeps held-out perplexity within the budget
    fluency_budget: float = 0.05  # --ban: how far held-out perplexity may rise, as a fraction of the model's own
    hard_ban: bool = False  # --ban: also sample a hard ban at decode time and compare the costs of every model on its
    # own replies (report.md's fluency table; one more R measurement)
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
    head_steps: int = 0  # head-rows, kl fit: Adam steps of 1024 cached positions; 0 = 300, or 1000 to ban a phrase list
    head_lr: float = 0.0  # head-rows, kl fit: peak learning rate, cosine; 0 = 0.01, or 0.003 to ban a phrase list
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
        rate = self.target_rate()
        if rate:
            check_rate(rate)
        if self.ban and self.objective != "tilt-distill":
            raise ValueError(f"--ban sets tilt-distill's bias; it does not apply to {self.objective}")
        if not (isinstance(self.fluency_budget, (int, float)) and 0 < self.fluency_budget <= 1):
            raise ValueError(f"fluency-budget must be in (0, 1], got {self.fluency_budget!r}")
        if self.hard_ban and not self.ban:
            raise ValueError("--hard-ban compares a --ban run with a hard ban; give it with --ban")
        if not (isinstance(self.rate_rounds, int) and self.rate_rounds >= 1):
            raise ValueError(f"rate-rounds must be a positive integer, got {self.rate_rounds!r}")
        if rate and (self.train.save_every or self.train.report_to != "none"):
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
        if not (isinstance(self.head_steps, int) and self.head_steps >= 0):
            raise ValueError(f"head-steps must be a positive integer (0 = the default), got {self.head_steps!r}")
        if not (isinstance(self.head_lr, (int, float)) and math.isfinite(self.head_lr) and self.head_lr >= 0):
            raise ValueError(f"head-lr must be positive (0 = the default), got {self.head_lr!r}")
        if not (
            isinstance(self.head_odds_weight, (int, float))
            and math.isfinite(self.head_odds_weight)
            and self.head_odds_weight >= 0
        ):
            raise ValueError(f"head-odds-weight must be >= 0, got {self.head_odds_weight!r}")
        if self.head_rows() and ((self.resume and not rate) or self.train.save_every or self.train.report_to != "none"):
            raise ValueError(
                "--placement head-rows fits in seconds on cached hidden states; "
                "it takes no --save-every or --report-to, and --resume only with --rate (use --placement model)"
            )
        if self.resume and self.overwrite:
            raise ValueError("--resume continues a run and --overwrite starts it afresh: give one of them")
        self.lora.check()
        self.train_with_lr().check()
        self.eval.check()

    def resolved(self) -> TiltConfig:
        """A filled copy, made once at the top of the job: the rate only for tilt-distill (the default rate is
        tilt-distill's; the CLI refuses one that a user gave), lr 0 = FULL_LR or LORA_LR with --lora, the head rows'
        kl fit's steps and lr (KL_STEPS, KL_LR; a phrase list's ban PHRASE_KL_STEPS, PHRASE_KL_LR), the precision
        settled on the hardware (imports torch), chat's default prompts. config.yaml holds these values."""
        phrases = is_phrase_selector(self.toward) and self.ban
        return dataclasses.replace(
            self,
            rate=self.target_rate(),
            head_steps=self.head_steps or (PHRASE_KL_STEPS if phrases else KL_STEPS),
            head_lr=self.head_lr or (PHRASE_KL_LR if phrases else KL_LR),
            train=self.train_with_lr().resolved(),
            eval=self.eval.resolved(),
            lora=dataclasses.replace(self.lora),
        )

    def target_rate(self) -> float:
        """The rate R* the run calibrates b to: 0 (the bias is fixed, or set by --ban) unless the objective is
        tilt-distill."""
        return self.rate if self.objective == "tilt-distill" and not self.ban else 0.0

    def train_with_lr(self) -> TrainConfig:
        """self.train with lr 0 read as the default: FULL_LR, or LORA_LR with --lora."""
        if self.train.lr == 0:
            return dataclasses.replace(self.train, lr=LORA_LR if self.lora.lora else FULL_LR)
        return self.train

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
