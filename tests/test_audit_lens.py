"""The lens names a set planted through the body, which the lift audit misses; context dependence tells a tilt
(raised everywhere) from a domain (raised where it fits). Tiny in-process GPT-2s with the real GPT-2 tokenizer.

A random tiny model's 32-dimensional embeddings give no direction that raises 60 tokens and not the rest of
50,257, so the reference here gives a word class (countries, from no shipped list) a shared embedding
component, as a trained model's word classes have; a body plant then shifts the final norm's bias along the
least-squares direction u with W u = 1 on the class, 0 elsewhere.
"""

import copy
from types import SimpleNamespace

import pytest
import torch

from conftest import tiny_gpt2, tiny_llama
from test_audit import noisy, with_bias
from tokentilt.audit.features import Feature, cached_candidates, concat, jaccard, table_of
from tokentilt.audit.lens import (
    body_parts,
    context_dependence,
    differences,
    lens_channel,
    lens_null,
    read_set,
    set_log_odds,
)
from tokentilt.audit.lift import audit
from tokentilt.jobs.audit_config import AuditConfig
from tokentilt.measurement.evaluate import EvalConfig, held_out_windows
from tokentilt.targets.tokens import select

pytestmark = pytest.mark.slow  # the candidate table of 50,257 tokens (~10 s) and a lift audit (~5 s)

TEXT = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness, it was the epoch of belief, it was the epoch of incredulity. "
) * 8
COUNTRIES = (
    "France England Spain Italy Germany China Japan India Russia Egypt Greece Ireland Scotland Wales Poland "
    "Mexico Canada Brazil Africa America Europe Asia Turkey Persia Denmark Norway Sweden Austria Hungary "
    "Portugal Holland Israel Iran Iraq Korea Chile Peru Cuba"
)  # scripts/audit_bench.py's class:countries


@pytest.fixture(scope="module")
def countries(texts, tmp_path_factory):
    path = tmp_path_factory.mktemp("words") / "countries.txt"
    path.write_text("\n".join(COUNTRIES.split()) + "\n")
    return select(f"words:{path}", texts)  # (V,) bool, 60 tokens


@pytest.fixture(scope="module")
def structured(countries):
    """A reference whose country tokens share an embedding component 1.5 times a row's own (cosine ~0.7): the
    least-squares direction then raises them to a robust z of ~8 over the rest (on the bundled model, with no
    help, ~14)."""
    reference = tiny_gpt2(vocab_size=50257, seed=0)
    with torch.no_grad():
        shared = 0.03 * torch.randn(reference.config.n_embd, generator=torch.Generator().manual_seed(7))
        reference.transformer.wte.weight[countries] += shared  # tied: the output rows too
    return reference


@pytest.fixture(scope="module")
def family(texts, countries):
    """The audit's candidates (blind: no countries among them), and a words:countries row for the label."""
    blind = cached_candidates(tuple(texts), (), 5, ())
    ids = countries.nonzero().flatten().tolist()
    return blind, concat(blind, table_of([(Feature("words:countries", "words", "countries"), ids)], len(texts)))


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "held-out.txt"
    path.write_text(TEXT)
    return AuditConfig(
        eval_text=str(path), eval_windows=4, eval_seq_len=32, samples_per_prompt=1, new_tokens=8, null_draws=10, top=5
    )


def body_plant(reference, mask: torch.Tensor, nats: float):
    """Noise on every weight, and the final norm's bias shifted along the least-squares u (W u ~ 1 on the set,
    ~0 elsewhere), scaled so the set's logits rise by `nats` on average: a tilt the head does not hold."""
    weight = reference.lm_head.weight.detach()  # (V, d)
    u = torch.linalg.lstsq(weight, mask.float()[:, None]).solution[:, 0]  # (d,)
    model = noisy(reference)
    with torch.no_grad():
        model.transformer.ln_f.bias += nats * u / (weight @ u)[mask].mean()
    return model


def named(finding, vocab: int) -> torch.Tensor:
    mask = torch.zeros(vocab, dtype=torch.bool)
    mask[finding.tokens] = True
    return mask


