import math

import pytest
import torch

from tokentilt.targets.tokens import (
    SelectorError,
    alpha_beta_target,
    bias_for_mass,
    resolve,
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
