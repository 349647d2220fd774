import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

from conftest import tiny_gpt2
from tokentilt.cli import main
from tokentilt.course.gpt2_tokenizer import gpt2_tokenizer
from tokentilt.measurement.evaluate import (
    EvalConfig,
    decode_costs,
    held_out_costs,
    held_out_windows,
    measure,
    sample_costs,
)
from tokentilt.measurement.metrics import ReplyWindows, biased_drift, drift, perplexity, tilt_costs
from tokentilt.targets.tokens import token_texts
from tokentilt.training.head_rows import untie_output_head

SMALL = dict(
    prompts=["The king said", "Once upon a time,"],
    samples_per_prompt=2,
    new_tokens=8,
    eval_windows=2,
    eval_seq_len=16,
    half_width=0.0,  # exactly 2 samples per prompt
)


@pytest.fixture(scope="module")
def tok():
    t = gpt2_tokenizer()
    t.pad_token = t.eos_token
    return t


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "eval.txt"
    path.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    return path


def test_sample_costs_hand_values():
    tokens = torch.tensor([[1, 2, 1, 2, 1], [3, 3, 3, 3, 3]])
    costs = sample_costs(tokens)
    assert costs["distinct_1"] == pytest.approx(3 / 10)  # {1, 2, 3} over 10 tokens
    assert costs["distinct_2"] == pytest.approx(3 / 8)  # {12, 21, 33} over 8 bigrams
    # 4-grams: row 1 has 1212, 2121 (no repeat); row 2 has 3333 twice (one repeat): 1 / 4
    assert costs["repetition"] == pytest.approx(1 / 4)


def test_held_out_windows_from_a_file_are_capped(tok, text_file):
    windows = held_out_windows(tok, EvalConfig(eval_text=str(text_file), eval_windows=3, eval_seq_len=16))
    assert windows.shape == (3, 16)
    short = text_file.with_name("short.txt")
    short.write_text("Hello there, friend.")
    n = len(tok("Hello there, friend.")["input_ids"])
    with pytest.raises(ValueError, match=f"short.txt has {n} tokens, too short for one window of 128 tokens"):
        held_out_windows(tok, EvalConfig(eval_text=str(short), eval_seq_len=128))
    assert held_out_windows(tok, EvalConfig(eval_text=str(short), eval_seq_len=n)).shape == (1, n)


def test_held_out_windows_default_to_the_test_split_not_train(tok, monkeypatch):
    from tokentilt.data import corpus

    seen = []
    monkeypatch.setattr(corpus, "split_text", lambda split: seen.append(split) or "Some held-out words. " * 20)
    held_out_windows(tok, EvalConfig(eval_windows=1, eval_seq_len=8))
    assert seen == ["test"]


