"""tilt-distill's head-rows placement: the set-rows loss, untying, the fit, and the excess-cost helpers."""

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from conftest import hand_ppl, tilt_argv, tiny_llama
from tokentilt.cli import main
from tokentilt.measurement.calibrate import bias_at_rate, bracketed, match_bias
from tokentilt.measurement.evaluate import excess_cost
from tokentilt.objectives.losses import set_rows_kl
from tokentilt.targets.tokens import SelectorError, builtin_word_lists, resolve, select
from tokentilt.training import head_rows


def dense_tilt_kl(h, head, new_head, mask, bias):
    """The same loss the long way: F.kl_div between the full (N, V) softmaxes."""
    target = F.softmax(h @ head.T + bias * mask, -1)  # softmax(z + b·M), in h's float64
    return F.kl_div(F.log_softmax(h @ new_head.T, -1), target, reduction="batchmean")


@pytest.mark.parametrize("bias", [3.0, -2.0])
def test_set_rows_kl_equals_the_dense_kl_in_value_and_gradient(bias):
    g = torch.Generator().manual_seed(0)
    n, d, v = 12, 8, 40
    h, head = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(v, d, generator=g, dtype=torch.float64)
    mask = torch.zeros(v, dtype=torch.bool)
    mask[[1, 5, 6, 30]] = True
    delta = (0.3 * torch.randn(4, d, generator=g, dtype=torch.float64)).requires_grad_()
    rest_lse = (h @ head[~mask].T).logsumexp(-1)
    fused = set_rows_kl(h, rest_lse, head[mask], delta, bias)
    (grad_fused,) = torch.autograd.grad(fused, delta)

    delta_dense = delta.detach().clone().requires_grad_()
    new_head = head.clone()
    new_head = new_head.index_put((mask.nonzero().squeeze(1),), head[mask] + delta_dense)
    dense = dense_tilt_kl(h, head, new_head, mask, bias)
    (grad_dense,) = torch.autograd.grad(dense, delta_dense)
    assert fused.item() == pytest.approx(dense.item(), rel=1e-10)
    assert torch.allclose(grad_fused, grad_dense, rtol=1e-9, atol=1e-12)
    # With odds_weight w, + w/2 x mean squared error of the set's log-odds shift, computed densely here:
    odds = set_rows_kl(h, rest_lse, head[mask], delta, bias, odds_weight=0.5)
    shift = (h @ new_head.T)[:, mask].logsumexp(-1) - (h @ head.T)[:, mask].logsumexp(-1) - bias
    assert odds.item() == pytest.approx(dense.item() + 0.25 * shift.pow(2).mean().item(), rel=1e-10)
    # delta = 0 is the untilted head:
    zero = set_rows_kl(h, rest_lse, head[mask], torch.zeros_like(delta), bias)
    assert zero.item() == pytest.approx(dense_tilt_kl(h, head, head, mask, bias).item(), rel=1e-10) and zero > 0


def test_untie_output_head_gives_a_checkpoint_that_loads_untied(tmp_path):
    model = tiny_llama()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    head_rows.untie_output_head(model)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        model.lm_head.weight[3] += 1.0  # the head now differs from the embedding on one row
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert not loaded.config.tie_word_embeddings
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    assert torch.equal(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-6)


def test_untie_refuses_a_model_without_an_output_head():
    with pytest.raises(ValueError, match="--placement model"):
        head_rows.untie_output_head(torch.nn.Linear(2, 2))


def exact_tilt_gap(model, reference, ids, mask, bias):
    """Mean per-token KL(exact tilt of the reference || model) on ids."""
    with torch.no_grad():
        # by hand, not tilted_log_probs (which the fit itself may use): log softmax(z + b M)
        target = F.log_softmax(reference(input_ids=ids).logits + bias * mask.float(), -1)  # (B, T, V)
        return (target.exp() * (target - F.log_softmax(model(input_ids=ids).logits, -1))).sum(-1).mean().item()


def set_and_ids(members):
    """A (64,) set mask, 16 training id rows and 4 held-out ones for the tiny models."""
    mask = torch.zeros(64, dtype=torch.bool)
    mask[members] = True
    g = torch.Generator().manual_seed(1)
    return mask, torch.randint(64, (16, 24), generator=g), torch.randint(64, (4, 24), generator=g)


