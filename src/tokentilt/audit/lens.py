"""The activation-difference lens, and whether a set is raised everywhere (a tilt) or where it fits (a domain).

Lens (Minder et al. 2025, "Narrow finetuning leaves clearly readable traces in activation
differences"). A fine-tune that pushes a set of tokens from the body, not the head, writes into the
hidden state a direction that the unembedding W (V, d) maps onto the set, and it writes it in every
context, unrelated text included. So the mean difference of the model's and the reference's hidden
states over the first positions of many held-out windows, projected through the reference's W,
scores every token (V,): at the head's input (after each model's own final norm), and at a few
middle blocks passed through the reference's final norm first, as a logit lens does.

A token's score is read against the others': centred on the median and scaled by the MAD (a robust
z). The set named is the n most raised (or lowered) tokens, n in 1..MAX_SET, and the test asks whether
they stand further out than the n most raised tokens of a random direction: W u for u ~ N(0, I) is
what a generic change of the hidden state does, and it keeps the vocabulary's own structure (similar
tokens sit together in embedding space and move together under any change; the lift's null in
lift.py is the same). For each n, the mean robust z of the top n is standardised by its mean and
spread over the random directions; the best n gives the statistic, and its p-value is its rank among
the random directions' own best, Bonferroni over layers and directions. Unlike the lift's AUROC,
which is near 1 for any set at the top, this measures how far above the rest the set is raised: a
random direction also carries a cluster of similar tokens to the top, but not as far.

What it cannot see: a head-rows edit (the head's input does not move; the weight view names those
rows), and a set that no one direction of the hidden state raises alone, such as random ids: on the
bundled model the least-squares direction for 64 random ids lifts them to a median robust z of 3, among
thousands of others. A word class comes out with its neighbours (' France' with ' French', ' Paris'):
the lens names what the hidden state raised, which is more than the set planted.

Context dependence ("a tilt, not a domain"): the lift of a set's log-odds, logit P(S | ctx), model
minus reference, where the reference gives the set little mass (it does not belong there) against
where it gives it much (it fits). A logit bias b on the set adds exactly b to the log-odds at every
position, so the ratio low / high is 1; a fine-tune on text of the set's domain raises the set where
it fits, so the ratio is small.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch import nn

from tokentilt.audit.channels import ChannelResult, Finding
from tokentilt.audit.features import cached_candidates, closest, file_key, jaccard
from tokentilt.measurement.evaluate import EvalConfig, held_out_windows
from tokentilt.measurement.metrics import forward_batches
from tokentilt.models.fast.packed import packed_linears
from tokentilt.settings import AuditOptions

LENS_WINDOWS = 32  # held-out windows the lens reads
LENS_POSITIONS = 16  # tokens per window: short, as Minder et al. read the first few tokens of unrelated text
LENS_DEPTHS = (0.5, 0.75)  # middle blocks read through the reference's final norm, as fractions of the depth
NULL_DIRECTIONS = 1000  # random directions behind the p-value: it is at least 1 / 2001 before Bonferroni
MAX_SET = 512  # the largest set the lens names
ROBUST_ROWS = 4096  # tokens a robust z reads its median and MAD on
NORM_NAMES = ("ln_f", "norm", "final_layer_norm")  # the final norm of GPT-2, Llama and others, GPT-NeoX
BLOCK_NAMES = ("h", "layers", "blocks")  # the list of decoder blocks


# ---------------------------------------------------------------- hidden-state differences


def body_parts(model) -> tuple[nn.ModuleList, nn.Module]:
    """The decoder blocks and the final norm (GPT-2: transformer.h, transformer.ln_f; Llama: model.layers,
    model.norm): the first module list named like BLOCK_NAMES, and the first norm named like NORM_NAMES
    outside it."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    modules = list(base.named_modules())
    where, blocks = next(
        ((n, m) for n, m in modules if n.rsplit(".", 1)[-1] in BLOCK_NAMES and isinstance(m, nn.ModuleList)),
        (None, None),
    )
    norm = next(
        (m for n, m in modules if n.rsplit(".", 1)[-1] in NORM_NAMES and where and not n.startswith(where + ".")), None
    )
    if blocks is None or norm is None:
        raise ValueError(f"the lens cannot find the blocks and the final norm of {type(base).__name__}")
    return blocks, norm


class _HeadReached(Exception):
    """Raised by the head's pre-hook: its input is all the lens reads, so no logits are computed."""


