import dataclasses
import json
import math

import pytest
import torch
from transformers import AutoTokenizer

import tokentilt.jobs.tilt
import tokentilt.measurement.evaluate
import tokentilt.training.rate
from conftest import hand_ppl, tilt_argv, word_rate
from tokentilt.cli import main

COST_KEYS = ("ppl", "drift", "distinct_1", "distinct_2", "repetition")


@pytest.mark.slow
def test_tilt_distill_summary_has_costs_before_after_and_the_baseline(tiny_model_dir, eval_file, tmp_path):
    out = tmp_path / "run"
    assert (
        main(
            tilt_argv(
                tiny_model_dir, eval_file, out, "--objective", "tilt-distill", "--bias", "3", "--placement", "model"
            )
        )
        == 0
    )
    s = json.loads((out / "summary.json").read_text())
    for key in COST_KEYS:
        assert isinstance(s[f"{key}_before"], float) and isinstance(s[f"{key}_after"], float)
    assert s["drift_before"] == 0.0 and s["drift_after"] > 0
    assert s["ppl_before"] > 1000  # an untrained 50257-token model is close to uniform
    assert s["eval_text"] == str(eval_file) and s["eval_tokens"] == 32
    assert s["bias"] == 3.0 and s["rate_target"] is None
    base = s["baseline"]
    assert base["objective"] == "decode-bias" and base["bias"] == 3.0 and base["drift"] > 0
    assert base["rate"]["mean"] > s["rate_before"]["mean"]
    for key in ("rate_before", "rate_after", "loss_start", "loss_end", "samples", "seconds"):
        assert key in s  # the keys the tilt command always wrote
    for when in ("before", "after"):  # the expected count beside R, over the same samples
        assert s[f"rate_expected_{when}"]["n"] == s[f"rate_{when}"]["n"]
        assert 0 <= s[f"rate_expected_{when}"]["mean"] <= 1
    assert base["rate_expected"]["mean"] > s["rate_expected_before"]["mean"]
    stages = s["stage_seconds"]  # a fixed b: no calibration stage
    assert list(stages) == ["load", "measure_before", "baseline", "train", "measure_after", "matched_decode", "save"]
    assert all(v >= 0 for v in stages.values()) and sum(stages.values()) <= s["seconds"] + 0.5
    peaks = s["stage_peak_rss_mb"]  # resident memory per stage, the same stages
    assert list(peaks) == list(stages) and all(v > 0 for v in peaks.values())
    assert max(peaks.values()) <= s["peak_rss_mb"] and s["train_peak_rss_mb"] == peaks["train"]
    assert "stage_peak_device_mb" not in s  # CUDA only
    report = (out / "report.md").read_text()
    assert "held-out perplexity" in report and "decode-time baseline" in report


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--objective", "kl-uniform", "--rate", "0.5"], "rate calibrates tilt-distill's bias"),
        (["--objective", "tilt-distill", "--rate", "1.5"], "rate must be in (0, 1)"),
        (["--eval-windows", "0"], "eval-windows must be positive"),
    ],
)
def test_bad_cost_options_are_one_line_exit_2(tiny_model_dir, eval_file, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    code = main(tilt_argv(tiny_model_dir, eval_file, out, *extra))
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_missing_eval_text_fails_before_loading(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tokentilt.training.rate, "load_model", lambda *a: pytest.fail("loaded the model"))
    out = tmp_path / "run"
    code = main(tilt_argv(tiny_model_dir, tmp_path / "missing.txt", out))
    err = capsys.readouterr().err
    assert code == 2 and "text file not found" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not out.with_name("run.partial").exists()


@pytest.mark.slow
def test_tilt_distill_at_a_rate_corrects_b_over_training_rounds(tiny_model_dir, eval_file, tmp_path, monkeypatch):
    draws = []  # (seed, bias) of every R measurement
    real_sample = tokentilt.measurement.evaluate.sample
    monkeypatch.setattr(
        tokentilt.measurement.evaluate,
        "sample",
        lambda *a, seed, bias=0.0, **k: draws.append((seed, bias)) or real_sample(*a, seed=seed, bias=bias, **k),
    )
    out = tmp_path / "run"
    argv = tilt_argv(
        tiny_model_dir,
        eval_file,
        out,
        "--objective",
        "tilt-distill",
        "--rate",
        "0.5",
        "--rate-rounds",
        "2",
        "--samples-per-prompt",
        "2",
        "--placement",
        "model",
        "--eval-seed",
        "7",
    )
    assert main(argv) == 0
    s = json.loads((out / "summary.json").read_text())
    rounds = s["bias_rounds"]
    assert rounds[0]["bias"] == s["calibrated_bias"] == s["baseline"]["bias"]
    # Two steps barely train the tiny model, so round 1 undershoots and round 2 raises b by the logit gap.
    assert len(rounds) == 2 and rounds[0]["probe_rate"] < 0.5 and rounds[1]["bias"] > rounds[0]["bias"]
    assert s["bias"] in [r["bias"] for r in rounds]
    # b is chosen on the probe seeds (calibration and rounds); the eval seed only measures: before, the
    # decode-time tilt at the calibrated and at the trained b (rho's curve), after.
    calibrated, trained = s["calibrated_bias"], s["bias"]
    # a token set sampled at temperature 1: b is solved on importance-weighted estimates from the draws
    cal = s["calibration"]
    assert cal["eval_seed"] == 8 and cal["method"] == "importance weights" and cal["rate"]["ess"] >= 16
    assert cal["rate"]["mean"] == pytest.approx(0.5, abs=1e-3)
    assert {(8, p["bias"]) for p in cal["points"]} <= set(draws)
    curve = s["matched_decode"]["curve"]  # b = 0, the calibrated b, then the trained b (if moved) and match_bias's
    assert [p["bias"] for p in curve[:2]] == [0.0, calibrated] and (
        trained == calibrated or curve[2]["bias"] == trained
    )
    # a point at another b is read off the draws at b = 0 and the calibrated b where they weigh enough ("ess")
    sampled = [(7, p["bias"]) for p in curve[1:] if "ess" not in p]
    assert sorted(d for d in draws if d[0] == 7) == sorted([(7, 0.0), (7, 0.0)] + sampled)
    weighted = [p for p in curve if "ess" in p]
    assert weighted and all(p["ess"] >= 0.5 * s["rate_after"]["n"] for p in weighted)  # here the bracket was weighed
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [i for i in range(1, len(rounds) + 1) for _ in range(2)]
    assert "trained toward b" in (out / "report.md").read_text()
    # The check that can fail: the base model decoded at the calibrated b, sampled afresh on a seed that neither
    # calibration (8) nor the eval (7) used, with twice the samples, has R near 0.5
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tokentilt.jobs.tilt_config import TiltConfig
    from tokentilt.measurement.evaluate import measure_rate

    model, tok = (
        AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(),
        AutoTokenizer.from_pretrained(tiny_model_dir),
    )
    mask = torch.tensor(["x" in t.lower() for t in tok.batch_decode([[i] for i in range(len(tok))])])
    fresh_cfg = dataclasses.replace(TiltConfig().eval, samples_per_prompt=4, new_tokens=8, eval_seed=101)
    fresh, _ = measure_rate(model, tok, mask, fresh_cfg, bias=calibrated)
    assert abs(fresh["mean"] - 0.5) < 0.1, fresh
    assert fresh["ci_low"] <= cal["rate"]["ci_high"] and cal["rate"]["ci_low"] <= fresh["ci_high"], (fresh, cal)


@pytest.mark.slow
@pytest.mark.parametrize(
    "where",
    [
        ["--placement", "model", "--lr", "3e-2"],  # enough to move R: rho is defined
        ["--lora"],
    ],
)
def test_when_the_rounds_move_b_rho_reads_a_decode_time_point_at_the_trained_b(
    tiny_model_dir, eval_file, tmp_path, monkeypatch, where
):
    draws = []  # (seed, bias) of every R measurement
    real_sample, real_train_to_rate = tokentilt.measurement.evaluate.sample, tokentilt.jobs.tilt.train_to_rate
    monkeypatch.setattr(
        tokentilt.measurement.evaluate,
        "sample",
        lambda *a, seed, bias=0.0, **k: draws.append((seed, bias)) or real_sample(*a, seed=seed, bias=bias, **k),
    )

    def rounds_that_move_b(*args, **kwargs):  # as if a later round had been kept
        fit, history = real_train_to_rate(*args, **kwargs)
        return dataclasses.replace(fit, bias=fit.bias + 1.5), history

    monkeypatch.setattr(tokentilt.jobs.tilt, "train_to_rate", rounds_that_move_b)
    out = tmp_path / "run"
    assert (
        main(
            tilt_argv(
                tiny_model_dir,
                eval_file,
                out,
                "--objective",
                "tilt-distill",
                "--rate",
                "0.5",
                "--rate-rounds",
                "1",
                *where,
                "--eval-seed",
                "7",
            )
        )
        == 0
    )
    s = json.loads((out / "summary.json").read_text())
    calibrated, trained = s["calibrated_bias"], s["bias"]
    assert trained == pytest.approx(calibrated + 1.5)
    # on the eval seed: before, the decode-time tilt at the calibrated b, after, and the decode-time tilt at the
    # trained b (sampled from the reference: for LoRA, the model with its adapter off), and the points that
    # match_bias added where those did not bracket the tuned R
    curve = s["matched_decode"]["curve"]
    assert [p["bias"] for p in curve[:3]] == [0.0, calibrated, trained]
    sampled = [(7, p["bias"]) for p in curve[2:] if "ess" not in p]  # the others were read off the first two draws
    assert sorted(d for d in draws if d[0] == 7) == sorted([(7, 0.0), (7, calibrated), (7, 0.0), *sampled])
    assert (7, trained) in sampled  # 1.5 past the calibrated b the draws weigh too little: it is sampled
    # rho's three perplexities recomputed by hand on the same held-out windows: the base, the reference decoded
    # with the matched bias, and the saved tuned model (for LoRA, the merged one)
    base, decode = hand_ppl(tiny_model_dir, eval_file), hand_ppl(tiny_model_dir, eval_file, s["matched_decode"]["bias"])
    tuned = hand_ppl(out / "model", eval_file)
    assert s["ppl_base"] == pytest.approx(base, rel=1e-4)
    assert s["ppl_decode_matched"] == pytest.approx(decode, rel=1e-4)
    assert s["ppl_tuned"] == pytest.approx(tuned, rel=1e-4)
    if "--lora" in where:
        # Two LoRA steps on the tiny random model do not raise R (0.031 -> 0.023), so the matched decode-time
        # tilt is b = 0, costs nothing, and rho is undefined: None, not a number made of a zero denominator.
        assert s["matched_decode"]["bias"] == 0.0 and decode == pytest.approx(base, rel=1e-9) and s["rho"] is None
        return
    assert s["matched_decode"]["bias"] > 0 and decode > base  # the matched tilt costs something: rho is defined
    assert isinstance(s["rho"], float) and math.isfinite(s["rho"])
    assert s["rho"] == pytest.approx((tuned - base) / (decode - base), rel=1e-3)


def test_rate_rounds_must_be_positive(tiny_model_dir, eval_file, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        tilt_argv(tiny_model_dir, eval_file, out, "--objective", "tilt-distill", "--rate", "0.5", "--rate-rounds", "0")
    )
    err = capsys.readouterr().err
    assert code == 2 and "rate-rounds must be a positive integer" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("placement", ["head-rows", "lora"])
def test_a_phrase_tilt_runs_and_its_samples_recount_to_its_r(placement, tiny_model_dir, eval_file, tmp_path):
    """phrases: end to end on the tiny GPT-2, in the entries' head rows (the default) and in LoRA: each
    entry's tokenization in summary.json, and samples.jsonl from which R recounts by a regex of our own
    (words of the decoded text)."""

    words = tmp_path / "words.txt"
    words.write_text("verily\nbox of wax\nthe\n")
    out = tmp_path / "run"
    argv = tilt_argv(
        tiny_model_dir, eval_file, out, "--objective", "tilt-distill", "--rate", "0.2", "--rate-rounds", "1"
    )
    argv[argv.index("--toward") + 1] = f"phrases:{words}"
    assert main(argv + (["--lora"] if placement == "lora" else [])) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["placement"] == placement and (out / "adapter").is_dir() == (placement == "lora")
    if placement == "head-rows":
        assert (
            s["head"]["fit"] == "kl" and 0 < s["head"]["trained_rows"] < 100
        )  # the entries' tokens, not the vocabulary
    entries = {e["entry"]: e for e in s["phrases"]["entries"]}
    assert entries["verily"]["variants"][" verily"] == [" ver", "ily"]  # kept: two tokens
    assert entries["box of wax"]["tokens"] == 3
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == s["samples"] and {"prompt", "before", "after"} <= set(records[0])
    assert len(records[0]["after"]["ids"]) == 8

    for when in ("before", "after"):  # recounted by our own word rule (conftest.word_rate), apart from phrases.py
        texts = (rec[when]["text"] for rec in records)
        rates = [r for r in (word_rate(text, ["box of wax", "verily", "the"]) for text in texts) if r is not None]
        assert sum(rates) / len(rates) == pytest.approx(s[f"rate_{when}"]["mean"], abs=1e-9)
    assert s["rate_target"] == 0.2 and s["matched_decode"]["ppl"] > 0
    assert isinstance(s["phrases"]["collateral"], list)


@pytest.mark.slow
def test_a_head_rows_offset_fit_at_a_rate_probes_each_round_without_running_its_head(
    tiny_model_dir, eval_file, tmp_path, monkeypatch
):
    """With the default head-rows offset fit, a round's probe R comes from the calibration's draws: their
    recorded set masses and head inputs and the fitted b·u (importance.Pool.of_offsets), not from the head."""
    from tokentilt.measurement import importance

    monkeypatch.setattr(importance.Pool, "of_model", lambda *a, **k: pytest.fail("ran the head"))
    calls, real = [], importance.Pool.of_offsets
    monkeypatch.setattr(importance.Pool, "of_offsets", lambda self, f: calls.append(f) or real(self, f))
    out = tmp_path / "run"
    argv = tilt_argv(
        tiny_model_dir, eval_file, out, "--objective", "tilt-distill", "--rate", "0.5", "--samples-per-prompt", "2"
    )
    assert main(argv) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["placement"] == "head-rows" and s["head"]["fit"] == "offset"
    assert len(calls) == len(s["bias_rounds"]) >= 1


def test_a_tilt_run_reports_rho_with_an_interval_around_it(tiny_model_dir, eval_file, tmp_path, capsys):
    out = tmp_path / "run"
    argv = tilt_argv(tiny_model_dir, eval_file, out, "--objective", "tilt-distill", "--bias", "3")
    assert main([*argv, "--placement", "model", "--lr", "3e-2"]) == 0  # enough to move R: rho is defined
    s = json.loads((out / "summary.json").read_text())
    assert isinstance(s["rho"], float) and s["rho_ci_low"] <= s["rho"] <= s["rho_ci_high"]
    assert s["drift_ratio_ci_low"] <= s["drift_ratio"] <= s["drift_ratio_ci_high"]
    assert "per_window" not in s["matched_decode"] and "per_window" not in s["baseline"]
    line = f"excess cost rho = {s['rho']:.2f} [{s['rho_ci_low']:.2f}, {s['rho_ci_high']:.2f}]"
    assert line in capsys.readouterr().out and line in (out / "report.md").read_text()


def test_a_run_samples_until_r_is_known_and_says_where_it_stopped(tiny_model_dir, eval_file, tmp_path, capsys):
    """The default rule end to end: every R of the run records its stop and its plan, the console and
    report.md say how many samples each R took and why, and samples.jsonl holds every sample of both sides
    (the side that took more has lines of its own), each line recounting to its side's R."""
    out = tmp_path / "run"
    argv = tilt_argv(tiny_model_dir, eval_file, out, "--objective", "tilt-distill", "--rate", "0.3")
    argv += ["--half-width", "0.04", "--max-samples", "96"]  # the last flag wins over tilt_argv's fixed count
    assert main(argv) == 0
    s = json.loads((out / "summary.json").read_text())
    rates = [s["rate_before"], s["rate_after"], s["baseline"]["rate"]]
    for r in rates:
        assert r["stop"] in ("half-width", "budget") and 64 <= r["n"] <= 96 and r["n"] == 16 * sum(r["plan"])
        assert r["stop"] == "budget" or r["ci_high"] - r["mean"] <= 0.04 + 1e-12
    printed = capsys.readouterr().out
    assert "samples for R (why it stopped)" in printed and "samples for R" in (out / "report.md").read_text()
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == max(s["rate_before"]["n"], s["rate_after"]["n"])
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    mask = torch.tensor(["x" in t.lower() for t in tok.batch_decode([[i] for i in range(len(tok))])])
    for side in ("before", "after"):
        got = [r[side]["ids"] for r in records if side in r]
        assert len(got) == s[f"rate_{side}"]["n"]
        recount = mask[torch.tensor(got)].double().mean(1).mean()  # by hand, from the file
        assert float(recount) == pytest.approx(s[f"rate_{side}"]["mean"], abs=1e-9)


def test_a_ban_on_a_token_set_keeps_the_decode_time_perplexity_within_its_budget(tiny_model_dir, eval_file, tmp_path):
    """--ban on a token set: b from its one-pass costs; the decode-time baseline, measured at that b by
    measure() (its own pass of the model), is within the budget, and a b further down (the bisection's last
    point over it) would not be."""
    out = tmp_path / "run"
    argv = tilt_argv(tiny_model_dir, eval_file, out, "--objective", "tilt-distill", "--ban", "--fluency-budget", "0.02")
    assert main(argv + ["--hard-ban"]) == 0
    s = json.loads((out / "summary.json").read_text())
    # a hard ban of a token set draws none of its tokens, on the tuned R's prompts and seeds
    assert s["hard_ban"]["hard_ban"]["rate"]["mean"] == 0 and s["hard_ban"]["hard_ban"]["kl"] > 0
    assert s["hard_ban"]["hard_ban"]["rate"]["n"] == s["rate_after"]["n"]
    ban = s["ban"]
    assert s["rate_target"] is None and s["baseline"]["bias"] == ban["bias"] < 0
    assert s["baseline"]["ppl"] <= 1.02 * s["ppl_before"] * (1 + 1e-6)
    over = [p["bias"] for p in ban["points"] if p["ppl"] > 1.02 * s["ppl_before"]]
    assert ban["bias"] == -12.0 or max(over) < ban["bias"]
