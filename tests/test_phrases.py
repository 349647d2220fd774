"""Words and phrases: entries, the word rule, variants, the trie's states and biases, all checked
against values worked out by hand on a toy tokenizer whose tokenizations are known."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, SequenceBiasLogitsProcessor

from conftest import tiny_llama
from tokentilt.objectives.losses import ObjectiveContext, phrase_distill
from tokentilt.targets.phrases import (
    PhraseBias,
    PhraseSet,
    completion_probs,
    parse,
    reference_words,
    resolve_phrases,
    token_word_ends,
    tokenize_entries,
    words_of,
)
from tokentilt.targets.tokens import SelectorError, check_syntax, resolve, select
from tokentilt.training import head_rows


class ToyTokenizer:
    """Greedy longest-match over a small vocabulary, so every tokenization below is known by hand."""

    VOCAB = [
        "<eos>",
        " Wonder",
        " wonder",
        "land",
        "W",
        "onder",
        " the",
        "the",
        " The",
        " in",
        " red",
        "red",
        " R",
        "ED",
        " W",
        "ON",
        "DER",
        "LAND",
        " L",
        "and",
        " a",
        "\n",
        " ",
        "It",
        " was",
        "e",
        "d",
        "r",
        "o",
        "n",
        "l",
        "a",
        "w",
        "i",
        "t",
        "h",
        "s",
        "T",
        "E",
        "R",
        "D",
        "N",
        "O",
        "A",
        "L",
        "I",
        "'",
        ".",
        ",",
    ]
    VOCAB += sorted(set('abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-!?"()') - set(VOCAB))

    def __init__(self):
        self.ids = {t: i for i, t in enumerate(self.VOCAB)}
        self.eos_token_id = 0

    def __len__(self):
        return len(self.VOCAB)

    def encode(self, text, add_special_tokens=False):
        out, i = [], 0
        while i < len(text):
            piece = max((t for t in self.VOCAB[1:] if text.startswith(t, i)), key=len)
            out.append(self.ids[piece])
            i += len(piece)
        return out

    def decode(self, ids):
        return "".join(self.VOCAB[i] for i in ids)

    def __call__(self, text, **kwargs):
        return {"input_ids": self.encode(text)}


TOK = ToyTokenizer()
ID = TOK.ids


def toy_set(entries, keep_case=False, pis=None):
    variants = tokenize_entries(TOK, entries, keep_case, len(TOK))
    phrases = PhraseSet("phrases:toy", entries, keep_case, variants, len(TOK), token_word_ends(TOK, len(TOK)))
    for path, pi in (pis or {}).items():  # set π by hand on the node reached by `path`
        node = phrases.roots[path[0] == "bare"]
        for token in path[1:]:
            node = node.children[ID[token]]
        node.pi = pi
    return phrases


# ---------------------------------------------------------------- entries and the word rule


def test_word_rule_cuts_letters_and_digits_with_inner_apostrophes():
    assert words_of("Don't stop—well-known A_b 42nd, 'quoted'.") == [
        "Don't",
        "stop",
        "well",
        "known",
        "A",
        "b",
        "42nd",
        "quoted",
    ]


def test_parse_reads_files_skipping_blank_and_comment_lines(tmp_path):
    path = tmp_path / "w.txt"
    path.write_text("# my list\nWonderland\n\n  crimson  \nAlice in Wonderland\nWonderland\n")
    assert parse(f"phrases:{path}") == (["Wonderland", "crimson", "Alice in Wonderland"], False)
    assert parse(f"phrases:{path}:case")[1] is True
    assert parse("phrase:Alice in Wonderland") == (["Alice in Wonderland"], False)
    check_syntax(f"phrases:{path}")  # the CLI's fast check accepts it


@pytest.mark.parametrize(
    "content, message",
    [
        ("\n\n", "phrases file is empty"),
        ("red\n   \nblue\n", "line 2: the entry is only spaces"),
        ("red\n---\n", "holds no word"),
        (b"\xff\xfe red\n", "not UTF-8"),
        ("a\0b\n", "looks binary"),
    ],
)
def test_bad_lists_are_selector_errors(tmp_path, content, message):
    path = tmp_path / "w.txt"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(SelectorError, match=message):
        parse(f"phrases:{path}")


def test_bad_phrase_selectors():
    for spec, message in [
        ("phrase:", "needs a word"),
        ("phrase:   ", "holds no word"),
        ("phrases:/nonexistent/w.txt", "not found"),
        ("phrases:", "needs a file name"),
    ]:
        with pytest.raises(SelectorError, match=message):
            parse(spec)
    with pytest.raises(SelectorError, match="stands alone"):
        select("phrase:red | x", ["a", "red"])


def test_count_is_per_occurrence_longest_first_and_case_folded():
    phrases = toy_set(["Wonderland", "Alice in Wonderland", "red"])
    # words: Alice in Wonderland and the RED wonderland red = 8; the phrase counts once, not as 2 entries
    assert phrases.count("Alice in Wonderland and the RED wonderland, red.") == (4, 8)
    assert phrases.count("") == (0, 0)
    kept = toy_set(["Wonderland"], keep_case=True)
    assert kept.count("Wonderland wonderland WONDERLAND") == (1, 3)
    rates = phrases.rates(["red red", "no entry here", "..."])
    assert rates[:2].tolist() == [1.0, 0.0] and math.isnan(rates[2])


def test_words_inside_other_words_do_not_count():
    phrases = toy_set(["red"])
    assert phrases.count("redder bored red's red") == (1, 4)  # only the last: "red's" is one word by the rule


# ---------------------------------------------------------------- variants and the trie


def test_every_entry_of_several_tokens_is_kept_with_its_variants():
    phrases = toy_set(["Wonderland", "red"])
    got = {(v.text, v.bare): [TOK.VOCAB[i] for i in v.ids] for v in phrases.variants}
    assert got[(" Wonderland", False)] == [" Wonder", "land"]  # two tokens: kept, not dropped
    assert got[("Wonderland", True)] == ["W", "onder", "land"]
    assert got[(" wonderland", False)] == [" wonder", "land"]
    assert got[(" WONDERLAND", False)] == [" W", "ON", "DER", "LAND"]
    assert got[(" red", False)] == [" red"] and got[("red", True)] == ["red"]
    assert got[(" RED", False)] == [" R", "ED"]
    assert {v.entry for v in phrases.variants} == {0, 1}
    assert phrases.rates([" the Wonderland"]).tolist() == [0.5]


def test_trie_states_follow_partial_matches_and_word_starts():
    phrases = toy_set(["Wonderland"])
    seq = [ID[" the"], ID[" Wonder"], ID["land"], ID["W"], ID["onder"], ID["land"]]
    states = phrases.states(seq)
    wonder = phrases.roots[0].children[ID[" Wonder"]]
    assert states[0] == (frozenset(), False)  # " the" ends inside a word
    assert states[1] == (frozenset({wonder}), False)
    assert states[2] == (frozenset(), False)  # completed: nothing partial is left
    # "W" after "land" is inside a word, so the bare variant may not start there
    assert states[3] == (frozenset(), False)
    after_newline = phrases.states([ID["\n"], ID["W"]])
    assert after_newline[1][0] == frozenset({phrases.roots[1].children[ID["W"]]})


def test_bias_terms_match_the_hand_formula():
    b, pi = 2.0, 0.25
    phrases = toy_set(["Wonderland", "red"], keep_case=True, pis={("space", " Wonder"): pi})
    tok, val = phrases.bias_terms(frozenset(), True, b)
    terms = dict(zip(tok.tolist(), val.tolist()))
    credit = math.log(1 + pi * (math.exp(b) - 1))
    assert terms[ID[" Wonder"]] == pytest.approx(credit)  # starting: the value of the partial match
    assert terms[ID[" red"]] == pytest.approx(b) and terms[ID["red"]] == pytest.approx(b)  # one token: b
    assert ID["land"] not in terms  # "land" alone completes nothing
    inside = phrases.states([ID[" Wonder"]])[0]
    tok, val = phrases.bias_terms(*inside, b)
    terms = dict(zip(tok.tolist(), val.tolist()))
    assert terms[ID["land"]] == pytest.approx(b)  # completing after " Wonder": b
    assert ID["red"] not in terms  # " Wonder" ends inside a word: no bare start
    # a hard ban: completing tokens removed, starting ones weighted by 1 - π
    tok, val = phrases.bias_terms(inside[0], inside[1], -math.inf)
    assert dict(zip(tok.tolist(), val.tolist()))[ID["land"]] == -math.inf
    tok, val = phrases.bias_terms(frozenset(), True, -math.inf)
    assert dict(zip(tok.tolist(), val.tolist()))[ID[" Wonder"]] == pytest.approx(math.log(1 - pi))


def test_adjust_and_the_processor_agree_position_by_position():
    phrases = toy_set(["Wonderland", "red"], pis={("space", " Wonder"): 0.3})
    ids = torch.tensor([[ID[" the"], ID[" Wonder"], ID["land"], ID[" a"], ID[" red"]]])
    logits = torch.randn(1, 5, len(TOK))
    adjusted = phrases.adjust(logits, ids, 1.5)
    proc = PhraseBias(phrases, 1.5)
    for t in range(5):
        assert torch.allclose(adjusted[0, t], proc(ids[:, : t + 1], logits[:, t])[0])
    assert adjusted[0, 1, ID["land"]] - logits[0, 1, ID["land"]] == pytest.approx(1.5)  # after " Wonder"
    assert adjusted[0, 0, ID["land"]] == logits[0, 0, ID["land"]]  # after " the": untouched


def test_the_processor_carries_each_rows_state_only_where_the_row_grew_by_one_token():
    """One processor over generation steps, then over rows that do not extend the ones before (a new batch,
    a row one token longer with another prefix): always what a fresh processor computes from the whole row."""
    phrases = toy_set(["Wonderland", "red"], pis={("space", " Wonder"): 0.3})
    rows = [[ID[" the"], ID[" Wonder"], ID["land"], ID[" Wonder"]], [ID[" a"], ID[" Wonder"], ID[" red"], ID[" the"]]]
    proc, logits = PhraseBias(phrases, 1.5), torch.randn(2, len(TOK))
    calls = [[r[:t] for r in rows] for t in range(1, 5)]  # generation: every row one token longer
    calls += [[[ID[" Wonder"]], [ID[" a"]]], [[ID[" a"], ID[" Wonder"]], [ID[" Wonder"], ID["land"]]]]
    calls += [[[ID[" red"], ID[" red"], ID[" Wonder"]], [ID[" Wonder"], ID["land"], ID[" a"]]]]  # prefix changed
    for ids in calls:
        ids = torch.tensor(ids)
        assert torch.equal(proc(ids, logits), PhraseBias(phrases, 1.5)(ids, logits))


def test_row_offsets_are_the_decode_time_changes_on_the_entries_rows():
    phrases = toy_set(["Wonderland", "red"], pis={("space", " Wonder"): 0.3})
    ids = torch.tensor([[ID[" the"], ID[" Wonder"], ID["land"], ID[" a"], ID[" red"]]])
    rows = phrases.row_ids()
    assert set(rows.tolist()) == {i for v in phrases.variants for i in v.ids}
    offsets = phrases.row_offsets([ids[:, :2], ids], 1.5, rows)  # two batches, in order: (2 + 5, K)
    change = phrases.adjust(torch.zeros(1, 5, len(TOK)), ids, 1.5)[0]  # (5, V)
    assert torch.equal(offsets[2:], change[:, rows]) and torch.equal(offsets[:2], change[:2, rows])
    outside = torch.ones(len(TOK), dtype=torch.bool)
    outside[rows] = False
    assert not change[:, outside].any()  # the decode-time tilt changes no other token
    land, wonder = rows.tolist().index(ID["land"]), rows.tolist().index(ID[" Wonder"])
    assert offsets[3, land] == pytest.approx(1.5) and offsets[2, land] == 0  # after " Wonder" only
    assert offsets[2, wonder] == pytest.approx(math.log1p(0.3 * math.expm1(1.5)))  # the start's credit


def test_head_rows_carry_a_phrase_tilt_that_depends_on_context():
    """The entries' rows of the head, fitted per position, raise "land" after " Wonder" and not elsewhere:
    the fitted model is close to the decode-time tilt on held-out rows, and no other row moves."""
    model, reference = tiny_llama(len(TOK)), tiny_llama(len(TOK))
    phrases = toy_set(["Wonderland", "red"], pis={("space", " Wonder"): 0.3})
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, len(TOK), (24, 16), generator=g)
    ids[:, 3::4] = ID[" Wonder"]
    train_ids, held_out = ids[:20], ids[20:]
    sizes = []  # the contexts a phrase tilt asks for: the kl fit's, whatever fit was asked for
    contexts = lambda b, size: sizes.append(size) or list(train_ids.split(4))  # noqa: E731
    tilt = head_rows.HeadRowsTilt(model, phrases, contexts, steps=300, lr=3e-2)
    assert tilt.fit == "kl" and tilt.sign == 1.0 and tilt.trained_rows == len(phrases.row_ids())

    def gap(m):  # mean KL(decode-time tilt of the reference || m) per held-out position
        with torch.no_grad():
            target = F.log_softmax(phrases.adjust(reference(input_ids=held_out).logits, held_out, 2.0), -1)
            return (target.exp() * (target - F.log_softmax(m(input_ids=held_out).logits, -1))).sum(-1).mean().item()

    start = gap(model)
    tilt.train(2.0, progress=False)
    assert sizes == [head_rows.KL_CONTEXTS]
    assert gap(model) < 0.5 * start
    with torch.no_grad():
        lift = (model(input_ids=held_out).logits - reference(input_ids=held_out).logits)[..., ID["land"]]
    after_wonder = held_out == ID[" Wonder"]
    assert lift[after_wonder].mean() > lift[~after_wonder].mean() + 1.0
    changed = (model.lm_head.weight != reference.lm_head.weight).any(-1).nonzero().squeeze(1)
    assert set(changed.tolist()) <= set(phrases.row_ids().tolist())


@pytest.mark.parametrize("reply", [False, True])
def test_the_one_pass_perplexity_at_b_is_the_decode_time_perplexity(reply):
    """evaluate.phrase_perplexity_at (one pass, then the entries' rows only) against held_out_costs, which runs
    the model and tilts the full logits at each b; on plain windows and on chat reply windows (some tokens
    counted)."""
    from tokentilt.measurement.evaluate import held_out_costs, phrase_perplexity_at
    from tokentilt.measurement.metrics import ReplyWindows

    model = tiny_llama(len(TOK))
    phrases = toy_set(["Wonderland", "red", "the"], pis={("space", " Wonder"): 0.3})
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, len(TOK), (5, 12), generator=g)
    ids[:, 2::3] = ID[" Wonder"]
    ids[:, 3::5] = ID["land"]
    windows = ReplyWindows(ids, torch.rand(5, 12, generator=g) > 0.4) if reply else ids
    at = phrase_perplexity_at(model, phrases, windows)
    for b in (0.0, -1.5, -6.0, 2.0):
        assert at(b) == pytest.approx(held_out_costs(model, phrases, windows, bias=b)["ppl"], rel=1e-5)
    assert at(-6.0) > at(0.0)  # the entries occur in these windows: banning them costs


def test_with_no_completion_credit_it_is_hugging_faces_sequence_bias():
    """π = 0 and only spaced variants: each token completing a variant after its prefix gets b and
    nothing else moves, which is what transformers' SequenceBiasLogitsProcessor does."""
    phrases = toy_set(["Wonderland", "red"], keep_case=True)
    phrases.variants = [v for v in phrases.variants if not v.bare]
    phrases.roots = (phrases.roots[0], type(phrases.roots[1])())
    hf = SequenceBiasLogitsProcessor(sequence_bias=[[list(k), v] for k, v in phrases.sequence_bias(2.0).items()])
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, len(TOK), (6, 9), generator=g)
    ids[0, -1], ids[1, -1] = ID[" Wonder"], ID[" the"]
    scores = torch.randn(6, len(TOK), generator=g)
    assert torch.allclose(PhraseBias(phrases, 2.0)(ids, scores), hf(ids, scores.clone()))
    # by hand: ' red' gets b = 2 after any context, 'land' only right after ' Wonder'; nothing else moves
    expected = scores.clone()
    expected[:, ID[" red"]] += 2.0
    expected[ids[:, -1] == ID[" Wonder"], ID["land"]] += 2.0
    assert (ids[:, -1] == ID[" Wonder"]).sum() == 1  # row 0 only: the random rows end elsewhere
    assert torch.allclose(PhraseBias(phrases, 2.0)(ids, scores.clone()), expected)


