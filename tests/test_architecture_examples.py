"""docs/architecture.md's four worked examples (docs/examples/), run on a tiny model: each does what it says."""

import importlib.util
from pathlib import Path

import pytest
import torch

from tokentilt.jobs.tilt_config import TiltConfig
from tokentilt.measurement.evaluate import measure_rate
from tokentilt.models.load import load_model
from tokentilt.objectives.losses import OBJECTIVES, set_log_mass
from tokentilt.settings import EvalConfig
from tokentilt.targets.target import Target, as_target
from tokentilt.targets.tokens import resolve_set

EXAMPLES = Path(__file__).parents[1] / "docs" / "examples"
SMALL = EvalConfig(prompts=["The", "A"], samples_per_prompt=2, new_tokens=8)


def example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tiny(tiny_model_dir, eval_file):
    model, tokenizer = load_model(str(tiny_model_dir))
    return model, tokenizer, resolve_set("x", tokenizer, model.config.vocab_size)


@pytest.mark.parametrize("name", ["new_objective", "new_placement", "new_target", "new_job"])
def test_each_example_is_short(name):
    assert len((EXAMPLES / f"{name}.py").read_text().splitlines()) < 30


def test_a_new_objective_trains_through_the_loop(tiny):
    model, tokenizer, target = tiny
    ids = torch.randint(0, target.vocab_size, (2, 8), generator=torch.Generator().manual_seed(1))

    def mass() -> float:
        with torch.no_grad():
            return float(set_log_mass(model(input_ids=ids).logits.float(), target.mask).mean())

    before = mass()
    try:
        history = example("new_objective").demo(model, tokenizer, target)
    finally:
        OBJECTIVES.pop("set-mass", None)  # the registry is shared with the rest of the suite
    assert len(history) == 3 and history[-1]["loss"] < history[0]["loss"]
    assert mass() > before


def test_a_new_placement_goes_through_the_rate_rounds(tiny):
    model, tokenizer, target = tiny
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TiltConfig(rate=0.3, rate_rounds=2).resolved()  # lr and precision filled
    cfg.eval, cfg.train.steps, cfg.train.seq_len, cfg.train.eval_every = SMALL, 2, 8, 0
    fit, history = example("new_placement").demo(model, tokenizer, target, cfg)
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert moved and all(".1.mlp." in n for n in moved)  # the last of the two blocks' MLP, nothing else
    assert 1 <= len(fit.rounds) <= 2 and len(history) == 2


def test_a_new_target_kind_is_measured_like_the_built_in_ones(tiny):
    model, tokenizer, _ = tiny
    digits = example("new_target").DigitShare(tokenizer, model.config.vocab_size)
    assert isinstance(digits, Target) and as_target(digits) is digits
    rate, samples = measure_rate(model, tokenizer, digits, SMALL, bias=8.0)
    by_hand = [sum(c.isdigit() for c in t) / max(len(t), 1) for t in samples.texts]
    assert rate["mean"] == pytest.approx(sum(by_hand) / len(by_hand))
    untilted, _ = measure_rate(model, tokenizer, digits, SMALL)
    assert rate["mean"] > untilted["mean"]  # the decode-time tilt toward digits raises R


def test_a_new_job_runs_with_the_job_signature(tiny_model_dir, tiny):
    new_job = example("new_job")
    lines = []
    got = new_job.run(new_job.RateConfig(model=str(tiny_model_dir), samples_per_prompt=2), echo=lines.append)
    model, tokenizer, target = tiny
    same, _ = measure_rate(model, tokenizer, target, EvalConfig(samples_per_prompt=2))
    assert got["mean"] == same["mean"] and lines[-1].startswith("R = ")
    with pytest.raises(ValueError, match="samples-per-prompt"):
        new_job.run(new_job.RateConfig(samples_per_prompt=0))
