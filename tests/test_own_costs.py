"""A model's own samples scored by the reference while they are drawn (sampling.OwnScores), checked against
teacher forcing and a hand formula for the hard ban; and the comparison built on them
(intervals.own_cost_comparison), against hand-computed values."""

import copy
import math

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from test_chat import chat_tokenizer
from tokentilt.data.chat import format_prompts
from tokentilt.measurement.evaluate import own_costs
from tokentilt.measurement.intervals import WindowCosts, own_cost_comparison
from tokentilt.measurement.sampling import SampleConfig, sample
from tokentilt.training.head_rows import untie_output_head

PROMPTS = ["Hello there", "A longer prompt than that"]


@pytest.fixture(scope="module")
def setup():
    tok = chat_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=4)).eval()
    mask = torch.zeros(len(tok), dtype=torch.bool)
    mask[::7] = True
    return tok, model, mask


@torch.no_grad()
def forced(model, reference, tok, samples, chat: bool, mask, bias: float):
    """Teacher forcing, one unpadded sample at a time: at each generated step, the reference's NLL of the drawn
    token and KL(q || reference), q = `model`'s distribution with `bias` on the set (the end-of-text id banned
    in both outside chat, as the sampler bans it). -> (N, L), (N, L)"""
    contexts = format_prompts(tok, samples.prompts) if chat else samples.prompts
    nll, kl = [], []
    for context, row in zip(contexts, samples.tokens.tolist()):
        start = tok(context, add_special_tokens=not chat)["input_ids"]
        ids = torch.tensor([start + row])
        at = slice(len(start) - 1, len(start) - 1 + len(row))  # the positions that predict the row's tokens
        ref = reference(input_ids=ids).logits[0, at].double()
        own = model(input_ids=ids).logits[0, at].double()
        if not chat:
            ref[:, tok.eos_token_id] = own[:, tok.eos_token_id] = -math.inf
        own = own + torch.where(mask, bias, 0.0).double()
        logp, logq = ref.log_softmax(-1), own.log_softmax(-1)
        nll.append(-logp.gather(-1, torch.tensor(row)[:, None])[:, 0])
        kl.append(torch.where(logq > -math.inf, logq.exp() * (logq - logp), 0.0).sum(-1))
    return torch.stack(nll), torch.stack(kl)


@pytest.mark.parametrize("chat", [False, True], ids=["text", "chat"])
@pytest.mark.parametrize("bias", [0.0, 1.5, -math.inf], ids=["untilted", "tilt", "hard-ban"])
def test_own_scores_recorded_while_sampling_match_teacher_forcing(setup, chat, bias):
    tok, model, mask = setup
    cfg = SampleConfig(max_new_tokens=6)
    samples = sample(model, tok, PROMPTS, 3, cfg, seed=0, bias_mask=mask, bias=bias, batch_size=4, chat=chat, own=True)
    nll, kl = forced(model, model, tok, samples, chat, mask, bias)
    torch.testing.assert_close(samples.own.nll, nll, rtol=0, atol=1e-4)
    torch.testing.assert_close(samples.own.kl, kl, rtol=0, atol=1e-5)
    if bias == 0:  # the model's own distribution: no distance from itself (but the sampler's float32 rounding)
        assert samples.own.kl.min() >= 0 and samples.own.kl.max() < 1e-5
    if bias == -math.inf:  # nothing of the set is drawn, and each step's KL is -log(1 - the set's mass)
        assert not mask[samples.tokens].any()
        with torch.no_grad():
            contexts = format_prompts(tok, samples.prompts) if chat else samples.prompts
            for i, (context, row) in enumerate(zip(contexts, samples.tokens.tolist())):
                start = tok(context, add_special_tokens=not chat)["input_ids"]
                logits = model(input_ids=torch.tensor([start + row])).logits[0, len(start) - 1 : -1].double()
                if not chat:
                    logits[:, tok.eos_token_id] = -math.inf
                m = logits.softmax(-1)[:, mask].sum(-1)
                torch.testing.assert_close(samples.own.kl[i], -torch.log1p(-m), rtol=0, atol=1e-5)


