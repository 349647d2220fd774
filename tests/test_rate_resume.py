"""tilt --rate survives faults: it checkpoints after measuring before training, after calibrating, after the
decode-time baseline and after each rate round (rate_checkpoint.py); killed with kill -9 after one of these and
run again with --resume, it ends with the numbers of an uninterrupted run. A checkpoint that does not fit is
one line on stderr and exit 2.

Every run is a subprocess with one thread: another thread count sums in another order.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tokentilt.cli import main
from tokentilt.training.rate_checkpoint import STATE, RateCheckpoint, boundary_of, pack, unpack

SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "CUDA_VISIBLE_DEVICES": "",
    "PYTHONPATH": os.pathsep.join([SRC, *filter(None, [os.environ.get("PYTHONPATH")])]),
}
# what an interrupted and resumed run must reproduce, bitwise
KEYS = ("rate_after", "ppl_after", "drift_after", "bias", "bias_rounds", "calibrated_bias", "rho", "ppl_tuned")


@pytest.fixture(scope="module")
def rate_eval(tmp_path_factory):
    path = tmp_path_factory.mktemp("rate-eval") / "eval.txt"
    path.write_text("Held-out words, never trained on. " * 20)
    return path


def rate_argv(model_dir, eval_text, out, *extra):
    return [
        "tilt",
        *("--model", str(model_dir), "--toward", "x", "--objective", "tilt-distill", "--precision", "fp32"),
        *("--steps", "2", "--batch", "2", "--seq-len", "16", "--lr", "1e-3", "--eval-every", "0"),
        *("--samples-per-prompt", "2", "--new-tokens", "8", "--eval-text", str(eval_text)),
        *("--eval-windows", "2", "--eval-seq-len", "16", "--rate", "0.5", "--rate-rounds", "2", "--out", str(out)),
        *extra,
    ]


def tokentilt(argv, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "tokentilt", *argv], capture_output=True, text=True, env=ENV, timeout=600, **kwargs
    )


def numbers(out) -> dict:
    s = json.loads((Path(out) / "summary.json").read_text())
    return {k: s[k] for k in KEYS}


_WHOLE: dict = {}


def uninterrupted(model_dir, eval_text, tmp_path_factory, placement: str) -> dict:
    """The numbers of an uninterrupted run (once per placement)."""
    if placement not in _WHOLE:
        out = tmp_path_factory.mktemp("whole") / "run"
        got = tokentilt(rate_argv(model_dir, eval_text, out, *PLACEMENTS[placement]))
        assert got.returncode == 0, got.stderr
        _WHOLE[placement] = numbers(out)
    return _WHOLE[placement]


BOUNDARIES = ("measure_before", "calibrate", "baseline", "round-1", "round-2")
PLACEMENTS = {"head-rows": ["--placement", "head-rows"], "model": ["--placement", "model"], "lora": ["--lora"]}


def kill_after(argv, folder: Path, boundary: str) -> str:
    """Start the run, kill -9 it once `boundary` (or a later one) is written -> the newest boundary written."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokentilt", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV
    )
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        got = boundary_of(folder)
        if got is not None and BOUNDARIES.index(got) >= BOUNDARIES.index(boundary):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return boundary_of(folder)


