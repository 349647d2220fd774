import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from conftest import tiny_gpt2, tiny_llama
from tokentilt.measurement import sampling as generate_module
from tokentilt.measurement.sampling import SampleConfig, StepScores, generate, recorded_head_inputs
from tokentilt.models import lora
from tokentilt.models.fast import llama_step
from tokentilt.models.fast.llama_step import LlamaDecoder, Packed, Transposed, supports
from tokentilt.models.fast.packed import can_pack


def biased_llama():
    """Biases in every linear layer, 4 query heads on 1 KV head, untied head, a scaled RoPE."""
    torch.manual_seed(1)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=1,
        max_position_embeddings=128,
        attention_bias=True,
        mlp_bias=True,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0},
    )
    return LlamaForCausalLM(cfg).eval()


def left_padded(rows: int = 3, width: int = 7) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, mask, positions) of rows of 4..width tokens, left-padded, then the first and the last row again
    (a prompt's samples: the prefill runs each distinct row once, and the rows part at the first step)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 64, (rows, width), generator=g)
    mask = torch.ones(rows, width, dtype=torch.long)
    for r in range(rows):
        mask[r, : r % (width - 3)] = 0
    again = [*range(rows), 0, rows - 1]
    return ids[again], mask[again], (mask[again].cumsum(-1) - 1).clamp(min=0)


STRATEGIES = [Transposed(), Packed(3)] if can_pack(nn.Linear(4, 4)) else [Transposed()]


@pytest.mark.parametrize("build", [tiny_llama, biased_llama])
@pytest.mark.parametrize("linear", STRATEGIES, ids=lambda s: type(s).__name__)
def test_each_step_gives_the_logits_of_a_forward_over_the_whole_sequence(build, linear):
    model = build()
    assert supports(model)
    ids, mask, positions = left_padded()
    steps = 6
    with torch.no_grad():
        decoder = LlamaDecoder(model, len(ids), ids.size(1) + steps, linear)
        logits = decoder.prefill(ids, mask, positions)
        for _ in range(steps):
            full = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
            torch.testing.assert_close(logits, full, rtol=0, atol=1e-5)
            nxt = torch.randint(1, 64, (len(ids), 1), generator=torch.Generator().manual_seed(ids.size(1)))
            ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
            positions = torch.cat([positions, positions[:, -1:] + 1], 1)
            logits = decoder.step(nxt, mask, positions[:, -1:])


def lora_llama(**extra):
    """tiny_llama with a LoRA adapter on every projection, its B matrices random (PEFT starts them at 0)."""
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(tiny_llama(), LoraConfig(r=2, lora_alpha=4, target_modules=targets, **extra))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.3)
    return model.eval()


@pytest.mark.parametrize("linear", STRATEGIES, ids=lambda s: type(s).__name__)
def test_a_lora_model_steps_with_its_adapters_and_without_them(linear):
    model = lora_llama()
    assert supports(model)
    ids, mask, positions = left_padded()
    nxt = torch.randint(1, 64, (len(ids), 1), generator=torch.Generator().manual_seed(9))
    longer, longer_mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    longer_positions = (longer_mask.cumsum(-1) - 1).clamp(min=0)

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        """(the lean step's logits after nxt, the forward's)"""
        decoder = LlamaDecoder(model, len(ids), ids.size(1) + 1, linear)
        decoder.prefill(ids, mask, positions)
        step = decoder.step(nxt, longer_mask, longer_positions[:, -1:])
        return step, model(input_ids=longer, attention_mask=longer_mask, position_ids=longer_positions).logits[:, -1]

    with torch.no_grad():
        step, full = both()
        torch.testing.assert_close(step, full, rtol=0, atol=1e-5)
        with model.disable_adapter():
            off, full_off = both()
        torch.testing.assert_close(off, full_off, rtol=0, atol=1e-5)
        assert (off - step).abs().max() > 0.1  # the adapters change the logits, and the step saw them
        model.merge_adapter()
        merged, _ = both()
        torch.testing.assert_close(merged, full, rtol=0, atol=1e-5)
    assert not supports(lora_llama(use_dora=True))


