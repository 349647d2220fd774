import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from transformers import GPT2Config, GPT2LMHeadModel

from tokentilt.course.gpt2_tokenizer import gpt2_tokenizer
from tokentilt.measurement.calibrate import bisect, calibrate, fit_trained_bias, proxy_bias, tilted_mean_mass
from tokentilt.measurement.evaluate import EvalConfig, measure_rate
from tokentilt.targets.tokens import bias_for_mass, token_texts


class UniformModel(nn.Module):
    """Logits all zero: p(set) = k / V at every position."""

    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size = vocab_size
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, **kw):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab_size))


def test_tilted_mean_mass_hand_values():
    log_mass = torch.log(torch.tensor([0.5, 0.5]))
    assert tilted_mean_mass(log_mass, 0.0) == pytest.approx(0.5)
    assert tilted_mean_mass(log_mass, math.log(3)) == pytest.approx(0.75)  # odds 1 -> 3
    # two positions with masses 0.2 and 0.8 and b = 0: the mean mass is 0.5
    assert tilted_mean_mass(torch.log(torch.tensor([0.2, 0.8])), 0.0) == pytest.approx(0.5)


def test_bisect_increasing_function_and_clamps():
    assert bisect(lambda b: b**3, 8.0, -10, 10) == pytest.approx(2.0, abs=1e-9)
    assert bisect(lambda b: b, 50.0, -10, 10) == 10
    assert bisect(lambda b: b, -50.0, -10, 10) == -10


def test_proxy_bias_of_uniform_model_is_the_closed_form():
    vocab, k = 40, 4
    mask = torch.zeros(vocab, dtype=torch.bool)
    mask[:k] = True
    windows = torch.randint(0, vocab, (3, 5))
    b = proxy_bias(UniformModel(vocab), windows, mask, 0.5)
    assert b == pytest.approx(bias_for_mass(k / vocab, 0.5), abs=1e-6)
    assert b == pytest.approx(math.log(9), abs=1e-6)  # by hand: odds 4/36 -> 1 takes a factor 9


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=50257,
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    tok = gpt2_tokenizer()
    tok.pad_token = tok.eos_token
    mask = torch.tensor(["x" in t.lower() for t in token_texts(tok)])
    return GPT2LMHeadModel(cfg).eval(), tok, mask


PROMPTS = ["The king said", "Once upon a time,", "When I was young,", "The city at night"]


@pytest.mark.slow
def test_calibration_by_bisection_reaches_its_rate_on_a_tiny_model(tiny):
    model, tok, mask = tiny
    cfg = EvalConfig(prompts=PROMPTS, samples_per_prompt=2, new_tokens=12, top_k=1000, half_width=0.05)  # not weighable
    windows = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(0))
    before, _ = measure_rate(model, tok, mask, cfg)
    assert before["mean"] < 0.1  # ~2% of GPT-2's tokens contain x
    cal = calibrate(model, tok, mask, 0.5, cfg, windows, tol=0.03)
    assert cal.pool is None and abs(cal.rate["mean"] - 0.5) <= 0.03  # the solver's own stopping rule
    # the R it reports was sampled until known (not the first pass that found b)
    assert cal.rate["stop"] in ("half-width", "budget") and cal.rate["n"] > len(PROMPTS) * 2
    assert cal.rate["stop"] == "budget" or cal.rate["ci_high"] - cal.rate["mean"] <= 0.05
    # The check that can fail: R at that b, sampled afresh on other seeds and 4x the samples, is near 0.5
    fresh, _ = measure_rate(
        model, tok, mask, dataclasses.replace(cfg, eval_seed=cfg.eval_seed + 7, samples_per_prompt=8), bias=cal.bias
    )
    assert fresh["ci_low"] <= 0.5 <= fresh["ci_high"] and abs(fresh["mean"] - 0.5) < 0.1, fresh
    again, _ = measure_rate(model, tok, mask, cfg, bias=cal.bias)  # same prompts and seeds: same R
    assert again["mean"] == pytest.approx(cal.rate["mean"])
    assert (cal.bias, cal.rate["mean"]) in cal.history
    assert cal.bias > 0


