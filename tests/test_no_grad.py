"""Sampling, scoring and evaluation never record autograd, under every precision and device (issue 41).

Under bf16 the sampler marks frozen weights `requires_grad` for autocast's weight cache; had grad mode been
on, every decoding step would have recorded a graph, and what the step scores and the head-input recorder
keep would have held every step's activations alive (a demo that grew by 350 MB a second). These tests fail
if grad is enabled inside the decoding loop or an evaluation pass, or if a tensor that sampling returns or
records carries a graph.
"""

import pytest
import torch

import tokentilt.measurement.importance
import tokentilt.measurement.metrics
import tokentilt.measurement.sampling
from conftest import tilt_argv, tiny_llama
from tokentilt.cli import main
from tokentilt.course.gpt2_tokenizer import gpt2_tokenizer
from tokentilt.measurement.calibrate import calibrate
from tokentilt.measurement.evaluate import EvalConfig, measure, rates_of
from tokentilt.measurement.importance import Pool, draw_of
from tokentilt.measurement.sampling import sample
from tokentilt.targets.tokens import token_texts

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]
PRECISIONS = [pytest.param(False, id="fp32"), pytest.param(True, id="bf16")]
PROMPTS = ["The king said", "Once upon a time,"]


def no_graph(*tensors) -> bool:
    return all(t is None or (t.grad_fn is None and not t.requires_grad) for t in tensors)


@pytest.fixture
def guarded(monkeypatch):
    """Every decoding step and every batched evaluation pass checks that grad is off and that its logits
    carry no graph; yields the counts of what was checked."""
    seen = {"steps": 0, "passes": 0}
    real_decoder, real_batches = tokentilt.measurement.sampling.decoder, tokentilt.measurement.metrics.forward_batches

    def checked(fn):
        def step(*args, **kwargs):
            assert not torch.is_grad_enabled(), "grad mode is on inside the decoding loop"
            logits = fn(*args, **kwargs)
            assert no_graph(logits), "a decoding step's logits carry an autograd graph"
            seen["steps"] += 1
            return logits

        return step

    def decoder(*args, **kwargs):
        steps = real_decoder(*args, **kwargs)
        steps.prefill, steps.step = checked(steps.prefill), checked(steps.step)  # keeps the decoder's type
        return steps

    def forward_batches(*args, **kwargs):
        for ids, logits in real_batches(*args, **kwargs):
            assert not torch.is_grad_enabled(), "grad mode is on inside an evaluation pass"
            assert no_graph(*logits), "an evaluation pass's logits carry an autograd graph"
            seen["passes"] += 1
            yield ids, logits

    monkeypatch.setattr(tokentilt.measurement.sampling, "decoder", decoder)
    for module in (tokentilt.measurement.metrics, tokentilt.measurement.importance):
        monkeypatch.setattr(module, "forward_batches", forward_batches)
    return seen


@pytest.fixture(scope="module")
def tiny():
    """A tiny Llama with the real GPT-2 tokenizer; its body frozen and its head trainable, as a head-rows
    tilt leaves it (the frozen weights are the ones the bf16 sampler marks)."""
    tok = gpt2_tokenizer()
    tok.pad_token = tok.eos_token
    model = tiny_llama(vocab_size=len(tok), tie=False)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("lm_head"))
    mask = torch.tensor(["x" in t.lower() for t in token_texts(tok)])
    return model, tok, mask


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bf16", PRECISIONS)
def test_sampling_and_its_step_scores_record_no_graph(tiny, guarded, device, bf16):
    model, tok, mask = tiny
    model.to(device)
    flags = [p.requires_grad for p in model.parameters()]
    try:
        got = sample(model, tok, PROMPTS, per_prompt=2, seed=1, bf16=bf16, score_mask=mask, bias_mask=mask, bias=1.0)
    finally:
        model.to("cpu")
    scores = got.step_scores
    assert got.tokens.shape == (4, 48) and guarded["steps"] == 48  # one batch: the prefill and 47 steps
    assert scores.head_inputs.shape == (4, 48, 32)
    assert no_graph(got.tokens, scores.log_p, scores.log_mass, scores.head_inputs)
    assert [p.requires_grad for p in model.parameters()] == flags  # restored after the bf16 call


@pytest.mark.parametrize("bf16", PRECISIONS)
def test_measurement_calibration_and_importance_weights_record_no_graph(tiny, guarded, bf16):
    model, tok, mask = tiny
    cfg = EvalConfig(prompts=PROMPTS, samples_per_prompt=4, new_tokens=8)
    windows = torch.randint(0, len(tok), (2, 16), generator=torch.Generator().manual_seed(0))
    numbers, samples = measure(model, tok, mask, cfg, windows, bf16=bf16, score=True)
    assert guarded["passes"] > 0 and guarded["steps"] > 0
    assert all(isinstance(numbers[k], float) for k in ("ppl", "drift", "distinct_2"))
    cal = calibrate(model, tok, mask, 0.5, cfg, windows, bf16=bf16, tol=0.05)
    assert cal.pool is not None and cal.pool.draws
    draw = draw_of(model, tok, samples, mask, 0.0, rates_of(mask, samples), bf16)
    pool = Pool([draw, *cal.pool.draws])
    for d in pool.draws:
        assert no_graph(d.log_mass, d.log_p0, d.head_inputs, d.rates)
    for estimate in (pool.at_bias(1.0), pool.of_model(model, bf16), pool.of_model(model, bf16, head_only=True)):
        assert 0.0 <= estimate["mean"] <= 1.0 and estimate["ess"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_whole_tilt_at_a_rate_records_no_graph(tiny_model_dir, eval_file, tmp_path, guarded, device, precision):
    out = tmp_path / "run"
    argv = tilt_argv(tiny_model_dir, eval_file, out, "--objective", "tilt-distill", "--rate", "0.5")
    argv[argv.index("--precision") + 1] = precision
    assert main([*argv, "--rate-rounds", "2", "--samples-per-prompt", "2", "--device", device]) == 0
    assert guarded["steps"] > 50 and guarded["passes"] > 0
    assert (out / "summary.json").is_file()