@torch.no_grad()
def layer_means(model, windows: torch.Tensor, picks: list[int], norm: nn.Module, batch_size: int, bf16: bool):
    """Per window, the mean over its positions of the outputs of blocks `picks` passed through `norm`, and
    of the head's input: (L, W, d) float64, L = len(picks) + 1, the head's input last."""
    blocks, _ = body_parts(model)
    got: dict = {}

    def block_hook(i):
        def hook(module, args, out):
            h = out[0] if isinstance(out, tuple) else out  # (b, T, d)
            got[i] = norm(h.to(next(norm.parameters()).device)).double().mean(1).cpu()  # (b, d)

        return hook

    def head_hook(module, args):
        got["head"] = args[0].double().mean(1).cpu()  # (b, d)
        raise _HeadReached

    hooks = [blocks[i].register_forward_hook(block_hook(i)) for i in picks]
    hooks.append(model.get_output_embeddings().register_forward_pre_hook(head_hook))
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    out, training, packed = [], model.training, ExitStack()
    try:
        model.eval()
        packed.enter_context(packed_linears(blocks, batch_size * windows.size(1), enabled=not bf16))  # not the head
        for start in range(0, len(windows), batch_size):
            got.clear()
            try:
                with autocast:
                    model(input_ids=windows[start : start + batch_size].to(device))
            except _HeadReached:
                pass
            out.append(torch.stack([got[i] for i in picks] + [got["head"]]))  # (L, b, d)
    finally:
        packed.close()
        for h in hooks:
            h.remove()
        model.train(training)
    return torch.cat(out, 1)


def differences(model, reference, windows: torch.Tensor, depths=LENS_DEPTHS, batch_size: int = 32, bf16=False):
    """Per window, the mean hidden-state difference, model minus reference, at the blocks at `depths`
    (fractions of the depth) through the reference's final norm, and at the head's input (each model's own
    norm): -> (names (L,), (L, W, d) float64)."""
    blocks, norm = body_parts(reference)
    picks = sorted({min(len(blocks), max(1, round(f * len(blocks)))) - 1 for f in depths})
    mine = layer_means(model, windows, picks, norm, batch_size, bf16)
    theirs = layer_means(reference, windows, picks, norm, batch_size, bf16)
    return [f"block {i}" for i in picks] + ["head input"], mine - theirs


def lens_windows(tokenizer, cfg: AuditOptions, windows: int = LENS_WINDOWS, positions: int = LENS_POSITIONS):
    """(W, T): `windows` windows of `positions` tokens, spread evenly over the audit's held-out text."""
    eval_cfg = EvalConfig(eval_text=cfg.eval_text, eval_windows=windows, eval_seq_len=positions)
    return held_out_windows(tokenizer, eval_cfg)


# ---------------------------------------------------------------- scores and their null


