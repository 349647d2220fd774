"""P1: training throughput on the bundled model against the bf16 matmul ceiling at the model's own shapes.

    python benchmarks/p1_throughput.py [--steps 8] [--rounds 2] [--profile]

Ceiling: every Linear of the model (and the output head, tied to the embedding), as the three
matmuls of a training step (forward, input gradient, weight gradient) on B·T rows in bf16, each
shape timed alone; the ceiling is their FLOPs over their summed time. That is the speed a step
would reach if it were nothing but the model's 6·N FLOPs per token at this CPU's bf16 matmul rate.

Throughput: `tokentilt tilt`'s defaults (kl-uniform toward x, all positions, random tokens, B = 4,
T = 64, Adam) with --bf16, through train.train() itself, timed step by step (after 2 warm-up
steps). Variants run alternately, round by round, from the same weights, so a drifting machine
affects them alike. --profile adds a torch.profiler breakdown of one step of the default.
--allocator compares the default step with and without engine.keep_freed_memory() (malloc keeps
freed memory instead of unmapping it), one fresh process per side and round, alternating.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import time

import torch

from tokentilt.data.corpus import random_tokens
from tokentilt.models.load import load_model
from tokentilt.objectives.fused import output_head
from tokentilt.objectives.losses import OBJECTIVES, ObjectiveContext
from tokentilt.targets.tokens import resolve_set
from tokentilt.training.loop import TrainConfig, train


def matmul_ceiling(model, rows: int, reps: int = 5) -> tuple[float, list[tuple]]:
    """(FLOP/s, per-shape table) of the step's matmuls in bf16, each shape timed alone."""
    shapes: dict[tuple[int, int], int] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            shapes[tuple(module.weight.shape)] = shapes.get(tuple(module.weight.shape), 0) + 1
    table, flops, seconds = [], 0.0, 0.0
    for (out_f, in_f), count in shapes.items():
        x = torch.randn(rows, in_f, dtype=torch.bfloat16)
        w = torch.randn(out_f, in_f, dtype=torch.bfloat16)
        g = torch.randn(rows, out_f, dtype=torch.bfloat16)

        def step():
            x @ w.T  # forward (rows, out)
            g @ w  # input gradient (rows, in)
            g.T @ x  # weight gradient (out, in)

        step()
        start = time.perf_counter()
        for _ in range(reps):
            step()
        t = (time.perf_counter() - start) / reps
        f = 6 * rows * in_f * out_f
        table.append(((in_f, out_f), count, f / t / 1e9))
        flops += count * f
        seconds += count * t
    return flops / seconds, table


def step_times(model, cfg: TrainConfig, mask, steps: int) -> list[float]:
    stamps = []
    ctx = ObjectiveContext(mask=mask, positions="all")
    train(
        model,
        OBJECTIVES["kl-uniform"],
        ctx,
        lambda g, rows: random_tokens(49152, rows, cfg.seq_len, g),
        cfg,
        log=lambda r: stamps.append(time.perf_counter()),
        progress=False,
    )
    return [b - a for a, b in zip(stamps[2:], stamps[3:])]  # from the 3rd step on: warm-up excluded


def alternate(model, mask, variants: dict[str, dict], steps: int, rounds: int) -> dict[str, list[float]]:
    """Step times of each variant (TrainConfig overrides), round by round in turn, each from the same weights."""
    start_state = copy.deepcopy(model.state_dict())
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, overrides in variants.items():
            model.load_state_dict(start_state)
            times[name] += step_times(
                model, TrainConfig(lr=1e-7, steps=steps + 3, eval_every=0, **overrides), mask, steps
            )
    return times


