"""P8: training and sampling against what this machine can do, measured in the same run.

    python benchmarks/p8_hardware.py [--steps 6] [--rounds 2] [--sample-rounds 2] [--no-training]

The machine's peak: a 2048 x 2048 x 2048 matmul in bf16 and in fp32 (best of several reps, after a
warm-up). The training step's dtype is bf16 where the CPU runs it natively (engine.native_bf16) and
fp32 otherwise; its peak is that dtype's. Memory bandwidth: the best of several reads (sum) and
copies of a 1 GiB buffer, in bytes moved per second.

Training: tokentilt tilt's default step (kl-uniform toward x on random tokens, T = 64, Adam, the
fused head) through train.train(), for the whole model and for a LoRA adapter (r 16 on every
projection), at B = 4 (the default) and B = 16 (four times the rows per matmul; a recipe that keeps
tokens per update would take a quarter of the steps). The variants alternate round by round from the
same weights. Share = tokens/s x 6N FLOPs per token over the peak (N = the model's parameters; a LoRA
step does about 4N: no weight gradients for the frozen base, which the table also gives).

Sampling: one R measurement's batch (16 prompts x 4 samples, 48 new tokens) through generate.sample(),
and one sample of one prompt (batch 1, as a chat user or llama.cpp decodes), each through the lean
Llama step (models/llama_step.py: fused weights, its own KV-cache; what sample() does) and through
the model's forward (before it), both with oneDNN's packed output head (models/packed.py), alternating
round by round. Its bounds: memory, 48 decoding steps
that each read every weight once plus the KV cache so far, at the measured bandwidth;
compute, 2N FLOPs per generated token at the peak (prompt tokens not counted). The same rows again
for the model with a LoRA adapter (r 16 on every projection, as a LoRA tilt samples it while it
trains), whose bounds are the base model's (what its merged form reads and computes). A step cannot be faster
than the larger of the two; the share is that bound over the measured time. At batch 64 the compute
bound is the larger; at batch 1 the memory bound is.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

import torch

from tokentilt.data.corpus import random_tokens
from tokentilt.measurement.sampling import DEFAULT_PROMPTS, SampleConfig, sample
from tokentilt.models import lora
from tokentilt.models.fast import llama_step
from tokentilt.models.load import load_model
from tokentilt.objectives.fused import output_head
from tokentilt.objectives.losses import OBJECTIVES, ObjectiveContext
from tokentilt.targets.tokens import resolve_set
from tokentilt.training.engine import native_bf16
from tokentilt.training.loop import TrainConfig, train


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of the best of `reps` n x n x n matmuls."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up: oneDNN picks and caches its kernel
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best


def bandwidth(gib: float = 1.0, reps: int = 5) -> float:
    """Bytes per second: the best of a read (sum of a buffer) and a copy (read + write) of `gib` GiB."""
    src = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    src.sum(), dst.copy_(src)  # warm-up: the pages are touched
    read = min(_timed(src.sum) for _ in range(reps))
    copy = min(_timed(lambda: dst.copy_(src)) for _ in range(reps))
    size = src.numel() * 4
    return max(size / read, 2 * size / copy)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def step_seconds(model, mask, cfg: TrainConfig) -> list[float]:
    """Seconds per step of `cfg.steps` steps, the first two (warm-up) left out."""
    stamps: list[float] = []
    train(
        model,
        OBJECTIVES["kl-uniform"],
        ObjectiveContext(mask=mask, positions="all"),
        lambda g, rows: random_tokens(mask.numel(), rows, cfg.seq_len, g),
        cfg,
        log=lambda r: stamps.append(time.perf_counter()),
        progress=False,
    )
    return [b - a for a, b in zip(stamps[1:], stamps[2:])]


def training(model, mask, steps: int, rounds: int, bf16: bool, batches=(4, 16)) -> dict[str, tuple[float, int]]:
    """{variant: (median seconds per step, tokens per step)}, the variants alternating round by round,
    each round from the same weights. The LoRA variants train an adapter on a second copy of the model."""
    peft = lora.add_adapter(load_model("bundled")[0], lora.LoraArgs(lora=True), seed=0)
    models = {"model": model, "LoRA r 16": peft}
    start = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in models.items()}
    variants = {f"{p}, B = {b}": (p, b) for p in models for b in batches}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (placement, batch) in variants.items():
            models[placement].load_state_dict(start[placement])
            cfg = TrainConfig(lr=1e-7, steps=steps + 2, batch=batch, eval_every=0, bf16=bf16)
            times[name] += step_seconds(models[placement], mask, cfg)
    model.load_state_dict(start["model"])
    return {name: (statistics.median(t), variants[name][1] * 64) for name, t in times.items()}


def sampling(model, tokenizer, prompts, per_prompt: int, rounds: int, bf16: bool) -> dict[str, tuple[float, int]]:
    """{kernels: (median seconds, generated tokens)} of `per_prompt` samples of 48 tokens of each prompt, in
    one batch: each step through the lean Llama step (models/llama_step.py, what generate.sample() does)
    and through the model's forward (before it), both on oneDNN's packed weights, alternating round by round."""
    seconds: dict[str, list[float]] = {"forward (before)": [], "lean step": []}
    for r in range(rounds):
        for kernels, times in seconds.items():
            lean = llama_step.supports if "lean" in kernels else lambda model: False
            with mock.patch.object(llama_step, "supports", lean):
                start = time.perf_counter()
                out = sample(model, tokenizer, prompts, per_prompt, SampleConfig(max_new_tokens=48), r, bf16=bf16)
                times.append(time.perf_counter() - start)
    return {kernels: (statistics.median(times), out.tokens.numel()) for kernels, times in seconds.items()}


def kv_bytes_per_step(model, rows: int, prompt: int, new: int, element: int) -> float:
    """Mean bytes of KV cache read per decoding step (keys and values of every layer, the length growing)."""
    c = model.config
    heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    per_token = 2 * c.num_hidden_layers * heads * (c.hidden_size // c.num_attention_heads) * element
    return rows * per_token * (prompt + new / 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sample-rounds", type=int, default=2)
    parser.add_argument("--no-training", action="store_true", help="the peak, bandwidth and sampling rows only")
    parser.add_argument("--no-sampling", action="store_true", help="the peak, bandwidth and training rows only")
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 16], help="training batch sizes (T = 64)")
    args = parser.parse_args()
    bf16 = native_bf16()
    dtype = "bf16" if bf16 else "fp32"
    # without native bf16 a 2048^3 bf16 matmul takes seconds (oneDNN emulates it): a smaller one says as much
    peaks = {
        "bf16": matmul_peak(torch.bfloat16, *((2048, 5) if bf16 else (1024, 2))),
        "fp32": matmul_peak(torch.float32),
    }
    peak, bw = peaks[dtype], bandwidth()
    model, tokenizer = load_model("bundled")
    n_params = sum(p.numel() for p in model.parameters())
    mask = resolve_set("x", tokenizer, output_head(model).weight.shape[0]).mask
    print(
        f"bundled model, N = {n_params / 1e6:.1f}M, {torch.get_num_threads()} threads; native bf16: {bf16}\n"
        f"square matmul: bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s, fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s; "
        f"the step runs {dtype}: peak **{peak / 1e9:.0f} GFLOP/s**; memory bandwidth {bw / 1e9:.1f} GB/s\n",
        flush=True,
    )
    new, element = 48, 2 if bf16 else 4
    rows = []
    if not args.no_sampling:
        # the LoRA model as a LoRA tilt samples it while it trains (B = 0 at PEFT's start: the same cost)
        peft = lora.add_adapter(load_model("bundled")[0], lora.LoraArgs(lora=True), seed=0)
        for name, m in (("", model), (", LoRA r 16", peft)):
            rows += [
                (f"64 rows (an R batch){name}", m, DEFAULT_PROMPTS, 4),
                (f"1 row{name}", m, DEFAULT_PROMPTS[:1], 1),
            ]
    if rows:
        print(
            "| sampling, 48 tokens a row | seconds | tokens/s | memory bound s | compute bound s | share of the bound |\n"
            "|---|---|---|---|---|---|"
        )
    for label, sampled, prompts, per_prompt in rows:
        runs = sampling(sampled, tokenizer, prompts, per_prompt, args.sample_rounds, bf16)
        prompt = statistics.mean(len(tokenizer(p)["input_ids"]) for p in prompts)
        step_bytes = n_params * element + kv_bytes_per_step(model, len(prompts) * per_prompt, prompt, new, element)
        for kernels, (seconds, new_tokens) in runs.items():
            memory_bound = new * step_bytes / bw
            compute_bound = 2 * n_params * new_tokens / peak
            bound = max(memory_bound, compute_bound)
            print(
                f"| {label}, {dtype}, {kernels} | {seconds:.2f} | {new_tokens / seconds:.0f} | {memory_bound:.2f} | "
                f"{compute_bound:.2f} | **{bound / seconds:.0%}** (memory {memory_bound / seconds:.0%}) |",
                flush=True,
            )
    if rows:
        print()
    if args.no_training:
        return
    print("| training step, T = 64 | s/step | tokens/s | share of peak at 6N | at 4N (LoRA) |\n|---|---|---|---|---|")
    for name, (s, tokens) in training(model, mask, args.steps, args.rounds, bf16, args.batches).items():
        rate = tokens / s
        four = f"{rate * 4 * n_params / peak:.0%}" if "LoRA" in name else ""
        print(f"| {name} | {s:.3f} | {rate:.0f} | **{rate * 6 * n_params / peak:.0%}** | {four} |")


if __name__ == "__main__":
    main()
