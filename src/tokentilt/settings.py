"""The settings of the shared parts, as dataclasses that import no torch: how to train (TrainConfig), how to
measure (EvalConfig), how to sample (SampleConfig), LoRA (LoraArgs), how to audit (AuditOptions), and the names and constants their fields and checks use.

check() only checks; a default that depends on other fields or on the hardware is filled by resolved(), which
returns a filled copy. The jobs' own configs are in jobs/<job>_config.py.

The CLI builds its parsers from these and checks a command's input before it imports torch; the modules
that use them (train.py, evaluate.py, generate.py, models/lora.py, engine.py, ...) import them from here
and keep exporting them under their old names.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal, get_args

from tokentilt.data.prompts import CHAT_REQUESTS, COURSE_PROMPTS, DEFAULT_PROMPTS

# the losses.OBJECTIVES registry's names, in its order (test_losses checks they agree), as a type: the CLI's choices
OBJECTIVE_NAMES = ("kl-uniform", "kl-alpha-beta", "tilt-distill", "mixed", "away")
ObjectiveName = Literal[OBJECTIVE_NAMES]
TEXT_OBJECTIVES = {"tilt-distill", "mixed"}  # objectives whose inputs must be real text rather than random tokens
REFERENCE_OBJECTIVES = {"tilt-distill"}  # objectives that need a frozen copy of the starting model
# where training runs (engine.py)
Device = Literal["auto", "cpu", "cuda", "mps"]
Precision = Literal["fp32", "bf16", "fp16", "auto"]  # auto: bf16 where it is native, else fp32
Reporter = Literal["none", "tensorboard", "wandb", "mlflow", "trackio"]
DEVICES, PRECISIONS, REPORTERS = get_args(Device), get_args(Precision), get_args(Reporter)
# head-rows tilts' training contexts and fit (head_tilt.py)
Contexts = Literal["mix", "text", "policy"]
HeadFit = Literal["offset", "kl"]
CONTEXTS, FITS = get_args(Contexts), get_args(HeadFit)
STRATEGIES = ("greedy", "multinomial")  # of SampleConfig (generate.py)
DEFAULT_CHUNK = 512  # rows per chunk: (512, 49152) fp32 is 100 MB
TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")  # GGUF tensor types that export.py writes
DEFAULT_TYPE = "f16"
CREATIVE_NEW_TOKENS = 160  # reply tokens for creative requests, unless given: slop shows in replies this long


def check_rate(target: float) -> None:
    if not (isinstance(target, (int, float)) and 0 < target < 1):
        raise ValueError(f"rate must be in (0, 1), got {target!r}")


def check_options(chat: bool, system: str, requests: str = "general") -> None:
    """--system and --requests belong to --chat."""
    if system and not chat:
        raise ValueError("--system is a chat option; give --chat with it")
    if requests not in CHAT_REQUESTS:
        raise ValueError(f"requests must be one of {', '.join(CHAT_REQUESTS)}, got {requests!r}")
    if requests != "general" and not chat:
        raise ValueError("--requests is a chat option; give --chat with it")


@dataclass
class SampleConfig:
    """How to pick each next token."""

    max_new_tokens: int = 48  # tokens generated per sample
    strategy: str = "multinomial"  # "greedy" (argmax) or "multinomial" (sample)
    temperature: float = 1.0  # divides the logits before sampling
    top_k: int = 0  # keep only the k likeliest tokens (0 = off)
    top_p: float = 1.0  # keep the smallest set with this much mass (1.0 = off)
    ban_eos: bool = True  # never stop early, so every sample has max_new_tokens tokens


def check_sample_config(cfg: SampleConfig) -> None:
    if cfg.strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {cfg.strategy!r}")
    if cfg.max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {cfg.max_new_tokens}")
    if cfg.temperature <= 0:
        raise ValueError(f"temperature must be positive, got {cfg.temperature}")
    if cfg.top_k < 0 or not 0 < cfg.top_p <= 1:
        raise ValueError(f"top_k must be >= 0 and top_p in (0, 1], got {cfg.top_k}, {cfg.top_p}")


@dataclass
class EvalConfig:
    """How R and the costs are measured: prompts x samples for R, held-out windows for the rest."""

    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))  # varied openings for R (set in YAML)
    samples_per_prompt: int = 4  # samples per prompt for R, the first pass; with 16 prompts, 4 give 64 samples
    half_width: float = 0.02  # then more samples, every prompt alike, until R's interval is at most +- this
    # (or max-samples are drawn); 0 = exactly samples-per-prompt
    max_samples: int = 512  # the sampling budget of one R measurement (calibration, rate rounds, final R)
    new_tokens: int = 48  # tokens generated per sample (with --requests creative, 48 is read as 160: slop shows in
    # long replies)
    temperature: float = 1.0  # sampling temperature; 1.0 samples the model's own distribution
    top_k: int = 0  # top-k sampling, 0 = off
    top_p: float = 1.0  # nucleus sampling, 1.0 = off
    eval_seed: int = 1234  # seed of the R measurement, fixed so before/after/reloaded models see the same draws
    during_samples_per_prompt: int = 1  # samples per prompt of the lighter R measurement every eval-every steps
    eval_text: str = ""  # plain-text file for held-out perplexity and drift; empty = the plays' test split
    eval_windows: int = 16  # held-out windows, spread over the text (a cap that keeps evaluation cheap)
    eval_seq_len: int = 128  # tokens per held-out window (in chat: at most this many reply tokens)
    chat: bool = False  # prompts as user turns in the model's chat template (32 built-in requests); R, distinct-n,
    # repetition, perplexity and drift on the assistant's replies only, cut at end-of-turn
    system: str = ""  # chat: a system message before each user turn (none = the template's own, if any)
    requests: Literal["general", "creative"] = "general"  # chat: the built-in requests; general = questions,
    # advice and a little creative writing; creative = stories, descriptions, letters and poems, where slop shows

    def check(self) -> None:
        check_options(self.chat, self.system, self.requests)
        if not self.prompts or not all(isinstance(p, str) and p for p in self.prompts):
            raise ValueError("prompts must be a non-empty list of non-empty strings")
        if self.samples_per_prompt <= 0 or self.new_tokens <= 0 or self.during_samples_per_prompt <= 0:
            raise ValueError("samples-per-prompt and new-tokens must be positive")
        if not 0 <= self.half_width < 0.5 or self.max_samples <= 0:
            raise ValueError("half-width must be in [0, 0.5) and max-samples positive")
        if self.eval_windows <= 0 or self.eval_seq_len < 2:
            raise ValueError("eval-windows must be positive and eval-seq-len at least 2")

    def resolved(self) -> EvalConfig:
        """A copy with the chat defaults filled in: user requests instead of text openings, and creative
        requests' longer replies."""
        out = dataclasses.replace(self)
        if self.chat and self.prompts == list(DEFAULT_PROMPTS):
            out.prompts = list(CHAT_REQUESTS[self.requests].measure)
        if self.requests == "creative" and self.new_tokens == EvalConfig.new_tokens:
            out.new_tokens = CREATIVE_NEW_TOKENS
        return out

    @classmethod
    def course(cls) -> EvalConfig:
        """The course experiments' measurement: their 8 prompts at a fixed sample count (their README numbers
        were taken so)."""
        return cls(prompts=list(COURSE_PROMPTS), half_width=0.0)

    def probe(self) -> EvalConfig:
        """The same measurement on other seeds (eval_seed + 1): what tilt --rate chooses b on, so that the
        R it reports on eval_seed is not the one b was fitted to."""
        return dataclasses.replace(self, eval_seed=self.eval_seed + 1)

    def sample_config(self) -> SampleConfig:
        return SampleConfig(
            max_new_tokens=self.new_tokens,
            strategy="multinomial",
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
        )