def test_phrase_distill_is_kl_to_the_adjusted_reference():
    phrases = toy_set(["Wonderland"], pis={("space", " Wonder"): 0.4})
    ids = torch.tensor([[ID[" the"], ID[" Wonder"], ID["land"]], [ID[" Wonder"], ID[" a"], ID[" Wonder"]]])
    g = torch.Generator().manual_seed(1)
    ref, logits = torch.randn(2, 3, len(TOK), generator=g), torch.randn(2, 3, len(TOK), generator=g)
    ctx = ObjectiveContext(mask=None, bias=2.0, phrases=phrases, ref_logits=ref)
    target = F.log_softmax(phrases.adjust(ref, ids, 2.0), -1)
    expected = F.kl_div(F.log_softmax(logits, -1), target, log_target=True, reduction="sum") / 6
    assert phrase_distill(logits, ids, ctx).item() == pytest.approx(expected.item(), rel=1e-5)


def test_completion_probs_are_the_models_own_probabilities():
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(TOK),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=4,
        )
    )
    phrases = toy_set(["Wonderland"], keep_case=True)
    completion_probs(model, TOK, phrases)
    node = phrases.roots[0].children[ID[" Wonder"]]
    expected = []
    for anchor in ("It was", "I saw the", "They said"):  # SPACE_ANCHORS, computed one sequence at a time
        ids = torch.tensor([TOK.encode(anchor) + [ID[" Wonder"], ID["land"]]])
        with torch.no_grad():
            logp = model(input_ids=ids).logits.log_softmax(-1)
        expected.append(logp[0, -2, ID["land"]].exp().item())
    assert node.pi == pytest.approx(sum(expected) / 3, rel=1e-4)


