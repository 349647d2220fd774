"""Calibration: find the decode-time bias b whose rate R on a model is a requested R*.

Two stages:
1. a fast proxy from one forward pass over text windows. Under a bias b the set's mass at a
   position with set mass p becomes sigmoid(logit(p) + b), so the mean tilted mass is a cheap,
   smooth, increasing function of b; bisection on it gives a starting guess b0.
2. bisection (with false-position steps in logit space) on the sampled rate itself, on a fixed
   set of prompts and seeds (the EvalConfig's), starting from b0. The seeds are fixed, so R(b) is a deterministic function
   of b that is increasing up to sampling noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from tokentilt.measurement import importance
from tokentilt.measurement.evaluate import EvalConfig, measure_rate, narrow_enough
from tokentilt.measurement.metrics import forward_batches, half_width, split_windows
from tokentilt.objectives.losses import set_log_mass
from tokentilt.settings import check_rate  # noqa: F401 (re-exported)
from tokentilt.targets.target import Target, as_target


@dataclass
class Calibration:
    """The result: b and the rate it gives on the calibration prompts and seeds."""

    target: float  # requested rate R*
    bias: float  # chosen logit bias b
    rate: dict  # measured R at b: {"mean", "ci_low", "ci_high", "n"}
    proxy_bias: float  # the one-pass guess b0
    history: list[tuple[float, float]] = field(default_factory=list)  # (b, R mean) per sampled measurement
    pool: importance.Pool | None = None  # the draws, scored for importance weights (a token set at temperature 1)


def set_log_masses(model, windows, mask: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """log p(set) at every position of the (W, T) windows, flattened: (W*T,); for ReplyWindows, at the
    positions that predict a reply token."""
    ids, counted = split_windows(windows)
    parts = [set_log_mass(logits, mask) for _, (logits,) in forward_batches([model], ids, 8, bf16, False, "set mass")]
    log_mass = torch.cat(parts)  # (W, T)
    return log_mass.reshape(-1) if counted is None else log_mass[:, :-1][counted[:, 1:]]


def tilted_mean_mass(log_mass: torch.Tensor, bias: float) -> float:
    """Mean over positions of the set's mass after a logit bias b. log_mass (N,) -> float.

    logit(p') = logit(p) + b, computed in log space so that p near 0 or 1 stays exact.
    """
    log_mass = log_mass.double().clamp(max=-1e-12)
    logit = log_mass - torch.log1p(-log_mass.exp())  # (N,)
    return torch.sigmoid(logit + bias).mean().item()


def bisect(fn, target: float, lo: float, hi: float, iters: int = 60, tol: float = 0.0) -> float:
    """b in [lo, hi] with fn(b) ≈ target for an increasing fn; clamps to the ends when out of range."""
    if fn(lo) >= target:
        return lo
    if fn(hi) <= target:
        return hi
    for _ in range(iters):
        mid = (lo + hi) / 2
        value = fn(mid)
        if abs(value - target) <= tol:
            return mid
        lo, hi = (mid, hi) if value < target else (lo, mid)
    return (lo + hi) / 2


def proxy_bias(
    model,
    windows: torch.Tensor,
    mask: torch.Tensor,
    target: float,
    bf16: bool = False,
    limit: float = 30.0,
    log_mass: torch.Tensor | None = None,
) -> float:
    """b whose mean tilted set mass over the windows is `target` (one forward pass, none when the
    set_log_masses of the windows are given as log_mass)."""
    if log_mass is None:
        log_mass = set_log_masses(model, windows, mask, bf16)
    return bisect(lambda b: tilted_mean_mass(log_mass, b), target, -limit, limit)


BAN_FLOOR = -12.0  # the most negative b a ban tries: an entry keeps exp(-12), about 6e-6, of its odds
BAN_STEPS = 8  # bisection steps of the ban's b: 12 / 2^8, about 0.05


def ban_bias(ppl_at, base: float, budget: float, echo=print) -> tuple[float, list[dict]]:
    """--ban: the most negative b in [BAN_FLOOR, 0] whose decode-time tilt keeps held-out perplexity within
    (1 + budget) x base, by bisection on ppl_at(b) (a decode-time perplexity, which needs no sampling), taking
    perplexity to rise as b falls -> (b, the points tried [{"bias", "ppl"}])."""
    limit, points = base * (1 + budget), []

    def within(b: float) -> bool:
        ppl = ppl_at(b)
        points.append({"bias": b, "ppl": ppl})
        echo(f"  b = {b:.3f}: held-out perplexity {ppl:.3f} ({'within' if ppl <= limit else 'over'} {limit:.3f})")
        return ppl <= limit

    if within(BAN_FLOOR):
        return BAN_FLOOR, points
    lo, hi = BAN_FLOOR, 0.0  # over the budget at lo, within it at hi (b = 0 is the model itself)
    for _ in range(BAN_STEPS):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if within(mid) else (mid, hi)
    return hi, points


@dataclass
class BudgetFit:
    """--ban's b after the budget rounds: moved toward 0 until the *trained* model's held-out perplexity is
    within the fluency budget (the decode-time tilt's is, at the ban's b; a trained model pays rho times it)."""

    bias: float  # b of the last round, whose fit the model holds
    rounds: list[dict]  # {"bias", "ppl_tuned", "ppl_decode"} per training round
    within: bool  # whether the last round's trained perplexity is within the budget

    def round_records(self) -> list[dict]:
        return self.rounds


def fit_budget_bias(
    train_at, tuned_ppl, ppl_at, base: float, budget: float, bias: float, rounds: int, echo=print
) -> BudgetFit:
    """Train at b (train_at(b)), measure the trained model's held-out perplexity (tuned_ppl()), and while it is
    over (1 + budget) x base, train again at the most negative b whose decode-time perplexity (ppl_at(b)) is
    within budget / k, where k is the last round's excess over the decode-time tilt at its b ((tuned - base) /
    (decode - base), an in-sample rho), at most `rounds` trainings. Each round moves b toward 0, so the kept
    fit is the last one."""
    limit, records = base * (1 + budget), []
    for number in range(1, rounds + 1):
        train_at(bias)
        tuned, decode = tuned_ppl(), ppl_at(bias)
        records.append({"bias": bias, "ppl_tuned": tuned, "ppl_decode": decode})
        within = tuned <= limit
        echo(
            f"budget round {number}: b = {bias:.3f}: trained held-out perplexity {tuned:.3f} "
            f"({'within' if within else 'over'} {limit:.3f}); the decode-time tilt's {decode:.3f}"
        )
        if within or number == rounds or decode <= base:
            break
        share = budget * (decode - base) / (tuned - base)  # the decode-time budget that this excess fits in
        moved, _ = ban_bias(ppl_at, base, share, echo=lambda *_: None)
        if moved <= bias:  # no b nearer 0 is within it (the bisection's resolution): nothing better to try
            break
        bias = moved
    return BudgetFit(bias, records, within)


def rate_tolerance(target: float, tol: float, width: float = 0.0) -> float:
    """The |R - R*| that counts as on target: `tol`, or 15% of the distance to 0 or 1 when that is smaller,
    so that a small R* (0.05 of words) is not met by a rate 40% off it; and with `width`, the half-width that
    R is measured to (EvalConfig.half_width), at most half of it, so that R* lies inside the interval of a
    fresh measurement and not at its edge."""
    tol = min(tol, 0.15 * min(target, 1 - target))
    return min(tol, width / 2) if width > 0 else tol


def _logit(r: float, n: int) -> float:
    r = min(max(r, 0.5 / n), 1 - 0.5 / n)  # a rate of 0 or 1 out of n samples is not infinitely sure
    return math.log(r / (1 - r))


def calibrate(
    model,
    tokenizer,
    tokens: Target | torch.Tensor,
    target: float,
    cfg: EvalConfig,
    windows: torch.Tensor,
    bf16: bool = False,
    iters: int = 8,
    tol: float = 0.02,
    max_step: float = 4.0,
    echo=None,
    log_mass: torch.Tensor | None = None,
) -> Calibration:
    """Find b with decode-time R(b) ≈ target on `model`, on cfg's fixed prompts, samples and eval_seed, for the
    set `tokens` (a Target, or a (V,) bool mask).

    Starts from the one-pass proxy b0. Until the target is bracketed, steps in logit space (one
    unit of b moves a single position's logit(p) by one unit, so the first step is
    logit(R*) - logit(R(b0)), at most max_step). Once bracketed it bisects, placing each point by
    linear interpolation of logit(R) (false position), kept within the inner 80% of the bracket.
    Stops when |R - target| <= rate_tolerance(target, tol) or after `iters` sampled measurements, and returns the
    measured b whose R is closest to the target. log_mass: the windows' set_log_masses, if known
    (metrics.TiltCosts.log_mass), for the proxy.
    """
    check_rate(target)
    tol = rate_tolerance(target, tol, cfg.half_width)
    tokens = as_target(tokens)
    # a phrase set has no one-pass proxy (its bias depends on context): start at b = 0
    b0 = 0.0 if tokens.mask is None else proxy_bias(model, windows, tokens.mask, target, bf16, log_mass=log_mass)
    measured: dict[float, dict] = {}  # b -> R measured there (the draws are the same at the same b and seeds)
    pool = None
    if importance.weighable(tokens, cfg):
        found, measured, pool = calibrate_by_weights(model, tokenizer, tokens, target, cfg, b0, bf16, max_step, echo)
        if found is not None:
            return found
    n = len(cfg.prompts) * cfg.samples_per_prompt
    goal = _logit(target, n)
    first = [cfg.samples_per_prompt]  # the first pass alone: where R is still far from the target
    drawn = {}  # b -> (rate, samples) of a first pass, which sampling until known goes on from

    def rate_at(b: float, known: bool = False) -> float:
        """R at b: of the first pass, or (known) sampled until known, by measure_rate's rule."""
        again = known and measured.get(b, {}).get("stop") == "fixed" and cfg.half_width > 0
        if b not in measured or again:
            plan, extend = (None, drawn.pop(b, None)) if known else (first, None)
            rate, samples = measure_rate(model, tokenizer, tokens, cfg, bias=b, bf16=bf16, plan=plan, extend=extend)
            measured[b] = rate
            if not known:
                drawn[b] = rate, samples
            if echo:
                echo(f"  calibrate: b = {b:+.3f} -> R = {fmt_measured(measured[b])}")
        return measured[b]["mean"]

    b = b0
    lo = hi = None  # bracket: R(lo) < target < R(hi)
    for _ in range(iters):
        r = rate_at(b)
        if abs(r - target) <= tol:  # on target by the first pass: sample until known, and judge on that
            r = rate_at(b, known=True)
            if abs(r - target) <= tol:
                break
        if r < target:
            lo = b if lo is None else max(lo, b)
        else:
            hi = b if hi is None else min(hi, b)
        if lo is not None and hi is not None:
            y_lo, y_hi = _logit(rate_at(lo), n), _logit(rate_at(hi), n)
            frac = (goal - y_lo) / (y_hi - y_lo) if y_hi > y_lo else 0.5
            frac = min(max(frac, 0.1), 0.9)  # keep the bracket shrinking even when R(b) is far from linear
            b = lo + frac * (hi - lo)
        elif r in (0.0, 1.0):  # not a single hit (or miss) yet: the logit says nothing, take the full step
            b = b + (max_step if r == 0 else -max_step)
        else:
            b = b + max(-max_step, min(max_step, goal - _logit(r, n)))
    best = min(measured, key=lambda x: (abs(measured[x]["mean"] - target), abs(x)))
    rate_at(best, known=True)
    history = [(x, measured[x]["mean"]) for x in measured]
    return Calibration(target, best, measured[best], b0, history, pool)


