"""P10: `tokentilt tilt --toward x --rate 0.5` at the sizes users tilt: seconds and peak memory per stage.

    python benchmarks/p10_sizes.py [--sizes bundled 135m-128k 0.5b 1b] [--precision fp32] [--samples-per-prompt 2]
        [--new-tokens 24] [--rate-rounds 3] [--models /tmp/p10-models] [--out /tmp/p10]

The bundled SmolLM2-135M (V 49,152) and randomly initialised Llama models with a 128k vocabulary
(models/simulated.py): 135m-128k is the bundled model's body with the 128k vocabulary (it separates the
vocabulary from the parameters), 0.5b and 1b are Llama 3.2 1B's shapes with 4 and 12 layers. Each size is
one whole `tokentilt tilt` process, run one after another; the seconds and the peak resident memory of each
stage come from its summary.json (stage_seconds, stage_peak_rss_mb). The simulated models are written once
to --models. A random model is a cost model: its R and rho are not reported.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tokentilt.models import simulated

STAGES = ("load", "measure_before", "calibrate", "baseline", "train", "measure_after", "matched_decode", "save")
ROOT = Path(__file__).resolve().parent.parent


def model_folder(size: str, models: Path) -> str:
    """'bundled', or the simulated model's folder (written the first time)."""
    if size == "bundled":
        return "bundled"
    folder = models / f"sim-{size}"
    if not (folder / "config.json").is_file():
        n = simulated.save(simulated.SIZES[size], folder)
        print(f"wrote {folder}: {n / 1e6:.1f}M parameters", flush=True)
    return str(folder)


def tilt(model: str, out: Path, precision: str, args) -> tuple[dict, float]:
    """(summary.json, wall seconds) of one tilt process."""
    command = [sys.executable, "-m", "tokentilt", "tilt", "--model", model, "--toward", "x", "--rate", "0.5"]
    command += ["--precision", precision, "--out", str(out), "--overwrite"]
    command += ["--samples-per-prompt", str(args.samples_per_prompt), "--new-tokens", str(args.new_tokens)]
    command += ["--rate-rounds", str(args.rate_rounds)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT / "src")]))}
    start = time.perf_counter()
    with open(out.with_suffix(".log"), "w") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=True, cwd=ROOT)
    return json.loads((out / "summary.json").read_text()), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["bundled", "135m-128k", "0.5b", "1b"])
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=("fp32", "bf16"))
    parser.add_argument("--samples-per-prompt", type=int, default=2, help="R samples per prompt (default run: 4)")
    parser.add_argument("--new-tokens", type=int, default=24, help="tokens per R sample (default run: 48)")
    parser.add_argument("--rate-rounds", type=int, default=3, help="trainings that correct b (default run: 3)")
    parser.add_argument("--models", default="/tmp/p10-models", help="where the simulated models are written")
    parser.add_argument("--out", default="/tmp/p10", help="run folders, their logs and table.md")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    header = (
        "| model | params | V | precision | wall s | "
        + " | ".join(STAGES)
        + " | peak RSS MB | peak RSS MB by stage |\n|"
        + "---|" * (len(STAGES) + 7)
    )
    lines = [
        f"{args.samples_per_prompt} samples per prompt x {args.new_tokens} tokens (4 x 48 by default), "
        f"{args.rate_rounds} rate round(s) (3 by default), "
        f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}",
        "",
        header,
    ]
    print("\n".join(lines), flush=True)
    for size in args.sizes:
        model = model_folder(size, Path(args.models))
        for precision in args.precision:
            summary, wall = tilt(model, out / f"{size}-{precision}", precision, args)
            stages = summary["stage_seconds"]
            peaks = summary["stage_peak_rss_mb"]
            line = (
                f"| {size} | {summary['total_params'] / 1e6:.0f}M | {summary['vocab_size']:,} | {precision} | "
                f"{wall:.0f} | "
                + " | ".join(f"{stages.get(s, 0):.0f}" for s in STAGES)
                + f" | {summary['peak_rss_mb']:,.0f} | "
                + ", ".join(f"{s} {peaks[s]:,.0f}" for s in STAGES if s in peaks)
                + " |"
            )
            lines.append(line)
            print(line, flush=True)
    (out / "table.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
