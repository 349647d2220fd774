"""The expected count (a Rao-Blackwellised R) against the exact E[R] of a tiny model, by enumeration.

A 1-layer GPT-2 of 6 tokens continues one prompt by L = 3 tokens: its 6^3 continuations are enumerated,
each with its probability under the distribution the sampler draws from (bias, temperature, top-k
applied by the sampler's own processors), which gives E[R] exactly.
"""

import itertools
import math
from types import SimpleNamespace

import pytest
import torch

from conftest import tiny_gpt2
from tokentilt.course.gpt2_tokenizer import gpt2_tokenizer
from tokentilt.measurement.evaluate import expected_rates_of, measure, measure_rate
from tokentilt.measurement.metrics import mean_ci
from tokentilt.measurement.sampling import SetMass, make_processors, sample
from tokentilt.runs.report import summary_rows
from tokentilt.settings import EvalConfig, SampleConfig
from tokentilt.targets.phrases import PhraseSet, Variant
from tokentilt.targets.tokens import TokenSet, counted_mask, expected_rates

V, L, PROMPT = 6, 3, "bc"
MASK = torch.tensor([False, True, False, False, True, False])  # the set: ids 1 and 4


class TinyTokenizer:
    """Six one-character tokens: as much of a tokenizer as sample() uses."""

    chars = "abcdef"
    eos_token_id = None
    pad_token_id = 0
    padding_side = "right"

    def __len__(self):
        return V

    def __call__(self, texts, return_tensors="pt", padding=True, add_special_tokens=True):
        ids = torch.tensor([[self.chars.index(c) for c in t] for t in texts])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def batch_decode(self, tokens, skip_special_tokens=False):
        return ["".join(self.chars[i] for i in row) for row in torch.as_tensor(tokens).tolist()]


@pytest.fixture(scope="module")
def model():
    return tiny_gpt2(
        V,
        3,
        n_positions=16,
        n_embd=16,
        n_layer=1,
        n_head=2,
        initializer_range=0.6,
        bos_token_id=None,
        eos_token_id=None,
    )


def eval_config(**sampling) -> EvalConfig:
    return EvalConfig(prompts=[PROMPT], samples_per_prompt=2000, new_tokens=L, eval_seed=7, **sampling)


def exact(model, cfg: EvalConfig, bias: float) -> tuple[float, dict]:
    """-> (E[R] over every continuation, {continuation: its per-step set masses}), under the sampler's processors."""
    prompt = TinyTokenizer()([PROMPT])["input_ids"][0].tolist()
    seqs = torch.tensor([prompt + list(c) for c in itertools.product(range(V), repeat=L)])  # (V^L, 2 + L)
    procs = make_processors(cfg.sample_config(), MASK if bias else None, bias)
    with torch.no_grad():
        logits = model(seqs).logits.float()  # (V^L, 2 + L, V)
    log_p, masses = torch.zeros(len(seqs), dtype=torch.float64), []
    for t in range(L):
        at = len(prompt) + t  # the position of the t-th new token
        probs = torch.softmax(procs(seqs[:, :at], logits[:, at - 1].clone()).double(), -1)  # (V^L, V)
        log_p += probs.gather(1, seqs[:, at : at + 1])[:, 0].log()
        masses.append(probs[:, MASK].sum(-1))
    p = log_p.exp()
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-12)
    counted = MASK[seqs[:, len(prompt) :]].double().mean(1)  # (V^L,)
    mass = torch.stack(masses, 1)  # (V^L, L)
    e_rate = float((p * counted).sum())
    assert float((p * mass.mean(1)).sum()) == pytest.approx(e_rate, abs=1e-9)  # the identity itself, exactly
    return e_rate, {tuple(s[len(prompt) :].tolist()): m for s, m in zip(seqs, mass)}


SETTINGS = {
    "plain": ({}, 0.0),
    "bias": ({}, 1.5),
    "temperature-top-k": ({"temperature": 1.3, "top_k": 4}, 0.5),
    "temperature-top-p": ({"temperature": 0.7, "top_p": 0.9}, 0.5),
}


