"""The training engine in one process: grad accumulation, checkpoints, bitwise resume, faults, trackers."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from conftest import tiny_gpt2, tiny_llama
from tokentilt.data.corpus import random_tokens
from tokentilt.objectives.losses import OBJECTIVES, ObjectiveContext
from tokentilt.training import checkpoint
from tokentilt.training.engine import make_accelerator, resolve_device
from tokentilt.training.loop import Interrupted, TrainConfig, TrainingDiverged, train, training_attention


def dropout_gpt2(seed=0):
    """Dropout on, so a resume that lost torch's RNG state would train differently."""
    torch.manual_seed(seed)
    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=64,
            n_positions=64,
            n_embd=32,
            n_layer=2,
            n_head=4,
            resid_pdrop=0.1,
            embd_pdrop=0.1,
            attn_pdrop=0.1,
        )
    )


def fit(model, run_dir=None, resume=False, log=None, **overrides):
    mask = torch.zeros(64, dtype=torch.bool)
    mask[[3, 7, 11]] = True
    cfg = TrainConfig(**{"lr": 1e-2, "steps": 8, "batch": 2, "seq_len": 8, "eval_every": 0, **overrides})
    ctx = ObjectiveContext(mask=mask, positions="all")
    return train(
        model,
        OBJECTIVES["kl-uniform"],
        ctx,
        lambda g, rows: random_tokens(64, rows, cfg.seq_len, g),
        cfg,
        progress=False,
        run_dir=run_dir,
        resume=resume,
        log=log,
    )


def test_grad_accum_equals_the_larger_batch():
    a, b = tiny_gpt2(), tiny_gpt2()
    full = fit(a, batch=4, steps=5, optimizer="sgd", lr=0.5)
    accum = fit(b, batch=2, grad_accum=2, steps=5, optimizer="sgd", lr=0.5)
    for x, y in zip(full, accum):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5, abs=1e-6)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-4)
    assert full[-1]["loss"] < full[0]["loss"]
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
    assert TrainConfig(batch=3, grad_accum=2).global_batch(processes=4) == 24


def test_sigint_checkpoints_then_resume_is_bitwise(tmp_path):
    """Ctrl-C after step 5: a checkpoint at step 5, Interrupted; --resume ends where an uninterrupted run ends."""
    whole_model = dropout_gpt2()
    whole = fit(whole_model, optimizer="adamw", weight_decay=0.1)

    def ctrl_c_at_5(record):
        if record["step"] == 5:
            os.kill(os.getpid(), signal.SIGINT)  # the handler only raises a flag; the step finishes

    with pytest.raises(Interrupted, match=r"after step 5; checkpoint .*step-5; .*--resume"):
        fit(dropout_gpt2(), run_dir=tmp_path, log=ctrl_c_at_5, optimizer="adamw", weight_decay=0.1)
    assert [s for s, _ in checkpoint.checkpoints(tmp_path / "checkpoints")] == [5]
    resumed_model = dropout_gpt2(seed=1)  # other weights: all of them must come from the checkpoint
    resumed = fit(resumed_model, run_dir=tmp_path, resume=True, optimizer="adamw", weight_decay=0.1)
    assert [r["loss"] for r in resumed] == [r["loss"] for r in whole]
    assert [r["grad_norm"] for r in resumed] == [r["grad_norm"] for r in whole]
    for p, q in zip(whole_model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)


def test_save_every_keeps_the_newest_k(tmp_path):
    fit(tiny_gpt2(), run_dir=tmp_path, steps=9, save_every=2, keep=2)
    folder = tmp_path / "checkpoints"
    assert [s for s, _ in checkpoint.checkpoints(folder)] == [6, 8]
    step8 = folder / "step-8"
    assert {p.name for p in step8.iterdir()} == {"model.safetensors", "optimizer.pt", "rng-0.pt", "state.json"}
    state = json.loads((step8 / "state.json").read_text())
    assert state["step"] == 8 and [r["step"] for r in state["history"]] == list(range(1, 9))
    assert not list(folder.glob("*.tmp"))


