"""Audit: find which tokens a fine-tune tilted, by how much, and what they have in common, blind.

The signal is the per-token lift: log p_model(v|ctx) - log p_ref(v|ctx) for EVERY token v at every
position of two kinds of contexts, held-out text windows and continuations sampled from both
models. Averaged over contexts, a tilt toward a set S by logit bias b gives +b on S and a constant
elsewhere (the constant is -log Z, the same for every token at a position), so each context's lift
is centred on its median over the vocabulary and only the pattern across tokens remains.

Candidate features (features.py) are scored by how surely they separate high from low values
(a lower confidence bound of the AUROC) on two views of the lift: the lift itself, and its
unexplained part, the lift less its least-squares fit W u + c by the reference's output embeddings
W. A fine-tune that leaves the head alone changes each context's logits by W dh - dlogZ, so its
whole lift lies in that span; what is left is the head's own change, token by token. A tilt made
through the hidden state (LoRA on the blocks) shows only on the lift; one that a large generic
shift hides on the lift (unlikelihood raises every frequent token) shows on the unexplained part.

Each feature keeps its better score of the two. Whether the best "stands out" is decided against
two nulls: it must be significant against tokens assigned to features at random (Bonferroni over
all candidates and both views), and it must separate better than the best
candidate separates any of `null_draws` random directions u in the reference's output-embedding
space (lift = W u: the change a generic shift of the last hidden state makes). A new random
direction beats the best of N with probability 1/(N + 1), so the default N = 200 holds that null
to about alpha/2, as Bonferroni's two-sided critical value holds the first. This null keeps the
vocabulary's own structure: punctuation, digits or non-ASCII tokens sit together in embedding
space and move together under any change, so a feature that only follows that structure is not
evidence of a planted set. The unexplained part is held to the same bar, though a random
direction leaves nothing there: chance alone is too low a bar for it, since a generic fine-tune
that trains the (tied) head moves its rows a little by how often the tokens occur in its text (40
full steps on the plays put ' wh' at 0.5004 there, past chance at the 1% level).

The bound charges a small set for its uncertainty, so a planted set of 10 tokens (the digits)
can score below a larger set lifted along with it (tokens holding ')'), even when the 10 are the
10 most lifted tokens of the vocabulary. So the ranking is then sharpened: a candidate that is
significant on its own, in the same direction, nearly disjoint from the leader, and whose tokens'
lifts lie beyond the leader's own tokens' (a Mann-Whitney test between the two, Bonferroni over
the candidates compared) takes the lead: the lift peaks there, and the leader only follows it. A
subset of the leader never qualifies (it is not disjoint), so a sub-part of a planted set, lifted
a little more than the rest, does not displace the set.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from tokentilt.audit.evidence import combined_verdict, run_channels
from tokentilt.audit.features import (
    Feature,
    auroc,
    bonferroni_z,
    cached_candidates,
    closest,
    concat,
    file_key,
    jaccard,
    mask_auroc,
    separation,
    table_of,
)
from tokentilt.audit.weights import weight_view
from tokentilt.data.chat import CHAT_PROMPTS, check_template
from tokentilt.measurement.evaluate import EvalConfig, held_out_text, held_out_windows
from tokentilt.measurement.metrics import forward_batches, mean_ci, sample_rates, t_quantile
from tokentilt.measurement.sampling import DEFAULT_PROMPTS, SampleConfig, sample
from tokentilt.settings import AuditOptions
from tokentilt.targets.tokens import resolve, token_texts


@dataclass
class Lift:
    """Per-token lift, pooled over contexts. Each context (a window or a sample) is one group."""

    groups: torch.Tensor  # (G, V) each group's mean centred log-prob difference, nats
    sources: list[str]  # (G,) "text" or "samples"
    p_model: torch.Tensor  # (V,) mean probability under the model over all positions
    p_reference: torch.Tensor  # (V,) the same under the reference

    @property
    def mean(self) -> torch.Tensor:
        """(V,) lift, centred on its median: about 0 for untouched tokens."""
        m = self.groups.mean(0)
        return m - m.median()


@dataclass
class AuditResult:
    """What an audit found. `features` are ranked best first; `direction` is toward, away or none."""

    direction: str  # "toward" | "away" | "none" (nothing stands out)
    stands_out: bool
    verdict: str  # one sentence for people
    features: list[dict]  # best first: selector, label, kind, size, auroc, score, view, lift, lift_ci, mass_ratio, ...
    threshold: float  # the best score random logit directions reach
    z_critical: float  # Bonferroni critical value over all candidates on both views
    candidates: int  # number of candidate features scored
    tokens_up: list[dict]  # most lifted tokens
    tokens_down: list[dict]  # most lowered tokens
    truth: dict | None  # the --toward set's scores, when given
    samples: dict  # {"prompts", "model", "reference"} texts
    contexts: dict  # how many groups and positions of each kind
    weights: dict | None = None  # weights.WeightView.to_json(): which tensors and head rows changed
    lift: torch.Tensor | None = None  # (V,) centred lift (not written to JSON)
    unexplained: torch.Tensor | None = (
        None  # (V,) the part of it no shift of the final hidden state explains (nor this one)
    )
    top_mask: torch.Tensor | None = None  # (V,) bool, the top feature's tokens
    channels: dict = field(default_factory=dict)  # name -> channels.ChannelResult: each evidence channel alone
    combined: dict | None = None  # combine.combine: the verdict over the lift and the channels, context-gated

    def to_json(self) -> dict:
        channels = self.channels
        self.channels = {}
        try:
            out = asdict(self)
        finally:
            self.channels = channels
        out.pop("lift")
        out.pop("unexplained")
        out.pop("top_mask")
        out["channels"] = {name: result.to_json() for name, result in channels.items()}
        return out


# ---------------------------------------------------------------- measuring the lift


def _accumulate(pairs, groups: list, probs: list, positions=None) -> None:
    """Add each row's mean centred lift (over its positions) and both models' probabilities.

    pairs yields (logits_model, logits_ref) of shape (b, T, V); positions(i) gives the (b, T) bool
    mask of positions to use in batch i (all when None).
    """
    for i, (lm, lr) in enumerate(pairs):
        logp_m, logp_r = F.log_softmax(lm, -1), F.log_softmax(lr, -1)  # (b, T, V)
        keep = torch.ones(lm.shape[:2], dtype=torch.bool) if positions is None else positions(i)
        w = keep.to(lm.device).float().unsqueeze(-1)  # (b, T, 1)
        d = ((logp_m - logp_r) * w).sum(1) / w.sum(1).clamp(min=1)  # (b, V)
        groups.append((d - d.median(-1, keepdim=True).values).cpu())
        probs[0] += (logp_m.exp() * w).sum((0, 1)).double().cpu()
        probs[1] += (logp_r.exp() * w).sum((0, 1)).double().cpu()
        probs[2] += float(keep.sum())


def measure_lift(
    model, reference, tokenizer, windows: torch.Tensor, sampled: dict, cfg: AuditOptions, progress: bool = False
) -> Lift:
    """Lift on held-out windows (W, T) and on the continuations in sampled ({"model", "reference"}: Samples)."""
    vocab = reference.get_output_embeddings().weight.shape[0]
    groups, sources = [], []
    probs = [torch.zeros(vocab, dtype=torch.float64), torch.zeros(vocab, dtype=torch.float64), 0.0]
    text_pairs = (
        outs
        for _, outs in forward_batches(
            [model, reference], windows, cfg.batch_size, cfg.bf16, progress, "lift on held-out text"
        )
    )
    _accumulate(((m, r) for m, r in text_pairs), groups, probs)
    sources += ["text"] * len(windows)
    for who in ("model", "reference"):
        s = sampled[who]
        for prompt in dict.fromkeys(s.prompts):  # the samples of one prompt share its length
            rows = [i for i, p in enumerate(s.prompts) if p == prompt]
            if s.formatted:  # chat: the prompt in its template; only the reply's predictions count
                head = torch.tensor(tokenizer(s.formatted[rows[0]], add_special_tokens=False)["input_ids"])
            else:
                head = torch.tensor(tokenizer([prompt])["input_ids"][0], dtype=torch.long)
            ids = torch.cat([head.expand(len(rows), -1), s.tokens[rows]], 1)  # (r, P + N)
            keep = torch.zeros(ids.shape, dtype=torch.bool)
            keep[:, len(head) - 1 : -1] = True  # the positions whose predictions were sampled
            if s.lengths is not None:
                keep &= torch.arange(ids.size(1)) < len(head) - 1 + s.lengths[rows, None]  # (r, P + N)
            outs = (o for _, o in forward_batches([model, reference], ids, cfg.batch_size, cfg.bf16, False, ""))
            chunks = keep.split(cfg.batch_size)
            _accumulate(((m, r) for m, r in outs), groups, probs, positions=lambda i: chunks[i])
            sources += [f"samples of the {who}"] * len(rows)
    count = max(probs[2], 1.0)
    return Lift(torch.cat(groups).float(), sources, (probs[0] / count).float(), (probs[1] / count).float())


def share_change(model_samples, ref_samples, vocab: int) -> tuple[torch.Tensor, ...]:
    """Each token's share of generated tokens (of the replies, in chat): model minus reference, with a 95%
    Welch t half-width. (V,) x 3. A chat reply of no tokens is left out."""

    def shares(s):  # Samples -> (N, V): each sample's share of each token
        tokens = s.tokens
        lengths = torch.full((len(tokens),), tokens.size(1)) if s.lengths is None else s.lengths
        counted = (torch.arange(tokens.size(1)) < lengths[:, None]).float()  # (N, L)
        one_hot = torch.zeros(tokens.shape[0], vocab)
        one_hot.scatter_add_(1, tokens, counted)
        return (one_hot / lengths.clamp(min=1)[:, None])[lengths > 0]

    a, b = shares(model_samples), shares(ref_samples)
    se = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
    half = t_quantile(0.975, max(len(a) + len(b) - 2, 1)) * se
    return a.mean(0), b.mean(0), half


# ---------------------------------------------------------------- scoring


def score_features(values: torch.Tensor, table, z: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(AUROC, separation) of every feature against per-token values (V,): two (F,) float64."""
    area, se = auroc(values, table)
    return area, separation(area, se, z)


