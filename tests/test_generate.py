import pytest
import torch

from conftest import tiny_gpt2, tiny_llama
from tokentilt.measurement.sampling import SampleConfig, SetBias, draw, generate, make_processors


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama])
def test_greedy_matches_hf_generate(build):
    model = build()
    ids = torch.randint(1, 64, (1, 7), generator=torch.Generator().manual_seed(1))
    ours = generate(model, ids, cfg=SampleConfig(max_new_tokens=12, strategy="greedy", ban_eos=False))
    theirs = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False, pad_token_id=0
    )
    assert torch.equal(ours, theirs[:, 7:])


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama])
def test_generation_builds_no_autograd_graph_and_uses_the_current_cache_argument(build, recwarn):
    model = build()  # a model being trained: its parameters require grad
    grad_modes = []
    model.register_forward_pre_hook(lambda module, args: grad_modes.append(torch.is_grad_enabled()))
    generate(model, torch.randint(1, 64, (2, 4)), cfg=SampleConfig(max_new_tokens=3, ban_eos=False))
    assert grad_modes == [False] * 3
    assert not [w for w in recwarn if "past_key_values" in str(w.message)]  # no deprecated argument


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama])
def test_bf16_generation_of_a_partly_frozen_model_matches_hf_and_restores_requires_grad(build):
    model = build()
    for name, p in model.named_parameters():  # frozen body, trainable rest (as head-rows tilts leave it)
        p.requires_grad_("ln_f" in name or name.startswith("model.norm"))
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    ids = torch.randint(1, 64, (2, 5), generator=torch.Generator().manual_seed(3))
    ours = generate(model, ids, cfg=SampleConfig(max_new_tokens=10, strategy="greedy", ban_eos=False), bf16=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        theirs = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False, pad_token_id=0
        )
    assert torch.equal(ours, theirs[:, 5:])
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    with pytest.raises(RuntimeError):  # a call that fails midway (a bias row of the wrong size) restores them too
        generate(
            model,
            ids,
            cfg=SampleConfig(max_new_tokens=2, ban_eos=False),
            bias_mask=torch.ones(3, dtype=torch.bool),
            bias=1.0,
            bf16=True,
        )
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags


def test_left_padded_batch_matches_single_rows(llama_model):
    g = torch.Generator().manual_seed(2)
    a, b = torch.randint(1, 64, (1, 5), generator=g), torch.randint(1, 64, (1, 8), generator=g)
    batch = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), a], 1), b])  # (2, 8) left-padded
    mask = torch.cat([torch.cat([torch.zeros(1, 3), torch.ones(1, 5)], 1), torch.ones(1, 8)]).long()
    cfg = SampleConfig(max_new_tokens=6, strategy="greedy", ban_eos=False)
    both = generate(llama_model, batch, mask, cfg)
    assert torch.equal(both[0:1], generate(llama_model, a, cfg=cfg))
    assert torch.equal(both[1:2], generate(llama_model, b, cfg=cfg))


def test_sampling_is_reproducible_from_seed(gpt2_model):
    ids = torch.randint(1, 64, (4, 5), generator=torch.Generator().manual_seed(3))
    cfg = SampleConfig(max_new_tokens=10, top_k=20, top_p=0.9, temperature=0.8)
    first = generate(gpt2_model, ids, cfg=cfg, generator=torch.Generator().manual_seed(7))
    second = generate(gpt2_model, ids, cfg=cfg, generator=torch.Generator().manual_seed(7))
    other = generate(gpt2_model, ids, cfg=cfg, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_huge_bias_forces_the_set(gpt2_model):
    mask = torch.zeros(64, dtype=torch.bool)
    mask[[5, 9]] = True
    ids = torch.randint(1, 64, (3, 4), generator=torch.Generator().manual_seed(4))
    out = generate(
        gpt2_model,
        ids,
        cfg=SampleConfig(max_new_tokens=8),
        bias_mask=mask,
        bias=1e4,
        generator=torch.Generator().manual_seed(0),
    )
    assert mask[out].all()


def test_ban_eos_and_top_k_one_is_greedy(gpt2_model):
    ids = torch.randint(1, 64, (2, 4), generator=torch.Generator().manual_seed(5))
    out = generate(
        gpt2_model, ids, cfg=SampleConfig(max_new_tokens=20), eos_ids=[3], generator=torch.Generator().manual_seed(0)
    )
    assert not (out == 3).any()
    topk1 = generate(
        gpt2_model,
        ids,
        cfg=SampleConfig(max_new_tokens=8, top_k=1, ban_eos=False),
        generator=torch.Generator().manual_seed(0),
    )
    greedy = generate(gpt2_model, ids, cfg=SampleConfig(max_new_tokens=8, strategy="greedy", ban_eos=False))
    assert torch.equal(topk1, greedy)


def test_set_bias_adds_b_on_the_set():
    mask = torch.tensor([True, False, True])
    scores = torch.zeros(2, 3)
    assert torch.equal(SetBias(mask, 2.5)(None, scores), torch.tensor([[2.5, 0, 2.5]] * 2))
    assert len(make_processors(SampleConfig(strategy="greedy", top_k=5), mask, 0.0)) == 0


@pytest.mark.parametrize("bad", [dict(strategy="beam"), dict(max_new_tokens=0), dict(temperature=0.0), dict(top_p=0.0)])
def test_bad_sample_config(gpt2_model, bad):
    with pytest.raises(ValueError):
        generate(gpt2_model, torch.ones(1, 2, dtype=torch.long), cfg=SampleConfig(**bad))


def test_draw_samples_each_row_from_its_distribution():
    probs = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.0, 0.0, 0.1, 0.9]]).repeat(10_000, 1)  # (20000, 4)
    ids = draw(probs, torch.Generator().manual_seed(0))
    assert ids.shape == (20_000, 1)
    first, second = ids[0::2, 0], ids[1::2, 0]
    assert torch.allclose(torch.bincount(first, minlength=4) / 10_000.0, probs[0], atol=0.015)
    assert torch.allclose(torch.bincount(second, minlength=4) / 10_000.0, probs[1], atol=0.015)
    assert not (first == 3).any() and not (second < 2).any()  # probability 0 is never drawn


def test_draw_is_reproducible_and_unnormalized_rows_work():
    probs = torch.softmax(torch.randn(8, 50, generator=torch.Generator().manual_seed(1)), -1)
    a = draw(probs, torch.Generator().manual_seed(3))
    assert torch.equal(a, draw(probs, torch.Generator().manual_seed(3)))
    assert torch.equal(a, draw(probs * 7.0, torch.Generator().manual_seed(3)))  # the scale does not matter