def fmt_measured(rate: dict) -> str:
    """A calibration point's R with its interval, its sample count and where sampling stopped."""
    how = f", {rate['stop']}" if rate.get("stop", "fixed") != "fixed" else ""
    return f"{rate['mean']:.3f} [{rate['ci_low']:.3f}, {rate['ci_high']:.3f}] (n = {rate['n']}{how})"


WEIGHTED_DRAWS = 4  # draws calibrate_by_weights takes before handing over to bisection
# A draw samples until known only where the pooled estimate's interval is within NEAR x the half-width asked
# (or it is the last draw): a draw far from the answer is a first pass, which steers as well for its cost
NEAR = 2.0


def calibrate_by_weights(
    model,
    tokenizer,
    tokens: Target | torch.Tensor,
    target: float,
    cfg: EvalConfig,
    b0: float,
    bf16: bool = False,
    max_step: float = 4.0,
    echo=None,
    draws: int = WEIGHTED_DRAWS,
) -> tuple[Calibration | None, dict[float, dict], importance.Pool]:
    """calibrate() for a token set at temperature 1: R(b) estimated at every b from the draws so far.

    Draws the first pass at b0, then solves R(b) = target on the importance-weighted estimate of all draws
    pooled (importance.py), within max_step of the biases drawn, and draws there: a first pass again while the
    estimate's interval there is wider than NEAR x the half-width asked, and sampling until R is known
    (measure_rate's rule) once it is narrower, or at the last draw. When the estimate at the solved b rests
    on an effective sample size of at least half the smallest draw and its interval is as narrow as the rule
    asks (or as it gets: the last draw spent its budget, or there is no draw left), that b is the result and
    its R the estimate. A wider estimate draws again at the solved b, so the pool gathers its samples near
    the answer, where the rate rounds' estimates of the trained model read them too; an estimate on too few
    effective samples steps one logit step from the last draw, as in calibrate(). After `draws` draws without one the result
    is None and the caller bisects, starting from the R measured at these draws (a set frequent in every
    sample, such as "e", weighs badly even a small change of b). Each draw records what the weights need
    (generate.StepScores). -> (the calibration or None, {b: R measured}, the pool).
    """
    tokens = as_target(tokens)
    pool, history, measured, b = importance.Pool(), [], {}, b0
    near = False  # whether the last estimate places the answer close enough to sample it until known
    for i in range(draws):
        plan = None if near or i == draws - 1 else [cfg.samples_per_prompt]
        rate, samples = measure_rate(model, tokenizer, tokens, cfg, bias=b, bf16=bf16, score=True, plan=plan)
        history.append((b, rate["mean"]))
        measured[b] = rate
        if echo:
            echo(f"  calibrate: b = {b:+.3f} -> R = {fmt_measured(rate)}")
        per_sample = tokens.rates(samples)
        pool.draws.append(importance.draw_of(model, tokenizer, samples, tokens.mask, b, per_sample, bf16))
        solved = pool.solve(target, reach=max_step)
        estimate = pool.at_bias(solved)
        # known: as narrow as the rule asks, or as narrow as it gets (the last draw spent its budget, or
        # this was the last draw); a draw there would pool more samples near the answer
        known = narrow_enough(estimate, cfg) or (i > 0 and (rate["stop"] == "budget" or i == draws - 1))
        if pool.enough(estimate) and known:
            if echo:
                echo(
                    f"  calibrate: b = {solved:+.3f} -> R = {estimate['mean']:.3f} estimated from the "
                    f"{len(pool.draws)} draw(s) by importance weights ({estimate['ess']:.0f} effective samples)"
                )
            return Calibration(target, solved, estimate, b0, history, pool), measured, pool
        near = pool.enough(estimate) and half_width(estimate) <= NEAR * cfg.half_width
        if pool.enough(estimate):  # good enough to aim at: draw there, until R is known once it is near
            b = solved
            continue
        # the draws say little about R there: step in logit space from the last draw, as calibrate() does
        step = _logit(target, pool.n) - _logit(rate["mean"], pool.n)
        b = b + max(-max_step, min(max_step, step))
    return None, measured, pool


