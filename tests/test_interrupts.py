"""Interrupted work on the tiny model: Ctrl-C in every subcommand exits 130 with one line and leaves
nothing, or an unfinished folder, never a complete-looking one; kill -9 during a sweep, then the same
command again, redoes only the unfinished runs and gives the table of an uninterrupted sweep.

(tilt's Ctrl-C, with its checkpoint, is in test_cli_engine.py and test_engine.py.)
Ctrl-C is a real SIGINT that the process sends itself from inside the work: from a wrapped
objective during training, or from a wrapped measurement.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import tokentilt.course.pretraining
import tokentilt.jobs.eval
import tokentilt.jobs.pretrain
import tokentilt.measurement.sampling
import tokentilt.objectives.losses
from tokentilt.cli import main
from tokentilt.data import corpus

TEXT = "The quick brown fox jumps over the lazy dog, and the box of wax is next to the axe. " * 30


def ctrl_c_on_call(fn, n: int):
    """fn, except that its n-th call first sends this process SIGINT (as Ctrl-C in a terminal does)."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGINT)
        return fn(*args, **kwargs)

    return wrapper


@pytest.fixture
def eval_text(tmp_path):
    path = tmp_path / "eval.txt"
    path.write_text(TEXT)
    return path


def sweep_argv(model_dir, text, out, steps="3"):
    return [
        "sweep",
        "--model",
        str(model_dir),
        "--toward",
        "x",
        "--objective",
        "kl-alpha-beta",
        "--lr",
        "1e-3,2e-3,3e-3",
        "--rate",
        "",
        "--bias",
        "3",
        "--curve-points",
        "0",
        "--steps",
        steps,
        "--batch",
        "2",
        "--seq-len",
        "16",
        "--samples-per-prompt",
        "1",
        "--new-tokens",
        "6",
        "--eval-text",
        str(text),
        "--eval-windows",
        "2",
        "--eval-seq-len",
        "16",
        "--out",
        str(out),
    ]


def one_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


def run_records(folder):
    return [
        json.loads(line)
        for line in (folder / "runs.jsonl").read_text().splitlines()
        if json.loads(line).get("kind") == "run"
    ]


def table(folder):
    """sweep.csv without the seconds column, which no two runs share."""
    with (folder / "sweep.csv").open() as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def test_ctrl_c_in_a_sweep_keeps_the_finished_runs_and_the_same_command_continues(
    tiny_model_dir, eval_text, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "sweep"
    # calls of the objective: 3 per trained run; the 4th is the first step of the second trained run
    monkeypatch.setitem(
        tokentilt.objectives.losses.OBJECTIVES,
        "kl-alpha-beta",
        ctrl_c_on_call(tokentilt.objectives.losses.OBJECTIVES["kl-alpha-beta"], 4),
    )
    capsys.readouterr()
    assert main(sweep_argv(tiny_model_dir, eval_text, out)) == 130
    line = one_line(capsys)
    assert (
        line == f"tokentilt: interrupted; 2 finished runs are kept in {out / 'runs.jsonl'}; the same command continues"
    )
    assert [r["lr"] for r in run_records(out)] == [None, 1e-3]  # the baseline and the first trained run
    assert not (out / "sweep.csv").exists() and not (out / "sweep.md").exists()
    monkeypatch.undo()
    assert main(sweep_argv(tiny_model_dir, eval_text, out)) == 0
    assert "2 of 4 runs already finished" in capsys.readouterr().out
    assert [r["lr"] for r in run_records(out)] == [None, 1e-3, 2e-3, 3e-3]


@pytest.mark.slow
def test_kill_9_during_a_sweep_then_the_same_command_redoes_only_the_unfinished_runs(
    tiny_model_dir, eval_text, tmp_path
):
    # Every sweep runs in a subprocess with one thread: another thread count sums in another order,
    # and the perplexities would differ in the 6th digit.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    whole = tmp_path / "whole"
    subprocess.run(
        [sys.executable, "-m", "tokentilt", *sweep_argv(tiny_model_dir, eval_text, whole, "40")],
        check=True,
        capture_output=True,
        env=env,
        timeout=600,
    )

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokentilt", *sweep_argv(tiny_model_dir, eval_text, out, "40")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    log = out / "runs.jsonl"
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if log.exists() and log.read_text().count('"kind": "run"') >= 2:  # the baseline and one trained run
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = log.read_text()
    done = [r["key"] for r in run_records(out)]
    assert 2 <= len(done) < 4 and not (out / "sweep.csv").exists(), "the sweep must be killed between its runs"

    result = subprocess.run(
        [sys.executable, "-m", "tokentilt", *sweep_argv(tiny_model_dir, eval_text, out, "40")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert f"{len(done)} of 4 runs already finished" in result.stdout
    after = log.read_text()
    complete = [line for line in kept.splitlines(keepends=True) if line.endswith("\n")]
    assert after.startswith("".join(complete))  # the finished runs are kept as they were, not redone
    assert [r["key"] for r in run_records(out)][: len(done)] == done and len(run_records(out)) == 4
    assert table(out) == table(whole)


def test_ctrl_c_in_eval_exits_130_and_writes_nothing(tiny_model_dir, eval_text, tmp_path, monkeypatch, capsys):
    out = tmp_path / "eval.json"
    monkeypatch.setattr(tokentilt.jobs.eval, "measure", ctrl_c_on_call(tokentilt.jobs.eval.measure, 1))
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "--model",
                str(tiny_model_dir),
                "--reference",
                str(tiny_model_dir),
                "--bias",
                "2",
                "--samples-per-prompt",
                "1",
                "--new-tokens",
                "4",
                "--eval-text",
                str(eval_text),
                "--eval-windows",
                "2",
                "--eval-seq-len",
                "16",
                "--out",
                str(out),
            ]
        )
        == 130
    )
    assert one_line(capsys) == "tokentilt: interrupted" and not out.exists()


