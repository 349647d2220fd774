"""P5: loading the bundled model the second time (safetensors cache) against the first (GGUF de-quantisation).

    python benchmarks/p5_load_cache.py [--rounds 3]

Each round uses a fresh, empty cache folder ($XDG_CACHE_HOME) and three fresh processes, each timing
`load_model("bundled")` alone (model and tokenizer, imports excluded):
- first: de-quantise the GGUF and write the cache (checksums included);
- second: read the cache, after checking the GGUF's and every cached file's SHA-256;
- GGUF only: de-quantise with the cache switched off (XDG_CACHE_HOME on an unwritable path), the
  load as it was before the cache.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child() -> None:
    from tokentilt.models.load import load_model

    start = time.perf_counter()
    load_model("bundled")
    print(json.dumps({"seconds": time.perf_counter() - start}))


def timed(cache_home: str) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--child"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "XDG_CACHE_HOME": cache_home},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child()
    times = {"first (GGUF + write cache)": [], "second (cache)": [], "GGUF only, no cache": []}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as home:
            blocked = Path(home) / "not-a-folder"
            blocked.write_text("")
            first, second = timed(home), timed(home)
            times["first (GGUF + write cache)"].append(first)
            times["second (cache)"].append(second)
            times["GGUF only, no cache"].append(timed(str(blocked)))
    import torch

    print(f"load_model('bundled'), {args.rounds} rounds, {torch.get_num_threads()} threads\n")
    print("| load | median s | min | max |\n|---|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t):.2f} | {min(t):.2f} | {max(t):.2f} |")
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n- first / second: **{med['first (GGUF + write cache)'] / med['second (cache)']:.1f}x**")
    print(f"- GGUF only / second: **{med['GGUF only, no cache'] / med['second (cache)']:.1f}x**")


if __name__ == "__main__":
    main()
