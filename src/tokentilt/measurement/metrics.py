"""Metrics: R with an interval, perplexity, drift, distinct-n and repetition.

The metrics are pure functions of tensors. The model-driving helpers at the bottom only batch
windows through a model and feed the logits to those functions; they work for any model called
as ``model(input_ids=...)`` that returns an object with ``.logits``.
"""

from __future__ import annotations

import math
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from tokentilt.measurement.intervals import WindowCosts, window_sums
from tokentilt.models.fast.packed import packed_linears
from tokentilt.targets.target import Target, as_target
from tokentilt.targets.tokens import sample_rates  # noqa: F401 (re-exported: it lives with the token sets now)

# ---------------------------------------------------------------- R: its interval (per-sample R: Target.rates)


def t_quantile(p: float, df: int) -> float:
    """Quantile of Student's t distribution with integer df >= 1, e.g. t_quantile(0.975, 4) = 2.776.

    Exact to ~1e-12: bisection on the closed-form CDF for integer df (Abramowitz & Stegun 26.7.3-4),
    which writes P(|T| < t) as a finite series in theta = atan(t / sqrt(df)).
    """
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if int(df) != df or df < 1:
        raise ValueError(f"df must be a positive integer, got {df}")
    df = int(df)
    if p == 0.5:
        return 0.0
    two_sided = abs(2 * p - 1)  # P(|T| < t) for the t we want
    lo, hi = 0.0, math.pi / 2  # bisect on theta: the CDF is monotone in it
    for _ in range(100):
        mid = (lo + hi) / 2
        if _t_central_mass(mid, df) < two_sided:
            lo = mid
        else:
            hi = mid
    t = math.sqrt(df) * math.tan((lo + hi) / 2)
    return t if p > 0.5 else -t


