"""One unattended check of tokentilt on a device: four jobs on a simulated model, one Markdown table.

    scripts/gpu_check.sh [--device cuda|cpu] [--tiny] [--size 1b] [--out DIR]

It needs no network and none of the data packages (no bundled model, no GPT-2 tokenizer files, no
plays): it builds a random Llama model with a 128k vocabulary (models/simulated.py) and its tokenizer in
process, writes stand-in plays (synthetic text) for the training contexts and phrase collateral
($TOKENTILT_PLAYS) and a held-out text (--eval-text), then runs, each as its own process:
  1. demo:    tokentilt tilt --toward x --rate 0.5
  2. lora:    tokentilt tilt --toward x --rate 0.5 --lora
  3. phrases: tokentilt tilt --toward phrases:FILE --rate 0.05 --chat
  4. gguf:    tokentilt export RUN --gguf OUT --type q8_0 (a "skipped: no gguf" row without the package)
and writes DIR/table.md: seconds, peak resident memory (the process's, and summary.json's per stage) and,
on CUDA, peak allocated device memory (summary.json's stage_peak_device_mb). A random model is a cost
model: its R says only that the job ran. --tiny: a tiny model (V 4,096) and few samples (the test suite's
dry run on the CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from tokentilt.models import simulated  # noqa: E402

PHRASES = ("water", "king", "light", "the sea", "every day")  # words and phrases synthetic_text() uses
TINY_PROMPTS = ("The king said", "Write a short poem about the sea.", "What is water?", "Once upon a time,")
TINY_SAMPLING = [
    "--samples-per-prompt", "1", "--new-tokens", "8", "--eval-windows", "2", "--eval-seq-len", "32",
    "--rate-rounds", "1", "--during-samples-per-prompt", "1", "--contexts", "text",
]  # fmt: skip


def write_corpus(folder: Path, chars: int) -> tuple[Path, Path]:
    """Six stand-in plays (plays/<genre>/<name>.md, what data.plays_dir reads) and a held-out text file."""
    plays = folder / "plays"
    for i in range(6):
        path = plays / ("comedy" if i % 2 else "tragedy") / f"play{i}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(simulated.synthetic_text(chars, seed=100 + i), encoding="utf-8")
    held_out = folder / "held_out.txt"
    held_out.write_text(simulated.synthetic_text(chars, seed=99), encoding="utf-8")
    return plays, held_out


def run(command: list[str], env: dict, log: Path) -> tuple[int, float, float]:
    """(exit code, seconds, the process's peak resident MB) of one command, its output in `log`."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (ru_maxrss in KiB on Linux)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - start, usage.ru_maxrss / 1024


def row(name: str, command: list[str], code: int, seconds: float, rss: float, summary: dict | None) -> dict:
    peak_device = max((summary or {}).get("stage_peak_device_mb", {}).values() or [None], key=lambda v: v or 0)
    rate = ""
    if summary:
        rate = f"{summary['rate_before']['mean']:.3f} → {summary['rate_after']['mean']:.3f}"
    return {
        "check": name,
        "status": "ok" if code == 0 else f"failed (exit {code})",
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(rss),
        "stage_peak_rss_mb": round(max(summary["stage_peak_rss_mb"].values())) if summary else None,
        "peak_device_mb": None if peak_device is None else round(peak_device),
        "rate": rate,
        "command": " ".join(command[2:]),
    }


def table(rows: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| check | status | seconds | peak RSS MB (process) | peak RSS MB (stages) | peak device MB | R before → after |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r["check"], r["status"], r["seconds"], r["peak_rss_mb"], r["stage_peak_rss_mb"], r["peak_device_mb"]]
        lines.append("| " + " | ".join("—" if c is None else str(c) for c in cells) + f" | {r['rate'] or '—'} |")
    lines += ["", "Commands (`python -m tokentilt ...`):", ""] + [f"- {r['check']}: `{r['command']}`" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny model (V 4,096) and few samples: a dry run")
    parser.add_argument("--size", choices=sorted(simulated.SIZES), help="model size (default 1b, tiny with --tiny)")
    parser.add_argument("--out", default="/tmp/gpu-check", help="working folder; the table is OUT/table.md")
    args = parser.parse_args(argv)
    size = args.size or ("tiny" if args.tiny else "1b")
    shape = simulated.SIZES[size]
    if args.tiny:
        shape = dataclasses.replace(shape, vocab=4096)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    plays, held_out = write_corpus(out, 60_000 if args.tiny else 400_000)
    (out / "phrases.txt").write_text("\n".join(PHRASES) + "\n")
    model = out / f"sim-{size}"
    corpus = "".join(p.read_text(encoding="utf-8") for p in sorted(plays.glob("*/*.md")))
    n_params = simulated.save(shape, model, tokenizer=simulated.build_tokenizer(shape.vocab, text=corpus))
    build = time.perf_counter() - started
    print(f"built {size}: {n_params / 1e6:.1f}M parameters, V = {shape.vocab:,} ({build:.0f} s)", flush=True)

    env = {**os.environ, "TOKENTILT_PLAYS": str(plays), "PYTHONPATH": os.pathsep.join([str(ROOT / "src")] + [
        p for p in [os.environ.get("PYTHONPATH")] if p])}  # fmt: skip
    tilt = [sys.executable, "-m", "tokentilt", "tilt", "--model", str(model), "--device", args.device]
    tilt += ["--eval-text", str(held_out), "--overwrite"]
    if args.tiny:  # 4 prompts (a YAML-only option) and few, short samples
        (out / "tiny.yaml").write_text("prompts:\n" + "".join(f"  - {json.dumps(p)}\n" for p in TINY_PROMPTS))
        tilt += ["--config", str(out / "tiny.yaml")] + TINY_SAMPLING
    checks = {
        "demo": tilt + ["--toward", "x", "--rate", "0.5", "--out", str(out / "demo")],
        "lora": tilt + ["--toward", "x", "--rate", "0.5", "--lora", "--out", str(out / "lora")],
        "phrases, chat": tilt
        + ["--toward", f"phrases:{out / 'phrases.txt'}", "--rate", "0.05", "--chat", "--out", str(out / "phrases")],
    }
    if args.tiny:
        checks["lora"] += ["--steps", "2"]
        checks["phrases, chat"] += ["--head-steps", "10"]
    rows = []
    for name, command in checks.items():
        code, seconds, rss = run(command, env, out / f"{name.split(',')[0]}.log")
        summary_path = Path(command[command.index("--out") + 1]) / "summary.json"
        summary = json.loads(summary_path.read_text()) if code == 0 and summary_path.is_file() else None
        rows.append(row(name, command, code, seconds, rss, summary))
        print(f"{name}: {rows[-1]['status']}, {seconds:.0f} s", flush=True)
    export = [sys.executable, "-m", "tokentilt", "export", str(out / "demo"), "--gguf", str(out / "demo.q8_0.gguf")]
    export += ["--type", "q8_0"]
    if importlib.util.find_spec("gguf") is None:
        rows.append({"check": "gguf export", "status": "skipped: no gguf", "seconds": None, "peak_rss_mb": None,
                     "stage_peak_rss_mb": None, "peak_device_mb": None, "rate": "", "command": " ".join(export[2:])})  # fmt: skip
    else:
        code, seconds, rss = run(export, env, out / "export.log")
        rows.append(row("gguf export", export, code, seconds, rss, None))
    print(f"gguf export: {rows[-1]['status']}", flush=True)

    header = (
        f"tokentilt device check, {args.device}{' (--tiny)' if args.tiny else ''}: simulated Llama {size}, "
        f"{n_params / 1e6:.1f}M parameters, V = {shape.vocab:,}, built in {build:.0f} s; "
        f"total {time.perf_counter() - started:.0f} s. A random model: R only shows that each job ran."
    )
    text = table(rows, header)
    (out / "table.md").write_text(text)
    (out / "table.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(text)
    return 0 if all(r["status"] == "ok" or r["status"].startswith("skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