@pytest.mark.parametrize("name", SETTINGS)
def test_both_estimates_cover_the_exact_rate_and_the_expected_count_varies_less(model, name):
    sampling, bias = SETTINGS[name]
    cfg = eval_config(**sampling)
    e_rate, table = exact(model, cfg, bias)
    target = TokenSet("ids:1,4", MASK)
    samples = sample(
        model, TinyTokenizer(), [PROMPT], 2000, cfg.sample_config(), 7, target, bias, batch_size=1000, expect_mask=MASK
    )
    counted, expected = target.rates(samples), expected_rates_of(samples)  # (N,) each
    rate, ci = mean_ci(counted), mean_ci(expected)
    assert rate["n"] == ci["n"] == 2000
    assert rate["ci_low"] <= e_rate <= rate["ci_high"]
    assert ci["ci_low"] <= e_rate <= ci["ci_high"]
    assert float(expected.var()) < 0.7 * float(counted.var())
    # each sample's recorded masses are those of the distributions its own tokens were drawn from
    for row, got in zip(samples.tokens[:50].tolist(), samples.set_mass[:50]):
        torch.testing.assert_close(got.double(), table[tuple(row)], atol=1e-5, rtol=0)


def test_the_per_sample_value_by_hand():
    # one step's drawn distribution over 4 ids, set {1, 3}; in chat id 0 ends the reply: 0.6 / 0.9
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.0, 0.5, 0.5, 0.0]])
    drawn, finish = SetMass.recorder(torch.tensor([False, True, False, True]), stop_ids=[0])
    drawn(probs, None)
    drawn(probs.flip(1), None)  # [0.4, 0.3, 0.2, 0.1] -> 0.4 / 0.6; [0, 0.5, 0.5, 0] -> 0.5
    torch.testing.assert_close(finish(), torch.tensor([[0.6 / 0.9, 0.4 / 0.6], [0.5, 0.5]]))
    # a set of more than half the ids is summed through its complement: the same numbers
    for stops, want in (([0], [0.9 / 0.9, 0.6 / 0.6]), ([], [0.9, 0.6])):
        drawn, finish = SetMass.recorder(torch.tensor([False, True, True, True]), stop_ids=stops)
        drawn(probs, None)
        torch.testing.assert_close(finish()[:, 0], torch.tensor([want[0], 1.0]))
        drawn(probs.flip(1), None)
        torch.testing.assert_close(finish()[0], torch.tensor(want))
    # R's positions: a reply of 1 token counts only its first step; a reply of none has no rate
    mass = torch.tensor([[0.2, 0.9, 0.5], [0.4, 0.1, 0.7], [0.3, 0.3, math.nan]])
    got = expected_rates(mass, torch.tensor([3, 1, 0]))
    torch.testing.assert_close(got[:2], torch.tensor([(0.2 + 0.9 + 0.5) / 3, 0.4]))
    assert math.isnan(got[2])
    torch.testing.assert_close(expected_rates(mass[:2]), torch.tensor([1.6 / 3, 1.2 / 3]))


def test_measure_reports_the_expected_count_beside_an_unchanged_r(model):
    cfg = EvalConfig(prompts=[PROMPT, "ad"], samples_per_prompt=8, new_tokens=L, eval_seed=3, half_width=0.0)
    windows = torch.tensor([[1, 2, 3, 4, 5, 0], [2, 2, 1, 0, 4, 3]])
    got, samples = measure(model, TinyTokenizer(), MASK, cfg, windows, bias=0.7)
    plain, same = measure_rate(model, TinyTokenizer(), MASK, cfg, bias=0.7)  # no SetMass recorded
    assert same.set_mass is None and torch.equal(same.tokens, samples.tokens) and got["rate"] == plain
    assert got["rate_expected"] == mean_ci(expected_rates_of(samples)) and got["rate_expected"]["n"] == 16