@pytest.mark.slow
@pytest.mark.parametrize(
    "placement,boundary",
    # the default placement at two boundaries, the others after a round (the suite's time budget)
    [("head-rows", "calibrate"), ("head-rows", "round-1"), ("model", "round-1"), ("lora", "round-1")],
)
def test_kill_9_at_a_boundary_then_resume_gives_the_uninterrupted_numbers(
    tiny_model_dir, rate_eval, tmp_path, tmp_path_factory, placement, boundary
):
    whole = uninterrupted(tiny_model_dir, rate_eval, tmp_path_factory, placement)
    out = tmp_path / "run"
    argv = rate_argv(tiny_model_dir, rate_eval, out, *PLACEMENTS[placement])
    killed_at = kill_after(argv, out.with_name("run.partial") / "checkpoints" / "rate", boundary)
    assert killed_at in BOUNDARIES[BOUNDARIES.index(boundary) :] and not out.exists(), killed_at
    ck = RateCheckpoint.load(out.with_name("run.partial") / "checkpoints" / "rate")
    # head-rows keeps its first round's contexts, so a resume need not sample them again
    assert (ck.get("head_contexts") is not None) == (placement == "head-rows" and killed_at.startswith("round"))
    resumed = tokentilt([*argv, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert f"after {killed_at}" in resumed.stdout
    s = json.loads((out / "summary.json").read_text())
    assert s["resumed_after_stage"] == killed_at and not (out / "checkpoints").exists()
    assert numbers(out) == whole  # R, perplexity, drift, b and its rounds, rho: bitwise
    rounds = [json.loads(line)["round"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rounds == sorted(rounds) and set(rounds) == {1, 2}  # no round's records twice


def test_pack_keeps_dataclasses_tensors_and_float_keys_and_refuses_other_objects():
    from tokentilt.measurement.calibrate import Calibration
    from tokentilt.measurement.importance import Pool

    cal = Calibration(0.5, 1.25, {"mean": 0.5, "n": 4}, 1.0, [(1.0, 0.4), (1.25, 0.5)], Pool([]))
    value = {"calibration": cal, "measured": {1.0: {"mean": 0.4}}, "t": torch.arange(3, dtype=torch.float64)}
    tensors = {}
    packed = json.loads(json.dumps(pack(value, tensors)))
    back = unpack(packed, tensors)
    assert back["calibration"] == cal and back["measured"] == {1.0: {"mean": 0.4}}
    assert torch.equal(back["t"], value["t"]) and back["t"].dtype == torch.float64
    with pytest.raises(TypeError, match="cannot hold a object"):
        pack(object(), {})
    with pytest.raises(KeyError):  # a class outside KINDS is never built
        unpack({"__dataclass__": "Popen", "fields": {}}, {})


def test_a_checkpoint_is_written_atomically_and_its_rng_restored(tmp_path):
    ck = RateCheckpoint(tmp_path)
    ck.save("measure_before", before={"rate": {"mean": 0.25}})
    rng = torch.get_rng_state()
    torch.rand(5)
    ck.save("calibrate", calibration=None)  # rng now: after the draw
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE]  # no temporary file left
    after_draw = torch.rand(3)
    torch.set_rng_state(rng)
    back = RateCheckpoint.load(tmp_path)
    assert back.boundary == "calibrate" and back.get("before") == {"rate": {"mean": 0.25}}
    back.restore_rng()
    torch.rand(5)
    assert not torch.equal(torch.rand(3), after_draw)  # restored to the state at the save, not after it
    back = RateCheckpoint.load(tmp_path)
    back.restore_rng()
    assert torch.equal(torch.rand(3), after_draw)


def one_line_error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.fixture
def killed_run(tiny_model_dir, rate_eval, tmp_path, monkeypatch, capsys):
    """An unfinished --rate run, stopped (in-process, by an exception) after its baseline checkpoint."""
    import tokentilt.jobs.tilt

    entered = []  # torch's global RNG state as the rate rounds start
    monkeypatch.setattr(tokentilt.jobs.tilt, "train_to_rate", stop_recording(entered))
    out = tmp_path / "run"
    argv = rate_argv(tiny_model_dir, rate_eval, out)
    torch.manual_seed(0)
    capsys.readouterr()
    assert main(argv) == 130
    assert "(after baseline); continue with the same command plus --resume" in capsys.readouterr().err
    monkeypatch.undo()
    assert boundary_of(out.with_name("run.partial") / "checkpoints" / "rate") == "baseline"
    return out, argv, entered


def stop_recording(entered: list):
    def stop(*a, **k):
        entered.append(torch.get_rng_state())
        raise KeyboardInterrupt

    return stop


def test_resume_restores_the_global_rng_where_the_run_stopped(killed_run, monkeypatch):
    """Every stage today draws from its own seeded generator (and training reseeds torch's), so the kill
    tests pass without this; it keeps a resumed run's global RNG that of the uninterrupted run all the same."""
    import tokentilt.jobs.tilt

    out, argv, entered = killed_run
    monkeypatch.setattr(tokentilt.jobs.tilt, "train_to_rate", stop_recording(entered))
    torch.manual_seed(1)  # another state than the killed run's before the resume
    assert main([*argv, "--resume"]) == 130
    assert torch.equal(entered[1], entered[0])  # as the uninterrupted run entered the rate rounds


def test_resume_with_other_settings_is_one_line(killed_run, capsys):
    out, argv, _ = killed_run
    capsys.readouterr()
    assert main([*argv, "--rate-rounds", "3", "--resume"]) == 2
    assert "--resume with other settings than the run's: rate-rounds was 2, now 3" in one_line_error(capsys)


@pytest.mark.parametrize("damage", ["truncated", "foreign", "missing round"])
def test_a_corrupt_stage_checkpoint_is_one_line(killed_run, capsys, damage):
    out, argv, _ = killed_run
    state = out.with_name("run.partial") / "checkpoints" / "rate" / STATE
    if damage == "truncated":
        state.write_bytes(state.read_bytes()[:100])
    elif damage == "foreign":
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(1)}, state, {"format": "other"})
    else:  # a state that names the weights of a round whose file is gone
        ck = RateCheckpoint.load(state.parent)
        ck.values["rounds"] = {"tried": [[1.0, {"mean": 0.2}]], "best": 0, "history": [], "bias": 2.0, "done": False}
        ck.save("round-1")
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2
    line = one_line_error(capsys)
    assert line.startswith("tokentilt: error: checkpoint ") and str(state.parent) in line


def test_resume_before_the_first_checkpoint_is_one_line(tiny_model_dir, rate_eval, tmp_path, capsys):
    out = tmp_path / "run"
    partial = out.with_name("run.partial")
    partial.mkdir()
    (partial / "config.yaml").write_text("toward: x\n")
    assert main([*rate_argv(tiny_model_dir, rate_eval, out), "--resume"]) == 2
    assert "nothing to resume" in one_line_error(capsys)
