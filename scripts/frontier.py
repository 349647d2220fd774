"""The frontier table: tilt-distill's default recipe against the decode-time optimum, cell by cell.

    python scripts/frontier.py --out runs/frontier        # writes docs/frontier.md and prints it
    python scripts/frontier.py --cells rate --out runs/rate-cells --table runs/rate-cells.md   # issue 43's cells

Each cell is one `tokentilt tilt --objective tilt-distill --rate R*` run on the bundled model,
in its own process (so its seconds include loading, calibration and every round). A cell whose
run folder already holds summary.json is not run again: rerun after an interruption and only the
missing cells run. The table reports, per cell, R with its 95% interval, the perplexities of the
base model, of the decode-time tilt at the same R and of the tuned model, rho, the drift ratio,
distinct-2 and seconds, and checks the targets (intervals.target_met): R* inside R's 95% interval, whose
half-width is at most 0.03; rho's 95% upper bound <= 1.5; and seconds <= 600. A cell from before rho had an
interval (no rho_ci_high in its summary.json) does not meet them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from tokentilt.measurement.intervals import target_met
from tokentilt.runs.report import with_interval
from tokentilt.training.engine import native_bf16

RATE_TOLERANCE = 0.03  # the largest half-width of R's 95% interval that counts as a measured rate (issue 43)
RHO_LIMIT = 1.5  # rho's 95% upper bound must be at most this

CELLS = [  # (name, selector, R*, more flags)
    ("x", "x", 0.1, ()),
    ("x", "x", 0.5, ()),
    ("x", "x", 0.9, ()),
    ("colour words", "words:colours", 0.1, ()),
    ("colour words", "words:colours", 0.5, ()),
    ("colour words", "words:colours", 0.9, ()),
    ("all-caps tokens", r"regex:^\s?[A-Z]{2,}$", 0.1, ()),
    ("all-caps tokens", r"regex:^\s?[A-Z]{2,}$", 0.5, ()),
    ("all-caps tokens", r"regex:^\s?[A-Z]{2,}$", 0.9, ()),
    ("e (away)", "e", 0.1, ()),
]
RATE_CELLS = [  # issue 43's cells, at tilt's defaults: (name, selector, R*, more flags)
    ("x", "x", 0.3, ()),
    ("e (away)", "e", 0.15, ()),
    ("10-word phrase list", "phrases:benchmarks/phrases/toward.txt", 0.05, ()),
    ("x in chat", "x", 0.3, ("--chat",)),
]
COLUMNS = (
    "set",
    "selector",
    "R*",
    "R [95% CI]",
    "samples",
    "ppl base",
    "ppl decode",
    "ppl tuned",
    "rho [95% CI]",
    "drift ratio",
    "distinct-2",
    "seconds",
    "targets met",
)


def folder_name(selector: str, rate: float, flags: tuple = ()) -> str:
    safe = "".join(c if c.isalnum() else "-" for c in " ".join((selector, *flags))).strip("-")
    return f"{safe}-{rate:g}"


def run_cell(out: Path, selector: str, rate: float, per_prompt: int | None, extra: list[str]) -> None:
    precision = ["--bf16"] if native_bf16() else []  # emulated bf16 is tens of times slower than fp32
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
        *([] if per_prompt is None else ["--samples-per-prompt", str(per_prompt)]),
        *precision,
        "--out",
        str(out),
        "--overwrite",
        *extra,
    ]
    print("$", " ".join(cmd), flush=True)
    started = time.time()
    subprocess.run(cmd, check=True)
    print(f"  {time.time() - started:.0f} s", flush=True)


def row(name: str, selector: str, target: float, s: dict) -> dict:
    r = s["rate_after"]
    rho, ratio = s.get("rho"), s.get("drift_ratio")
    rho_ci = (s.get("rho_ci_low"), s.get("rho_ci_high")) if rho is not None else None
    met = target_met(r, target, RATE_TOLERANCE, rho_ci, RHO_LIMIT) and s["seconds"] <= 600
    return {
        "set": name,
        "selector": f"`{selector}`",
        "R*": f"{target:g}",
        "R [95% CI]": f"{r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
        "samples": f"{r['n']} ({r['stop']})" if "stop" in r else str(r.get("n", "?")),
        "ppl base": f"{s['ppl_before']:.2f}",
        "ppl decode": f"{s['matched_decode']['ppl']:.2f}",
        "ppl tuned": f"{s['ppl_after']:.2f}",
        "rho [95% CI]": "n/a" if rho is None else with_interval(s, "rho"),
        "drift ratio": "n/a" if ratio is None else f"{ratio:.2f}",
        "distinct-2": f"{s['distinct_2_after']:.3f}",
        "seconds": f"{s['seconds']:.0f}",
        "targets met": "yes" if met else "**no**",
    }


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r[c] for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/frontier", help="folder of the cells' run folders")
    ap.add_argument(
        "--table", help="markdown file to write (default: docs/frontier.md; with --cells rate, OUT/table.md)"
    )
    ap.add_argument(
        "--cells",
        choices=("frontier", "rate"),
        default="frontier",
        help="frontier: 3 sets x 3 rates and e away; rate: issue 43's cells (x 0.3, e away 0.15, a 10-word "
        "phrase list 0.05, x in chat 0.3)",
    )
    ap.add_argument("--only", metavar="SUBSTRING", help="run only the cells whose folder name contains this")
    ap.add_argument(
        "--samples-per-prompt",
        type=int,
        help="R samples per prompt in each measurement's first pass (default: the tool's own, 4; then more "
        "samples until R's interval is at most +-0.02 or the budget of 512 is drawn, as `tilt` does by default)",
    )
    ap.add_argument("extra", nargs="*", help="more flags for every tilt run (after --)")
    args = ap.parse_args()
    out = Path(args.out)
    rows = []
    cells = CELLS if args.cells == "frontier" else RATE_CELLS
    for name, selector, target, flags in cells:
        cell = out / folder_name(selector, target, flags)
        if args.only and args.only not in cell.name:
            continue
        if not (cell / "summary.json").is_file():
            run_cell(cell, selector, target, args.samples_per_prompt, [*flags, *args.extra])
        rows.append(row(name, selector, target, json.loads((cell / "summary.json").read_text())))
    table = markdown(rows)
    if args.table is None:
        args.table = "docs/frontier.md" if args.cells == "frontier" else str(out / "table.md")
    title = {
        "frontier": "Frontier: tilt-distill (head rows, offset fit) against the decode-time optimum",
        "rate": "Issue 43's rate cells: tilt-distill at the defaults against the decode-time optimum",
    }[args.cells]
    Path(args.table).parent.mkdir(parents=True, exist_ok=True)
    Path(args.table).write_text(
        f"# {title}\n\n"
        f"Made by `python scripts/frontier.py --cells {args.cells}` on the bundled model (2-core CPU, "
        f"{'bf16' if native_bf16() else 'fp32: this CPU has no native bf16'}). "
        "rho = (ppl tuned - ppl base) / (ppl decode - ppl base), with the decode-time tilt at the tuned "
        "model's R; drift ratio = drift tuned / drift decode. b is chosen on probe seeds (calibration and rate "
        f"rounds); R is measured on other seeds, over 16 prompts and 48 tokens a sample, with samples added until "
        "R's interval is at most +-0.02 or 512 are drawn (the column samples says which stopped it); "
        "perplexity on 16 x 128 held-out tokens of the plays' test split.\n\n" + table + "\n"
    )
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