def test_collateral_names_words_sharing_a_biased_token():
    phrases = toy_set(["Wonderland"], keep_case=True, pis={("space", " Wonder"): 0.5})
    rows = phrases.collateral(TOK, reference_words("wonder Wonder the Wonderland land"), 2.0)
    assert [r["word"] for r in rows] == ["Wonder"]  # " Wonder" alone moves; "land" alone does not
    assert rows[0]["log_odds_shift"] == pytest.approx(math.log(1 + 0.5 * (math.exp(2) - 1)), abs=1e-3)


def test_entry_report_counts_each_entry_per_1000_words_and_flags_those_that_rose():
    phrases = toy_set(["Wonderland", "Alice in Wonderland", "red"], pis={("space", " Wonder"): 0.5})
    before = ["Alice in Wonderland was red.", "red red and the wonder"]  # 5 + 5 words
    after = ["Wonderland and the wonder land", "It was the Wonder"]  # 5 + 4 words
    report = phrases.entry_report(TOK, before, after, -2.0)
    assert (report["words_before"], report["words_after"]) == (10, 9)
    rows = {r["entry"]: r for r in report["entries"]}
    # counted by hand: the phrase once (not also as "Wonderland"), "red" three times before; "Wonderland" once after
    assert (rows["Alice in Wonderland"]["before"], rows["Alice in Wonderland"]["after"]) == (1, 0)
    assert (rows["red"]["before"], rows["red"]["after"]) == (3, 0)
    assert (rows["Wonderland"]["before"], rows["Wonderland"]["after"]) == (0, 1)
    assert rows["red"]["before_per_1000"] == pytest.approx(300.0)
    assert rows["Wonderland"]["after_per_1000"] == pytest.approx(1000 / 9, abs=1e-3)
    assert report["rose"] == ["Wonderland"]  # the replacement the texts found
    assert report["per_1000_before"] == pytest.approx(400.0) and report["per_1000_after"] == pytest.approx(
        1000 / 9, abs=1e-3
    )
    # collateral: the word " Wonder" shares the entries' first token; counted as spelled, so only after
    words = {c["word"]: c for c in report["collateral"]}
    assert "Wonder" in words and words["Wonder"]["after_per_1000"] == pytest.approx(1000 / 9, abs=1e-3)
    assert words["Wonder"]["before_per_1000"] == 0.0


