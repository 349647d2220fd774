"""The `tokentilt` command end to end on a tiny model, and every bad-input path."""

import json
import subprocess
import sys

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

import tokentilt.jobs.tilt
from tokentilt.cli import main

FAST = [
    "--objective",
    "kl-uniform",
    "--precision",
    "fp32",
    "--steps",
    "3",
    "--batch",
    "2",
    "--seq-len",
    "16",
    "--samples-per-prompt",
    "1",
    "--half-width",
    "0",
    "--new-tokens",
    "6",
    "--eval-every",
    "2",
    "--lr",
    "1e-2",
]


def tilt(tmp_path, model_dir, *extra):
    out = tmp_path / "run"
    code = main(["tilt", "--model", str(model_dir), "--toward", "x", *FAST, "--out", str(out), *extra])
    return code, out


T_975 = {3: 3.182446305284263, 15: 2.131449545559323}  # Student-t 0.975 quantiles by degrees of freedom


def x_mask(tokenizer) -> torch.Tensor:
    """The selector 'x' recounted by hand: every token whose text holds an x or an X."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return torch.tensor(["x" in t.lower() for t in texts])


def hand_rate(tokens: torch.Tensor, mask: torch.Tensor) -> dict:
    """R and its 95% t interval recounted from the generated ids (N, L), without tokentilt.measurement.metrics."""
    rates = mask[tokens].double().mean(1)  # (N,) each sample's share of set tokens
    n, mean = len(rates), float(rates.mean())
    half = T_975[n - 1] * float(rates.std(unbiased=True)) / n**0.5
    return {"mean": mean, "ci_low": max(mean - half, 0.0), "ci_high": min(mean + half, 1.0), "n": n, "rates": rates}


def assert_rate_is(reported: dict, recount: dict) -> None:
    assert reported["n"] == recount["n"]
    for key in ("mean", "ci_low", "ci_high"):
        assert reported[key] == pytest.approx(recount[key], abs=1e-6), key
    if recount["rates"].min() < recount["rates"].max():  # the samples differ: the interval has width
        assert reported["ci_high"] - reported["ci_low"] > 0.01


@pytest.mark.slow
def test_tilt_writes_a_complete_run_folder(tmp_path, tiny_model_dir, capsys, monkeypatch):
    measured = []  # (bias, reported numbers, samples) of every measure() of the run
    real_measure = tokentilt.jobs.tilt.measure

    def recording_measure(*args, bias=0.0, **kwargs):
        result, samples = real_measure(*args, bias=bias, **kwargs)
        measured.append((bias, result, samples))
        return result, samples

    monkeypatch.setattr(tokentilt.jobs.tilt, "measure", recording_measure)
    code, out = tilt(tmp_path, tiny_model_dir)
    assert code == 0
    names = {p.name for p in out.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "summary.json", "loss.png", "rate.png", "report.md", "model"} <= names
    assert not (tmp_path / "run.partial").exists()
    summary = json.loads((out / "summary.json").read_text())
    for key in ("model", "selector", "target_size", "vocab_size", "objective", "steps", "seconds"):
        assert key in summary
    assert summary["vocab_size"] == 50257 and summary["steps"] == 3 and summary["selector"] == "x"
    assert 0 < summary["target_size"] < 50257
    # R before and after, recounted from the very samples the run drew: 16 prompts x 1 sample x 6 tokens
    mask = x_mask(AutoTokenizer.from_pretrained(tiny_model_dir))
    assert int(mask.sum()) == summary["target_size"]
    unbiased = [(result, samples) for bias, result, samples in measured if not bias]
    assert len(unbiased) == 2  # before and after training
    for key, (result, samples) in zip(("rate_before", "rate_after"), unbiased):
        assert samples.tokens.shape == (16, 6) and summary["samples"] == 16
        recount = hand_rate(samples.tokens, mask)
        assert summary[key] == result["rate"]
        assert_rate_is(summary[key], recount)
        assert abs(summary[key]["mean"] * 96 - round(summary[key]["mean"] * 96)) < 1e-4  # k set tokens of 96
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3] and "rate" in metrics[1]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["lr"] == 1e-2 and config["steps"] == 3 and config["toward"] == "x"
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert "Samples after" in (out / "report.md").read_text()
    printed = capsys.readouterr().out
    assert "before" in printed and "after" in printed
    # the saved model loads with plain transformers and differs from the start
    trained = AutoModelForCausalLM.from_pretrained(out / "model")
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not torch.equal(trained.transformer.wte.weight, start.transformer.wte.weight)
    assert (out / "model" / "model.safetensors").exists() and (out / "model" / "tokenizer.json").exists()


@pytest.mark.slow
def test_yaml_config_and_flags_override_it(tmp_path, tiny_model_dir):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 1e-3\nsteps: 2\nobjective: kl-alpha-beta\nseed: 5\nbeta: 0.001\n")
    code, out = tilt(tmp_path, tiny_model_dir, "--config", str(cfg), "--steps", "3")
    assert code == 0
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["seed"] == 5 and resolved["beta"] == 0.001  # from the YAML
    assert resolved["objective"] == "kl-uniform"  # FAST's --objective flag beats the YAML's
    assert resolved["steps"] == 3 and resolved["lr"] == 1e-2  # flags beat the YAML


@pytest.mark.slow
def test_same_seed_gives_same_numbers(tmp_path, tiny_model_dir):
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert main(["tilt", "--model", str(tiny_model_dir), "--toward", "e", *FAST, "--out", str(out)]) == 0
        runs.append(json.loads((out / "summary.json").read_text()))
    for key in ("rate_before", "rate_after", "loss_start", "loss_end"):
        assert runs[0][key] == runs[1][key]


@pytest.mark.slow
def test_refuses_a_folder_holding_a_run_unless_overwrite(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    code, _ = tilt(tmp_path, tiny_model_dir)
    err = capsys.readouterr().err
    assert code == 2 and "already holds a run" in err and (out / "summary.json").read_text() == "{}"
    code, _ = tilt(tmp_path, tiny_model_dir, "--overwrite")
    err = capsys.readouterr().err
    assert code == 0 and "tokentilt: error:" not in err  # --overwrite replaces the old run
    assert json.loads((out / "summary.json").read_text())["steps"] == 3


@pytest.mark.parametrize(
    "args,message",
    [
        (["--toward", "foo:bar"], "unknown selector kind 'foo'"),
        (["--toward", "regex:("], "bad regular expression"),
        (["--toward", "contains:qqqqzzzz"], "matches no token"),
        (["--toward", "regex:"], "matches every token"),
        (["--toward", "words:/nonexistent/words.txt"], "words file not found"),
        (["--model", "/nonexistent/model"], "model folder not found"),
        (["--lr", "0"], "lr must be positive"),
        (["--steps", "0"], "steps must be positive"),
        (["--batch", "-2"], "batch must be positive"),
        (["--seq-len", "0"], "seq-len must be positive"),
        (["--config", "/nonexistent.yaml"], "config file not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, tiny_model_dir, capsys, args, message):
    out = tmp_path / "run"
    argv = ["tilt", "--model", str(tiny_model_dir), "--toward", "x", *FAST, "--out", str(out), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("tokentilt: error:")
    assert not (out / "summary.json").exists()


def test_bad_yaml_values_and_keys(tmp_path, tiny_model_dir, capsys):
    for text, message in [
        ("lr: fast\n", "bad value for lr"),
        ("colour: red\n", "unknown option(s) in config file"),
        ("- a\n- b\n", "must hold a mapping"),
    ]:
        cfg = tmp_path / "bad.yaml"
        cfg.write_text(text)
        code, _ = tilt(tmp_path, tiny_model_dir, "--config", str(cfg))
        assert code == 2 and message in capsys.readouterr().err


def test_help_and_no_traceback_from_a_subprocess(tmp_path):
    done = subprocess.run([sys.executable, "-m", "tokentilt", "tilt", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    for flag in (
        "--toward",
        "--objective",
        "--positions",
        "--lr",
        "--steps",
        "--batch",
        "--seq-len",
        "--bf16",
        "--seed",
        "--out",
        "--config",
        "--overwrite",
        "--model",
    ):
        assert flag in done.stdout
    done = subprocess.run(
        [sys.executable, "-m", "tokentilt", "tilt", "--toward", "regex:(", "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr and "bad regular expression" in done.stderr
    assert not (tmp_path / "r").exists()


def test_generate_command_with_bias(tiny_model_dir, capsys):
    code = main(
        [
            "generate",
            "--model",
            str(tiny_model_dir),
            "--prompt",
            "Hello",
            "--samples",
            "3",
            "--new-tokens",
            "5",
            "--toward",
            "x",
            "--bias",
            "50",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "R = 1.000" in out and out.count("--- 'Hello'") == 3


def test_flat_config_reaches_nested_fields_and_keeps_factory_defaults():
    from tokentilt.config import from_flat, to_flat
    from tokentilt.jobs.sweep import SweepConfig
    from tokentilt.jobs.tilt_config import TiltConfig

    sweep = from_flat(SweepConfig, {"steps": 7, "lr": 0.5, "new_tokens": 9, "toward": "q"})
    assert (sweep.train.steps, sweep.train.lr, sweep.eval.new_tokens, sweep.toward) == (7, 0.5, 9, "q")
    assert sweep.train.eval_every == 0  # the sweep's own nested default survives
    tilt = TiltConfig()
    assert from_flat(TiltConfig, to_flat(tilt)) == tilt


@pytest.fixture(scope="module")
def confident_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny GPT-2 made to predict ' the' everywhere: held-out perplexity ~1.2 on a text of ' the'."""
    folder = tmp_path_factory.mktemp("confident")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(model.transformer.wte.weight[262] * 4000)  # 262 = ' the'
    model.save_pretrained(folder)
    for f in tiny_model_dir.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "merges", "special")):
            (folder / f.name).write_bytes(f.read_bytes())
    return folder


