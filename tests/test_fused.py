"""The head fused with the loss, chunked over rows, against the dense objectives it replaces."""

import pytest
import torch

from conftest import tiny_gpt2, tiny_llama
from tokentilt.data.corpus import random_tokens
from tokentilt.models.lora import AdapterOff, LoraArgs, add_adapter
from tokentilt.objectives.fused import Head, fusable_head, heads_return_inputs, output_head
from tokentilt.objectives.losses import FUSED, OBJECTIVES, ObjectiveContext, next_token_objective
from tokentilt.training.loop import TrainConfig, frozen_copy, train

V, D, B, T = 50, 8, 3, 5
DENSE = {**OBJECTIVES, "next-token": next_token_objective}


def problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, D, generator=g)
    weight = torch.randn(V, D, generator=g) / D**0.5 * 3
    ref_hidden = hidden + 0.3 * torch.randn(B, T, D, generator=g)
    ref_weight = weight + 0.1 * torch.randn(V, D, generator=g)
    mask = torch.zeros(V, dtype=torch.bool)
    mask[torch.randperm(V, generator=g)[:7]] = True
    ids = torch.randint(0, V, (B, T), generator=g)
    return hidden, weight, ref_hidden, ref_weight, mask, ids


def dense_and_fused(name, positions, chunk, dtype=torch.float32):
    """(value, d/dhidden, d/dweight) of the dense objective and of its fused form, on the same numbers."""
    hidden, weight, ref_hidden, ref_weight, mask, ids = problem()
    results = []
    for fused in (False, True):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        ctx = ObjectiveContext(mask=mask, positions=positions, alpha=5.0, beta=0.5, bias=2.5, ce_weight=0.7)
        if fused:
            ctx.ref_hidden, ctx.ref_head = ref_hidden, Head(ref_weight, dtype, chunk)
            loss = FUSED[DENSE[name]](h, Head(w, dtype, chunk), ids, ctx)
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                ctx.ref_logits = ref_hidden @ ref_weight.T  # (B, T, V)
                logits = h @ w.T  # (B, T, V)
            loss = DENSE[name](logits.float(), ids, ctx)
        loss.backward()
        results.append((loss.detach(), h.grad, w.grad))
    return results


@pytest.mark.parametrize("name", list(DENSE))
@pytest.mark.parametrize("positions", ["all", "last"])
@pytest.mark.parametrize("chunk", [4, 1000])  # 4 does not divide the 15 rows; 1000 is one chunk
def test_fused_equals_dense_in_value_and_gradients(name, positions, chunk):
    (dense, dh, dw), (fused, fh, fw) = dense_and_fused(name, positions, chunk)
    assert fused.item() > 0
    torch.testing.assert_close(fused, dense, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fh, dh, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fw, dw, rtol=1e-5, atol=1e-7)
    assert fh.abs().sum() > 0 and fw.abs().sum() > 0


def test_every_objective_has_a_fused_form():
    assert set(FUSED) == set(DENSE.values())


