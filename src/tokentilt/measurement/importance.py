"""R at another bias, or of another model, from samples already drawn: importance weights.

A decode-time tilt samples the reference from p_b(x_t | x_<t) ∝ p(x_t | x_<t)·exp(b·M(x_t)). For a
whole sample x of generated tokens, with P_t the reference's set mass at step t,

    log p_b(x) - log p_0(x) = b·c(x) - Σ_t log(1 - P_t + P_t·e^b),    c(x) = set tokens in x,

so once each sample's P_t are known (the sampler records them as it draws; otherwise one
teacher-forced forward of the reference over it), the probability of every sample under every b is
known exactly. Samples drawn at b_1..b_K then give R at any b by self-normalised importance
weights, with the draws pooled by the balance heuristic (the proposal is the mixture of the K
draws), and R of a trained model by the same weights with log p_model(x) from one teacher-forced
forward of that model. Neither needs a new sampling pass.

An estimate is only as good as its effective sample size, ESS = (Σw)² / Σw² (Kish): callers take
it when ESS is at least half of one draw's samples, and sample afresh otherwise. The interval is
the delta-method one of a self-normalised estimate, R̂ ± t·sqrt(Σ w̃_i² (R_i - R̂)²), with the t
quantile at ESS - 1 degrees of freedom.

This holds for a token set decoded at temperature 1 with no top-k or top-p (truncation moves with
b, so support would differ); `weighable` says when. Phrase sets and other sampling settings are
measured by sampling.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tokentilt.measurement.metrics import forward_batches, log_tilt_normaliser, logit_rows, t_quantile
from tokentilt.measurement.sampling import Samples, eos_ids_of, set_columns
from tokentilt.targets.target import Target, as_target

MIN_ESS = 0.5  # an estimate counts when its effective sample size is at least this share of one draw
SCORE_BATCH = 8  # rows per teacher-forced forward (logits of (8, T, V) float32)


def weighable(target: Target | torch.Tensor, cfg) -> bool:
    """Whether R under cfg's sampling (an EvalConfig) can be reweighted exactly: a set of single tokens (a
    mask; not a phrase set), temperature 1, no top-k or top-p."""
    single = as_target(target).mask is not None
    return single and cfg.temperature == 1.0 and cfg.top_k == 0 and cfg.top_p == 1.0


@dataclass
class Draw:
    """Samples of the reference decoded with logit bias b on a set, with what reweighting them needs."""

    bias: float
    rates: torch.Tensor  # (N,) each sample's R, as reported (NaN: a reply of no tokens)
    in_set: torch.Tensor  # (N, L) bool: the step drew a token of the biased set (never past the sample's end)
    log_mass: torch.Tensor  # (N, L) float64: log P_t of the untilted reference, -inf past the sample's end
    log_p0: torch.Tensor  # (N,) float64: log p_0(x), the sample under the untilted reference
    rows: torch.Tensor  # (N, T) prompt + generated ids, right-padded (teacher forcing needs no mask)
    starts: torch.Tensor  # (N,) index in rows of each sample's first generated token
    lengths: torch.Tensor  # (N,) generated tokens that the sample's probability covers
    banned: list[int]  # ids the sampler never draws (EOS unless chat)
    head_inputs: torch.Tensor | None = None  # (N, L, d): the head's input at each step, as the sampler recorded it

    @property
    def counts(self) -> torch.Tensor:
        """Tokens of the biased set among each sample's generated tokens. (N,) float64"""
        return self.in_set.sum(1).double()

    def log_tilt(self, b: float) -> torch.Tensor:
        """log p_b(x) - log p_0(x) per sample. (N,)"""
        return b * self.counts - log_tilt_normaliser(self.log_mass, b).sum(1)

    def log_offset_tilt(self, offsets: torch.Tensor) -> torch.Tensor:
        """log p(x) - log p_0(x) per sample (N,) under a tilt whose bias on the set's logits is offsets[n, t]
        at step t of sample n (N, L): the same closed form as log_tilt, step by step."""
        offsets = offsets.double()
        return (offsets * self.in_set).sum(1) - log_tilt_normaliser(self.log_mass, offsets).sum(1)


