"""Sampling until R is known (evaluate.sample_until, measure_rate): the stopping rule, its budget, its plan,
and the interval it stops on against the exact E[R] of a tiny model."""

import dataclasses

import pytest
import torch

from test_expected_rate import MASK, PROMPT, TinyTokenizer, exact
from test_expected_rate import model as model  # noqa: F401 (the module's fixture)
from tokentilt.measurement.evaluate import PASS_SEED_STRIDE, measure_rate, sample_until
from tokentilt.measurement.metrics import half_width, mean_ci
from tokentilt.settings import EvalConfig
from tokentilt.targets.tokens import TokenSet


class FakeDraws:
    """draw(passes, before) for sample_until: `passes` per-sample rates for each of `prompts` prompts, from a
    generator seeded by `before`, as measure_rate seeds each pass; records the calls."""

    def __init__(self, prompts: int, p: float):
        self.prompts, self.p, self.calls = prompts, p, []

    def __call__(self, passes: int, before: int) -> torch.Tensor:
        self.calls.append((passes, before))
        g = torch.Generator().manual_seed(1000 + before)
        return torch.bernoulli(torch.full((passes * self.prompts,), self.p), generator=g)


def config(**kw) -> EvalConfig:
    return EvalConfig(prompts=["a", "b", "c", "d"], **kw)


def test_it_stops_at_the_half_width_and_draws_every_prompt_alike():
    draws = FakeDraws(4, 0.3)  # per-sample sd 0.46: +-0.05 needs about 330 samples
    parts, rates, stop, plan = sample_until(draws, lambda r: r, config(samples_per_prompt=4, half_width=0.05))
    assert stop == "half-width" and half_width(mean_ci(rates)) <= 0.05
    assert len(rates) == 4 * sum(plan) and plan[0] == 16 and len(plan) >= 2  # a first pass of 64 samples
    # each call continues where the last stopped, on seeds no earlier pass used
    assert [before for _, before in draws.calls] == [sum(plan[:i]) for i in range(len(plan))]
    # it did not run far past what the width asked: the samples that the final sd needs, within 30%
    needed = (1.96 * float(rates.std()) / 0.05) ** 2
    assert len(rates) <= 1.3 * needed + 4


def test_a_budget_stops_it_and_says_so():
    draws = FakeDraws(4, 0.5)
    _, rates, stop, plan = sample_until(draws, lambda r: r, config(half_width=0.01, max_samples=100))
    assert stop == "budget" and len(rates) == 100 and sum(plan) == 25  # 25 passes of the 4 prompts
    _, rates, stop, plan = sample_until(FakeDraws(4, 0.5), lambda r: r, config(half_width=0.01, max_samples=20))
    assert stop == "budget" and plan == [16]  # the first pass is never cut short by the budget
    assert half_width(mean_ci(rates)) > 0.01


def test_a_plan_or_a_fixed_count_draws_exactly_that():
    draws = FakeDraws(4, 0.5)
    _, rates, stop, plan = sample_until(draws, lambda r: r, config(half_width=0.01), plan=[4, 7])
    assert (stop, plan, len(rates)) == ("fixed", [4, 7], 44) and draws.calls == [(4, 0), (7, 4)]
    _, rates, stop, plan = sample_until(FakeDraws(4, 0.5), lambda r: r, config(half_width=0.01), per_prompt=3)
    assert (stop, plan, len(rates)) == ("fixed", [3], 12)
    _, rates, stop, _ = sample_until(FakeDraws(4, 0.5), lambda r: r, config(half_width=0.0))
    assert (stop, len(rates)) == ("fixed", 16)


def test_a_rate_of_zero_is_known_at_once():
    _, rates, stop, plan = sample_until(FakeDraws(4, 0.0), lambda r: r, config())
    assert (stop, plan) == ("half-width", [16])


