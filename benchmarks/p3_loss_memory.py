"""P3: peak memory and time of the head + KL-to-target loss + backward, fused and chunked against dense.

    python benchmarks/p3_loss_memory.py [--rounds 3] [--rows 4096] [--chunk 512]

From the final hidden states (N rows, d = 576, the bundled model's width) through the output head
(V = 49,152) to KL(q || softmax(z)) for the uniform target on a set, and its backward to the hidden
states and the head weight:
- dense: logits = h @ W^T, then F.kl_div(log_softmax(logits), q expanded to (N, V), "batchmean");
- fused: losses.FUSED[kl-uniform] on fused.Head, which is what training runs.
Each measurement runs in a fresh process (peak resident memory, VmHWM, above the resident memory
just before the loss), and the two alternate round by round. A first in-process check
compares the value and both gradients. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

D, V = 576, 49152


def inputs(rows: int):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(rows, D, generator=g)  # (N, d)
    weight = torch.randn(V, D, generator=g) * 0.05  # (V, d)
    mask = torch.zeros(V, dtype=torch.bool)
    mask[torch.randperm(V, generator=g)[:700]] = True  # about the size of the set "x"
    return hidden, weight, mask


def dense(hidden, weight, mask):
    q = mask.float() / mask.sum()  # (V,)
    logits = hidden @ weight.T  # (N, V)
    return F.kl_div(F.log_softmax(logits, -1), q.expand_as(logits), reduction="batchmean")


def fused(hidden, weight, mask, chunk):
    from tokentilt.objectives.fused import Head
    from tokentilt.objectives.losses import FUSED, OBJECTIVES, ObjectiveContext

    ctx = ObjectiveContext(mask=mask, positions="all")
    return FUSED[OBJECTIVES["kl-uniform"]](hidden[None], Head(weight, chunk=chunk), None, ctx)


def status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process. Not getrusage's ru_maxrss: Linux carries that
    across exec from the parent, which here has just run the dense loss itself."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def measure(kind: str, rows: int, chunk: int) -> dict:
    """In this (fresh) process: loss + backward once, its seconds and its peak memory above the start."""
    hidden, weight, mask = inputs(rows)
    hidden.requires_grad_()
    weight.requires_grad_()
    before = status_mb("VmRSS")
    start = time.perf_counter()
    loss = dense(hidden, weight, mask) if kind == "dense" else fused(hidden, weight, mask, chunk)
    loss.backward()
    seconds = time.perf_counter() - start
    return {"kind": kind, "seconds": seconds, "peak_mb": status_mb("VmHWM") - before}


def check(rows: int, chunk: int) -> dict:
    results = []
    for kind in ("dense", "fused"):
        hidden, weight, mask = inputs(rows)
        hidden.requires_grad_()
        weight.requires_grad_()
        loss = dense(hidden, weight, mask) if kind == "dense" else fused(hidden, weight, mask, chunk)
        loss.backward()
        results.append((loss.detach(), hidden.grad, weight.grad))
    (a, ah, aw), (b, bh, bw) = results

    def rel(x, y):
        return float((x - y).abs().max() / y.abs().max())

    return {
        "value_dense": a.item(),
        "value_fused": b.item(),
        "value_rel": abs(a.item() - b.item()) / abs(a.item()),
        "grad_hidden_rel": rel(bh, ah),
        "grad_weight_rel": rel(bw, aw),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating dense/fused rounds, each in a fresh process")
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--measure", choices=["dense", "fused"], help=argparse.SUPPRESS)  # the child's job
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.rows, args.chunk)))
        return
    agreement = check(args.rows, args.chunk)
    runs = {"dense": [], "fused": []}
    for _ in range(args.rounds):
        for kind in runs:
            out = subprocess.run(
                [sys.executable, __file__, "--measure", kind, "--rows", str(args.rows), "--chunk", str(args.chunk)],
                capture_output=True,
                text=True,
                check=True,
            )
            runs[kind].append(json.loads(out.stdout))
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("seconds", "peak_mb")} for k, v in runs.items()}
    print(
        f"N = {args.rows}, d = {D}, V = {V}, chunk = {args.chunk}, fp32, {torch.get_num_threads()} threads, "
        f"{args.rounds} rounds\n"
    )
    print("| loss | median peak MB above start | median s (loss + backward) |\n|---|---|---|")
    for kind in runs:
        print(f"| {kind} | {med[kind]['peak_mb']:.0f} | {med[kind]['seconds']:.3f} |")
    print(f"\n- peak memory fused / dense: **{med['fused']['peak_mb'] / med['dense']['peak_mb']:.3f}x**")
    print(f"- speed dense s / fused s: **{med['dense']['seconds'] / med['fused']['seconds']:.2f}x**")
    print(
        f"- value: dense {agreement['value_dense']:.7f}, fused {agreement['value_fused']:.7f} "
        f"(relative difference {agreement['value_rel']:.1e}); largest gradient difference relative to the "
        f"largest gradient: hidden {agreement['grad_hidden_rel']:.1e}, weight {agreement['grad_weight_rel']:.1e}"
    )


if __name__ == "__main__":
    main()
