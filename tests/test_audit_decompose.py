"""The decomposition channel names planted sets as separate components, tells a tilt from a domain by where
the set is raised, and stays silent on noise and on a generic change; its NMF and its cut are checked by hand.

Plants are exact logit biases on an untied output head of a tiny GPT-2 with the real 50,257-token tokenizer
(tests/test_audit.py's helpers), on random token ids that no rule of the lift audit's family names. A set
"raised where it fits" is biased only in the contexts whose last hidden state points along one direction
(a fifth of them), as a domain fine-tune raises its words only where they fit.
"""

import copy
import re

import pytest
import torch

from test_audit import noisy, structured_pair, with_bias, with_biases
from tokentilt.audit.decompose import (
    context_differences,
    context_share,
    cut,
    cuts,
    decompose_channel,
    nmf,
    null_separations,
    separation,
)
from tokentilt.audit.features import jaccard
from tokentilt.audit.lift import audit
from tokentilt.jobs.audit_config import AuditConfig
from tokentilt.measurement.evaluate import EvalConfig, held_out_windows

# ---------------------------------------------------------------- the parts, by hand (fast)


def test_nmf_recovers_hand_built_nonnegative_factors():
    """x = a h with three token sets of disjoint support and three contexts where each set is alone (so the
    factors are unique up to order and scale): NMF finds h's rows, and no update raises the squared error."""
    g = torch.Generator().manual_seed(0)
    a = torch.rand(30, 3, generator=g, dtype=torch.float64)
    a[:3] = torch.eye(3, dtype=torch.float64)
    h = torch.zeros(3, 40, dtype=torch.float64)
    for j, (lo, hi) in enumerate(((0, 10), (10, 25), (25, 40))):
        h[j, lo:hi] = 0.5 + torch.rand(hi - lo, generator=g, dtype=torch.float64)
    x = a @ h
    fa, fh = nmf(x, 3, iters=2000)
    assert float((x - fa @ fh).norm() / x.norm()) < 2e-3
    cos = torch.nn.functional.normalize(h, dim=1) @ torch.nn.functional.normalize(fh, dim=1).T  # (3, 3)
    assert sorted(cos.argmax(1).tolist()) == [0, 1, 2] and float(cos.max(1).values.min()) > 0.9999
    errors, start = [], nmf(x, 3, iters=0)
    for _ in range(30):
        start = nmf(x, 3, iters=1, start=start)
        errors.append(float((x - start[0] @ start[1]).square().sum()))
    assert all(later <= earlier + 1e-12 for earlier, later in zip(errors, errors[1:]))


def test_the_sparsity_penalty_splits_a_set_raised_everywhere_from_one_raised_in_some_contexts():
    """Every context raises tokens 0-9 by 2, a quarter also 10-19 by 3. Plain NMF fits those contexts with a
    component of both sets (the factors are not unique); with the L1 penalty on h each component holds one."""
    x = torch.zeros(40, 30, dtype=torch.float64)
    x[:, :10] = 2.0
    x[:10, 10:20] += 3.0

    def mass(h):  # (2, 2): each component's share of its loading on tokens 0-9 and on 10-19
        return torch.stack([h[:, :10].sum(1), h[:, 10:20].sum(1)], 1) / h.sum(1, keepdim=True)

    plain = mass(nmf(x, 2, iters=500)[1])
    assert float(plain.min(1).values.max()) > 0.15  # one component mixes both sets
    sparse = mass(nmf(x, 2, iters=500, sparsity=0.1)[1])
    assert float(sparse.max(1).values.min()) > 0.999 and sorted(sparse.argmax(1).tolist()) == [0, 1]


def test_the_cut_and_the_separation_by_hand():
    profile = torch.cat([torch.full((10,), 3.0), torch.full((100,), 0.5), torch.zeros(200)])
    # n = 10: its 5 weakest at 3, its 5 strongest rivals at 0.5, mean 3: (3 - 0.5) / 3; n = 12: weakest 6 are
    # four 3s and two 0.5s (13/6), rivals 0.5, mean 31/12: (13/6 - 0.5) / (31/12) = 0.645; n = 8: 0
    assert cut(profile, 5, 50) == (10, pytest.approx(2.5 / 3))
    assert separation(profile, torch.arange(10)) == pytest.approx(2.5 / 3)
    assert separation(profile, torch.arange(12)) == pytest.approx((13 / 6 - 0.5) / (31 / 12))
    assert separation(profile, torch.arange(20)) == pytest.approx(0.0)  # padded with 10 unraised tokens: no cliff
    assert separation(-profile, torch.arange(10)) == -1.0  # a lowered set does not stand above anything
    # the null's vectorised cut equals the cut of each of its profiles
    weight = torch.randn(300, 4, generator=torch.Generator().manual_seed(1))
    null = null_separations(weight, 3, 5, 7, 5, 40)
    u = torch.randn(5, 4, 3, generator=torch.Generator().manual_seed(7))
    z = weight @ u[2]  # (300, 3), draw 2
    z = z - z.median(0).values
    assert float(null[2]) == pytest.approx(max(cut(s * z[:, j], 5, 40)[1] for j in range(3) for s in (1, -1)))
    assert cuts(torch.stack([profile, 2 * profile]), 5, 50)[0].tolist() == [10, 10]  # scale-free


