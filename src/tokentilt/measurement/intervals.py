"""Intervals of rho and the drift ratio (a paired bootstrap over held-out windows), and when a run meets its
targets (target_met).

Why a bootstrap and not the delta method: rho = (ppl_tuned - ppl_base) / (ppl_decode - ppl_base) is a ratio
of differences of exponentials of ratios (each perplexity is exp(summed NLL / targets)), and its denominator
is small exactly where rho is most in doubt (a tilt that barely moves R). The delta method linearises all of
that and gives a symmetric interval that is too narrow there; the percentile bootstrap keeps the skew and
needs no derivative. It costs no model pass: the costs pass already yields each window's summed NLL, target
count and summed KL (WindowCosts), and a resample only reweights those sums, O(resamples x windows).

What is resampled, and why jointly: the three perplexities (and the two drifts) are measured on the *same*
windows, so their errors are correlated (a hard window is hard for every model); each resample draws one set
of windows with replacement and recomputes every cost on it (paired), so the correlation cancels as it does
in rho itself. Windows, not tokens, are the unit: tokens within a window are correlated, as tokens within a
sample are for R (metrics.mean_ci). Where R enters (tilt-distill's matched decode-time tilt sits at the tuned
model's R), the tuned model's samples are resampled too, independently of the windows (they are other data),
and the decode-time tilt's costs are recomputed at the b that the resampled R reads off the same (b, R)
curve (`decode_at`). That curve's own points are held fixed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

RESAMPLES = 1000  # bootstrap resamples: the 2.5% and 97.5% quantiles rest on 25 draws each
SEED = 0  # the bootstrap's seed: the same run gives the same interval


@dataclass
class WindowCosts:
    """The per-window sums behind one model's held-out perplexity and drift: perplexity =
    exp(sum nll / sum targets), drift = sum kl / sum positions. Each field is (W,) float64, window by window
    in the order of the held-out windows (a window with no counted token holds zeros)."""

    nll: torch.Tensor  # (W,) summed next-token NLL of the targets perplexity counts, nats
    targets: torch.Tensor  # (W,) how many targets perplexity counts
    kl: torch.Tensor  # (W,) summed KL(reference || model), nats
    positions: torch.Tensor  # (W,) how many positions drift counts

    def perplexity(self) -> float:
        return math.exp(float(self.nll.sum() / self.targets.sum()))

    def drift(self) -> float:
        return float(self.kl.sum() / self.positions.sum())


def window_sums(values: torch.Tensor, window: torch.Tensor, windows: int) -> torch.Tensor:
    """Sum per-position values (K,) into their windows (window (K,) long, each in [0, windows)) -> (windows,)."""
    return torch.zeros(windows, dtype=torch.float64).index_add_(0, window.cpu(), values.double().cpu())


def resample_counts(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, n): how often each of n units is drawn in each resample of n draws with replacement."""
    idx = rng.integers(0, n, size=(resamples, n)) + n * np.arange(resamples)[:, None]  # (B, n): unit, offset by row
    return np.bincount(idx.ravel(), minlength=resamples * n).reshape(resamples, n).astype(np.float64)


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The (1 - confidence)/2 and (1 + confidence)/2 quantiles of bootstrap values, as order statistics
    (values may be +-inf: a resample whose decode-time tilt costs nothing has an unbounded rho)."""
    values = values[~np.isnan(values)]
    low, high = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2], method="inverted_cdf")
    return float(low), float(high)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, with +-inf (by num's sign, +inf for 0) where den <= 0: there the ratio is unbounded."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(num < 0, -np.inf, np.inf))


def excess_cost_interval(
    before: WindowCosts,
    after: WindowCosts,
    decode: WindowCosts,
    rates: torch.Tensor | None = None,
    decode_at: Callable[[float], WindowCosts] | None = None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = 0.95,
) -> dict:
    """Percentile-bootstrap intervals of rho and the drift ratio -> {"rho": (low, high), "drift_ratio":
    (low, high)}, resampling the windows jointly for the three models (see the module's docstring).

    rates, decode_at: the tuned model's per-sample R (N,) (NaN: no rate) and the decode-time tilt's
    WindowCosts at the b matched to a given R; with both, each resample also redraws the samples and takes
    the decode-time costs at its R. A bound may be +-inf where resamples leave rho unbounded.
    """
    rng = np.random.default_rng(seed)
    w = len(before.nll)
    if not len(after.nll) == len(decode.nll) == w:
        raise ValueError(f"the costs are on different windows ({w}, {len(after.nll)}, {len(decode.nll)})")
    counts = resample_counts(w, resamples, rng)  # (B, W)
    if rates is not None and decode_at is not None:
        r = np.asarray(rates, dtype=np.float64)
        drawn = resample_counts(len(r), resamples, rng)  # (B, N)
        ok = ~np.isnan(r)
        rate_means = (drawn[:, ok] @ r[ok]) / drawn[:, ok].sum(1)  # (B,)
        cache: dict[float, WindowCosts] = {}
        decoded = [cache.setdefault(float(m), decode_at(float(m))) if m == m else decode for m in rate_means]
    else:
        decoded = [decode] * resamples

    def ppl(c: WindowCosts | list[WindowCosts]) -> np.ndarray:
        if isinstance(c, list):
            nll = np.stack([d.nll.numpy() for d in c])  # (B, W)
            targets = np.stack([d.targets.numpy() for d in c])
            return np.exp((counts * nll).sum(1) / (counts * targets).sum(1))
        return np.exp(counts @ c.nll.numpy() / (counts @ c.targets.numpy()))

    def kl(c: WindowCosts | list[WindowCosts]) -> np.ndarray:
        if isinstance(c, list):
            return (counts * np.stack([d.kl.numpy() for d in c])).sum(1)
        return counts @ c.kl.numpy()

    base = ppl(before)
    rho = _ratio(ppl(after) - base, ppl(decoded) - base)
    drift_ratio = _ratio(kl(after), kl(decoded))  # the same positions in numerator and denominator
    return {"rho": percentile_interval(rho, confidence), "drift_ratio": percentile_interval(drift_ratio, confidence)}


def own_cost_comparison(
    sides: dict[str, WindowCosts],
    tuned: str,
    against: tuple[str, ...],
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = 0.95,
) -> dict:
    """Models compared on their own samples (evaluate.own_costs: a sample is a window; sides[name]): each side's
    reference perplexity of its samples ("ppl") and mean KL(sampled || reference) per step ("kl"), with 95%
    percentile-bootstrap intervals; and for each side in `against`, the tuned side's cost relative to it,
    "kl_ratio" = kl_tuned / kl_other with its interval (None where kl_other is not positive).

    The sides are different draws (each model samples its own replies), so each is resampled on its own, not
    jointly as the held-out windows of excess_cost_interval. No ratio of the perplexities: each model's
    perplexity of its own replies varies with the replies far more than a ban moves it (on the demo, 64
    replies give about +-15%), so the difference of two is noise; the KL is a sum of exact per-step
    distances, and varies much less.
    """
    rng = np.random.default_rng(seed)
    point, drawn = {}, {}
    for name, c in sides.items():
        counts = resample_counts(len(c.nll), resamples, rng)  # (B, N)
        point[name] = (c.perplexity(), c.drift())
        drawn[name] = (
            np.exp(counts @ c.nll.numpy() / (counts @ c.targets.numpy())),
            counts @ c.kl.numpy() / (counts @ c.positions.numpy()),
        )
    out = {
        name: {
            "ppl": point[name][0],
            "ppl_ci": percentile_interval(drawn[name][0], confidence),
            "kl": point[name][1],
            "kl_ci": percentile_interval(drawn[name][1], confidence),
        }
        for name in sides
    }
    for other in against:
        out[f"vs_{other}"] = {
            "kl_ratio": point[tuned][1] / point[other][1] if point[other][1] > 0 else None,
            "kl_ratio_ci": percentile_interval(_ratio(drawn[tuned][1], drawn[other][1]), confidence),
        }
    return out


def target_met(
    rate_ci: dict, target: float, tolerance: float, rho_ci: tuple[float | None, float | None] | None, rho_limit: float
) -> bool:
    """Whether a run met its targets: R* lies inside R's interval, that interval's half-width is within
    `tolerance` (R was measured finely enough to tell), and rho's upper bound is within `rho_limit`.

    rate_ci: {"ci_low", "ci_high"} (metrics.mean_ci); rho_ci: (rho_ci_low, rho_ci_high), or None (no rho:
    the decode-time tilt does not raise perplexity, or a run from before rho had an interval): not met.
    """
    low, high = rate_ci["ci_low"], rate_ci["ci_high"]
    if not low <= target <= high or (high - low) / 2 > tolerance + 1e-12:  # 1e-12: (0.55 - 0.45) / 2 > 0.05
        return False
    return rho_ci is not None and rho_ci[1] is not None and rho_ci[1] <= rho_limit
