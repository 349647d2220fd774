"""P6: seconds from the command to a tuned model, before and after, side by side in one run.

    python benchmarks/p6_time_to_tilt.py --before 8bc0fea --out runs/p6 --table runs/p6/table.md

Each cell is one whole `tokentilt tilt --toward SET --objective tilt-distill --rate R*` process on the
bundled model (loading, calibration, training rounds, every measurement, saving), run once from a
checkout of the `--before` commit (a git worktree, imported through PYTHONPATH) and once from this
tree, the two interleaved cell by cell so that both see the same machine. Reported per run: wall
seconds, the stage seconds from summary.json, R with its interval and rho, so a faster run that
measures something else shows it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CELLS = [("toward x", "x", 0.5), ("away from e", "e", 0.1)]  # (name, selector, R*): the frontier's cells
STAGES = ("load", "measure_before", "calibrate", "baseline", "train", "measure_after", "matched_decode", "save")


def run(src: Path, selector: str, rate: float, out: Path) -> dict:
    """One tilt process with `src` first on the import path -> its summary plus the wall seconds."""
    cmd = [
        sys.executable,
        "-m",
        "tokentilt",
        "tilt",
        "--toward",
        selector,
        "--objective",
        "tilt-distill",
        "--rate",
        str(rate),
        "--out",
        str(out),
        "--overwrite",
    ]
    env = {**os.environ, "PYTHONPATH": str(src)}
    print("$ PYTHONPATH=" + str(src), " ".join(cmd), flush=True)
    started = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    summary = json.loads((out / "summary.json").read_text())
    summary["wall"] = time.perf_counter() - started
    print(f"  {summary['wall']:.0f} s", flush=True)
    return summary


def row(name: str, which: str, target: float, s: dict) -> str:
    r, stages, rho = s["rate_after"], s.get("stage_seconds", {}), s.get("rho")
    cells = [
        name,
        which,
        f"{target:g}",
        f"{s['wall']:.0f}",
        f"{r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
        "n/a" if rho is None else f"{rho:.2f}",
    ]
    cells += [f"{stages[k]:.0f}" if k in stages else "-" for k in STAGES]
    return "| " + " | ".join(cells) + " |"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--before",
        default="8bc0fea",
        help="commit to compare against (default: the last one before the sampling and calibration changes)",
    )
    ap.add_argument("--out", default="runs/p6", help="folder of the run folders")
    ap.add_argument("--table", default="runs/p6/table.md", help="markdown file to write")
    ap.add_argument(
        "--cells", nargs="+", choices=[c[1] for c in CELLS], default=[c[1] for c in CELLS], help="selectors to run"
    )
    args = ap.parse_args()
    out = Path(args.out)
    lines = [
        "| cell | code | R* | wall s | R [95% CI] | rho | " + " | ".join(STAGES) + " |",
        "|" + "---|" * (6 + len(STAGES)),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before), args.before], check=True)
        try:
            for name, selector, rate in (c for c in CELLS if c[1] in args.cells):
                for which, src in ((f"before ({args.before})", before / "src"), ("after", ROOT / "src")):
                    folder = out / f"{selector}-{rate:g}-{which.split()[0]}"
                    lines.append(row(name, which, rate, run(src, selector, rate, folder)))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)], check=False)
    table = "\n".join(lines)
    Path(args.table).parent.mkdir(parents=True, exist_ok=True)
    Path(args.table).write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