def test_the_interval_it_stops_on_covers_the_exact_rate(model):  # noqa: F811
    """Optional stopping on the interval's own width could bias it: against E[R] by enumeration, over seeds."""
    cfg = EvalConfig(prompts=[PROMPT], samples_per_prompt=16, new_tokens=3, half_width=0.04, max_samples=4000)
    e_rate, _ = exact(model, cfg, 0.0)
    target, covered, runs = TokenSet("ids:1,4", MASK), 0, 40
    for seed in range(runs):
        rate, samples = measure_rate(model, TinyTokenizer(), target, dataclasses.replace(cfg, eval_seed=seed))
        assert rate["stop"] == "half-width" and half_width(rate) <= 0.04 and rate["n"] == len(samples.texts)
        covered += rate["ci_low"] <= e_rate <= rate["ci_high"]
    # 95% intervals: 40 runs miss more than 6 times with probability below 0.5% if they are right
    assert covered >= runs - 6, (covered, e_rate)


def test_measure_rate_replays_a_plan_and_a_longer_run_keeps_the_first_pass(model):  # noqa: F811
    cfg = EvalConfig(prompts=[PROMPT, "ad"], samples_per_prompt=4, new_tokens=3, eval_seed=5, half_width=0.02)
    tok, target = TinyTokenizer(), TokenSet("ids:1,4", MASK)
    rate, samples = measure_rate(model, tok, target, cfg, bias=0.5)
    assert rate["stop"] in ("half-width", "budget") and len(rate["plan"]) >= 2
    again, replayed = measure_rate(model, tok, target, cfg, bias=0.5, plan=rate["plan"])
    assert torch.equal(replayed.tokens, samples.tokens) and again["mean"] == rate["mean"]
    assert again["stop"] == "fixed"
    assert rate["plan"][0] == 32  # 64 samples of the 2 prompts before it may stop
    _, few = measure_rate(model, tok, target, cfg, bias=0.5, per_prompt=32)
    assert torch.equal(few.tokens, samples.tokens[:64])  # the first pass is the fixed measurement's own
    # the second pass is a measurement of its own, on the seed after the first pass's
    later = dataclasses.replace(cfg, eval_seed=5 + PASS_SEED_STRIDE * 32)
    _, second = measure_rate(model, tok, target, later, bias=0.5, per_prompt=rate["plan"][1])
    assert torch.equal(second.tokens, samples.tokens[64 : 64 + 2 * rate["plan"][1]])


def test_a_bad_half_width_or_budget_is_refused():
    for bad in ({"half_width": -0.1}, {"half_width": 0.5}, {"max_samples": 0}):
        with pytest.raises(ValueError, match="half-width"):
            EvalConfig(**bad).check()


def test_sampling_until_known_goes_on_from_a_first_pass_drawn_before(model, monkeypatch):  # noqa: F811
    """extend=: the first pass is kept, not drawn again, and the result is the from-scratch one exactly; passes
    that are not this measurement's first pass are not taken over."""
    import tokentilt.measurement.evaluate as evaluate

    cfg = EvalConfig(prompts=[PROMPT, "ad"], samples_per_prompt=32, new_tokens=3, eval_seed=9, half_width=0.02)
    tok, target = TinyTokenizer(), TokenSet("ids:1,4", MASK)
    whole, samples = measure_rate(model, tok, target, cfg, bias=0.5)
    first = measure_rate(model, tok, target, cfg, bias=0.5, plan=[32])
    seeds, real = [], evaluate.sample
    monkeypatch.setattr(evaluate, "sample", lambda *a, seed, **k: seeds.append(seed) or real(*a, seed=seed, **k))
    got, extended = measure_rate(model, tok, target, cfg, bias=0.5, extend=first)
    assert 9 not in seeds and len(seeds) == len(whole["plan"]) - 1  # only the passes after the first
    assert got == whole and torch.equal(extended.tokens, samples.tokens) and len(whole["plan"]) >= 2
    other = measure_rate(model, tok, target, cfg, bias=0.5, plan=[8])  # not the first pass: drawn afresh
    got, again = measure_rate(model, tok, target, cfg, bias=0.5, extend=other)
    assert got == whole and torch.equal(again.tokens, samples.tokens)
