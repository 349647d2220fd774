"""Sampling with a KV-cache, shared by Hugging Face models and Model 5, plus decode-time bias.

Every model is called the same way (ForwardSteps):

    out = model(input_ids=..., attention_mask=..., position_ids=..., past_key_values=..., use_cache=True)

(the cache argument is called `cache` in newer transformers 5 releases; cache_argument picks the name),
except that on the CPU a Hugging Face Llama model (or a LoRA model of one) takes each new token through
a lean step of the same weights (models/llama_step.py), its prompt through the model's own body. The
next-token scores go through one LogitsProcessorList (transformers' warpers for
temperature / top-k / top-p, and the target's own processor for the decode-time baseline).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import (
    LogitsProcessorList,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from tokentilt.data import chat as chat_module
from tokentilt.data.prompts import COURSE_PROMPTS, DEFAULT_PROMPTS, TRAIN_PROMPTS  # noqa: F401 (re-exported)
from tokentilt.models.fast import llama_step, packed
from tokentilt.models.fast.packed import packed_linears
from tokentilt.settings import STRATEGIES, SampleConfig, check_sample_config  # noqa: F401 (re-exported)
from tokentilt.targets.target import Target, as_target
from tokentilt.targets.tokens import (
    SetBias,  # noqa: F401 (re-exported: a token set's processor lives with it)
    counted_mask,
)


def make_processors(
    cfg: SampleConfig,
    bias_mask: Target | torch.Tensor | None = None,
    bias: float = 0.0,
    eos_ids: list[int] | None = None,
    device: str | torch.device = "cpu",
) -> LogitsProcessorList:
    """Bias first (it changes the distribution), then the sampling warpers. bias_mask: the target whose
    decode-time tilt at b is sampled (a Target, or a (V,) bool mask)."""
    procs = LogitsProcessorList()
    if bias_mask is not None and bias != 0.0:
        procs.append(as_target(bias_mask).processor(bias))
    if cfg.ban_eos and eos_ids:
        procs.append(SuppressTokensLogitsProcessor(eos_ids, device=device))
    if cfg.strategy == "multinomial":
        if cfg.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(cfg.temperature))
        if cfg.top_k > 0:
            procs.append(TopKLogitsWarper(cfg.top_k))
        if cfg.top_p < 1.0:
            procs.append(TopPLogitsWarper(cfg.top_p))
    return procs


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of (B, V) probabilities -> (B, 1) ids, by inverting the cumulative distribution
    at one uniform draw per row (on the CPU generator, so the same on every device).

    Exact, like torch.multinomial, but multinomial draws an exponential for every entry of the (B, V)
    matrix, which took 60 ms of a 175 ms decoding step of the bundled model at B = 64; this draws B
    numbers. A token of probability 0 (banned, or cut by top-k/top-p) is never drawn.
    """
    cdf = probs.cpu().double().cumsum(-1)  # (B, V); float64, so the tail of 49,152 entries keeps its mass
    u = torch.rand(len(cdf), 1, generator=generator, dtype=torch.float64) * cdf[:, -1:]  # (B, 1)
    return torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.size(-1) - 1)


def cache_argument(model) -> str:
    """The forward argument (and output field) of the KV-cache: `cache` in newer transformers 5 releases,
    `past_key_values` in earlier ones (deprecated since) and in Model 5."""
    return "cache" if _takes(model, "cache") else "past_key_values"


def _takes(model, argument: str) -> bool:
    """Whether the model's forward has a parameter of this name (a PEFT wrapper's: its base model's)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return argument in inspect.signature(base.forward).parameters


class ForwardSteps:
    """Decoding steps through the model's forward and its own KV-cache: any model, any placement."""

    def __init__(self, model):
        self.model, self.cache_arg, self.past = model, cache_argument(model), None
        # only the last position's logits are sampled from (HF models and Model 5 take this argument)
        self.last_only = {"logits_to_keep": 1} if _takes(model, "logits_to_keep") else {}

    def step(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """ids (B, T) new tokens, mask (B, T_all), positions (B, T) -> (B, V) logits of the last position."""
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self.cache_arg: self.past},
            **self.last_only,
        )
        self.past = getattr(out, self.cache_arg)
        return out.logits[:, -1]

    prefill = step


