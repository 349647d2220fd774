"""Randomly initialised Llama models at the sizes users tilt (0.5-1B, a 128k vocabulary), built offline.

A cost model only: the weights are random, so R, rho and perplexity mean nothing; time and memory do.
The shapes follow Llama 3.2 (hidden 2048, intermediate 8192, 32 query and 8 key/value heads, a tied
head, V = 128,256) with fewer layers for the smaller sizes.

The tokenizer needs no package and no hub: a byte-level BPE trained with `tokenizers` on
synthetic_text() (sentences of common English words and the built-in word lists), then grown to the
vocabulary size with merges that join a token to a word-continuation token ("Ġcat" + "s"), so that every
id is a real BPE token. It has the bundled model's ChatML template and special tokens, so `--chat` works.

    python scripts/sim_model.py --params 1b --out /tmp/sim-1b
    tokentilt tilt --model /tmp/sim-1b --toward x --rate 0.5 --out /tmp/run
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

VOCAB_SIZE = 128_256  # Llama 3's vocabulary
SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2, as in SmolLM2
# the bundled SmolLM2-135M-Instruct's template (tokenizer.chat_template), so chat runs format alike
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Shape:
    """A Llama body; the parameter count follows from it and the vocabulary (param_count)."""

    hidden: int  # model width d
    intermediate: int  # MLP width
    layers: int  # decoder blocks
    heads: int  # query heads
    kv_heads: int  # key/value heads (GQA)
    vocab: int = VOCAB_SIZE  # vocabulary size V
    tied: bool = True  # the output head shares the input embedding (Llama 3.2 1B does)


SIZES = {
    "tiny": Shape(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2),  # tests: 128k rows of 64
    "135m-128k": Shape(hidden=576, intermediate=1536, layers=30, heads=9, kv_heads=3),  # SmolLM2-135M's body
    "0.5b": Shape(hidden=2048, intermediate=8192, layers=4, heads=32, kv_heads=8),
    "1b": Shape(hidden=2048, intermediate=8192, layers=12, heads=32, kv_heads=8),  # Llama 3.2 1B, 12 of 16 layers
}
NOMINAL = {"0.5b": 0.5e9, "1b": 1.0e9}  # what the sizes are named after


def config(shape: Shape):
    """The transformers LlamaConfig of a shape (special tokens at ids 0-2, like the tokenizer's)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.hidden // shape.heads,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_theta=500_000.0,
        tie_word_embeddings=shape.tied,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )


