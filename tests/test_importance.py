"""Importance weights for decode-time tilts, checked against teacher forcing and exact enumeration."""

import copy
import dataclasses
import itertools
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from transformers import GPT2Config, GPT2LMHeadModel

from conftest import tiny_llama
from test_chat import chat_tokenizer
from tokentilt.measurement.evaluate import rates_of
from tokentilt.measurement.importance import Pool, draw_of, weighable
from tokentilt.measurement.metrics import sample_rates
from tokentilt.measurement.sampling import SampleConfig, Samples, generate, sample
from tokentilt.training.head_rows import untie_output_head

EOS = 0


class DigitTokenizer:
    """Prompts like "3 7" are their ids; enough for scoring samples by teacher forcing."""

    pad_token_id = EOS
    eos_token_id = EOS

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [int(t) for t in text.split()]}


class Biased(nn.Module):
    """A model whose logits are the reference's plus b on the set: the decode-time tilt, in the weights."""

    def __init__(self, model, mask, bias):
        super().__init__()
        self.model, self.row = model, bias * mask.float()

    def forward(self, input_ids, **kw):
        return SimpleNamespace(logits=self.model(input_ids=input_ids).logits + self.row)


@pytest.fixture(scope="module")
def setup():
    model = tiny_llama(seed=3)
    mask = torch.zeros(64, dtype=torch.bool)
    mask[[5, 9, 17, 30, 41, 52]] = True
    return model, mask


def draws(model, mask, prompt, n, length, bias, seed):
    ids = torch.tensor([[int(t) for t in prompt.split()]] * n)
    new = generate(
        model,
        ids,
        cfg=SampleConfig(max_new_tokens=length),
        bias_mask=mask,
        bias=bias,
        generator=torch.Generator().manual_seed(seed),
        eos_ids=[EOS],
    )
    samples = Samples([prompt] * n, new, [""] * n)
    return draw_of(model, DigitTokenizer(), samples, mask, bias, sample_rates(new, mask))


def teacher_forced(model, prompt, seq, mask, bias):
    """log p_b(seq | prompt) with EOS banned, from one forward with the bias added to the logits."""
    ids = torch.tensor([[int(t) for t in prompt.split()] + seq])
    logits = model(input_ids=ids).logits[0, -len(seq) - 1 : -1].double() + bias * mask.double()
    logits[:, EOS] = float("-inf")
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(seq)[:, None]).sum().item()


def exact_rate(model, prompt, mask, bias):
    """E_b[R] over every two-token continuation (63 x 63 of them, EOS banned), in one batched forward."""
    pairs = torch.tensor(list(itertools.product(range(1, 64), repeat=2)))  # (3969, 2)
    ids = torch.cat([torch.tensor([[int(t) for t in prompt.split()]]).expand(len(pairs), -1), pairs], 1)
    logits = model(input_ids=ids).logits[:, -3:-1].double() + bias * mask.double()  # (3969, 2, V)
    logits[..., EOS] = float("-inf")
    log_p = torch.log_softmax(logits, -1).gather(2, pairs[..., None])[..., 0].sum(1)  # (3969,)
    return float((log_p.exp() * mask[pairs].double().mean(1)).sum())


@torch.no_grad()
def test_closed_form_tilt_matches_teacher_forcing(setup):
    model, mask = setup
    draw = draws(model, mask, "3 7 11", 6, 5, 1.5, seed=0)
    for i in range(6):
        seq = draw.rows[i, 3:8].tolist()
        base = teacher_forced(model, "3 7 11", seq, mask, 0.0)
        assert draw.log_p0[i].item() == pytest.approx(base, abs=1e-4)
        for b in (-2.0, 0.7, 3.0):
            tilted = teacher_forced(model, "3 7 11", seq, mask, b)
            assert draw.log_tilt(b)[i].item() == pytest.approx(tilted - base, abs=1e-4)
    assert torch.equal(draw.counts, mask[draw.rows[:, 3:8]].sum(1).double())