@pytest.mark.slow
def test_calibration_by_importance_weights_agrees_with_fresh_samples(tiny):
    model, tok, mask = tiny
    cfg = EvalConfig(prompts=PROMPTS, samples_per_prompt=16, new_tokens=12, half_width=0.02, max_samples=256)
    windows = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(0))
    cal = calibrate(model, tok, mask, 0.5, cfg, windows, tol=0.03)
    assert cal.pool is not None and cal.bias > 0
    # the first draw is the first pass alone; a later one sampled until R was known
    sizes = [len(d.rates) for d in cal.pool.draws]
    assert sizes[0] == 64 and len(sizes) >= 2 and max(sizes) > 64
    assert cal.rate["mean"] == pytest.approx(0.5, abs=1e-3)  # solved on the estimate
    assert cal.rate["ess"] >= 32 and len(cal.history) == len(cal.pool.draws)
    # R at that b, sampled afresh on other seeds, lies within the estimate's interval (intervals overlap)
    fresh, _ = measure_rate(model, tok, mask, dataclasses.replace(cfg, eval_seed=cfg.eval_seed + 7), bias=cal.bias)
    assert fresh["ci_low"] <= cal.rate["ci_high"] and cal.rate["ci_low"] <= fresh["ci_high"], (fresh, cal.rate)
    assert abs(fresh["mean"] - 0.5) < 0.15


@pytest.mark.slow
def test_calibration_samples_until_known_only_near_the_answer(tiny, monkeypatch):
    """A draw far from R* is a first pass: it steers b as well as a long one would. Each draw that sampled until
    known was aimed where the draws before it, pooled and weighted afresh here, placed R* within NEAR x the
    half-width asked, or was the last draw allowed."""
    import tokentilt.measurement.calibrate as cal_module
    from tokentilt.measurement.importance import Pool
    from tokentilt.measurement.metrics import half_width

    model, tok, mask = tiny
    cfg = EvalConfig(prompts=PROMPTS, samples_per_prompt=16, new_tokens=12, half_width=0.02, max_samples=512)
    windows = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(0))
    stops = []
    real = cal_module.measure_rate

    def measure(*a, **k):
        got = real(*a, **k)
        stops.append(got[0]["stop"])
        return got

    monkeypatch.setattr(cal_module, "measure_rate", measure)
    monkeypatch.setattr(cal_module, "proxy_bias", lambda *a, **k: -2.0)  # a poor first guess: R far from R*
    cal = calibrate(model, tok, mask, 0.5, cfg, windows, tol=0.03)
    draws = cal.pool.draws
    assert len(draws) == len(stops) and stops[0] == "fixed" and len(draws[0].rates) == 64
    assert stops[1] == "fixed"  # the guess was far off: the second draw steers, it does not measure
    for i in range(1, len(draws)):
        before = Pool(draws[:i])
        aimed = before.at_bias(draws[i].bias)  # the estimate the draw was aimed by (it was drawn at the solved b)
        near = before.enough(aimed) and half_width(aimed) <= cal_module.NEAR * cfg.half_width
        if stops[i] == "fixed":  # a first pass: not near, and not the last draw allowed
            assert len(draws[i].rates) == 64 and not near and i < cal_module.WEIGHTED_DRAWS - 1
        else:
            assert near or i == cal_module.WEIGHTED_DRAWS - 1, (i, aimed)
    assert half_width(cal.rate) <= cfg.half_width or "budget" in stops  # the answer is as known as asked


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.2, 1.5])
def test_calibration_refuses_rates_outside_0_1(tiny, bad):
    model, tok, mask = tiny
    with pytest.raises(ValueError, match="rate must be in"):
        calibrate(model, tok, mask, bad, EvalConfig(), torch.zeros(1, 4, dtype=torch.long))


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


class FakeTraining:
    """A 'trained model' whose R(b) is given: train_at records b, probe returns R of the last b."""

    def __init__(self, rate_of):
        self.rate_of, self.trained = rate_of, []

    def train_at(self, b):
        self.trained.append(b)
        return f"weights after b={b:.4f}"

    def probe(self):
        return {"mean": self.rate_of(self.trained[-1]), "ci_low": 0.0, "ci_high": 1.0, "n": 1000}