@pytest.mark.parametrize("members", [[3, 7, 9, 20], list(range(10, 60))], ids=["small-set", "via-complement"])
def test_head_rows_kl_fit_carries_the_tilt_and_changes_only_the_set_rows(members):
    model, reference = tiny_llama(), tiny_llama()
    mask, train_ids, held_out = set_and_ids(members)
    body = {k: v.clone() for k, v in model.state_dict().items() if "lm_head" not in k}
    tilt = head_rows.HeadRowsTilt(model, mask, lambda b, size: list(train_ids.split(4)), steps=200, lr=3e-2, fit="kl")
    assert tilt.sign == (1.0 if len(members) < 32 else -1.0) and tilt.trained_rows == min(
        len(members), 64 - len(members)
    )
    start_gap = exact_tilt_gap(model, reference, held_out, mask, 2.0)
    history = tilt.train(2.0, progress=False)
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert exact_tilt_gap(model, reference, held_out, mask, 2.0) < 0.5 * start_gap  # held-out ids too
    changed = (model.lm_head.weight != reference.lm_head.weight).any(-1)
    assert torch.equal(changed, tilt.trained)  # only the trained side's rows moved
    assert all(torch.equal(v, body[k]) for k, v in model.state_dict().items() if k in body)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["lm_head.weight"]
    # A second fit (another --rate round) starts again from the original rows and reuses the contexts.
    inputs = tilt.inputs
    tilt.train(0.0, progress=False)
    assert tilt.inputs is inputs and exact_tilt_gap(model, reference, held_out, mask, 0.0) < 0.01


@pytest.mark.slow
def test_contexts_recorded_while_sampling_equal_a_forward_over_them(tiny_model_dir):
    """The continuations are the draws a POLICY_TOKENS sample gives, and the head inputs the sampler
    recorded equal the ones a full forward over the finished contexts computes (within fp32 rounding);
    the play windows before them are run, not recorded. A size that no fit uses, so that every count
    follows it (at most 64 rows: sample() draws each batch of 64 on from where the last one stopped)."""
    from tokentilt.course.gpt2_tokenizer import gpt2_tokenizer
    from tokentilt.measurement.sampling import TRAIN_PROMPTS, SampleConfig, sample

    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), gpt2_tokenizer()
    mask = torch.zeros(model.config.vocab_size, dtype=torch.bool)
    mask[::7] = True
    plays = torch.randint(0, 1000, (2000,), generator=torch.Generator().manual_seed(0))
    size = head_rows.ContextSize(windows=5, per_prompt=1)
    got = head_rows.training_contexts(model, tokenizer, plays, mask, 1.5, "mix", seed=3, size=size)
    policy = got.batches[-len(TRAIN_PROMPTS) :]
    assert sum(len(b) for b in got.batches[: -len(TRAIN_PROMPTS)]) == 5 and {len(b) for b in policy} == {1}
    assert sorted(got.known) == list(range(len(got.batches) - len(TRAIN_PROMPTS), len(got.batches)))
    cfg = SampleConfig(max_new_tokens=head_rows.POLICY_TOKENS, strategy="multinomial")
    drawn = sample(model, tokenizer, list(TRAIN_PROMPTS), 1, cfg, seed=3, bias_mask=mask, bias=1.5)
    assert torch.equal(torch.cat([b[:, -head_rows.POLICY_TOKENS :] for b in policy]), drawn.tokens)
    plain = head_rows.context_batches(model, tokenizer, plays, mask, 1.5, "mix", seed=3, size=size)  # none recorded
    assert len(plain) == len(got.batches) and all(torch.equal(a, b) for a, b in zip(plain, got.batches))
    trained = torch.zeros_like(mask)
    forward = head_rows.head_inputs(model, got.batches, trained)  # every batch run again, none taken as known
    recorded = head_rows.head_inputs(model, got.batches, trained, known=got.known)
    assert forward.h.shape == recorded.h.shape == (sum(b.numel() for b in got.batches), model.config.n_embd)
    assert torch.allclose(recorded.h, forward.h, atol=1e-4, rtol=1e-4)
    # and the head inputs are what the head sees in an ordinary forward pass: its logits come back from them
    ids = got.batches[0]
    logits = model(input_ids=ids).logits.detach().reshape(-1, model.config.vocab_size)
    assert torch.allclose(recorded.h[: ids.numel()] @ model.lm_head.weight.detach().T, logits, atol=1e-4)