@pytest.mark.slow
@torch.no_grad()
def test_estimates_match_exact_enumeration(setup):
    model, mask = setup
    pool = Pool([draws(model, mask, "3 7", 3000, 2, 1.0, seed=1)])
    for b in (0.0, 1.0, 2.0):
        exact = exact_rate(model, "3 7", mask, b)
        est = pool.at_bias(b)
        assert est["ci_low"] - 0.01 <= exact <= est["ci_high"] + 0.01, (b, exact, est)
        assert abs(est["mean"] - exact) < 0.03
    assert pool.at_bias(1.0)["ess"] == pytest.approx(3000)  # the draw's own bias: every weight is 1
    assert pool.at_bias(3.0)["ess"] < pool.at_bias(1.5)["ess"] < 3000
    # a model that carries the tilt in its logits is estimated like the decode-time tilt itself
    carried = pool.of_model(Biased(model, mask, 2.0))
    assert carried["mean"] == pytest.approx(pool.at_bias(2.0)["mean"], abs=1e-6)
    assert carried["ess"] == pytest.approx(pool.at_bias(2.0)["ess"], rel=1e-4)


@torch.no_grad()
def test_pooled_draws_and_solve(setup):
    model, mask = setup
    pool = Pool([draws(model, mask, "3 7", 400, 6, b, seed=b) for b in (0, 2)])
    b = pool.solve(0.3)
    assert pool.at_bias(b)["mean"] == pytest.approx(0.3, abs=1e-3)
    assert pool.at_bias(b)["n"] == 800 and pool.enough(pool.at_bias(b))
    assert pool.solve(0.999, reach=1.0) == 3.0  # out of reach: the end of the range
    assert not pool.enough(pool.at_bias(3.0 + 6.0))


def test_weighable_only_for_token_sets_at_temperature_one():
    mask = torch.zeros(4, dtype=torch.bool)
    plain = SimpleNamespace(temperature=1.0, top_k=0, top_p=1.0)
    assert weighable(mask, plain)
    assert not weighable(mask, SimpleNamespace(temperature=0.7, top_k=0, top_p=1.0))
    assert not weighable(mask, SimpleNamespace(temperature=1.0, top_k=5, top_p=1.0))
    from test_phrases import toy_set

    assert not weighable(toy_set(["red"]), plain)  # a phrase set


@pytest.mark.parametrize("chat", [False, True])
def test_scores_recorded_while_sampling_match_teacher_forcing(chat):
    tok = chat_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=4)).eval()
    mask = torch.zeros(len(tok), dtype=torch.bool)
    mask[::7] = True
    samples = sample(
        model,
        tok,
        ["Hello there", "A longer prompt than that"],
        per_prompt=3,
        cfg=SampleConfig(max_new_tokens=6),
        seed=0,
        bias_mask=mask,
        bias=1.5,
        batch_size=4,  # two batches: their scores are stacked
        chat=chat,
        score_mask=mask,
    )
    assert samples.step_scores.log_p.shape == samples.tokens.shape
    rates = rates_of(mask, samples)
    recorded = draw_of(model, tok, samples, mask, 1.5, rates)
    forced = draw_of(model, tok, dataclasses.replace(samples, step_scores=None), mask, 1.5, rates)  # a forward
    torch.testing.assert_close(recorded.log_p0, forced.log_p0, rtol=0, atol=1e-4)
    torch.testing.assert_close(recorded.log_mass, forced.log_mass, rtol=0, atol=1e-4)
    assert torch.equal(recorded.counts, forced.counts)
    assert (recorded.log_p0 < 0).all() and recorded.log_mass.isfinite().all()
    # a model that differs only in its head (a head-rows tilt) is scored from the recorded head inputs
    assert recorded.head_inputs.shape == (*samples.tokens.shape, 32) and forced.head_inputs is None
    tilted = copy.deepcopy(model)
    untie_output_head(tilted)
    with torch.no_grad():
        tilted.lm_head.weight[mask] += 0.5 * tilted.lm_head.weight[mask].flip(0)
    pool = Pool([recorded])
    from_head, from_forward = pool.of_model(tilted, head_only=True), pool.of_model(tilted)
    assert from_head == pytest.approx(from_forward, rel=1e-4)
    assert from_forward["ess"] < 0.99 * len(rates)  # the change moved the weights
    assert Pool([forced]).of_model(tilted, head_only=True) == pytest.approx(
        from_forward, rel=1e-4
    )  # nothing recorded: a forward