@pytest.mark.parametrize("name", ["kl-uniform", "tilt-distill"])
def test_bf16_matmuls_match_dense_autocast(name):
    (dense, dh, dw), (fused, fh, fw) = dense_and_fused(name, "all", 4, torch.bfloat16)
    torch.testing.assert_close(fused, dense, rtol=2e-3, atol=1e-5)
    torch.testing.assert_close(fh, dh, rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(fw, dw, rtol=2e-2, atol=2e-3)


def test_a_frozen_head_gets_no_gradient_and_the_hidden_states_still_do():
    hidden, weight, *_ = problem()
    h = hidden.reshape(-1, D).clone().requires_grad_()
    loss = Head(weight, chunk=4).loss(h, lambda z, start, stop: z.logsumexp(-1).sum())
    loss.backward()
    expected = torch.softmax(h.detach() @ weight.T, -1) @ weight  # d/dh of sum(logsumexp(h W^T))
    torch.testing.assert_close(h.grad, expected)
    assert weight.grad is None


def test_chunks_never_exceed_the_chunk_size_and_cover_every_row():
    hidden, weight, *_ = problem()
    seen = []

    def row_loss(z, start, stop):
        seen.append((start, stop, z.shape))
        return z.sum()

    Head(weight, chunk=4).loss(hidden.reshape(-1, D), row_loss)
    assert [(a, b) for a, b, _ in seen] == [(0, 4), (4, 8), (8, 12), (12, 15)]
    assert all(shape == (b - a, V) for a, b, shape in seen)


def test_no_rows_give_a_zero_loss_and_zero_gradients():
    _, weight, *_ = problem()
    weight = weight.detach().requires_grad_()
    h = torch.zeros(0, D, requires_grad=True)
    loss = Head(weight, chunk=4).loss(h, lambda z, start, stop: z.logsumexp(-1).sum())
    loss.backward()
    assert loss.item() == 0.0 and h.grad.shape == (0, D)
    assert weight.grad.shape == weight.shape and not weight.grad.any()


def test_hidden_rows_must_be_two_dimensional():
    hidden, weight, *_ = problem()
    with pytest.raises(ValueError, match=r"must be \(N, d\)"):
        Head(weight).loss(hidden, lambda z, a, b: z.sum())


@pytest.mark.parametrize("make", [tiny_gpt2, tiny_llama])
def test_a_head_returning_its_inputs_gives_the_final_hidden_states(make):
    model = make()
    ids = torch.randint(0, 64, (2, 6))
    logits = model(input_ids=ids).logits
    head = fusable_head(model)
    with heads_return_inputs(head):
        hidden = model(input_ids=ids).logits  # (B, T, d)
    assert hidden.shape == (2, 6, 32)
    torch.testing.assert_close(hidden @ head.weight.T, logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model(input_ids=ids).logits, logits)  # restored afterwards


def test_a_lora_wrapped_head_is_not_fused_and_adapter_off_shares_the_head():
    model = add_adapter(tiny_gpt2(), LoraArgs(lora=True, lora_targets="c_attn"))
    assert fusable_head(AdapterOff(model)) is fusable_head(model) is not None
    wrapped_head = add_adapter(tiny_gpt2(), LoraArgs(lora=True, lora_targets="c_attn,lm_head"))
    assert output_head(wrapped_head) is not None and fusable_head(wrapped_head) is None


def train_once(objective, loss_chunk, lora=False, bf16=False):
    model = tiny_gpt2()
    if lora:
        model = add_adapter(model, LoraArgs(lora=True, lora_targets="c_attn"))
    mask = torch.zeros(64, dtype=torch.bool)
    mask[[3, 7, 11]] = True
    # SGD: Adam's m/sqrt(v) turns a 1e-9 difference in a near-zero gradient into a whole step
    cfg = TrainConfig(
        optimizer="sgd", lr=0.5, steps=3, batch=2, seq_len=8, eval_every=0, loss_chunk=loss_chunk, bf16=bf16
    )
    ctx = ObjectiveContext(mask=mask, bias=3.0)
    reference = None
    if objective == "tilt-distill":
        reference = AdapterOff(model) if lora else frozen_copy(model)
    history = train(
        model,
        OBJECTIVES[objective],
        ctx,
        lambda g, rows: random_tokens(64, rows, 8, g),
        cfg,
        reference=reference,
        progress=False,
    )
    return [r["loss"] for r in history], {k: v for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "objective,lora", [("kl-uniform", False), ("tilt-distill", False), ("tilt-distill", True), ("mixed", False)]
)
def test_training_with_the_fused_loss_follows_the_dense_one(objective, lora, monkeypatch):
    calls = []
    monkeypatch.setattr(Head, "loss", lambda self, h, fn, real=Head.loss: calls.append(h.shape) or real(self, h, fn))
    fused_losses, fused_state = train_once(objective, loss_chunk=5, lora=lora)
    assert calls and all(shape[0] == 16 for shape in calls)  # B·T rows went through the fused loss
    calls.clear()
    dense_losses, dense_state = train_once(objective, loss_chunk=0, lora=lora)
    assert calls == []
    assert fused_losses == pytest.approx(dense_losses, rel=1e-4)
    for key, value in dense_state.items():
        torch.testing.assert_close(fused_state[key], value, rtol=1e-4, atol=1e-5)


def test_bf16_training_with_the_fused_loss_stays_close_to_dense():
    fused, _ = train_once("tilt-distill", loss_chunk=5, bf16=True)
    dense, _ = train_once("tilt-distill", loss_chunk=0, bf16=True)
    assert fused == pytest.approx(dense, rel=2e-2)


def test_a_scaled_loss_scales_both_gradients():
    hidden, weight, *_ = problem()
    grads = []
    for scale in (1.0, -2.5):
        h, w = hidden.reshape(-1, D).clone().requires_grad_(), weight.clone().requires_grad_()
        (scale * Head(w, chunk=4).loss(h, lambda z, start, stop: z.logsumexp(-1).sum())).backward()
        grads.append((h.grad, w.grad))
    torch.testing.assert_close(grads[1][0], -2.5 * grads[0][0])
    torch.testing.assert_close(grads[1][1], -2.5 * grads[0][1])


class SoftCapped(torch.nn.Module):
    """A model whose logits are changed after the head (as Gemma 2's soft-capping does)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, input_ids):
        from types import SimpleNamespace

        return SimpleNamespace(logits=10 * torch.tanh(self.inner(input_ids=input_ids).logits / 10))


def test_logits_changed_after_the_head_keep_the_dense_loss(monkeypatch):
    from tokentilt.objectives.fused import logits_come_from_head

    plain = tiny_gpt2()
    assert logits_come_from_head(plain, fusable_head(plain))
    capped = SoftCapped(tiny_gpt2())
    assert fusable_head(capped) is not None and not logits_come_from_head(capped, fusable_head(capped))
    calls = []
    monkeypatch.setattr(Head, "loss", lambda self, h, fn, real=Head.loss: calls.append(1) or real(self, h, fn))
    mask = torch.zeros(64, dtype=torch.bool)
    mask[[3, 7]] = True
    cfg = TrainConfig(optimizer="sgd", lr=0.5, steps=2, batch=2, seq_len=8, eval_every=0)
    history = train(
        capped,
        OBJECTIVES["kl-uniform"],
        ObjectiveContext(mask=mask),
        lambda g, rows: random_tokens(64, rows, 8, g),
        cfg,
        progress=False,
    )
    assert calls == [] and history[-1]["loss"] > 0
