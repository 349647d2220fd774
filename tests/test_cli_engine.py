"""`tokentilt tilt` on the engine, end to end on the tiny model: kill -9 and --resume, the NaN stop,
LoRA's two saved forms, and several processes under torchrun and accelerate launch."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM

from tokentilt.cli import main
from tokentilt.measurement.evaluate import EvalConfig, measure_rate
from tokentilt.models.load import load_model
from tokentilt.targets.tokens import resolve_set

SMALL = [
    "--toward",
    "x",
    "--objective",
    "kl-uniform",
    "--precision",
    "fp32",
    "--samples-per-prompt",
    "1",
    "--new-tokens",
    "6",
    "--seq-len",
    "16",
    "--eval-windows",
    "2",
    "--eval-seq-len",
    "32",
]


def tilt_args(model_dir, out, *extra):
    return ["tilt", "--model", str(model_dir), *SMALL, "--out", str(out), *extra]


def records(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def run_cli(args, **kw):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tokentilt", *args], capture_output=True, text=True, env=env, **kw)


@pytest.mark.slow
def test_sigkill_after_step_20_of_40_then_resume_is_bitwise(tmp_path, tiny_model_dir):
    train = ["--steps", "40", "--batch", "2", "--seq-len", "32", "--lr", "1e-2", "--eval-every", "10"]
    assert main(tilt_args(tiny_model_dir, tmp_path / "whole", *train)) == 0
    whole = tmp_path / "whole"

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokentilt", *tilt_args(tiny_model_dir, out, *train, "--save-every", "20")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    step20 = out.with_name("killed.partial") / "checkpoints" / "step-20"
    deadline = time.time() + 120
    while not step20.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert step20.exists() and not out.exists(), "the run must be killed between step 20 and its end"

    assert main(tilt_args(tiny_model_dir, out, *train, "--save-every", "20", "--resume")) == 0
    assert [r["loss"] for r in records(out)] == [r["loss"] for r in records(whole)]
    assert [r["step"] for r in records(out)] == list(range(1, 41))
    a, b = (json.loads((d / "summary.json").read_text()) for d in (whole, out))
    assert a["rate_after"] == b["rate_after"] and a["ppl_after"] == b["ppl_after"]
    assert b["resumed_after_step"] == 20 and not (out / "checkpoints").exists()


@pytest.mark.slow
def test_resume_refuses_a_finished_run_other_settings_and_no_checkpoint(tmp_path, tiny_model_dir, capsys):
    fast = ["--steps", "3", "--batch", "2", "--eval-every", "0"]
    out = tmp_path / "run"
    assert main(tilt_args(tiny_model_dir, out, *fast)) == 0
    capsys.readouterr()
    assert main(tilt_args(tiny_model_dir, out, *fast, "--resume")) == 2
    assert "holds a finished run" in capsys.readouterr().err
    assert main(tilt_args(tiny_model_dir, tmp_path / "none", *fast, "--resume")) == 2
    assert "nothing to resume" in capsys.readouterr().err

    partial = tmp_path / "run.partial"
    shutil.copytree(out, partial)  # an unfinished run: config.yaml, no summary, no checkpoint
    (partial / "summary.json").unlink()
    shutil.rmtree(out)
    assert main(tilt_args(tiny_model_dir, out, *fast, "--resume")) == 2
    assert "holds no checkpoint" in capsys.readouterr().err
    (partial / "checkpoints" / "step-1").mkdir(parents=True)
    assert main(tilt_args(tiny_model_dir, out, *fast, "--lr", "5e-3", "--resume")) == 2
    err = capsys.readouterr().err
    assert "--resume with other settings" in err and "lr was 0.0001, now 0.005" in err
    assert err.count("\n") == 1
    assert main(tilt_args(tiny_model_dir, out, *fast, "--resume", "--overwrite")) == 2
    assert "give one of them" in capsys.readouterr().err


@pytest.mark.slow
def test_nan_loss_exits_3_with_one_line_and_leaves_the_run_unfinished(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    result = run_cli(
        tilt_args(
            tiny_model_dir,
            out,
            "--optimizer",
            "sgd",
            "--lr",
            "1e30",
            "--grad-clip",
            "0",
            "--steps",
            "10",
            "--batch",
            "2",
            "--save-every",
            "1",
            "--eval-every",
            "0",
        )
    )
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("tokentilt: training stopped: loss became") and "newest good checkpoint" in lines[0]
    partial = tmp_path / "run.partial"
    assert not out.exists() and not (partial / "summary.json").exists()
    failure = json.loads((partial / "failure.json").read_text())
    assert (partial / "checkpoints").is_dir() and failure["checkpoint"].startswith(str(partial / "checkpoints"))


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_exits_130_and_says_how_to_resume(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    train = ["--steps", "200", "--batch", "8", "--seq-len", "64", "--eval-every", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokentilt", *tilt_args(tiny_model_dir, out, *train)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    metrics = tmp_path / "run.partial" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert len(err.strip().splitlines()) == 1 and "continue with the same command plus --resume" in err
    step = int(err.split("interrupted after step ")[1].split(";")[0])
    assert (tmp_path / "run.partial" / "checkpoints" / f"step-{step}" / "model.safetensors").exists()


@pytest.mark.slow
def test_lora_run_saves_an_adapter_and_a_merged_model_that_give_the_same_rate(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    assert (
        main(
            tilt_args(
                tiny_model_dir,
                out,
                "--lora",
                "--lora-r",
                "4",
                "--steps",
                "6",
                "--batch",
                "2",
                "--lr",
                "5e-2",
                "--eval-every",
                "0",
            )
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lora"]["r"] == 4 and summary["trainable_params"] < summary["total_params"] / 5
    assert summary["device"] == "cpu" and summary["processes"] == 1 and summary["global_batch"] == 2
    assert 0 < summary["train_peak_rss_mb"] <= summary["peak_rss_mb"]
    assert summary["drift_after"] > 0  # the adapter changed the model (R on 16 short samples may not move)
    base, tokenizer = load_model(str(tiny_model_dir))
    adapter = PeftModel.from_pretrained(base, out / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    assert not any("lora" in name for name in merged.state_dict())
    mask = resolve_set("x", tokenizer, 50257).mask
    cfg = EvalConfig(samples_per_prompt=1, new_tokens=6)
    r_adapter = measure_rate(adapter, tokenizer, mask, cfg)[0]
    r_merged = measure_rate(merged, tokenizer, mask, cfg)[0]
    assert r_adapter == r_merged
    assert r_adapter["mean"] == summary["rate_after"]["mean"]


def launch(launcher, tiny_model_dir, out, batch):
    args = tilt_args(
        tiny_model_dir,
        out,
        "--steps",
        "5",
        "--batch",
        str(batch),
        "--lr",
        "1e-2",
        "--eval-every",
        "0",
        "--objective",
        "tilt-distill",
        "--rate",
        "0",
        "--placement",
        "model",
        "--inputs",
        "random",
    )  # fixed b
    return subprocess.run(
        [*launcher, "-m", "tokentilt", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""},
    )


@pytest.fixture(scope="module")
def one_process(tiny_model_dir, tmp_path_factory):
    """The run that both launchers are compared with: one process at the global batch of 4."""
    out = tmp_path_factory.mktemp("one-process") / "run"
    one = launch([sys.executable], tiny_model_dir, out, batch=4)
    assert one.returncode == 0, one.stderr
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher",
    [
        ["torchrun", "--standalone", "--nproc_per_node", "2"],
        [
            "accelerate",
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
        ],
    ],
    ids=["torchrun", "accelerate-launch"],
)
def test_two_processes_train_like_one_at_the_same_global_batch(tmp_path, tiny_model_dir, one_process, launcher):
    if shutil.which(launcher[0]) is None:
        pytest.skip(f"{launcher[0]} is not on PATH")
    two = launch(launcher, tiny_model_dir, tmp_path / "two", batch=2)
    assert two.returncode == 0, two.stderr[-3000:]
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["global_batch"] == 4
    assert two.stdout.count("run folder:") == 1  # only the main process prints
    for a, b in zip(records(one_process), records(tmp_path / "two")):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7)
    assert len(records(tmp_path / "two")) == 5