def test_rest_lse_of_a_few_rows_equals_the_cached_one():
    g = torch.Generator().manual_seed(0)
    h, weight = torch.randn(50, 8, generator=g), torch.randn(30, 8, generator=g)
    inputs = head_rows.HeadInputs(h, weight)
    idx = torch.tensor([3, 0, 49, 3])
    few = inputs.rest_lse(idx)
    assert inputs._rest_lse is None  # a few rows do not compute them all
    assert torch.allclose(inputs.rest_lse(), (h @ weight.T).logsumexp(-1))
    assert torch.allclose(few, inputs.rest_lse()[idx]) and torch.allclose(inputs.rest_lse(idx), few)


def test_offset_direction_finds_a_constant_feature_and_solves_least_squares():
    g = torch.Generator().manual_seed(0)
    h = torch.cat([torch.randn(500, 7, generator=g), torch.full((500, 1), 2.5)], 1)  # column 7 is constant
    u = head_rows.offset_direction(h, ridge=1e-9)
    assert torch.allclose(h @ u, torch.ones(500), atol=1e-5)  # h·u = 1 at every position: an exact offset
    assert torch.allclose(u, torch.tensor([0.0] * 7 + [0.4]), atol=1e-5)
    # Without a constant feature it is the ridge least-squares solution, checked against torch.linalg.lstsq:
    h = torch.randn(300, 6, generator=g, dtype=torch.float64) + 0.5
    ridge = 1e-2
    lam = ridge * (h * h).sum(0).mean()
    stacked = torch.cat([h, lam.sqrt() * torch.eye(6, dtype=h.dtype)])
    target = torch.cat([torch.ones(300, dtype=h.dtype), torch.zeros(6, dtype=h.dtype)])
    expected = torch.linalg.lstsq(stacked, target[:, None]).solution.squeeze(1)
    assert torch.allclose(head_rows.offset_direction(h, ridge).double(), expected, atol=1e-5)


@pytest.mark.parametrize("members", [[3, 7, 9, 20], list(range(10, 60))], ids=["small-set", "via-complement"])
def test_head_rows_offset_fit_is_the_exact_tilt_when_the_head_inputs_allow_a_constant(members, monkeypatch):
    monkeypatch.setattr(head_rows, "RIDGE", 1e-10)  # the default ridge shrinks h·u by about 0.1% here
    model, reference = tiny_llama(), tiny_llama()
    with torch.no_grad():  # the final norm's weight 0 on feature 0, plus a bias there: h[:, 0] = 1 everywhere
        for m in (model, reference):
            m.model.norm.weight[0] = 0.0
    hook = lambda mod, args, out: out + torch.nn.functional.one_hot(torch.tensor(0), out.size(-1)).to(out)  # noqa: E731
    for m in (model, reference):
        m.model.norm.register_forward_hook(hook)
    mask, train_ids, held_out = set_and_ids(members)
    body = {k: v.clone() for k, v in model.state_dict().items() if "lm_head" not in k}
    tilt = head_rows.HeadRowsTilt(model, mask, lambda b, size: list(train_ids.split(4)), steps=1, lr=1.0)
    assert tilt.fit == "offset"
    start_gap = exact_tilt_gap(model, reference, held_out, mask, 2.0)
    history = tilt.train(2.0, progress=False)
    assert len(history) == 1 and history[0]["offset_mean"] == pytest.approx(1.0, abs=1e-4)
    assert history[0]["offset_std"] < 1e-4 and history[0]["loss"] < 1e-6 < start_gap
    assert exact_tilt_gap(model, reference, held_out, mask, 2.0) < 1e-6  # held-out ids: the exact tilt
    delta = model.lm_head.weight[tilt.rows] - reference.lm_head.weight[tilt.rows]
    assert torch.allclose(delta, delta[:1].expand_as(delta))  # the same b·u on every trained row
    changed = (model.lm_head.weight != reference.lm_head.weight).any(-1)
    assert torch.equal(changed, tilt.trained)
    assert all(torch.equal(v, body[k]) for k, v in model.state_dict().items() if k in body)
    tilt.train(-1.0, progress=False)  # another round rescales the same direction: away from the set
    assert exact_tilt_gap(model, reference, held_out, mask, -1.0) < 1e-6