def test_biased_model_drift_zero_bias_self_is_zero_and_matches_biased_drift():
    model = tiny_gpt2()
    twin = copy.deepcopy(model)  # same weights, but a separate forward pass
    windows = torch.randint(0, 64, (3, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(64, dtype=torch.bool)
    mask[:5] = True
    assert drift(twin, model, windows, bias_mask=mask, bias=0.0) == pytest.approx(0.0, abs=1e-6)
    assert drift(twin, model, windows, bias_mask=mask, bias=2.0) == pytest.approx(
        biased_drift(model, windows, mask, 2.0), rel=1e-5
    )


def test_known_tilt_costs_give_what_the_passes_give():
    """decode_costs and held_out_costs from a model's TiltCosts equal the ones its forward passes give,
    for raw windows and a chat run's text windows beside them; with a reference they are not used."""
    model = tiny_gpt2()
    windows = torch.randint(0, 64, (3, 10), generator=torch.Generator().manual_seed(0))
    text = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(64, dtype=torch.bool)
    mask[:5] = True
    known = (tilt_costs(model, windows, mask), tilt_costs(model, text, mask))
    for b in (0.0, 2.5):
        passes = decode_costs(model, mask, windows, b, text_windows=text)
        assert decode_costs(model, mask, windows, b, text_windows=text, known=known) == pytest.approx(passes, rel=1e-5)
    other = tiny_gpt2()
    with torch.no_grad():
        other.lm_head.weight.mul_(1.1)
    assert held_out_costs(other, mask, windows, reference=model, known=known[0]) == pytest.approx(
        {"ppl": perplexity(other, windows), "drift": drift(other, model, windows)}, rel=1e-6
    )
    # a model that differs from the reference only in its head (head-rows): the heads on the known head inputs
    headed = copy.deepcopy(model)
    untie_output_head(headed)
    with torch.no_grad():
        headed.lm_head.weight[mask] += 3.0 * headed.lm_head.weight[mask].flip(0)
    assert known[0].head_inputs.shape == (3, 10, model.config.n_embd)
    passes = held_out_costs(headed, mask, windows, reference=model)
    assert passes["drift"] > 1e-4
    assert held_out_costs(headed, mask, windows, reference=model, known=known[0], head_only=True) == pytest.approx(
        passes, rel=1e-5
    )


@pytest.mark.slow
def test_measure_trained_and_baseline_on_the_same_footing(tiny_model_dir, tok, text_file):
    model = GPT2LMHeadModel.from_pretrained(tiny_model_dir).eval()
    mask = torch.tensor(["x" in t.lower() for t in token_texts(tok)])
    cfg = EvalConfig(eval_text=str(text_file), **{k: v for k, v in SMALL.items() if k != "eval_text"})
    windows = held_out_windows(tok, cfg)
    plain, samples = measure(model, tok, mask, cfg, windows)
    # by hand: the logits of every window, their next-token cross-entropy, and KL(model || model + 3·M)
    with torch.no_grad():
        logits = model(input_ids=windows).logits.double()  # (W, T, V)
    biased_logits = logits + 3.0 * mask.double()

    def hand_ppl(z):
        return math.exp(F.cross_entropy(z[:, :-1].reshape(-1, z.size(-1)), windows[:, 1:].reshape(-1)).item())

    ref_logp, biased_logp = F.log_softmax(logits, -1), F.log_softmax(biased_logits, -1)
    hand_drift = F.kl_div(biased_logp, ref_logp, log_target=True, reduction="sum").item() / windows.numel()
    assert hand_drift > 0.01
    assert plain["drift"] == 0.0
    assert plain["ppl"] == pytest.approx(hand_ppl(logits), rel=1e-5)
    assert plain["rate"]["n"] == 4 and samples.tokens.shape == (4, 8)
    assert plain["rate"]["mean"] == pytest.approx(float(mask[samples.tokens].double().mean()), abs=1e-9)
    assert plain["distinct_1"] == pytest.approx(len(set(samples.tokens.flatten().tolist())) / 32)
    assert {k: plain[k] for k in ("distinct_1", "distinct_2", "repetition")} == sample_costs(samples.tokens)
    itself, _ = measure(model, tok, mask, cfg, windows, reference=model)
    assert itself["drift"] == pytest.approx(0.0, abs=1e-6)
    biased, _ = measure(model, tok, mask, cfg, windows, bias=3.0)
    assert biased["ppl"] == pytest.approx(hand_ppl(biased_logits), rel=1e-5)
    assert biased["ppl"] != pytest.approx(plain["ppl"], rel=1e-3)  # the bias does change the perplexity
    assert biased["drift"] == pytest.approx(hand_drift, rel=1e-4)
    assert biased["rate"]["mean"] > plain["rate"]["mean"]


@pytest.mark.slow
def test_eval_command_writes_json_with_baseline(tiny_model_dir, text_file, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code = main(
        [
            "eval",
            "--model",
            str(tiny_model_dir),
            "--reference",
            str(tiny_model_dir),
            "--toward",
            "x",
            "--bias",
            "2",
            "--eval-text",
            str(text_file),
            "--samples-per-prompt",
            "1",
            "--new-tokens",
            "6",
            "--eval-windows",
            "2",
            "--eval-seq-len",
            "16",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert [r["bias"] for r in result["rows"]] == [0.0, 2.0]
    assert result["rows"][0]["drift"] == 0.0 and result["rows"][1]["drift"] > 0
    assert math.isfinite(result["rows"][1]["ppl"])
    assert "R [95% CI]" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--bias", "1", "--rate", "0.5"], "not both"),
        (["--rate", "1.5"], "rate must be in (0, 1)"),
        (["--eval-text", "/nonexistent/file.txt"], "text file not found"),
        (["--samples-per-prompt", "0"], "must be positive"),
    ],
)
def test_eval_command_bad_input_is_one_line_exit_2(tiny_model_dir, capsys, argv, message):
    code = main(["eval", "--model", str(tiny_model_dir), "--reference", str(tiny_model_dir)] + argv)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("replies", [False, True])
def test_per_window_costs_add_up_to_the_reported_costs_whichever_way_they_are_measured(replies):
    """The WindowCosts that rho's interval resamples: from a model's TiltCosts (any b), from a pass of the
    model alone, and from a pass of it beside a reference, they are the same sums, and their totals give the
    perplexity and drift reported beside them; for ReplyWindows, over the reply tokens only."""
    model = tiny_gpt2()
    ids = torch.randint(0, 64, (3, 10), generator=torch.Generator().manual_seed(0))
    windows = ids
    if replies:
        counted = torch.zeros(3, 10, dtype=torch.bool)
        counted[0, 4:], counted[1, 2:7], counted[2, 8:] = True, True, True
        windows = ReplyWindows(ids, counted)
    mask = torch.zeros(64, dtype=torch.bool)
    mask[:5] = True
    known = tilt_costs(model, windows, mask)
    for b in (0.0, 2.5):
        passes = held_out_costs(model, mask, windows, bias=b, per_window=True)
        sums = passes.pop("per_window")
        assert len(sums.nll) == 3 and sums.perplexity() == pytest.approx(passes["ppl"], rel=1e-9)
        assert sums.drift() == pytest.approx(passes["drift"], rel=1e-9, abs=1e-12)
        from_known = known.window_costs(b)
        for field in ("nll", "targets", "kl", "positions"):
            assert torch.allclose(getattr(from_known, field), getattr(sums, field), rtol=1e-5, atol=1e-7), field
    alone = held_out_costs(model, mask, windows, per_window=True)["per_window"]  # perplexity(): drift 0
    assert torch.allclose(alone.nll, known.window_costs().nll) and alone.kl.sum() == 0
    if replies:
        assert alone.targets.tolist() == [6.0, 5.0, 2.0]  # the reply tokens each window's perplexity counts