def test_the_context_share_by_hand():
    d = torch.zeros(10, 6)
    d[:3, :2] = 2.0  # tokens 0 and 1 raised by 2 nats in 3 of 10 contexts
    share, level = context_share(d, torch.tensor([0, 1]), 1.0)
    assert share == pytest.approx(0.3) and level.tolist() == [2.0] * 3 + [0.0] * 7
    d[3:, :2] = 1.5  # ... and by 1.5 in the other 7: raised everywhere
    assert context_share(d, torch.tensor([0, 1]), 1.0)[0] == 1.0
    assert context_share(d, torch.tensor([0, 1]), -1.0)[0] == 0.0  # never lowered


# ---------------------------------------------------------------- planted sets on a tiny model (slow)


@pytest.fixture
def cfg():
    """8 windows of 64 tokens of the plays' held-out split: 512 contexts, the channel's default sample."""
    return AuditConfig(eval_windows=8, eval_seq_len=64, samples_per_prompt=1, new_tokens=8, null_draws=10, top=5)


def random_ids(texts, n: int, seed: int) -> torch.Tensor:
    """n printable, non-blank token ids drawn at random (scripts/audit_bench.py's random:N:SEED): (V,) bool."""
    pool = torch.tensor([t.strip() != "" and t.isprintable() for t in texts]).nonzero().squeeze(1)
    mask = torch.zeros(len(texts), dtype=torch.bool)
    mask[pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:n]]] = True
    return mask


class GatedBias(torch.nn.Module):
    """An output head that adds bias * mask to the logits only where the hidden state's projection on
    `direction` exceeds `threshold`: a set raised in some contexts and not others."""

    def __init__(self, head, mask: torch.Tensor, bias: float, direction: torch.Tensor, threshold: float):
        super().__init__()
        self.head, self.threshold = head, threshold
        self.register_buffer("direction", direction)
        self.register_buffer("add", bias * mask.float())

    @property
    def weight(self):
        return self.head.weight

    def forward(self, h):  # (B, T, d) -> (B, T, V)
        gate = (h @ self.direction > self.threshold).float().unsqueeze(-1)  # (B, T, 1)
        return self.head(h) + gate * self.add


def gated(model, mask, bias: float, tokenizer, cfg, share: float = 0.2):
    """model with `bias` on mask's tokens in the `share` of the held-out contexts whose last hidden state lies
    furthest along a random direction."""
    windows = held_out_windows(tokenizer, EvalConfig(eval_windows=cfg.eval_windows, eval_seq_len=cfg.eval_seq_len))
    with torch.no_grad():
        hidden = model(windows, output_hidden_states=True).hidden_states[-1]  # (W, T, d), after ln_f
    direction = torch.randn(hidden.shape[-1], generator=torch.Generator().manual_seed(9))
    threshold = float((hidden @ direction).quantile(1 - share))
    out = copy.deepcopy(model)
    out.lm_head = GatedBias(out.lm_head, mask, bias, direction, threshold)
    return out


def named(result, mask, direction: str):
    """The findings of a channel result that name mask (Jaccard >= 0.5) in that direction."""
    found = []
    for f in result.findings:
        ids = torch.zeros_like(mask)
        ids[f.tokens] = True
        if f.direction == direction and jaccard(ids, mask) >= 0.5:
            found.append((f, jaccard(ids, mask)))
    return found


def share(finding) -> int:
    """The percentage of contexts that carry a finding, from its label."""
    return int(re.search(r"in (\d+)% of contexts", finding.label).group(1))


def lift_top(result, texts) -> torch.Tensor:
    from tokentilt.targets.tokens import select

    return select(result.features[0]["selector"], texts)


@pytest.mark.slow  # the planted cases: 3-10 s each on 2 cores, a lift audit as much again
def test_two_sets_planted_at_once_toward_and_away_are_two_components(base, tokenizer, texts, cfg):
    """64 random ids at +3 and 64 others at -3, under noise on every weight: the decomposition names each
    exactly, in its direction, raised (lowered) in every context. The lift audit's single top feature names
    neither: no rule of its family holds random ids, and the sets it reads off the lift only replace a family
    leader that stands out."""
    toward, away = random_ids(texts, 64, 1), random_ids(texts, 64, 2) & ~random_ids(texts, 64, 1)
    model = noisy(with_biases(base, (toward, 3.0), (away, -3.0)))
    result = decompose_channel(model, base, tokenizer, cfg, texts)
    assert result.stands_out
    (up, j_up), (down, j_down) = named(result, toward, "toward")[0], named(result, away, "away")[0]
    assert j_up == 1.0 and j_down == 1.0 and up is not down
    assert {result.findings.index(up), result.findings.index(down)} == {0, 1}  # the two best findings
    for f in (up, down):
        assert f.p_value <= cfg.alpha and f.statistic > 0.8 and "tilt: in 100% of contexts" in f.label
    assert all(f.p_value > cfg.alpha for f in result.findings[2:])  # nothing else is named
    windows = held_out_windows(tokenizer, EvalConfig(eval_windows=cfg.eval_windows, eval_seq_len=cfg.eval_seq_len))
    given = decompose_channel(
        model, base, tokenizer, cfg, texts, differences=context_differences(model, base, windows, cfg)
    )  # the differences gathered elsewhere (by the lift's forward pass, say) give the same findings
    assert [f.tokens for f in given.findings] == [f.tokens for f in result.findings]
    lifted = audit(model, base, tokenizer, cfg)
    top = lift_top(lifted, texts)
    assert jaccard(top, toward) < 0.5 and jaccard(top, away) < 0.5
    assert not lifted.stands_out