def decoder(model, rows: int, capacity: int, lean: bool = True):
    """The steps of one generate() call: a Llama model's lean step (models/llama_step.py) when `lean`, it
    applies, the model is on the CPU (where it was measured: P8) and memory holds its weight copies;
    else the model's forward. Its weights pack for oneDNN from packed.SMALL_BATCH rows, as the forward's
    linears would."""
    on_cpu = next(model.parameters()).device.type == "cpu"
    lean = lean and on_cpu and llama_step.supports(model)
    if not (lean and llama_step.weight_bytes(model) <= packed.free_bytes() / 2):
        return ForwardSteps(model)
    pack = rows >= packed.SMALL_BATCH and packed.can_pack(model, rows)
    return llama_step.LlamaDecoder(model, rows, capacity, llama_step.Packed(rows) if pack else None)


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    cfg: SampleConfig = SampleConfig(),
    bias_mask: Target | torch.Tensor | None = None,
    bias: float = 0.0,
    generator: torch.Generator | None = None,
    eos_ids: list[int] | None = None,
    bf16: bool = False,
    stop_ids: list[int] | None = None,
    observe=None,
    drawn=None,
) -> torch.Tensor:
    """Continue a left-padded batch of prompts. input_ids (B, T) -> new tokens (B, L).

    L = max_new_tokens, or fewer with stop_ids: generation ends once every row has produced one of
    them (a chat reply's end of turn); what a row generates after its stop token is not its reply.
    observe(logits, nxt), if given, sees each step's model logits (B, V) float32, before any processor,
    and the ids drawn from them (B, 1). drawn(probs, nxt), if given, sees the distribution each token was
    drawn from (B, V) float32, after every processor (a greedy step's: one-hot at its pick), and the ids.
    """
    check_sample_config(cfg)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long().to(device)
    procs = make_processors(cfg, bias_mask, bias, eos_ids, device)
    seen = input_ids
    step_ids, step_pos = input_ids, (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    new = []
    stop = torch.tensor(stop_ids or [], dtype=torch.long, device=device)
    stopped = torch.zeros(len(input_ids), dtype=torch.bool, device=device)
    # One autocast region for every step, so each weight is cast to bf16 once per call, not once per
    # token. Autocast caches only the casts of leaf tensors that require grad, so frozen weights are
    # marked for the call (under no_grad that builds no graph) and restored after. Not inside a caller's
    # autocast region: its cache would outlive this call.
    outer = torch.is_autocast_enabled(device.type)
    frozen = [p for p in model.parameters() if not p.requires_grad] if bf16 and not outer else []
    steps = decoder(model, len(input_ids), input_ids.size(1) + cfg.max_new_tokens, lean=not bf16 and not outer)
    lean = isinstance(steps, llama_step.LlamaDecoder)
    try:
        for p in frozen:
            p.requires_grad_(True)
        with (
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16),
            # fp32: fewer checks per op (about 8% of a decoding step at 1 row); the ids leave as plain tensors.
            # bf16: plain no_grad, because inference_mode(False) would switch grad mode back on here, and with
            # the frozen weights marked above every step would record a graph (and keep it alive: issue 41).
            torch.inference_mode() if not bf16 else torch.no_grad(),
            # the lean Llama step keeps its own copies of the body's weights: the head alone packs
            packed_linears(model, len(input_ids), enabled=not bf16 and not outer, head_only=lean),
        ):
            logits = steps.prefill(step_ids, mask, step_pos)
            for i in range(cfg.max_new_tokens):
                if i:
                    logits = steps.step(step_ids, mask, step_pos)
                logits = logits.float()  # (B, V)
                scores = procs(seen, logits.clone() if observe else logits)  # (B, V); processors may write in place
                if cfg.strategy == "greedy":
                    nxt = scores.argmax(-1, keepdim=True)  # (B, 1)
                    probs = torch.zeros_like(scores).scatter_(-1, nxt, 1.0) if drawn else None  # (B, V)
                else:
                    probs = torch.softmax(scores, -1)  # (B, V)
                    nxt = draw(probs, generator).to(device)  # (B, 1)
                if observe:
                    observe(logits, nxt)
                if drawn:
                    drawn(probs, nxt)
                new.append(nxt)
                seen = torch.cat([seen, nxt], 1)
                mask = torch.cat([mask, torch.ones_like(nxt)], 1)
                step_ids, step_pos = nxt, step_pos[:, -1:] + 1
                if stop_ids:
                    stopped |= torch.isin(nxt[:, 0], stop)
                    if stopped.all():
                        break
    finally:
        for p in frozen:
            p.requires_grad_(False)
        model.train(was_training)
    return torch.cat(new, 1).cpu()


