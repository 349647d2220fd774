import pytest
import torch

from conftest import tiny_gpt2
from tokentilt.data.corpus import random_tokens
from tokentilt.objectives.losses import OBJECTIVES, ObjectiveContext
from tokentilt.training.loop import TrainConfig, frozen_copy, train


def run(model, objective="kl-uniform", **overrides):
    mask = torch.zeros(64, dtype=torch.bool)
    mask[[3, 7, 11]] = True
    cfg = TrainConfig(**{"lr": 1e-2, "steps": 8, "batch": 2, "seq_len": 8, "eval_every": 0, **overrides})
    ctx = ObjectiveContext(mask=mask, positions="all", bias=3.0)
    reference = frozen_copy(model) if objective == "tilt-distill" else None
    history = train(
        model,
        OBJECTIVES[objective],
        ctx,
        lambda g, rows: random_tokens(64, rows, cfg.seq_len, g),
        cfg,
        reference=reference,
        progress=False,
    )
    return history, mask


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_loss_falls_and_parameters_change(optimizer):
    model = tiny_gpt2()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history, _ = run(model, optimizer=optimizer, lr=0.5 if optimizer == "sgd" else 1e-2)
    assert len(history) == 8 and [r["step"] for r in history] == list(range(1, 9))
    assert history[-1]["loss"] < history[0]["loss"]
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "transformer.wte.weight" in changed


def test_same_seed_same_numbers_and_other_seed_differs():
    a, _ = run(tiny_gpt2(), seed=3)
    b, _ = run(tiny_gpt2(), seed=3)
    c, _ = run(tiny_gpt2(), seed=4)
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["loss"] for r in a] != [r["loss"] for r in c]


def test_bf16_autocast_trains_and_keeps_fp32_weights():
    model = tiny_gpt2()
    history, _ = run(model, bf16=True)
    assert history[-1]["loss"] < history[0]["loss"]
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_tilt_distill_starts_at_kl_of_the_tilt_and_falls():
    model = tiny_gpt2()
    history, _ = run(model, objective="tilt-distill", steps=15)
    assert history[0]["loss"] > 0.05
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]


def test_gradient_clipping_bounds_the_update():
    model = tiny_gpt2()
    history, _ = run(model, grad_clip=1e-3, optimizer="sgd", lr=1.0, steps=1)
    start = tiny_gpt2()
    delta = torch.sqrt(sum(((p - q) ** 2).sum() for p, q in zip(model.parameters(), start.parameters())))
    assert delta.item() == pytest.approx(1e-3, rel=1e-3)  # SGD step = lr * clipped grad, norm 1e-3
    assert history[0]["grad_norm"] > 1e-3


def test_early_stopping_restores_best_weights():
    model = tiny_gpt2()
    calls = []
    vals = iter([3.0, 2.0, 2.5, 2.6, 2.7, 2.8])

    def evaluate(step):
        calls.append(step)
        val = next(vals)
        if val == 2.0:
            evaluate.best = {k: v.clone() for k, v in model.state_dict().items()}
        return {"val_loss": val}

    mask = torch.zeros(64, dtype=torch.bool)
    mask[3] = True
    cfg = TrainConfig(lr=1e-2, steps=12, batch=2, seq_len=8, eval_every=2, patience=2)
    history = train(
        model,
        OBJECTIVES["kl-uniform"],
        ObjectiveContext(mask=mask),
        lambda g, rows: random_tokens(64, rows, 8, g),
        cfg,
        evaluate=evaluate,
        progress=False,
    )
    assert calls == [2, 4, 6, 8] and len(history) == 8
    assert all(torch.equal(v, evaluate.best[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("lr", 0.0, "lr must be positive"),
        ("steps", -1, "steps must be positive"),
        ("batch", 0, "batch must be positive"),
        ("seq_len", 0, "seq-len must be positive"),
        ("optimizer", "lion", "optimizer must be one of"),
        ("lr", float("nan"), "lr must be positive"),
    ],
)
def test_bad_config_is_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value}).check()


def test_a_last_update_that_leaves_non_finite_outputs_stops_training(tiny_model_dir):
    """The loss of the last step is finite, but its update blows the logits up to inf: that model
    would crash sampling with a traceback, so training stops as diverged instead (exit 3 in the CLI)."""
    from transformers import GPT2LMHeadModel

    from tokentilt.training.loop import TrainingDiverged

    model = GPT2LMHeadModel.from_pretrained(tiny_model_dir)
    with torch.no_grad():  # a confident model: huge gradients on its first steps
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(model.transformer.wte.weight[262] * 4000)
    mask = torch.zeros(50257, dtype=torch.bool)
    mask[:100] = True
    cfg = TrainConfig(optimizer="sgd", lr=1e6, grad_clip=0, steps=2, batch=2, seq_len=16, eval_every=0)
    history = []
    with pytest.raises(TrainingDiverged, match="outputs became non-finite after step 2"):
        train(
            model,
            OBJECTIVES["kl-uniform"],
            ObjectiveContext(mask=mask, positions="all"),
            lambda g, rows: random_tokens(50257, rows, 16, g),
            cfg,
            progress=False,
            log=history.append,
        )
    assert [r["step"] for r in history] == [1]  # step 2's loss was finite; its update was not


def test_an_ignored_sigint_stays_ignored_during_training():
    import signal

    from tokentilt.training.loop import _SigintAtStepBoundary

    assert _SigintAtStepBoundary(active=True).active  # the default handler: Ctrl-C is caught at a step boundary
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a job started with `cmd &` by a script
    try:
        with _SigintAtStepBoundary(active=True) as sigint:
            assert not sigint.active and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