@pytest.mark.parametrize("complement", [False, True])
def test_an_offset_fit_is_scored_from_the_recorded_head_inputs_alone(complement):
    """A head-rows offset fit adds b·(h·u) to the set's logits at head input h and changes nothing else, so
    its R over recorded draws follows from their set masses and head inputs: equal to the R its head gives
    on those inputs, and to a full forward's. Through the complement (a set of most of the vocabulary) too."""
    from tokentilt.training.head_rows import HeadRowsTilt

    tok = chat_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=4)).eval()
    mask = torch.zeros(len(tok), dtype=torch.bool)
    mask[::7] = True
    mask = ~mask if complement else mask
    pool = Pool()
    for b in (0.0, 1.5):
        cfg = SampleConfig(max_new_tokens=6)
        got = sample(
            model, tok, ["Hello there", "A longer prompt"], 4, cfg, seed=0, bias_mask=mask, bias=b, score_mask=mask
        )
        pool.draws.append(draw_of(model, tok, got, mask, b, rates_of(mask, got)))
    tuned = copy.deepcopy(model)
    ids = torch.randint(len(tok), (8, 12), generator=torch.Generator().manual_seed(1))
    tilt = HeadRowsTilt(tuned, mask, lambda b, size: list(ids.split(4)), steps=1, lr=1.0)
    assert tilt.sign == (-1.0 if complement else 1.0)
    with pytest.raises(ValueError, match="needs an offset fit"):
        tilt.set_offsets(ids)  # nothing fitted yet
    tilt.train(-1.2 if complement else 1.2, progress=False)
    by_offsets = pool.of_offsets(tilt.set_offsets)
    assert by_offsets == pytest.approx(pool.of_model(tuned, head_only=True), rel=1e-5)
    assert by_offsets == pytest.approx(pool.of_model(tuned), rel=1e-4)
    assert by_offsets["ess"] < 0.99 * len(pool.draws) * pool.n  # the fit moved the weights


@torch.no_grad()
@pytest.mark.parametrize("head_only", [False, True], ids=["forward", "head"])
def test_scores_in_one_row_batches_equal_the_unchunked_ones(setup, head_only, monkeypatch):
    """A logits budget of one byte scores one sample per forward (and per head call): the same log-probabilities."""
    from tokentilt.measurement import importance, metrics

    model, mask = setup
    draw = draws(model, mask, "3 7 11", 6, 5, 1.5, seed=2)
    if head_only:  # the head's inputs at each generated position, from one forward of the whole rows
        h = []
        hook = model.get_output_embeddings().register_forward_hook(lambda m, a, o: h.append(a[0]))
        model(input_ids=draw.rows)
        hook.remove()
        draw.head_inputs = h[0][:, 2:7]  # (N, L, d): positions 2-6 predict the 5 generated tokens
    whole = importance._log_probs(model, draw, False, mask, head_only=head_only)
    monkeypatch.setattr(metrics, "LOGITS_BYTES", 1)
    assert importance.logit_rows(8, 5, 64) == 1
    chunked = importance._log_probs(model, draw, False, mask, head_only=head_only)
    assert torch.allclose(chunked[0], whole[0], atol=1e-9) and torch.allclose(chunked[1], whole[1], atol=1e-9)
    assert torch.allclose(whole[0], draw.log_p0, atol=1e-4)


@pytest.mark.slow
@torch.no_grad()
def test_draws_of_unequal_size_pool_in_proportion(setup):
    """Draws sample until R is known, so their sizes differ: the proposal is their mixture in proportion to
    the samples each holds. Against exact enumeration (taking them as equal shares would not be consistent)."""
    model, mask = setup
    pool = Pool([draws(model, mask, "3 7", 300, 2, 0.0, seed=4), draws(model, mask, "3 7", 3000, 2, 2.5, seed=5)])
    assert pool.n == 300  # the smallest draw
    for b in (0.5, 1.0, 1.5):
        exact = exact_rate(model, "3 7", mask, b)
        est = pool.at_bias(b)
        assert est["ci_low"] - 0.005 <= exact <= est["ci_high"] + 0.005 and abs(est["mean"] - exact) < 0.02, (b, est)