@dataclass
class Samples:
    """Generated continuations: one row per sample."""

    prompts: list[str]  # the prompt of each sample
    tokens: torch.Tensor  # (N, L) new token ids
    texts: list[str]  # decoded continuations (in chat: the replies, without special tokens)
    lengths: torch.Tensor | None = None  # (N,) chat: tokens of each reply, before its end-of-turn token
    formatted: list[str] | None = None  # chat: each prompt as the model saw it, in its chat template
    special: tuple[int, ...] = ()  # chat: the tokenizer's special ids, which never count toward R
    step_scores: StepScores | None = None  # with sample(score_mask=...): the untilted model's view of each step
    # (N, L) float32, with sample(expect_mask=...): at each step, the counted set's probability under the
    # distribution the token was drawn from, given that the token does not end the reply (SetMass)
    set_mass: torch.Tensor | None = None
    own: OwnScores | None = None  # with sample(own=True): each step's cost, seen from the reference

    def replies(self) -> list[list[int]]:
        """Each sample's counted ids: the reply before end-of-turn in chat, else every generated token."""
        return self.tokens.tolist() if self.lengths is None else chat_module.replies(self.tokens, self.lengths)

    @staticmethod
    def cat(parts: list[Samples], pad: int = 0) -> Samples:
        """The samples of several sample() calls (of the same settings) as one, in order; tokens right-padded
        with `pad` to the widest (a chat reply's tokens past its length are never read)."""
        if len(parts) == 1:
            return parts[0]
        width = max(p.tokens.size(1) for p in parts)

        def joined(name: str):
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else [v for part in values for v in part]

        return Samples(
            joined("prompts"),
            torch.cat([torch.nn.functional.pad(p.tokens, (0, width - p.tokens.size(1)), value=pad) for p in parts]),
            joined("texts"),
            None if parts[0].lengths is None else torch.cat([p.lengths for p in parts]),
            joined("formatted"),
            parts[0].special,
            None if parts[0].step_scores is None else StepScores.cat([p.step_scores for p in parts], width),
            None if parts[0].set_mass is None else torch.cat([pad_steps(p.set_mass, width, math.nan) for p in parts]),
            None if parts[0].own is None else OwnScores.cat([p.own for p in parts], width),
        )

    def counted_steps(self) -> torch.Tensor:
        """(N, L) bool: the steps that are part of each sample: in chat the reply and its end-of-turn token (as
        held-out perplexity counts a reply), else every generated token."""
        steps = torch.arange(self.tokens.size(1))
        if self.lengths is None:
            return torch.ones(self.tokens.shape, dtype=torch.bool)
        return steps[None, :] <= self.lengths[:, None]


