"""Write a randomly initialised Llama model with a 128k vocabulary as a Hugging Face folder.

    python scripts/sim_model.py --params 1b --out /tmp/sim-1b [--dtype bf16] [--vocab 128256]

Sizes: tiny, 135m-128k (SmolLM2-135M's body), 0.5b, 1b (models/simulated.py). The folder loads with
`tokentilt tilt --model DIR`. A cost model only: its R and rho mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from tokentilt.models import simulated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", choices=sorted(simulated.SIZES), default="1b", help="model size")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--vocab", type=int, default=simulated.VOCAB_SIZE, help="vocabulary size")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="stored dtype")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shape = dataclasses.replace(simulated.SIZES[args.params], vocab=args.vocab)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    start = time.perf_counter()
    n = simulated.save(shape, Path(args.out), args.seed, dtype)
    print(
        f"{args.params}: {n / 1e6:.1f}M parameters, V = {shape.vocab:,}, {args.dtype} -> {args.out} "
        f"({time.perf_counter() - start:.0f} s)"
    )


if __name__ == "__main__":
    main()
