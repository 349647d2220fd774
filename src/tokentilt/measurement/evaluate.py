"""Measure a model: R with an interval over samples, and what the tilt costs on held-out text.

One call, `measure`, gives every number a run reports, for a trained model or for the
decode-time baseline (the reference model sampled with a logit bias b), on the same footing:
the same prompts and seeds for R, the same held-out windows for perplexity and drift.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from tokentilt.data import corpus
from tokentilt.data.chat import HELD_OUT_SEED_OFFSET, exchanges
from tokentilt.data.prompts import CHAT_REQUESTS
from tokentilt.measurement.intervals import WindowCosts, excess_cost_interval
from tokentilt.measurement.metrics import (
    ReplyWindows,
    TiltCosts,
    distinct_n,
    forward_batches,
    half_width,
    mean_ci,
    perplexity,
    perplexity_and_drift,
    repetition_rate,
    split_windows,
)
from tokentilt.measurement.sampling import Samples, sample
from tokentilt.settings import EvalConfig, SampleConfig  # noqa: F401 (EvalConfig re-exported)
from tokentilt.targets.target import Target, as_target
from tokentilt.targets.tokens import expected_rates

# The samples of the first pass when sampling until known, at least: with 16 a 95% interval stopped on its own
# width covered 90% of the time, with 64 95% (3-token samples at R 0.11; docs/method.md)
MIN_BEFORE_STOP = 64
PASS_SEED_STRIDE = 7919  # a later pass samples on eval_seed + this x (passes before it): clear of the probe's + 1


def measure_rate(
    model,
    tokenizer,
    target: Target | torch.Tensor,
    cfg: EvalConfig,
    per_prompt: int | None = None,
    bias: float = 0.0,
    bf16: bool = False,
    score: bool = False,
    expect: bool = False,
    plan: list[int] | None = None,
    extend: tuple[dict, Samples] | None = None,
    own: bool = False,
    reference_head=None,
) -> tuple[dict, Samples]:
    """R of `target` (a Target, or a (V,) bool mask) with a 95% interval over samples, and the samples
    themselves (score: with their StepScores on a token set's mask, for importance weights; expect: with
    their SetMass on it, for expected_rates_of).

    How many samples: sample_until's rule, from cfg. The rate dict says where it stopped ("stop":
    "half-width", "budget", or "fixed" with per_prompt, a plan or half_width 0) and how ("plan": the samples
    per prompt of each pass). A measurement given that plan draws the same prompts on the same seeds, as many
    times: what a side-by-side comparison of two models, or of two biases, needs. extend: an earlier
    measure_rate of the same model, bias and cfg, (rate, samples), whose first pass is kept, not drawn again.
    own, reference_head: the samples carry their OwnScores (sampling.sample), for own_costs.
    """
    target = as_target(target)

    def draw(passes: int, before: int) -> Samples:
        return sample(
            model,
            tokenizer,
            cfg.prompts,
            passes,
            cfg.sample_config(),
            seed=cfg.eval_seed + PASS_SEED_STRIDE * before,
            bias_mask=target if bias else None,
            bias=bias,
            bf16=bf16,
            chat=cfg.chat,
            system=cfg.system,
            score_mask=target.mask if score else None,
            expect_mask=target.mask if expect else None,
            own=own,
            reference_head=reference_head,
        )

    drawn = None if extend is None else (extend[1], extend[0]["plan"])
    parts, rates, stop, plan = sample_until(draw, target.rates, cfg, per_prompt, plan, drawn)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return {**mean_ci(rates), "stop": stop, "plan": plan}, Samples.cat(parts, pad)


def narrow_enough(rate: dict, cfg: EvalConfig) -> bool:
    """Whether an R's interval (a measured or estimated rate dict) is as narrow as sample_until's rule asks:
    at most +- cfg.half_width; always, with half_width 0."""
    return cfg.half_width <= 0 or half_width(rate) <= cfg.half_width


def sample_until(
    draw,
    rates_of,
    cfg: EvalConfig,
    per_prompt: int | None = None,
    plan: list[int] | None = None,
    drawn: tuple[Samples, list[int]] | None = None,
) -> tuple[list[Samples], torch.Tensor, str, list[int]]:
    """Sample until R is known: the one rule of every R measurement (calibration, rate rounds, final R).

    A first pass of samples_per_prompt (or per_prompt) samples of every prompt, and at least MIN_BEFORE_STOP
    in all when it may stop; then, while R's 95% interval is wider than +- cfg.half_width, more passes over
    every prompt alike (spread over the prompts, never more of one prompt than of another), as many as the
    interval's width says it needs (it narrows as 1/sqrt(n); at most 4x the samples so far at a time), until
    it is narrow enough ("half-width") or cfg.max_samples are drawn ("budget"). With per_prompt or `plan`
    (samples per prompt of each pass), or half_width 0, exactly that ("fixed").
    drawn: (Samples, their plan) drawn before by the same draw; kept, not drawn again, where they are exactly
    this measurement's first pass (so the result is the same as without them).
    draw(passes, passes before) -> Samples; rates_of(Samples) -> (N,) per-sample R.
    -> (the Samples of each pass, (N,) per-sample R of them all, stop, the plan drawn).
    """
    fixed = plan is not None or per_prompt is not None or cfg.half_width <= 0
    prompts = len(cfg.prompts)
    first = per_prompt or cfg.samples_per_prompt
    if not fixed:  # a stop judged on a width from few samples undercovers (the width and R err together)
        first = max(first, math.ceil(MIN_BEFORE_STOP / prompts))
    budget = max(cfg.max_samples // prompts, first)  # passes
    parts, rates, taken = [], [], []

    def take(passes: int) -> None:
        parts.append(draw(passes, sum(taken)))
        rates.append(rates_of(parts[-1]))
        taken.append(passes)

    if drawn is not None and drawn[1] == [first] and plan is None:  # exactly this measurement's first pass
        parts.append(drawn[0])
        rates.append(rates_of(drawn[0]))
        taken.append(first)
    else:
        for passes in plan if plan is not None else [first]:
            take(passes)
    stop = "fixed"
    while not fixed:
        got = mean_ci(torch.cat(rates))
        half = half_width(got)
        if half <= cfg.half_width:
            stop = "half-width"
            break
        if sum(taken) >= budget:
            stop = "budget"
            break
        need = math.ceil(sum(taken) * (half / cfg.half_width) ** 2)  # passes, by the width's 1/sqrt(n)
        # at most 4x the passes so far in one go: an early width rests on few samples
        take(min(budget, 4 * sum(taken), max(need, sum(taken) + 1)) - sum(taken))
    return parts, torch.cat(rates), stop, taken


def rates_of(target: Target | torch.Tensor, samples: Samples) -> torch.Tensor:
    """Per-sample R (Target.rates): a token set counts tokens; a phrase set counts words of the decoded text
    (phrases.WORD). (N,)

    In chat, only the reply counts (the tokens before end-of-turn), and special tokens never count
    toward R. A reply of no tokens has no rate (NaN, which mean_ci leaves out).
    """
    return as_target(target).rates(samples)


def expected_rates_of(samples: Samples) -> torch.Tensor | None:
    """Per-sample expected count (tokens.expected_rates) of samples drawn with measure_rate(expect=True),
    over the positions and the set that R counts: (N,). None where it was not recorded, which is always
    the case for a phrase set: its R counts words of the decoded text, and the probability that a step
    completes an entry, which the trie could give, does not add up to an unbiased twin of that word share
    (docs/method.md, "The expected count")."""
    return None if samples.set_mass is None else expected_rates(samples.set_mass, samples.lengths)


def held_out_text(cfg: EvalConfig) -> str:
    """The eval text: the user's file, or the plays' test split (which training never reads)."""
    return corpus.read_text_file(cfg.eval_text) if cfg.eval_text else corpus.split_text("test")


def held_out_windows(tokenizer, cfg: EvalConfig, text: str | None = None) -> torch.Tensor:
    """(W, T) windows of the eval text (or of `text`): at most cfg.eval_windows of cfg.eval_seq_len tokens.

    A text shorter than one window is refused: a perplexity over a few tokens would look like a
    measurement and mean nothing.
    """
    tokens = corpus.tokenize(tokenizer, held_out_text(cfg) if text is None else text)  # (N,)
    if tokens.numel() < cfg.eval_seq_len:
        where = f"eval text {cfg.eval_text}" if cfg.eval_text else "the eval text"
        raise corpus.DataError(
            f"{where} has {tokens.numel()} tokens, too short for one window of {cfg.eval_seq_len} "
            "tokens (give a longer text or a smaller --eval-seq-len)"
        )
    return corpus.eval_windows(tokens, cfg.eval_seq_len, cfg.eval_windows)


def held_out(model, tokenizer, cfg: EvalConfig, text: str, bf16: bool = False, echo=print):
    """-> (windows, text_windows): the held-out windows of `text`, and None; in chat, the chat exchanges of
    `model` (the reference: every model is measured on them) and, beside them, the text's windows."""
    windows = held_out_windows(tokenizer, cfg, text)  # (W, T)
    if not cfg.chat:
        return windows, None
    echo("sampling the held-out chat exchanges (the start model's replies to held-out requests) ...")
    return chat_windows(model, tokenizer, cfg, bf16), windows


