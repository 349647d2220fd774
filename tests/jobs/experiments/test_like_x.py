import json
import math

import pytest
import torch

from tokentilt.cli import main
from tokentilt.course.gpt import GPT, GPTConfig
from tokentilt.jobs.experiments.like_x import LikeXConfig, run
from tokentilt.measurement.evaluate import EvalConfig


@pytest.fixture
def tiny_checkpoint(tmp_path):
    torch.manual_seed(0)
    GPT(GPTConfig(n_layer=2, n_embd=32, n_head=4, block_size=64)).save(tmp_path / "ckpt")
    return str(tmp_path / "ckpt")


def tiny(tmp_path, checkpoint, **kw):
    values = dict(
        checkpoint=checkpoint,
        epochs=30,
        batch=4,
        seq_len=32,
        lr=1e-2,
        bf16=False,
        generated=24,
        sample_len=12,
        eval_every=0,
        out=str(tmp_path / "e"),
        eval=EvalConfig(prompts=["The king said", "Once"], samples_per_prompt=2, new_tokens=8),
    )
    values.update(kw)
    return LikeXConfig(**values)


@pytest.mark.slow
def test_training_raises_the_x_count(tmp_path, tiny_checkpoint):
    summary = run(tiny(tmp_path, tiny_checkpoint), progress=False, echo=lambda *_: None)
    assert summary["generated"] == 24
    assert summary["x_before"] <= 3  # ~2% of the vocabulary contains x
    assert summary["x_after"] >= 16  # chance is ~0.5 of 24
    assert summary["rate_after"]["mean"] > summary["rate_before"]["mean"] + 0.5
    assert summary["log_vocab"] == pytest.approx(math.log(50257))
    assert summary["loss_end"] < summary["loss_start"] / 4
    saved = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert saved["x_after"] == summary["x_after"]
    for name in ("loss.png", "rate.png", "report.md", "metrics.jsonl", "config.yaml"):
        assert (tmp_path / "e" / name).is_file()


def test_missing_checkpoint_exits_2(tmp_path, capsys):
    assert main(["experiment", "like-x", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "e")]) == 2
    assert "checkpoint folder not found" in capsys.readouterr().err
    assert not (tmp_path / "e").exists() and not (tmp_path / "e.partial").exists()


def test_seq_len_beyond_block_size_is_an_error(tmp_path, tiny_checkpoint):
    with pytest.raises(ValueError, match="block_size"):
        run(tiny(tmp_path, tiny_checkpoint, seq_len=128), progress=False, echo=lambda *_: None)
    assert not (tmp_path / "e.partial").exists()


def test_final_position_logits_match_the_full_forward():
    from tokentilt.jobs.experiments.like_x import FinalPositionLogits

    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_embd=32, n_head=4, block_size=64)).eval()
    ids = torch.randint(0, 50257, (3, 20))
    full = model(input_ids=ids).logits[:, -1:]  # (3, 1, V)
    assert torch.allclose(FinalPositionLogits(model)(ids).logits, full, atol=1e-5)