def bias_at_rate(points: list[tuple[float, float]], target: float, n: int) -> float:
    """b whose decode-time R is `target`, read off measured (b, R) points: linear in logit(R)
    between the two points that bracket it, or along the end segment beyond them."""
    pts = sorted({b: _logit(r, n) for b, r in points}.items())  # (b, logit R), one per b
    goal = _logit(target, n)
    if len(pts) == 1:
        return pts[0][0]
    for (b1, y1), (b2, y2) in zip(pts, pts[1:]):
        if y1 != y2 and min(y1, y2) <= goal <= max(y1, y2):
            return b1 + (goal - y1) / (y2 - y1) * (b2 - b1)
    (b1, y1), (b2, y2) = pts[:2] if goal < pts[0][1] else pts[-2:]
    if y1 == y2:
        return min(pts, key=lambda p: abs(p[1] - goal))[0]
    return b1 + (goal - y1) / (y2 - y1) * (b2 - b1)


def bracketed(points: list[tuple[float, float]], target: float) -> bool:
    """Whether measured (b, R) points lie on both sides of `target` (or one meets it)."""
    rates = [r for _, r in points]
    return min(rates) <= target <= max(rates)


def match_bias(
    points: list[tuple[float, float]], target: float, n: int, measure, extra: int = 2, max_jump: float = 1.5
) -> tuple[float, list[tuple[float, float]]]:
    """b whose decode-time R is `target`, measuring more points where the measured ones do not bracket it.

    bias_at_rate extends the end segment beyond the points, which is a poor guess where R(b) bends (a
    phrase list's R stays near 0 up to b of about 4, then climbs). So while the target lies outside the
    points, at most `extra` times, R is measured (measure(b) -> R) at the extended guess, moved at most
    `max_jump` from the nearest point. -> (b, every point)."""
    points = list(points)
    for _ in range(extra):
        if bracketed(points, target):
            break
        guess = bias_at_rate(points, target, n)
        nearest = min(points, key=lambda p: abs(p[1] - target))[0]
        b = nearest + max(-max_jump, min(max_jump, guess - nearest))
        if any(b == p[0] for p in points):
            break
        points.append((b, measure(b)))
    return bias_at_rate(points, target, n), points


