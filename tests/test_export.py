"""GGUF export: tiny Llama and GPT-2 models written by tokentilt and read back by transformers' GGUF
loader (an independent reader) give the same weights and logits; the tokenizer round-trips."""

import json
import re

import numpy as np
import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from tokentilt.cli import main
from tokentilt.course.gpt2_tokenizer import gpt2_tokenizer
from tokentilt.export.gguf import export_gguf, logit_bias_map, modelfile, permute_rotary

TEXT = "The quick brown fox: 42 jumps <|endoftext|> over ünïcode"


def small_tokenizer():
    """A byte-level BPE tokenizer of ~300 tokens: the weight round trips need a tokenizer in the file, and
    transformers' GGUF reader spends most of a load parsing GPT-2's 50,257 tokens and merges."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        [TEXT * 4, "hello world, the lazy dog"], vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"]
    )
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>")


def tiny_llama(vocab_size=50257):
    torch.manual_seed(0)  # an untied head, as a head-rows tilt leaves it
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            tie_word_embeddings=False,
        )
    ).eval()


def tiny_gpt2(vocab_size=50257):  # n_positions 1024: transformers' GGUF loader reads GPT-2's n_ctx, not n_positions
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_positions=1024, n_embd=64, n_layer=2, n_head=4)).eval()


def read_back(folder, name):
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()


def test_the_rotary_permutation_is_what_transformers_reverses():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    w = np.arange(8 * 16 * 3, dtype=np.float32).reshape(8 * 16, 3)
    back = LlamaTensorProcessor(config={})._reverse_permute_weights(permute_rotary(w, 8), 8, 8)
    assert np.array_equal(back, w) and not np.array_equal(permute_rotary(w, 8), w)


@pytest.mark.slow
@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_f32_reads_back_bitwise_and_16_bit_types_within_their_rounding(build, tmp_path):
    tokenizer = small_tokenizer()
    model = build(len(tokenizer))
    ids = torch.tensor([tokenizer.encode(TEXT)])
    with torch.no_grad():
        want = model(input_ids=ids).logits
    export_gguf(model, tokenizer, tmp_path / "m-f32.gguf", "f32")
    back = read_back(tmp_path, "m-f32.gguf")
    for name, w in model.state_dict().items():
        if name in back.state_dict() and not name.endswith(".attn.bias"):
            assert torch.equal(back.state_dict()[name], w), name
    with torch.no_grad():
        assert torch.allclose(back(input_ids=ids).logits, want, atol=1e-5)
    for kind, dtype in (("f16", torch.float16), ("bf16", torch.bfloat16)):
        export_gguf(model, tokenizer, tmp_path / f"m-{kind}.gguf", kind)
        back = read_back(tmp_path, f"m-{kind}.gguf")
        for name, w in model.state_dict().items():  # 2-D weights rounded once to the type; 1-D kept f32
            if name in back.state_dict() and not name.endswith(".attn.bias"):
                expected = w.to(dtype).float() if w.dim() == 2 else w
                assert torch.equal(back.state_dict()[name], expected), (kind, name)
    for kind, tol, size in (("q8_0", 0.05, 0.4), ("q4_0", 0.5, 0.25)):  # 8 and 4 bits in blocks of 32
        export_gguf(model, tokenizer, tmp_path / f"m-{kind}.gguf", kind)
        with torch.no_grad():
            got = read_back(tmp_path, f"m-{kind}.gguf")(input_ids=ids).logits
        assert (got - want).abs().max() < tol, kind
        assert (tmp_path / f"m-{kind}.gguf").stat().st_size < size * (tmp_path / "m-f32.gguf").stat().st_size, kind


def test_the_tokenizer_and_chat_template_round_trip(tmp_path):
    tokenizer = gpt2_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    export_gguf(tiny_llama(), tokenizer, tmp_path / "m.gguf", "f32")
    back = AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    assert back(TEXT).input_ids == tokenizer(TEXT).input_ids
    assert back.decode(tokenizer(TEXT).input_ids) == TEXT
    assert back.chat_template == tokenizer.chat_template


def test_logit_bias_map_is_the_set_at_b():
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[2, 7]] = True
    assert logit_bias_map(mask, 1.5) == {"2": 1.5, "7": 1.5}


@pytest.fixture
def llama_dir(tmp_path):
    folder = tmp_path / "model"
    tiny_llama().save_pretrained(folder)
    gpt2_tokenizer().save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_export_cli_writes_gguf_modelfile_and_logit_bias_and_eval_reads_the_gguf(llama_dir, tmp_path, capsys):
    out = tmp_path / "m.q8_0.gguf"
    assert (
        main(
            [
                "export",
                str(llama_dir),
                "--gguf",
                str(out),
                "--type",
                "q8_0",
                "--logit-bias",
                str(tmp_path / "b.json"),
                "--toward",
                "x",
                "--bias",
                "2.5",
            ]
        )
        == 0
    )
    assert out.is_file() and not out.with_name(out.name + ".partial").exists()
    assert (tmp_path / "m.q8_0.Modelfile").read_text().startswith("FROM ./m.q8_0.gguf")
    bias = json.loads((tmp_path / "b.json").read_text())
    texts = gpt2_tokenizer().batch_decode([[int(i)] for i in bias])
    assert set(bias.values()) == {2.5} and all("x" in t.lower() for t in texts) and len(bias) > 900
    report = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                "--model",
                str(out),
                "--reference",
                str(llama_dir),
                "--toward",
                "x",
                "--samples-per-prompt",
                "1",
                "--new-tokens",
                "4",
                "--eval-windows",
                "2",
                "--eval-seq-len",
                "16",
                "--out",
                str(report),
            ]
        )
        == 0
    )
    row = json.loads(report.read_text())["rows"][0]
    assert row["drift"] < 1e-3  # q8_0 of the same weights: close to the folder's distribution


@pytest.mark.parametrize(
    "argv, message",
    [
        (lambda d, t: ["export", str(t / "nothing"), "--gguf", str(t / "o.gguf")], "model folder not found"),
        (lambda d, t: ["export", str(d), "--gguf", str(t / "o.txt")], "--gguf must end in .gguf"),
        (lambda d, t: ["export", str(d), "--gguf", "/sys/tokentilt-test/o.gguf"], "does not exist"),
        (lambda d, t: ["export", str(d)], "nothing to export"),
        (lambda d, t: ["export", str(d), "--logit-bias", str(t / "b.json")], "needs --toward SELECTOR and --bias"),
        (
            lambda d, t: ["export", str(d), "--logit-bias", str(t / "b.json"), "--toward", "phrase:red", "--bias", "1"],
            "takes a token selector",
        ),
        (lambda d, t: ["export", str(d), "--gguf", str(t / "o.gguf"), "--type", "q4_k"], "invalid choice: 'q4_k'"),
    ],
)
def test_bad_export_input_is_one_line_exit_2(llama_dir, tmp_path, capsys, argv, message):
    code = main(argv(llama_dir, tmp_path))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o.gguf").exists()


def test_an_architecture_without_a_mapping_is_one_line_exit_2(tmp_path, capsys):
    from transformers import OPTConfig, OPTForCausalLM

    folder = tmp_path / "opt"
    OPTForCausalLM(
        OPTConfig(
            vocab_size=50257,
            hidden_size=16,
            num_hidden_layers=1,
            ffn_dim=32,
            num_attention_heads=2,
            word_embed_proj_dim=16,
            max_position_embeddings=64,
        )
    ).save_pretrained(folder)
    gpt2_tokenizer().save_pretrained(folder)
    code = main(["export", str(folder), "--gguf", str(tmp_path / "o.gguf")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no GGUF mapping for architecture 'opt'" in err[0]
    assert not list(tmp_path.glob("o.gguf*"))


def test_llama_cpp_reads_the_export_with_the_same_tokens_and_logits(tmp_path):
    """llama.cpp itself (llama-cpp-python, built from source with the bundled model's package) loads the
    f32 file: the same token ids for a text, and logits within 1e-3 of the Hugging Face model's."""
    llama_cpp = pytest.importorskip("llama_cpp")
    model, tokenizer = tiny_llama(), gpt2_tokenizer()
    export_gguf(model, tokenizer, tmp_path / "m.gguf", "f32")
    llm = llama_cpp.Llama(model_path=str(tmp_path / "m.gguf"), n_ctx=64, logits_all=True, verbose=False, n_threads=2)
    text = "The quick brown fox jumps"
    ids = tokenizer.encode(text)
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids
    llm.eval(ids)
    with torch.no_grad():
        want = model(input_ids=torch.tensor([ids])).logits[0].numpy()
    assert np.abs(np.array(llm.scores[: len(ids)]) - want).max() < 1e-3


def go_render(template: str, system: str, prompt: str) -> str:
    """ollama's one-turn template as the Modelfile writes it: {{ if .System }}...{{ end }}, {{ .System }},
    {{ .Prompt }} (the only Go-template forms it uses)."""
    text = re.sub(
        r"\{\{ if \.System \}\}(.*?)\{\{ end \}\}", lambda m: m.group(1) if system else "", template, flags=re.S
    )
    return text.replace("{{ .System }}", system).replace("{{ .Prompt }}", prompt)


@pytest.mark.parametrize("template", ["default-system", "plain"])
def test_the_modelfile_formats_a_request_as_the_chat_template_does(template):
    """ollama, given the Modelfile's TEMPLATE and SYSTEM, writes the same prompt as the tokenizer's chat template,
    with and without a system message of the user's; sampling is pure (ollama's own defaults turned off)."""
    from test_chat import chat_tokenizer
    from tokentilt.models.simulated import CHAT_TEMPLATE

    tok = chat_tokenizer()
    if template == "default-system":
        tok.chat_template = CHAT_TEMPLATE  # the bundled model's: a system turn of its own when none is given
    card = modelfile("m.gguf", tok)
    body = re.search(r'TEMPLATE """(.*?)"""', card, flags=re.S).group(1)
    found = re.search(r'SYSTEM """(.*?)"""', card, flags=re.S)
    default = found.group(1) if found else ""
    assert bool(default) == (template == "default-system")
    for system in ("", "Answer in French."):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": "Hi!"}]
        expected = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert go_render(body, system or default, "Hi!") == expected
    for line in ("PARAMETER temperature 1", "PARAMETER top_k 0", "PARAMETER top_p 1", "PARAMETER repeat_penalty 1"):
        assert line in card.splitlines()
    assert 'PARAMETER stop "<|im_end|>"' in card
    assert modelfile("m.gguf", gpt2_tokenizer()).splitlines()[-1] == 'TEMPLATE """{{ .Prompt }}"""'  # no chat template
