"""Losses: pure functions and one registry of training objectives (the course's L1/L2: course/regression.py).

Every objective in OBJECTIVES has the signature

    fn(logits, input_ids, ctx) -> scalar Tensor

where ``logits`` is (B, T, V) from the model being trained, ``input_ids`` is the (B, T)
batch it saw, and ``ctx`` is an ObjectiveContext with the target set and settings.
The training step calls the objective in exactly one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from tokentilt.objectives.fused import Head
from tokentilt.settings import REFERENCE_OBJECTIVES, TEXT_OBJECTIVES, ObjectiveName  # noqa: F401 (re-exported)
from tokentilt.targets.tokens import alpha_beta_target, tilted_log_probs, uniform_target


def reduce_loss(x: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    if reduction == "none":
        return x
    raise ValueError(f"unknown reduction {reduction!r}")


# ---------------------------------------------------------------- token losses


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """CE of (N, V) logits against (N,) ids = NLL of log_softmax(logits)."""
    return nll(F.log_softmax(logits.float(), dim=-1), targets, reduction)


def nll(log_probs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Negative log-likelihood of (N, V) log-probabilities at (N,) target ids."""
    picked = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (N,)
    return reduce_loss(picked, reduction)


def next_token_ce(logits: torch.Tensor, input_ids: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Language-model loss: position t predicts token t+1. logits (B, T, V), ids (B, T)."""
    shifted = logits[:, :-1]  # (B, T-1, V) predictions for tokens 1..T-1
    return cross_entropy(shifted.reshape(-1, shifted.size(-1)), input_ids[:, 1:].reshape(-1), reduction)


def kl_to_target(logits: torch.Tensor, target: torch.Tensor, positions: str = "all") -> torch.Tensor:
    """KL(target || softmax(logits)) averaged over the rows that count.

    logits (B, T, V); target (V,) probabilities, or (B, T, V) / (N, V) for per-row targets.
    positions="last" keeps only the final position (the course's "like X"),
    "all" reshapes (B, T, V) -> (B*T, V) (the course's "X factor").
    This is F.kl_div(log_probs, target, reduction="batchmean"): first argument
    log-probabilities, second probabilities.
    """
    if positions == "last":
        logits = logits[:, -1:]  # (B, 1, V)
        if target.dim() == 3:
            target = target[:, -1:]
    elif positions != "all":
        raise ValueError(f"positions must be 'last' or 'all', got {positions!r}")
    log_probs = F.log_softmax(logits.float(), dim=-1).reshape(-1, logits.size(-1))  # (N, V)
    target = target.float().expand(logits.shape[:-1] + (logits.size(-1),)).reshape(-1, logits.size(-1))
    return _kl_rows(log_probs, target).mean()


def _kl_rows(log_probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-row KL(target || exp(log_probs)), with 0*log0 = 0. (N, V) -> (N,)"""
    return torch.xlogy(target, target).sum(-1) - (target * log_probs).sum(-1)


def kl_rows_from_log_targets(log_probs: torch.Tensor, log_target: torch.Tensor) -> torch.Tensor:
    """Per-row KL(exp(log_target) || exp(log_probs)). (..., V) -> (...)."""
    return (log_target.exp() * (log_target - log_probs)).sum(-1)


def set_log_mass(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log p(set) per row: logsumexp of log-probs over the set. (..., V) -> (...)."""
    log_probs = F.log_softmax(logits.float(), dim=-1)
    return log_probs[..., mask].logsumexp(-1)


def unlikelihood(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -log(1 - p(set)): pushes probability away from the set."""
    log_p = set_log_mass(logits, mask).clamp(max=-1e-6)  # (...)
    return -torch.log1p(-log_p.exp()).mean()


def set_rows_kl(
    h: torch.Tensor,
    rest_lse: torch.Tensor,
    head_set: torch.Tensor,
    delta: torch.Tensor,
    bias: float | torch.Tensor,
    odds_weight: float = 0.0,
) -> torch.Tensor:
    """Mean over rows of KL(softmax(z + b·M) || softmax(z')), where only the set's logits change.
    b is one number, or (N, |S|): a change of each row's own (a phrase tilt's, which depends on context).

    z = h·W^T are the reference logits and z' equal z except on the set S, where z'_S = h·(W_S + delta)^T.
    h (N, d) are the head's inputs, rest_lse (N,) = logsumexp of z outside S (fixed, so it is
    computed once), head_set (|S|, d) = W_S and delta (|S|, d) the trained change. With
    q = softmax(z + b·M), log q_i - log p'_i = lse' - lse_q outside S, so
    KL = sum_S q_S·(z_S + b - z'_S) + lse' - lse_q: O(N·|S|), never (N, V).

    odds_weight w adds w/2 · mean(e²), e = the error of the set's log-odds shift (an exact tilt
    moves them by b at every position). KL weighs e by about Q(1 - Q), so it hardly minds e where
    the set's mass Q is near 1, which is where a high R is decided.
    """
    z_set = h @ head_set.T  # (N, |S|) reference logits on the set
    shift = h @ delta.T  # (N, |S|) what the change adds to them
    lse_q = torch.logaddexp(rest_lse, torch.logsumexp(z_set + bias, -1))  # (N,)
    lse_p = torch.logaddexp(rest_lse, torch.logsumexp(z_set + shift, -1))  # (N,)
    q_set = (z_set + bias - lse_q[:, None]).exp()  # (N, |S|)
    kl = ((q_set * (bias - shift)).sum(-1) + lse_p - lse_q).mean()
    if not odds_weight:
        return kl
    error = torch.logsumexp(z_set + shift, -1) - torch.logsumexp(z_set + bias, -1)  # (N,)
    return kl + odds_weight / 2 * error.pow(2).mean()


# ---------------------------------------------------------------- objectives


@dataclass
class ObjectiveContext:
    """Everything an objective may need besides logits and input ids."""

    mask: torch.Tensor  # (V,) bool, the target set
    positions: str = "all"  # which positions count: "last" or "all"
    alpha: float = 10.0  # weight inside the set for two-level targets
    beta: float = 1.0  # weight outside the set
    bias: float = 0.0  # logit bias b for tilt-distill
    ce_weight: float = 1.0  # lambda for the mixed objective
    ref_logits: torch.Tensor | None = None  # (B, T, V) from the frozen reference, per batch
    ref_hidden: torch.Tensor | None = None  # (B, T, d): the reference's head inputs, for the fused form
    ref_head: Head | None = None  # the reference's output head, for the fused form
    cache: dict = field(default_factory=dict)  # targets built once per run
    phrases: object | None = None  # a phrases.PhraseSet, for phrase_distill


# the fixed (V,) targets, by name: built on first use and kept in ctx.cache for the run
_TARGETS = {
    "uniform": lambda ctx: uniform_target(ctx.mask),
    "alpha_beta": lambda ctx: alpha_beta_target(ctx.mask, ctx.alpha, ctx.beta),
}


def fixed_target(ctx, name: str, device) -> torch.Tensor:
    """The run's (V,) target `name`, built once (not on every step, as a setdefault would)."""
    if name not in ctx.cache:
        ctx.cache[name] = _TARGETS[name](ctx).to(device)
    return ctx.cache[name]


def _uniform(logits, input_ids, ctx):
    return kl_to_target(logits, fixed_target(ctx, "uniform", logits.device), ctx.positions)


def _alpha_beta(logits, input_ids, ctx):
    return kl_to_target(logits, fixed_target(ctx, "alpha_beta", logits.device), ctx.positions)


def _tilt_distill(logits, input_ids, ctx):
    if ctx.ref_logits is None:
        raise ValueError("tilt-distill needs reference logits")
    ref, out = ctx.ref_logits, logits
    if ctx.positions == "last":
        ref, out = ref[:, -1:], out[:, -1:]
    log_target = tilted_log_probs(ref, ctx.mask, ctx.bias)  # (B, T, V)
    log_probs = F.log_softmax(out.float(), dim=-1)  # (B, T, V)
    return kl_rows_from_log_targets(log_probs, log_target).mean()


def phrase_distill(logits, input_ids, ctx):
    """tilt-distill toward a phrase set's decode-time tilt, whose bias at each position depends on the
    tokens before it (phrases.PhraseSet.adjust): KL(softmax(adjust(z_ref)) || softmax(z)) per position."""
    if ctx.ref_logits is None or ctx.phrases is None:
        raise ValueError("phrase tilt-distill needs reference logits and a phrase set")
    log_target = F.log_softmax(ctx.phrases.adjust(ctx.ref_logits, input_ids, ctx.bias), dim=-1)  # (B, T, V)
    return kl_rows_from_log_targets(F.log_softmax(logits.float(), dim=-1), log_target).mean()


def next_token_objective(logits, input_ids, ctx):
    """Language modelling (pretraining Model 5): position t predicts token t+1."""
    return next_token_ce(logits, input_ids)


def _mixed(logits, input_ids, ctx):
    return _alpha_beta(logits, input_ids, ctx) + ctx.ce_weight * next_token_ce(logits, input_ids)


def _away(logits, input_ids, ctx):
    rows = logits[:, -1:] if ctx.positions == "last" else logits
    return unlikelihood(rows, ctx.mask)


Objective = Callable[[torch.Tensor, torch.Tensor, ObjectiveContext], torch.Tensor]

OBJECTIVES: dict[str, Objective] = {
    "kl-uniform": _uniform,  # KL to uniform over the set (course: "like X")
    "kl-alpha-beta": _alpha_beta,  # KL to alpha/beta two-level target (course: "X factor")
    "tilt-distill": _tilt_distill,  # KL to the reference's tilted distribution, on real text
    "mixed": _mixed,  # kl-alpha-beta + lambda * next-token CE on real text
    "away": _away,  # unlikelihood: -log(1 - p(set))
}


# ---------------------------------------------------------------- the same objectives, fused with the head
# fn(hidden, head, input_ids, ctx) -> scalar: hidden (B, T, d) are the output head's inputs and head a
# fused.Head. Each has the value and gradients of its dense twin above (tests/test_fused.py holds it
# to that) but never holds (B·T, V): the head's matmul runs a chunk of rows at a time in Head.loss,
# and row_loss(z, start, stop) returns the chunk's share of the loss.


def _rows(x: torch.Tensor, positions: str) -> torch.Tensor:
    """(B, T, ...) -> (N, ...): the final position of each sequence, or every position."""
    return x[:, -1] if positions == "last" else x.reshape(-1, *x.shape[2:])


def kl_to_fixed_target_rows(z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per-row KL(q || softmax(z)) for one (V,) target q, in closed form:
    sum q·log q - q·z + logsumexp(z)·sum q. Never expands q to (n, V). (n, V) -> (n,)"""
    q = q.to(z.dtype)
    return torch.xlogy(q, q).sum() - z @ q + z.logsumexp(-1) * q.sum()


def _fixed_target_fused(name: str):
    def objective(hidden, head, input_ids, ctx):
        q = fixed_target(ctx, name, hidden.device)  # (V,)
        rows = _rows(hidden, ctx.positions)  # (N, d)
        return head.loss(rows, lambda z, start, stop: kl_to_fixed_target_rows(z, q).sum() / len(rows))

    return objective


def _tilt_distill_fused(hidden, head, input_ids, ctx):
    if ctx.ref_hidden is None or ctx.ref_head is None:
        raise ValueError("tilt-distill needs the reference's hidden states and head")
    rows, ref = _rows(hidden, ctx.positions), _rows(ctx.ref_hidden, ctx.positions)  # (N, d) each

    def row_loss(z, start, stop):
        log_target = tilted_log_probs(ctx.ref_head.logits(ref[start:stop]), ctx.mask, ctx.bias)  # (c, V)
        return kl_rows_from_log_targets(F.log_softmax(z, -1), log_target).sum() / len(rows)

    return head.loss(rows, row_loss)


def _next_token_fused(hidden, head, input_ids, ctx):
    rows = hidden[:, :-1].reshape(-1, hidden.size(-1))  # (B·(T-1), d): position t predicts token t+1
    targets = input_ids[:, 1:].reshape(-1)
    return head.loss(rows, lambda z, start, stop: F.cross_entropy(z, targets[start:stop], reduction="sum") / len(rows))


def _mixed_fused(hidden, head, input_ids, ctx):
    q = fixed_target(ctx, "alpha_beta", hidden.device)  # (V,)
    B, T = input_ids.shape
    kl_weight = torch.zeros(B, T, device=hidden.device)  # 1/(rows that count) where the KL counts
    if ctx.positions == "last":
        kl_weight[:, -1] = 1 / B
    else:
        kl_weight[:] = 1 / (B * T)
    ce_weight = torch.zeros(B, T, device=hidden.device)  # the last position predicts nothing
    ce_weight[:, :-1] = ctx.ce_weight / (B * max(T - 1, 1))
    next_ids = torch.cat([input_ids[:, 1:], input_ids[:, :1]], 1).reshape(-1)  # (B·T,), last column unused
    kl_weight, ce_weight = kl_weight.reshape(-1), ce_weight.reshape(-1)

    def row_loss(z, start, stop):
        kl = kl_to_fixed_target_rows(z, q)  # (c,)
        ce = F.cross_entropy(z, next_ids[start:stop], reduction="none")  # (c,)
        return (kl_weight[start:stop] * kl).sum() + (ce_weight[start:stop] * ce).sum()

    return head.loss(hidden.reshape(B * T, -1), row_loss)


def _away_fused(hidden, head, input_ids, ctx):
    rows = _rows(hidden, ctx.positions)  # (N, d)
    return head.loss(rows, lambda z, start, stop: unlikelihood(z, ctx.mask) * (stop - start) / len(rows))


# dense objective -> its fused form; train() uses the fused form whenever the model's head allows it
FUSED: dict[Objective, Callable] = {
    _uniform: _fixed_target_fused("uniform"),
    _alpha_beta: _fixed_target_fused("alpha_beta"),
    _tilt_distill: _tilt_distill_fused,
    _mixed: _mixed_fused,
    _away: _away_fused,
    next_token_objective: _next_token_fused,
}