_NULLS: dict = {}  # (weight, table, z, draws, seed) -> threshold: the same reference audited again


def null_threshold(weight: torch.Tensor, table, z: float, draws: int, seed: int) -> float:
    """The best separation any candidate reaches on `draws` random logit directions W u, u ~ N(0, I)."""
    key = (weight.data_ptr(), tuple(weight.shape), float(weight.sum()), id(table), z, draws, seed)
    if key not in _NULLS:
        _NULLS.clear()
        _NULLS[key] = _null_threshold(weight, table, z, draws, seed)
    return _NULLS[key]


def _null_threshold(weight: torch.Tensor, table, z: float, draws: int, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    best = -math.inf
    for _ in range(draws):
        u = torch.randn(weight.shape[1], generator=g)
        best = max(best, float(score_features(weight.float() @ u, table, z)[1].max()))
    return best


def fit_basis(weight: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis (V, d + 1) of the span of the output embeddings W (V, d) and the constant."""
    basis = torch.cat([weight.detach().double(), torch.ones(weight.shape[0], 1, dtype=torch.float64)], 1)
    return torch.linalg.qr(basis)[0]


def unexplained(lift: torch.Tensor, weight: torch.Tensor, q: torch.Tensor | None = None) -> torch.Tensor:
    """The part of a lift (V,) that no change of the final hidden state explains: lift minus its
    least-squares fit W u + c over the reference's output embeddings W (V, d). A fine-tune that
    leaves the head alone changes every context's logits by W dh - dlogZ, so its lift lies in that
    span and leaves nothing here; what is left is the head's own change, token by token. (V,)"""
    q = fit_basis(weight) if q is None else q  # (V, d + 1) orthonormal
    flat = lift.double()
    return (flat - q @ (q.T @ flat)).float()


PEAK_OVERLAP = 0.2  # a candidate sharing more than this share of its tokens with the leader is not "beyond" it


def sharpen(
    lift: torch.Tensor, table, area: torch.Tensor, score: torch.Tensor, leader: int, alpha: float
) -> list[tuple[int, float]]:
    """The chain of leads taken from `leader` (see the module's docstring): [(feature, bound), ...], empty
    when the leader keeps its place. bound is the lower confidence bound of P(a token of the new lead
    has a lift beyond a token of the one before it), above 0.5 when significant."""
    toward = float(area[leader]) > 0.5
    sig = [i for i in range(len(table.features)) if float(score[i]) > 0.5 and (float(area[i]) > 0.5) == toward]
    masks = {i: table.mask(i) for i in sig}
    chain, seen = [], {leader}
    while True:
        lead = masks.get(leader)
        if lead is None:
            lead = table.mask(leader)
        tests = []
        for i in sig:
            if i in seen:
                continue
            both = masks[i] & lead
            if int(both.sum()) > PEAK_OVERLAP * int(masks[i].sum()):
                continue
            ours, theirs = lift[masks[i] & ~both], lift[lead & ~both]  # (k1,), (k2,)
            if ours.numel() and theirs.numel():
                tests.append((i, ours, theirs))
        z = bonferroni_z(alpha, len(tests))
        best = None
        for i, ours, theirs in tests:
            labels = torch.cat([torch.ones(ours.numel()), torch.zeros(theirs.numel())]).bool()
            beyond = mask_auroc(torch.cat([ours, theirs]), labels)
            beyond = beyond if toward else 1 - beyond
            k1, k2 = ours.numel(), theirs.numel()
            bound = beyond - z * math.sqrt((k1 + k2 + 1) / (12 * k1 * k2))
            if bound > 0.5 and (best is None or float(score[i]) > float(score[best[0]])):
                best = (i, bound)
        if best is None:
            return chain
        chain.append(best)
        leader = best[0]
        seen.add(leader)


def feature_row(f: Feature, mask: torch.Tensor, i: int, scored: dict, view: str, lift: Lift, rates) -> dict:
    """Everything the outputs say about feature i, scored on `view` (scored: view -> (area, score), each (F,))."""
    per_group = lift.groups[:, mask].mean(1) - lift.groups[:, ~mask].mean(1)  # (G,) members minus the rest
    ci = mean_ci(per_group)
    mass_m, mass_r = float(lift.p_model[mask].sum()), float(lift.p_reference[mask].sum())
    rate_m, rate_r = (mean_ci(sample_rates(s.tokens, mask, s.lengths)) for s in rates)
    return {
        "selector": f.selector,
        "label": f.label,
        "kind": f.kind,
        "size": int(mask.sum()),
        "auroc": round(float(scored[view][0][i]), 4),
        "score": round(float(scored[view][1][i]), 4),
        "view": view,
        "auroc_lift": round(float(scored["lift"][0][i]), 4),
        "auroc_unexplained": round(float(scored["unexplained"][0][i]), 4),
        "lift": round(ci["mean"], 4),
        "lift_ci": [round(ci["ci_low"], 4), round(ci["ci_high"], 4)],
        "mass_model": mass_m,
        "mass_reference": mass_r,
        "mass_ratio": mass_m / mass_r if mass_r > 0 else math.inf,
        "share_model": rate_m,
        "share_reference": rate_r,
    }


def token_rows(ids, texts, lift: Lift, shares) -> list[dict]:
    share_m, share_r, half = shares
    centre = lift.groups.mean(0).median()
    rows = []
    for i in ids:
        ci = mean_ci(lift.groups[:, i] - centre)
        rows.append(
            {
                "id": i,
                "text": texts[i],
                "lift": round(ci["mean"], 4),
                "lift_ci": [round(ci["ci_low"], 4), round(ci["ci_high"], 4)],
                "p_reference": float(lift.p_reference[i]),
                "p_model": float(lift.p_model[i]),
                "share_model": float(share_m[i]),
                "share_reference": float(share_r[i]),
                "share_change_ci": [float(share_m[i] - share_r[i] - half[i]), float(share_m[i] - share_r[i] + half[i])],
            }
        )
    return rows


def _name(row: dict) -> str:
    """A feature as people read it: its selector, or for a long list of ids its label."""
    return repr(row["selector"]) if len(row["selector"]) <= 60 else row["label"]


def verdict(stands_out: bool, top: dict, threshold: float, z: float) -> str:
    if not stands_out:
        where = "lift" if top["view"] == "lift" else "lift's unexplained part"
        return (
            f"nothing stands out: the best candidate, {_name(top)} ({top['label']}), separates the {where} "
            f"with score {top['score']:.3f}, not above {max(threshold, 0.5):.3f} (what random logit directions "
            f"reach, and chance at z = {z:.2f})"
        )
    how = (
        f"{top['mass_ratio']:.3g}x likelier" if top["mass_ratio"] >= 1 else f"{1 / top['mass_ratio']:.3g}x less likely"
    )
    what = (
        top["label"]
        if top["kind"] not in ("discovered", "neighbours", "weights") or len(top["selector"]) <= 60
        else "they"
    )
    text = (
        f"tilted {'toward' if top['auroc'] > 0.5 else 'away from'} {_name(top)}: {what} "
        f"are {how} (set mass {top['mass_reference']:.4f} -> "
        f"{top['mass_model']:.4f}; lift {top['lift']:+.2f} nats [{top['lift_ci'][0]:+.2f}, "
        f"{top['lift_ci'][1]:+.2f}]; AUROC {top['auroc']:.3f}"
        f"{' on the part of the lift no shift of the final hidden state explains' if top['view'] == 'unexplained' else ''})"
    )
    if "beyond" in top:
        text += (
            f"; first because its tokens' lift lies beyond that of {top['beyond']['selector']!r}, which "
            f"separates the lift more surely (bound {top['beyond']['bound']:.3f})"
        )
    if "replaces" in top:
        text += (
            f"; read off one half of the contexts, it separates the other half with score {top['score']:.3f}, "
            f"above {top['replaces']['selector']!r} ({top['replaces']['score_half']:.3f} there)"
        )
    if top["kind"] == "weights":
        text += "; the weights show it: nothing else changed"
    if "rule" in top:
        text += f"; the closest rule is {top['rule']['selector']!r} (Jaccard {top['rule']['jaccard']:.2f})"
    return text


# ---------------------------------------------------------------- the audit


FOUND_KINDS = ("discovered", "neighbours", "weights")  # sets not from the vocabulary's own rules


@dataclass
class Ranking:
    """The candidates ranked: the family, then the sets read off the lift, then the weights' set (if any)."""

    table: object  # features.FeatureTable of all of them
    order: list[int]  # best first
    area: torch.Tensor  # (F,) the AUROC each is ranked by (a set read off the lift: on the other half)
    score: torch.Tensor  # (F,) its separation
    view: list[str]  # (F,) the view it is scored on
    views: dict  # "lift" / "unexplained" -> (V,) over every context
    stands_out: bool
    threshold: float  # the best score random logit directions reach
    beyond: dict  # feature -> (selector of the lead it took by sharpening, bound)
    replaced: dict  # feature -> (selector of the family's leader it replaced, the leader's score on that half)


def _better_view(scored: dict) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    on_rest = scored["unexplained"][1] > scored["lift"][1]  # (F,) the view each feature is scored on
    area = torch.where(on_rest, scored["unexplained"][0], scored["lift"][0])
    score = torch.where(on_rest, scored["unexplained"][1], scored["lift"][1])
    return area, score, ["unexplained" if r else "lift" for r in on_rest.tolist()]


def rank(
    lift: Lift, weight: torch.Tensor, family, texts: list[str], weights, z: float, cfg: AuditOptions, echo
) -> Ranking:
    """Score the family on both views, decide whether anything stands out, sharpen, then let a set read
    off one half of the contexts (discover) take the lead when it separates the other half better
    than the family's leader does, and a head-rows edit that the weights show lead over all."""
    q = fit_basis(weight)
    views = {"lift": lift.mean, "unexplained": unexplained(lift.mean, weight, q)}
    area, score, view = _better_view({name: score_features(v, family, z) for name, v in views.items()})
    echo(f"null: the best separation of {cfg.null_draws} random logit directions ...")
    threshold = null_threshold(weight, family, z, cfg.null_draws, cfg.seed)
    kinds = [f.kind == "given" for f in family.features]  # on a tie, the vocabulary's own candidate first
    sizes = family.sizes.tolist()  # (F,) once: the property counts every pair
    order = sorted(range(len(family.features)), key=lambda i: (-float(score[i]), -sizes[i], kinds[i]))
    stands_out = float(score[order[0]]) > max(threshold, 0.5)  # decided on the family's best, before sharpening
    chain = sharpen(views[view[order[0]]], family, area, score, order[0], cfg.alpha) if stands_out else []
    beyond = {}  # feature -> (the lead it took over, its bound)
    for (i, bound), before in zip(chain, [order[0]] + [c[0] for c in chain]):
        beyond[i] = (family.features[before].selector, bound)
    if chain:
        order = [c[0] for c in reversed(chain)] + [i for i in order if i not in beyond]

    halves_ = dict(zip(("a", "b"), halves(lift.groups)))
    per_half = {"lift": halves_, "unexplained": {k: unexplained(v, weight, q) for k, v in halves_.items()}}
    unit = F.normalize(weight, dim=1)
    found, f_area, f_score, f_view = [], [], [], []
    for name, half in per_half.items():
        sets = discover(half["a"], unit, texts, name)
        a, sc = score_features(half["b"], table_of(sets, len(texts)), z)
        found, f_view = found + sets, f_view + [name] * len(sets)
        f_area.append(a)
        f_score.append(sc)
    leader, n = order[0], len(family.features)
    table = concat(family, table_of(found, len(texts)))
    lead_mask = family.mask(leader)
    lead_half = float(
        separation(
            torch.tensor([mask_auroc(per_half[view[leader]]["b"], lead_mask)]), torch.tensor([_se(lead_mask)]), z
        )[0]
    )
    area, score, view = torch.cat([area, *f_area]), torch.cat([score, *f_score]), view + f_view
    heads = 1 + len(chain)  # the leader and the leads it took over keep their places
    rest = sorted(order[heads:] + list(range(n, n + len(found))), key=lambda i: -float(score[i]))
    order, replaced = order[:heads] + rest, {}
    # A set read off the lift replaces the leader when, on the other half, it separates better and its
    # tokens are lifted further on average (a sharper set: a superset padded with noise is not).
    sign = 1.0 if float(area[leader]) > 0.5 else -1.0
    lead_mean = sign * float(per_half[view[leader]]["b"][lead_mask].mean())
    sharper = [
        i
        for i in range(n, n + len(found))
        if (float(area[i]) > 0.5) == (sign > 0)
        and sign * float(per_half[view[i]]["b"][table.mask(i)].mean()) > lead_mean
    ]
    best = max(sharper, key=lambda i: float(score[i]), default=None)
    if stands_out and best is not None and float(score[best]) > max(lead_half, 0.5):
        order = [best] + [i for i in order if i != best]
        replaced[best] = (family.features[leader].selector, lead_half)
    if weights.head_only:  # the weights name the set exactly
        ids = weights.rows.nonzero().flatten().tolist()
        w_table = table_of(
            [
                (
                    Feature(
                        "ids:" + ",".join(map(str, ids)), "weights", f"the {len(ids)} output-head rows that changed"
                    ),
                    ids,
                )
            ],
            len(texts),
        )
        w_area, w_score, w_view = _better_view({k: score_features(v, w_table, z) for k, v in views.items()})
        table = concat(table, w_table)
        area, score, view = torch.cat([area, w_area]), torch.cat([score, w_score]), view + w_view
        order, stands_out = [len(table.features) - 1] + order, True
    return Ranking(table, order, area, score, view, views, stands_out, threshold, beyond, replaced)


def _se(mask: torch.Tensor) -> float:
    """The AUROC's standard error of a set (V,) bool under no relation (no ties)."""
    k, v = int(mask.sum()), mask.numel()
    return math.sqrt((v + 1) / (12 * k * (v - k))) if 0 < k < v else math.inf


DISCOVERY_SIZES = (8, 16, 32, 64, 128, 256, 512)  # sizes of the sets read off the lift
NEIGHBOURS_OF = 16  # the most lifted tokens whose embedding centroid seeds a neighbourhood


def halves(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The centred mean lift (V,) over the even and over the odd contexts of groups (G, V)."""
    out = []
    for part in (groups[0::2], groups[1::2]):
        m = part.mean(0)
        out.append(m - m.median())
    return out[0], out[1]


def discover(
    values: torch.Tensor, unit: torch.Tensor, texts: list[str], view: str, sizes=DISCOVERY_SIZES
) -> list[tuple[Feature, list[int]]]:
    """Token sets read off one half's view of the lift (V,), to be scored on the other half: for each
    direction, its n most extreme tokens, and the n tokens nearest (cosine, unit (V, d) rows of the
    output embeddings) to the centroid of its NEIGHBOURS_OF most extreme ones, for n in sizes."""
    found = []
    for sign, word in ((1.0, "lifted"), (-1.0, "lowered")):
        order = torch.argsort(sign * values, descending=True)  # (V,)
        near = torch.argsort(unit @ unit[order[:NEIGHBOURS_OF]].mean(0), descending=True)  # (V,)
        examples = ", ".join(repr(texts[i]) for i in order[:4].tolist())
        for n in sizes:
            for kind, ids, label in (
                ("discovered", order[:n], f"the {n} most {word} tokens ({view}; {examples}, ...)"),
                (
                    "neighbours",
                    near[:n],
                    f"the {n} tokens nearest in embedding space to the {NEIGHBOURS_OF} "
                    f"most {word} ({view}; {examples}, ...)",
                ),
            ):
                ids = sorted(ids.tolist())
                found.append((Feature("ids:" + ",".join(map(str, ids)), kind, label), ids))
    return found


def _load_pair(model, reference, tokenizer, echo):
    """Models (or names for load_model; a PEFT adapter folder is merged into a copy of the reference)."""
    import copy

    from tokentilt.models.load import ModelLoadError, load_model

    adapter = isinstance(model, str) and (Path(model).expanduser() / "adapter_config.json").is_file()
    if isinstance(model, str) and not adapter:
        echo(f"loading model {model!r} ...")
        model, tokenizer = load_model(model)
    if isinstance(reference, str):
        echo(f"loading reference {reference!r} ...")
        reference, ref_tokenizer = load_model(reference)
        tokenizer = tokenizer or ref_tokenizer
    if adapter:
        from peft import PeftModel

        echo(f"merging the adapter {model!r} into a copy of the reference ...")
        try:
            model = PeftModel.from_pretrained(
                copy.deepcopy(reference), str(Path(model).expanduser())
            ).merge_and_unload()
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise ModelLoadError(
                f"cannot apply the adapter {model!r} to the reference: {str(err).strip().splitlines()[0]}"
            ) from None
        model.eval()
    return model, reference, tokenizer


def _family(cfg: AuditOptions, texts: list[str], echo):
    """The fixed candidates and the Bonferroni value over every test the audit makes."""
    extra = [Feature(cfg.toward, "given", "the tokens of the --toward set")] if cfg.toward else []
    if cfg.toward:
        resolve(cfg.toward, texts)  # a truth that selects nothing (or everything) is the user's error
    family = cached_candidates(tuple(texts), tuple(file_key(w) for w in cfg.words), cfg.min_tokens, tuple(extra))
    found_per_view = 2 * 2 * 2 * len(DISCOVERY_SIZES)  # views x directions x kinds x sizes
    z = bonferroni_z(cfg.alpha, 2 * len(family.features) + found_per_view)  # every test made
    echo(f"{len(family.features)} candidate features from {len(texts)} tokens, and {found_per_view} read off the lift")
    return family, z


def _contexts(model, reference, tokenizer, cfg: AuditOptions, echo) -> tuple[torch.Tensor, dict]:
    """The held-out windows (W, T) and both models' samples ("model", "reference" -> generate.Samples)."""
    eval_cfg = EvalConfig(eval_text=cfg.eval_text, eval_windows=cfg.eval_windows, eval_seq_len=cfg.eval_seq_len)
    windows = held_out_windows(tokenizer, eval_cfg, held_out_text(eval_cfg))
    prompts = list(CHAT_PROMPTS if cfg.chat else DEFAULT_PROMPTS)
    scfg = SampleConfig(max_new_tokens=cfg.new_tokens)
    what = "replies of at most" if cfg.chat else "continuations of"
    echo(f"sampling {len(prompts) * cfg.samples_per_prompt} {what} {cfg.new_tokens} tokens from each model ...")
    sampled = {
        who: sample(
            m,
            tokenizer,
            prompts,
            cfg.samples_per_prompt,
            scfg,
            seed=cfg.seed,
            bf16=cfg.bf16,
            chat=cfg.chat,
            system=cfg.system,
        )
        for who, m in (("model", model), ("reference", reference))
    }
    return windows, sampled


def _feature_rows(ranked: Ranking, scored: dict, family, lift: Lift, rates, top: int) -> tuple[list[dict], list]:
    """The rows of the `top` best features, with the masks of their tokens (scored: view -> (area, score))."""
    table, order = ranked.table, ranked.order
    rows, masks = [], []
    for i in order[:top]:
        masks.append(table.mask(i))
        rows.append(feature_row(table.features[i], masks[-1], i, scored, ranked.view[i], lift, rates))
        rows[-1]["auroc"], rows[-1]["score"] = round(float(ranked.area[i]), 4), round(float(ranked.score[i]), 4)
        if i in ranked.beyond:
            rows[-1]["beyond"] = {"selector": ranked.beyond[i][0], "bound": round(ranked.beyond[i][1], 4)}
        if i in ranked.replaced:
            rows[-1]["replaces"] = {"selector": ranked.replaced[i][0], "score_half": round(ranked.replaced[i][1], 4)}
        if table.features[i].kind in FOUND_KINDS:
            j, overlap = closest(family, masks[-1])
            rows[-1]["rule"] = {
                "selector": family.features[j].selector,
                "label": family.features[j].label,
                "jaccard": round(overlap, 4),
            }
    for row, mask in zip(rows, masks):
        row["jaccard_with_top"] = round(jaccard(masks[0], mask), 4)
    return rows, masks


def _truth_row(ranked: Ranking, scored: dict, lift: Lift, rates, top_mask: torch.Tensor) -> dict:
    """The --toward set's row, with its rank among all candidates."""
    table, order, score = ranked.table, ranked.order, ranked.score
    i = next(j for j, f in enumerate(table.features) if f.kind == "given")
    mask = table.mask(i)
    truth = feature_row(table.features[i], mask, i, scored, ranked.view[i], lift, rates)
    sizes = table.sizes.tolist()
    place = order.index(i)  # ties (the same tokens as a vocabulary candidate) share the better rank
    truth["rank"] = 1 + sum(
        1 for j in order[:place] if not (float(score[j]) == float(score[i]) and sizes[j] == sizes[i])
    )
    truth["jaccard_with_top"] = round(jaccard(top_mask, mask), 4)
    return truth


def audit(
    model, reference, tokenizer=None, cfg: AuditOptions | None = None, echo=None, progress: bool = False
) -> AuditResult:
    """Audit `model` against `reference`: loaded models or names for load_model (a PEFT adapter folder
    for the model), sharing a vocabulary."""
    cfg = cfg or AuditOptions()
    cfg.check()
    echo = echo or (lambda *_: None)
    model, reference, tokenizer = _load_pair(model, reference, tokenizer, echo)
    if tokenizer is None:
        raise ValueError("audit needs the tokenizer when it is given loaded models")
    if cfg.chat:
        check_template(tokenizer)
    vocab = reference.get_output_embeddings().weight.shape[0]
    if model.get_output_embeddings().weight.shape[0] != vocab:
        raise ValueError(
            f"model and reference have different vocabularies "
            f"({model.get_output_embeddings().weight.shape[0]} vs {vocab} tokens)"
        )
    texts = token_texts(tokenizer)[:vocab]
    texts += ["\0"] * (vocab - len(texts))  # padded rows: no text, never in a feature
    family, z = _family(cfg, texts, echo)
    weights = weight_view(model, reference)
    echo(f"weights: {weights.summary}")
    windows, sampled = _contexts(model, reference, tokenizer, cfg, echo)
    echo(f"measuring the lift of every token on {windows.numel()} held-out positions and the samples ...")
    lift = measure_lift(model, reference, tokenizer, windows, sampled, cfg, progress)
    weight = reference.get_output_embeddings().weight.detach().float().cpu()  # (V, d), beside the lift
    ranked = rank(lift, weight, family, texts, weights, z, cfg, echo)
    rates = (sampled["model"], sampled["reference"])
    scored = {name: score_features(v, ranked.table, z) for name, v in ranked.views.items()}  # on every context
    rows, masks = _feature_rows(ranked, scored, family, lift, rates, cfg.top)
    top = rows[0]
    by_lift = torch.argsort(ranked.views["lift"], descending=True).tolist()
    shares = share_change(sampled["model"], sampled["reference"], vocab)
    channels = run_channels(
        model, reference, tokenizer, cfg, texts, family=family, windows=windows, sampled=sampled, echo=echo
    )
    combined = combined_verdict(
        model, reference, tokenizer, windows, rows, masks, ranked.stands_out, channels, cfg, ranked.views["lift"]
    )
    return AuditResult(
        direction=("toward" if top["auroc"] > 0.5 else "away") if ranked.stands_out else "none",
        stands_out=ranked.stands_out,
        verdict=verdict(ranked.stands_out, top, ranked.threshold, z),
        features=rows,
        threshold=round(ranked.threshold, 4),
        z_critical=round(z, 3),
        candidates=len(ranked.table.features),
        tokens_up=token_rows(by_lift[: cfg.top], texts, lift, shares),
        tokens_down=token_rows(by_lift[::-1][: cfg.top], texts, lift, shares),
        truth=_truth_row(ranked, scored, lift, rates, masks[0]) if cfg.toward else None,
        samples={
            "prompts": sampled["model"].prompts,
            "model": sampled["model"].texts,
            "reference": sampled["reference"].texts,
        },
        contexts={
            "text_windows": len(windows),
            "text_positions": int(windows.numel()),
            "samples": 2 * len(sampled["model"].texts),
            "sample_positions": sum(len(r) for s in sampled.values() for r in s.replies()),
            "eval_text": cfg.eval_text or "plays:test",
        },
        weights=weights.to_json(),
        lift=ranked.views["lift"],
        unexplained=ranked.views["unexplained"],
        top_mask=masks[0],
        channels=channels,
        combined=combined,
    )
