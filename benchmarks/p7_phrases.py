"""P7: phrase tilts against two decode-time methods, the trie (tokentilt's) and Hugging Face's sequence_bias.

    python benchmarks/p7_phrases.py runs/phrases/toward-05 runs/phrases/toward-15 runs/phrases/away-01

Each argument is a finished `tokentilt tilt --toward phrases:FILE --rate R*` run folder (the commands are
in benchmarks/README.md). The trie's row is the run's own matched decode-time tilt (b interpolated to the
tuned R on the run's eval seeds, its held-out perplexity and rho). For Hugging Face's sequence_bias this
script calibrates b on the reference (the bundled model) until the decode-time R, on the run's eval prompts
and seeds, is the tuned model's R; then it measures that tilt on the tuned R's own samples (the run's
measurement settings from its config.yaml, and its plan: the same prompts, seeds and sample count) and its
held-out perplexity on the same windows
and gives rho = (ppl_tuned - ppl_base) / (ppl_decode - ppl_base) against it. A method that cannot reach
the tuned R (sequence_bias biases only an entry's last token, so a rare first token caps its rate) is
reported with the R it reached at its largest b. For a run below the base rate (away) it adds the hard
ban: the trie at b = -inf. Not part of the test suite; writes p7_phrases.json beside the runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import yaml

from tokentilt.measurement.calibrate import calibrate
from tokentilt.measurement.evaluate import EvalConfig, held_out_windows, measure
from tokentilt.models.load import load_model
from tokentilt.targets.phrases import METHODS, resolve_target


def rho(s: dict, ppl_decode: float) -> float | None:
    extra = ppl_decode - s["ppl_before"]
    return (s["ppl_after"] - s["ppl_before"]) / extra if extra > 0 and math.isfinite(extra) else None


def run_eval_config(run: Path) -> EvalConfig:
    """The EvalConfig a run measured with, from its config.yaml (flat option: value)."""
    flat = yaml.safe_load((run / "config.yaml").read_text())
    return EvalConfig(**{f.name: flat[f.name] for f in dataclasses.fields(EvalConfig) if f.name in flat}).resolved()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args()
    model, tokenizer = load_model("bundled")
    rows = []
    for run in args.runs:
        s = json.loads((run / "summary.json").read_text())
        cfg = run_eval_config(run)  # the run's own measurement: its prompts, samples, tokens and seeds
        plan = s["rate_after"].get("plan")  # and the tuned R's samples: the same prompts, seeds and count
        windows = held_out_windows(tokenizer, cfg)
        phrases = resolve_target(s["selector"], tokenizer, model)
        tuned = s["rate_after"]["mean"]
        base = {
            "run": run.name,
            "rate_target": s["rate_target"],
            "rate_before": s["rate_before"]["mean"],
            "rate_tuned": tuned,
            "ppl_base": s["ppl_before"],
            "ppl_tuned": s["ppl_after"],
            "rho_in_run": s.get("rho"),
            "seconds_run": s["seconds"],
        }
        m = s["matched_decode"]  # the run's own: the trie at the b interpolated to the tuned R on its eval seeds
        rows.append(
            {
                **base,
                "method": "trie (the run's matched b)",
                "bias": m["bias"],
                "rate_decode": tuned,
                "rate_decode_ci": [s["rate_after"]["ci_low"], s["rate_after"]["ci_high"]],
                "reached": True,
                "ppl_decode": m["ppl"],
                "rho": s.get("rho"),
                "seconds": None,
            }
        )
        for method in [m for m in METHODS if m != "trie"]:
            started = time.time()
            target = phrases.with_method(method)
            cal = calibrate(model, tokenizer, target, tuned, cfg, windows, echo=print)
            got, _ = measure(model, tokenizer, target, cfg, windows, bias=cal.bias, plan=plan)
            rows.append(
                {
                    **base,
                    "method": method,
                    "bias": cal.bias,
                    "rate_decode": got["rate"]["mean"],
                    "rate_decode_ci": [got["rate"]["ci_low"], got["rate"]["ci_high"]],
                    "reached": abs(got["rate"]["mean"] - tuned) <= max(0.02, 0.25 * tuned),
                    "ppl_decode": got["ppl"],
                    "rho": rho(s, got["ppl"]),
                    "seconds": round(time.time() - started),
                }
            )
            print(rows[-1])
        if tuned < s["rate_before"]["mean"]:
            got, _ = measure(model, tokenizer, phrases, cfg, windows, bias=-math.inf)
            rows.append(
                {
                    **base,
                    "method": "trie, hard ban (b = -inf)",
                    "bias": -math.inf,
                    "rate_decode": got["rate"]["mean"],
                    "rate_decode_ci": [got["rate"]["ci_low"], got["rate"]["ci_high"]],
                    "reached": None,
                    "ppl_decode": got["ppl"],
                    "rho": None,
                    "seconds": None,
                }
            )
            print(rows[-1])
    out = args.runs[0].parent / "p7_phrases.json"
    out.write_text(json.dumps(rows, indent=1))
    print("| run | R* | R before | R tuned | method | b | decode-time R | ppl base / tuned / decode | rho |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        fmt_rho = "n/a" if r["rho"] is None else f"{r['rho']:.2f}"
        print(
            f"| {r['run']} | {r['rate_target']} | {r['rate_before']:.4f} | {r['rate_tuned']:.4f} | {r['method']} | "
            f"{r['bias']:.2f} | {r['rate_decode']:.4f} [{r['rate_decode_ci'][0]:.4f}, {r['rate_decode_ci'][1]:.4f}]"
            f"{'' if r['reached'] in (None, True) else ' (not reached)'} | {r['ppl_base']:.2f} / "
            f"{r['ppl_tuned']:.2f} / {r['ppl_decode']:.2f} | {fmt_rho} |"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