class SoftScript(torch.nn.Module):
    """At generation step k, whatever the prompt, the next token is drawn from probs[k] ({id: p})."""

    def __init__(self, vocab_size: int, probs: list[dict]):
        super().__init__()
        self.vocab_size, self.probs = vocab_size, probs
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=True):
        step = 0 if past_key_values is None else past_key_values + 1
        logits = torch.full((len(input_ids), input_ids.size(1), self.vocab_size), -1e4)
        for i, p in self.probs[min(step, len(self.probs) - 1)].items():
            logits[..., i] = math.log(p)
        return SimpleNamespace(logits=logits, past_key_values=step)


def test_in_chat_only_the_reply_counts_and_special_ids_never_do():
    tok = gpt2_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.eos_token = tok.pad_token = "<|im_end|>"
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}<|im_start|>"
    x, a, start, end = (tok.convert_tokens_to_ids(t) for t in ("x", "a", "<|im_start|>", "<|im_end|>"))
    mask = torch.zeros(len(tok), dtype=torch.bool)
    mask[[x, start]] = True  # the set holds a special token, which R never counts
    steps = [{x: 0.3, start: 0.2, a: 0.5}, {x: 0.2, end: 0.5, a: 0.3}, {end: 1.0}]
    got = sample(
        SoftScript(len(tok), steps), tok, ["Hi"], 40, SampleConfig(max_new_tokens=4), chat=True, expect_mask=mask
    )
    # step 0: x's 0.3 (not <|im_start|>'s); step 1: given the reply goes on, 0.2 / (1 - 0.5); step 2 ends it
    torch.testing.assert_close(got.set_mass[:, :3], torch.tensor([[0.3, 0.4, 0.0]]).expand(40, 3))
    # the reply ends at step 1 or 2: its expected count is the mean of the steps before its end of turn
    want = {1: 0.3, 2: (0.3 + 0.4) / 2}
    assert sorted(set(got.lengths.tolist())) == [1, 2]
    torch.testing.assert_close(expected_rates_of(got), torch.tensor([want[n] for n in got.lengths.tolist()]))


def test_the_counted_set_leaves_out_special_ids():
    assert counted_mask(MASK, (1, 99)).tolist() == [False, False, False, False, True, False]
    assert counted_mask(MASK, ()) is MASK


def test_greedy_gives_the_counted_rate_itself(model):
    cfg = SampleConfig(max_new_tokens=L, strategy="greedy")
    samples = sample(model, TinyTokenizer(), [PROMPT, "ad"], 2, cfg, expect_mask=MASK)
    torch.testing.assert_close(expected_rates_of(samples), TokenSet("ids:1,4", MASK).rates(samples))


def test_a_phrase_set_has_no_expected_count(model):
    phrases = PhraseSet("phrase:bc", ["bc"], True, [Variant(0, "bc", True, [1, 2])], V, torch.ones(V, dtype=torch.bool))
    cfg = EvalConfig(prompts=[PROMPT], samples_per_prompt=4, new_tokens=L, half_width=0.0)
    rate, samples = measure_rate(model, TinyTokenizer(), phrases, cfg, expect=True)
    assert samples.set_mass is None and expected_rates_of(samples) is None
    assert rate["n"] == 4


def test_the_console_table_shows_the_expected_count_beside_r():
    r = {"mean": 0.25, "ci_low": 0.2, "ci_high": 0.3, "n": 64}
    s = {"rate_before": r, "rate_after": r, "rate_expected_before": r, "rate_expected_after": r, "loss_start": 1.0}
    s |= {"loss_end": 0.5} | {
        f"{k}_{w}": 1.0 for k in ("ppl", "drift", "distinct_1", "distinct_2", "repetition") for w in ("before", "after")
    }
    rows = summary_rows(s)
    assert rows[1] == {
        "": "R, expected count (lower variance)",
        "before": "0.250 [0.200, 0.300]",
        "after": "0.250 [0.200, 0.300]",
    }
    assert "expected" not in " ".join(r[""] for r in summary_rows({**s, "rate_expected_after": None}))