def robust_z(scores: torch.Tensor, rows: int = ROBUST_ROWS) -> torch.Tensor:
    """Scores (V,) or (V, D), each column centred on its median and scaled by 1.4826 x its MAD, both read on
    every k-th token, about `rows` of them (the same tokens for every column: the null's thousand
    medians of 50k scores would cost more than the rest of the lens)."""
    sub = scores[:: max(1, len(scores) // rows)]
    centre = sub.median(0).values
    spread = (sub - centre).abs().median(0).values * 1.4826
    return (scores - centre) / spread.clamp(min=1e-12)


def top_means(z: torch.Tensor, most: int) -> torch.Tensor:
    """(V, D) -> (most, D): the mean of each column's n largest values, for n = 1..most."""
    top = z.topk(most, dim=0).values  # (most, D), largest first
    return top.cumsum(0) / torch.arange(1, most + 1, dtype=z.dtype)[:, None]


@dataclass
class LensNull:
    """What the n most raised tokens of random directions W u reach, u ~ N(0, I), either sign of u."""

    mean: torch.Tensor  # (most,) the mean robust z of the top n, averaged over the directions
    sd: torch.Tensor  # (most,) its spread over them
    best: torch.Tensor  # (2 draws,) each direction's best standardised top-n mean, over n


_NULLS: dict = {}  # (weight, draws, seed, most) -> LensNull: the same reference read again


def lens_null(weight: torch.Tensor, draws: int, seed: int, most: int = MAX_SET) -> LensNull:
    """The lens's null on the reference's unembedding weight (V, d), for `draws` random directions."""
    key = (weight.data_ptr(), tuple(weight.shape), float(weight.sum()), draws, seed, most)
    if key not in _NULLS:
        _NULLS.clear()
        g = torch.Generator().manual_seed(seed)
        parts = []
        for start in range(0, draws, 200):
            u = torch.randn(weight.shape[1], min(200, draws - start), generator=g)  # (d, c)
            z = robust_z(weight @ u)  # (V, c)
            parts += [top_means(z, most), top_means(-z, most)]
        t = torch.cat(parts, 1)  # (most, 2 draws)
        mean, sd = t.mean(1), t.std(1).clamp(min=1e-12)
        best = ((t - mean[:, None]) / sd[:, None]).max(0).values
        _NULLS[key] = LensNull(mean, sd, best)
    return _NULLS[key]


def read_set(score: torch.Tensor, null: LensNull, sign: float) -> tuple[torch.Tensor, float, float]:
    """The most raised (sign +1) or lowered (-1) tokens of a score (V,), and how far they stand out.

    The statistic is the best over n of the mean robust z of the n most raised tokens, standardised by
    the random directions' mean and spread for that n; its p-value is its rank among the random
    directions' own best (uncorrected); the set is the n most raised at that best n. -> (ids, statistic, p)
    """
    z = sign * robust_z(score.float())  # (V,)
    standard = (top_means(z[:, None], len(null.mean))[:, 0] - null.mean) / null.sd  # (most,)
    statistic = float(standard.max())
    n = int(standard.argmax()) + 1
    p = (1 + int((null.best >= statistic).sum())) / (len(null.best) + 1)
    return z.topk(n).indices, statistic, p


def lens_channel(
    model,
    reference,
    tokenizer,
    cfg: AuditOptions,
    texts: list[str],
    *,
    windows: torch.Tensor | None = None,
    family=None,
    depths=LENS_DEPTHS,
    draws: int = NULL_DIRECTIONS,
    batch_size: int = 32,
) -> ChannelResult:
    """The lens channel: one finding per layer read and direction, best first.

    windows: (W, T) token ids to read (default: lens_windows, 32 windows of 16 tokens of the held-out
    text); family: the audit's candidate table (features.cached_candidates), whose closest member by Jaccard
    labels each set. Finding.statistic is the named set's mean robust z standardised against the random
    directions' top sets of its size; p_value is Bonferroni-corrected over layers and directions.
    """
    start = time.perf_counter()
    weight = reference.get_output_embeddings().weight.detach().float().cpu()  # (V, d)
    vocab = weight.shape[0]
    texts = (list(texts) + ["\0"] * vocab)[:vocab]  # padded rows: no text, as the lift pads them
    if windows is None:
        windows = lens_windows(tokenizer, cfg)
    if family is None:
        family = cached_candidates(tuple(texts), tuple(file_key(w) for w in cfg.words), cfg.min_tokens, ())
    names, diff = differences(model, reference, windows, depths, batch_size, cfg.bf16)  # (L, W, d)
    null = lens_null(weight, draws, cfg.seed, min(MAX_SET, vocab))
    tests = 2 * len(names)
    found, sets = [], []
    for name, per_window in zip(names, diff):
        score = weight @ per_window.mean(0).float()  # (V,)
        halves = [weight @ per_window[k::2].mean(0).float() for k in (0, 1)]  # (V,) twice
        for sign, word, direction in ((1.0, "raised", "toward"), (-1.0, "lowered", "away")):
            ids, statistic, p = read_set(score, null, sign)
            mask = torch.zeros(vocab, dtype=torch.bool)
            mask[ids] = True
            rule, overlap = closest(family, mask)
            a, b = (torch.zeros(vocab, dtype=torch.bool) for _ in (0, 1))
            a[(sign * halves[0]).topk(len(ids)).indices] = True
            b[(sign * halves[1]).topk(len(ids)).indices] = True
            examples = ", ".join(repr(texts[i]) for i in ids[:6].tolist())
            selector = family.features[rule].selector
            label = f"{len(ids)} tokens {word} at the {name}: {examples}, ... (closest rule {selector}, Jaccard {overlap:.2f})"
            found.append(Finding(label, sorted(ids.tolist()), direction, statistic, min(1.0, tests * p)))
            sets.append(
                {
                    "layer": name,
                    "direction": direction,
                    "size": len(ids),
                    "rule": selector,
                    "rule_jaccard": round(overlap, 4),
                    "split_half_jaccard": round(jaccard(a, b), 4),  # the set of this size read on even vs odd windows
                    "p_uncorrected": p,
                }
            )
    order = sorted(range(len(found)), key=lambda i: (found[i].p_value, -found[i].statistic))
    return ChannelResult(
        channel="lens",
        stands_out=found[order[0]].p_value <= cfg.alpha,
        findings=[found[i] for i in order],
        seconds=time.perf_counter() - start,
        notes={
            "layers": names,
            "windows": len(windows),
            "positions": windows.size(1),
            "null_directions": draws,
            "tests": tests,
            "sets": [sets[i] for i in order],
        },
    )


# ---------------------------------------------------------------- a tilt, not a domain


def set_log_odds(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log P(S) - log P(not S) of a set mask (V,) bool at every position of logits (..., V): (...)."""
    inside = logits.masked_fill(~mask, float("-inf")).logsumexp(-1)
    outside = logits.masked_fill(mask, float("-inf")).logsumexp(-1)
    return inside - outside


def context_dependence(
    model,
    reference,
    windows: torch.Tensor,
    mask: torch.Tensor,
    *,
    share: float = 1 / 3,
    cut: float = 0.5,
    min_lift: float = 0.1,
    draws: int = 1000,
    seed: int = 0,
    batch_size: int = 4,
    bf16: bool = False,
    shown: int = 3,
) -> dict:
    """Is the set mask (V,) raised (or lowered) everywhere, or only where it fits?

    On every position of windows (W, T): the lift of the set's log-odds, model minus reference. `low`:
    the share of positions where the reference gives the set the least mass, `high`: where it gives the
    most. ratio = lift(low) / lift(high), with 95% percentile intervals from `draws` bootstrap
    resamples of the windows. verdict: "tilt" when the ratio's interval lies above `cut`, "domain" when
    below, else "unclear" (also when neither group's lift reaches `min_lift` nats).

    Also what the change comes to: "mass", the set's mean next-token probability on every position under each
    model and its change, with the same bootstrap's interval; and "shows", the `shown` positions of the low group
    whose log-odds moved most, as [window, position, lift, p_reference, p_model] (the prediction after that
    position's token).
    """
    model_odds, ref_odds = [], []
    for _, (lm, lr) in forward_batches([model, reference], windows, batch_size, bf16, False, ""):
        cols = mask.to(lm.device)
        model_odds.append(set_log_odds(lm, cols).cpu())  # (b, T)
        ref_odds.append(set_log_odds(lr, cols).cpu())
    m, r = torch.cat(model_odds).double(), torch.cat(ref_odds).double()  # (W, T)
    lift = m - r
    p_ref, p_model = torch.sigmoid(r), torch.sigmoid(m)  # (W, T): the set's mass under each
    moved = p_model - p_ref

    def groups(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # the low and high masks, lifts
        odds, up = r[rows].flatten(), lift[rows].flatten()
        low, high = odds <= odds.quantile(share), odds >= odds.quantile(1 - share)
        return low, high, up

    low, high, up = groups(torch.arange(len(windows)))
    g = torch.Generator().manual_seed(seed)
    boot = []
    for _ in range(draws):
        rows = torch.randint(len(windows), (len(windows),), generator=g)
        lo, hi, u = groups(rows)
        boot.append((u[lo].mean(), u[hi].mean(), moved[rows].mean()))
    boot = torch.tensor(boot)  # (draws, 3)
    ratios, diffs = boot[:, 0] / boot[:, 1], boot[:, 0] - boot[:, 1]

    def interval(x: torch.Tensor) -> list[float]:  # 95%, over the resamples where it is finite
        x = x[x.isfinite()]
        return [float(x.quantile(0.025)), float(x.quantile(0.975))] if len(x) else [float("nan")] * 2

    def group(keep: torch.Tensor, i: int) -> dict:
        return {
            "lift": float(up[keep].mean()),
            "lift_ci": interval(boot[:, i]),
            "positions": int(keep.sum()),
            "p_reference": float(p_ref.flatten()[keep].mean()),
            "p_model": float(p_model.flatten()[keep].mean()),
        }

    out = {"low": group(low, 0), "high": group(high, 1), "share": share, "cut": cut}
    out["ratio"] = out["low"]["lift"] / out["high"]["lift"] if out["high"]["lift"] else float("nan")
    out["ratio_ci"], out["difference"] = interval(ratios), out["low"]["lift"] - out["high"]["lift"]
    out["difference_ci"] = interval(diffs)
    out["mass"] = {
        "reference": float(p_ref.mean()),
        "model": float(p_model.mean()),
        "change": float(moved.mean()),
        "change_ci": interval(boot[:, 2]),
    }
    where = low.nonzero().squeeze(1)
    top = where[up[where].abs().argsort(descending=True)[:shown]].tolist()  # flat indices into (W, T)
    width = r.size(1)
    out["shows"] = [
        [i // width, i % width, float(up[i]), float(p_ref.flatten()[i]), float(p_model.flatten()[i])] for i in top
    ]
    if max(abs(out["low"]["lift"]), abs(out["high"]["lift"])) < min_lift:
        out["verdict"] = "unclear"
    elif out["ratio_ci"][0] > cut:
        out["verdict"] = "tilt"
    elif out["ratio_ci"][1] < cut:
        out["verdict"] = "domain"
    else:
        out["verdict"] = "unclear"
    return out
