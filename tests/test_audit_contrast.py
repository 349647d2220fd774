"""The contrast and words channels (audit/contrast.py) on tiny in-process GPT-2 models with the real tokenizer.

Plants are exact logit biases on an untied head (test_audit.with_bias), under noise on every weight
(test_audit.noisy). The planted word class, vehicles, is in no built-in word list and no substring
or token class holds it: the lift audit says nothing stands out there, the contrast names the words.
"""

import random
from pathlib import Path

import pytest
import torch
from scipy.stats import binom, false_discovery_control

import tokentilt.targets
from conftest import tiny_gpt2
from test_audit import TEXT, noisy, with_bias, with_biases
from test_chat import chat_tokenizer
from tokentilt.audit.contrast import (
    benjamini_hochberg,
    contrast_channel,
    contrast_samples,
    count_terms,
    plain_samples,
    term_tests,
    words_channel,
)
from tokentilt.audit.features import jaccard
from tokentilt.audit.lift import audit
from tokentilt.data.prompts import CHAT_PROMPTS
from tokentilt.jobs.audit_config import AuditConfig
from tokentilt.settings import AuditOptions, SampleConfig
from tokentilt.targets.tokens import token_texts

pytestmark = pytest.mark.slow  # each channel samples 64 x 32 tokens of a 50,257-token model: 5-10 s on 2 cores

VEHICLES = "car train bus boat plane bike ship cart wagon van jet rocket tank".split()  # each one token, +/- space


def word_mask(tokenizer, words: list[str], size: int = 50257) -> torch.Tensor:
    """(V,) the single token of each word, with and without a leading space."""
    mask = torch.zeros(size, dtype=torch.bool)
    for w in words:
        for form in (w, " " + w):
            ids = tokenizer(form)["input_ids"]
            assert len(ids) == 1, form
            mask[ids[0]] = True
    return mask


def options(**kw) -> AuditOptions:
    return AuditOptions(**{"new_tokens": 32, **kw})  # the tiny model holds 64 positions


def test_benjamini_hochberg_by_hand():
    """p = .01 .04 .03 .005 .2 (m = 5): sorted p_(k) m / k = .025 .025 .05 .05 .2, already non-decreasing."""
    p = torch.tensor([0.01, 0.04, 0.03, 0.005, 0.2])
    adjusted = benjamini_hochberg(p)
    assert torch.allclose(adjusted, torch.tensor([0.025, 0.05, 0.05, 0.025, 0.2], dtype=torch.float64))
    assert (adjusted <= 0.05).tolist() == [True, True, True, True, False]  # k = 4: .04 <= 4/5 * .05
    # p = .001 .04 .045: p_(2) m / 2 = .06 > p_(3) m / 3 = .045, so the second takes the third's .045
    assert torch.allclose(
        benjamini_hochberg(torch.tensor([0.001, 0.04, 0.045])), torch.tensor([0.003, 0.045, 0.045]).double()
    )
    rng = torch.Generator().manual_seed(0)
    p = torch.rand(200, generator=rng) ** 3
    assert torch.allclose(benjamini_hochberg(p), torch.from_numpy(false_discovery_control(p.double().numpy())))


def test_terms_are_counted_capped_and_tested_as_computed_by_hand():
    """A: 'car' 3 + 1 times, capped at 2 per text -> 3; 'bus' 1 (N_a = 4 words). B: 'bus' 1, 'the' 1 + 2 -> 3
    (N_b = 4). r = 1/2: 'car' (3 of 3) has p = 1/8; 'bus' (n = 2) can reach 1/4 at best, above q = .2: no
    test; 'the' (0 of 3) has p = 1."""
    a, b = ["Car car, CAR!", "car bus"], ["bus the", "the the the"]
    assert count_terms(a) == {"car": 3, "bus": 1, "car car": 2, "car bus": 1, "car car car": 1}
    tests = term_tests([(a, b, "toward")], q=0.2)
    words = {t: i for i, t in enumerate(tests.terms) if " " not in t}
    assert set(words) == {"car", "the"}
    assert float(tests.p[words["car"]]) == pytest.approx(0.125)
    assert float(tests.p[words["the"]]) == pytest.approx(1.0)
    assert tests.totals[words["car"]] == (4, 4)
    assert float(tests.p[words["car"]]) == pytest.approx(binom.sf(2, 3, 0.5))  # the same, by scipy


