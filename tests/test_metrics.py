import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from tokentilt.measurement import metrics

V = 10


class FixedLogits(nn.Module):
    """A 'model' that predicts the same logits (V,) at every position."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.register_buffer("row", logits.float())

    def forward(self, input_ids):
        return SimpleNamespace(logits=self.row.expand(*input_ids.shape, -1).clone())


def tiny_gpt2(seed=0, vocab_size=V):
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=vocab_size,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture
def windows():
    return torch.randint(0, V, (5, 12), generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------- R and its interval


def test_sample_rates_hand_values():
    mask = torch.zeros(V, dtype=torch.bool)
    mask[[1, 5]] = True
    tokens = torch.tensor([[1, 2, 3, 4], [5, 5, 0, 9], [1, 1, 1, 1]])
    assert metrics.sample_rates(tokens, mask).tolist() == [0.25, 0.5, 1.0]
    # lengths: only the first lengths[i] tokens count; padding may be any id, even out of range
    padded = torch.tensor([[1, 2, 3, 4], [5, 5, -1, 99]])
    assert metrics.sample_rates(padded, mask, lengths=[3, 2]).tolist() == pytest.approx([1 / 3, 1.0])
    empty = metrics.sample_rates(padded, mask, lengths=torch.tensor([0, 1]))
    assert math.isnan(empty[0]) and empty[1] == 1.0


@pytest.mark.parametrize(
    "p, df, expected",
    [
        (0.975, 4, 2.776445),
        (0.975, 31, 2.039513),
        (0.975, 1, 12.706205),
        (0.975, 2, 4.302653),
        (0.995, 10, 3.169273),
        (0.9, 3, 1.637744),
        (0.025, 4, -2.776445),
        (0.5, 7, 0.0),
    ],
)
def test_t_quantile_known_values(p, df, expected):
    assert metrics.t_quantile(p, df) == pytest.approx(expected, abs=1e-6)


def test_t_quantile_approaches_normal():
    assert metrics.t_quantile(0.975, 100_000) == pytest.approx(1.959988, abs=2e-6)


def test_mean_ci_hand_values():
    ci = metrics.mean_ci([0.2, 0.4, 0.6, 0.8, 1.0])
    half = 2.776445 * math.sqrt(0.1) / math.sqrt(5)  # sample variance of the values is 0.1
    assert ci["n"] == 5 and ci["mean"] == pytest.approx(0.6)
    assert ci["ci_low"] == pytest.approx(0.6 - half, abs=1e-6)
    assert ci["ci_high"] == pytest.approx(0.6 + half, abs=1e-6)


def test_mean_ci_clips_rates_but_not_other_values():
    rates = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])
    assert metrics.mean_ci(rates) == {"mean": 0.6, "ci_low": 0.0, "ci_high": 1.0, "n": 5}
    ci = metrics.mean_ci([0.0, 2.0])
    half = 12.706205 * math.sqrt(2.0) / math.sqrt(2)
    assert ci["ci_low"] == pytest.approx(1 - half, abs=1e-5) and ci["ci_high"] == pytest.approx(1 + half, abs=1e-5)


def test_mean_ci_single_sample_nan_and_empty():
    assert metrics.mean_ci([0.3]) == {"mean": 0.3, "ci_low": 0.3, "ci_high": 0.3, "n": 1}
    assert metrics.mean_ci([float("nan"), 0.3, 0.3])["n"] == 2
    with pytest.raises(ValueError, match="at least one"):
        metrics.mean_ci([])


# ---------------------------------------------------------------- pure tensor metrics


def test_token_nll_matches_cross_entropy_by_position():
    logits = torch.randn(2, 4, V, generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    nll = metrics.token_nll(logits, ids)
    assert nll.shape == (2, 3)
    assert nll[1, 2] == pytest.approx(F.cross_entropy(logits[1, 2:3], ids[1, 3:4]).item(), abs=1e-6)
    expected = math.exp(F.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1)).item())
    assert metrics.perplexity_from_logits(logits, ids) == pytest.approx(expected, rel=1e-6)


def test_uniform_logits_have_perplexity_v():
    ids = torch.zeros(3, 5, dtype=torch.long)
    assert metrics.perplexity_from_logits(torch.zeros(3, 5, V), ids) == pytest.approx(V, abs=1e-4)


def test_kl_per_token_matches_f_kl_div():
    g = torch.Generator().manual_seed(2)
    ref, out = torch.randn(2, 3, V, generator=g), torch.randn(2, 3, V, generator=g)
    expected = F.kl_div(F.log_softmax(out, -1), F.softmax(ref, -1), reduction="none").sum(-1)
    kl = metrics.kl_per_token(ref, out)
    assert kl.shape == (2, 3) and kl.dtype == torch.float32
    assert torch.allclose(kl, expected, atol=1e-6)
    assert torch.allclose(metrics.kl_per_token(ref, ref), torch.zeros(2, 3), atol=1e-6)
    # a reference that rules tokens out (-inf logits) gives finite KL
    masked = ref.clone()
    masked[..., 0] = -math.inf
    assert torch.isfinite(metrics.kl_per_token(masked, out)).all()


def test_distinct_n_known_sequence():
    assert metrics.distinct_n([[1, 2, 1, 2, 3]], 1) == pytest.approx(3 / 5)
    assert metrics.distinct_n([[1, 2, 1, 2, 3]], 2) == pytest.approx(3 / 4)
    assert metrics.distinct_n(torch.tensor([[1, 2, 1, 2, 3]]), 2) == pytest.approx(3 / 4)
    # pooled over samples: 2-grams 12 23 | 12 -> 2 unique of 3
    assert metrics.distinct_n([[1, 2, 3], [1, 2]], 2) == pytest.approx(2 / 3)
    assert metrics.distinct_n([[1], []], 2) == 0.0


def test_repetition_rate_hand_computed():
    # 2-grams of [1,2,1,2,1]: 12 21 12 21 -> the last two already appeared: 2/4
    assert metrics.repetition_rate([[1, 2, 1, 2, 1]], n=2) == pytest.approx(2 / 4)
    # samples do not share history: 12 | 12 -> no repeats; pooled with the above: 2 of 4 + 1
    assert metrics.repetition_rate([[1, 2], [1, 2]], n=2) == 0.0
    assert metrics.repetition_rate([[1, 2, 1, 2, 1], [1, 2]], n=2) == pytest.approx(2 / 5)
    # 4-grams of a loop "a b c" x 3: 6 four-grams, the first 3 are new
    assert metrics.repetition_rate(torch.tensor([1, 2, 3] * 3), n=4) == pytest.approx(3 / 6)
    assert metrics.repetition_rate([[1, 2, 3]], n=4) == 0.0


# ---------------------------------------------------------------- driving a model


def test_perplexity_of_uniform_model_is_v(windows):
    assert metrics.perplexity(FixedLogits(torch.zeros(V)), windows, batch_size=2) == pytest.approx(V, abs=1e-4)


def test_perplexity_batches_agree_with_one_pass(windows):
    model = tiny_gpt2()
    expected = metrics.perplexity_from_logits(model(input_ids=windows).logits.detach(), windows)
    for batch_size in (1, 2, 8):
        assert metrics.perplexity(model, windows, batch_size=batch_size) == pytest.approx(expected, rel=1e-5)
    assert metrics.perplexity(model, windows, progress=True) == pytest.approx(expected, rel=1e-5)
    assert metrics.perplexity(model, windows, bf16=True) == pytest.approx(expected, rel=5e-2)


def test_model_mode_is_restored(windows):
    model, reference = tiny_gpt2().train(), tiny_gpt2(seed=1).eval()
    metrics.drift(model, reference, windows)
    assert model.training and not reference.training
    metrics.perplexity(model, windows)
    assert model.training


def test_biased_perplexity(windows):
    model = tiny_gpt2()
    mask = torch.zeros(V, dtype=torch.bool)
    mask[[3, 7]] = True
    plain = metrics.perplexity(model, windows)
    assert metrics.perplexity(model, windows, bias_mask=mask, bias=0.0) == pytest.approx(plain, rel=1e-6)
    # Uniform model, text made only of set tokens: p(token) = e^b / (2 e^b + 8), so ppl = 2 + 8 e^-b.
    uniform = FixedLogits(torch.zeros(V))
    in_set = torch.tensor([[3, 7, 7, 3, 3, 7]] * 2)
    b = 3.0
    assert metrics.perplexity(uniform, in_set, bias_mask=mask, bias=b) == pytest.approx(2 + 8 * math.exp(-b), rel=1e-5)
    assert metrics.perplexity(uniform, in_set, bias_mask=mask, bias=50.0) == pytest.approx(2.0, rel=1e-5)
    # ... and text that avoids the set gets less likely: p = 1 / (2 e^b + 8)
    off_set = in_set + 1
    assert metrics.perplexity(uniform, off_set, bias_mask=mask, bias=b) == pytest.approx(2 * math.exp(b) + 8, rel=1e-5)


def test_drift_of_model_against_itself_is_zero(windows):
    model = tiny_gpt2()
    assert metrics.drift(model, model, windows, batch_size=2) == pytest.approx(0.0, abs=1e-6)
    assert metrics.drift(tiny_gpt2(seed=1), model, windows) > 0


def test_drift_against_hand_made_distribution_equals_kl_div(windows):
    reference = tiny_gpt2()
    q = torch.tensor([0.3, 0.2, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05])
    model = FixedLogits(q.log())
    ref_probs = F.softmax(reference(input_ids=windows).logits.detach(), -1)  # (W, T, V)
    expected = F.kl_div(q.log().expand_as(ref_probs), ref_probs, reduction="none").sum(-1).mean().item()
    assert metrics.drift(model, reference, windows, batch_size=3) == pytest.approx(expected, rel=1e-5)


def test_biased_drift_of_uniform_reference(windows):
    mask = torch.zeros(V, dtype=torch.bool)
    mask[[3, 7]] = True
    uniform = FixedLogits(torch.zeros(V))
    assert metrics.biased_drift(uniform, windows, mask, 0.0) == pytest.approx(0.0, abs=1e-7)
    # KL(u || tilted u) = log(1/V) - mean_i log p'(i), with p'(i) = e^{b M_i} / (2 e^b + 8)
    b = 2.0
    z = 2 * math.exp(b) + 8
    expected = math.log(1 / V) - (2 * (b - math.log(z)) + 8 * (-math.log(z))) / V
    assert metrics.biased_drift(uniform, windows, mask, b, batch_size=4) == pytest.approx(expected, rel=1e-5)
    # on a real model, biased drift equals drift against a model that adds the bias itself
    reference = tiny_gpt2()
    biased = metrics.biased_drift(reference, windows, mask, b)
    manual = (
        metrics.kl_per_token(
            reference(input_ids=windows).logits.detach(), reference(input_ids=windows).logits.detach() + b * mask
        )
        .mean()
        .item()
    )
    assert biased == pytest.approx(manual, rel=1e-5)


def _reply_windows(windows):
    counted = torch.zeros_like(windows, dtype=torch.bool)
    counted[:, 4:] = True  # the first four tokens are context
    counted[1, 9:] = False  # a shorter reply, then padding
    return metrics.ReplyWindows(windows, counted)


@pytest.mark.parametrize("reply", [False, True], ids=["text", "chat"])
def test_tilt_costs_match_the_forward_passes_at_every_bias(windows, reply):
    """One pass kept per position gives the biased perplexity and drift that a pass per b computes."""
    model = tiny_gpt2()
    mask = torch.zeros(V, dtype=torch.bool)
    mask[[3, 7]] = True
    held_out = _reply_windows(windows) if reply else windows
    known = metrics.tilt_costs(model, held_out, mask, batch_size=2)
    assert known.perplexity() == pytest.approx(metrics.perplexity(model, held_out), rel=1e-6)
    assert known.drift(0.0) == 0.0
    for b in (-6.0, -0.5, 0.3, 2.0, 40.0):
        ppl = metrics.perplexity(model, held_out, bias_mask=mask, bias=b)
        assert known.perplexity(b) == pytest.approx(ppl, rel=1e-5)
        assert known.drift(b) == pytest.approx(metrics.biased_drift(model, held_out, mask, b), rel=1e-4, abs=1e-7)
    from tokentilt.measurement.calibrate import set_log_masses

    assert torch.allclose(known.log_mass, set_log_masses(model, held_out, mask).double(), atol=1e-5)


def test_tilt_costs_hand_values():
    """Uniform model, V = 10, two set tokens: P = 0.2 everywhere; text of set tokens only."""
    mask = torch.zeros(V, dtype=torch.bool)
    mask[[3, 7]] = True
    known = metrics.tilt_costs(FixedLogits(torch.zeros(V)), torch.tensor([[3, 7, 7, 3]]), mask)
    b = 1.5
    z = 0.8 + 0.2 * math.exp(b)  # the normaliser 1 - P + P e^b
    assert known.perplexity(b) == pytest.approx(10 * z / math.exp(b), rel=1e-6)  # p_b(y) = 0.1 e^b / z
    assert known.drift(b) == pytest.approx(math.log(z) - 0.2 * b, rel=1e-6)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        metrics.tilt_costs(FixedLogits(torch.zeros(V)), torch.tensor([[3]]), mask)


@pytest.mark.parametrize("reply", [False, True], ids=["text", "chat"])
def test_perplexity_and_drift_in_one_pass_match_the_two_functions(windows, reply):
    model, reference = tiny_gpt2(), tiny_gpt2(seed=1)
    mask = torch.zeros(V, dtype=torch.bool)
    mask[[2, 5]] = True
    held_out = _reply_windows(windows) if reply else windows
    for ref, kw in (
        (reference, {}),
        (reference, {"bias_mask": mask, "bias": 1.5}),
        (model, {"bias_mask": mask, "bias": -2.0}),
    ):
        ppl, kl = metrics.perplexity_and_drift(model, ref, held_out, batch_size=3, **kw)
        assert ppl == pytest.approx(metrics.perplexity(model, held_out, **kw), rel=1e-6)
        assert kl == pytest.approx(metrics.drift(model, ref, held_out, **kw), rel=1e-6)
        assert kl > 0


def test_windows_shape_is_checked():
    with pytest.raises(ValueError, match="windows must have shape"):
        metrics.perplexity(FixedLogits(torch.zeros(V)), torch.zeros(4, dtype=torch.long))


def test_collapse_warning_at_half_the_vocabulary_or_non_finite():
    from tokentilt.measurement.metrics import collapse_warnings

    assert collapse_warnings(71.1, 84.0, 49152) == []
    assert collapse_warnings(71.1, 24575.9, 49152) == []
    [warning] = collapse_warnings(71.1, 49152.0, 49152)
    assert "49,152 (before: 71)" in warning and "vocabulary size 49,152" in warning
    assert len(collapse_warnings(71.1, float("nan"), 49152)) == 1
    assert len(collapse_warnings(71.1, float("inf"), 49152)) == 1


def test_logit_rows_cap_the_logits_of_a_mini_batch():
    assert metrics.logit_rows(8, 128, 49_152) == 2  # the bundled model's windows: 2 x 128 x 49,152 x 4 = 50 MB
    assert metrics.logit_rows(8, 128, 128_256) == 1  # 1 x 128 x 128,256 x 4 bytes = 66 MB > 64 MiB: one row
    assert metrics.logit_rows(8, 16, 49_152) == 8  # short windows keep the whole batch
    assert metrics.logit_rows(8, 4096, 262_144) == 1  # never fewer than one row
    assert metrics.logit_rows(8, 10, 10, budget=10 * 10 * 4 * 3) == 3


@pytest.mark.parametrize("reply", [False, True], ids=["text", "chat"])
def test_costs_in_one_row_batches_equal_the_unchunked_ones(windows, reply, monkeypatch):
    """With a logits budget of one byte every mini-batch is one window: the same numbers, to float tolerance."""
    model, reference = tiny_gpt2(), tiny_gpt2(seed=1)
    mask = torch.zeros(V, dtype=torch.bool)
    mask[[2, 5]] = True
    held_out = _reply_windows(windows) if reply else windows
    whole = metrics.perplexity_and_drift(model, reference, held_out, batch_size=8, bias_mask=mask, bias=1.5)
    costs = metrics.tilt_costs(model, held_out, mask, batch_size=8)
    rows = []
    real = metrics.forward_batches
    monkeypatch.setattr(metrics, "LOGITS_BYTES", 1)
    monkeypatch.setattr(metrics, "forward_batches", lambda *a: (rows.append(len(b[0])) or b for b in real(*a)))
    chunked = metrics.perplexity_and_drift(model, reference, held_out, batch_size=8, bias_mask=mask, bias=1.5)
    assert set(rows) == {1}
    assert chunked == pytest.approx(whole, rel=1e-6)
    small = metrics.tilt_costs(model, held_out, mask, batch_size=8)
    for field in ("nll", "hit", "next_mass", "log_mass", "head_inputs"):
        assert torch.allclose(getattr(small, field), getattr(costs, field), atol=1e-6), field