def test_ctrl_c_in_generate_exits_130_with_one_line(tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setattr(
        tokentilt.measurement.sampling, "sample", ctrl_c_on_call(tokentilt.measurement.sampling.sample, 1)
    )
    capsys.readouterr()
    assert main(["generate", "--model", str(tiny_model_dir), "--prompt", "Hello", "--new-tokens", "4"]) == 130
    assert one_line(capsys) == "tokentilt: interrupted"
    assert "Hello" not in capsys.readouterr().out


def test_ctrl_c_in_pretrain_leaves_an_unfinished_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(corpus, "split_text", lambda split: TEXT)
    monkeypatch.setattr(
        tokentilt.course.pretraining,
        "next_token_objective",
        ctrl_c_on_call(tokentilt.course.pretraining.next_token_objective, 3),
    )
    out = tmp_path / "pre"
    capsys.readouterr()
    assert (
        main(
            [
                "pretrain",
                "--steps",
                "20",
                "--batch",
                "2",
                "--seq-len",
                "16",
                "--n-layer",
                "1",
                "--n-embd",
                "32",
                "--n-head",
                "2",
                "--eval-every",
                "5",
                "--no-bf16",
                "--out",
                str(out),
            ]
        )
        == 130
    )
    assert one_line(capsys) == f"tokentilt: interrupted; the unfinished run stays in {out}.partial"
    partial = tmp_path / "pre.partial"
    assert not out.exists() and (partial / "config.yaml").exists() and not (partial / "summary.json").exists()


def test_ctrl_c_in_an_experiment_leaves_an_unfinished_folder(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(
        tokentilt.objectives.losses.OBJECTIVES,
        "kl-alpha-beta",
        ctrl_c_on_call(tokentilt.objectives.losses.OBJECTIVES["kl-alpha-beta"], 2),
    )
    out = tmp_path / "xf"
    capsys.readouterr()
    assert (
        main(
            [
                "experiment",
                "x-factor",
                "--model",
                str(tiny_model_dir),
                "--epochs",
                "3",
                "--lr",
                "1e-3",
                "--no-bf16",
                "--out",
                str(out),
            ]
        )
        == 130
    )
    assert one_line(capsys) == f"tokentilt: interrupted; the unfinished run stays in {out}.partial"
    assert not out.exists() and not (tmp_path / "xf.partial" / "summary.json").exists()
