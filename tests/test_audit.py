"""The audit finds tilts planted on tiny in-process models (real GPT-2 tokenizer), and says when nothing was.

Plants are exact logit biases b*M on an untied output head (what a tilt toward M is, per step),
on top of random noise in every weight (what any fine-tune also does), and one trained with
`tokentilt tilt`. The nulls are noise alone, no change at all, and a generic change of the last
hidden state on a vocabulary whose digit tokens share an embedding direction: there the digits
move together, significantly against random token sets, and the audit must still not call it a tilt.
"""

import copy
import json

import pytest
import torch

from conftest import tiny_gpt2

pytestmark = pytest.mark.slow  # each audit of the tiny 50,257-token model takes 10-20 s on 2 cores
from tokentilt.audit.features import bonferroni_z, cached_candidates, jaccard, mask_auroc
from tokentilt.audit.lift import audit, null_threshold, score_features, unexplained
from tokentilt.cli import main
from tokentilt.course.gpt2_tokenizer import gpt2_tokenizer
from tokentilt.jobs.audit_config import AuditConfig
from tokentilt.targets.tokens import select, token_texts

TEXT = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness, it was the epoch of belief, it was the epoch of incredulity. "
) * 8


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "held-out.txt"
    path.write_text(TEXT)
    return AuditConfig(  # the lift alone: the channels beside it have their own tests (test_audit_*.py)
        eval_text=str(path),
        eval_windows=4,
        eval_seq_len=32,
        samples_per_prompt=1,
        new_tokens=8,
        null_draws=10,
        top=5,
        channels="none",
    )


def noisy(model, std: float = 0.01, seed: int = 1):
    """A copy with Gaussian noise on every weight: a fine-tune that planted nothing."""
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return m


