"""rho's and the drift ratio's bootstrap interval (measurement/intervals.py), and target_met."""

import math

import numpy as np
import pytest
import torch

from tokentilt.measurement.intervals import WindowCosts, excess_cost_interval, target_met

T = 32  # targets (and drift positions) per window
MU_BASE, MU_TUNED, MU_DECODE = 4.0, 4.06, 4.05  # expected per-token NLL of each model
KL_TUNED, KL_DECODE = 0.12, 0.10  # expected per-token KL
TRUE_RHO = (math.exp(MU_TUNED) - math.exp(MU_BASE)) / (math.exp(MU_DECODE) - math.exp(MU_BASE))
TRUE_DRIFT_RATIO = KL_TUNED / KL_DECODE


def synthetic(windows: int, rng: np.random.Generator) -> tuple[WindowCosts, WindowCosts, WindowCosts]:
    """Per-window sums of three models on the same windows: a window's difficulty is shared (paired)."""
    hard = rng.normal(0, 0.3, windows)  # the window's difficulty, the same for every model
    targets = torch.full((windows,), float(T), dtype=torch.float64)

    def costs(mu, kl):
        nll = T * (mu + hard + rng.normal(0, 0.03, windows))
        drift = T * kl * rng.gamma(20, 1 / 20, windows) if kl else np.zeros(windows)
        return WindowCosts(torch.tensor(nll), targets, torch.tensor(drift), targets)

    return costs(MU_BASE, 0), costs(MU_TUNED, KL_TUNED), costs(MU_DECODE, KL_DECODE)


def test_the_interval_covers_the_true_ratio_in_about_95_percent_of_draws():
    rng = np.random.default_rng(1)
    covered = {"rho": 0, "drift_ratio": 0}
    reps = 200
    for _ in range(reps):
        ci = excess_cost_interval(*synthetic(60, rng), resamples=1000)
        covered["rho"] += ci["rho"][0] <= TRUE_RHO <= ci["rho"][1]
        covered["drift_ratio"] += ci["drift_ratio"][0] <= TRUE_DRIFT_RATIO <= ci["drift_ratio"][1]
    assert 0.90 <= covered["rho"] / reps <= 0.99
    assert 0.90 <= covered["drift_ratio"] / reps <= 0.99


def test_the_interval_narrows_with_more_windows():
    rng = np.random.default_rng(2)
    widths = []
    for windows in (20, 80, 320):
        low, high = excess_cost_interval(*synthetic(windows, rng))["rho"]
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2] and widths[2] < widths[0] / 2.5  # about 1/sqrt(W): 4x fewer is 2x


def test_the_interval_is_exactly_reproducible_with_its_seed():
    costs = synthetic(30, np.random.default_rng(3))
    assert excess_cost_interval(*costs, seed=5) == excess_cost_interval(*costs, seed=5)
    assert excess_cost_interval(*costs, seed=5) != excess_cost_interval(*costs, seed=6)


def test_resampling_the_tuned_r_moves_the_decode_time_tilt_and_widens_rho():
    before, after, decode = synthetic(40, np.random.default_rng(4))
    rates = torch.tensor([0.4, 0.6] * 32 + [math.nan])  # R = 0.5; a sample without tokens has no rate
    asked = []

    def decode_at(rate: float) -> WindowCosts:  # a higher R costs the decode-time tilt more
        asked.append(rate)
        return WindowCosts(decode.nll + T * (rate - 0.5) * 0.05, decode.targets, decode.kl, decode.positions)

    fixed = excess_cost_interval(before, after, decode)["rho"]
    moving = excess_cost_interval(before, after, decode, rates=rates, decode_at=decode_at)["rho"]
    assert len(set(asked)) > 10 and all(0.4 <= r <= 0.6 for r in asked)
    assert moving[1] - moving[0] > fixed[1] - fixed[0]


def test_a_decode_time_tilt_that_can_cost_nothing_leaves_rho_unbounded():
    before, after, decode = synthetic(20, np.random.default_rng(5))
    free = WindowCosts(before.nll + torch.linspace(-1, 1, 20), before.targets, decode.kl, decode.positions)
    low, high = excess_cost_interval(before, after, free)["rho"]
    assert high == math.inf and low <= high


def test_costs_on_other_windows_are_refused():
    before, after, decode = synthetic(20, np.random.default_rng(6))
    short = WindowCosts(after.nll[:10], after.targets[:10], after.kl[:10], after.positions[:10])
    with pytest.raises(ValueError, match="different windows"):
        excess_cost_interval(before, short, decode)


RATE = {"mean": 0.50, "ci_low": 0.46, "ci_high": 0.54}


@pytest.mark.parametrize(
    "rate,tolerance,rho_ci,met",
    [
        (RATE, 0.05, (1.0, 1.4), True),  # all three hold
        ({"mean": 0.56, "ci_low": 0.52, "ci_high": 0.60}, 0.05, (1.0, 1.4), False),  # R* outside R's interval
        ({"mean": 0.50, "ci_low": 0.38, "ci_high": 0.62}, 0.05, (1.0, 1.4), False),  # half-width 0.06 > 0.05
        (RATE, 0.05, (1.0, 1.6), False),  # rho's upper bound above its limit (its point may be below)
        (RATE, 0.05, (1.0, math.inf), False),  # an unbounded rho
        (RATE, 0.05, None, False),  # no rho: the decode-time tilt costs nothing
        (RATE, 0.05, (None, None), False),  # a summary from before rho had an interval
        ({"mean": 0.50, "ci_low": 0.45, "ci_high": 0.55}, 0.05, (1.0, 1.5), True),  # the edges count as within
    ],
)
def test_target_met_needs_r_star_inside_a_narrow_interval_and_rho_s_upper_bound_within_its_limit(
    rate, tolerance, rho_ci, met
):
    assert target_met(rate, 0.5, tolerance, rho_ci, 1.5) is met


def test_the_eval_job_prints_rho_and_the_drift_ratio_with_their_intervals():
    from tokentilt.jobs.eval import eval_table

    rate = {"mean": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 4}
    row = {"name": "m", "rate": rate, "ppl": 80.0, "drift": 0.1, "distinct_1": 0.5, "distinct_2": 0.8, "repetition": 0}
    result = {"rows": [row], "rho": 1.2, "drift_ratio": None, "rho_ci_low": 1.05, "rho_ci_high": 1.41}
    result.update(drift_ratio_ci_low=None, drift_ratio_ci_high=None)
    assert eval_table(result).splitlines()[-1].startswith("rho = rho 1.20 [1.05, 1.41], drift_ratio n/a (95% interv")
