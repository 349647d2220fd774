import math
from collections import Counter

import pytest
import torch
from transformers import LogitsProcessor

from tokentilt.measurement.evaluate import rates_of
from tokentilt.measurement.sampling import SampleConfig, Samples, make_processors
from tokentilt.targets.target import Target, as_target
from tokentilt.targets.tokens import (
    SelectorError,
    SetBias,
    TokenSet,
    alpha_beta_target,
    bias_for_mass,
    bias_logits,
    resolve,
    sample_rates,
    select,
    tilted_log_probs,
    tilted_set_mass,
    token_texts,
    uniform_target,
)

TEXTS = ["<eos>", "a", " box", "X", "Ġx", "▁y", "tax", " Axe", "hello", " hello", "yes"]


def ids(mask):
    return mask.nonzero().flatten().tolist()


def test_contains_is_case_insensitive_by_default():
    assert ids(select("contains:x", TEXTS)) == [2, 3, 4, 6, 7]
    assert ids(select("x", TEXTS)) == [2, 3, 4, 6, 7]  # bare text means contains


def test_contains_case_sensitive():
    assert ids(select("contains:X:case", TEXTS)) == [3]
    assert ids(select("contains:x:case", TEXTS)) == [2, 4, 6, 7]


def test_token_texts_decodes_every_id(char_tokenizer):
    texts = token_texts(char_tokenizer)
    assert len(texts) == 64 and texts[1] == "a" and texts[27] == " a"


def test_real_gpt2_style_tokenizer_never_exposes_markers():
    from transformers import GPT2TokenizerFast

    vocab = {"Ġ": 0, "x": 1, "Ġx": 2, "a": 3, "<|endoftext|>": 4}
    tok = GPT2TokenizerFast(vocab=vocab, merges=[("Ġ", "x")], unk_token="<|endoftext|>")
    texts = token_texts(tok)
    assert texts[2] == " x"
    assert ids(select("contains:Ġ", texts)) == []
    assert ids(select("regex:^ x$", texts)) == [2]


def test_regex_and_bad_regex():
    assert ids(select("regex:^ ?[Hh]ello$", TEXTS)) == [8, 9]
    with pytest.raises(SelectorError, match="bad regular expression"):
        select("regex:(", TEXTS)


def test_words_file_adds_leading_space_variants(tmp_path):
    f = tmp_path / "words.txt"
    f.write_text("hello\nbox\n")
    assert ids(select(f"words:{f}", TEXTS)) == [2, 8, 9]
    with pytest.raises(SelectorError, match="words file not found"):
        select(f"words:{tmp_path / 'nope.txt'}", TEXTS)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(SelectorError, match="empty"):
        select(f"words:{tmp_path / 'empty.txt'}", TEXTS)


def test_ids_selector_and_range_check():
    assert ids(select("ids:1, 3,10", TEXTS)) == [1, 3, 10]
    with pytest.raises(SelectorError, match="out of range"):
        select("ids:11", TEXTS)
    with pytest.raises(SelectorError, match="integers"):
        select("ids:a,b", TEXTS)


def test_not_and_combinations():
    x = select("contains:x", TEXTS)
    assert torch.equal(select("not:contains:x", TEXTS), ~x)
    assert ids(select("contains:x & regex:^ ", TEXTS)) == [2, 7]
    assert ids(select("contains:x:case | contains:hello", TEXTS)) == [2, 4, 6, 7, 8, 9]


def test_unknown_kind_and_empty_and_full_sets():
    with pytest.raises(SelectorError, match="unknown selector kind 'foo'"):
        select("foo:bar", TEXTS)
    with pytest.raises(SelectorError, match="matches no token"):
        resolve("contains:zzz", TEXTS)
    with pytest.raises(SelectorError, match="matches every token"):
        resolve("regex:.*", TEXTS)
    with pytest.raises(SelectorError, match="empty selector"):
        select("  ", TEXTS)


def test_token_set_reports_size_and_share():
    ts = resolve("contains:x", TEXTS)
    assert (ts.size, ts.vocab_size) == (5, 11)
    assert ts.share == pytest.approx(5 / 11)
    assert "5 of 11" in ts.describe()


