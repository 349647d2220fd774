"""Blind check of `tokentilt audit`: plant tilts on the bundled model with `tokentilt tilt`, audit each
without telling it the set, and count how often the audit's top feature is the planted set.

    python scripts/audit_blind.py --runs runs/audit-blind --table runs/audit-blind/table.md

Each case trains once into RUNS/NAME (kept; delete the folder to train again) and is audited into
RUNS/NAME-audit (the shipped word lists, the planted colours list among them, are always candidates).
A hit: the top feature selects the planted tokens (Jaccard >= 0.8) in the planted direction; for the
case where nothing was planted, a hit is "nothing stands out". The table (Markdown) goes to --table and to stdout.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

EVAL = ["--samples-per-prompt", "1", "--eval-every", "0", "--eval-windows", "4"]  # R over 16 samples: cheaper

DISTILL = ["--objective", "tilt-distill"]
FRONTIER = Path("/work/runs-m/frontier")  # scripts/frontier.py's runs on this machine (see REUSE)

# name, what was planted (kind), direction, the planted selector, the tilt flags after --toward
CASES = [  # cheapest and most varied first, so that a partial rerun covers the most ground
    ("x-distill-0.1", "letter", "toward", "x", [*DISTILL, "--rate", "0.1", "--bf16"]),
    ("colours-distill-0.1", "word list", "toward", "words:colours", [*DISTILL, "--rate", "0.1", "--bf16"]),
    ("allcaps-distill-0.5", "regex class", "toward", r"regex:^\s?[A-Z]{2,}$", [*DISTILL, "--rate", "0.5", "--bf16"]),
    ("e-away-distill-0.1", "letter", "away", "e", [*DISTILL, "--rate", "0.1", "--bf16"]),
    (
        "x-course",
        "letter",
        "toward",
        "x",
        ["--objective", "kl-uniform", "--lr", "1e-4", "--positions", "all", "--steps", "40", "--bf16"],
    ),
    (
        "e-away-unlikelihood",
        "letter",
        "away",
        "e",
        ["--objective", "away", "--lr", "1e-5", "--steps", "40", "--bf16", *EVAL],
    ),
    (
        "ing-alpha-beta",
        "substring",
        "toward",
        "ing",
        ["--objective", "kl-alpha-beta", "--lr", "1e-5", "--steps", "40", "--bf16", *EVAL],
    ),
    (
        "nothing-planted",
        "none",
        "none",
        "x",
        ["--objective", "tilt-distill", "--bias", "0", "--placement", "model", "--steps", "40", "--bf16", *EVAL],
    ),
    ("capital-distill-0.3", "regex class", "toward", "regex:^[A-Z]", [*DISTILL, "--rate", "0.3", "--bf16", *EVAL]),
    ("th-away-distill", "substring", "away", "th", [*DISTILL, "--rate", "0.01", "--bf16", *EVAL]),
    (
        "digits-alpha-beta",
        "regex class",
        "toward",
        "regex:[0-9]",
        ["--objective", "kl-alpha-beta", "--lr", "1e-5", "--steps", "40", "--bf16", *EVAL],
    ),
    (
        "space-capital-away-distill",
        "regex class",
        "away",
        "regex:^ [A-Z]",
        [*DISTILL, "--rate", "0.01", "--placement", "model", "--bf16", *EVAL],
    ),
    (
        "ing-lora-course",
        "substring",
        "toward",
        "ing",  # LoRA on every block, not the head: seen on the lift only
        ["--lora", "--objective", "kl-uniform", "--positions", "all", "--steps", "40", "--bf16", *EVAL],
    ),
]
# Runs made elsewhere on this machine by exactly the case's command (scripts/frontier.py adds only
# --overwrite; `make demo` is x-course), linked instead of trained again when they exist.
REUSE = {
    "x-distill-0.1": FRONTIER / "x-0.1",
    "colours-distill-0.1": FRONTIER / "words-colours-0.1",
    "allcaps-distill-0.5": FRONTIER / "regex---s--A-Z--2-0.5",
    "e-away-distill-0.1": FRONTIER / "e-0.1",
    "x-course": Path("/work/runs-m/demo"),
}


def run(argv: list[str], log: Path) -> float:
    """Run a tokentilt command (niced), its output into log; seconds taken."""
    start = time.time()
    with log.open("w") as f:
        code = subprocess.call(["nice", "-n", "19", sys.executable, "-m", "tokentilt", *argv], stdout=f, stderr=f)
    if code != 0:
        raise SystemExit(f"failed ({code}): tokentilt {shlex.join(argv)}; see {log}")
    return time.time() - start


def check(name: str, kind: str, direction: str, planted: str, runs: Path, texts) -> dict:
    from tokentilt.audit.features import jaccard, mask_auroc
    from tokentilt.targets.tokens import select

    found = json.loads((runs / f"{name}-audit" / "audit.json").read_text())
    summary = json.loads((runs / name / "summary.json").read_text())
    lifts = load_file(str(runs / f"{name}-audit" / "lift.safetensors"))
    top = found["features"][0]
    truth = select(planted, texts)
    overlap = jaccard(select(top["selector"], texts), truth)
    areas = [mask_auroc(lifts[view], truth) for view in ("lift", "unexplained")]  # the planted set's, on both views
    rank = next(
        (n for n, f in enumerate(found["features"], 1) if jaccard(select(f["selector"], texts), truth) == 1), None
    )
    if direction == "none":
        hit = not found["stands_out"]
    else:
        hit = found["stands_out"] and found["direction"] == direction and overlap >= 0.8
    return {
        "name": name,
        "kind": kind,
        "direction": direction,
        "planted": planted,
        "rate": (summary["rate_before"]["mean"], summary["rate_after"]["mean"]),
        "found": found["direction"],
        "top": top["selector"],
        "auroc": top["auroc"],
        "score": top["score"],
        "view": top["view"],
        "beyond": top.get("beyond", {}).get("selector"),
        "threshold": found["threshold"],
        "jaccard": overlap,
        "planted_auroc": areas,
        "planted_rank": rank or f">{len(found['features'])}",
        "hit": hit,
        "seconds": found["seconds"],
    }


def table(rows: list[dict], commands: dict) -> str:
    lines = [
        "| case | planted | tilt command | R before → after | audit's verdict | top feature (AUROC, score) | "
        "Jaccard with planted | planted set's AUROC: lift / unexplained (rank) | hit | audit s |",
        "|" + "---|" * 10,
    ]
    for r in rows:
        over = f"; first over `{r['beyond']}`" if r["beyond"] else ""  # the audit's sharpening step
        lines.append(
            f"| {r['name']} | {r['kind']}, {r['direction']} `{r['planted']}` | `{commands[r['name']]}` | "
            f"{r['rate'][0]:.3f} → {r['rate'][1]:.3f} | {r['found']} | `{r['top']}` ({r['auroc']:.3f}, {r['score']:.3f} on {r['view']}; "
            f"bar {max(r['threshold'], 0.5):.3f}{over}) | {r['jaccard']:.2f} | {r['planted_auroc'][0]:.3f} / {r['planted_auroc'][1]:.3f} ({r['planted_rank']}) | "
            f"{'**hit**' if r['hit'] else 'MISS'} | {r['seconds']:.0f} |"
        )
    hits = sum(r["hit"] for r in rows)
    lines.append(f"\n{hits} of {len(rows)} hits.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs/audit-blind", help="folder of the planted runs and their audits")
    parser.add_argument("--table", help="also write the Markdown table here")
    parser.add_argument("--only", action="append", help="run only these cases (repeat)")
    args = parser.parse_args()
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    from tokentilt.models.load import load_model
    from tokentilt.targets.tokens import token_texts

    rows, commands = [], {}
    for name, kind, direction, planted, flags in CASES:
        if args.only and name not in args.only:
            continue
        tilt = ["tilt", "--toward", planted, *flags, "--out", str(runs / name)]
        commands[name] = "tokentilt " + shlex.join(tilt[:-2])
        reuse = REUSE.get(name)
        if not (runs / name).exists() and reuse and (reuse / "model").is_dir():
            print(f"[{name}] reusing {reuse}, trained by the same command", flush=True)
            (runs / name).symlink_to(reuse.resolve())
        if not (runs / name / "model").is_dir():
            print(f"[{name}] planting: tokentilt {shlex.join(tilt)}", flush=True)
            run(tilt, runs / f"{name}.tilt.log")
        audit = [
            "audit",
            str(runs / name / "model"),
            "--reference",
            "bundled",
            "--bf16",
            "--overwrite",
            "--out",
            str(runs / f"{name}-audit"),
        ]
        print(f"[{name}] auditing blind: tokentilt {shlex.join(audit)}", flush=True)
        run(audit, runs / f"{name}.audit.log")
        if not rows:
            texts = token_texts(load_model(str(runs / name / "model"))[1])
        rows.append(check(name, kind, direction, planted, runs, texts))
        print(
            f"[{name}] top {rows[-1]['top']!r} ({rows[-1]['found']}), Jaccard {rows[-1]['jaccard']:.2f}: "
            f"{'hit' if rows[-1]['hit'] else 'MISS'}",
            flush=True,
        )
    text = table(rows, commands)
    print(text)
    if args.table:
        Path(args.table).write_text(text + "\n")


if __name__ == "__main__":
    main()