VARIANTS = {
    "fp32, dense logits (before)": dict(loss_chunk=0),
    "bf16, dense logits": dict(bf16=True, loss_chunk=0),
    "bf16, fused head + loss (default)": dict(bf16=True),
    "bf16, fused head + loss, B = 16": dict(bf16=True, batch=16),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="also print a profiler breakdown of one default step")
    parser.add_argument("--profile-only", action="store_true", help="only the profiler breakdown")
    parser.add_argument(
        "--allocator",
        action="store_true",
        help="only the default step with malloc keeping freed memory against glibc's default",
    )
    parser.add_argument("--default-only", action="store_true", help=argparse.SUPPRESS)  # one side of --allocator
    parser.add_argument(
        "--attention",
        action="store_true",
        help="only the default step with eager attention (the default on a CPU) against SDPA",
    )
    args = parser.parse_args()
    if args.allocator:
        return compare_allocator(args.steps, args.rounds)
    model, tokenizer = load_model("bundled")
    mask = resolve_set("x", tokenizer, output_head(model).weight.shape[0]).mask
    if args.profile_only:
        return profile(model, mask)
    if args.attention:
        return compare_attention(model, mask, args.steps, args.rounds)
    if args.default_only:
        times = step_times(model, TrainConfig(lr=1e-7, steps=args.steps + 3, eval_every=0, bf16=True), mask, args.steps)
        return print(" ".join(f"{t:.4f}" for t in times))
    n_params = sum(p.numel() for p in model.parameters())
    times = alternate(model, mask, VARIANTS, args.steps, args.rounds)
    configs = {name: TrainConfig(**overrides) for name, overrides in VARIANTS.items()}
    tokens = {name: cfg.batch * cfg.seq_len for name, cfg in configs.items()}
    ceiling, table = matmul_ceiling(model, 4 * 64)
    print(
        f"bundled model, N = {n_params / 1e6:.1f}M parameters, {torch.get_num_threads()} threads, "
        f"{args.rounds} rounds x {args.steps} steps\n"
    )
    print(
        f"bf16 matmul ceiling at the model's shapes, 256 rows: **{ceiling / 1e9:.0f} GFLOP/s** "
        f"= {ceiling / (6 * n_params):.0f} tokens/s at 6N FLOPs per token"
    )
    print("\n| Linear (in, out) | count | bf16 GFLOP/s |\n|---|---|---|")
    for shape, count, gflops in table:
        print(f"| {shape} | {count} | {gflops:.0f} |")
    print("\n| variant | median s/step | tokens/s | share of the bf16 ceiling |\n|---|---|---|---|")
    for name, t in times.items():
        rate = tokens[name] / statistics.median(t)
        print(f"| {name} | {statistics.median(t):.3f} | {rate:.0f} | **{rate * 6 * n_params / ceiling:.0%}** |")
    if args.profile:
        profile(model, mask)


def compare_attention(model, mask, steps: int, rounds: int) -> None:
    """The default bf16 step with eager attention (what --attention auto picks for 64 tokens on a CPU)
    and with the model's fused SDPA kernel, alternating round by round from the same weights."""
    times = alternate(model, mask, {impl: dict(bf16=True, attention=impl) for impl in ("eager", "sdpa")}, steps, rounds)
    print("\n| attention | median s/step |\n|---|---|")
    for impl, t in times.items():
        print(f"| {impl} | {statistics.median(t):.3f} |")
    print(f"\nsdpa / eager: {statistics.median(times['sdpa']) / statistics.median(times['eager']):.2f}x")


def compare_allocator(steps: int, rounds: int) -> None:
    """The default bf16 step in a fresh process with TOKENTILT_KEEP_FREED_MEMORY=1 (train() has malloc
    keep freed memory) and =0 (glibc's default: large blocks mmap()ed and unmapped every time)."""
    times: dict[str, list[float]] = {"1": [], "0": []}
    for _ in range(rounds):
        for keep in times:
            out = subprocess.run(
                [sys.executable, __file__, "--default-only", "--steps", str(steps)],
                check=True,
                capture_output=True,
                text=True,
                env={**os.environ, "TOKENTILT_KEEP_FREED_MEMORY": keep},
            )
            times[keep] += [float(t) for t in out.stdout.split()]
    kept, plain = statistics.median(times["1"]), statistics.median(times["0"])
    print(
        f"\n| malloc | median s/step |\n|---|---|\n| keeps freed memory (default) | {kept:.3f} |\n"
        f"| glibc's default | {plain:.3f} |\n\nspeed-up: {plain / kept:.2f}x"
    )


def profile(model, mask) -> None:
    """Steady state: the profiler records the 3rd of 5 steps (Adam's state exists by then, and the last
    step's check that the outputs are finite, one more forward, is not in it)."""
    from torch.profiler import ProfilerActivity, schedule
    from torch.profiler import profile as torch_profile

    cfg = TrainConfig(lr=1e-7, steps=5, eval_every=0, bf16=True)
    ctx = ObjectiveContext(mask=mask, positions="all")
    with torch_profile(
        activities=[ProfilerActivity.CPU], record_shapes=True, schedule=schedule(wait=1, warmup=1, active=1, repeat=1)
    ) as prof:
        train(
            model,
            OBJECTIVES["kl-uniform"],
            ctx,
            lambda g, rows: random_tokens(49152, rows, cfg.seq_len, g),
            cfg,
            log=lambda record: prof.step(),
            progress=False,
        )
    print("\nOne steady-state default bf16 step, by self CPU time and input shapes:\n")
    print(
        prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=32, max_shapes_column_width=50
        )
    )


if __name__ == "__main__":
    main()
