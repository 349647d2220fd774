import pytest
import torch
from torch import nn

from conftest import tiny_gpt2, tiny_llama
from tokentilt.course.gpt import GPT, GPTConfig
from tokentilt.measurement.sampling import SampleConfig, generate
from tokentilt.models.fast import packed as packed_module
from tokentilt.models.fast.packed import can_pack, packed_linears

pytestmark = pytest.mark.skipif(not can_pack(nn.Linear(4, 4)), reason="no oneDNN linear in this torch build")


def tiny_model5():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32)).eval()


def is_packed(model) -> list[bool]:
    return ["forward" in m.__dict__ for m in model.modules() if type(m) is nn.Linear]


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama, tiny_model5])
def test_packed_logits_match_the_plain_forward_within_fp32_rounding(build, monkeypatch):
    model = build()
    linears = sum(type(m) is nn.Linear for m in model.modules())
    ids = torch.randint(0, 64, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with packed_linears(model, rows=27):
            assert all(is_packed(model))
            calls = spy(monkeypatch)
            packed = model(input_ids=ids).logits
        assert len(calls) == linears  # oneDNN ran each layer once
        assert not any(is_packed(model))  # nn.Linear.forward again
        model(input_ids=ids)
        assert len(calls) == linears
    torch.testing.assert_close(packed, plain, rtol=1e-5, atol=1e-5)


def spy(monkeypatch) -> list:
    """Record each call of oneDNN's packed linear."""
    calls, real = [], packed_module._packed_linear
    monkeypatch.setattr(packed_module, "_packed_linear", lambda *args: calls.append(1) or real(*args))
    return calls


def test_a_call_that_needs_gradients_uses_the_live_weight():
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(1))
    reference = tiny_llama()
    with torch.no_grad():
        for p in reference.parameters():
            p.mul_(1.5)
    reference(input_ids=ids).logits.square().mean().backward()
    expected = [p.grad for p in reference.parameters()]
    model = tiny_llama()  # the same start weights
    with packed_linears(model):
        with torch.no_grad():
            for p in model.parameters():  # an update after packing: the grad-enabled call must see it
                p.mul_(1.5)
        model(input_ids=ids).logits.square().mean().backward()
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), expected))


def test_nested_calls_pack_once_and_an_error_unpacks():
    model = tiny_gpt2()
    with packed_linears(model):
        first = [m.forward for m in model.modules() if type(m) is nn.Linear]
        with packed_linears(model):  # generate() inside a caller's packed pass
            assert [m.forward for m in model.modules() if type(m) is nn.Linear] == first
        assert all(is_packed(model))  # the inner exit leaves the outer packing in place
    with pytest.raises(RuntimeError, match="boom"):
        with packed_linears(model):
            raise RuntimeError("boom")
    assert not any(is_packed(model))


def test_packing_is_skipped_off_fp32_and_when_disabled():
    model = tiny_llama()
    with packed_linears(model, enabled=False):
        assert not any(is_packed(model))
    bf16 = tiny_llama().to(torch.bfloat16)
    assert not can_pack(bf16)
    with packed_linears(bf16):
        assert not any(is_packed(bf16))
    assert not can_pack(nn.Embedding(4, 4))  # nothing to pack


def test_sampling_packs_and_matches_greedy_decoding_without_it(monkeypatch):
    model = tiny_gpt2()  # through its forward (a Llama model's steps pack in models/llama_step.py)
    ids = torch.randint(1, 64, (packed_module.SMALL_BATCH, 5), generator=torch.Generator().manual_seed(2))
    cfg = SampleConfig(max_new_tokens=10, strategy="greedy", ban_eos=False)
    calls = spy(monkeypatch)
    packed = generate(model, ids, cfg=cfg)
    assert len(calls) == 10 * sum(type(m) is nn.Linear for m in model.modules())  # every step, every layer
    monkeypatch.setattr(packed_module, "can_pack", lambda *args: False)
    calls.clear()
    assert torch.equal(generate(model, ids, cfg=cfg), packed)
    assert not calls


def test_a_small_batch_packs_only_the_big_layers(monkeypatch):
    model = tiny_gpt2()  # its largest layer is the 64 x 32 output head
    monkeypatch.setattr(packed_module, "BIG_LAYER", 64 * 32)
    with packed_linears(model, rows=1):
        assert [name for name, m in model.named_modules() if "forward" in m.__dict__] == ["lm_head"]
    with packed_linears(model, rows=packed_module.SMALL_BATCH):
        assert all(is_packed(model))