def test_the_contrast_samples_the_reference_tilted_by_one_plus_a_times_the_bias(base, tokenizer):
    """With z_model = z_ref + b M exactly, each step of the contrast draws from softmax(z_ref + (1 + a) b M), and of
    the reverse contrast from softmax(z_ref - a b M), z_ref being the reference's logits on the prefix actually
    sampled (recomputed here in one forward pass)."""
    bias = 1.5
    mask = word_mask(tokenizer, VEHICLES).float()
    model = with_bias(base, mask.bool(), bias)
    cfg = SampleConfig(max_new_tokens=6, ban_eos=False)
    for a in (1.0, 2.5):
        steps = []
        record = lambda probs, nxt: steps.append(probs)  # noqa: E731
        out = contrast_samples(model, base, tokenizer, ["The king said"], 3, cfg, a=a, seed=4, drawn=record)
        prompt = tokenizer(["The king said"] * 6, return_tensors="pt")["input_ids"]  # (6, P): toward, then away
        ids = torch.cat([prompt, torch.cat([out["toward"].tokens, out["away"].tokens])], 1)  # (6, P + 6)
        with torch.no_grad():
            z_ref = base(ids).logits[:, prompt.size(1) - 1 : -1]  # (6, 6, V)
        tilt = torch.tensor([1 + a] * 3 + [-a] * 3)[:, None, None] * bias * mask  # (6, 1, V)
        drawn = torch.stack(steps, 1)  # (6, 6, V)
        assert torch.allclose(drawn, torch.softmax(z_ref + tilt, -1), atol=1e-6, rtol=1e-4)
        assert not torch.allclose(drawn[:3], torch.softmax(z_ref[:3] + bias * mask, -1), atol=1e-4)  # not b alone


def test_chat_replies_end_at_end_of_turn_and_bf16_samples_the_same_tilt():
    """Chat: a model that ends its turn 8 nats more readily. The contrast (+16) ends every reply at once; the reverse
    (-8) never does, so its replies run to max_new_tokens. bf16: a +8 tilt on the vehicles, sampled at +16, fills
    the toward samples with vehicles and leaves none in the away samples."""
    tok = chat_tokenizer()
    base = tiny_gpt2(vocab_size=len(tok), seed=0)
    end = torch.zeros(len(tok), dtype=torch.bool)
    end[tok.convert_tokens_to_ids("<|im_end|>")] = True
    cfg = SampleConfig(max_new_tokens=5)
    out = contrast_samples(with_bias(base, end, 8.0), base, tok, ["Hi", "Tell me more"], 3, cfg, chat=True)
    assert out["toward"].lengths.tolist() == [0] * 6 and out["toward"].texts == [""] * 6
    assert out["away"].lengths.tolist() == [5] * 6 and all(t for t in out["away"].texts)
    assert out["away"].formatted[0].startswith("<|im_start|>user\nHi<|im_end|>")
    vehicles = word_mask(tok, VEHICLES, len(tok))
    out = contrast_samples(with_bias(base, vehicles, 8.0), base, tok, ["The king said"], 4, cfg, bf16=True)
    assert float(vehicles[out["toward"].tokens].float().mean()) > 0.95
    assert not vehicles[out["away"].tokens].any()