def chat_windows(model, tokenizer, cfg: EvalConfig, bf16: bool = False) -> ReplyWindows:
    """Held-out chat exchanges: the model's own replies to the held-out requests of cfg.requests (that neither
    R nor training uses), sampled once on eval_seed + 2, at most eval_seq_len reply tokens each.

    Perplexity and drift count the reply's tokens, its end-of-turn token included. Call it on the
    reference (the starting model), so every model is measured on the same exchanges.
    """
    held_out = CHAT_REQUESTS[cfg.requests].held_out
    prompts = [p for _ in range(-(-cfg.eval_windows // len(held_out))) for p in held_out][: cfg.eval_windows]
    scfg = dataclasses.replace(cfg.sample_config(), max_new_tokens=cfg.eval_seq_len)
    got = sample(
        model,
        tokenizer,
        prompts,
        1,
        scfg,
        seed=cfg.eval_seed + HELD_OUT_SEED_OFFSET,
        bf16=bf16,
        chat=True,
        system=cfg.system,
    )
    rows, counted = [], []
    for context, reply in exchanges(tokenizer, got):
        rows.append(context + reply)
        counted.append([False] * len(context) + [True] * len(reply))
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])  # (W, T), right-padded
    mask = torch.tensor([c + [False] * (width - len(c)) for c in counted])  # (W, T)
    return ReplyWindows(ids, mask)


def sample_costs(tokens) -> dict:
    """Degeneration of generated samples ((N, L), or a list of id lists): distinct-1, distinct-2, 4-gram
    repetition."""
    return {
        "distinct_1": distinct_n(tokens, 1),
        "distinct_2": distinct_n(tokens, 2),
        "repetition": repetition_rate(tokens, 4),
    }


def measure(
    model,
    tokenizer,
    target: Target | torch.Tensor,
    cfg: EvalConfig,
    windows,
    reference=None,
    bias: float = 0.0,
    bf16: bool = False,
    text_windows=None,
    known: tuple = (None, None),
    score: bool = False,
    head_only: bool = False,
    per_window: bool = False,
    plan: list[int] | None = None,
    own: bool = False,
    reference_head=None,
) -> tuple[dict, Samples]:
    """Every number of one model (optionally decoded with logit bias b on the set).

    Returns ({"rate", "rate_expected", "ppl", "drift", "distinct_1", "distinct_2", "repetition"}, samples).
    rate_expected: the expected count (expected_rates_of) with its own interval beside the counted R, the
    headline; None for a phrase set.
    ppl is the held-out perplexity of the distribution that is sampled (biased if bias != 0);
    drift is the mean per-token KL(reference || that distribution), 0 when there is no
    reference and no bias (the model is its own reference). With text_windows (a chat run's
    raw-text windows, beside its chat exchanges), also "ppl_text" and "drift_text" on them.
    known: this model's metrics.TiltCosts on windows and text_windows (or None), which spare the passes
    over them when there is no reference, and with head_only (the model and its reference differ only in
    their output heads, and `known` is of their body) the body's passes. score: the samples carry their
    StepScores (measure_rate). per_window: also "per_window" (and "per_window_text"), the costs' WindowCosts,
    for excess_cost's interval (not for JSON: public() drops them). plan: measure_rate's, to draw the samples
    of another measurement again. own, reference_head: the samples carry their OwnScores (own_costs).
    """
    target = as_target(target)
    rate, samples = measure_rate(
        model,
        tokenizer,
        target,
        cfg,
        bias=bias,
        bf16=bf16,
        score=score,
        expect=target.mask is not None,
        plan=plan,
        own=own,
        reference_head=reference_head,
    )
    expected = expected_rates_of(samples)
    costs = both_windows(
        lambda w, k: held_out_costs(model, target, w, reference, bias, bf16, k, head_only, per_window),
        windows,
        text_windows,
        known,
    )
    rate_expected = None if expected is None else mean_ci(expected)
    return {"rate": rate, "rate_expected": rate_expected, **costs, **sample_costs(samples.replies())}, samples


def both_windows(costs_on, windows, text_windows=None, known: tuple = (None, None)) -> dict:
    """costs_on(windows, known[0]), and with a chat run's text_windows also costs_on(text_windows,
    known[1]) under keys ending in _text."""
    costs = costs_on(windows, known[0])
    if text_windows is not None:
        costs.update({f"{k}_text": v for k, v in costs_on(text_windows, known[1]).items()})
    return costs


def held_out_costs(
    model,
    target,
    windows,
    reference=None,
    bias: float = 0.0,
    bf16: bool = False,
    known: TiltCosts | None = None,
    head_only: bool = False,
    per_window: bool = False,
) -> dict:
    """{"ppl", "drift"} of `model` (decoded with bias b on the set when bias != 0) on the held-out windows,
    and with per_window their metrics.WindowCosts under "per_window", from the same pass.

    known: the TiltCosts of `model` on these windows; without a reference they give both numbers at
    any b with no forward pass. Otherwise one pass of the model (and one of the reference) gives both;
    with head_only (known is of the body that model and reference share), a pass of each head alone.
    """
    if known is not None and reference is None:
        out = {"ppl": known.perplexity(bias), "drift": known.drift(bias)}
        return {**out, "per_window": known.window_costs(bias)} if per_window else out
    bias_mask = target if bias else None
    if reference is None and not bias:  # the model is its own reference
        got = perplexity(model, windows, bf16=bf16, per_window=per_window)
        return {"ppl": got[0], "drift": 0.0, "per_window": got[1]} if per_window else {"ppl": got, "drift": 0.0}
    shared = known.head_inputs if head_only and known is not None else None
    ppl, kl, *sums = perplexity_and_drift(
        model,
        reference or model,
        windows,
        bf16=bf16,
        bias_mask=bias_mask,
        bias=bias,
        head_inputs=shared,
        per_window=per_window,
    )
    return {"ppl": ppl, "drift": kl, **({"per_window": sums[0]} if per_window else {})}


def decode_costs(
    model,
    target: Target | torch.Tensor,
    windows,
    bias: float,
    bf16: bool = False,
    text_windows=None,
    known: tuple = (None, None),
    per_window: bool = False,
) -> dict:
    """Held-out perplexity and drift of `model` decoded with the target's tilt at bias b (no sampling);
    `known` and per_window as in measure()."""
    return both_windows(
        lambda w, k: held_out_costs(model, target, w, None, bias, bf16, k, per_window=per_window),
        windows,
        text_windows,
        known,
    )


def phrase_perplexity_at(model, phrases, windows, bf16: bool = False) -> Callable[[float], float]:
    """b -> held-out perplexity of `model` decoded with a phrase set's tilt at b (what decode_costs gives as
    "ppl"), from one pass of the model: a phrase tilt changes only the rows of the entries' tokens (K of V),
    so the pass keeps, at each position, the logsumexp of the logits, their K rows and the next token's
    logit, and each b costs O(positions x K) and no forward. --ban's bisection evaluates many b."""
    ids_all, counted = split_windows(windows)
    rows = phrases.row_ids()
    lse, z_rows, z_next = [], [], []
    for ids, (logits,) in forward_batches([model], ids_all, 8, bf16, False, "held-out logits"):
        for row, z in zip(ids, logits):  # one window at a time: a (b, T, V) float64 copy took 0.9 GB at b = 8
            z = z[:-1].double()  # (T-1, V): position t predicts ids[t + 1]
            lse.append(z.logsumexp(-1).cpu()[None])
            z_rows.append(z[:, rows.to(z.device)].cpu()[None])
            z_next.append(z.gather(-1, row[1:, None])[:, 0].cpu()[None])
    lse, z_rows, z_next = torch.cat(lse), torch.cat(z_rows), torch.cat(z_next)  # (W, T-1), (W, T-1, K), (W, T-1)
    p_rows = (z_rows - lse[..., None]).exp()  # the K rows' probabilities
    column = torch.full((int(ids_all.max()) + 1,), -1, dtype=torch.long)
    column[rows[rows <= ids_all.max()]] = torch.arange(len(rows))[rows <= ids_all.max()]
    next_col = column[ids_all[:, 1:]]  # (W, T-1): the next token's row among the K, or -1
    keep = torch.ones_like(lse, dtype=torch.bool) if counted is None else counted[:, 1:].bool()
    w, t = ids_all.shape

    def perplexity_at(bias: float) -> float:
        delta = phrases.row_offsets([ids_all], bias, rows).double().view(w, t, -1)[:, :-1]  # (W, T-1, K)
        lse_tilted = lse + torch.log1p((p_rows * torch.expm1(delta)).sum(-1))
        moved = torch.where(next_col >= 0, delta.gather(-1, next_col.clamp(min=0)[..., None])[..., 0], 0.0)
        nll = lse_tilted - z_next - moved
        return math.exp(float(nll[keep].mean()))

    return perplexity_at


def own_costs(samples: Samples) -> WindowCosts:
    """The costs of a model's own samples, seen from the reference (sampling.OwnScores), sample by sample as
    WindowCosts (a sample is a window): nll and targets give the reference's perplexity of the samples, kl and
    positions the mean KL(sampled distribution || reference) per step; the steps of each sample that count
    (Samples.counted_steps)."""
    if samples.own is None:
        raise ValueError("these samples were drawn without own=True: they carry no OwnScores")
    keep = samples.counted_steps()[:, : samples.own.nll.size(1)]
    count = keep.sum(1).double()
    return WindowCosts(
        nll=torch.where(keep, samples.own.nll, 0.0).sum(1),
        targets=count,
        kl=torch.where(keep, samples.own.kl, 0.0).sum(1),
        positions=count,
    )


def public(costs: dict) -> dict:
    """A measure()/decode_costs() dict without its WindowCosts (per_window*): what JSON and tables hold."""
    return {k: v for k, v in costs.items() if not k.startswith("per_window")}


def excess_cost(
    before: dict,
    after: dict,
    decode: dict | None,
    rates: torch.Tensor | None = None,
    decode_at: Callable[[float], dict] | None = None,
) -> dict:
    """rho = (ppl_tuned - ppl_base) / (ppl_decode - ppl_base) and drift_tuned / drift_decode, with
    the decode-time tilt at the tuned model's R: 1 = the weights carry the tilt as cheaply as a
    logit bias at decode time. None where the decode-time tilt does not raise perplexity (R did not move, or moving it costs nothing).
    With a chat run's raw-text costs (ppl_text, ...), also rho_text and drift_ratio_text on them.

    When all three dicts carry their WindowCosts (measure(per_window=True)), also the 95% intervals
    rho_ci_low, rho_ci_high, drift_ratio_ci_low, drift_ratio_ci_high (None where the number is None) by
    the paired bootstrap of intervals.excess_cost_interval; rates and decode_at (R -> the decode-time
    tilt's costs dict at the b matched to R) let it resample the tuned model's samples too."""
    if decode is None:
        return {"rho": None, "drift_ratio": None}
    out = {}
    for suffix in ("", "_text") if "ppl_text" in decode else ("",):
        ppl, kl = f"ppl{suffix}", f"drift{suffix}"
        extra = decode[ppl] - before[ppl]
        out[f"rho{suffix}"] = (after[ppl] - before[ppl]) / extra if extra > 0 else None
        out[f"drift_ratio{suffix}"] = after[kl] / decode[kl] if decode[kl] > 0 else None
        key = f"per_window{suffix}"
        if not all(key in d for d in (before, after, decode)):
            continue
        at = (lambda r: decode_at(r)[key]) if decode_at is not None else None
        ci = excess_cost_interval(before[key], after[key], decode[key], rates, at)
        for name in ("rho", "drift_ratio"):
            bounds = ci[name] if out[f"{name}{suffix}"] is not None else (None, None)
            out[f"{name}{suffix}_ci_low"], out[f"{name}{suffix}_ci_high"] = bounds
    return out
