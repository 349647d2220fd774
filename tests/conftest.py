"""Shared fixtures: tiny models built in-process, so unit tests never need a download."""

import importlib
import math
import os
import pkgutil
import re
import signal
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import tokentilt
import tokentilt.training.rate
from tokentilt.data import corpus


class CharTokenizer:
    """A 64-token toy tokenizer with a real `decode`, enough to exercise selectors."""

    def __init__(self):
        self.vocab = ["<eos>"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
        self.vocab += [" " + chr(c) for c in range(ord("a"), ord("z") + 1)]
        self.vocab += ["X", "xx", "Ġx", "▁y", ".", ",", "?", "!", "ab", "\n", "Xy"]
        self.vocab = self.vocab[:64]
        self.eos_token_id = 0
        self.vocab_size = len(self.vocab)

    def __len__(self):
        return len(self.vocab)

    def decode(self, ids):
        return "".join(self.vocab[i] for i in ids)


@pytest.fixture
def char_tokenizer():
    return CharTokenizer()


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs two workers on two cores), each worker and every process it
    starts computes on one thread: two workers of two threads each on two cores run several times
    slower than one of two.

    Every tokentilt module is imported here, before any test: the CLI imports its jobs lazily, and a
    module first imported while a test has monkeypatched a name it imports (`from x import load_model`)
    would keep the fake for every later test of the worker, whichever files it happens to get."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
    for module in pkgutil.walk_packages(tokentilt.__path__, "tokentilt."):
        if module.name != "tokentilt.__main__":
            importlib.import_module(module.name)


@pytest.fixture(scope="session", autouse=True)
def own_model_cache(tmp_path_factory):
    """The de-quantised bundled model is cached under a session folder, not the user's ~/.cache;
    the CLI subprocesses that tests start inherit it."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture(scope="session", autouse=True)
def ctrl_c_raises():
    """Tests send themselves SIGINT as a terminal's Ctrl-C would. A pytest started in the background
    by a non-interactive shell (`cmd &`) inherits SIGINT ignored, and Python then never installs its
    handler; put it in place, so that the interruption tests test the product, not the shell."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def tiny_gpt2(vocab_size=64, seed=0, **overrides):
    """A tiny random GPT-2 in eval mode; overrides: other GPT2Config fields (n_layer=1, ...)."""
    torch.manual_seed(seed)
    fields = dict(n_positions=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, **{**fields, **overrides})).eval()


def tiny_llama(vocab_size=64, seed=0, tie=True):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture
def gpt2_model():
    return tiny_gpt2()


@pytest.fixture
def llama_model():
    return tiny_llama()


# the audit's tests: the real GPT-2 tokenizer, its token texts, and a tiny GPT-2 of its 50,257 tokens (per module)
@pytest.fixture(scope="module")
def tokenizer():
    from tokentilt.course.gpt2_tokenizer import gpt2_tokenizer

    return gpt2_tokenizer()


@pytest.fixture(scope="module")
def texts(tokenizer):
    from tokentilt.targets.tokens import token_texts

    return token_texts(tokenizer)


@pytest.fixture(scope="module")
def base():
    return tiny_gpt2(vocab_size=50257, seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random GPT-2 with the real GPT-2 tokenizer, saved as a Hugging Face folder."""
    from tokentilt.course.gpt2_tokenizer import gpt2_tokenizer

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=50257,
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    gpt2_tokenizer().save_pretrained(folder)
    return folder


TEXT = "The quick brown fox jumps over the lazy dog, and the box of wax is next to the axe. " * 30


@pytest.fixture
def eval_file(tmp_path, monkeypatch):
    path = tmp_path / "eval.txt"
    path.write_text("Held-out words, never trained on. " * 20)
    monkeypatch.setattr(tokentilt.data.corpus, "train_tokens", lambda tok: corpus.tokenize(tok, TEXT))
    return path


def tilt_argv(tiny_model_dir, eval_file, out, *extra):
    return [
        "tilt",
        "--model",
        str(tiny_model_dir),
        "--toward",
        "x",
        "--objective",
        "kl-uniform",
        "--precision",
        "fp32",
        "--steps",
        "2",
        "--batch",
        "2",
        "--seq-len",
        "16",
        "--lr",
        "1e-3",
        "--eval-every",
        "0",
        "--samples-per-prompt",
        "1",
        "--half-width",
        "0",  # exactly that: what these tests count (tests/test_sample_until.py samples until known)
        "--new-tokens",
        "8",
        "--eval-text",
        str(eval_file),
        "--eval-windows",
        "2",
        "--eval-seq-len",
        "16",
        "--out",
        str(out),
        *extra,
    ]


def hand_ppl(model_dir, eval_file, bias: float = 0.0) -> float:
    """Held-out perplexity of a saved model decoded with logit bias b on the 'x' tokens, by hand: the same two
    16-token windows the run uses (the first and last of the eval text), log_softmax(z + b*M), next-token NLL."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    mask = torch.tensor(["x" in t.lower() for t in tokenizer.batch_decode([[i] for i in range(len(tokenizer))])])
    ids = torch.tensor(tokenizer(Path(eval_file).read_text(), add_special_tokens=False)["input_ids"])
    windows = ids[: len(ids) // 16 * 16].view(-1, 16)[[0, -1]]  # (2, 16)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=windows).logits.double() + bias * mask.double(), -1)  # (2, 16, V)
    nll = -logp[:, :-1].gather(-1, windows[:, 1:, None]).squeeze(-1)  # (2, 15)
    return math.exp(float(nll.mean()))


def word_rate(text: str, entries: list[str]) -> float | None:
    """R of a phrase list recounted from a text by rules of our own, written apart from phrases.py: the share of
    words (runs of letters and digits, apostrophes inside) that begin an entry's occurrence, matched greedily in
    the order given, lower-cased. None for a text with no word."""
    words = [w.lower() for w in re.findall(r"[^\W_]+(?:['’][^\W_]+)*", text)]
    keys = [entry.split() for entry in entries]
    hits, i = 0, 0
    while i < len(words):
        for key in keys:
            if words[i : i + len(key)] == key:
                hits, i = hits + 1, i + len(key) - 1
                break
        i += 1
    return hits / len(words) if words else None