def test_a_list_covering_most_words_is_refused():
    with pytest.raises(SelectorError, match="nearly every word"):
        resolve_phrases("phrase:the", TOK, len(TOK), reference=reference_words("the the the red"))


# ---------------------------------------------------------------- words: no longer drops silently


def test_words_selector_names_the_entries_it_leaves_out(tmp_path):
    path = tmp_path / "w.txt"
    path.write_text("red\nWonderland\n")
    texts = TOK.VOCAB
    tokens = resolve(f"words:{path}", texts)
    assert tokens.dropped == ["Wonderland"] and "NOT in the set: 'Wonderland'" in tokens.describe()
    path.write_text("Wonderland\ncrimson\n")
    with pytest.raises(SelectorError, match="use phrases:"):
        resolve(f"words:{path}", texts)


def test_the_sequence_bias_method_is_hugging_faces_processor_at_every_position():
    phrases = toy_set(["Wonderland", "red"], pis={("space", " Wonder"): 0.3}).with_method("sequence-bias")
    ids = torch.tensor([[ID[" the"], ID[" Wonder"], ID["land"], ID[" red"]]])
    logits = torch.randn(1, 4, len(TOK))
    hf = SequenceBiasLogitsProcessor(sequence_bias=[[list(k), v] for k, v in phrases.sequence_bias(2.0).items()])
    adjusted = phrases.adjust(logits, ids, 2.0)
    for t in range(4):
        assert torch.allclose(adjusted[0, t], hf(ids[:, : t + 1], logits[:, t].clone())[0])
    # by hand: the one-token variants ' red' and 'red' get b = 2 at every position; 'land' completes
    # ' Wonder' after position 1 (' the' ' Wonder' 'land' ' red'); nothing else moves
    expected = logits.clone()
    expected[0, :, [ID[" red"], ID["red"]]] += 2.0
    expected[0, 1, ID["land"]] += 2.0
    assert torch.allclose(adjusted, expected)
    assert adjusted[0, 0, ID[" Wonder"]] == logits[0, 0, ID[" Wonder"]]  # no credit for starting
    with pytest.raises(ValueError, match="phrase method"):
        phrases.with_method("bogus")