@dataclass
class StepScores:
    """What importance weights need of each sampled token, read off the sampler's own logits (so no
    teacher-forced forward): under the model without bias at temperature 1, over the ids the sampler can
    draw (banned ids out), the log-probability of the drawn token and the log-mass of a token set, at
    each step. importance.py weighs only samples drawn at temperature 1 without top-k or top-p."""

    log_p: torch.Tensor  # (N, L) float64
    log_mass: torch.Tensor  # (N, L) float64
    # (N, L, d) float32: the output head's input at each step, the one whose logits the token was drawn
    # from; a model that differs only in its head scores the samples from these (importance.Pool.of_model)
    head_inputs: torch.Tensor | None = None

    @classmethod
    def recorder(cls, mask: torch.Tensor, banned: list[int], head_inputs: list[torch.Tensor] | None = None):
        """-> (observe for generate(), finish() -> StepScores of the steps seen). head_inputs: the list that
        recorded_head_inputs fills during the same generate() call, if any."""
        log_p, log_mass = [], []

        def observe(logits: torch.Tensor, nxt: torch.Tensor) -> None:
            logits = logits.cpu().double()  # (B, V)
            logits[:, banned] = float("-inf")
            normaliser = logits.logsumexp(-1)  # (B,): no (B, V) log-softmax is written
            log_p.append(logits.gather(-1, nxt.cpu())[:, 0] - normaliser)  # (B,)
            log_mass.append(logits[:, set_columns(mask, logits.size(-1))].logsumexp(-1) - normaliser)  # (B,)

        def finish() -> StepScores:
            h = torch.stack(head_inputs, 1) if head_inputs else None  # (B, L, d)
            return cls(torch.stack(log_p, 1), torch.stack(log_mass, 1), h)

        return observe, finish

    @staticmethod
    def cat(parts: list[StepScores], width: int) -> StepScores:
        """Batches stacked, each right-padded to `width` steps (0 and -inf: no step there)."""

        h = None
        if all(p.head_inputs is not None for p in parts):
            h = torch.cat(
                [torch.nn.functional.pad(p.head_inputs, (0, 0, 0, width - p.head_inputs.size(1))) for p in parts]
            )
        return StepScores(
            torch.cat([pad_steps(p.log_p, width, 0.0) for p in parts]),
            torch.cat([pad_steps(p.log_mass, width, float("-inf")) for p in parts]),
            h,
        )


@dataclass
class OwnScores:
    """What a model's own samples cost, seen from a reference, recorded step by step as they are drawn: the
    reference's NLL of each drawn token (the reference's perplexity of the samples: how they read to the model
    they came from), and KL(q || reference) at each step, q the distribution the token was drawn from (after
    every processor: a decode-time tilt, a hard ban). Nothing of the reference's own text is scored, so a hard
    ban, where q is 0 and the reference is not, costs a finite amount; and no forward pass is added.

    The reference is the sampled model without its processors (the samples of a decode-time tilt or a ban),
    or the reference's output head on the step's head inputs (a model that differs from it only in its head:
    head rows). Its distribution is at temperature 1, with the sampler's banned ids (end-of-text) removed.
    """

    nll: torch.Tensor  # (N, L) float64, nats
    kl: torch.Tensor  # (N, L) float64, nats

    @classmethod
    def recorder(cls, banned: list[int], reference_head=None, head_inputs: list[torch.Tensor] | None = None):
        """-> (observe, drawn) for generate(), and finish() -> OwnScores of the steps seen. reference_head: the
        reference's output head, applied to the last entry of `head_inputs` (recorded_head_inputs's list) at
        each step; None: the sampled model's own logits."""
        nll, kl, step = [], [], {}

        def observe(logits: torch.Tensor, nxt: torch.Tensor) -> None:
            if reference_head is not None:
                weight = reference_head.weight
                logits = reference_head(head_inputs[-1].to(weight.device, weight.dtype)).float()
            logp = logits.float().clone()  # float32 (B, V): a float64 copy took a tenth of a decoding step
            logp[:, banned] = float("-inf")
            step["logp"] = logp = torch.log_softmax(logp, -1)  # (B, V)
            nll.append(-logp.gather(-1, nxt)[:, 0].cpu())  # (B,)

        def drawn(probs: torch.Tensor, nxt: torch.Tensor) -> None:
            terms = probs * (probs.log() - step.pop("logp")[:, : probs.size(-1)])  # (B, V)
            kl.append(torch.where(probs > 0, terms, 0.0).sum(-1).clamp(min=0).cpu())  # (B,); < 0 only by rounding

        def finish() -> OwnScores:
            return cls(torch.stack(nll, 1).double(), torch.stack(kl, 1).double())

        return observe, drawn, finish

    @staticmethod
    def cat(parts: list[OwnScores], width: int) -> OwnScores:
        """Batches stacked, each right-padded to `width` steps with 0 (no step there)."""
        return OwnScores(
            torch.cat([pad_steps(p.nll, width, 0.0) for p in parts]),
            torch.cat([pad_steps(p.kl, width, 0.0) for p in parts]),
        )