def test_a_corrupt_or_foreign_checkpoint_is_a_clear_error(tmp_path):
    fit(tiny_gpt2(), run_dir=tmp_path, steps=2, save_every=1)
    step1 = tmp_path / "checkpoints" / "step-1"
    (step1 / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(checkpoint.CheckpointError, match="step-1 cannot be read"):
        fit(tiny_gpt2(), run_dir=tmp_path, resume=True)
    other = tmp_path / "other"
    fit(tiny_gpt2(), run_dir=other, steps=2, save_every=1)
    bigger = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=64, n_embd=48, n_layer=2, n_head=4))
    with pytest.raises(checkpoint.CheckpointError, match="does not match this model"):
        fit(bigger, run_dir=other, resume=True)
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint to resume"):
        fit(tiny_gpt2(), run_dir=tmp_path / "empty", resume=True)


def test_a_checkpoint_is_not_unpickled(tmp_path):
    """optimizer.pt holding an arbitrary Python object is refused by torch.load(weights_only=True)."""
    fit(tiny_gpt2(), run_dir=tmp_path, steps=2, save_every=1)
    torch.save(
        {"state": {}, "param_groups": [], "evil": Interrupted("x")},
        tmp_path / "checkpoints" / "step-1" / "optimizer.pt",
    )
    with pytest.raises(checkpoint.CheckpointError, match="cannot be read"):
        fit(tiny_gpt2(), run_dir=tmp_path, resume=True)


def test_non_finite_loss_stops_with_the_reason_and_the_newest_checkpoint(tmp_path):
    with pytest.raises(
        TrainingDiverged,
        match=r"loss became (nan|inf) at step \d+; lower the learning rate; "
        r"newest good checkpoint: .*step-",
    ):
        fit(tiny_gpt2(), run_dir=tmp_path, optimizer="sgd", lr=1e30, grad_clip=0, save_every=1, steps=20)
    failure = json.loads((tmp_path / "failure.json").read_text())
    assert "loss became" in failure["reason"] and failure["checkpoint"].endswith(f"step-{failure['step'] - 1}")
    assert checkpoint.checkpoints(tmp_path / "checkpoints")


def test_tensorboard_tracker_logs_the_loss(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    history = fit(tiny_gpt2(), run_dir=tmp_path, steps=4, report_to="tensorboard")
    logdir = tmp_path / "tensorboard"
    assert list(logdir.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    logged = [(e.step, e.value) for e in acc.Scalars("loss")]
    assert [s for s, _ in logged] == [1, 2, 3, 4]
    assert [v for _, v in logged] == pytest.approx([r["loss"] for r in history], rel=1e-6)


def test_engine_refuses_what_this_machine_cannot_do():
    with pytest.raises(ValueError, match="precision fp16 is not available on cpu"):
        make_accelerator("cpu", "fp16", 1)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda' is not available"):
            resolve_device("cuda")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="report-to tensorboard needs a run folder"):
        make_accelerator("cpu", "fp32", 1, "tensorboard")


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("precision", "fp8", "precision must be one of"),
        ("device", "tpu", "device must be one of"),
        ("grad_accum", 0, "grad-accum must be positive"),
        ("keep", 0, "keep must be positive"),
        ("save_every", -1, "save-every must be >= 0"),
        ("report_to", "comet", "report-to must be one of"),
    ],
)
def test_bad_engine_settings_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value}).check()


def test_bf16_flag_is_precision_bf16():
    cfg = TrainConfig(bf16=True).resolved()
    assert cfg.precision == "bf16" and cfg.bf16
    cfg = TrainConfig(precision="bf16").resolved()
    assert cfg.bf16
    with pytest.raises(ValueError, match="contradict"):
        TrainConfig(bf16=True, precision="fp16").check()


def test_resume_cuts_metrics_back_to_the_checkpoint_and_drops_a_torn_line(tmp_path):
    from tokentilt.runs.folder import keep_records_until

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo')
    keep_records_until(path, 3)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]


