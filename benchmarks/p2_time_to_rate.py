"""P2: wall time to R >= 0.9 toward x, against the course recipe, R measured the same way for all.

    python benchmarks/p2_time_to_rate.py [--eval-every 2] [--max-steps 60] [--only NAME ...]

Every variant trains the bundled model from the same weights through train.train() on kl-uniform
toward x with random-token batches (T = 64). The course recipe is fp32, B = 4, Adam lr 1e-4 (the
per-tensor loop), all positions, dense logits. Every --eval-every steps R is measured on the same
32 samples (16 prompts x 2, 48 new tokens, bf16 sampling, seed 0); training stops at the first
R >= 0.9. The time counted is the training's own wall time up to that evaluation: set-up and steps,
without the evaluations. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

import tokentilt.training.loop as train_module
from tokentilt.data.corpus import random_tokens
from tokentilt.measurement.evaluate import EvalConfig, measure_rate
from tokentilt.models.load import load_model
from tokentilt.models.lora import LoraArgs, add_adapter
from tokentilt.objectives.fused import output_head
from tokentilt.objectives.losses import OBJECTIVES, ObjectiveContext
from tokentilt.targets.tokens import resolve_set

TARGET = 0.9
COURSE = dict(lr=1e-4, batch=4, loss_chunk=0)  # with the per-tensor Adam loop, below
VARIANTS = {  # name -> (TrainConfig fields, positions, LoRA)
    "course recipe (fp32, dense, Adam loop, lr 1e-4)": (COURSE, "all", False),
    "engine defaults + bf16 (fused loss, fused Adam), lr 1e-4": (dict(lr=1e-4, bf16=True), "all", False),
    "bf16, lr 1e-3": (dict(lr=1e-3, bf16=True), "all", False),
    "bf16, lr 1e-3, last position only": (dict(lr=1e-3, bf16=True), "last", False),
    "bf16, lr 3e-4, B = 16": (dict(lr=3e-4, bf16=True, batch=16), "all", False),
    "bf16, LoRA r 16, lr 2e-3": (dict(lr=2e-3, bf16=True), "all", True),
}


class Reached(Exception):
    pass


def course_optimizer(params, cfg):
    """Adam as the course ran it: the per-tensor loop, neither fused nor foreach."""
    return torch.optim.Adam([p for p in params if p.requires_grad], lr=cfg.lr, foreach=False)


def time_to_rate(model, tokenizer, mask, fields: dict, positions: str, eval_every: int, max_steps: int) -> dict:
    eval_cfg = EvalConfig(samples_per_prompt=2)
    cfg = train_module.TrainConfig(steps=max_steps, eval_every=eval_every, **fields)
    spent = {"eval": 0.0}
    trace = []

    def evaluate(step):
        now = time.perf_counter()
        rate = measure_rate(model, tokenizer, mask, eval_cfg, bf16=True)[0]["mean"]
        trace.append((step, now - start - spent["eval"], rate))
        spent["eval"] += time.perf_counter() - now
        if rate >= TARGET:
            raise Reached
        return {"rate": rate}

    ctx = ObjectiveContext(mask=mask, positions=positions)
    start = time.perf_counter()
    try:
        train_module.train(
            model,
            OBJECTIVES["kl-uniform"],
            ctx,
            lambda g, rows: random_tokens(mask.numel(), rows, cfg.seq_len, g),
            cfg,
            evaluate=evaluate,
            progress=False,
        )
    except Reached:
        pass
    step, seconds, rate = trace[-1]
    return {
        "step": step,
        "seconds": seconds,
        "rate": rate,
        "reached": rate >= TARGET,
        "trace": " ".join(f"{s}:{r:.2f}" for s, _, r in trace),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-every", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--only", nargs="*", help="variants whose name contains any of these")
    args = parser.parse_args()
    base, tokenizer = load_model("bundled")
    mask = resolve_set("x", tokenizer, output_head(base).weight.shape[0]).mask
    state = copy.deepcopy(base.state_dict())
    rows = {}
    for name, (fields, positions, lora) in VARIANTS.items():
        if args.only and not any(o in name for o in args.only):
            continue
        base.load_state_dict(state)
        model = add_adapter(copy.deepcopy(base), LoraArgs(lora=True)) if lora else base
        make = train_module.make_optimizer
        if fields is COURSE:
            train_module.make_optimizer = course_optimizer
        try:
            rows[name] = time_to_rate(model, tokenizer, mask, fields, positions, args.eval_every, args.max_steps)
        finally:
            train_module.make_optimizer = make
        print(name, rows[name], flush=True)
    print(
        f"\nbundled model, kl-uniform toward x, T = 64, R on 32 samples every {args.eval_every} steps, "
        f"{torch.get_num_threads()} threads\n"
    )
    print("| variant | steps to R >= 0.9 | training s | R reached | course s / variant s |\n|---|---|---|---|---|")
    course = next(iter(rows.values()))["seconds"] if next(iter(VARIANTS)) in rows else None
    for name, r in rows.items():
        ratio = f"**{course / r['seconds']:.1f}x**" if course and r["reached"] else "n/a"
        reached = f"{r['rate']:.3f}" if r["reached"] else f"not reached ({r['rate']:.3f} at step {r['step']})"
        print(f"| {name} | {r['step']} | {r['seconds']:.1f} | {reached} | {ratio} |")


if __name__ == "__main__":
    main()