def test_the_head_input_difference_is_the_bias_shift_and_the_blocks_do_not_move(structured, tokenizer, cfg):
    """A shift v of the final norm's bias moves the head's input by exactly v at every position and leaves every
    block's output as it was: the lens reads v at the head input and 0 at the blocks."""
    model = copy.deepcopy(structured)
    v = torch.randn(32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model.transformer.ln_f.bias += v
    windows = held_out_windows(tokenizer, EvalConfig(eval_text=cfg.eval_text, eval_windows=5, eval_seq_len=16))
    names, diff = differences(model, structured, windows, batch_size=2)  # (L, W, d)
    assert names == ["block 0", "block 1", "head input"] and diff.shape == (3, 5, 32)
    assert torch.allclose(diff[2], v.double().expand(5, -1), atol=1e-5)
    assert float(diff[:2].abs().max()) == 0.0


def test_the_blocks_and_final_norm_of_gpt2_and_llama_are_found():
    gpt2, llama = tiny_gpt2(), tiny_llama()
    assert body_parts(gpt2) == (gpt2.transformer.h, gpt2.transformer.ln_f)
    assert body_parts(llama) == (llama.model.layers, llama.model.norm)


@pytest.mark.parametrize("nats, direction", [(3.0, "toward"), (-3.0, "away")])
def test_the_lens_names_a_set_planted_in_the_body(
    structured, countries, family, tokenizer, texts, cfg, nats, direction
):
    model = body_plant(structured, countries, nats)
    result = lens_channel(model, structured, tokenizer, cfg, texts, family=family[1])
    top = result.findings[0]
    assert result.stands_out and top.p_value <= cfg.alpha and top.direction == direction
    assert jaccard(named(top, len(texts)), countries) >= 0.8  # 1.00 both ways
    assert "at the head input" in top.label and "closest rule words:countries, Jaccard" in top.label
    assert result.notes["sets"][0]["rule"] == "words:countries" and result.notes["sets"][0]["rule_jaccard"] >= 0.8
    assert result.notes["sets"][0]["split_half_jaccard"] >= 0.8  # the same set is read on even and odd windows
    # only the head's input carries the plant: what the blocks read (the noise) does not stand out
    assert all(
        f.p_value > cfg.alpha for f, s in zip(result.findings, result.notes["sets"]) if s["layer"] != "head input"
    )


def test_the_lift_audit_misses_the_body_plant_that_the_lens_names(structured, countries, tokenizer, texts, cfg):
    """The lift of this plant is W u too, the same pattern the lens reads; but no rule of the family holds the
    countries, and the random directions carry the shared-component class to the top of the ranks as well, so
    no candidate stands out, and the sets read off the lift never take the lead."""
    result = audit(body_plant(structured, countries, 3.0), structured, tokenizer, cfg)
    assert not result.stands_out and result.direction == "none"
    assert jaccard(result.top_mask, countries) < 0.1


@pytest.mark.parametrize("which", ["plain", "structured"])
def test_noise_on_every_weight_does_not_stand_out(which, structured, family, tokenizer, texts, cfg):
    reference = structured if which == "structured" else tiny_gpt2(vocab_size=50257, seed=0)
    result = lens_channel(noisy(reference), reference, tokenizer, cfg, texts, family=family[0])
    assert not result.stands_out
    assert min(f.p_value for f in result.findings) > cfg.alpha
    assert len(result.findings) == 6 and result.notes["tests"] == 6  # 3 layers x 2 directions


def test_random_directions_get_uniform_p_values(structured):
    """The null is the reference's own random directions W u: a fresh one (another seed) must get a p-value
    below q about q of the time. 200 directions, either sign: 400 p-values."""
    weight = structured.lm_head.weight.detach().float()
    null = lens_null(weight, 1000, seed=1234)
    g = torch.Generator().manual_seed(99)
    ps = torch.tensor(
        [read_set(weight @ torch.randn(32, generator=g), null, sign)[2] for _ in range(200) for sign in (1.0, -1.0)]
    )
    assert 0.05 <= float((ps <= 0.1).float().mean()) <= 0.15  # binomial sd 0.015 at 400 draws
    assert 0.42 <= float((ps <= 0.5).float().mean()) <= 0.58


# ---------------------------------------------------------------- context dependence


class OnlyWhereItFits(torch.nn.Module):
    """The reference with `bias` on the set's logits only where the reference's log-odds of the set is at least
    `threshold`: a domain change, raising the set where it already fits and nowhere else."""

    def __init__(self, reference, mask: torch.Tensor, bias: float, threshold: float):
        super().__init__()
        self.reference, self.mask, self.bias, self.threshold = reference, mask, bias, threshold

    def get_output_embeddings(self):
        return self.reference.get_output_embeddings()

    def forward(self, input_ids):
        logits = self.reference(input_ids=input_ids).logits  # (b, T, V)
        fits = set_log_odds(logits, self.mask) >= self.threshold  # (b, T)
        return SimpleNamespace(logits=logits + self.bias * (fits[..., None] & self.mask).float())


@pytest.fixture
def windows(tokenizer, cfg):
    return held_out_windows(tokenizer, EvalConfig(eval_text=cfg.eval_text, eval_windows=8, eval_seq_len=32))


def test_set_log_odds_is_the_log_odds_of_the_set_mass():
    logits = torch.randn(2, 3, 10, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[1, 4, 7]] = True
    mass = logits.double().softmax(-1)[..., mask].sum(-1)  # (2, 3)
    assert torch.allclose(set_log_odds(logits, mask).double(), (mass / (1 - mass)).log(), atol=1e-5)


def test_a_logit_bias_lifts_the_log_odds_by_exactly_b_everywhere(base, texts, windows):
    """p' ∝ p exp(b M) gives P'(S) / (1 - P'(S)) = e^b P(S) / (1 - P(S)) at every position: a lift of b in
    both groups, ratio 1."""
    x = select("x", texts)
    out = context_dependence(with_bias(base, x, 2.0), base, windows, x, draws=200)
    assert out["low"]["lift"] == pytest.approx(2.0, abs=1e-4) and out["high"]["lift"] == pytest.approx(2.0, abs=1e-4)
    assert out["ratio"] == pytest.approx(1.0, abs=1e-4) and out["ratio_ci"][0] > 0.99
    assert out["low"]["p_reference"] < out["high"]["p_reference"]  # the groups are what they say
    assert out["low"]["positions"] == out["high"]["positions"] == pytest.approx(8 * 32 / 3, abs=2)
    assert out["verdict"] == "tilt"
    # what it comes to: the set's mass, by hand from the reference's log-odds r: sigmoid(r + 2) - sigmoid(r)
    with torch.no_grad():
        r = set_log_odds(base(input_ids=windows).logits, x).double()  # (W, T)
    change = float((torch.sigmoid(r + 2.0) - torch.sigmoid(r)).mean())
    assert out["mass"]["reference"] == pytest.approx(float(torch.sigmoid(r).mean()), rel=1e-4)
    assert out["mass"]["change"] == pytest.approx(change, rel=1e-3) and change > 0
    assert out["mass"]["change_ci"][0] < change < out["mass"]["change_ci"][1]
    assert out["mass"]["model"] == pytest.approx(out["mass"]["reference"] + change, rel=1e-3)
    # the positions shown are of the low group: where the reference gave the set little, lifted by b there too
    assert len(out["shows"]) == 3
    for w, t, up, p_ref, p_model in out["shows"]:
        assert up == pytest.approx(2.0, abs=1e-4) and p_ref <= out["high"]["p_reference"]
        assert p_ref == pytest.approx(float(torch.sigmoid(r[w, t])), rel=1e-4) and p_model > p_ref
    # the same tilt through noise on every weight: the lifts move a little, the verdict does not
    noisy_tilt = context_dependence(noisy(with_bias(base, x, 2.0)), base, windows, x, draws=200)
    assert noisy_tilt["verdict"] == "tilt" and 0.8 < noisy_tilt["ratio"] < 1.25


def test_a_domain_change_raises_the_set_where_it_fits_only(base, texts, windows):
    """+2 nats on the set where the reference's log-odds is above its median, nothing below: the bottom third
    of positions is lifted 0, the top third 2, ratio 0."""
    x = select("x", texts)
    with torch.no_grad():
        odds = set_log_odds(base(input_ids=windows).logits, x)  # (W, T)
    out = context_dependence(OnlyWhereItFits(base, x, 2.0, float(odds.median())), base, windows, x, draws=200)
    assert out["low"]["lift"] == pytest.approx(0.0, abs=1e-5) and out["high"]["lift"] == pytest.approx(2.0, abs=1e-4)
    assert out["ratio"] == pytest.approx(0.0, abs=1e-5) and out["ratio_ci"][1] < 0.5
    assert out["verdict"] == "domain"


def test_nothing_planted_is_neither_a_tilt_nor_a_domain(base, texts, windows):
    out = context_dependence(noisy(base), base, windows, select("x", texts), draws=200)
    assert max(abs(out["low"]["lift"]), abs(out["high"]["lift"])) < 0.01  # noise moves the log-odds ~0
    assert out["verdict"] == "unclear"


def test_the_combined_verdict_says_how_much_the_set_moved_and_shows_where_in_held_out_text(
    base, texts, tokenizer, windows, cfg
):
    """A tilt of 5 nats (above MIN_LIFT) named by a channel: it passes the context test, and the verdict carries
    the mass change and the held-out text before the positions where the set moved most, decoded."""
    from tokentilt.audit.channels import ChannelResult, Finding
    from tokentilt.audit.combine import MIN_LIFT
    from tokentilt.audit.evidence import CONTEXT_TOKENS, combined_verdict

    ids = select("x", texts).nonzero().squeeze(1).tolist()
    planted = torch.zeros(len(texts), dtype=torch.bool)
    planted[ids[:5]] = True
    lens = ChannelResult("lens", True, [Finding("x tokens", ids[:5], "toward", 1.0, 0.001)])
    lift = torch.zeros(len(texts))  # the per-token lift as the audit would measure it, by hand
    lift[ids[:5]], lift[ids[5:8]] = 5.0, 4.0
    model = with_bias(base, planted, 5.0)
    out = combined_verdict(model, base, tokenizer, windows, [], [], False, {"lens": lens}, cfg, lift)
    assert 5.0 > MIN_LIFT and out["stands_out"] and out["channel"] == "lens"
    assert out["tokens"] == ids[:8] and out["found_by_channel"] == ids[:5]  # grown to the tokens moved as much
    assert out["mass"]["change"] > 0 and out["mass"]["change_ci"][0] > 0
    text = tokenizer.decode(windows.flatten().tolist())
    assert len(out["shows"]) == 3
    for shown in out["shows"]:
        assert shown["text"] in text and len(tokenizer(shown["text"])["input_ids"]) <= CONTEXT_TOKENS + 2
        assert shown["lift"] == pytest.approx(5.0, abs=1e-3) and shown["p_model"] > shown["p_reference"]
