"""fp32 vs bf16-autocast training step on the bundled model, measured side by side.

    python benchmarks/train_step.py [--steps 8] [--batch 4] [--seq-len 64]

The two settings alternate step by step (A B A B ...) so that a machine whose speed drifts
affects both alike; the table gives each median and the per-pair ratio. Also reports the
peak resident memory of the process. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from tokentilt.data.corpus import random_tokens
from tokentilt.models.load import load_model
from tokentilt.objectives.losses import OBJECTIVES, ObjectiveContext
from tokentilt.targets.tokens import resolve_set


def one_step(model, optimizer, objective, ctx, ids, bf16: bool) -> float:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(input_ids=ids).logits  # (B, T, V)
    loss = objective(logits, ids, ctx)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed pairs (after 1 warm-up pair)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    args = parser.parse_args()

    model, tokenizer = load_model("bundled")
    model.train()
    mask = resolve_set("x", tokenizer, 49152).mask
    ctx = ObjectiveContext(mask=mask, positions="all")
    objective = OBJECTIVES["kl-uniform"]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-7)
    g = torch.Generator().manual_seed(0)
    times = {False: [], True: []}
    for i in range(args.steps + 1):
        ids = random_tokens(49152, args.batch, args.seq_len, g)
        for bf16 in (False, True):
            t = one_step(model, optimizer, objective, ctx, ids, bf16)
            if i > 0:
                times[bf16].append(t)
    ratios = [a / b for a, b in zip(times[False], times[True])]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"Adam step, bundled model, B={args.batch}, T={args.seq_len}, {args.steps} pairs, "
        f"{torch.get_num_threads()} threads"
    )
    print("| setting | median s/step | min | max |")
    print("|---|---|---|---|")
    for bf16, name in ((False, "fp32"), (True, "bf16 autocast")):
        ts = times[bf16]
        print(f"| {name} | {statistics.median(ts):.3f} | {min(ts):.3f} | {max(ts):.3f} |")
    print(
        f"\nspeed-up fp32/bf16, median of per-pair ratios: {statistics.median(ratios):.2f}x "
        f"(min {min(ratios):.2f}, max {max(ratios):.2f})"
    )
    print(f"peak resident memory of the process: {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
