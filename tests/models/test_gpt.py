"""Model 5 against Hugging Face GPT-2 on tiny random configs built in-process."""

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from tokentilt.course.gpt import GPT, GPTConfig
from tokentilt.measurement.sampling import cache_argument

V, BLOCK = 97, 64
ATOL = 1e-4


@pytest.fixture(scope="module")
def hf():
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=V,
        n_positions=BLOCK,
        n_embd=32,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=V - 1,
        eos_token_id=V - 1,
    )
    model = GPT2LMHeadModel(config).eval()
    # HF initialises LayerNorms to (1, 0); randomise them so a swapped or missing copy would show.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
    return model


@pytest.fixture(scope="module")
def gpt(hf):
    return GPT.from_hf(hf).eval()


def random_ids(B=2, T=12, seed=1):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_from_hf_matches_hf_logits(hf, gpt):
    ids = random_ids()
    ours = gpt(ids).logits  # (B, T, V)
    assert ours.shape == (2, 12, V)
    torch.testing.assert_close(ours, hf(ids).logits, atol=ATOL, rtol=0)
    assert gpt.config == GPTConfig(
        vocab_size=V, block_size=BLOCK, n_layer=2, n_head=4, n_embd=32, dropout=0.0, bias=True, layer_norm_epsilon=1e-5
    )


@torch.no_grad()
def test_to_hf_round_trip_and_save_pretrained(gpt, tmp_path):
    ids = random_ids(seed=2)
    ours = gpt(ids).logits
    hf2 = gpt.to_hf().eval()
    torch.testing.assert_close(hf2(ids).logits, ours, atol=ATOL, rtol=0)

    hf2.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded(ids).logits, ours, atol=ATOL, rtol=0)
    # ... and back into Model 5 through GPT.load, which recognises an HF folder.
    torch.testing.assert_close(GPT.load(tmp_path).eval()(ids).logits, ours, atol=ATOL, rtol=0)


@torch.no_grad()
def test_native_save_load_round_trip(tmp_path):
    torch.manual_seed(3)
    model = GPT(GPTConfig(vocab_size=V, block_size=BLOCK, n_layer=2, n_head=4, n_embd=32, bias=False)).eval()
    model.save(tmp_path)
    loaded = GPT.load(tmp_path).eval()
    assert loaded.config == model.config
    ids = random_ids(seed=3)
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    # A bias-free model still exports exactly: GPT-2's biases become zeros.
    torch.testing.assert_close(model.to_hf().eval()(ids).logits, model(ids).logits, atol=ATOL, rtol=0)


def test_load_rejects_corrupt_checkpoint(tmp_path):
    GPT(GPTConfig(vocab_size=V, block_size=BLOCK, n_layer=1, n_head=4, n_embd=32)).save(tmp_path)
    (tmp_path / "gpt.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt Model 5 checkpoint"):
        GPT.load(tmp_path)


@torch.no_grad()
def test_kv_cache_matches_full_forward(gpt):
    ids = random_ids(B=2, T=10, seed=4)
    full = gpt(ids).logits  # (B, T, V)
    # Prefill 4 tokens, then a chunk of 3 (exercises the offset causal mask), then one at a time.
    out = gpt(input_ids=ids[:, :4], use_cache=True)
    pieces = [out.logits]
    past = out.past_key_values
    for start, end in [(4, 7), (7, 8), (8, 9), (9, 10)]:
        out = gpt(input_ids=ids[:, start:end], past_key_values=past, use_cache=True)
        pieces.append(out.logits)
        past = out.past_key_values
    assert past[0][0].shape == (2, 4, 10, 8)  # (B, H, S, D)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=ATOL, rtol=0)


@torch.no_grad()
def test_left_padding_matches_unpadded(gpt):
    short, long = random_ids(B=1, T=5, seed=5), random_ids(B=1, T=9, seed=6)
    pad = 4
    ids = torch.cat([torch.cat([torch.zeros(1, pad, dtype=torch.long), short], dim=1), long])  # (2, 9)
    mask = torch.ones_like(ids)
    mask[0, :pad] = 0
    out = gpt(input_ids=ids, attention_mask=mask, use_cache=True)
    assert torch.isfinite(out.logits).all()  # pad-only rows must not turn into NaN
    torch.testing.assert_close(out.logits[0, -1], gpt(short).logits[0, -1], atol=ATOL, rtol=0)
    torch.testing.assert_close(out.logits[1, -1], gpt(long).logits[0, -1], atol=ATOL, rtol=0)

    # One cached step further, with explicit HF-style position ids, stays equal too.
    nxt = torch.tensor([[7], [7]])
    mask2 = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
    pos = (mask2.cumsum(-1) - 1)[:, -1:]
    step = gpt(
        input_ids=nxt, attention_mask=mask2, position_ids=pos, past_key_values=out.past_key_values, use_cache=True
    ).logits[:, -1]  # (2, V)
    torch.testing.assert_close(step[0], gpt(torch.cat([short, nxt[:1]], 1)).logits[0, -1], atol=ATOL, rtol=0)
    torch.testing.assert_close(step[1], gpt(torch.cat([long, nxt[1:]], 1)).logits[0, -1], atol=ATOL, rtol=0)