def test_peak_memory_can_be_reset_so_training_is_measured_alone():
    """In a fresh process: a long test session's allocator may serve a new block from memory that
    is already resident, so the peak would not move."""
    import subprocess
    import sys

    code = (
        "import numpy as np; from tokentilt.training.engine import peak_rss_mb, reset_peak_rss\n"
        "a = np.ones(2**26); del a  # 512 MiB\n"
        "p0 = peak_rss_mb(); ok = reset_peak_rss(); p1 = peak_rss_mb()\n"
        "a = np.ones(2**26); print(ok, p0, p1, peak_rss_mb())"
    )
    ok, p0, p1, p2 = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    if ok != "True":
        pytest.skip("this platform cannot reset the peak RSS")
    assert float(p1) < float(p0) - 256  # the freed 512 MiB no longer count
    assert float(p2) > float(p1) + 256  # a new allocation does


def test_a_model_trained_twice_runs_under_autocast_both_times():
    """tilt --rate, a sweep and x-factor train one model several times: each must get bf16."""
    model = tiny_gpt2()
    under_autocast = []
    model.transformer.h[0].mlp.c_fc.register_forward_hook(
        lambda module, args, out: under_autocast.append(torch.is_autocast_enabled("cpu"))
    )
    for _ in range(2):
        fit(model, steps=2, precision="bf16")
    # per training: the fused loss's fp32 probe (2 forwards, before prepare), then under autocast the
    # 2 steps and the check that the last update left finite outputs
    assert under_autocast == [False, False, True, True, True] * 2
    assert "forward" not in model.__dict__  # the class's forward is back
    with torch.no_grad():
        assert model(input_ids=torch.ones(1, 4, dtype=torch.long)).logits.dtype == torch.float32


def test_precision_auto_is_bf16_only_where_it_is_native_and_emulated_bf16_warns_once(monkeypatch, capsys):
    from tokentilt.models import device as engine

    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(engine, "native_bf16", lambda device="auto": native)
        cfg = TrainConfig(precision="auto", device="cpu").resolved()
        assert (cfg.precision, cfg.bf16) == (expected, expected == "bf16")
    assert capsys.readouterr().err == ""  # auto never warns
    monkeypatch.setattr(engine, "_warned_bf16", False)
    for _ in range(2):  # asked for by name on an emulating CPU: kept, with one warning per process
        cfg = TrainConfig(bf16=True, device="cpu").resolved()
        assert cfg.precision == "bf16"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tokentilt: warning: this CPU has no native bf16")
    monkeypatch.setattr(engine, "native_bf16", lambda device="auto": True)
    monkeypatch.setattr(engine, "_warned_bf16", False)
    TrainConfig(bf16=True, device="cpu").resolved()
    assert capsys.readouterr().err == ""


class FakeCpu:
    """torch.cpu's private instruction checks, as a CPU with the given ones would answer them."""

    def __init__(self, avx512_bf16=False, amx=False):
        self._is_avx512_bf16_supported = lambda: avx512_bf16
        self._is_amx_tile_supported = lambda: amx


@pytest.mark.parametrize(
    "machine, avx512_bf16, amx, onednn, native",
    [
        ("x86_64", False, False, True, False),  # AVX512 without BF16: oneDNN says yes, and emulates
        ("x86_64", True, False, True, True),  # AVX512-BF16 (Cooper Lake, Zen 4)
        ("x86_64", False, True, True, True),  # AMX (Sapphire Rapids)
        ("AMD64", False, False, False, False),  # AVX2 only, as Windows names x86
        ("aarch64", False, False, True, True),  # ARM: oneDNN reads the BF16 extension itself
        ("aarch64", False, False, False, False),
    ],
)
def test_native_bf16_on_a_cpu_is_the_instructions_not_onednns_word(
    monkeypatch, machine, avx512_bf16, amx, onednn, native
):
    from tokentilt.models import device

    monkeypatch.setattr(device.platform, "machine", lambda: machine)
    monkeypatch.setattr(device.torch, "cpu", FakeCpu(avx512_bf16, amx))
    monkeypatch.setattr(device.torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)
    assert device.native_bf16("cpu") is native
    assert device.cpu_has_bf16(object()) is False  # a torch without the private checks: no