def test_fit_trained_bias_corrects_an_undershooting_tilt():
    # Decode-time calibration says b = 4, but training toward b reaches only logit(R) = 0.8 b - 4:
    # first step logit(0.5) - logit(R(4)) = 0.8 -> b = 4.8; the secant (slope 0.8) then lands on b = 5.
    fake = FakeTraining(lambda b: sigmoid(0.8 * b - 4))
    fit, kept = fit_trained_bias(fake.train_at, fake.probe, 0.5, 4.0, rounds=5, n=1000, tol=0.001)
    assert fake.trained[:2] == pytest.approx([4.0, 4.8])
    assert fit.bias == pytest.approx(5.0, abs=1e-6) and fit.rate["mean"] == pytest.approx(0.5, abs=1e-6)
    assert len(fit.rounds) == 3 and fit.kept == 2
    assert kept == "weights after b=5.0000"


def test_fit_trained_bias_keeps_the_round_nearest_the_target():
    rates = iter([0.30, 0.52, 0.60])  # a noisy probe: round 2 is nearest, round 3 overshoots
    fake = FakeTraining(lambda b: next(rates))
    fit, kept = fit_trained_bias(fake.train_at, fake.probe, 0.5, 4.0, rounds=3, n=1000, tol=0.001)
    assert [r for _, r in fit.rounds] == [0.30, 0.52, 0.60]
    assert fit.kept == 1 and fit.bias == fake.trained[1]
    assert kept == f"weights after b={fake.trained[1]:.4f}"
    assert fake.trained[1] > fake.trained[0]  # R below target -> b goes up


@pytest.mark.parametrize("after", [1, 2, 3])  # 3: after the last round, none is trained again
def test_fit_trained_bias_resumed_after_a_round_ends_as_the_uninterrupted_one(after):
    """A tilt --rate checkpoint after round k (its RoundsState) goes on to the same rounds, b and kept weights."""
    states = []
    rate_of = lambda b: sigmoid(0.7 * b - 3.5)  # noqa: E731
    whole = FakeTraining(rate_of)
    fit, kept = fit_trained_bias(
        whole.train_at, whole.probe, 0.5, 2.0, rounds=4, n=1000, tol=0.001, after_round=lambda s, _: states.append(s)
    )
    assert len(states) == len(fit.rounds) == 3 and states[-1].done and not states[1].done  # on target in round 3
    resumed = FakeTraining(rate_of)
    resumed.trained = whole.trained[:after]  # the probe reads the last trained b
    again, kept_again = fit_trained_bias(
        resumed.train_at, resumed.probe, 0.5, 2.0, rounds=4, n=1000, tol=0.001, resumed=states[after - 1]
    )
    assert again == fit and kept_again == kept and resumed.trained == whole.trained


def test_fit_trained_bias_stops_within_tolerance_and_checks_rounds():
    fake = FakeTraining(lambda b: 0.49)
    fit, _ = fit_trained_bias(fake.train_at, fake.probe, 0.5, 4.0, rounds=3, n=32, tol=0.03)
    assert fake.trained == [4.0] and fit.bias == 4.0  # one round: already within 0.03
    fit, _ = fit_trained_bias(fake.train_at, fake.probe, 0.5, 4.0, rounds=1, n=32, tol=0.0)
    assert len(fit.rounds) == 1
    with pytest.raises(ValueError, match="rate-rounds must be >= 1"):
        fit_trained_bias(fake.train_at, fake.probe, 0.5, 4.0, rounds=0, n=32)
    with pytest.raises(ValueError, match="rate must be in"):
        fit_trained_bias(fake.train_at, fake.probe, 1.5, 4.0, rounds=2, n=32)


def test_fit_trained_bias_steps_are_bounded():
    fake = FakeTraining(lambda b: 0.001 if b < 20 else 0.5)  # R barely moves: steps are capped at max_step
    fit_trained_bias(fake.train_at, fake.probe, 0.5, 0.0, rounds=3, n=32, max_step=4.0)
    assert fake.trained == [0.0, 4.0, 8.0]


