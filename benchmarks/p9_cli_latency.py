"""P9: how long `tokentilt --help` and an error that needs no model take, before and after, side by side.

    python benchmarks/p9_cli_latency.py --before 1678f2d [--rounds 7] [--table FILE.md]

Each row is one whole `python -m tokentilt ...` process, run from a copy of the `--before` commit's src/
(`git archive`, imported through PYTHONPATH) and from this tree, the two alternating round by round so
that both see the same machine. Reported per command: the median wall seconds of each side (min-max in
brackets), their ratio, and the median user+system CPU seconds. Every process runs in an empty
temporary folder, so a command that got past its checks could write nothing that matters.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {  # name -> (arguments of `tokentilt`, the exit code both sides give)
    "tokentilt --help": (["--help"], 0),
    "tokentilt tilt --help": (["tilt", "--help"], 0),
    "tokentilt tilt --nope (bad flag)": (["tilt", "--nope"], 2),
    "tokentilt tilt --toward 'x &' (bad selector)": (["tilt", "--toward", "x &"], 2),
    "tokentilt eval --eval-text missing.txt": (["eval", "--eval-text", "missing.txt"], 2),
}


def timed(src: Path, argv: list[str], expected: int, cwd: str) -> tuple[float, float]:
    """One process with `src` first on the import path -> (wall seconds, user + system CPU seconds)."""
    env = {**os.environ, "PYTHONPATH": str(src), "COLUMNS": "100"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tokentilt", *argv], capture_output=True, cwd=cwd, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != expected:
        raise SystemExit(f"{src}: tokentilt {' '.join(argv)} exited {done.returncode}: {done.stderr.decode()[-300:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the commit to compare against (its src/ is archived)")
    parser.add_argument("--rounds", type=int, default=7, help="processes of each command on each side")
    parser.add_argument("--table", help="also write the Markdown table to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tokentilt-p9-") as tmp:
        before = Path(tmp) / "before"
        before.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.before, "src"], capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive.stdout, check=True)
        sides = {"before": before / "src", "after": ROOT / "src"}
        work = Path(tmp) / "work"
        work.mkdir()
        for side in sides.values():  # warm-up: the .pyc files and the page cache, once per side
            timed(side, ["--help"], 0, str(work))
        rows = []
        for name, (argv, code) in COMMANDS.items():
            wall = {side: [] for side in sides}
            cpu = {side: [] for side in sides}
            for _ in range(args.rounds):
                for side, src in sides.items():
                    w, c = timed(src, argv, code, str(work))
                    wall[side].append(w)
                    cpu[side].append(c)
            ratio = statistics.median(wall["before"]) / statistics.median(wall["after"])
            rows.append(
                f"| `{name}` | {spread(wall['before'])} | {spread(wall['after'])} | **{ratio:.1f}x** | "
                f"{statistics.median(cpu['before']):.2f} | {statistics.median(cpu['after']):.2f} |"
            )
            print(rows[-1], flush=True)
    table = "\n".join(
        [
            f"| command | wall s, before ({args.before}) | wall s, after | before / after | CPU s, before | "
            "CPU s, after |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(f"\n{args.rounds} rounds, medians [min-max]\n\n{table}")
    if args.table:
        Path(args.table).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