def test_uniform_and_alpha_beta_targets():
    mask = torch.tensor([True, False, False, True])
    assert torch.allclose(uniform_target(mask), torch.tensor([0.5, 0, 0, 0.5]))
    q = alpha_beta_target(mask, alpha=3.0, beta=1.0)
    assert torch.allclose(q, torch.tensor([3, 1, 1, 3]) / 8.0)
    with pytest.raises(SelectorError):
        alpha_beta_target(mask, alpha=0.0, beta=0.0)


def test_tilt_is_a_logit_bias_and_bias_for_mass_inverts_it():
    logits = torch.tensor([[1.0, 0.0, -1.0, 2.0]])
    mask = torch.tensor([True, False, False, False])
    expected = torch.log_softmax(logits + torch.tensor([2.0, 0, 0, 0]), -1)
    assert torch.allclose(tilted_log_probs(logits, mask, 2.0), expected)
    p = torch.softmax(logits, -1)[0, 0].item()
    b = bias_for_mass(p, 0.5)
    assert tilted_set_mass(logits, mask, b).item() == pytest.approx(0.5, abs=1e-6)
    assert b == pytest.approx(math.log(1 / 1) - math.log(p / (1 - p)))


@pytest.mark.parametrize(
    "spec,message",
    [
        ("foo:bar", "unknown selector kind"),
        ("regex:[", "bad regular"),
        ("words:/no/such/file", "not found"),
        ("ids:x", "integers"),
        ("not:foo:1", "unknown selector kind"),
    ],
)
def test_check_syntax_without_a_vocabulary(spec, message):
    from tokentilt.targets.tokens import check_syntax

    with pytest.raises(SelectorError, match=message):
        check_syntax(spec)
    check_syntax("ids:5,6")  # in range or not is only known with a vocabulary
    check_syntax("contains:x & not:regex:^ ")


# ---------------------------------------------------------------- the Target type


def target_members() -> set[str]:
    """The Protocol's members: its annotated attributes, properties and methods."""
    own = {n for n, v in vars(Target).items() if not n.startswith("_") and (callable(v) or isinstance(v, property))}
    return own | set(Target.__annotations__)


def test_the_protocol_has_the_members_every_consumer_needs():
    assert target_members() == {
        "selector",
        "vocab_size",
        "size",
        "share",
        "mask",
        "describe",
        "tilt",
        "processor",
        "rates",
        "summary",
    }


def phrase_set():
    from test_phrases import toy_set

    return toy_set(["red", "Wonderland"])


@pytest.mark.parametrize("kind", ["tokens", "phrases"])
def test_both_kinds_satisfy_the_protocol(kind):
    target = resolve("contains:x", TEXTS) if kind == "tokens" else phrase_set()
    assert isinstance(target, Target)
    for name in target_members():
        assert hasattr(target, name), name
    for name in ("describe", "tilt", "processor", "rates", "summary"):
        assert callable(getattr(target, name)), name
    assert isinstance(target.selector, str) and isinstance(target.describe(), str)
    assert target.vocab_size == len(TEXTS) if kind == "tokens" else target.vocab_size > 0
    assert target.size > 0 and 0 < target.share < 1
    ids = torch.zeros(2, 3, dtype=torch.long)
    logits = torch.randn(2, 3, target.vocab_size, dtype=torch.bfloat16)
    tilted = target.tilt(logits, ids, 1.5)  # (B, T, V)
    assert tilted.shape == (2, 3, target.vocab_size) and tilted.dtype == torch.float32
    assert isinstance(target.processor(1.5), LogitsProcessor)
    if kind == "tokens":
        assert torch.equal(target.mask, select("contains:x", TEXTS))
    else:
        assert target.mask is None  # membership depends on context


def hand_samples(tokens, lengths=None, special=()):
    n = len(tokens)
    return Samples(
        ["p"] * n, torch.tensor(tokens), [""] * n, None if lengths is None else torch.tensor(lengths), None, special
    )