def test_a_head_only_model_is_scored_from_the_reference_head_on_its_head_inputs(setup):
    """A model that differs from the reference only in its head (a head-rows tilt): the reference's head on the
    recorded head inputs gives what a forward of the reference gives."""
    tok, model, mask = setup
    tuned = copy.deepcopy(model)
    untie_output_head(tuned)
    with torch.no_grad():
        tuned.lm_head.weight[mask] += 0.8 * tuned.lm_head.weight[mask].flip(0)
    cfg = SampleConfig(max_new_tokens=6)
    samples = sample(
        tuned, tok, PROMPTS, 3, cfg, seed=1, batch_size=4, chat=True, own=True, reference_head=model.lm_head
    )
    nll, kl = forced(tuned, model, tok, samples, True, mask, 0.0)
    torch.testing.assert_close(samples.own.nll, nll, rtol=0, atol=1e-4)
    torch.testing.assert_close(samples.own.kl, kl, rtol=0, atol=1e-5)
    assert kl.min() > 0  # the head moved


def test_own_costs_count_a_reply_and_its_end_of_turn_token(setup):
    """own_costs sums each sample's counted steps: in chat the reply and its end-of-turn token, nothing after."""
    tok, model, mask = setup
    samples = sample(model, tok, PROMPTS, 4, SampleConfig(max_new_tokens=8), seed=2, chat=True, own=True, bias=1.0)
    costs = own_costs(samples)
    for i, n in enumerate(samples.lengths.tolist()):
        steps = min(n + 1, samples.tokens.size(1))
        assert costs.targets[i] == costs.positions[i] == steps
        assert float(costs.nll[i]) == pytest.approx(float(samples.own.nll[i, :steps].sum()))
        assert float(costs.kl[i]) == pytest.approx(float(samples.own.kl[i, :steps].sum()))
    with pytest.raises(ValueError, match="own=True"):
        own_costs(sample(model, tok, PROMPTS, 1, SampleConfig(max_new_tokens=2), seed=0))


def costs_of(nll: list[float], kl: list[float], steps: int = 10) -> WindowCosts:
    n = len(nll)
    return WindowCosts(
        torch.tensor(nll, dtype=torch.float64),
        torch.full((n,), float(steps), dtype=torch.float64),
        torch.tensor(kl, dtype=torch.float64),
        torch.full((n,), float(steps), dtype=torch.float64),
    )


def test_the_comparison_on_own_samples_matches_hand_computed_values():
    rng = np.random.default_rng(0)
    base = costs_of(list(20 + rng.random(40)), [0.0] * 40)
    tuned = costs_of(list(21 + rng.random(40)), list(0.5 + 0.1 * rng.random(40)))
    ban = costs_of(list(22 + rng.random(40)), list(0.9 + 0.1 * rng.random(40)))
    got = own_cost_comparison({"base": base, "tuned": tuned, "hard_ban": ban}, "tuned", ("hard_ban",))
    ppl = {k: math.exp(float(c.nll.sum()) / 400) for k, c in (("base", base), ("tuned", tuned), ("hard_ban", ban))}
    kl = {k: float(c.kl.sum()) / 400 for k, c in (("base", base), ("tuned", tuned), ("hard_ban", ban))}
    for name in ppl:
        assert got[name]["ppl"] == pytest.approx(ppl[name]) and got[name]["kl"] == pytest.approx(kl[name])
        low, high = got[name]["ppl_ci"]
        assert low <= ppl[name] <= high and high - low < 0.1 * ppl[name]
    c = got["vs_hard_ban"]
    assert c["kl_ratio"] == pytest.approx(kl["tuned"] / kl["hard_ban"])
    assert c["kl_ratio_ci"][0] <= c["kl_ratio"] <= c["kl_ratio_ci"][1]
    # a side that costs nothing leaves the ratio without a value
    flat = own_cost_comparison({"base": base, "tuned": tuned, "same": base}, "tuned", ("same",))["vs_same"]
    assert flat["kl_ratio"] is None and flat["kl_ratio_ci"] == (math.inf, math.inf)