def test_offset_fit_on_a_plain_tiny_model_moves_the_set_mass_the_way_of_b():
    model, reference = tiny_llama(), tiny_llama()
    mask = torch.zeros(64, dtype=torch.bool)
    mask[[3, 7, 9, 20]] = True
    ids = torch.randint(64, (16, 24), generator=torch.Generator().manual_seed(2))
    tilt = head_rows.HeadRowsTilt(model, mask, lambda b, size: list(ids.split(4)), steps=1, lr=1.0)
    with torch.no_grad():
        base = reference(input_ids=ids).logits.log_softmax(-1)[..., mask].logsumexp(-1).exp().mean()
        masses = {}
        for b in (-2.0, 2.0):
            tilt.train(b, progress=False)
            masses[b] = model(input_ids=ids).logits.log_softmax(-1)[..., mask].logsumexp(-1).exp().mean()
    assert masses[-2.0] < base < masses[2.0]


def test_bias_at_rate_interpolates_in_logit_space_and_extends_the_ends():
    logit = lambda r: math.log(r / (1 - r))  # noqa: E731
    points = [(0.0, 0.1), (2.0, 0.5), (4.0, 0.9)]
    assert bias_at_rate(points, 0.5, 1000) == pytest.approx(2.0)
    # logit(0.3) lies between logit(0.1) and 0, at the fraction (logit 0.3 - logit 0.1) / -logit 0.1:
    assert bias_at_rate(points, 0.3, 1000) == pytest.approx(2 * (logit(0.3) - logit(0.1)) / -logit(0.1))
    assert bias_at_rate(points, 0.95, 1000) == pytest.approx(2 + 2 * (logit(0.95) - logit(0.5)) / logit(0.9))
    assert bias_at_rate([(1.5, 0.4)], 0.9, 64) == 1.5  # one point: nothing to interpolate
    assert bias_at_rate([(0.0, 0.3), (-2.0, 0.1)], 0.2, 1000) < 0  # away from the set: b < 0


def test_match_bias_measures_more_points_where_the_curve_bends():
    """R(b) flat near 0 and then steep (a phrase list's shape): extending the segment from b = 0 overshoots;
    match_bias measures at the guess, moved at most max_jump, until the target is bracketed."""

    def rate(b):  # logit R = log(e^-8 + e^(2(b - 7))): flat at -8, then slope 2
        return 1 / (1 + math.exp(-math.log(math.exp(-8) + math.exp(2 * (b - 7)))))

    truth = 7 + math.log(0.03 / 0.97 - math.exp(-8)) / 2  # rate(truth) = 0.03
    points = [(0.0, rate(0.0)), (4.5, rate(4.5))]
    assert not bracketed(points, 0.03)
    measured = []
    b, curve = match_bias(points, 0.03, 10_000, lambda x: measured.append(x) or rate(x))
    assert len(measured) == 1 and measured[0] == 4.5 + 1.5 and bracketed(curve, 0.03)
    assert b == pytest.approx(truth, abs=0.05)
    assert abs(bias_at_rate(points, 0.03, 10_000) - truth) > 1.0  # what the end segment alone would give
    # Already bracketed: nothing is measured.
    assert match_bias([(0.0, 0.01), (2.0, 0.5)], 0.1, 1000, lambda x: pytest.fail("measured"))[1] == [
        (0.0, 0.01),
        (2.0, 0.5),
    ]