_FAULTS = """
import resource, sys, torch
from tokentilt.training.engine import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
for _ in range(16):  # 64 MB: above glibc's largest mmap threshold (32 MB); the heap settles first
    torch.empty(16 << 20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    torch.empty(16 << 20).fill_(1.0)
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_keep_freed_memory_stops_the_page_faults_of_every_large_allocation():
    def run(mode, **env):
        out = subprocess.run(
            [sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True, env={**os.environ, **env}
        ).stdout.split()
        return out[0] == "True", int(out[1])

    kept, faults = run("keep", TOKENTILT_KEEP_FREED_MEMORY="1")
    plain_kept, plain_faults = run("plain")
    off_kept, off_faults = run("keep", TOKENTILT_KEEP_FREED_MEMORY="0")
    assert kept and not plain_kept and not off_kept
    pages = 4 * (64 << 20) // 4096  # four 64 MB tensors, 4 KiB pages
    assert plain_faults > pages // 2 and off_faults > pages // 2  # each allocation is fresh memory
    assert faults < pages // 20  # ... unless freed memory is kept for the next one


def test_training_attention_is_eager_only_for_short_sequences_on_a_cpu():
    from tokentilt.course.gpt import GPT, GPTConfig

    model = tiny_llama()
    assert training_attention(model, TrainConfig(seq_len=128), "cpu") == "eager"
    assert training_attention(model, TrainConfig(seq_len=129), "cpu") is None  # flash wins on long sequences
    assert training_attention(model, TrainConfig(seq_len=64), "cuda") is None
    assert training_attention(model, TrainConfig(attention="model"), "cpu") is None
    assert training_attention(model, TrainConfig(attention="sdpa"), "cpu") == "sdpa"
    model5 = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16))
    assert training_attention(model5, TrainConfig(), "cpu") is None  # Model 5 keeps its own
    with pytest.raises(ValueError, match="cannot switch its attention"):
        training_attention(model5, TrainConfig(attention="eager"), "cpu")
    with pytest.raises(ValueError, match="attention must be one of"):
        TrainConfig(attention="flash").check()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_runs_eager_attention_then_gives_the_model_back_its_own(precision):
    model, other = tiny_llama(), tiny_llama()
    assert model.config._attn_implementation == "sdpa"
    seen = []
    model.model.layers[0].self_attn.register_forward_hook(
        lambda module, args, out: seen.append(module.config._attn_implementation)
    )
    auto = fit(model, steps=3, precision=precision)
    assert seen[-1] == "eager" and model.config._attn_implementation == "sdpa"
    # exact attention either way: the same training up to rounding, against the model's own SDPA
    own = fit(other, steps=3, precision=precision, attention="model")
    assert other.config._attn_implementation == "sdpa"
    tol = 1e-5 if precision == "fp32" else 2e-2
    assert [r["loss"] for r in auto] == pytest.approx([r["loss"] for r in own], rel=tol)


def test_stages_charge_each_peak_to_the_stage_that_made_it():
    """A 512 MiB array held only during the second stage: that stage's peak shows it, the first's and the
    third's do not, and the run's peak is the largest stage's. In a fresh process, as above."""
    import json
    import subprocess
    import sys

    code = (
        "import json, numpy as np; from tokentilt.training.engine import Stages\n"
        "s = Stages('cpu'); s.mark('small')\n"
        "a = np.ones(2**26); del a; s.mark('big')\n"
        "s.mark('after'); print(json.dumps([s.resets, s.peak_rss_mb, s.peak(), s.peak_device_mb]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    resets, peaks, whole, device = json.loads(out)
    if not resets:
        pytest.skip("this platform cannot reset the peak RSS")
    assert list(peaks) == ["small", "big", "after"] and device == {}  # no CUDA peak on the CPU
    assert peaks["big"] > peaks["small"] + 400 and peaks["big"] > peaks["after"] + 400
    assert whole == max(peaks.values()) == peaks["big"]