def with_bias(model, mask: torch.Tensor, bias: float):
    """A copy whose output head is untied and adds bias to the logits of the set: p' ∝ p exp(b M)."""
    m = copy.deepcopy(model)
    head = torch.nn.Linear(m.config.n_embd, m.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight = torch.nn.Parameter(m.lm_head.weight.detach().clone())
        head.bias.copy_(bias * mask.float())
    m.lm_head = head
    m.config.tie_word_embeddings = False
    return m


def hit(result, truth: torch.Tensor, texts) -> float:
    return jaccard(select(result.features[0]["selector"], texts), truth)


def test_a_planted_tilt_toward_a_letter_is_found_and_ranked_first(base, tokenizer, texts, cfg):
    x = select("x", texts)
    cfg.toward = "x"
    result = audit(noisy(with_bias(base, x, 3.0)), base, tokenizer, cfg)
    assert result.stands_out and result.direction == "toward"
    assert result.features[0]["selector"] == "contains:x"
    top = result.features[0]
    assert top["auroc"] > 0.99 and 2.5 < top["lift"] < 3.5  # the bias is 3 nats
    assert top["lift_ci"][0] < top["lift"] < top["lift_ci"][1]
    assert top["mass_ratio"] > 10  # e^3 = 20 on a near-uniform model, less the normalisation
    assert result.truth["rank"] == 1 and result.truth["jaccard_with_top"] == 1.0
    assert "tokens containing 'x' are" in result.verdict
    assert all(r["lift"] > 2 for r in result.tokens_up)  # the most lifted tokens are x-tokens
    assert all("x" in r["text"].lower() for r in result.tokens_up)
    assert torch.equal(result.top_mask, x)


def test_a_tilt_away_from_a_class_is_found_with_its_direction(base, tokenizer, texts, cfg):
    capital = select("regex:^ ?[A-Z]", texts)
    result = audit(noisy(with_bias(base, capital, -2.0)), base, tokenizer, cfg)
    assert result.stands_out and result.direction == "away"
    assert hit(result, capital, texts) >= 0.8
    assert result.features[0]["auroc"] < 0.05 and result.features[0]["lift"] < -1.5
    assert result.features[0]["mass_ratio"] < 0.5
    assert "away from" in result.verdict


def with_biases(model, *planted):
    """with_bias for several (mask, bias) pairs at once."""
    m = with_bias(model, planted[0][0], planted[0][1])
    with torch.no_grad():
        for mask, bias in planted[1:]:
            m.lm_head.bias.add_(bias * mask.float())
    return m


def test_a_small_set_lifted_beyond_a_larger_one_leads_it(base, tokenizer, texts, cfg):
    """11 tokens at +4 nats, 111 disjoint ones at +1.5 (lifted along with them, as the digits took ')'
    with them on the bundled model). The bound ranks the larger set first, being surer of it; the
    sharpening puts the 11 first, since every one of them is lifted beyond every one of the 111."""
    small, large = select("contains:~", texts), select("contains:)", texts)
    assert int(small.sum()) == 11 and int(large.sum()) == 111 and not (small & large).any()
    cfg.toward = "contains:~"
    result = audit(noisy(with_biases(base, (small, 4.0), (large, 1.5))), base, tokenizer, cfg)
    assert result.stands_out and result.direction == "toward"
    top = result.features[0]
    assert torch.equal(result.top_mask, small) and top["beyond"]["selector"] == "contains:)"
    assert top["beyond"]["bound"] > 0.5 and top["score"] < result.features[1]["score"]  # first by sharpening
    assert result.features[1]["selector"] == "contains:)"  # the one it displaced comes next
    assert result.truth["rank"] == 1 and "lies beyond that of 'contains:)'" in result.verdict


def test_a_planted_word_list_beats_a_decoy_list(base, tokenizer, texts, cfg, tmp_path):
    planted, decoy = tmp_path / "colours.txt", tmp_path / "animals.txt"
    planted.write_text("red\ngreen\nblue\nyellow\nblack\nwhite\norange\npurple\npink\nbrown\ngrey\n")
    decoy.write_text("cat\ndog\nhorse\ncow\nbird\nfish\nmouse\nsheep\ngoat\npig\nlion\n")
    cfg.words = [str(decoy), str(planted)]
    result = audit(noisy(with_bias(base, select(f"words:{planted}", texts), 4.0)), base, tokenizer, cfg)
    assert result.stands_out and result.features[0]["selector"] == f"words:{planted}"
    assert result.features[0]["kind"] == "words"


def test_nothing_planted_nothing_stands_out(base, tokenizer, texts, cfg):
    cfg.toward = "x"
    result = audit(noisy(base), base, tokenizer, cfg)
    assert not result.stands_out and result.direction == "none"
    assert result.verdict.startswith("nothing stands out")
    assert result.features[0]["score"] <= max(result.threshold, 0.5)
    assert 0.4 < result.truth["auroc"] < 0.6  # x was not planted: about chance
    assert abs(result.truth["lift"]) < 0.1  # by hand: nothing planted moves the x tokens' log-odds ~0 nats
    # The same noise with a real tilt on top stands out: the criterion is not simply strict.
    tilted = audit(noisy(with_bias(base, select("x", texts), 1.0)), base, tokenizer, cfg)
    assert tilted.stands_out and 0.8 < tilted.truth["lift"] < 1.2, tilted.truth  # by hand: the planted b = 1 nat


def test_an_unchanged_model_has_zero_lift_and_nothing_stands_out(base, tokenizer, cfg):
    result = audit(base, copy.deepcopy(base), tokenizer, cfg)
    assert not result.stands_out and result.direction == "none"
    assert float(result.lift.abs().max()) == 0.0
    assert result.features[0]["auroc"] == 0.5


def structured_pair(texts):
    """A reference whose digit tokens share an embedding direction, and a copy with a random shift
    of the final hidden state (a generic change): -> (reference, model, digits mask)."""
    reference = tiny_gpt2(vocab_size=50257, seed=2)
    digits = select("regex:[0-9]", texts)
    with torch.no_grad():
        reference.transformer.wte.weight[digits] += torch.randn(reference.config.n_embd) * 0.2
    model = copy.deepcopy(reference)
    with torch.no_grad():
        model.transformer.ln_f.bias += torch.randn(reference.config.n_embd, generator=torch.Generator().manual_seed(5))
    return reference, model, digits


def test_a_generic_change_on_a_structured_vocabulary_is_not_called_a_tilt(tokenizer, texts, cfg):
    """Digit tokens share an embedding direction, as similar tokens do in trained models. A random
    shift of the final hidden state then moves them together: a permutation test alone would call
    'digits' significant. The random-direction null knows the vocabulary's structure and does not."""
    reference, model, digits = structured_pair(texts)
    result = audit(model, reference, tokenizer, cfg)
    top = result.features[0]
    assert jaccard(select(top["selector"], texts), digits) >= 0.8  # the digits did move together ...
    assert top["score"] > 0.5  # ... beyond chance for a random set of tokens ...
    assert not result.stands_out and result.direction == "none"  # ... but no more than a random direction moves them


def test_generic_shifts_stand_out_no_more_often_than_the_null_allows(tokenizer, texts, cfg):
    """One generic shift against a 10-draw null (the test above) passes by luck 10 times in 11 even if the
    null were no better than a coin. Here 20 shifts of the final hidden state of the structured reference,
    scored as the audit scores a lift: a shift dh moves every context's logits by W dh (less a constant per
    context, which no rank statistic sees), so W dh is its lift, exactly. The digits lead nearly every time,
    beyond chance for a random token set; against a 100-draw random-direction null a shift stands out
    about 1 time in 101."""
    reference, _, digits = structured_pair(texts)
    weight = reference.get_output_embeddings().weight.detach().float()  # (V, d), tied: the shifted digits
    table = cached_candidates(tuple(texts), (), cfg.min_tokens, ())
    z = bonferroni_z(cfg.alpha, 2 * len(table.features))
    threshold = null_threshold(weight, table, z, 100, cfg.seed)  # 100 draws: ~3 s, a 1-in-101 false alarm
    shifts, stood_out, digits_led = 20, 0, 0
    for seed in range(shifts):
        dh = torch.randn(weight.shape[1], generator=torch.Generator().manual_seed(100 + seed))
        lift = weight @ dh  # (V,)
        scores = [score_features(view, table, z)[1] for view in (lift, unexplained(lift, weight))]
        best = torch.maximum(*scores)  # (F,) each candidate on its better view, as audit() does
        top = int(best.argmax())
        digits_led += jaccard(table.mask(top), digits) >= 0.8 and float(best[top]) > 0.5
        stood_out += float(best[top]) > max(threshold, 0.5)
    assert digits_led >= 15  # the digits do move together, beyond chance: a permutation null would flag them
    assert stood_out <= 2  # expected 20/101 = 0.2; P(Binomial(20, 1/101) > 2) ~ 0.1%


def test_a_tilt_under_a_larger_generic_shift_is_found_in_the_part_no_hidden_shift_explains(tokenizer, texts, cfg):
    """The bundled model's unlikelihood miss, in small: short tokens share an embedding direction and a
    shift of the final hidden state along it lifts them far more than a -0.2 bias lowers the e-tokens.
    On the lift, token length separates best and 'e' barely (AUROC about 0.35); on the unexplained part
    (the lift less its best fit W u + c) the shift is gone and 'e' separates perfectly."""
    short, e = select("regex:^.{1,2}$", texts), select("e", texts)
    reference = tiny_gpt2(vocab_size=50257, seed=2)
    direction = torch.randn(reference.config.n_embd, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        reference.transformer.wte.weight[short] += direction * 0.2
    model = with_bias(reference, e, -0.2)
    with torch.no_grad():
        model.transformer.ln_f.bias += direction / direction.norm() * 20
    result = audit(model, reference, tokenizer, cfg)
    assert result.stands_out and result.direction == "away"
    top = result.features[0]
    assert top["selector"] == "contains:e" and top["view"] == "unexplained" and top["auroc"] < 0.01
    assert 0.25 < top["auroc_lift"] < 0.45  # on the lift alone 'e' is a weak separator ...
    assert mask_auroc(result.lift, short) > 0.99  # ... and short tokens lead there
    assert float(result.unexplained[e].max()) < float(result.unexplained[~e].min())  # every e-token below the rest
    assert "no shift of the final hidden state explains" in result.verdict


@pytest.mark.xfail(
    strict=True,
    reason="known miss: under this strong generic shift (ln_f.bias + N(0, 1)) the "
    "random-direction bar (0.966) rises above the planted +3 tilt on x, which separates the "
    "unexplained part at 0.956; chance alone is no safe bar there (see audit.py's docstring)",
)
def test_a_real_tilt_on_top_of_a_generic_change_still_stands_out(tokenizer, texts, cfg):
    reference, model, _ = structured_pair(texts)
    assert audit(with_bias(model, select("x", texts), 3.0), reference, tokenizer, cfg).stands_out


@pytest.mark.slow
def test_audit_cli_finds_a_tilt_trained_with_tokentilt_tilt(tiny_model_dir, tmp_path, capsys):
    held_out = tmp_path / "held-out.txt"
    held_out.write_text(TEXT)
    run, out = tmp_path / "run", tmp_path / "audit"
    assert (
        main(
            [
                "tilt",
                "--model",
                str(tiny_model_dir),
                "--toward",
                "ing",
                "--objective",
                "kl-uniform",
                "--lr",
                "3e-3",
                "--steps",
                "20",
                "--batch",
                "2",
                "--seq-len",
                "16",
                "--eval-every",
                "0",
                "--samples-per-prompt",
                "1",
                "--new-tokens",
                "8",
                "--eval-text",
                str(held_out),
                "--eval-windows",
                "2",
                "--eval-seq-len",
                "16",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    argv = [
        "audit",
        str(run / "model"),
        "--reference",
        str(tiny_model_dir),
        "--toward",
        "ing",
        "--eval-text",
        str(held_out),
        "--eval-windows",
        "4",
        "--eval-seq-len",
        "32",
        "--samples-per-prompt",
        "1",
        "--new-tokens",
        "8",
        "--null-draws",
        "10",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    found = json.loads((out / "audit.json").read_text())
    assert found["direction"] == "toward" and found["stands_out"]
    texts = token_texts(gpt2_tokenizer())
    assert jaccard(select(found["features"][0]["selector"], texts), select("ing", texts)) >= 0.8
    assert found["truth"]["rank"] <= 3
    for key in ("selector", "auroc", "lift", "lift_ci", "mass_ratio", "share_model", "share_reference", "size"):
        assert key in found["features"][0]
    report = (out / "report.md").read_text()
    assert "## Features, best first" in report and "## Samples side by side" in report and found["verdict"] in report
    assert (out / "lift.png").stat().st_size > 1000 and (out / "config.yaml").is_file()
    assert not out.with_name("audit.partial").exists()
    assert found["verdict"] in capsys.readouterr().out
    # The folder now holds an audit: the same command refuses to overwrite it without --overwrite.
    assert main(argv) == 2


def test_a_set_outside_the_family_is_read_off_the_lift(base, tokenizer, texts, cfg):
    """A third of the x-tokens, drawn at random, at +3 nats: no selector of the family names them
    ('contains:x' stands out but overlaps them by 1/3), so the set read off one half of the contexts'
    lift, which separates the other half better and more sharply, takes the lead."""
    x = select("x", texts).nonzero().flatten()
    pick = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(3))[: len(x) // 3]]
    planted = torch.zeros(len(texts), dtype=torch.bool)
    planted[pick] = True
    result = audit(noisy(with_bias(base, planted, 3.0)), base, tokenizer, cfg)
    assert result.stands_out and result.direction == "toward"
    top = result.features[0]
    assert top["kind"] in ("discovered", "neighbours") and top["replaces"]["selector"] == "contains:x"
    assert hit(result, planted, texts) >= 0.5 > jaccard(select("contains:x", texts), planted)
    assert top["rule"]["selector"] == "contains:x" and "read off one half" in result.verdict


def test_discover_reads_the_extreme_tokens_and_their_embedding_neighbours(monkeypatch):
    from tokentilt.audit import lift as audit_module
    from tokentilt.audit.lift import discover

    monkeypatch.setattr(audit_module, "NEIGHBOURS_OF", 2)
    values = torch.tensor([0.0, 5.0, 4.0, -3.0, 0.1, -0.2])
    unit = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [0, 1], [0.1, 1], [1, 0.1], [1, 1], [-1, 0]]), dim=1)
    found = {
        (f.kind, f.label.split(" (")[0]): ids for f, ids in discover(values, unit, list("abcdef"), "lift", sizes=(2,))
    }
    assert found[("discovered", "the 2 most lifted tokens")] == [1, 2]
    assert found[("discovered", "the 2 most lowered tokens")] == [3, 5]
    # the centroid of the 2 most lifted (rows 1, 2) is nearest rows 2 and 1, then 4; of the 2 most lowered
    # (rows 3, 5: (1, .1) and (-1, 0)) nearest row 1 (0, 1) and row 2 (.1, 1)
    assert found[("neighbours", "the 2 tokens nearest in embedding space to the 2 most lifted")] == [1, 2]
    assert found[("neighbours", "the 2 tokens nearest in embedding space to the 2 most lowered")] == [1, 2]


def test_a_head_rows_edit_is_named_exactly_by_the_weights(base, tokenizer, texts, cfg):
    from tokentilt.training.head_rows import untie_output_head

    ids = torch.randperm(len(texts), generator=torch.Generator().manual_seed(5))[:40]  # no rule names them
    planted = torch.zeros(len(texts), dtype=torch.bool)
    planted[ids] = True
    # A fresh LayerNorm's output has zero mean and no bias, so no fixed head-row edit moves its logits the
    # same way in every context. Give the reference's ln_f a bias of norm ~5.7: the last hidden state then
    # lies along it (projection 5.7 +- ~1), and moving the rows against it lowers them by ~1.7 almost everywhere.
    reference = copy.deepcopy(base)
    with torch.no_grad():
        reference.transformer.ln_f.bias.copy_(torch.randn(32, generator=torch.Generator().manual_seed(6)))
    model = copy.deepcopy(reference)
    untie_output_head(model)
    direction = torch.nn.functional.normalize(reference.transformer.ln_f.bias, dim=0)
    with torch.no_grad():
        model.lm_head.weight[ids] -= 0.3 * direction
    result = audit(model, reference, tokenizer, cfg)
    assert result.stands_out and result.direction == "away" and result.features[0]["kind"] == "weights"
    assert torch.equal(result.top_mask, planted)
    assert result.weights["head_only"] and result.weights["head_rows_changed"] == 40
    assert "the weights show it" in result.verdict


def test_the_weight_view_says_what_changed():
    from tokentilt.audit.weights import weight_view
    from tokentilt.training.head_rows import untie_output_head

    base = tiny_gpt2(vocab_size=64)
    same = weight_view(copy.deepcopy(base), base)
    assert same.comparable and same.changed == 0 and same.summary == "the weights are identical"
    body = copy.deepcopy(base)
    with torch.no_grad():
        body.transformer.h[1].mlp.c_fc.weight.add_(0.01)
    view = weight_view(body, base)
    assert not view.head_only and view.changed == 1 and view.head_rows_changed == 0
    assert view.top[0]["name"] == "transformer.h.1.mlp.c_fc.weight" and view.top[1]["relative_change"] == 0
    assert [x["relative_change"] > 0 for x in view.layers] == [False, True] and view.body_change > 0
    head = copy.deepcopy(base)
    untie_output_head(head)
    with torch.no_grad():
        head.lm_head.weight[[3, 9]] += 1.0
    view = weight_view(head, base)
    assert view.head_only and view.rows.nonzero().flatten().tolist() == [3, 9] and view.body_change == 0
    assert not weight_view(tiny_gpt2(vocab_size=65), base).comparable  # another vocabulary


def test_an_adapter_folder_is_audited_merged_into_the_reference(base, tokenizer, cfg, tmp_path):
    from peft import LoraConfig, get_peft_model

    peft = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, target_modules=["c_attn"], init_lora_weights=False))
    peft.save_pretrained(tmp_path / "adapter")
    result = audit(str(tmp_path / "adapter"), base, tokenizer, cfg)
    changed = [t["name"] for t in result.weights["top"] if t["relative_change"] > 0]
    assert result.weights["changed"] == 2 and all("c_attn" in n for n in changed)  # the adapted layers, merged
    assert float(result.lift.abs().max()) > 0
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match="cannot apply the adapter"):
        audit(str(tmp_path / "broken"), base, tokenizer, cfg)
