import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tokentilt.cli import main
from tokentilt.course.gpt2_tokenizer import gpt2_tokenizer
from tokentilt.jobs.experiments import x_factor
from tokentilt.jobs.experiments.x_factor import XFactorConfig, run
from tokentilt.measurement.evaluate import EvalConfig


@pytest.fixture
def tiny_hf_folder(tmp_path):
    """A tiny random GPT-2 with the real 50257-token tokenizer, saved as a Hugging Face folder."""
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "tiny")
    gpt2_tokenizer().save_pretrained(tmp_path / "tiny")
    return str(tmp_path / "tiny")


@pytest.mark.slow
def test_runs_side_by_side_and_large_lr_raises_r(tmp_path, tiny_hf_folder, monkeypatch):
    measured = []  # (reported R, samples) of every full measurement
    real_measure_rate = x_factor.measure_rate

    def recording_measure_rate(*args, **kwargs):
        rate, samples = real_measure_rate(*args, **kwargs)
        measured.append((rate, samples))
        return rate, samples

    monkeypatch.setattr(x_factor, "measure_rate", recording_measure_rate)
    cfg = XFactorConfig(
        model=tiny_hf_folder,
        lrs=[1e-6, 1e-2],
        epochs=12,
        batch=2,
        seq_len=16,
        bf16=False,
        eval_every=6,
        out=str(tmp_path / "e"),
        eval=EvalConfig(prompts=["The king said", "Once"], samples_per_prompt=2, new_tokens=8, half_width=0.0),
    )
    summary = run(cfg, progress=False, echo=lambda *_: None)
    assert [r["lr"] for r in summary["runs"]] == [1e-6, 1e-2]
    small, large = summary["runs"]
    mask = torch.tensor(["x" in t.lower() for t in gpt2_tokenizer().batch_decode([[i] for i in range(50257)])])
    for r in summary["runs"]:
        rate, samples = next((rate, s) for rate, s in measured if rate is r["rate_after"])
        # recounted by hand from the samples: 2 prompts x 2 samples x 8 tokens
        assert samples.tokens.shape == (4, 8)
        rates = mask[samples.tokens].double().mean(1)  # (4,)
        mean = float(rates.mean())
        half = 3.182446305284263 * float(rates.std(unbiased=True)) / 2  # t_{0.975, 3} * s / sqrt(4)
        assert r["rate_after"]["n"] == 4 and r["rate_after"]["mean"] == pytest.approx(mean, abs=1e-6)
        assert r["rate_after"]["ci_low"] == pytest.approx(max(mean - half, 0.0), abs=1e-6)
        assert r["rate_after"]["ci_high"] == pytest.approx(min(mean + half, 1.0), abs=1e-6)
        assert abs(mean * 32 - round(mean * 32)) < 1e-4  # k set tokens of 32
    # Both runs start from the same weights on the same batches.
    assert small["loss_start"] == pytest.approx(large["loss_start"], rel=1e-5)
    assert small["final_loss"] == pytest.approx(small["loss_start"], rel=0.05)
    assert large["final_loss"] < small["final_loss"] / 2
    assert large["rate_after"]["mean"] > 0.5 > small["rate_after"]["mean"]
    saved = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert saved["runs"][1]["final_loss"] == large["final_loss"]
    for name in ("loss.png", "rate.png", "report.md"):
        assert (tmp_path / "e" / name).is_file()


def test_bad_settings_exit_2(tmp_path, capsys):
    assert main(["experiment", "x-factor", "--lr", "-1", "--out", str(tmp_path / "e")]) == 2
    assert "positive learning rates" in capsys.readouterr().err
    with pytest.raises(ValueError, match="alpha > beta"):
        XFactorConfig(alpha=1e-4, beta=1.0).check()
    assert main(["experiment", "x-factor", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "e")]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