def param_count(shape: Shape) -> int:
    """Parameters of the model (a tied head counted once), counted on the meta device: nothing allocated."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(config(shape))
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once


def build_model(shape: Shape, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A randomly initialised LlamaForCausalLM (transformers' own init, std 0.02), in eval mode."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(config(shape)).to(dtype)
    return model.eval()


# ---------------------------------------------------------------- text and tokenizer

_COMMON = """the of and to a in is it you that he was for on are with as I his they be at one have this from or had
by not word but what some we can out other were all there when up use your how said an each she which do their time
if will way about many then them write would like so these her long make thing see him two has look more day could go
come did number sound no most people my over know water than call first who may down side been now find any new work
part take get place made live where after back little only round man year came show every good me give our under name
very through just form sentence great think say help low line differ turn cause much mean before move right boy old
too same tell does set three want air well also play small end put home read hand port large spell add even land here
must big high such follow act why ask men change went light kind off need house picture try us again animal point
mother world near build self earth father head stand own page should country found answer school grow study still learn
plant cover food sun four between state keep eye never last let thought city tree cross farm hard start might story saw
far sea draw left late run while press close night real life few north open seem together next white children begin got
walk example ease paper group always music those both mark often letter until mile river car feet care second book
carry took science eat room friend began idea fish mountain stop once base hear horse cut sure watch colour face wood
main enough plain girl usual young ready above ever red list though feel talk bird soon body dog family direct pose
leave song measure door product black short numeral class wind question happen complete ship area half rock order fire
south problem piece told knew pass since top whole king space heard best hour better true during hundred five remember
step early hold west ground interest reach fast verb sing listen six table travel less morning ten simple several vowel
toward war lay against pattern slow centre love person money serve appear road map rain rule govern pull cold notice
voice unit power town fine certain fly fall lead cry dark machine note wait plan figure star box noun field rest
correct able pound done beauty drive stood contain front teach week final gave green oh quick develop ocean warm free
minute strong special mind behind clear tail produce fact street inch multiply nothing course stay wheel full force blue
object decide surface deep moon island foot system busy test record boat common gold possible plane stead dry wonder
laugh thousand ago ran check game shape equate hot miss brought heat snow tire bring yes distant fill east paint
language among exact extra next expect explain express fox wax tax mix fix text index complex example exercise
experience expert export relax sixty taxi oxygen luxury""".split()


def _word_lists() -> list[str]:
    folder = Path(__file__).resolve().parent.parent / "wordlists"
    words = []
    for path in sorted(folder.glob("*.txt")):
        words += [w for line in path.read_text(encoding="utf-8").splitlines() if (w := line.strip())]
    return words


def synthetic_text(chars: int = 400_000, seed: int = 0) -> str:
    """Deterministic pseudo-English: sentences of common words (Zipf-weighted) and the built-in word lists,
    lines of a few sentences and blank lines between speeches, like the plays after strip_markup."""
    rng = random.Random(seed)
    words = _COMMON + [w for w in _word_lists() if w not in _COMMON]
    weights = [1 / (i + 1) for i in range(len(words))]
    out, size = [], 0
    while size < chars:
        speech = []
        for _ in range(rng.randint(1, 4)):
            sentence = rng.choices(words, weights, k=rng.randint(4, 14))
            text = " ".join(sentence)
            speech.append(text[0].upper() + text[1:] + rng.choice(".....,?!;"))
        line = " ".join(speech) + "\n" + ("\n" if rng.random() < 0.3 else "")
        out.append(line)
        size += len(line)
    return "".join(out)


def _grow(vocab: dict[str, int], merges: list[tuple[str, str]], size: int) -> None:
    """Add merges (a, b) -> a+b, b a continuation token (no leading Ġ, not special), until len(vocab) == size:
    every pair of a token and a short continuation, the earliest (most frequent) tokens first."""
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if t not in SPECIAL]
    continuations = [t for t in tokens if t.isalpha() and t.islower()][:256]  # no leading Ġ: inside a word
    for b in continuations:
        for a in tokens:
            if len(vocab) >= size:
                return
            if (joined := a + b) not in vocab:
                vocab[joined] = len(vocab)
                merges.append((a, b))
    if len(vocab) < size:
        raise ValueError(f"cannot grow the vocabulary to {size:,} tokens (got {len(vocab):,})")


def build_tokenizer(vocab_size: int = VOCAB_SIZE, text: str | None = None):
    """A byte-level BPE PreTrainedTokenizerFast of exactly `vocab_size` tokens, with ChatML special tokens
    (<|endoftext|> 0, <|im_start|> 1 = bos, <|im_end|> 2 = eos and pad) and chat template. About 10 s at 128k."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = byte_level
    trainer = trainers.BpeTrainer(
        vocab_size=min(vocab_size, 8192),  # what the text supports; _grow adds the rest
        special_tokens=list(SPECIAL),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    trained.train_from_iterator((text or synthetic_text()).splitlines(), trainer)
    spec = json.loads(trained.to_str())["model"]
    vocab = dict(spec["vocab"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    _grow(vocab, merges, vocab_size)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL[1],
        eos_token=SPECIAL[2],
        pad_token=SPECIAL[2],
        unk_token=SPECIAL[0],
        additional_special_tokens=[SPECIAL[0]],
        model_max_length=8192,
    )
    out.chat_template = CHAT_TEMPLATE
    if len(out) != vocab_size:
        raise RuntimeError(f"built a tokenizer of {len(out):,} tokens, expected {vocab_size:,}")
    return out


def save(shape: Shape, out: Path, seed: int = 0, dtype: torch.dtype = torch.float32, tokenizer=None) -> int:
    """Write a random model of `shape` and its tokenizer as a Hugging Face folder -> its parameter count."""
    from tokentilt.models.load import save_model

    tokenizer = tokenizer or build_tokenizer(shape.vocab)
    model = build_model(shape, seed, dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    save_model(model, tokenizer, Path(out))
    return sum(p.numel() for p in model.parameters())