def test_a_mask_becomes_a_token_set_that_tilts_samples_and_counts_as_before():
    mask = torch.tensor([True, False, True, False])  # (V,) with V = 4
    target = as_target(mask)
    assert isinstance(target, TokenSet) and target.selector == "<mask>" and target.mask is mask
    assert target.size == 2 and target.vocab_size == 4 and target.share == 0.5

    logits = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)  # (B, T, V)
    ids = torch.zeros(2, 3, dtype=torch.long)
    assert torch.equal(target.tilt(logits, ids, 1.5), bias_logits(logits, mask, 1.5))
    assert torch.equal(target.tilt(logits, ids, 1.5), logits + torch.tensor([1.5, 0.0, 1.5, 0.0]))

    scores = torch.zeros(2, 4)
    proc = target.processor(2.5)
    assert isinstance(proc, SetBias)
    assert torch.equal(proc(None, scores), torch.tensor([[2.5, 0.0, 2.5, 0.0]] * 2))
    assert torch.equal(proc(None, scores), SetBias(mask, 2.5)(None, scores))
    assert isinstance(make_processors(SampleConfig(strategy="greedy"), mask, 2.5)[0], SetBias)

    # R by hand: tokens 0 and 2 are in the set
    plain = hand_samples([[0, 1, 2, 3], [2, 2, 1, 0]])
    assert target.rates(plain).tolist() == [0.5, 0.75]
    assert torch.equal(target.rates(plain), sample_rates(plain.tokens, mask))
    # chat: only each reply's first `lengths` tokens count, and a special id (2) never does
    chat = hand_samples([[0, 1, 2, 3], [2, 2, 1, 0], [0, 0, 0, 0]], lengths=[2, 3, 0], special=(2, 9))
    rates = target.rates(chat)
    assert rates[:2].tolist() == [0.5, 0.0] and math.isnan(rates[2])
    assert torch.allclose(rates_of(mask, chat), rates, equal_nan=True)
    assert mask.tolist() == [True, False, True, False]  # the caller's mask is left as it was
    assert target.summary(None, 1.5) == {}


def test_a_phrase_sets_rates_are_its_word_counting(monkeypatch):
    phrases = phrase_set()
    texts = ["red red", "the Wonderland is red", "no entry here", "..."]
    samples = Samples(["p"] * 4, torch.zeros(4, 1, dtype=torch.long), texts)
    rates = phrases.rates(samples)
    by_hand = [1.0, 0.5, 0.0]  # words: 2 of 2, 2 of 4, 0 of 3; the last text has no word
    assert rates[:3].tolist() == by_hand and math.isnan(rates[3])
    for r, text in zip(rates[:3].tolist(), texts):
        hits, words = phrases.count(text)
        assert r == hits / words
    assert torch.allclose(rates_of(phrases, samples), rates, equal_nan=True)
    assert torch.allclose(phrases.rates(texts), rates, equal_nan=True)  # a list of texts counts the same

    from test_phrases import ID, TOK

    ids = torch.tensor([[ID[" the"], ID[" Wonder"], ID["land"]]])
    logits = torch.randn(1, 3, len(TOK))
    assert torch.equal(phrases.tilt(logits, ids, 2.0), phrases.adjust(logits, ids, 2.0))

    import tokentilt.targets.phrases as phrases_module

    reference = Counter({"the": 5, "wonder": 2, "reddish": 1})
    monkeypatch.setattr(phrases_module, "plays_reference", lambda: reference)
    assert phrases.summary(TOK, 2.0) == {
        "word_rule": phrases_module.WORD.pattern,
        "keep_case": False,
        "entries": phrases.tokenizations(TOK),
        "collateral": phrases.collateral(TOK, reference, 2.0),
    }


def test_as_target_returns_a_target_unchanged():
    tokens = resolve("contains:x", TEXTS)
    phrases = phrase_set()
    assert as_target(tokens) is tokens and as_target(phrases) is phrases


@pytest.mark.parametrize(
    "bad, message",
    [
        ([True, False], "a target must be a TokenSet, a PhraseSet or a \\(V,\\) bool mask, got list"),
        (torch.tensor([1.0, 0.0]), "1-D bool tensor of shape \\(V,\\), got dtype torch.float32"),
        (torch.tensor([1, 0]), "got dtype torch.int64"),
        (torch.zeros(2, 3, dtype=torch.bool), "got dtype torch.bool and shape \\(2, 3\\)"),
    ],
)
def test_as_target_refuses_what_is_no_target(bad, message):
    with pytest.raises(TypeError, match=message):
        as_target(bad)