@pytest.mark.slow
def test_a_model_no_better_than_uniform_after_training_is_a_warning_not_an_error(
    tmp_path, tiny_model_dir, confident_model_dir, capsys
):
    text = tmp_path / "the.txt"
    text.write_text(" the" * 300)
    small = [
        "--toward",
        "x",
        "--objective",
        "kl-uniform",
        "--precision",
        "fp32",
        "--steps",
        "2",
        "--batch",
        "2",
        "--seq-len",
        "16",
        "--samples-per-prompt",
        "1",
        "--half-width",
        "0",
        "--new-tokens",
        "4",
        "--eval-every",
        "0",
        "--eval-text",
        str(text),
        "--eval-windows",
        "2",
        "--eval-seq-len",
        "16",
        "--optimizer",
        "sgd",
        "--grad-clip",
        "0",
    ]
    summaries = {}
    for name, model, lr in [("random", tiny_model_dir, "1e-2"), ("confident", confident_model_dir, "1e-6")]:
        capsys.readouterr()
        assert main(["tilt", "--model", str(model), *small, "--lr", lr, "--out", str(tmp_path / name)]) == 0
        summaries[name] = json.loads((tmp_path / name / "summary.json").read_text())
        summaries[name]["stderr"] = [ln for ln in capsys.readouterr().err.splitlines() if "tokentilt:" in ln]
    random, confident = summaries["random"], summaries["confident"]
    # a random tiny model predicts no better than uniform (ppl ~ V = 50257), before and after
    assert random["ppl_after"] > 50257 / 2 and len(random["warnings"]) == 1
    assert random["stderr"] == [f"tokentilt: warning: {random['warnings'][0]}"]
    assert "near or above the vocabulary size 50,257" in random["warnings"][0]
    assert confident["ppl_after"] < 2 and confident["warnings"] == [] and confident["stderr"] == []
