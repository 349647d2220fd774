"""The Placement type: what each kind trains, and the rate rounds that call nothing but `train(bias)`."""

from types import SimpleNamespace

import pytest
import torch

from tokentilt.jobs.tilt_config import TiltConfig
from tokentilt.measurement.calibrate import RoundsState
from tokentilt.models.load import load_model
from tokentilt.settings import EvalConfig, LoraArgs, TrainConfig
from tokentilt.targets.tokens import resolve_set
from tokentilt.training import placements, rate
from tokentilt.training.placements import Objective


def changed(before: dict, model) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}


@pytest.fixture
def tiny(tiny_model_dir, eval_file):
    model, tokenizer = load_model(str(tiny_model_dir))
    return model, tokenizer, resolve_set("x", tokenizer, model.config.vocab_size)


def test_whole_model_trains_every_weight_and_leaves_the_reference(tiny):
    model, tokenizer, tokens = tiny
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    place = placements.whole_model(
        model,
        tokenizer,
        tokens,
        Objective("tilt-distill"),
        TrainConfig(steps=2, batch=2, seq_len=8, lr=1e-2, eval_every=0),
    )
    history = place.train(2.0)
    assert len(history) == 2 and (place.head_only, place.offsets) == (False, None)
    assert len(changed(before, model)) > len(before) // 2  # the blocks, not only the head
    assert changed(before, place.reference) == set()  # the reference is a frozen copy


def test_lora_trains_only_the_adapter(tiny):
    model, tokenizer, tokens = tiny
    cfg = TrainConfig(steps=2, batch=2, seq_len=8, lr=1e-2, eval_every=0)
    place = placements.lora(model, tokenizer, tokens, Objective("tilt-distill"), cfg, LoraArgs(lora=True, lora_r=2))
    before = {n: p.detach().clone() for n, p in place.model.named_parameters()}
    place.train(2.0)
    moved = changed(before, place.model)
    assert moved and all("lora_" in n for n in moved)


def test_head_rows_change_only_the_sets_rows_and_give_their_offsets(tiny):
    model, tokenizer, tokens = tiny
    cfg = TiltConfig(model="tiny", toward="x", placement="head-rows", contexts="text")
    cfg.eval = EvalConfig(prompts=["The"], samples_per_prompt=2, new_tokens=4)
    place = placements.head_rows_placement(model, tokenizer, tokens, cfg)
    before = place.model.get_output_embeddings().weight.detach().clone()
    place.train(1.5)
    after = place.model.get_output_embeddings().weight.detach()
    rows = (after != before).any(1)
    assert place.head_only and rows.any()
    assert rows.tolist() == place.fit.trained.tolist()  # the set (or its complement), nothing else
    h = torch.randn(3, after.size(1))  # what the fit adds to each trained row's logit is the offset, at any h
    added = (after - before)[rows] @ h.T  # (rows, 3)
    assert torch.allclose(added, place.fit.sign * place.offsets(h).expand_as(added), atol=1e-5)


NO_TARGET = SimpleNamespace(target=None)  # measure_rate is replaced: nothing reads it


class Counting:
    """A placement whose training adds b to one weight: R after a round is what the weight holds."""

    head_only, offsets = False, None

    def __init__(self):
        self.model = torch.nn.Linear(1, 1, bias=False)
        torch.nn.init.zeros_(self.model.weight)
        self.reference, self.seen = None, []

    def train(self, bias: float) -> list[dict]:
        self.seen.append(float(self.model.weight))  # what the round started from
        with torch.no_grad():
            self.model.weight += bias
        return [{"step": 1, "b": bias}]


def test_the_rate_rounds_call_only_train_and_start_every_round_from_the_same_weights(monkeypatch):
    place = Counting()
    widths = []  # the half-width each measurement was asked for

    def measure_rate(model, tokenizer, target, how, **kw):  # R of the trained model = sigmoid(weight - 2)
        widths.append(how.half_width)
        r = float(torch.sigmoid(model.weight - 2.0))  # b = 2 gives R = 0.5
        return {"mean": r, "ci_low": r, "ci_high": r, "n": 64, "stop": "half-width"}, None

    monkeypatch.setattr(rate, "measure_rate", measure_rate)
    cfg = TiltConfig(rate=0.5, rate_rounds=3)
    fit, history = rate.train_to_rate(place, None, NO_TARGET, cfg, bias=1.0, echo=lambda *_: None)
    # each round's probe at the rule's half-width, and the round that ends them confirmed at half of it
    assert widths == [cfg.eval.half_width] * len(fit.rounds) + [cfg.eval.half_width / 2]
    assert place.seen == [0.0] * len(place.seen) and len(place.seen) >= 2  # every round from the start weights
    assert fit.rounds[0][0] == 1.0 and abs(fit.rate["mean"] - 0.5) < abs(torch.sigmoid(torch.tensor(-1.0)) - 0.5)
    assert float(place.model.weight) == pytest.approx(fit.bias)  # the model holds the kept round's weights
    assert history == [{"step": 1, "b": fit.bias}]


def test_a_resumed_run_with_every_round_done_trains_nothing(monkeypatch):
    place = Counting()
    monkeypatch.setattr(rate, "measure_rate", lambda *a, **k: pytest.fail("nothing to measure"))
    kept = {"weight": torch.tensor([[2.0]])}
    done = RoundsState([(2.0, {"mean": 0.5})], 0, ([{"step": 1}], kept), 2.0, True)
    fit, history = rate.train_to_rate(
        place, None, NO_TARGET, TiltConfig(rate=0.5), 1.0, echo=lambda *_: None, resumed=done
    )
    assert place.seen == [] and float(place.model.weight) == 2.0 and history == [{"step": 1}]