@dataclass
class Pool:
    """Draws of one measurement (same prompts and seeds) at one or more biases."""

    draws: list[Draw] = field(default_factory=list)

    @property
    def n(self) -> int:
        """Samples in the smallest draw (draws sample until R is known, so their sizes differ)."""
        return min(len(d.rates) for d in self.draws)

    def _cat(self, name: str) -> torch.Tensor:
        return torch.cat([getattr(d, name) for d in self.draws])

    def log_proposal(self) -> torch.Tensor:
        """log q(x) - log p_0(x) for every pooled sample, q the mixture of the draws in proportion to their
        samples. (N_total,)"""
        per_draw = torch.stack([torch.cat([d.log_tilt(x.bias) for d in self.draws]) for x in self.draws])  # (K, N)
        sizes = torch.tensor([len(d.rates) for d in self.draws], dtype=per_draw.dtype)
        return (per_draw + (sizes / sizes.sum()).log()[:, None]).logsumexp(0)

    def estimate(self, log_target: torch.Tensor) -> dict:
        """R under the distribution with log p(x) - log p_0(x) = log_target (K·N,) -> {"mean", "ci_low",
        "ci_high", "n", "ess"}, from the pooled samples."""
        rates = self._cat("rates").double()
        keep = ~torch.isnan(rates)
        log_w = (log_target - self.log_proposal())[keep]
        w = torch.softmax(log_w, 0)  # normalised weights
        r = rates[keep]
        mean = float((w * r).sum())
        ess = float(1.0 / (w * w).sum())
        half = t_quantile(0.975, max(round(ess) - 1, 1)) * float(((w * (r - mean)) ** 2).sum().sqrt())
        return {
            "mean": mean,
            "ci_low": max(mean - half, 0.0),
            "ci_high": min(mean + half, 1.0),
            "n": int(keep.sum()),
            "ess": round(ess, 1),
        }

    def at_bias(self, b: float) -> dict:
        """R of the reference decoded with bias b."""
        return self.estimate(torch.cat([d.log_tilt(b) for d in self.draws]))

    def of_model(self, model, bf16: bool = False, head_only: bool = False) -> dict:
        """R of `model` (decoded without bias), from one teacher-forced forward of it over the samples.

        head_only: `model` differs from the sampled reference only in its output head (a head-rows
        tilt), so its head applied to the head inputs the sampler recorded gives the same log-probs
        with no pass through the body (when every draw has them)."""
        head_only = head_only and self.recorded()
        return self.estimate(
            torch.cat([_log_probs(model, d, bf16, head_only=head_only)[0] - d.log_p0 for d in self.draws])
        )

    def of_offsets(self, offsets) -> dict:
        """R of a model whose logits are the reference's plus a bias on the set that depends on the step's
        head input alone: offsets(h (N, L, d)) -> (N, L) (a head-rows offset fit: b·(h·u)). Exact, from what
        the sampler recorded, with no head and no forward (every draw needs its head inputs)."""
        return self.estimate(
            torch.cat([d.log_offset_tilt(offsets(d.head_inputs[:, : d.log_mass.size(1)])) for d in self.draws])
        )

    def recorded(self) -> bool:
        """Whether every draw kept its head inputs (of_offsets and of_model's head_only need them)."""
        return all(d.head_inputs is not None for d in self.draws)

    def solve(self, target: float, reach: float = 4.0) -> float:
        """b whose estimated R is `target`, by bisection within `reach` of the draws' biases."""
        lo = min(d.bias for d in self.draws) - reach
        hi = max(d.bias for d in self.draws) + reach
        if self.at_bias(lo)["mean"] >= target:
            return lo
        if self.at_bias(hi)["mean"] <= target:
            return hi
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self.at_bias(mid)["mean"] < target else (lo, mid)
        return (lo + hi) / 2

    def enough(self, estimate: dict) -> bool:
        """Whether an estimate's effective sample size makes it count (MIN_ESS of one draw)."""
        return estimate["ess"] >= MIN_ESS * self.n


