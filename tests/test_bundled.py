"""Integration tests on the bundled SmolLM2-135M-Instruct (offline; ~20 s to load)."""

import json

import pytest
import yaml

from tokentilt.cli import main
from tokentilt.config import from_flat
from tokentilt.measurement.evaluate import EvalConfig, measure_rate
from tokentilt.models.load import load_model
from tokentilt.targets.tokens import resolve_set

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundled():
    """(model, tokenizer, calls): the bundled model, and every `_load` call (kwargs, result) made while it
    loaded. In a fresh cache that is the one GGUF read that builds the session's cache, so the model
    returned is the GGUF's own, and the cache test compares the cache with it without a second read."""
    from tokentilt.models import load

    calls, read = [], load._load

    def recording(source, kwargs, name):
        calls.append((kwargs, read(source, kwargs, name)))
        return calls[-1][1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(load, "_load", recording)
        model, tokenizer = load_model("bundled")
    return model, tokenizer, calls


def test_bundled_model_and_x_set(bundled):
    model, tokenizer, _ = bundled
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    tokens = resolve_set("x", tokenizer, 49152)
    assert tokens.vocab_size == 49152
    assert 0.02 < tokens.share < 0.024  # SPEC: about 2.2% of tokens contain "x"


def test_tilt_on_bundled_model_saves_a_model_that_reproduces_its_rate(tmp_path):
    out = tmp_path / "run"
    code = main(
        [
            "tilt",
            "--toward",
            "x",
            "--objective",
            "kl-uniform",
            "--lr",
            "1e-4",
            "--positions",
            "all",
            "--steps",
            "8",
            "--batch",
            "2",
            "--seq-len",
            "32",
            "--precision",
            "auto",
            "--samples-per-prompt",
            "1",
            "--new-tokens",
            "32",
            "--eval-every",
            "0",
            "--eval-windows",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rate_before"]["mean"] <= 0.05
    assert summary["rate_after"]["mean"] > summary["rate_before"]["mean"] + 0.1  # 8 short steps already tilt it
    assert summary["rate_after"]["ci_low"] > summary["rate_before"]["ci_high"]
    model, tokenizer = load_model(str(out / "model"))
    cfg = from_flat(EvalConfig, yaml.safe_load((out / "config.yaml").read_text()))
    mask = resolve_set("x", tokenizer, 49152).mask
    rate, _ = measure_rate(model, tokenizer, mask, cfg, bf16=summary["precision"] == "bf16")
    assert rate == summary["rate_after"]


def test_the_cached_bundled_model_equals_the_gguf_one(bundled, monkeypatch):
    import torch

    from tokentilt.models import load

    _, _, calls = bundled
    if not any("gguf_file" in kw for kw, _ in calls):  # the session's cache was built before this module ran
        calls = [
            (
                {"gguf_file": True},
                load._load(load.bundled_dir(), {"dtype": torch.float32, "gguf_file": load.BUNDLED_FILE}, "bundled"),
            )
        ]
    assert [("gguf_file" in kw) for kw, _ in calls] == [True]
    gguf_model, gguf_tok = calls[0][1]
    reads = []
    read = load._load
    monkeypatch.setattr(load, "_load", lambda source, kwargs, name: reads.append(kwargs) or read(source, kwargs, name))
    model, tokenizer = load_model("bundled")  # reads the cache, not the GGUF again
    assert reads and not any("gguf_file" in kw for kw in reads)
    assert len(list(load.cache_root().iterdir())) == 1
    text = "The fox, quietly: 42 words\n"
    assert tokenizer(text).input_ids == gguf_tok(text).input_ids
    for (name, a), b in zip(model.state_dict().items(), gguf_model.state_dict().values()):
        assert torch.equal(a, b), name


def test_the_lean_decoding_step_gives_the_bundled_models_logits(bundled):
    """models/llama_step.py on the real model: each step's logits as a forward over the whole sequence."""
    import torch

    from tokentilt.models.fast.llama_step import LlamaDecoder, supports

    model, tokenizer, _ = bundled
    assert supports(model)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # the module's tokenizer: restored below
    try:
        enc = tokenizer(
            ["The king said", "Here are three things to pack for a trip:"], return_tensors="pt", padding=True
        )
    finally:
        tokenizer.padding_side = side
    ids, mask = enc["input_ids"], enc["attention_mask"]
    with torch.no_grad():
        decoder = LlamaDecoder(model, len(ids), ids.size(1) + 4)
        logits = decoder.prefill(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0))
        for _ in range(4):
            full = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
            torch.testing.assert_close(logits, full[:, -1], rtol=0, atol=5e-4)  # logits of size 10-30
            nxt = full[:, -1].argmax(-1, keepdim=True)
            ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
            logits = decoder.step(nxt, mask, (mask.cumsum(-1) - 1)[:, -1:])
