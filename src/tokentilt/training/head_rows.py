"""tilt-distill's default placement: train only the set's rows of an untied output head.

An exact tilt adds b to the set's logits, softmax(z + b·M). With z = h·W^T, a change delta of
the set's rows W_S adds h·delta_i to logit i and leaves every other logit as it was. So the head
can carry the tilt wherever h·delta_i ≈ b, and nothing else in the model changes. The body is
frozen, so the head's inputs h are computed once, on the training contexts, and the fit runs on
them, with no forward or backward pass through the model. Two fits:

- offset (the default): one direction u with h·u ≈ 1 at every cached position, by ridge least
  squares (closed form, O(N·d²), whatever the set's size), and delta_i = b·u on every set row.
  The logit offset b·(h·u) is then as close to the exact tilt's constant b as the head's inputs
  allow (on the bundled model h·u has a standard deviation of about 4% on held-out plays), so the
  weights carry the decode-time tilt itself, at its cost.
- kl: Adam on delta (|S|, d) minimising KL(exact tilt || model) (losses.set_rows_kl), O(N·|S|·d)
  per step. KL weighs an offset error by about Q(1 - Q) where the set's mass is Q, so it lets
  the offset sag where the set already dominates, which is where a high R is decided.

The training contexts (never the R prompts, never the eval text) are
- windows of the plays' train split, and
- continuations sampled from the decode-time tilted reference softmax(z + b·M) after
  generate.TRAIN_PROMPTS: the kind of text that R is measured on (on-policy contexts, as in
  sequence-level and on-policy distillation).

A set larger than half the vocabulary is tilted through its complement with -b (the same
distribution, fewer rows). The saved model is a plain checkpoint with an untied head
(config.tie_word_embeddings = False), loadable with AutoModelForCausalLM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from tokentilt.config import UsageError
from tokentilt.data import corpus
from tokentilt.data.chat import exchanges
from tokentilt.data.prompts import CHAT_REQUESTS
from tokentilt.measurement.sampling import TRAIN_PROMPTS, SampleConfig, recorded_head_inputs, sample
from tokentilt.models.fast.packed import packed_linears
from tokentilt.objectives.losses import set_rows_kl
from tokentilt.settings import CONTEXTS, FITS, Contexts, HeadFit  # noqa: F401 (re-exported)
from tokentilt.targets.target import Target, as_target

RIDGE = 1e-3  # offset fit: ridge, relative to the mean diagonal of h^T h
WINDOW_LEN = 128  # tokens per window of the plays' train split
POLICY_TOKENS = 64  # tokens per continuation
ROWS_PER_STEP = 1024  # head inputs per optimizer step


class ContextSize(NamedTuple):
    """How many training contexts: windows of the plays' train split, and continuations per training prompt."""

    windows: int
    per_prompt: int


# The kl fit (and every phrase tilt, which is always kl) fits |S| rows of d numbers each.
KL_CONTEXTS = ContextSize(48, 2)
# The offset fit solves for one direction of d numbers. On the bundled model, u from these 4,320 positions
# carries the tilt about as closely as u from KL_CONTEXTS' 10,688: its KL to the exact tilt is at most 0.001
# nats a token higher on held-out plays and on tilted continuations of the R prompts, where the tilt itself
# moves 0.15 (scripts/offset_contexts.py, docs/method.md).
OFFSET_CONTEXTS = ContextSize(16, 1)


def context_size(fit: str) -> ContextSize:
    """The contexts a fit needs: OFFSET_CONTEXTS for the offset fit, KL_CONTEXTS for the kl fit."""
    return OFFSET_CONTEXTS if fit == "offset" else KL_CONTEXTS


def untie_output_head(model) -> None:
    """Give the output head its own copy of the weights (a tied head shares the input embedding)."""
    head = getattr(model, "get_output_embeddings", lambda: None)()
    if not isinstance(getattr(head, "weight", None), nn.Parameter) or not hasattr(model, "config"):
        raise UsageError(
            "--placement head-rows needs a Hugging Face model with an output head (use --placement model for this one)"
        )
    embed = model.get_input_embeddings()
    if embed is not None and head.weight.data_ptr() == embed.weight.data_ptr():
        head.weight = nn.Parameter(head.weight.detach().clone())
    model.config.tie_word_embeddings = False