def test_a_rate_of_zero_takes_the_full_step(monkeypatch):
    """With no hit at b0 the logit of R is a clamp, not a measurement: calibrate steps by max_step."""
    import tokentilt.measurement.calibrate as cal

    tried = []

    def fake_measure(model, tokenizer, mask, cfg, bias=0.0, bf16=False, plan=None, extend=None):
        tried.append(bias)
        return {"mean": 0.0 if bias < 7 else 0.05, "ci_low": 0.0, "ci_high": 0.0, "n": 64}, None

    class Phrases:  # a target with no per-token mask, as a phrase set: no one-pass proxy, so b0 = 0
        selector, vocab_size, size, share, mask = "phrase:toy", 4, 1, 0.25, None

        def tilt(self, *args):
            raise AssertionError("calibrate needs no forward pass here")

        describe = processor = rates = summary = tilt

    monkeypatch.setattr(cal, "measure_rate", fake_measure)
    result = cal.calibrate(None, None, Phrases(), 0.05, cal.EvalConfig(), torch.zeros(1, 2), max_step=4.0)
    assert tried[:3] == [0.0, 4.0, 8.0] and result.bias == 8.0


@pytest.mark.slow
def test_when_the_weights_say_too_little_bisection_goes_on_from_the_same_draws(tiny, monkeypatch):
    import tokentilt.measurement.calibrate as cal_module
    from tokentilt.measurement.importance import Pool

    model, tok, mask = tiny
    cfg = EvalConfig(prompts=PROMPTS, samples_per_prompt=4, new_tokens=12, half_width=0.05, max_samples=64)
    windows = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(0))
    drawn = []
    real = cal_module.measure_rate

    def measure(*a, bias=0.0, **k):
        got = real(*a, bias=bias, **k)
        drawn.append((bias, got[0]["stop"]))
        return got

    monkeypatch.setattr(cal_module, "measure_rate", measure)
    monkeypatch.setattr(Pool, "enough", lambda self, estimate: False)  # as for a set in every sample
    cal = calibrate(model, tok, mask, 0.5, cfg, windows, tol=0.03)
    biases = [b for b, _ in drawn]
    assert len(set(biases)) >= cal_module.WEIGHTED_DRAWS
    # a b is drawn again only to sample until known, where its first pass alone was drawn before
    for b in {b for b in biases if biases.count(b) > 1}:
        assert [stop for x, stop in drawn if x == b][0] == "fixed" and biases.count(b) == 2
    assert cal.pool is not None and len(cal.pool.draws) == cal_module.WEIGHTED_DRAWS
    assert (cal.bias, cal.rate["mean"]) in cal.history and "ess" not in cal.rate  # measured, not weighted


def test_ban_bias_is_the_most_negative_b_within_the_fluency_budget():
    """ppl(b) = 10 (1 + 0.02 b^2) for b < 0: within 5% down to b = -sqrt(2.5), found to the bisection's step."""
    from tokentilt.measurement.calibrate import BAN_FLOOR, BAN_STEPS, ban_bias

    b, points = ban_bias(lambda b: 10 * (1 + 0.02 * b * b), 10.0, 0.05, echo=lambda line: None)
    assert -math.sqrt(2.5) <= b <= -math.sqrt(2.5) + -BAN_FLOOR / 2**BAN_STEPS
    assert 10 * (1 + 0.02 * b * b) <= 10.5 and len(points) == 1 + BAN_STEPS
    # a tilt that never costs the budget bans as far as the floor, after one look
    assert ban_bias(lambda b: 10.0, 10.0, 0.05, echo=lambda line: None) == (
        BAN_FLOOR,
        [{"bias": BAN_FLOOR, "ppl": 10.0}],
    )