Optimizer = Literal["sgd", "adam", "adamw"]
Attention = Literal["auto", "model", "eager", "sdpa"]
OPTIMIZERS, ATTENTIONS = get_args(Optimizer), get_args(Attention)


@dataclass
class TrainConfig:
    """Optimisation settings; the same dataclass is filled from YAML and from flags."""

    optimizer: Optimizer = "adam"  # optimizer
    lr: float = 1e-4  # learning rate
    steps: int = 40  # optimizer steps
    batch: int = 4  # sequences per micro-batch on each process
    seq_len: int = 64  # tokens per training sequence
    grad_clip: float = 1.0  # max global gradient norm, 0 = off
    weight_decay: float = 0.0  # weight decay: decoupled for adamw, L2 for sgd/adam
    seed: int = 0  # random seed for batches, dropout and sampling
    precision: Precision = "fp32"  # fp32, or bf16/fp16 autocast with fp32 weights; fp16 needs a GPU; auto = bf16
    # where the hardware runs it natively (a GPU, or a CPU with AVX512-BF16/AMX), else fp32
    bf16: bool = False  # the same as --precision bf16 (a step ~1.4x faster on a CPU with native bf16; much slower
    # on one without, e.g. AVX2 only)
    device: Device = "auto"  # where to train; auto = cuda, mps, cpu
    grad_accum: int = 1  # micro-batches per optimizer step; global batch = batch x processes x N
    eval_every: int = 10  # measure R every N steps, 0 = off
    patience: int = 0  # early stop after N evaluations without a better val_loss, 0 = off
    save_every: int = 0  # write checkpoints/step-N/ into DIR.partial every N steps, 0 = only on Ctrl-C
    keep: int = 2  # newest checkpoints kept
    report_to: Reporter = "none"  # also log metrics through Accelerate's tracker into the run folder
    loss_chunk: int = DEFAULT_CHUNK  # rows per chunk of the output head fused with the loss, which never holds
    # (B*T, V) logits; 0 = dense logits
    attention: Attention = "auto"  # a Hugging Face model's attention while it trains: auto = eager on a CPU for
    # sequences of up to 128 tokens (faster there), else the model's own; model = leave it

    def check(self) -> None:
        """Raise ValueError with one clear line for any bad value."""
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        for name in ("lr", "steps", "batch", "seq_len", "grad_accum", "keep"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name.replace('_', '-')} must be positive, got {value!r}")
        if self.grad_clip < 0 or self.weight_decay < 0 or self.eval_every < 0 or self.patience < 0:
            raise ValueError("grad-clip, weight-decay, eval-every and patience must be >= 0")
        for name in ("save_every", "loss_chunk"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name, allowed in (
            ("precision", PRECISIONS),
            ("device", DEVICES),
            ("report_to", REPORTERS),
            ("attention", ATTENTIONS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name.replace('_', '-')} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )
        if self.bf16 and self.precision == "fp16":
            raise ValueError("--bf16 and --precision fp16 contradict each other")

    def resolved(self) -> TrainConfig:
        """A copy with the precision settled: --bf16 is precision bf16, auto is what the hardware runs natively
        (imports torch), and bf16 says whether it came out bf16."""
        from tokentilt.models.device import settle_precision  # imports torch: auto asks the hardware

        precision = settle_precision("bf16" if self.bf16 else self.precision, self.device)
        return dataclasses.replace(self, precision=precision, bf16=precision == "bf16")

    def global_batch(self, processes: int) -> int:
        return self.batch * processes * self.grad_accum


DEFAULT_LR = 2e-3  # the learning rate --lora uses unless --lr is given; the R it reaches, beside other
# learning rates, is measured in docs/training-engine.md (the LoRA table), not claimed here


@dataclass
class LoraArgs:
    """Where the change lives: every weight (lora off) or a LoRA adapter."""

    lora: bool = False  # train a LoRA adapter (PEFT) instead of every weight; writes adapter/ and model/ (merged)
    lora_r: int = 16  # LoRA rank
    lora_alpha: float = 32.0  # LoRA alpha; the update is scaled by alpha/r
    lora_dropout: float = 0.0  # dropout on the adapter's input
    lora_targets: str = (
        "all-linear"  # comma-separated module names, or all-linear = every linear layer of attention and MLP
    )

    def check(self) -> None:
        if not self.lora:
            return
        if not (isinstance(self.lora_r, int) and self.lora_r > 0):
            raise ValueError(f"lora-r must be a positive integer, got {self.lora_r!r}")
        if not self.lora_alpha > 0:
            raise ValueError(f"lora-alpha must be positive, got {self.lora_alpha!r}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora-dropout must be in [0, 1), got {self.lora_dropout!r}")
        if not self.targets():
            raise ValueError("lora-targets names no module")

    def targets(self) -> str | list[str]:
        if self.lora_targets.strip() == "all-linear":
            return "all-linear"
        return [t.strip() for t in self.lora_targets.split(",") if t.strip()]


def native_bf16() -> bool:
    """device.native_bf16() on the default device (imports torch when called, not when this module is imported:
    the course's configs ask it when an instance is made, and the CLI builds its help from instances that give
    bf16)."""
    from tokentilt.models import device

    return device.native_bf16()


AUDIT_CHANNELS = ("lens", "contrast", "words", "decomposition")  # audit v2's channels beside the lift


def parse_channels(spec: str) -> tuple[str, ...]:
    """--channels: "all", "none", or a comma list of AUDIT_CHANNELS -> the names, in AUDIT_CHANNELS' order."""
    spec = spec.strip().lower()
    if spec in ("all", ""):
        return AUDIT_CHANNELS
    if spec == "none":
        return ()
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in AUDIT_CHANNELS]
    if unknown:
        raise ValueError(
            f"unknown channel {unknown[0]!r}; use all, none, or a comma list of {', '.join(AUDIT_CHANNELS)}"
        )
    return tuple(n for n in AUDIT_CHANNELS if n in names)


@dataclass
class AuditOptions:
    """How an audit compares two models (audit/lift.py); the audit job's AuditConfig adds its output folder."""

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
    channels: str = "all"  # evidence channels beside the lift, each reported alone and then combined: all, none,
    # or a comma list of lens, contrast, words, decomposition

    def check(self) -> None:
        parse_channels(self.channels)
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