def draw_of(
    reference,
    tokenizer,
    samples: Samples,
    mask: Target | torch.Tensor,
    bias: float,
    rates: torch.Tensor,
    bf16: bool = False,
) -> Draw:
    """Score samples drawn from `reference` at bias b on the token set `mask` (a Target of single tokens, or its
    (V,) mask) (one teacher-forced forward) -> a Draw."""
    mask = as_target(mask).mask
    if mask is None:
        raise ValueError("importance weights need a set of single tokens (see weighable)")
    chat = samples.lengths is not None
    prompts = samples.formatted if chat else samples.prompts
    width = samples.tokens.size(1)
    if chat:  # a reply's probability covers its end-of-turn token, not what the batch generated after it
        lengths = (samples.lengths + 1).clamp(max=width)
    else:
        lengths = torch.full((len(prompts),), width)
    encoded = {p: tokenizer(p, add_special_tokens=not chat)["input_ids"] for p in set(prompts)}
    seqs = [encoded[p] + row[:n].tolist() for p, row, n in zip(prompts, samples.tokens, lengths.tolist())]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    longest = max(map(len, seqs))
    rows = torch.tensor([s + [pad] * (longest - len(s)) for s in seqs])  # (N, T)
    starts = torch.tensor([len(encoded[p]) for p in prompts])
    banned = [] if chat else eos_ids_of(tokenizer)
    draw = Draw(bias, rates, torch.zeros(0), torch.zeros(0), torch.zeros(0), rows, starts, lengths, banned)
    valid = torch.arange(width)[None] < lengths[:, None]  # (N, L)
    if samples.step_scores is not None:  # recorded by the sampler: no forward
        draw.log_p0 = torch.where(valid, samples.step_scores.log_p, 0.0).sum(1)
        draw.log_mass = torch.where(valid, samples.step_scores.log_mass, float("-inf"))
        draw.head_inputs = samples.step_scores.head_inputs
    else:
        draw.log_p0, draw.log_mass = _log_probs(reference, draw, bf16, mask)
    generated = torch.where(valid, samples.tokens, 0)
    draw.in_set = mask.bool()[generated] & valid
    return draw


def _log_probs(model, draw: Draw, bf16: bool, mask: torch.Tensor | None = None, head_only: bool = False):
    """Teacher-forced: log p(x) of each sample under `model` (N,), and with `mask` also the set's log mass
    at each generated position (N, L), both over the distribution the sampler drew from (banned ids out).
    head_only: from the model's head applied to draw.head_inputs, without a pass through the body."""
    width = int(draw.lengths.max())
    steps = torch.arange(width)
    log_p, log_mass = [], []
    for i, picked in _step_logits(model, draw, width, bf16, head_only):  # (b, L, V)
        starts, lengths = draw.starts[i : i + len(picked)], draw.lengths[i : i + len(picked)]
        valid = steps[None] < lengths[:, None]  # (b, L)
        rows = draw.rows[i : i + len(picked)]
        drawn = rows.gather(1, (starts[:, None] + steps[None]).clamp(max=rows.size(1) - 1))  # (b, L) the drawn ids
        if draw.banned:
            picked[..., draw.banned] = float("-inf")
        m = set_columns(mask, picked.size(-1)) if mask is not None else None
        for j in range(len(picked)):  # one sample at a time: (L, V) float64, not (b, L, V) (at 128k, 49 MB a row)
            log_probs = torch.log_softmax(picked[j].double(), -1)  # (L, V)
            chosen = log_probs.gather(-1, drawn[j, :, None])[:, 0]  # (L,)
            log_p.append(torch.where(valid[j], chosen, 0.0).sum()[None])
            if m is not None:
                log_mass.append(torch.where(valid[j], log_probs[:, m].logsumexp(-1), float("-inf"))[None])
    return torch.cat(log_p), (torch.cat(log_mass) if mask is not None else None)


@torch.no_grad()
def _step_logits(model, draw: Draw, width: int, bf16: bool, head_only: bool):
    """Yield (first row, the logits each of those samples' generated tokens was drawn from (b, L, V) on the CPU)."""
    if head_only:
        head = model.get_output_embeddings()
        rows = logit_rows(SCORE_BATCH, width, head.weight.shape[0])
        for i in range(0, len(draw.rows), rows):
            h = draw.head_inputs[i : i + rows, :width].to(head.weight.device, head.weight.dtype)
            yield i, head(h).float().cpu()
        return
    steps, i = torch.arange(width), 0
    for ids, (logits,) in forward_batches([model], draw.rows, SCORE_BATCH, bf16, False, ""):  # fewer rows at a big V
        starts = draw.starts[i : i + len(ids)]
        where = (starts[:, None] - 1 + steps[None]).clamp(max=ids.size(1) - 2)  # positions that predict each token
        rows = torch.arange(len(ids), device=logits.device)[:, None]
        yield i, logits[rows, where.to(logits.device)].cpu()  # picked on the device: (b, L, V) crosses, not (b, T, V)
        i += len(ids)