def test_generate_takes_the_lean_step_and_samples_what_the_forward_samples(monkeypatch):
    model = tiny_llama()
    ids, mask, _ = left_padded(rows=4)
    cfg = SampleConfig(max_new_tokens=8, ban_eos=False)
    calls, real = [], LlamaDecoder.step
    monkeypatch.setattr(LlamaDecoder, "step", lambda self, *a: calls.append(1) or real(self, *a))
    lean = generate(model, ids, mask, cfg, generator=torch.Generator().manual_seed(5))
    assert len(calls) == cfg.max_new_tokens - 1  # the prompt goes through the forward, each new token here
    monkeypatch.setattr(llama_step, "supports", lambda model: False)
    calls.clear()
    forward = generate(model, ids, mask, cfg, generator=torch.Generator().manual_seed(5))
    assert not calls and torch.equal(lean, forward)


def test_the_heads_hooks_see_each_step_so_recorded_scores_match_the_forward(monkeypatch):
    model = tiny_llama()
    ids, mask, _ = left_padded()
    set_mask = torch.zeros(64)
    set_mask[:20] = 1

    def scores() -> StepScores:
        with recorded_head_inputs(model) as inputs:
            observe, finish = StepScores.recorder(set_mask, [], inputs)
            cfg = SampleConfig(max_new_tokens=5, ban_eos=False)
            generate(model, ids, mask, cfg, generator=torch.Generator().manual_seed(1), observe=observe)
        return finish()

    lean = scores()
    monkeypatch.setattr(llama_step, "supports", lambda model: False)
    forward = scores()
    assert lean.head_inputs.shape == (len(ids), 5, 32)  # every row, the repeated ones too
    torch.testing.assert_close(lean.head_inputs, forward.head_inputs, rtol=0, atol=1e-5)
    torch.testing.assert_close(lean.log_p, forward.log_p, rtol=0, atol=1e-5)


def test_only_what_it_runs_exactly_takes_the_lean_step():
    model = tiny_llama()
    assert supports(model)
    assert not supports(tiny_gpt2())
    handle = model.model.layers[0].mlp.register_forward_hook(lambda *args: None)  # it would not run
    assert not supports(model)
    handle.remove()
    handle = model.register_forward_pre_hook(lambda *args: None)
    assert not supports(model)
    handle.remove()
    handle = model.lm_head.register_forward_hook(lambda *args: None)  # the head runs as a module
    assert supports(model)
    handle.remove()
    peft = lora.add_adapter(tiny_llama(), lora.LoraArgs(lora=True, lora_r=2), seed=0)
    assert supports(peft) and not supports(lora.AdapterOff(peft))  # a wrapper that changes the forward
    gelu = tiny_llama()
    gelu.config.hidden_act = "gelu"
    assert not supports(gelu)


def test_bf16_another_device_and_a_short_memory_take_the_forward(monkeypatch):
    model = tiny_llama()
    ids = torch.randint(1, 64, (2, 4))
    assert isinstance(generate_module.decoder(model, 2, 10), LlamaDecoder)
    assert isinstance(generate_module.decoder(model, 2, 10, lean=False), generate_module.ForwardSteps)
    # off the CPU (here the meta device stands in for a GPU) the weights are not copied
    assert isinstance(generate_module.decoder(tiny_llama().to("meta"), 2, 10), generate_module.ForwardSteps)
    monkeypatch.setattr(generate_module.packed, "free_bytes", lambda: 0)
    assert isinstance(generate_module.decoder(model, 2, 10), generate_module.ForwardSteps)
    calls = []
    monkeypatch.setattr(LlamaDecoder, "step", lambda *a: calls.append(1))
    generate(model, ids, cfg=SampleConfig(max_new_tokens=3, ban_eos=False))
    assert not calls