@pytest.mark.slow
def test_a_set_raised_where_it_fits_is_domain_like_and_a_set_raised_everywhere_is_a_tilt(base, tokenizer, texts, cfg):
    """64 random ids at +2 in every context, and 64 others at +3 only in the fifth of the contexts where the
    hidden state points one way. NMF gives each its own component (the L1 penalty; plain NMF merges them);
    the first is a tilt (raised in every context), the second domain-like (in about a fifth to a third: the
    threshold is half its level). The lift audit names neither."""
    everywhere, where_it_fits = random_ids(texts, 64, 1), random_ids(texts, 64, 2) & ~random_ids(texts, 64, 1)
    model = gated(noisy(with_bias(base, everywhere, 2.0)), where_it_fits, 3.0, tokenizer, cfg)
    result = decompose_channel(model, base, tokenizer, cfg, texts)
    (tilt, j_tilt), (domain, j_domain) = (
        named(result, everywhere, "toward")[0],
        named(result, where_it_fits, "toward")[0],
    )
    assert j_tilt == 1.0 and j_domain == 1.0
    assert tilt.p_value <= cfg.alpha and domain.p_value <= cfg.alpha
    assert "tilt: in 100% of contexts" in tilt.label
    assert "domain-like" in domain.label and 15 <= share(domain) < 50
    assert result.stands_out and result.findings[0] is tilt  # a tilt leads; the domain-like set follows
    lifted = audit(model, base, tokenizer, cfg)
    top = lift_top(lifted, texts)
    assert jaccard(top, everywhere) < 0.5 and jaccard(top, where_it_fits) < 0.5


@pytest.mark.slow
def test_a_set_raised_only_where_it_fits_is_named_but_does_not_stand_out(base, tokenizer, texts, cfg):
    """The honest fine-tune's pattern alone: a set raised only where it fits is found (significant against
    the null) but is domain-like, so the channel does not call it a tilt."""
    where_it_fits = random_ids(texts, 64, 2)
    result = decompose_channel(gated(noisy(base), where_it_fits, 3.0, tokenizer, cfg), base, tokenizer, cfg, texts)
    (domain, j), *_ = named(result, where_it_fits, "toward")
    assert j == 1.0 and domain.p_value <= cfg.alpha and "domain-like" in domain.label
    assert not result.stands_out


@pytest.mark.slow
@pytest.mark.parametrize("std, seed, bias", [(0.01, 1, 0.5), (0.03, 4, 1.5)])
def test_noise_on_every_weight_stands_out_nowhere(base, tokenizer, texts, cfg, std, seed, bias):
    result = decompose_channel(noisy(base, std, seed), base, tokenizer, cfg, texts)
    assert not result.stands_out
    assert all(f.p_value > cfg.alpha for f in result.findings)
    assert max(f.statistic for f in result.findings) < result.notes["null_best"]
    # the same noise with a small tilt on top of 64 random ids stands out: the bar is not simply high (under the
    # larger noise +1 nat is not found; +1.5 is)
    planted = random_ids(texts, 64, 1)
    tilted = decompose_channel(noisy(with_bias(base, planted, bias), std, seed), base, tokenizer, cfg, texts)
    assert tilted.stands_out and named(tilted, planted, "toward")[0][1] >= 0.8


@pytest.mark.slow
def test_a_generic_change_on_a_structured_vocabulary_is_not_a_tilt(tokenizer, texts, cfg):
    """Digit tokens share an embedding direction and a random shift of the final hidden state moves them
    together (tests/test_audit.py's structured_pair): the random-direction null, drawn through the same
    embeddings, holds them to its bar."""
    reference, model, digits = structured_pair(texts)
    result = decompose_channel(model, reference, tokenizer, cfg, texts)
    assert not result.stands_out
    assert result.notes["null_best"] > 0.5  # the digits' cluster makes cliffs under random directions too


@pytest.mark.slow
def test_an_unchanged_model_has_no_components(base, tokenizer, texts, cfg):
    result = decompose_channel(copy.deepcopy(base), base, tokenizer, cfg, texts)
    assert not result.stands_out and result.findings == [] and result.notes["contexts"] == 512
