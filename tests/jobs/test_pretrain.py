"""Pretraining Model 5: a few steps on the real plays with a tiny config, in tmp_path."""

import json
import math

import pytest
import torch

from tokentilt.cli import main
from tokentilt.course.gpt import GPT
from tokentilt.jobs.pretrain import PretrainConfig, next_token_objective, run_pretrain, unigram_cross_entropy
from tokentilt.objectives.losses import ObjectiveContext


def tiny(tmp_path, **kw):
    values = dict(
        n_layer=2,
        n_head=4,
        n_embd=32,
        block_size=64,
        seq_len=32,
        batch=4,
        steps=8,
        eval_every=4,
        eval_windows=4,
        lr=1e-2,
        dropout=0.1,
        bf16=False,
        sample_tokens=4,
        out=str(tmp_path / "run"),
    )
    values.update(kw)
    return PretrainConfig(**values)


def test_unigram_cross_entropy_by_hand():
    train = torch.tensor([0, 0, 1])  # counts + 1 over V=3: [3, 2, 1] / 6
    out = unigram_cross_entropy(train, torch.tensor([0, 2]), vocab_size=3)
    assert out["unigram_val_ce"] == pytest.approx(-(math.log(3 / 6) + math.log(1 / 6)) / 2)
    p = torch.tensor([3, 2, 1]) / 6
    assert out["unigram_entropy"] == pytest.approx(float(-(p * p.log()).sum()))


def test_objective_is_next_token_cross_entropy():
    logits = torch.randn(2, 5, 7)
    ids = torch.randint(0, 7, (2, 5))
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 7), ids[:, 1:].reshape(-1))
    got = next_token_objective(logits, ids, ObjectiveContext(mask=torch.zeros(7, dtype=torch.bool)))
    assert torch.allclose(got, ref)


@pytest.mark.slow
def test_few_steps_lower_val_loss_and_outputs_load_back(tmp_path):
    summary = run_pretrain(tiny(tmp_path), progress=False, echo=lambda *_: None)
    out = tmp_path / "run"
    assert not (tmp_path / "run.partial").exists()
    for name in ("config.yaml", "metrics.jsonl", "loss.png", "summary.json", "report.md", "model/gpt.safetensors"):
        assert (out / name).is_file(), name
    evals = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]
    assert evals[0]["step"] == 0 and evals[0]["val_loss"] > 10  # ~log(50257) at init
    assert summary["val_loss"] < evals[0]["val_loss"] - 1.5
    assert json.loads((out / "summary.json").read_text()) == summary
    assert 5 < summary["unigram_val_ce"] < 9
    model = GPT.load(out / "model")
    assert model.config.n_embd == 32 and model.config.block_size == 64
    # The saved weights reproduce the reported val loss.
    from tokentilt.course.gpt2_tokenizer import gpt2_tokenizer
    from tokentilt.data import corpus
    from tokentilt.jobs.pretrain import split_loss

    windows = corpus.eval_windows(corpus.tokenize(gpt2_tokenizer(), corpus.split_text("val")), 32, 4)
    assert split_loss(model, windows, bf16=False) == pytest.approx(summary["val_loss"], rel=1e-5)


def test_bad_config_values():
    with pytest.raises(ValueError, match="seq-len"):
        PretrainConfig(seq_len=512, block_size=256).check()
    with pytest.raises(ValueError, match="divisible"):
        PretrainConfig(n_embd=30, n_head=4).check()


def test_cli_refuses_folder_holding_a_run(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text("{}")
    assert main(["pretrain", "--steps", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and len(err.strip().splitlines()) == 1


def test_cli_bad_value_exits_2(tmp_path, capsys):
    assert main(["pretrain", "--seq-len", "999", "--out", str(tmp_path / "r")]) == 2
    assert "seq-len" in capsys.readouterr().err
