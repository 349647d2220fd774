import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from transformers import GPT2Config, GPT2LMHeadModel

from tokentilt.calibrate import bisect, calibrate, proxy_bias, tilted_mean_mass
from tokentilt.evaluate import EvalConfig, measure_rate
from tokentilt.models.gpt2_tokenizer import gpt2_tokenizer
from tokentilt.targets import bias_for_mass, token_texts


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
    assert bisect(lambda b: b ** 3, 8.0, -10, 10) == pytest.approx(2.0, abs=1e-9)
    assert bisect(lambda b: b, 50.0, -10, 10) == 10
    assert bisect(lambda b: b, -50.0, -10, 10) == -10


def test_proxy_bias_of_uniform_model_is_the_closed_form():
    vocab, k = 40, 4
    mask = torch.zeros(vocab, dtype=torch.bool)
    mask[:k] = True
    windows = torch.randint(0, vocab, (3, 5))
    b = proxy_bias(UniformModel(vocab), windows, mask, 0.5)
    assert b == pytest.approx(bias_for_mass(k / vocab, 0.5), abs=1e-6)  # log(36/4) = log 9


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50257, n_positions=128, n_embd=32, n_layer=2, n_head=4,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    tok = gpt2_tokenizer()
    tok.pad_token = tok.eos_token
    mask = torch.tensor(["x" in t.lower() for t in token_texts(tok)])
    return GPT2LMHeadModel(cfg).eval(), tok, mask


@pytest.mark.slow
def test_calibration_reaches_its_rate_on_a_tiny_model(tiny):
    model, tok, mask = tiny
    cfg = EvalConfig(prompts=["The king said", "Once upon a time,", "When I was young,", "The city at night"],
                     samples_per_prompt=2, new_tokens=12)
    windows = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(0))
    before, _ = measure_rate(model, tok, mask, cfg)
    assert before["mean"] < 0.1  # ~2% of GPT-2's tokens contain x
    cal = calibrate(model, tok, mask, 0.5, cfg, windows, tol=0.03)
    assert abs(cal.rate["mean"] - 0.5) <= 0.03
    again, _ = measure_rate(model, tok, mask, cfg, bias=cal.bias)  # same prompts and seeds: same R
    assert again["mean"] == pytest.approx(cal.rate["mean"])
    assert (cal.bias, cal.rate["mean"]) in cal.history
    assert cal.bias > 0


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.2, 1.5])
def test_calibration_refuses_rates_outside_0_1(tiny, bad):
    model, tok, mask = tiny
    with pytest.raises(ValueError, match="rate must be in"):
        calibrate(model, tok, mask, bad, EvalConfig(), torch.zeros(1, 4, dtype=torch.long))