def test_generate_with_a_two_token_phrase_bias_writes_the_phrase(tiny_model_dir, capsys):
    """On the tiny random GPT-2, b = 50 on phrase:verily (' ver' 'ily'): the start credit makes ' ver'
    near certain, the completion bias then makes 'ily' near certain, so every word is 'verily'."""
    from tokentilt.cli import main

    code = main(
        [
            "generate",
            "--model",
            str(tiny_model_dir),
            "--prompt",
            "Hello",
            "--samples",
            "2",
            "--new-tokens",
            "6",
            "--toward",
            "phrase:verily",
            "--bias",
            "50",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "hello verily verily verily" in out.lower() and "R = 1.000" in out  # any case counts


def sentencepiece_tokenizer():
    """A tiny Llama-style tokenizer: SentencePiece's Unigram over '▁'-marked pieces (Metaspace), built in-process."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = ["<unk>", "▁", "\n", "▁It", "▁was", "▁the", "▁Wonder", "▁wonder", "land", "onder", "▁red"]
    pieces += list("WwONDERLAND") + list("abcdefghijklmnopqrstuvwxyz")
    pieces = list(dict.fromkeys(pieces))
    vocab = [(p, -1.0 if len(p) > 1 else -8.0) for p in pieces]  # whole pieces beat letter by letter
    core = Tokenizer(models.Unigram(vocab, unk_id=0))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>")


def test_sentencepiece_pieces_are_taken_as_the_tokenizer_uses_them():
    tok = sentencepiece_tokenizer()
    variants = tokenize_entries(tok, ["Wonderland"], False, len(tok))
    got = {(v.text, v.bare): tok.convert_ids_to_tokens(v.ids) for v in variants}
    # after a word the entry is '▁'-marked ("It was Wonderland"); at a line start it is bare letters
    assert got[(" Wonderland", False)] == ["▁Wonder", "land"]
    assert got[(" wonderland", False)] == ["▁wonder", "land"]
    assert got[("Wonderland", True)] == ["W", "onder", "land"]
    phrases = PhraseSet("phrases:toy", ["Wonderland"], False, variants, len(tok), token_word_ends(tok, len(tok)))
    ids = tok.convert_tokens_to_ids(["▁It", "▁Wonder"])
    state = phrases.states(ids)[1]
    tokens, values = phrases.bias_terms(*state, 2.0)
    terms = dict(zip(tok.convert_ids_to_tokens(tokens.tolist()), values.tolist()))
    assert terms.pop("land") == 2.0  # completes the entry after "▁Wonder"
    assert {"▁Wonder", "▁wonder", "▁"} <= set(terms) and set(terms.values()) == {0.0}  # starts: π unmeasured = 0
    text = tok.decode(tok.encode("It was the Wonderland", add_special_tokens=False))
    assert text == "It was the Wonderland" and phrases.rates([text]).tolist() == [0.25]  # 1 of 4 words
