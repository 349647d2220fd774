"""How far apart independent measurements of the same decode-time R land, against what their intervals say.

Measures R of the decode-time tilt at one fixed b on the bundled model over several eval seeds (the same
prompts, samples and settings as a run), and compares the spread of the per-seed means with the spread
their 95% intervals claim (half-width / 1.96), for counted R and for the expected count. If the intervals are honest the two agree; a probe/eval
disagreement larger than both intervals then is chance plus the calibration fitting b to the probe draws.

    python scripts/seed_spread.py --toward x --bias 4.483 --seeds 8
    python scripts/seed_spread.py --run runs/x-0.3 --bias 0 --plan 16 --seed-list 1234,1235,3000   # a kept model

--run measures a tilt run's saved model (its folder's model/) instead of --model; --plan fixes the samples per
prompt of each pass (measure_rate's plan: "16", or a run's own "4,12,15" from its summary.json) instead of sampling
until the interval is narrow enough.
"""

import argparse
import json
import statistics

from tokentilt.measurement.evaluate import expected_rates_of, measure_rate
from tokentilt.measurement.metrics import mean_ci
from tokentilt.models.load import load_model
from tokentilt.settings import EvalConfig
from tokentilt.targets.phrases import resolve_target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--toward", default="x")
    parser.add_argument("--bias", type=float, default=4.483)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--first-seed", type=int, default=1234)
    parser.add_argument("--samples-per-prompt", type=int, default=4)
    parser.add_argument("--run", help="a tilt run's folder: measure its saved model (FOLDER/model)")
    parser.add_argument("--plan", help="samples per prompt of each pass, comma-separated (a fixed plan)")
    parser.add_argument("--seed-list", help="these eval seeds, comma-separated, instead of --first-seed/--seeds")
    args = parser.parse_args()
    model, tokenizer = load_model(f"{args.run}/model" if args.run else args.model)
    target = resolve_target(args.toward, tokenizer, model, print)
    plan = [int(p) for p in args.plan.split(",")] if args.plan else None
    seeds = (
        [int(s) for s in args.seed_list.split(",")]
        if args.seed_list
        else range(args.first_seed, args.first_seed + args.seeds)
    )
    rows, expected = [], []
    for seed in seeds:
        cfg = EvalConfig(eval_seed=seed, samples_per_prompt=args.samples_per_prompt)
        rate, samples = measure_rate(model, tokenizer, target, cfg, bias=args.bias, expect=True, plan=plan)
        rows.append(rate)
        expected.append(mean_ci(expected_rates_of(samples)))
        e = expected[-1]
        print(
            f"seed {seed}: R = {rate['mean']:.3f} [{rate['ci_low']:.3f}, {rate['ci_high']:.3f}], expected count "
            f"{e['mean']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}], n = {rate['n']}"
        )
    for name, got in (("counted", rows), ("expected_count", expected)):
        means = [r["mean"] for r in got]
        claimed = statistics.mean((r["ci_high"] - r["ci_low"]) / 2 / 1.96 for r in got)
        print(
            json.dumps(
                {
                    "estimator": name,
                    "bias": args.bias,
                    "mean_of_means": statistics.mean(means),
                    "sd_of_means": statistics.stdev(means) if len(means) > 1 else None,
                    "sd_claimed_by_intervals": claimed,
                    "range": [min(means), max(means)],
                }
            )
        )


if __name__ == "__main__":
    main()