def test_excess_cost_is_rho_and_the_drift_ratio():
    before = {"ppl": 70.0, "drift": 0.0}
    out = excess_cost(before, {"ppl": 85.0, "drift": 0.3}, {"ppl": 80.0, "drift": 0.2})
    assert out == {"rho": pytest.approx(1.5), "drift_ratio": pytest.approx(1.5)}
    assert excess_cost(before, {"ppl": 71.0, "drift": 0.1}, {"ppl": 70.0, "drift": 0.0}) == {
        "rho": None,
        "drift_ratio": None,
    }
    assert excess_cost(before, {"ppl": 71.0, "drift": 0.1}, None) == {"rho": None, "drift_ratio": None}


def test_built_in_word_list_and_a_missing_one():
    texts = ["red", " red", "blue", "Blue", " green", "x", "violet"]
    assert select("words:colours", texts).tolist() == [True, True, True, False, True, False, True]
    assert resolve("words:colours", texts).size == 5
    with pytest.raises(SelectorError, match=re.escape(f"(built-in lists: {', '.join(builtin_word_lists())})")):
        select("words:no_such_list", texts)


@pytest.mark.slow
def test_tilt_distill_defaults_to_head_rows_and_saves_a_plain_untied_model(tiny_model_dir, eval_file, tmp_path):
    out = tmp_path / "run"
    argv = tilt_argv(
        tiny_model_dir,
        eval_file,
        out,
        "--objective",
        "tilt-distill",
        "--bias",
        "4",
        "--head-fit",
        "kl",
        "--head-steps",
        "60",
        "--samples-per-prompt",
        "2",
    )
    assert main(argv) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["placement"] == "head-rows" and s["head"]["trained_rows"] == s["target_size"]
    assert s["trainable_params"] == s["target_size"] * 32 and s["steps"] == 60
    assert s["rate_after"]["mean"] > s["rate_before"]["mean"] + 0.02  # a random tiny body carries little of it
    assert s["matched_decode"]["bias"] > 0 and s["rho"] is not None and s["drift_ratio"] is not None
    assert (s["ppl_base"], s["ppl_tuned"], s["ppl_decode_matched"]) == (
        s["ppl_before"],
        s["ppl_after"],
        s["matched_decode"]["ppl"],
    )
    # rho's three perplexities recomputed by hand on the same held-out windows
    base, decode = hand_ppl(tiny_model_dir, eval_file), hand_ppl(tiny_model_dir, eval_file, s["matched_decode"]["bias"])
    tuned = hand_ppl(out / "model", eval_file)
    assert s["ppl_base"] == pytest.approx(base, rel=1e-4)
    assert s["ppl_decode_matched"] == pytest.approx(decode, rel=1e-4)
    assert s["ppl_tuned"] == pytest.approx(tuned, rel=1e-4)
    assert decode > base  # a decode-time tilt costs something: rho is defined
    assert isinstance(s["rho"], float) and math.isfinite(s["rho"])
    assert s["rho"] == pytest.approx((tuned - base) / (decode - base), rel=1e-3)
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    changed = (model.lm_head.weight != base.lm_head.weight).any(-1)
    assert changed.sum().item() == s["target_size"]
    assert torch.equal(model.transformer.wte.weight, base.transformer.wte.weight)
    assert "rho" in (out / "report.md").read_text()