def _t_central_mass(theta: float, df: int) -> float:
    """P(|T| < sqrt(df) tan(theta)) for Student's t with integer df (A&S 26.7.3, 26.7.4)."""
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 0:
        # sin(theta) * [1 + 1/2 c^2 + 1*3/(2*4) c^4 + ... up to c^(df-2)]
        k = np.arange(1, df // 2)  # term k multiplies the previous by (2k-1)/(2k) * c^2
        terms = np.cumprod((2 * k - 1) / (2 * k) * c2)
        return float(s * (1 + terms.sum()))
    # 2/pi * [theta + sin(theta) cos(theta) (1 + 2/3 c^2 + 2*4/(3*5) c^4 + ... up to c^(df-3))]
    if df == 1:
        return 2 * theta / math.pi
    k = np.arange(1, (df - 1) // 2)  # term k multiplies the previous by (2k)/(2k+1) * c^2
    terms = np.cumprod((2 * k) / (2 * k + 1) * c2)
    return float(2 / math.pi * (theta + s * math.sqrt(c2) * (1 + terms.sum())))


def mean_ci(values, confidence: float = 0.95) -> dict:
    """Mean and Student-t confidence interval over samples: {"mean", "ci_low", "ci_high", "n"}.

    Each sample's rate is one observation: tokens within a sample are correlated, so pooling them
    would overstate n. The interval is mean +- t_{(1+confidence)/2, n-1} * std / sqrt(n) with the
    unbiased std (n-1); the t quantile is computed exactly (see t_quantile), no scipy needed.
    When every value lies in [0, 1] (rates), the interval is clipped to [0, 1]. NaN values (samples
    with no tokens) are skipped. n = 1 gives ci_low = ci_high = mean.
    """
    x = np.asarray(torch.as_tensor(values, dtype=torch.float64).reshape(-1))
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        raise ValueError("mean_ci needs at least one (non-NaN) value")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    mean = float(x.mean())
    if n == 1:
        return {"mean": mean, "ci_low": mean, "ci_high": mean, "n": 1}
    half = t_quantile((1 + confidence) / 2, n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    low, high = mean - half, mean + half
    if x.min() >= 0 and x.max() <= 1:
        low, high = max(low, 0.0), min(high, 1.0)
    return {"mean": mean, "ci_low": low, "ci_high": high, "n": n}


def half_width(rate: dict) -> float:
    """The half-width of a mean_ci-style interval, its wider side (an interval clipped at 0 or 1 is not the
    narrower for it)."""
    return max(rate["mean"] - rate["ci_low"], rate["ci_high"] - rate["mean"])


# ---------------------------------------------------------------- perplexity and drift


def token_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Next-token NLL in nats: position t predicts token t+1. logits (B, T, V), ids (B, T) -> (B, T-1)."""
    shifted = logits[:, :-1].float()  # (B, T-1, V)
    targets = input_ids[:, 1:]  # (B, T-1)
    nll = F.cross_entropy(shifted.reshape(-1, shifted.size(-1)), targets.reshape(-1), reduction="none")
    return nll.view(targets.shape)


def perplexity_from_logits(logits: torch.Tensor, input_ids: torch.Tensor) -> float:
    """exp(mean next-token NLL). logits (B, T, V), ids (B, T)."""
    return math.exp(token_nll(logits, input_ids).mean().item())


def kl_per_token(ref_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(ref || model) in nats at every position, float32. (B, T, V), (B, T, V) -> (B, T).

    Tokens the reference gives probability 0 contribute 0 (even where the model gives 0 too).
    """
    ref_logp = F.log_softmax(ref_logits.float(), dim=-1)  # (B, T, V)
    logp = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    terms = ref_logp.exp() * (ref_logp - logp)  # (B, T, V)
    return torch.where(ref_logp > -math.inf, terms, 0.0).sum(-1)


# ---------------------------------------------------------------- degeneration


COLLAPSE_SHARE = 0.5  # held-out perplexity at or above this share of V counts as no better than uniform


def collapse_warnings(ppl_before: float, ppl_after: float, vocab_size: int) -> list[str]:
    """Warnings for a model whose held-out perplexity is near or above the vocabulary size V.

    Uniform guessing scores exactly V; a language model of any use scores orders of magnitude
    less (the bundled model: 71 against V = 49,152). Training that lands at >= V/2 has taken the
    model's knowledge of text away, even when every loss was finite.
    """
    if math.isfinite(ppl_after) and ppl_after < COLLAPSE_SHARE * vocab_size:
        return []
    return [
        f"held-out perplexity after training is {ppl_after:,.0f} (before: {ppl_before:,.0f}), near or above the "
        f"vocabulary size {vocab_size:,} that uniform guessing scores: the model no longer predicts text; "
        "a lower --lr or a --grad-clip avoids this"
    ]


def _as_lists(seqs) -> list[list[int]]:
    if isinstance(seqs, torch.Tensor):
        return [seqs.tolist()] if seqs.dim() == 1 else seqs.tolist()
    return [list(s) for s in seqs]


def _ngrams(seq: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]


def distinct_n(seqs, n: int) -> float:
    """Distinct-n: unique n-grams / all n-grams, pooled over every sample (a corpus-level count).

    seqs: list of id lists, or a (N, L) / (L,) LongTensor. 0.0 when no sample has n tokens.
    Example: [1, 2, 1, 2, 3] has distinct-1 = 3/5 and distinct-2 = 3/4.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = [g for s in _as_lists(seqs) for g in _ngrams(s, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(seqs, n: int = 4) -> float:
    """Share of n-grams that already occurred earlier in the same sample, pooled over samples.

    (repeated n-grams summed over samples) / (all n-grams summed over samples). An n-gram counts
    as repeated from its second occurrence on; samples never share history. 0.0 when there are no
    n-grams. Example, n=2: [1, 2, 1, 2, 1] has 2-grams 12 21 12 21, of which 2 repeat: 2/4.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    repeated = total = 0
    for s in _as_lists(seqs):
        seen: set[tuple[int, ...]] = set()
        for g in _ngrams(s, n):
            repeated += g in seen
            seen.add(g)
            total += 1
    return repeated / total if total else 0.0


# ---------------------------------------------------------------- driving a model


LOGITS_BYTES = 64 * 2**20  # float32 logits of one mini-batch at most: 2 windows of 128 at 49,152 tokens, 1 at 128k


def logit_rows(batch_size: int, positions: int, vocab: int, budget: int | None = None) -> int:
    """Rows of `positions` positions per mini-batch, at most batch_size, so that one (rows, T, V) float32
    logits tensor stays within `budget` bytes (at least 1 row): with a 128k vocabulary, 8 windows of 128
    would be 525 MB a model, and every log-softmax, exp and difference of them as much again."""
    budget = LOGITS_BYTES if budget is None else budget
    return max(1, min(batch_size, budget // max(1, positions * vocab * 4)))


def _vocab(model) -> int:
    """The output head's rows, or the config's vocabulary; 0 (no cap) for a model that has neither."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return head.weight.shape[0] if head is not None else getattr(getattr(model, "config", None), "vocab_size", 0)


def forward_batches(models, windows: torch.Tensor, batch_size: int, bf16: bool, progress: bool, desc: str):
    """Yield (ids, [logits of each model]) per mini-batch, under no_grad and eval mode.

    Each model's train/eval mode is restored afterwards, so this is safe inside a training loop.
    Logits come back as float32 on the models' device; ids live on the same device. A mini-batch has at
    most batch_size rows, fewer where the vocabulary is large (logit_rows).
    """
    if windows.dim() != 2 or windows.size(0) == 0:
        raise ValueError(f"windows must have shape (W, T) with W >= 1, got {tuple(windows.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch_size = logit_rows(batch_size, windows.size(1), max(_vocab(m) for m in models))
    was_training = [m.training for m in models]
    device = _device(models[0])
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    try:
        for m in models:
            m.eval()
        with torch.no_grad(), ExitStack() as packed:
            for m in models:
                packed.enter_context(packed_linears(m, batch_size * windows.size(1), enabled=not bf16))
            for start in tqdm(range(0, len(windows), batch_size), desc=desc, disable=not progress, leave=False):
                ids = windows[start : start + batch_size].to(device)  # (b, T)
                with autocast:
                    outs = [m(input_ids=ids).logits for m in models]
                yield ids, [o.float() for o in outs]  # each (b, T, V)
    finally:
        for m, training in zip(models, was_training):
            m.train(training)


@torch.no_grad()
def _head_batches(models, head_inputs: torch.Tensor, windows: torch.Tensor, batch_size: int):
    """forward_batches for models that share their body: each one's head on the (W, T, d) head inputs."""
    heads = [m.get_output_embeddings() for m in models]
    batch_size = logit_rows(batch_size, windows.size(1), max(h.weight.shape[0] for h in heads))
    for start in range(0, len(windows), batch_size):
        h = head_inputs[start : start + batch_size]
        yield windows[start : start + batch_size], [head(h.to(head.weight.device)).float() for head in heads]


def _device(model) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


@dataclass
class ReplyWindows:
    """Held-out chat exchanges: (W, T) ids, right-padded, and which tokens count.

    counted[w, t] marks a token of the assistant's reply (its end-of-turn token included): its
    prediction, at position t - 1, enters perplexity and drift. The template and the user's turn
    are context only. Plain (W, T) windows count every position.
    """

    ids: torch.Tensor  # (W, T)
    counted: torch.Tensor  # (W, T) bool

    def numel(self) -> int:
        return int(self.counted.sum())


def split_windows(windows) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(ids, counted): a ReplyWindows' two tensors, or plain windows with counted = None (every token)."""
    return (windows.ids, windows.counted) if isinstance(windows, ReplyWindows) else (windows, None)


def perplexity(
    model,
    windows,
    batch_size: int = 8,
    bias_mask: Target | torch.Tensor | None = None,
    bias: float = 0.0,
    bf16: bool = False,
    progress: bool = False,
    per_window: bool = False,
) -> float | tuple[float, WindowCosts]:
    """Held-out perplexity over (W, T) windows: exp of the mean next-token NLL over all W*(T-1) targets
    (over the reply tokens only, for ReplyWindows). per_window: (perplexity, its WindowCosts, with drift 0).

    With bias_mask (a Target, or a (V,) bool mask), the logits get its decode-time tilt at b before the
    softmax (+b on a token set): the perplexity of the decode-time biased distribution (the baseline a
    tilted model should beat).
    """
    ids_all, counted = split_windows(windows)
    target = as_target(bias_mask) if bias_mask is not None else None
    total, count, row, sums, counts = 0.0, 0, 0, [], []
    for ids, (logits,) in forward_batches([model], ids_all, batch_size, bf16, progress, "perplexity"):
        if target is not None:
            logits = target.tilt(logits, ids, bias)  # (b, T, V)
        nll = token_nll(logits, ids).double()  # (b, T-1)
        if counted is None:
            keep = torch.ones_like(nll, dtype=torch.bool)
            total, count = total + nll.sum().item(), count + nll.numel()
        else:
            keep = counted[row : row + len(ids), 1:].to(nll.device)  # (b, T-1): targets that are reply tokens
            total, count = total + nll[keep].sum().item(), count + int(keep.sum())
        sums.append(torch.where(keep, nll, 0.0).sum(1).cpu())  # (b,)
        counts.append(keep.sum(1).double().cpu())  # (b,)
        row += len(ids)
    if count == 0:
        raise ValueError("perplexity needs windows of at least 2 tokens")
    if not per_window:
        return math.exp(total / count)
    targets = torch.cat(counts)
    # drift is 0 (the model is its own reference), over the positions drift() counts: all T of a plain window
    positions = torch.full_like(targets, float(ids_all.size(1))) if counted is None else targets.clone()
    return math.exp(total / count), WindowCosts(torch.cat(sums), targets, torch.zeros_like(targets), positions)


def drift(
    model,
    reference,
    windows,
    batch_size: int = 8,
    bf16: bool = False,
    progress: bool = False,
    bias_mask: Target | torch.Tensor | None = None,
    bias: float = 0.0,
) -> float:
    """Mean per-token KL(reference || model) in nats, over every position of the (W, T) windows
    (for ReplyWindows: over the positions that predict a reply token).

    With bias_mask, the model's logits get +bias on the set first (a decode-time tilt of it).
    When model is reference, each window is run once.
    """
    return perplexity_and_drift(model, reference, windows, batch_size, bf16, progress, bias_mask, bias)[1]


def perplexity_and_drift(
    model,
    reference,
    windows,
    batch_size: int = 8,
    bf16: bool = False,
    progress: bool = False,
    bias_mask: Target | torch.Tensor | None = None,
    bias: float = 0.0,
    head_inputs: torch.Tensor | None = None,
    per_window: bool = False,
) -> tuple[float, float] | tuple[float, float, WindowCosts]:
    """(perplexity(model, ...), drift(model, reference, ...)) with the same arguments, from one pass of
    each model over the windows. The perplexity is NaN when no window has two tokens. per_window: also the
    WindowCosts they are the totals of (for intervals).

    head_inputs: (W, T, d), the output head's inputs on the windows, when model and reference differ
    only in their heads: then each head runs on them and no body runs at all."""
    ids_all, counted = split_windows(windows)
    target = as_target(bias_mask) if bias_mask is not None else None
    models = [reference] if model is reference else [reference, model]
    total, nll_total, count, row = 0.0, 0.0, 0, 0
    sums = {"nll": [], "targets": [], "kl": [], "positions": []}  # per window, (b,) each per batch
    if head_inputs is None:
        batches = forward_batches(models, ids_all, batch_size, bf16, progress, "drift")
    else:
        batches = _head_batches(models, head_inputs, ids_all, batch_size)
    for ids, outs in batches:
        ref_logits, logits = outs[0], outs[-1]  # (b, T, V) each
        if target is not None:
            logits = target.tilt(logits, ids, bias)
        kl = kl_per_token(ref_logits, logits).double()  # (b, T)
        nll = token_nll(logits, ids).double()  # (b, T-1)
        if counted is None:
            keep = torch.ones_like(nll, dtype=torch.bool)
            total, count = total + kl.sum().item(), count + kl.numel()
            sums["kl"].append(kl.sum(1).cpu())
            sums["positions"].append(torch.full((len(ids),), float(kl.size(1)), dtype=torch.float64))
        else:
            keep = counted[row : row + len(ids), 1:].to(kl.device)  # (b, T-1)
            total, count = total + kl[:, :-1][keep].sum().item(), count + int(keep.sum())
            sums["kl"].append(torch.where(keep, kl[:, :-1], 0.0).sum(1).cpu())
            sums["positions"].append(keep.sum(1).double().cpu())
        nll_total += nll[keep].sum().item()
        sums["nll"].append(torch.where(keep, nll, 0.0).sum(1).cpu())
        sums["targets"].append(keep.sum(1).double().cpu())
        row += len(ids)
    targets = len(ids_all) * (ids_all.size(1) - 1) if counted is None else count
    ppl, kl_mean = (math.exp(nll_total / targets) if targets else math.nan), total / count
    if not per_window:
        return ppl, kl_mean
    return ppl, kl_mean, WindowCosts(**{k: torch.cat(v) for k, v in sums.items()})


def biased_drift(
    reference,
    windows: torch.Tensor,
    bias_mask: Target | torch.Tensor,
    bias: float,
    batch_size: int = 8,
    bf16: bool = False,
    progress: bool = False,
) -> float:
    """Mean per-token KL(reference || reference with +bias on the set): the drift of decode-time bias."""
    return drift(reference, reference, windows, batch_size, bf16, progress, bias_mask, bias)


# ---------------------------------------------------------------- a decode-time tilt's costs from one pass


def log_tilt_normaliser(log_mass: torch.Tensor, bias: float) -> torch.Tensor:
    """log(1 - P + P·e^b) per position from the set's log mass log P: the log of the softmax normaliser
    that a logit bias b on the set multiplies. Stable near P = 0 and P = 1; P = 0 (log P = -inf) -> 0."""
    log_mass = log_mass.clamp(max=-1e-12)
    log_rest = torch.log1p(-log_mass.exp())  # log(1 - P)
    return torch.logaddexp(log_rest, log_mass + bias)


@dataclass
class TiltCosts:
    """One forward pass of a model over held-out windows, kept per position, so that the held-out costs of
    the model decoded with any logit bias b on a token set need no further pass.

    With P the set's mass at a position and Z_b = 1 - P + P·e^b, the tilted distribution gives the next
    token y the log-probability log p(y) + b·[y in set] - log Z_b, and KL(p || p_b) = log Z_b - b·P. So
    perplexity and drift at every b follow from three numbers per position. The positions are those
    that perplexity() and drift() count (for ReplyWindows, the ones that predict a reply token).
    """

    nll: torch.Tensor  # (K,) float64: -log p(next token) at the positions perplexity counts
    hit: torch.Tensor  # (K,) float64: 1 where that next token is in the set
    next_mass: torch.Tensor  # (K,) float64: log P at those positions
    log_mass: torch.Tensor  # (M,) float64: log P at the positions drift counts
    head_inputs: torch.Tensor | None = None  # (W, T, d) float32: the output head's inputs at every position
    window: torch.Tensor | None = None  # (K,) long: the window of each of the K positions
    log_mass_window: torch.Tensor | None = None  # (M,) long: the window of each of the M positions
    windows: int = 0  # W

    def perplexity(self, bias: float = 0.0) -> float:
        """perplexity(model, windows, bias_mask=set, bias=b), without a forward pass."""
        return math.exp((self.nll - bias * self.hit + log_tilt_normaliser(self.next_mass, bias)).mean().item())

    def drift(self, bias: float) -> float:
        """biased_drift(model, windows, set, b): mean KL(p || p_b), without a forward pass."""
        if bias == 0:
            return 0.0
        return self._kl(bias).mean().item()

    def _kl(self, bias: float) -> torch.Tensor:
        """KL(p || p_b) at each of the M positions drift counts. (M,)"""
        return log_tilt_normaliser(self.log_mass, bias) - bias * self.log_mass.exp()

    def window_costs(self, bias: float = 0.0) -> WindowCosts:
        """The WindowCosts of this model decoded with bias b (for intervals), without a forward pass."""
        if self.window is None:
            raise ValueError("these TiltCosts keep no window of each position")
        nll = self.nll - bias * self.hit + log_tilt_normaliser(self.next_mass, bias)  # (K,)
        kl = self._kl(bias) if bias else torch.zeros_like(self.log_mass)  # (M,)
        ones, w = torch.ones_like, self.windows
        return WindowCosts(
            window_sums(nll, self.window, w),
            window_sums(ones(nll), self.window, w),
            window_sums(kl, self.log_mass_window, w),
            window_sums(ones(kl), self.log_mass_window, w),
        )


def tilt_costs(model, windows, mask: Target | torch.Tensor, batch_size: int = 8, bf16: bool = False) -> TiltCosts:
    """Run `model` once over the (W, T) windows (or ReplyWindows) and keep what TiltCosts needs for the
    token set `mask` (a Target of single tokens, or its (V,) mask), and the inputs of its output head."""
    mask = as_target(mask).mask
    if mask is None:
        raise ValueError("one-pass tilt costs need a set of single tokens (a phrase set's tilt depends on context)")
    ids_all, counted = split_windows(windows)
    nll, hit, log_mass, inputs, calls = [], [], [], [], 0
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    hook = head.register_forward_hook(lambda m, args, out: inputs.append(args[0].float())) if head else None
    try:
        for ids, (logits,) in forward_batches([model], ids_all, batch_size, bf16, False, "held-out costs"):
            calls += 1
            log_probs = F.log_softmax(logits, dim=-1)  # (b, T, V)
            log_mass.append(log_probs[..., mask.to(logits.device)].logsumexp(-1).double().cpu())  # (b, T)
            nll.append(-log_probs[:, :-1].gather(-1, ids[:, 1:, None])[..., 0].double().cpu())  # (b, T-1)
            hit.append(mask.to(ids.device)[ids[:, 1:]].double().cpu())  # (b, T-1)
    finally:
        if hook is not None:
            hook.remove()
    log_mass, nll, hit = torch.cat(log_mass), torch.cat(nll), torch.cat(hit)
    if nll.numel() == 0:
        raise ValueError("perplexity needs windows of at least 2 tokens")
    h = torch.cat(inputs) if inputs and len(inputs) == calls else None  # one head call per batch, or no plain head
    w = len(ids_all)
    rows = torch.arange(w)[:, None].expand(log_mass.shape)  # (W, T): the window of each position
    if counted is None:
        next_rows = rows[:, :-1].reshape(-1)
        return TiltCosts(
            nll.reshape(-1), hit.reshape(-1), log_mass[:, :-1].reshape(-1), log_mass.reshape(-1), h,
            next_rows, rows.reshape(-1), w,
        )  # fmt: skip
    keep = counted[:, 1:]  # (W, T-1): positions whose next token is a reply token
    before = log_mass[:, :-1][keep]
    kept_rows = rows[:, :-1][keep]
    return TiltCosts(nll[keep], hit[keep], before, before, h, kept_rows, kept_rows, w)