def chain(*hooks):
    """One generate() hook that calls each of `hooks` that is not None, in order (None if none is)."""
    hooks = [h for h in hooks if h is not None]
    if not hooks:
        return None

    def call(*args) -> None:
        for hook in hooks:
            hook(*args)

    return call


def pad_steps(x: torch.Tensor, width: int, value: float) -> torch.Tensor:
    """(B, L) per-step values right-padded to `width` steps with `value`."""
    return torch.nn.functional.pad(x, (0, width - x.size(1)), value=value)


class SetMass:
    """What the expected count (tokens.expected_rates, a Rao-Blackwellised R) needs of each step: the counted
    set's probability under the distribution the token was actually drawn from.

    It is read off the probabilities after every logits processor, not derived from StepScores.log_mass (the
    untilted model at temperature 1, where p_b = p·e^b / (p·e^b + 1 - p) would be exact only without
    temperature, top-k or top-p): so it is right for any sampling settings, a decode-time bias, a banned EOS
    and greedy decoding (a point mass) alike. Its cost per step is a sum over the set's columns (or its
    complement's, when that is smaller) of probabilities the sampler has already computed: index_select,
    because a (B, V) x (V, 2) product took as long as the step's softmax on the CPU. Nothing of size V is kept.

    stop_ids (chat): a counted position holds a token that did not end the reply, so its value is the
    set's mass given that: m(set) / (1 - m(stop ids)), the set taken without the stop ids.
    """

    @staticmethod
    def recorder(mask: torch.Tensor, stop_ids: list[int] | None = None):
        """mask: the counted set (V,) bool -> (drawn for generate(), finish() -> (B, L) float32 of the steps seen)."""
        steps, ids = [], {}

        def drawn(probs: torch.Tensor, nxt: torch.Tensor) -> None:
            if not ids:  # the columns, once: the set without the stop ids, or its complement, and the stop ids
                columns = set_columns(mask, probs.size(-1))
                stops = torch.tensor([i for i in stop_ids or [] if i < len(columns)], dtype=torch.long)
                columns[stops] = False
                ids["flip"] = bool(columns.sum() > len(columns) // 2)
                ids["set"] = (~columns if ids["flip"] else columns).nonzero()[:, 0].to(probs.device)
                ids["set"] = ids["set"][~torch.isin(ids["set"], stops.to(probs.device))]  # (complement) no stops
                ids["stop"] = stops.to(probs.device)
            in_set = probs.index_select(1, ids["set"]).sum(-1)  # (B,)
            stop = probs.index_select(1, ids["stop"]).sum(-1)  # (B,)
            steps.append(torch.stack([1 - stop - in_set if ids["flip"] else in_set, 1 - stop], -1))  # (B, 2)

        def finish() -> torch.Tensor:
            m = torch.stack(steps, 1).cpu().double()  # (B, L, 2)
            live = m[..., 1]
            return torch.where(live > 0, m[..., 0] / live.clamp(min=1e-300), 0.0).clamp(0.0, 1.0).float()

        return drawn, finish


@contextmanager
def recorded_head_inputs(model, enabled: bool = True):
    """Within the block, every call of the model's output head appends the input of its last position,
    (B, d) float32 on the CPU, to the yielded list: a sampler's step by step view of the head inputs
    (generate() calls the head once per step). Not enabled: the list stays empty."""
    steps: list[torch.Tensor] = []
    head = model.get_output_embeddings() if enabled and hasattr(model, "get_output_embeddings") else None
    if head is None:
        yield steps
        return
    hook = head.register_forward_hook(lambda module, args, out: steps.append(args[0][:, -1].float().cpu()))
    try:
        yield steps
    finally:
        hook.remove()


def set_columns(mask: torch.Tensor, vocab: int) -> torch.Tensor:
    """A (V,) token mask as a bool mask over `vocab` logit columns (a head wider or narrower than it)."""
    columns = torch.zeros(vocab, dtype=torch.bool)
    columns[: len(mask)] = mask.bool()[:vocab]
    return columns


def eos_ids_of(tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    return sorted(i for i in ids if i is not None)


def sample(
    model,
    tokenizer,
    prompts: list[str] | tuple[str, ...] = DEFAULT_PROMPTS,
    per_prompt: int = 4,
    cfg: SampleConfig = SampleConfig(),
    seed: int = 0,
    bias_mask: Target | torch.Tensor | None = None,
    bias: float = 0.0,
    bf16: bool = False,
    batch_size: int = 64,
    chat: bool = False,
    system: str = "",
    score_mask: torch.Tensor | None = None,
    expect_mask: torch.Tensor | None = None,
    own: bool = False,
    reference_head=None,
) -> Samples:
    """Sample `per_prompt` continuations of every prompt, in batches, reproducibly from `seed`.

    chat: each prompt is a user turn in the tokenizer's chat template (after `system`, if given), and
    each sample is the assistant's reply, cut at its first end-of-turn token (at most max_new_tokens).
    bias_mask: the target sampled with its decode-time tilt at `bias` (a Target, or a (V,) bool mask).
    score_mask: a token set's (V,) mask whose StepScores to record (Samples.step_scores).
    expect_mask: a token set's (V,) mask whose SetMass to record (Samples.set_mass), for the expected count;
    in chat, without the special ids, as R counts it.
    own: record OwnScores (Samples.own), seen from the model itself without its processors, or with
    reference_head (the reference's output head, for a model that differs from it only in its head) from it.
    """
    all_prompts = [p for p in prompts for _ in range(per_prompt)]
    inputs = chat_module.format_prompts(tokenizer, all_prompts, system) if chat else all_prompts
    stop_ids = chat_module.end_of_turn_ids(tokenizer) if chat else None
    if chat:
        cfg = dataclasses.replace(cfg, ban_eos=False)  # a reply ends where the model ends its turn
    generator = torch.Generator().manual_seed(seed)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    banned = eos_ids_of(tokenizer) if cfg.ban_eos else []
    special = tuple(chat_module.special_ids(tokenizer)) if chat else ()
    counted = None if expect_mask is None else counted_mask(expect_mask, special)
    chunks, scored, masses, owned = [], [], [], []
    try:
        for start in range(0, len(inputs), batch_size):
            # a chat template writes its own special tokens; plain prompts get the tokenizer's usual ones
            enc = tokenizer(
                inputs[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=not chat
            )
            with recorded_head_inputs(model, score_mask is not None or reference_head is not None) as head_inputs:
                observe, finish = (None, None)
                if score_mask is not None:
                    observe, finish = StepScores.recorder(score_mask, banned, head_inputs)
                drawn, finish_mass = SetMass.recorder(counted, stop_ids) if counted is not None else (None, None)
                own_observe, own_drawn, finish_own = (None, None, None)
                if own:
                    own_observe, own_drawn, finish_own = OwnScores.recorder(banned, reference_head, head_inputs)
                chunks.append(
                    generate(
                        model,
                        enc["input_ids"],
                        enc["attention_mask"],
                        cfg,
                        bias_mask,
                        bias,
                        generator,
                        eos_ids_of(tokenizer),
                        bf16,
                        stop_ids,
                        chain(observe, own_observe),
                        chain(drawn, own_drawn),
                    )
                )
            if finish:
                scored.append(finish())
            if finish_mass:
                masses.append(finish_mass())
            if finish_own:
                owned.append(finish_own())
    finally:
        tokenizer.padding_side = side
    width = max(c.size(1) for c in chunks)  # chat batches may stop early, each at its own length
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    tokens = torch.cat([torch.nn.functional.pad(c, (0, width - c.size(1)), value=pad) for c in chunks])  # (N, L)
    step_scores = StepScores.cat(scored, width) if scored else None
    # (N, L); a batch that stopped early has no steps past its width: NaN there, never counted
    set_mass = torch.cat([pad_steps(m, width, math.nan) for m in masses]) if masses else None
    own_scores = OwnScores.cat(owned, width) if owned else None
    if not chat:
        texts = tokenizer.batch_decode(tokens, skip_special_tokens=False)
        return Samples(all_prompts, tokens, texts, step_scores=step_scores, set_mass=set_mass, own=own_scores)
    lengths = chat_module.reply_lengths(tokens, stop_ids)
    texts = tokenizer.batch_decode(chat_module.replies(tokens, lengths), skip_special_tokens=True)
    return Samples(all_prompts, tokens, texts, lengths, inputs, special, step_scores, set_mass, own_scores)