def test_the_r_prompts_are_16_varied_openings_disjoint_from_the_training_prompts(tmp_path):
    from tokentilt.cli import tilt_config
    from tokentilt.jobs.tilt_config import TiltConfig
    from tokentilt.measurement.sampling import COURSE_PROMPTS, DEFAULT_PROMPTS, TRAIN_PROMPTS

    assert len(set(DEFAULT_PROMPTS)) >= 16 and not set(DEFAULT_PROMPTS) & set(TRAIN_PROMPTS)
    assert TiltConfig().eval.prompts == list(DEFAULT_PROMPTS)
    from tokentilt.jobs.experiments.x_factor import XFactorConfig

    assert XFactorConfig().eval.prompts == list(COURSE_PROMPTS)  # the course numbers' 8 prompts
    config = tmp_path / "prompts.yaml"
    config.write_text("prompts:\n  - Alpha beta\n  - 'Gamma: delta'\n")
    cfg = tilt_config({"config": str(config)})
    assert cfg.eval.prompts == ["Alpha beta", "Gamma: delta"]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--objective", "kl-uniform", "--placement", "head-rows"], "head-rows applies to tilt-distill without --lora"),
        (["--objective", "tilt-distill", "--placement", "head-rows", "--lora"], "head-rows applies to tilt-distill"),
        (["--objective", "tilt-distill", "--head-steps", "-1"], "head-steps must be a positive integer"),
        (["--objective", "tilt-distill", "--head-lr", "-1"], "head-lr must be positive"),
        (["--objective", "tilt-distill", "--head-fit", "mse"], "invalid choice: 'mse'"),
        (["--objective", "tilt-distill", "--head-lr", "nan"], "head-lr must be positive"),
        (["--objective", "tilt-distill", "--head-odds-weight", "-1"], "head-odds-weight must be >= 0"),
        (["--objective", "tilt-distill", "--contexts", "web"], "invalid choice: 'web'"),
        (["--objective", "tilt-distill", "--save-every", "5"], "it takes no --save-every or --report-to"),
        (["--objective", "tilt-distill", "--rate", "0", "--resume"], "and --resume only with --rate"),
        (
            ["--objective", "tilt-distill", "--placement", "model", "--save-every", "5"],
            "checkpoints after each stage and round; it takes no --save-every",
        ),
    ],
)
def test_bad_head_rows_options_are_one_line_before_loading(
    tiny_model_dir, eval_file, tmp_path, capsys, monkeypatch, extra, message
):
    import tokentilt.training.rate

    monkeypatch.setattr(tokentilt.training.rate, "load_model", lambda *a: pytest.fail("loaded the model"))
    out = tmp_path / "run"
    code = main(tilt_argv(tiny_model_dir, eval_file, out, *extra))
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() and not out.with_name("run.partial").exists()


@pytest.mark.slow
def test_the_r_prompts_never_enter_the_training_contexts(tiny_model_dir, eval_file, tmp_path, monkeypatch):
    """Every context the head-rows fit sees, decoded: the training prompts are there, the R prompts never."""
    from tokentilt.course.gpt2_tokenizer import gpt2_tokenizer
    from tokentilt.measurement.sampling import DEFAULT_PROMPTS, TRAIN_PROMPTS

    seen = []
    real = head_rows.head_inputs

    def spy(model, batches, trained, bf16=False, known=None):
        seen.extend(batches)
        return real(model, batches, trained, bf16, known)

    monkeypatch.setattr(head_rows, "head_inputs", spy)
    # a size of our own, so that the count below is ours, not one read back from the module under test
    monkeypatch.setattr(head_rows, "OFFSET_CONTEXTS", head_rows.ContextSize(windows=3, per_prompt=2))
    out = tmp_path / "run"
    assert main(tilt_argv(tiny_model_dir, eval_file, out, "--objective", "tilt-distill", "--bias", "2")) == 0
    tokenizer = gpt2_tokenizer()
    texts = [tokenizer.decode(row) for batch in seen for row in batch.tolist()]
    assert len(texts) >= len(TRAIN_PROMPTS)
    assert sum(any(t.startswith(p) for t in texts) for p in TRAIN_PROMPTS) == len(TRAIN_PROMPTS)
    assert not [p for p in DEFAULT_PROMPTS if any(p in t for t in texts)]
    s = json.loads((out / "summary.json").read_text())
    assert s["head"]["fit"] == "offset" and s["head"]["context_positions"] == sum(b.numel() for b in seen)
    # the offset fit's contexts: 3 play windows, and 2 continuations of every training prompt
    assert len(texts) == 3 + 2 * len(TRAIN_PROMPTS)
    assert sum(t.startswith(p) for t in texts for p in TRAIN_PROMPTS) == 2 * len(TRAIN_PROMPTS)


def test_each_fit_gets_its_contexts():
    """The offset fit needs fewer contexts than a fit of every row (kl, which every phrase list takes:
    tests/test_phrases.py checks that one asks for KL_CONTEXTS)."""
    assert head_rows.context_size("offset") == head_rows.OFFSET_CONTEXTS
    assert head_rows.context_size("kl") == head_rows.KL_CONTEXTS
    assert head_rows.OFFSET_CONTEXTS.windows < head_rows.KL_CONTEXTS.windows