@dataclass
class RoundsState:
    """fit_trained_bias after a round: what it needs to go on from there."""

    tried: list[tuple[float, dict]]  # (b, probe R) per round so far
    best: int  # index of the round kept so far
    value: object  # that round's train_at value
    bias: float  # b of the next round
    done: bool  # no round follows


@dataclass
class RateFit:
    """tilt-distill's b, corrected so that the *trained* model's rate is R*."""

    target: float  # requested rate R*
    bias: float  # b of the kept round
    rate: dict  # the kept round's probe R
    rounds: list[tuple[float, float]] = field(default_factory=list)  # (b, probe R mean) per training round
    kept: int = 0  # index of the kept round

    def round_records(self) -> list[dict]:
        """[{"bias": b, "probe_rate": R}] per round, for summary.json and runs.jsonl."""
        return [{"bias": b, "probe_rate": r} for b, r in self.rounds]


def fit_trained_bias(
    train_at,
    probe,
    target: float,
    bias: float,
    rounds: int,
    n: int,
    tol: float = 0.03,
    max_step: float = 4.0,
    echo=None,
    resumed: RoundsState | None = None,
    after_round=None,
    width: float = 0.0,
    confirm=None,
):
    """Train toward b, measure the trained model's R, move b, train again: at most `rounds` times.

    A model distilled toward softmax(z_ref + b·M) on play text lands near, not on, the decode-time
    rate of b on the prompts: the tilt is learned on other contexts, in a finite number of steps.
    So b starts at the decode-time calibration and each round moves it in logit space, first by
    logit(R*) - logit(R), then along the secant through the last two rounds. Stops when
    |R - R*| <= rate_tolerance(R*, tol, width) (width: the half-width the probe measures R to) and keeps the
    round whose R is nearest R*.

    train_at(b) trains from the start weights and returns what the caller keeps of that round
    (its history, a copy of the weights); probe() -> R dict of the model just trained. The probe
    should use seeds other than the reported measurement's, so that the reported R is not the
    one b was fitted to. confirm() -> R dict, the model just trained sampled on the probe's seeds to a
    narrower interval than the probe's, replaces a probe that lands within the tolerance or whose interval
    holds R*, and the rounds stop only if it is within the tolerance too. A probe (an importance-weighted
    estimate, or samples to +-width) that lands within the tolerance leaves the model's R as far from R* as
    its own error, and the reported R, on other seeds, errs again; and a step of b on a probe that cannot
    tell the model's R from R* moves b by the probe's noise (toward x at 0.3: probes 0.282, 0.336, 0.310
    while b moved 3.709 -> 3.796 -> 3.739, about 0.02 of R). after_round(RoundsState) is called after each
    round (a checkpoint); `resumed`, the last one it was given, continues from there (its value is the kept
    round's train_at value).
    Returns (RateFit, the kept round's train_at value).
    """
    check_rate(target)
    if rounds < 1:
        raise ValueError(f"rate-rounds must be >= 1, got {rounds}")
    goal = _logit(target, n)
    tol = rate_tolerance(target, tol, width)
    tried: list[tuple[float, dict]] = []  # (b, R) per round
    best, best_value, done = 0, None, False
    if resumed is not None:
        tried, best, best_value = list(resumed.tried), resumed.best, resumed.value
        bias, done = resumed.bias, resumed.done
    for i in range(len(tried), 0 if done else rounds):
        value = train_at(bias)
        r = probe()
        if echo:
            how = f", estimated by importance weights from {r['ess']:.0f} effective samples" if "ess" in r else ""
            echo(f"  round {i + 1}: b = {bias:+.3f} -> trained R = {r['mean']:.3f} (target {target}{how})")
        if confirm is not None and (abs(r["mean"] - target) <= tol or r["ci_low"] <= target <= r["ci_high"]):
            r = confirm()  # within tolerance, or not told from R*: known more narrowly before b moves or stops
            if echo:
                echo(f"  round {i + 1}: confirmed by sampling -> trained R = {fmt_measured(r)}")
        tried.append((bias, r))
        if i == 0 or abs(r["mean"] - target) < abs(tried[best][1]["mean"] - target):
            best, best_value = i, value  # only the best round's weights are held
        done = abs(r["mean"] - target) <= tol or i == rounds - 1
        if not done:
            y = _logit(r["mean"], n)
            slope = 1.0  # one unit of b moves logit(p) by one unit at every position
            if i:
                b0, r0 = tried[-2]
                secant = (y - _logit(r0["mean"], n)) / (bias - b0) if bias != b0 else 0.0
                slope = secant if secant >= 0.25 else slope  # a noisy or flat secant falls back to the first-order step
            bias = bias + max(-max_step, min(max_step, (goal - y) / slope))
        if after_round is not None:
            after_round(RoundsState(list(tried), best, best_value, bias, done), best == i)
        if done:
            break
    fit = RateFit(target, tried[best][0], tried[best][1], [(b, r["mean"]) for b, r in tried], best)
    return fit, best_value
