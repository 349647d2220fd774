"""What the Accelerate engine costs per step: train.train() against a bare loop, side by side.

    python benchmarks/engine_overhead.py [--steps 6] [--rounds 3] [--lora]

Both run the same Adam steps of kl-uniform on the bundled model (B=4, T=64, all positions,
bf16 autocast) from the same weights and batches: the bare loop is autocast + forward + loss +
backward + clip + step, nothing else. The two alternate round by round (bare, engine, bare,
engine, ...) so that a drifting machine affects both alike; each round's first step is a warm-up
and is not timed. Reports median seconds per step and the ratio. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tokentilt.data.corpus import random_tokens
from tokentilt.models import lora
from tokentilt.models.load import load_model
from tokentilt.objectives.losses import OBJECTIVES, ObjectiveContext
from tokentilt.targets.tokens import resolve_set
from tokentilt.training.loop import TrainConfig, make_optimizer, train


def bare_loop(model, ctx, cfg: TrainConfig) -> list[float]:
    optimizer = make_optimizer(model.parameters(), cfg)
    g = torch.Generator().manual_seed(cfg.seed)
    times = []
    for _ in range(cfg.steps):
        start = time.perf_counter()
        ids = random_tokens(ctx.mask.numel(), cfg.batch, cfg.seq_len, g)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=ids).logits  # (B, T, V)
        loss = OBJECTIVES["kl-uniform"](logits.float(), ids, ctx)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times[1:]


def engine_loop(model, ctx, cfg: TrainConfig) -> list[float]:
    stamps = [time.perf_counter()]
    train(
        model,
        OBJECTIVES["kl-uniform"],
        ctx,
        lambda g, rows: random_tokens(ctx.mask.numel(), rows, cfg.seq_len, g),
        cfg,
        progress=False,
        log=None,
        evaluate=lambda step: stamps.append(time.perf_counter()) or {},
    )
    return [b - a for a, b in zip(stamps[1:], stamps[2:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per round (after 1 warm-up step)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each loop, alternating")
    parser.add_argument("--lora", action="store_true", help="train a LoRA adapter (r=16) instead of every weight")
    args = parser.parse_args()

    model, tokenizer = load_model("bundled")
    if args.lora:
        model = lora.add_adapter(model, lora.LoraArgs(lora=True))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = ObjectiveContext(mask=resolve_set("x", tokenizer, 49152).mask, positions="all")
    cfg = TrainConfig(lr=1e-7, steps=args.steps + 1, precision="bf16", eval_every=1)
    times = {"bare loop": [], "train() on Accelerate": []}
    for _ in range(args.rounds):
        for name, loop in (("bare loop", bare_loop), ("train() on Accelerate", engine_loop)):
            model.load_state_dict(start)
            model.train()
            times[name] += loop(model, ctx, cfg)
    print(
        f"Adam steps, bundled model{' + LoRA r=16' if args.lora else ''}, B={cfg.batch}, T={cfg.seq_len}, bf16, "
        f"{args.rounds} rounds x {args.steps} timed steps, {torch.get_num_threads()} threads"
    )
    print("| loop | median s/step | min | max |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.3f} | {min(ts):.3f} | {max(ts):.3f} |")
    ratio = statistics.median(times["train() on Accelerate"]) / statistics.median(times["bare loop"])
    print(f"\nengine / bare, ratio of medians: {ratio:.3f}")


if __name__ == "__main__":
    main()
