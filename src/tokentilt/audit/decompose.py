"""Decomposition channel: per-context logit differences split into parts, each a token set with a context profile.

The lift (lift.py) averages the log-prob difference over contexts before it asks which tokens moved, so two
sets planted at once fold into one ranking, and a set raised everywhere looks like one raised only where its
domain's words fit. Here each of C contexts (positions drawn from the held-out windows) keeps its own

    d_c = log_softmax(z_model) - log_softmax(z_ref), centred on its median over the vocabulary,

and, after Diff Mining (ICLR 2026), the (C, V') matrix of them on the V' tokens that move most is factorised
by non-negative matrix factorisation (NMF): its positive part (tokens raised) and its negative part (tokens
lowered) separately, k components each, with an L1 penalty on the token profiles so that a set raised
everywhere and one raised in some contexts get a component each.

- **Split half.** NMF runs on the contexts of the even windows (half A); the odd windows' contexts (half B)
  are fitted to A's token profiles, which gives each a loading on each component.
- **Set.** A component's set is the top of its token profile on A, cut where it drops most (`cut`).
- **Statistic** (`separation`): on B, the differences averaged over B's contexts weighted by their loadings
  on the component; the set's weakest half against as many of the strongest tokens outside it, over the
  set's mean level. 1 is a cliff, as a logit bias makes; near 0 a smooth tail.
- **Null.** A change that acts only through the final hidden state moves a context's logits by W u (W the
  reference's output embeddings). For `null_draws` draws of k random directions u ~ N(0, I) the cut is read
  off +-W u, and each draw keeps its best of the 2k separations. A finding's p-value is the share of draws
  whose best reaches its statistic: a maximum over 2k components, so corrected for them. A set cut and
  measured on one vector is kinder to the null than split halves are to the data, so the test errs toward
  silence. Tokens that sit together in embedding space (digits, punctuation) move together under random
  directions too and raise the bar, as in lift.py's random-direction null.
- **Once.** The best significant set claims its tokens; the other components are read again without them,
  until the best left is not significant (NMF may split one set over components, or leak it into others).
- **Tilt or domain.** A planted tilt raises its set in every context, also where it does not belong; an
  honest fine-tune raises its domain's words where they fit. `share` is the fraction of contexts where the
  set's mean centred difference reaches half its 90th percentile over contexts: about 1 for a tilt, the share
  of contexts where the words fit for a domain. Only a significant finding with share >= tilt_share makes the
  channel stand out; a significant one below it is reported as domain-like.

Limits: two sets tilted the same way in the same contexts share one component, and the cut names their union
(or, with different biases, the one raised more). A set larger than max_n or than the V' moving tokens is
not cut whole. The contexts are held-out text only, not samples of the model.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from tokentilt.audit.channels import ChannelResult, Finding
from tokentilt.audit.features import cached_candidates, closest
from tokentilt.measurement.evaluate import EvalConfig, held_out_text, held_out_windows
from tokentilt.measurement.metrics import forward_batches
from tokentilt.settings import AuditOptions

# ---------------------------------------------------------------- per-context differences


def context_differences(
    model, reference, windows: torch.Tensor, cfg: AuditOptions, positions: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """The centred log-prob differences d (C, V) at up to `positions` positions of the windows (W, T), drawn
    at random (cfg.seed), and the window (C,) of each. Only the drawn rows are kept: C = 512 at 49,152
    tokens is 100 MB, whatever the number of windows."""
    n_windows, length = windows.shape
    g = torch.Generator().manual_seed(cfg.seed)
    flat = torch.randperm(n_windows * length, generator=g)[:positions].sort().values  # (C,) into (W * T)
    picked, window_of, offset = [], [], 0
    for _, (lm, lr) in forward_batches([model, reference], windows, cfg.batch_size, cfg.bf16, False, ""):
        b = lm.shape[0]
        here = flat[(flat >= offset * length) & (flat < (offset + b) * length)] - offset * length  # (c,)
        if len(here):
            w, t = here // length, here % length
            d = F.log_softmax(lm[w, t], -1) - F.log_softmax(lr[w, t], -1)  # (c, V)
            picked.append((d - d.median(-1, keepdim=True).values).cpu())
            window_of.append(w.cpu() + offset)
        offset += b
    return torch.cat(picked), torch.cat(window_of)


def moving(d: torch.Tensor, tokens: int) -> torch.Tensor:
    """The ids (V',) of the `tokens` tokens whose difference has the largest root mean square over the
    contexts of d (C, V): raised or lowered everywhere, or strongly in a few contexts."""
    return d.square().mean(0).topk(min(tokens, d.shape[1])).indices.sort().values


# ---------------------------------------------------------------- non-negative matrix factorisation

EPS = 1e-10  # keeps the multiplicative updates' denominators off zero


def nndsvd(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic start (C, k), (k, V) for nmf from the leading singular vectors of x (C, V) >= 0
    (Boutsidis & Gallopoulos 2008), zeros filled with x's mean so that multiplicative updates can move them."""
    u, s, vt = _svd(x, k)
    a, h = torch.zeros(x.shape[0], k, dtype=x.dtype), torch.zeros(k, x.shape[1], dtype=x.dtype)
    for j in range(min(k, len(s))):
        left, right = u[:, j], vt[j]
        if j == 0:
            left, right, scale = left.abs(), right.abs(), 1.0
        else:
            lp, ln, rp, rn = left.clamp(min=0), (-left).clamp(min=0), right.clamp(min=0), (-right).clamp(min=0)
            pos, neg = lp.norm() * rp.norm(), ln.norm() * rn.norm()
            left, right, scale = (lp, rp, pos) if pos >= neg else (ln, rn, neg)
            left, right = left / left.norm().clamp(min=EPS), right / right.norm().clamp(min=EPS)
        a[:, j] = (s[j] * scale).sqrt() * left
        h[j] = (s[j] * scale).sqrt() * right
    fill = float(x.mean())
    return a.masked_fill(a < EPS, fill), h.masked_fill(h < EPS, fill)


def _svd(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k leading singular triplets of x (C, V) from its smaller Gram matrix: (C, k), (k,), (k, V)."""
    if x.shape[0] > x.shape[1]:
        v, s, ut = _svd(x.T, k)
        return ut.T, s, v.T
    values, vectors = torch.linalg.eigh(x @ x.T)  # ascending
    s = values.flip(0)[:k].clamp(min=0).sqrt()
    u = vectors.flip(1)[:, :k]
    return u, s, (u.T @ x) / s.clamp(min=EPS)[:, None]


def nmf(
    x: torch.Tensor, k: int, iters: int = 200, sparsity: float = 0.0, start: tuple | None = None, fixed_h: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """x (C, V) >= 0 ~ a (C, k) @ h (k, V), both >= 0, by Lee & Seung's multiplicative updates of the squared
    error (without sparsity each update never raises it). start: (a, h) to begin from (default nndsvd);
    fixed_h: update a only.

    sparsity > 0 adds an L1 penalty on h of sparsity * mean(x) * C, each component's context loading scaled to
    peak at 1 (so h is in x's units). Without it the factors are not unique: rows holding a set raised
    everywhere plus one raised in some contexts are fitted as well by one component of both sets as by one of
    each, and plain updates often give the first; the penalty prefers the second, which has fewer loadings."""
    a, h = nndsvd(x, k) if start is None else (start[0].clone(), start[1].clone())
    penalty = sparsity * float(x.mean()) * x.shape[0]
    for _ in range(iters):
        a *= (x @ h.T) / (a @ (h @ h.T)).clamp(min=EPS)  # (C, k)
        if fixed_h:
            continue
        peak = a.amax(0).clamp(min=EPS)  # (k,)
        a, h = a / peak, h * peak[:, None]
        h *= (a.T @ x) / ((a.T @ a) @ h + penalty).clamp(min=EPS)  # (k, V)
    return a, h


# ---------------------------------------------------------------- sets, their separation, the null


RIVALS = 128  # at most this many of a set's weakest members are weighed against as many tokens just outside it


def _width(n: torch.Tensor | int):
    """How many of a set of n tokens' weakest members, and of its strongest rivals, a separation compares."""
    return torch.clamp((n + 1) // 2, max=RIVALS) if isinstance(n, torch.Tensor) else min((n + 1) // 2, RIVALS)


def cuts(profiles: torch.Tensor, min_n: int, max_n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each profile, a row of profiles (M, V): the set size n in [min_n, max_n] at which its top drops
    most, and the separation there (see separation) of its n top tokens against the tokens just below them.
    Returns (M,) long, (M,) float64."""
    n_max = max(min_n, min(max_n, profiles.shape[1] - _width(max_n)))
    x = profiles.topk(min(profiles.shape[1], n_max + _width(n_max)), dim=1).values.double()  # (M, L) descending
    sums = torch.cat([torch.zeros(len(x), 1, dtype=x.dtype), x.cumsum(1)], 1)  # sums[:, i] = x[:, :i].sum(1)
    n = torch.arange(min_n, n_max + 1)  # (N,)
    m = _width(n)
    mean, weakest, rivals = sums[:, n] / n, (sums[:, n] - sums[:, n - m]) / m, (sums[:, n + m] - sums[:, n]) / m
    sep = torch.where(mean > 0, (weakest - rivals.clamp(min=0)) / mean.clamp(min=EPS), torch.full_like(mean, -1.0))
    best, at = sep.max(1)  # (M,)
    return n[at], best


def cut(profile: torch.Tensor, min_n: int, max_n: int) -> tuple[int, float]:
    """cuts for one profile (V,): (n, separation)."""
    n, sep = cuts(profile[None], min_n, max_n)
    return int(n[0]), float(sep[0])


def separation(profile: torch.Tensor, tokens: torch.Tensor) -> float:
    """How far a set stands above the rest of a profile (V,): (the mean of its m weakest members - the mean of
    its m strongest rivals, the top tokens outside it, at least 0) / the set's mean, m = half the set, at most
    RIVALS; -1 when the set's mean is not positive. 1 is a cliff, as a logit bias on the set makes; near 0 a
    smooth tail, as a random shift of the hidden state makes. Weighing the weakest half, not the mean, keeps
    a set from being padded with unraised tokens; dividing by the set's level, not by the weakest, keeps a
    tail that falls to zero (as an L1 penalty makes NMF's profiles do) from looking like a cliff."""
    m = _width(len(tokens))
    inside = profile[tokens]
    mean, weakest = float(inside.mean()), float(inside.topk(m, largest=False).values.mean())
    rest = profile.clone()
    rest[tokens] = -torch.inf
    rivals = float(rest.topk(m).values.mean())
    return (weakest - max(rivals, 0.0)) / mean if mean > 0 else -1.0


_NULLS: dict = {}  # (weight, k, draws, seed, min_n, max_n) -> best separations: the same reference again


def null_separations(
    weight: torch.Tensor, k: int, draws: int, seed: int, min_n: int, max_n: int, chunk: int = 16
) -> torch.Tensor:
    """(draws,): for each draw of k random directions u ~ N(0, I), the best cut separation of +-W u over its
    2k profiles (W (V, d) the reference's output embeddings, each profile centred on its median)."""
    key = (weight.data_ptr(), tuple(weight.shape), float(weight.sum()), k, draws, seed, min_n, max_n)
    if key not in _NULLS:
        _NULLS.clear()
        g = torch.Generator().manual_seed(seed)
        u = torch.randn(draws, weight.shape[1], k, generator=g)  # (draws, d, k)
        best = []
        for start in range(0, draws, chunk):
            z = (weight.float() @ u[start : start + chunk].permute(1, 0, 2).flatten(1)).T  # (c k, V)
            z = z - z.median(1, keepdim=True).values
            sep = cuts(torch.cat([z, -z]), min_n, max_n)[1].view(2, -1, k)  # (2, c, k)
            best.append(sep.amax((0, 2)))
        _NULLS[key] = torch.cat(best).float()
    return _NULLS[key]


def context_share(d: torch.Tensor, tokens: torch.Tensor, sign: float) -> tuple[float, torch.Tensor]:
    """The share of contexts (rows of d (C, V)) where the set is raised (sign +1) or lowered (-1) by at least
    half its 90th-percentile level, and that level in each context (C,), nats."""
    level = sign * d[:, tokens].mean(1)  # (C,)
    top = float(level.quantile(0.9))
    return (float((level >= top / 2).float().mean()) if top > 0 else 0.0), level


# ---------------------------------------------------------------- the channel


@contextmanager
def one_thread():
    """Run small matrix products on one thread: with two, each of NMF's (256, 4096) x (4096, 8) products waits
    on the other thread, 10 to 100 times slower on a 2-core machine with other work on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def decompose(d: torch.Tensor, ids: torch.Tensor, halves: tuple, k: int, iters: int, sparsity: float) -> list[dict]:
    """Both signs of d (C, V) on the moving tokens ids (V'): NMF on half A's rows, and the loadings of half
    B's rows on the same token profiles. One dict per component: sign, its token profile on A (V',), and
    its profile on B (V,): the differences (times sign) averaged over B's contexts, weighted by their
    loadings on the component, in nats."""
    parts = []
    for sign in (1.0, -1.0):
        x = (sign * d[:, ids]).clamp(min=0)  # (C, V')
        xa, xb = x[halves[0]], x[halves[1]]
        _, h_a = nmf(xa, k, iters, sparsity)
        a_b, _ = nmf(xb, k, iters, start=(torch.full((len(xb), k), float(xb.mean())), h_a), fixed_h=True)
        for j in range(k):
            if float(h_a[j].max()) > 0 and float(a_b[:, j].sum()) > 0:
                profile_b = a_b[:, j] @ (sign * d[halves[1]]) / a_b[:, j].sum()  # (V,)
                parts.append({"sign": sign, "component": j, "profile_a": h_a[j], "profile_b": profile_b})
    return parts


def read_set(part: dict, ids: torch.Tensor, min_n: int, max_n: int, claimed: torch.Tensor) -> dict | None:
    """A component's set, read on A: the top n of its profile at the cut; measured on B: its separation there.
    Tokens claimed (V,) bool by a significant set of the same sign are neither in the set nor its rivals.
    None when fewer than 2 min_n tokens load on the component."""
    h = part["profile_a"].masked_fill(claimed[ids], 0.0)  # (V',)
    loaded = int((h > 0).sum())
    if loaded < 2 * min_n:
        return None
    n, sep_a = cut(h, min_n, min(max_n, loaded))
    tokens = ids[h.topk(n).indices]  # (n,) most loaded first
    sep_b = separation(part["profile_b"].masked_fill(claimed, -torch.inf), tokens)
    return {**part, "tokens": tokens, "separation_a": sep_a, "separation_b": sep_b}


def read_sets(parts: list[dict], ids: torch.Tensor, vocab: int, min_n: int, max_n: int, null, alpha: float):
    """Every component's set with its p-value against the null (draws,), best first. While the best is
    significant it claims its tokens, and the components after it are read again without them: a set that
    NMF splits over several components, or that leaks into a noise component's top, is named once."""
    claimed = {sign: torch.zeros(vocab, dtype=torch.bool) for sign in (1.0, -1.0)}
    done, left = [], list(parts)
    while left:
        sets = [read_set(p, ids, min_n, max_n, claimed[p["sign"]]) for p in left]
        left, sets = [p for p, s in zip(left, sets) if s is not None], [s for s in sets if s is not None]
        for s in sets:
            s["p_value"] = (1 + int((null >= s["separation_b"]).sum())) / (1 + len(null))
        if not sets:
            break
        best = max(range(len(sets)), key=lambda i: sets[i]["separation_b"])
        if sets[best]["p_value"] > alpha:  # the rest, as read now
            done += sorted(sets, key=lambda s: -s["separation_b"])
            break
        done.append(sets[best])
        claimed[sets[best]["sign"]][sets[best]["tokens"]] = True
        left.pop(best)
    return done


def decompose_channel(
    model,
    reference,
    tokenizer,
    cfg: AuditOptions,
    texts: list[str],
    *,
    windows: torch.Tensor | None = None,
    differences: tuple | None = None,
    family=None,
    max_windows: int = 8,
    components: int = 8,
    positions: int = 512,
    tokens: int = 4096,
    min_n: int = 5,
    max_n: int = 2048,
    iters: int = 200,
    sparsity: float = 0.1,
    null_draws: int = 200,
    tilt_share: float = 0.5,
) -> ChannelResult:
    """Decompose the per-context logit differences of model against reference on held-out windows.

    kw: windows (W, T), the audit's held-out windows (default: held_out_windows of cfg), of which at most
    max_windows, spread evenly, are run (the two forward passes are most of the channel's time); differences,
    (d (C, V), window (C,)) as context_differences returns them, gathered elsewhere (the lift's own forward
    pass), in place of the windows; family, the lift's candidate FeatureTable for the labels (default:
    features.cached_candidates of texts, cached); components (k per
    sign), positions (C sampled), tokens (V' kept), min_n/max_n (set sizes), iters (NMF updates), null_draws
    (draws of k random directions), tilt_share (the context share a finding needs to count as a tilt).
    Each finding's statistic is its set's separation on half B; p_value is against the random-direction null.
    """
    started = time.perf_counter()
    if differences is None and windows is None:
        eval_cfg = EvalConfig(eval_text=cfg.eval_text, eval_windows=cfg.eval_windows, eval_seq_len=cfg.eval_seq_len)
        windows = held_out_windows(tokenizer, eval_cfg, held_out_text(eval_cfg))
    if differences is None and len(windows) > max_windows:
        windows = windows[torch.linspace(0, len(windows) - 1, max_windows).round().long()]
    if family is None:
        family = cached_candidates(tuple(texts), (), cfg.min_tokens, ())
    if differences is None:
        differences = context_differences(model, reference, windows, cfg, positions)
    d, window_of = differences  # (C, V), (C,)
    ids = moving(d, tokens)  # (V',)
    halves = (window_of % 2 == 0, window_of % 2 == 1) if len(window_of.unique()) > 1 else _alternate(len(d))
    weight = reference.get_output_embeddings().weight.detach().float().cpu()  # (V, d)
    with one_thread():
        null = null_separations(weight, components, null_draws, cfg.seed, min_n, max_n)  # (draws,)
        parts = decompose(d, ids, halves, components, iters, sparsity)
        found = read_sets(parts, ids, d.shape[1], min_n, max_n, null, cfg.alpha)
    for f in found:
        f["share"], f["level"] = context_share(d, f["tokens"], f["sign"])
        f["tilt"] = f["p_value"] <= cfg.alpha and f["share"] >= tilt_share
    found.sort(key=lambda f: not f["tilt"])  # significant tilts first, each group in its order
    return ChannelResult(
        channel="decomposition",
        stands_out=any(f["tilt"] for f in found),
        findings=[_finding(f, texts, family, tilt_share) for f in found],
        seconds=round(time.perf_counter() - started, 2),
        notes={
            "contexts": len(d),
            "tokens_kept": len(ids),
            "components_per_sign": components,
            "null_best": round(float(null.max()), 4),
            "null_q99": round(float(null.quantile(0.99)), 4),
            "tilt_share": tilt_share,
            "components": [
                {
                    "direction": "toward" if f["sign"] > 0 else "away",
                    "size": len(f["tokens"]),
                    "separation_a": round(f["separation_a"], 4),
                    "separation_b": round(f["separation_b"], 4),
                    "share": round(f["share"], 4),
                }
                for f in found
            ],
        },
    )


def _alternate(c: int) -> tuple[torch.Tensor, torch.Tensor]:
    even = torch.arange(c) % 2 == 0
    return even, ~even


def _finding(f: dict, texts: list[str], family, tilt_share: float) -> Finding:
    """A set read off a component, labelled by the closest family candidate and its most loaded tokens."""
    mask = torch.zeros(len(texts), dtype=torch.bool)
    mask[f["tokens"]] = True
    j, overlap = closest(family, mask)
    kind = "tilt" if f["share"] >= tilt_share else "domain-like"
    first = ", ".join(repr(texts[i]) for i in f["tokens"].tolist()[:4])
    label = (
        f"{len(f['tokens'])} tokens ({first}, ...; rule ≈ {family.features[j].selector!r}, Jaccard {overlap:.2f}); "
        f"{kind}: in {f['share']:.0%} of contexts"
    )
    level = f["level"]
    return Finding(
        label=label,
        tokens=sorted(f["tokens"].tolist()),
        direction="toward" if f["sign"] > 0 else "away",
        statistic=round(f["separation_b"], 4),
        p_value=f["p_value"],
        examples=[f"mean centred difference {float(level.mean()):+.3f} nats over {len(level)} contexts"],
    )