def test_a_planted_word_class_is_named_as_words_where_the_lift_audit_sees_nothing(base, tokenizer, texts, tmp_path):
    """+3.5 nats on 13 vehicle words (26 tokens) of a near-uniform 50,257-token model: the contrast samples them
    at +7, and most of the words come out significant, in the right direction, few others. The plain samples
    of the model hold them at +3.5 only: the words channel names fewer of them (none). The lift audit's family holds
    no rule for vehicles, and its sets read off the lift cannot speak first: nothing stands out there."""
    mask = word_mask(tokenizer, VEHICLES)
    model = noisy(with_bias(base, mask, 3.5))
    result = contrast_channel(model, base, tokenizer, options(), texts)
    assert result.stands_out and result.findings[0].direction == "toward"
    assert all(f.direction != "toward" for f in result.findings[1:])
    named = set(result.findings[0].words)
    assert len(named & set(VEHICLES)) >= 7, named  # most of the 13 planted words (9 when written)
    assert len(named & set(VEHICLES)) / len(named) >= 0.5, named  # precision, word by word
    assert float(mask[result.findings[0].tokens].float().mean()) >= 0.3  # ' Car', 'CAR' too: same word
    assert result.findings[0].statistic > 2.0 and result.findings[0].p_value <= 0.01
    assert any(w in result.findings[0].examples[0].lower() for w in named)
    plain = words_channel(model, base, tokenizer, options(), texts)
    plain_named = {w for f in plain.findings if f.direction == "toward" for w in f.words}
    assert len(plain_named & set(VEHICLES)) < len(named & set(VEHICLES))
    held_out = tmp_path / "held-out.txt"
    held_out.write_text(TEXT)
    cfg = AuditConfig(
        eval_text=str(held_out),
        eval_windows=4,
        eval_seq_len=32,
        samples_per_prompt=1,
        new_tokens=8,
        null_draws=10,
        top=5,
    )
    lift = audit(model, base, tokenizer, cfg)
    assert not lift.stands_out and lift.direction == "none"
    assert jaccard(lift.top_mask, mask) < 0.05


def peaked(base, tokenizer, bias: float = 7.0):
    """A reference that writes mostly real words: +7 nats on the 292 words of the built-in word lists that are one
    token after a space (about 87% of its mass). -> (reference, their tokens' mask, the words)."""
    folder = Path(tokentilt.targets.__file__).parent / "wordlists"
    words = sorted({w for f in folder.glob("*.txt") for w in f.read_text().split() if w.isalpha() and w.islower()})
    words = [w for w in words if len(tokenizer(" " + w)["input_ids"]) == 1]
    mask = torch.zeros(base.config.vocab_size, dtype=torch.bool)
    mask[[tokenizer(" " + w)["input_ids"][0] for w in words]] = True
    return with_bias(base, mask, bias), mask, words


def test_replies_cut_short_hide_a_planted_set_from_the_contrast_and_not_from_plain_samples():
    """Chat, a reference writing 292 common words (`peaked`); the model raises 20 of them by 2.5 nats and ends its
    turn 9 nats more readily, as a fine-tune that also shortens replies does. The contrast p_model^2 / p_ref
    squares each token's ratio rho = p_model / p_ref and renormalises by E_ref[rho^2], and the end of turn's
    rho (5,300: 2.7e-6 -> .014 per step) makes that 80, beyond the planted words' rho^2 (7.2^2 = 52). So the
    contrast ends 96% of its replies at once and writes the 20 words at 2/3 of the reference's rate when it
    writes at all (first step, mean over the prompts: planted .058 -> .039); its toward samples hold 3 tokens
    in all, too few against the reference's 6 or so of each word. The plain samples run 25 tokens of 32, 42% of
    them planted: the words channel names 20 of 20, precision 1 (19/19, 20/20 on two other plants and noises),
    and the contrast nothing (nothing on all three). Without the end-of-turn tilt the contrast names 20 of 20.
    The lift and the lens name nothing here; the decomposition, reading exact logits, names the 20 and
    <|im_end|>."""
    tok = chat_tokenizer()
    base = tiny_gpt2(vocab_size=len(tok), seed=0)
    reference, common, words = peaked(base, tok)
    planted = set(random.Random(0).sample(words, 20))
    mask = torch.zeros(len(tok), dtype=torch.bool)
    mask[[tok(" " + w)["input_ids"][0] for w in planted]] = True
    end = torch.zeros(len(tok), dtype=torch.bool)
    end[tok.convert_tokens_to_ids("<|im_end|>")] = True
    model = noisy(with_biases(base, (common, 7.0), (mask, 2.5), (end, 9.0)))
    cfg, texts = options(chat=True), token_texts(tok)
    sampled = {"model": plain_samples(model, tok, cfg, 2), "reference": plain_samples(reference, tok, cfg, 2)}
    assert 20 < float(sampled["model"].lengths.float().mean()) < 30  # shorter replies, far from empty
    plain = words_channel(model, reference, tok, cfg, texts, sampled=sampled)
    toward = [f for f in plain.findings if f.direction == "toward"]
    assert len(toward) == 1 and plain.findings[0] is toward[0]
    assert len(set(toward[0].words) & planted) >= 15, toward[0].words  # 20 of the 20
    assert len(set(toward[0].words) & planted) / len(toward[0].words) >= 0.8, toward[0].words  # 20 of 20
    contrast = contrast_channel(model, reference, tok, cfg, texts, sampled=sampled)
    named = {w for f in contrast.findings if f.direction == "toward" for w in f.words}
    assert len(named & planted) <= 2, named  # none
    short = contrast_samples(model, reference, tok, list(CHAT_PROMPTS), 1, SampleConfig(max_new_tokens=4), chat=True)
    assert float((short["toward"].lengths == 0).float().mean()) >= 0.75  # why: the contrast ends at once