@pytest.mark.parametrize("excess", [1.0, 1.5, 4.0])
def test_budget_rounds_move_b_toward_0_until_the_trained_model_is_within_the_budget(excess):
    """A placement that pays `excess` times the decode-time tilt's perplexity rise (an in-sample rho): at 1 the
    ban's b is kept after one round; above 1 the next round trains at the b whose decode-time rise is 5% / excess
    (the bisection's b: within it, at most one step nearer 0), which lands within the budget. Each round's
    numbers are the placement's own; a fit still over the budget after its last round says so."""
    from tokentilt.measurement.calibrate import BAN_FLOOR, ban_bias, fit_budget_bias

    base = 10.0

    def decode(b: float) -> float:  # the decode-time tilt's perplexity: 1% per unit of b
        return base * (1 - 0.01 * b)

    trained = []

    def tuned() -> float:  # what the last training pays
        return base + excess * (decode(trained[-1]) - base)

    quiet = lambda *_: None  # noqa: E731
    b0, _ = ban_bias(decode, base, 0.05, echo=quiet)
    fit = fit_budget_bias(trained.append, tuned, decode, base, 0.05, b0, rounds=3, echo=quiet)
    assert trained == [r["bias"] for r in fit.rounds] and fit.bias == trained[-1]
    assert [r["ppl_tuned"] for r in fit.rounds] == pytest.approx([base + excess * (decode(b) - base) for b in trained])
    assert fit.within and fit.rounds[-1]["ppl_tuned"] <= base * 1.05
    if excess == 1.0:
        assert trained == [b0]
    else:  # b moved toward 0, to within the bisection's resolution of the b that the excess allows
        assert all(a < b for a, b in zip(trained, trained[1:])) and len(trained) >= 2
        allowed = -5.0 / excess  # decode(b) - base = 5% / excess of base
        assert allowed - 1e-9 <= fit.bias <= allowed + abs(BAN_FLOOR) / 2**8
    one = fit_budget_bias(trained.append, lambda: base * 2, decode, base, 0.05, b0, rounds=1, echo=quiet)
    assert not one.within and len(one.rounds) == 1  # over after its only round: said, not hidden


def test_fit_trained_bias_stops_only_on_a_confirmed_round():
    """A probe within tolerance, or unable to tell R from R*, is measured again, more narrowly, before the rounds
    stop or move b on it: here the probe reads 0.5 (on target) whatever the model, where the trained model
    samples 0.426 at b = 4, so the rounds record 0.426 and go on from it."""
    fake = FakeTraining(lambda b: sigmoid(b - 4.3))  # what sampling the trained model gives
    confirmed = []

    def probe():  # a probe that reads on target whatever the model (an estimate gone wrong)
        return {"mean": 0.5, "ci_low": 0.48, "ci_high": 0.52, "n": 64, "ess": 40.0}

    def confirm():
        confirmed.append(fake.trained[-1])
        return fake.probe()

    fit, _ = fit_trained_bias(fake.train_at, probe, 0.5, 4.0, rounds=3, n=1000, tol=0.01, confirm=confirm)
    assert confirmed == fake.trained  # every round's probe was on target, so every round was confirmed
    assert fit.rounds[0] == (4.0, pytest.approx(sigmoid(-0.3)))  # round 1 records the confirmed R, 0.426
    assert fake.trained[1] == pytest.approx(4.3)  # and steps from it: logit(0.5) - logit(0.426) = 0.3
    assert len(fit.rounds) == 2 and fit.rate["mean"] == pytest.approx(0.5)
    # a probe off target whose interval holds R* is confirmed, and b moves on the confirmed R
    fake, confirmed = FakeTraining(lambda b: sigmoid(b - 4.3)), []
    wide = {"mean": 0.46, "ci_low": 0.40, "ci_high": 0.52, "n": 64}
    fit, _ = fit_trained_bias(fake.train_at, lambda: wide, 0.5, 4.0, rounds=2, n=1000, tol=0.01, confirm=confirm)
    assert confirmed == [4.0, pytest.approx(4.3)] and fit.rate["mean"] == pytest.approx(0.5)
    # a probe that tells the model from R* is not confirmed: the rounds move b on it
    fake, confirmed = FakeTraining(lambda b: 0.5), []
    far = {"mean": 0.2, "ci_low": 0.18, "ci_high": 0.22, "n": 64}
    fit, _ = fit_trained_bias(fake.train_at, lambda: far, 0.5, 4.0, rounds=2, n=1000, tol=0.01, confirm=confirm)
    assert confirmed == [] and len(fit.rounds) == 2