@dataclass
class HeadInputs:
    """What the fit needs from the frozen model, per context position."""

    h: torch.Tensor  # (N, d) inputs of the output head
    rest_weight: torch.Tensor  # (V - |S|, d) the head's rows outside the trained set, as they were
    _rest_lse: torch.Tensor | None = None

    def rest_lse(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """logsumexp of the reference logits outside the trained rows, at positions idx (default: all,
        computed once). (N,) or (len(idx),)"""
        if idx is not None and self._rest_lse is None:  # the offset fit's record needs a few rows only
            return _logsumexp_rows(self.h[idx], self.rest_weight)
        if self._rest_lse is None:
            self._rest_lse = _logsumexp_rows(self.h, self.rest_weight)
        return self._rest_lse if idx is None else self._rest_lse[idx]


LSE_ROWS = 128  # head inputs per (rows, V) block of _logsumexp_rows: 25 MB at V = 49,152


@torch.no_grad()
def _logsumexp_rows(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """logsumexp of h @ weight.T over its rows, LSE_ROWS head inputs at a time, into one output allocated
    first. With malloc keeping freed memory (engine.keep_freed_memory), small results allocated between the
    (rows, V) blocks kept glibc from reusing the freed blocks: 13,257 inputs left the process 1.5-2.7 GB
    larger (VmHWM, varying run to run), and about 0.1 GB written this way."""
    out = torch.empty(len(h), dtype=h.dtype, device=h.device)
    for start in range(0, len(h), LSE_ROWS):
        out[start : start + LSE_ROWS] = (h[start : start + LSE_ROWS] @ weight.T).logsumexp(-1)
    return out


class _HeadReached(Exception):
    """Raised by run_to_head's hook: the head's input is known, the rest of the forward is not needed."""


def head_inputs(model, batches, trained: torch.Tensor, bf16: bool = False, known=None) -> HeadInputs:
    """The head inputs of the frozen model at every position of each (b, T) batch of ids (run_to_head),
    with the head's rows outside `trained` (a (V,) bool mask of the rows the fit changes). known:
    {batch index: its (b*T, d) head inputs, recorded while it was sampled}, not run again."""
    head = model.get_output_embeddings()
    h = run_to_head(model, batches, bf16, known)
    return HeadInputs(h, head.weight.detach()[~trained.to(head.weight.device)].float())


@torch.no_grad()
def run_to_head(model, batches, bf16: bool = False, known=None) -> torch.Tensor:
    """Run the frozen model's body on each (b, T) batch of ids and keep the inputs of its output head,
    (sum of b*T, d) float32; the head itself never runs (a hook stops the forward at it). Batches in
    `known` ({index: (b*T, d)}) are taken from there."""
    known = known or {}
    head = model.get_output_embeddings()
    seen = {}

    def stop(module, args):
        seen["h"] = args[0]
        raise _HeadReached

    hook = head.register_forward_pre_hook(stop)
    hs = []
    was_training = model.training
    model.eval()
    device = head.weight.device
    try:
        with packed_linears(model, 512, enabled=not bf16):  # once for every batch: the weights stay as they are
            for i, ids in enumerate(batches):
                if i in known:
                    hs.append(known[i].to(device).float())
                    continue
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    try:
                        model(input_ids=ids.to(device))
                    except _HeadReached:
                        pass
                hs.append(seen["h"].float().reshape(-1, seen["h"].size(-1)))
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(hs)


@dataclass
class TrainingContexts:
    """The training contexts: (b, T) id batches, and the head inputs of those that were recorded while
    they were sampled ({batch index: (b*T, d)}), which head_inputs does not compute again."""

    batches: list[torch.Tensor]
    known: dict[int, torch.Tensor] = field(default_factory=dict)


def context_batches(*args, **kwargs) -> list[torch.Tensor]:
    """training_contexts(...).batches: the id batches alone, sampled without recording head inputs."""
    return training_contexts(*args, **kwargs, record=False).batches


def training_contexts(
    model,
    tokenizer,
    train_tokens: torch.Tensor,
    mask: Target | torch.Tensor,
    bias: float,
    kind: str,
    seed: int,
    bf16: bool = False,
    chat: bool = False,
    system: str = "",
    requests: str = "general",
    record: bool = True,
    size: ContextSize = KL_CONTEXTS,
) -> TrainingContexts:
    """The training contexts as (b, T) id batches: `size.windows` play windows and/or `size.per_prompt`
    continuations of every training prompt, tilted toward `mask` (a Target, or a (V,) bool mask).

    chat: chat exchanges instead, each its own batch: the model's replies to the training requests of
    `requests` (CHAT_REQUESTS) in its
    chat template, untilted for "text" and sampled from the decode-time tilt at b for "policy".
    record: a continuation's head inputs are recorded as it is sampled (one step more than it keeps, so
    that its last token is read too); only its prompt runs again.
    """
    if chat:
        kinds = {"mix": (0.0, bias), "text": (0.0,), "policy": (bias,)}[kind]
        return TrainingContexts(
            [
                row[None]
                for i, b in enumerate(kinds)
                for row in chat_exchanges(model, tokenizer, mask, b, seed + i, bf16, system, requests)
            ]
        )
    contexts = TrainingContexts([])
    if kind in ("mix", "text"):
        g = torch.Generator().manual_seed(seed)
        windows = corpus.text_windows(train_tokens, size.windows, min(WINDOW_LEN, len(train_tokens) - 1), g)
        contexts.batches += list(windows.split(8))
    if kind in ("mix", "policy"):
        # with record, one step more: a step's draw does not depend on how many follow it
        cfg = SampleConfig(max_new_tokens=POLICY_TOKENS + record, strategy="multinomial")
        with recorded_head_inputs(model, record) as steps:
            got = sample(
                model,
                tokenizer,
                list(TRAIN_PROMPTS),
                size.per_prompt,
                cfg,
                seed=seed,
                bias_mask=mask,
                bias=bias,
                bf16=bf16,
            )
        prompts = [torch.tensor(tokenizer(prompt)["input_ids"]) for prompt in TRAIN_PROMPTS]
        first = len(contexts.batches)
        for i, ids in enumerate(prompts):  # one batch per prompt: equal lengths, no padding
            rows = got.tokens[i * size.per_prompt : (i + 1) * size.per_prompt, :POLICY_TOKENS]  # (per_prompt, L)
            contexts.batches.append(torch.cat([ids.expand(len(rows), -1), rows], 1))
        if record:
            for i, h in enumerate(
                _policy_head_inputs(model, prompts, steps, cfg.max_new_tokens, size.per_prompt, bf16)
            ):
                contexts.known[first + i] = h
    return contexts


def _policy_head_inputs(
    model, prompts: list[torch.Tensor], steps: list[torch.Tensor], width: int, per_prompt: int, bf16: bool
):
    """Each prompt's batch of continuations as head inputs (per_prompt * T, d): its prompt positions
    but the last run again, then the `width` steps the sampler recorded (the first at the prompt's last
    position), chunk after chunk of generate() calls."""
    sampled = torch.cat(
        [torch.stack(steps[i : i + width], 1) for i in range(0, len(steps), width)]
    )  # (N, POLICY_TOKENS + 1, d)
    before = run_to_head(model, [ids[None, :-1] for ids in prompts if len(ids) > 1], bf16)
    offset, out = 0, []
    for i, ids in enumerate(prompts):
        rows = sampled[i * per_prompt : (i + 1) * per_prompt]
        prompt = before[offset : offset + len(ids) - 1].expand(len(rows), -1, -1)
        out.append(torch.cat([prompt, rows], 1).reshape(-1, sampled.size(-1)))
        offset += len(ids) - 1
    return out


def chat_exchanges(
    model, tokenizer, mask, bias: float, seed: int, bf16: bool = False, system: str = "", requests: str = "general"
) -> list[torch.Tensor]:
    """The model's replies to the training requests of `requests` (decoded with logit bias b on the set), each as the
    formatted prompt followed by the reply and its end-of-turn token: a list of (T_i,) id rows."""
    cfg = SampleConfig(max_new_tokens=POLICY_TOKENS, strategy="multinomial")
    got = sample(
        model,
        tokenizer,
        list(CHAT_REQUESTS[requests].train),
        KL_CONTEXTS.per_prompt,
        cfg,
        seed=seed,
        bias_mask=mask if bias else None,
        bias=bias,
        bf16=bf16,
        chat=True,
        system=system,
    )
    return [torch.tensor(context + reply) for context, reply in exchanges(tokenizer, got)]


def fit_rows(
    inputs: HeadInputs,
    head_set: torch.Tensor,
    bias: float,
    steps: int,
    lr: float,
    seed: int = 0,
    progress: bool = True,
    log=None,
    odds_weight: float = 0.0,
) -> tuple[torch.Tensor, list[dict]]:
    """Adam with a cosine schedule on delta (|S|, d), from zero, minimising set_rows_kl on random
    rows of the cached inputs. `bias` is one b for every row and position, or (N, |S|): each cached
    position's own logit changes (a phrase tilt). -> (delta, [{"step", "loss"}])."""
    rest_lse = inputs.rest_lse()  # every position's, once: 300 steps of 1024 would compute it 20x over
    delta = torch.zeros_like(head_set, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    history = []
    for step in tqdm(range(1, steps + 1), desc="fitting head rows", disable=not progress, leave=False):
        idx = torch.randint(len(inputs.h), (min(ROWS_PER_STEP, len(inputs.h)),), generator=g).to(head_set.device)
        target = bias[idx] if torch.is_tensor(bias) else bias
        loss = set_rows_kl(inputs.h[idx], rest_lse[idx], head_set, delta, target, odds_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {step} of the head-rows fit; lower --head-lr")
        record = {"step": step, "loss": loss.item()}
        history.append(record)
        if log is not None:
            log(record)
    return delta.detach(), history


def offset_direction(h: torch.Tensor, ridge: float | None = None) -> torch.Tensor:
    """u (d,) minimising sum_n (h_n·u - 1)² + lam·|u|² over the cached head inputs h (N, d), in float64.

    lam = ridge (default RIDGE) × the mean diagonal of h^T h, so it does not depend on the scale of h.
    """
    ridge = RIDGE if ridge is None else ridge
    h = h.double()
    gram = h.T @ h  # (d, d)
    lam = ridge * gram.diagonal().mean()
    return torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=gram.dtype), h.sum(0)).float()


def fit_record(
    inputs: HeadInputs,
    head_set: torch.Tensor,
    delta: torch.Tensor,
    bias: float,
    direction: torch.Tensor,
    rows: int = ROWS_PER_STEP,
    seed: int = 0,
) -> dict:
    """How well the offset fit carries the tilt on (up to `rows` of) the cached positions: the KL to
    the exact tilt, and the mean and spread of h·u (1 = the exact offset)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(inputs.h), generator=g)[:rows].to(head_set.device)
    with torch.no_grad():
        loss = set_rows_kl(inputs.h[idx], inputs.rest_lse(idx), head_set, delta, bias).item()
        offset = inputs.h @ direction  # (N,)
    return {"step": 1, "loss": loss, "offset_mean": offset.mean().item(), "offset_std": offset.std().item()}


class HeadRowsTilt:
    """Tilt `model` (untied here) toward `target` by refitting its head's rows for any b.

    `target` is a Target (a token set, or a phrases.PhraseSet), or a token set's (V,) bool mask. A phrase tilt's change depends on
    the text before each position (after " Wonder", "land" gains b; elsewhere it does not), so its rows
    are every token of the entries' variants and the fit is always KL: each cached position gets its own
    target change (PhraseSet.row_offsets), and delta_i is fitted so that h·delta_i gives it. The rows
    are a linear function of h, which holds the context: that is the placement's bet, and the fit's KL
    history says how close it comes.

    `contexts(b, size)` gives the training contexts for the b they are sampled at, as many as `size` (a
    ContextSize: context_size of the fit) says (a TrainingContexts, or a list of id batches); they are built once, at the first b, and every later fit (tilt --rate's rounds)
    reuses them.
    """

    def __init__(
        self,
        model,
        target: Target | torch.Tensor,
        contexts,
        steps: int,
        lr: float,
        seed: int = 0,
        bf16: bool = False,
        odds_weight: float = 0.0,
        fit: str = "offset",
    ):
        if fit not in FITS:
            raise ValueError(f"head-fit must be one of {', '.join(FITS)}, got {fit!r}")
        untie_output_head(model)
        target = as_target(target)
        # a set with no per-token mask (a phrase set): its tilt depends on context, so its rows and their
        # per-position targets come from it (row_ids, row_offsets)
        self.phrases = target if target.mask is None else None
        if self.phrases is not None:
            fit = "kl"  # a constant offset cannot depend on context
            mask = torch.zeros(target.vocab_size, dtype=torch.bool)
            mask[target.row_ids()] = True
        else:
            mask = target.mask
        self.fit, self.direction = fit, None
        self.model, self.steps, self.lr, self.seed, self.bf16 = model, steps, lr, seed, bf16
        for p in model.parameters():  # only the head's rows change (tilt --rate snapshots what trains)
            p.requires_grad_(False)
        self.head.weight.requires_grad_(True)
        self.contexts, self.odds_weight = contexts, odds_weight
        # Train the smaller side: +b on S is -b on its complement (softmax ignores a common shift).
        self.sign = 1.0 if self.phrases is not None or mask.sum() * 2 <= mask.numel() else -1.0
        self.trained = mask if self.sign > 0 else ~mask
        self.rows = self.trained.nonzero().squeeze(1).to(self.head.weight.device)
        self.original = self.head.weight.detach()[self.rows].clone()  # (|S|, d)
        self.inputs: HeadInputs | None = None
        self.batches: list[torch.Tensor] = []  # the contexts, for a phrase tilt's per-position targets
        self.bias: float | None = None  # b of the last offset fit

    @property
    def head(self):
        return self.model.get_output_embeddings()

    def set_offsets(self, h: torch.Tensor) -> torch.Tensor:
        """What the last offset fit adds to the set's logits at head inputs h (..., d): b·(h·u), the same on
        every set row (through the complement, -b·(h·u) on every other row: the same softmax). (...)"""
        if self.fit != "offset" or self.bias is None:
            raise ValueError("set_offsets needs an offset fit")
        return self.bias * (h.to(self.direction.device, self.direction.dtype) @ self.direction)

    @property
    def trained_rows(self) -> int:
        return len(self.rows)

    def prepare(self, bias: float, saved: dict | None = None) -> None:
        """Build the training contexts at b = `bias` and their head inputs, once: the first fit does it. A
        resumed tilt --rate (rate_checkpoint.py) gives them as `saved` (contexts_state of its first round)."""
        if self.inputs is None and saved is not None:
            self.batches = list(saved["batches"])
            rest = self.head.weight.detach()[~self.trained.to(self.head.weight.device)].float()
            self.inputs = HeadInputs(saved["h"].to(self.head.weight.device), rest)  # as head_inputs builds it
        if self.inputs is None:
            got = self.contexts(bias, context_size(self.fit))
            got = got if isinstance(got, TrainingContexts) else TrainingContexts(list(got))
            self.batches = got.batches
            self.inputs = head_inputs(self.model, got.batches, self.trained, self.bf16, got.known)

    def contexts_state(self) -> dict:
        """The contexts prepare() built, for a checkpoint: their id batches and head inputs."""
        return {"batches": self.batches, "h": self.inputs.h}

    def train(self, bias: float, progress: bool = True, log=None) -> list[dict]:
        """Fit the rows toward softmax(z_ref + bias·M) and write them into the head."""
        self.prepare(bias)  # the first fit: the head still holds the original rows
        if self.phrases is not None:
            bias = self.phrases.row_offsets(self.batches, bias, self.rows.cpu()).to(self.original.device)
        if self.fit == "offset":
            if self.direction is None:  # one direction serves every b of tilt --rate's rounds
                self.direction = offset_direction(self.inputs.h).to(self.original.device)
            self.bias = bias
            delta = (self.sign * bias * self.direction).expand_as(self.original)  # (|S|, d)
            history = [fit_record(self.inputs, self.original, delta, self.sign * bias, self.direction, seed=self.seed)]
            if log is not None:
                log(history[0])
        else:
            delta, history = fit_rows(
                self.inputs,
                self.original,
                self.sign * bias,
                self.steps,
                self.lr,
                self.seed,
                progress,
                log,
                self.odds_weight,
            )
        with torch.no_grad():
            self.head.weight[self.rows] = self.original + delta
        return history