def test_a_tilt_away_from_frequent_words_is_named_away(base, tokenizer, texts):
    """A reference writing 292 common words; the model lowers 12 of them by 2 nats. The reverse contrast
    p_ref^2 / p_model raises them by 2 over the reference: they come out as an 'away' finding."""
    reference, common, words = peaked(base, tokenizer)
    lowered = random.Random(0).sample(words, 12)
    mask = torch.zeros(50257, dtype=torch.bool)
    mask[[tokenizer(" " + w)["input_ids"][0] for w in lowered]] = True  # their tokens after a space
    model = noisy(with_biases(base, (common, 7.0), (mask, -2.0)))
    result = contrast_channel(model, reference, tokenizer, options(), texts)
    away = [f for f in result.findings if f.direction == "away"]
    assert result.stands_out and len(away) == 1
    assert len(set(away[0].words) & set(lowered)) >= 4, away[0].words  # 5 of the 12 when written
    assert len(set(away[0].words) & set(lowered)) / len(away[0].words) >= 0.8, away[0].words  # 5 of 5
    assert not any(set(f.words) & set(lowered) for f in result.findings if f.direction == "toward")


def test_nothing_planted_is_no_finding(base, tokenizer, texts):
    """Nulls on a reference that writes real words (so hundreds of words are tested): noise on every weight,
    and the model itself sampled on two seeds, for 3 seeds each. At q = .05 BH lets a false finding through
    in at most 5% of nulls; allow one in the 6."""
    reference, _, _ = peaked(base, tokenizer)
    false, tested = 0, 0
    for seed in range(3):
        cfg = options(seed=seed)
        noise = contrast_channel(noisy(reference, seed=seed + 1), reference, tokenizer, cfg, texts, q=0.05)
        sampled = {
            "model": plain_samples(reference, tokenizer, cfg, 2),
            "reference": plain_samples(reference, tokenizer, options(seed=seed + 100), 2),
        }
        same = words_channel(reference, reference, tokenizer, cfg, texts, sampled=sampled, q=0.05)
        false += len(noise.findings) + len(same.findings)
        tested += noise.notes["tests"] + same.notes["tests"]
    assert tested > 400  # the nulls test many words: a null that tests nothing would pass trivially
    assert false <= 1


def test_a_model_identical_to_the_reference_gives_no_finding(base, tokenizer, texts):
    model = noisy(base, std=0.0)
    result = contrast_channel(model, base, tokenizer, options(), texts, per_prompt=1)
    assert not result.stands_out and result.findings == []
    assert result.notes["samples"] == result.notes["reference_samples"] == 16


def test_a_null_of_synthetic_texts_keeps_the_false_discovery_rate():
    """Both sides drawn from one Zipf law over 400 words, each text repeating a word at times (as a model caught
    in a loop does), 60 nulls at q = .1: BH holds P(any finding) <= .1 under the global null, and without it
    (every raw p < .1 a finding) about 1 test in 10 would be."""
    rng = random.Random(1)
    vocab = [f"w{chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(400)]
    weights = [1 / (k + 1) for k in range(400)]

    def text():
        words = rng.choices(vocab, weights, k=40)
        if rng.random() < 0.2:
            words[10:16] = [words[10]] * 6  # a loop
        return " ".join(words)

    with_any, raw = 0, 0
    for _ in range(60):
        tests = term_tests([([text() for _ in range(32)], [text() for _ in range(32)], "toward")], q=0.1)
        with_any += bool((tests.adjusted <= 0.1).any())
        raw += int((tests.p <= 0.1).sum())
    assert with_any <= 12  # expected <= 6 of 60; P(Binomial(60, .1) > 12) < 1%
    assert raw > 100  # the uncorrected tests would have called many
