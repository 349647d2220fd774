"""P11: peak memory, and whether it grows with the work a run samples (issue 41).

    python benchmarks/p11_memory.py [--sampler] [--runs] [--out runs/p11]

Sampler (--sampler): one process per cell loads the bundled model, then samples 16 prompts x K samples of
L new tokens through generate.sample() with the step scores and head inputs recorded (what a tilt --rate
run's R measurements do), in fp32 and under bf16 autocast. It prints the resident memory after loading
and the peak during sampling. The samples and what is recorded grow by (K·16)·L·(d + 2) numbers, a few
MB; a sampler that recorded autograd graphs grows by every step's activations instead (issue 41: 350
MB a second under bf16).

Runs (--runs): the demo command, `tokentilt tilt --toward x --rate 0.5`, in fp32 and bf16, and in fp32
with 1 and 3 rate rounds and with 2 and 8 samples per prompt; each run's peak resident memory and its
stages' peaks come from its summary.json.

Every cell is a fresh process, so one cell's allocator state cannot hide another's peak.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SAMPLER = """
import json, sys, torch
from tokentilt.training.engine import peak_rss_mb, reset_peak_rss
from tokentilt.measurement.sampling import DEFAULT_PROMPTS, SampleConfig, sample
from tokentilt.models.load import load_model
from tokentilt.targets.tokens import resolve_set
per_prompt, new, bf16 = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "bf16"
model, tok = load_model("bundled")
mask = resolve_set("x", tok, model.get_output_embeddings().weight.shape[0]).mask
loaded = peak_rss_mb(); reset_peak_rss()
got = sample(model, tok, DEFAULT_PROMPTS, per_prompt, SampleConfig(max_new_tokens=new), seed=1, bf16=bf16,
             score_mask=mask)
print(json.dumps({"loaded_mb": loaded, "peak_mb": peak_rss_mb(), "rows": len(got.texts)}))
"""

SAMPLER_CELLS = [(2, 48), (4, 48), (8, 48), (4, 24), (4, 96)]  # (samples per prompt, new tokens)


def sampler_rows() -> list[str]:
    rows = [
        "| precision | samples | new tokens | RSS after load (MB) | peak while sampling (MB) | growth (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for precision in ("fp32", "bf16"):
        for per_prompt, new in SAMPLER_CELLS:
            out = subprocess.run(
                [sys.executable, "-c", SAMPLER, str(per_prompt), str(new), precision],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            got = json.loads(out.strip().splitlines()[-1])
            rows.append(
                f"| {precision} | {got['rows']} | {new} | {got['loaded_mb']:.0f} | {got['peak_mb']:.0f} | "
                f"{got['peak_mb'] - got['loaded_mb']:.0f} |"
            )
            print(rows[-1], flush=True)
    return rows


RUN_CELLS = [  # (label, extra flags)
    ("fp32", ["--precision", "fp32"]),
    ("bf16", ["--precision", "bf16"]),
    ("fp32, 1 rate round", ["--precision", "fp32", "--rate-rounds", "1"]),
    ("fp32, 3 rate rounds", ["--precision", "fp32", "--rate-rounds", "3"]),
    ("fp32, 2 samples per prompt", ["--precision", "fp32", "--samples-per-prompt", "2"]),
    ("fp32, 8 samples per prompt", ["--precision", "fp32", "--samples-per-prompt", "8"]),
]


def run_rows(out: Path) -> list[str]:
    rows = [
        "| demo command | rounds | samples | seconds | peak RSS (MB) | peak per stage (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for i, (label, extra) in enumerate(RUN_CELLS):
        folder = out / f"run{i}"
        cmd = [sys.executable, "-m", "tokentilt", "tilt", "--toward", "x", "--rate", "0.5", "--out", str(folder)]
        subprocess.run([*cmd, "--overwrite", *extra], check=True, capture_output=True)
        s = json.loads((folder / "summary.json").read_text())
        stages = ", ".join(f"{k} {v:.0f}" for k, v in s["stage_peak_rss_mb"].items())
        rows.append(
            f"| {label} | {len(s.get('bias_rounds') or [])} | {s['samples']} | {s['seconds']:.0f} | "
            f"{s['peak_rss_mb']:.0f} | {stages} |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sampler", action="store_true", help="the sampler's growth table")
    parser.add_argument("--runs", action="store_true", help="the demo command's peaks")
    parser.add_argument("--out", default=None, help="where the runs' folders go (default: a temporary folder)")
    args = parser.parse_args()
    both = not (args.sampler or args.runs)
    if args.sampler or both:
        print("\n".join(sampler_rows()))
    if args.runs or both:
        with tempfile.TemporaryDirectory() as tmp:
            print("\n".join(run_rows(Path(args.out or tmp))))


if __name__ == "__main__":
    main()