@torch.no_grad()
def test_causal_future_token_does_not_change_past(gpt):
    ids = random_ids(B=1, T=10, seed=7)
    changed = ids.clone()
    changed[0, 6] = (changed[0, 6] + 1) % V
    a, b = gpt(ids).logits, gpt(changed).logits
    assert torch.equal(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def greedy(model, ids, n):
    """A minimal greedy loop through the shared forward contract."""
    mask = torch.ones_like(ids)
    cache = cache_argument(model)
    out = model(input_ids=ids, attention_mask=mask, position_ids=None, use_cache=True, **{cache: None})
    tokens = []
    for _ in range(n):
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        tokens.append(nxt)
        mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
        out = model(
            input_ids=nxt, attention_mask=mask, position_ids=None, use_cache=True, **{cache: getattr(out, cache)}
        )
    return torch.cat(tokens, dim=1)  # (B, n)


@torch.no_grad()
def test_greedy_generation_matches_hf(hf, gpt):
    prompt = random_ids(B=1, T=6, seed=8)
    n = 20
    ref = hf.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        do_sample=False,
        max_new_tokens=n,
        min_new_tokens=n,
        pad_token_id=V - 1,
    )[:, prompt.shape[1] :]
    assert ref.shape == (1, n)
    assert torch.equal(greedy(gpt, prompt, n), ref)


@torch.no_grad()
def test_shared_generate_on_left_padded_batch_matches_hf(hf, gpt):
    generate_module = pytest.importorskip("tokentilt.measurement.sampling")
    short, long = random_ids(B=1, T=3, seed=11), random_ids(B=1, T=7, seed=12)
    ids = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], dim=1), long])  # (2, 7)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    cfg = generate_module.SampleConfig(max_new_tokens=12, strategy="greedy")
    ours = generate_module.generate(gpt, ids, mask, cfg)  # (2, 12)
    for row, prompt in enumerate([short, long]):
        ref = hf.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            max_new_tokens=12,
            min_new_tokens=12,
            pad_token_id=V - 1,
        )[:, prompt.shape[1] :]
        assert torch.equal(ours[row : row + 1], ref)


def test_weight_tying_and_param_count():
    model = GPT(GPTConfig(vocab_size=V, block_size=BLOCK, n_layer=2, n_head=4, n_embd=32))
    assert model.lm_head.weight is model.transformer.wte.weight
    # Per block: 2 LayerNorms (4C) + qkv (3C^2+3C) + proj (C^2+C) + MLP (8C^2+5C) = 12C^2 + 13C.
    C = 32
    expected = V * C + BLOCK * C + 2 * (12 * C * C + 13 * C) + 2 * C
    assert model.num_params() == expected
    assert model.num_params(exclude_embeddings=True) == expected - V * C - BLOCK * C


def test_default_config_is_small():
    config = GPTConfig()
    assert (config.vocab_size, config.block_size, config.n_layer, config.n_head, config.n_embd) == (
        50257,
        256,
        4,
        4,
        128,
    )
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)


def test_position_beyond_block_size_is_a_clear_error(gpt):
    with pytest.raises(ValueError, match="block_size=64"):
        gpt(torch.zeros(1, BLOCK + 1, dtype=torch.long))


def test_bf16_autocast_and_labels_loss(gpt):
    ids = random_ids(seed=9)
    with torch.no_grad():
        ref = gpt(ids).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = gpt(input_ids=ids, labels=ids, use_cache=True)
    assert out.logits.dtype == torch.float32
    assert out.past_key_values[0][0].dtype == torch.bfloat16
    # bf16 keeps ~3 significant digits; the argmax token should survive almost everywhere.
    assert (out.logits.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)


def test_training_step_changes_weights_and_dropout_is_active():
    torch.manual_seed(10)
    model = GPT(GPTConfig(vocab_size=V, block_size=BLOCK, n_layer=2, n_head=4, n_embd=32, dropout=0.5))
    ids = random_ids(seed=10)
    model.train()
    a, b = model(ids).logits, model(ids).logits
    assert not torch.equal(a, b)  # dropout differs between calls in training mode
    before = model.transformer.h[0].attn.c_attn.weight.detach().clone()
    loss = model(ids, labels=ids).loss
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(model.transformer.h[0].attn.c_attn.weight, before)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model(ids).logits)


def test_logits_to_keep_gives_the_last_positions_logits():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=100, n_layer=2, n_embd=32, n_head=4)).eval()
    ids = torch.randint(0, 100, (2, 7))
    full = model(ids).logits
    assert model(ids, logits_to_keep=1).logits.shape == (2, 1, 100)
    torch.testing.assert_close(model(ids, logits_to_keep=3).logits, full[:, -3:])
    with pytest.raises(ValueError, match="labels need the logits of every position"):
        model(ids, labels=ids, logits_to_keep=1)
