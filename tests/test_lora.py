"""LoRA through PEFT: what trains, the adapter-off reference, and the two saved forms."""

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from conftest import CharTokenizer, tiny_gpt2, tiny_llama
from tokentilt.data.corpus import random_tokens
from tokentilt.models.lora import AdapterOff, LoraArgs, add_adapter, param_counts, save_adapter_and_merged
from tokentilt.objectives.losses import OBJECTIVES, ObjectiveContext
from tokentilt.training.loop import TrainConfig, train


@pytest.mark.parametrize(
    "build,targets",
    [
        (tiny_gpt2, {"c_attn", "c_proj", "c_fc"}),
        (tiny_llama, {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
    ],
)
def test_all_linear_adapts_attention_and_mlp_not_the_head(build, targets):
    model = add_adapter(build(), LoraArgs(lora=True, lora_r=4))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert adapted == targets
    counts = param_counts(model)
    assert 0 < counts["trainable_params"] < counts["total_params"] / 5


def test_the_adapter_init_follows_the_seed():
    def init(seed):
        model = add_adapter(tiny_llama(), LoraArgs(lora=True, lora_r=4), seed=seed)
        return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}

    a, b, c = init(0), init(0), init(1)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)


def test_named_targets_and_bad_ones():
    model = add_adapter(tiny_llama(), LoraArgs(lora=True, lora_r=2, lora_targets="q_proj, v_proj"))
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad}
    assert adapted == {"q_proj", "v_proj"}
    with pytest.raises(ValueError, match="cannot add a LoRA adapter"):
        add_adapter(tiny_llama(), LoraArgs(lora=True, lora_targets="no_such_layer"))
    for field, value, message in [
        ("lora_r", 0, "lora-r"),
        ("lora_alpha", -1.0, "lora-alpha"),
        ("lora_dropout", 1.0, "lora-dropout"),
        ("lora_targets", " , ", "lora-targets"),
    ]:
        with pytest.raises(ValueError, match=message):
            LoraArgs(lora=True, **{field: value}).check()


def test_training_moves_only_the_adapter_and_adapter_off_is_the_base(tmp_path):
    base = tiny_llama()
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
    frozen = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = add_adapter(base, LoraArgs(lora=True, lora_r=4))
    reference = AdapterOff(model)
    assert not reference.state_dict()  # it registers nothing of its own: the weights are held once
    assert [id(p) for p in reference.parameters()] == [id(p) for p in model.parameters()]
    mask = torch.zeros(64, dtype=torch.bool)
    mask[[3, 7]] = True
    cfg = TrainConfig(lr=5e-2, steps=6, batch=2, seq_len=8, eval_every=0)
    history = train(
        model,
        OBJECTIVES["tilt-distill"],
        ObjectiveContext(mask=mask, positions="all", bias=3.0),
        lambda g, rows: random_tokens(64, rows, 8, g),
        cfg,
        reference=reference,
        progress=False,
    )
    assert history[-1]["loss"] < history[0]["loss"]
    with torch.no_grad():
        torch.testing.assert_close(reference(input_ids=ids).logits, base_logits)  # the reference never moved
        tuned_logits = model(input_ids=ids).logits
    assert not torch.allclose(tuned_logits, base_logits)
    for name, p in model.base_model.model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, frozen[name.replace(".base_layer", "")])

    # adapter/ reloads on the base with PEFT, model/ is the merged model in plain transformers
    tokenizer = CharTokenizer()
    tokenizer.save_pretrained = lambda folder: None
    merged = save_adapter_and_merged(model, tokenizer, tmp_path)
    reloaded = PeftModel.from_pretrained(tiny_llama(), tmp_path / "adapter").eval()
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, tuned_logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(plain(input_ids=ids).logits, tuned_logits, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(merged(input_ids=ids).logits, tuned_logits, rtol=1e-4, atol=1e-5)
