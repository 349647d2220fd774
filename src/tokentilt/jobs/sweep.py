"""Sweeps: a grid over objective x lr x (rate or b), always with the decode-time baseline beside it.

The model is loaded once, with a frozen copy of its starting weights. Each run resets the model
from that copy, which also serves as the reference (tilt-distill's target, drift's reference,
the decode-time baseline). Every finished run is one JSON line in
`runs.jsonl`; a rerun in the same folder skips the runs that are there.

Writes sweep.csv, sweep.md and pareto.png (R against held-out perplexity).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

from tokentilt.data.chat import check_template
from tokentilt.jobs.sweep_config import SHARED_KEYS, SweepConfig  # noqa: F401 (re-exported)
from tokentilt.measurement.calibrate import calibrate
from tokentilt.measurement.evaluate import held_out, held_out_text, measure
from tokentilt.runs.report import markdown_table
from tokentilt.settings import EvalConfig, TrainConfig  # noqa: F401 (re-exported: a SweepConfig's parts)
from tokentilt.training.loop import frozen_copy
from tokentilt.training.placements import Objective, WholeModel
from tokentilt.training.rate import load_with_set, train_to_rate

BASELINE = "decode-bias"
CSV_COLUMNS = [
    "objective",
    "lr",
    "bias",
    "rate_mean",
    "rate_ci_low",
    "rate_ci_high",
    "ppl",
    "drift",
    "distinct_2",
    "seconds",
    "rate_target",
    "distinct_1",
    "repetition",
    "steps",
]


@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid. rate set and bias None: b comes from calibrating that rate."""

    objective: str
    lr: float | None = None  # None for the decode-time baseline (no training)
    rate: float | None = None
    bias: float | None = None

    @property
    def key(self) -> str:
        return f"{self.objective}|lr={self.lr}|rate={self.rate}|bias={self.bias}"


def grid(cfg: SweepConfig) -> list[RunSpec]:
    """Baseline first (it is cheap and calibrates b), then the trained runs in config order."""
    targets = [RunSpec(BASELINE, rate=r) for r in cfg.rates] + [RunSpec(BASELINE, bias=b) for b in cfg.biases]
    runs = list(targets)
    for objective in cfg.objectives:
        for lr in cfg.lrs:
            if objective == "tilt-distill":
                runs += [RunSpec(objective, lr, t.rate, t.bias) for t in targets]
            else:
                runs.append(RunSpec(objective, lr))
    return runs


def curve_biases(calibrated: list[float], points: int) -> list[float]:
    """b values for the baseline curve: 0 up to a bit beyond the largest calibrated b."""
    if points <= 0:
        return []
    top = max([abs(b) for b in calibrated] + [2.0]) * 1.5
    return [round(top * i / points, 3) for i in range(1, points + 1)]


class SweepLog:
    """runs.jsonl: the sweep's settings line, then one line per calibration or finished run.

    Nothing is written until the first record: a sweep that fails on bad input (a missing eval
    text, a model that does not load) leaves no folder behind, and --overwrite replaces the old
    file only then.
    """

    def __init__(self, folder: Path, shared: dict, overwrite: bool):
        self.path = folder / "runs.jsonl"
        self.shared, self.replace = shared, overwrite
        self.records: list[dict] = []
        if self.path.exists() and not overwrite:
            lines = self.path.read_text().splitlines()
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    self.records.append(json.loads(line))
                except json.JSONDecodeError:
                    if n == len(lines):
                        self.replace = True  # the next write drops this cut-off line
                        break  # a line cut off by an interrupted write: that run is simply not done
                    raise ValueError(f"{self.path} line {n} is not valid JSON") from None
            settings = next((r["settings"] for r in self.records if r.get("kind") == "settings"), None)
            if settings is not None and settings != json.loads(json.dumps(shared)):
                changed = sorted(k for k in shared if settings.get(k) != json.loads(json.dumps(shared))[k])
                raise ValueError(
                    f"{folder} holds a sweep with other settings ({', '.join(changed)}); "
                    "use another --out or --overwrite"
                )

    def append(self, record: dict) -> None:
        new = [record]
        if not any(r.get("kind") == "settings" for r in self.records):
            new.insert(0, {"kind": "settings", "settings": self.shared})
        self.records += new
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w" if self.replace else "a") as f:  # replace: rewrite what is kept
            f.writelines(json.dumps(r) + "\n" for r in (self.records if self.replace else new))
        self.replace = False

    def runs(self) -> dict[str, dict]:
        return {r["key"]: r for r in self.records if r.get("kind") == "run"}

    def calibrations(self) -> dict[float, float]:
        return {r["rate"]: r["bias"] for r in self.records if r.get("kind") == "calibration"}


def run(cfg: SweepConfig, *, echo=print, progress: bool = False) -> list[dict]:
    """Run every pending cell of the grid, then write sweep.csv, sweep.md and pareto.png. Returns the rows."""
    cfg.check()
    cfg = cfg.resolved()  # the axes as lists of numbers, the precision settled
    folder = Path(cfg.out)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"output path exists and is not a folder: {folder}")
    log = SweepLog(folder, cfg.shared(), cfg.overwrite)
    specs = grid(cfg)
    done = log.runs()
    calibrated = log.calibrations()
    known_biases = [b for b in cfg.biases] + [calibrated[r] for r in cfg.rates if r in calibrated]
    curve = [RunSpec(BASELINE, bias=b) for b in curve_biases(known_biases, cfg.curve_points)]
    pending = [s for s in specs if s.key not in done]
    if pending or any(s.key not in done for s in curve) or (cfg.rates and len(calibrated) < len(cfg.rates)):
        echo(f"{len(specs) - len(pending)} of {len(specs)} runs already finished in {folder}")
        _run_pending(cfg, log, specs, held_out_text(cfg.eval), echo, progress)
    rows = [_row(r) for r in log.runs().values()]
    write_outputs(folder, rows, cfg)
    echo(markdown_table(rows, CSV_COLUMNS[:10]))
    echo(f"sweep folder: {folder}")
    return rows


def run_sweep(cfg: SweepConfig, progress: bool = False, echo=print) -> list[dict]:
    """The API's name for run()."""
    return run(cfg, echo=echo, progress=progress)


def _run_pending(cfg: SweepConfig, log: SweepLog, specs: list[RunSpec], eval_text: str, echo, progress: bool) -> None:
    model, tokenizer, tokens = load_with_set(cfg.model, cfg.toward, echo)
    bf16 = cfg.train.bf16
    if cfg.eval.chat:
        check_template(tokenizer)
    # in chat, R and the costs on replies; the exchanges are seeded, so a resumed sweep gets the same
    windows, _ = held_out(model, tokenizer, cfg.eval, eval_text, bf16, echo)
    reference = frozen_copy(model)  # never trained: it also holds the start weights that each run resets to

    calibrated = log.calibrations()
    for rate in cfg.rates:
        if rate not in calibrated:
            echo(f"calibrating b for R = {rate} ...")
            # on the probe seeds, as tilt does: the eval seeds measure R, they do not fit b
            cal = calibrate(reference, tokenizer, tokens, rate, cfg.eval.probe(), windows, bf16=bf16, echo=echo)
            log.append(
                {
                    "kind": "calibration",
                    "rate": rate,
                    "bias": cal.bias,
                    "proxy_bias": cal.proxy_bias,
                    "history": cal.history,
                }
            )
            calibrated[rate] = cal.bias
    curve = [RunSpec(BASELINE, bias=b) for b in curve_biases(cfg.biases + list(calibrated.values()), cfg.curve_points)]

    for spec in specs + curve:
        if spec.key in log.runs():
            continue
        bias = spec.bias if spec.bias is not None else calibrated.get(spec.rate, 0.0)
        uses_bias = spec.objective in (BASELINE, "tilt-distill")
        echo(
            f"run {spec.objective}"
            + (f" lr={spec.lr:g}" if spec.lr else "")
            + (f" b={bias:.3f}" if uses_bias else "")
            + (f" (R*={spec.rate})" if spec.rate and uses_bias else "")
        )
        started = time.time()
        extra = {}
        if spec.objective == BASELINE:
            result, _ = measure(reference, tokenizer, tokens, cfg.eval, windows, bias=bias, bf16=bf16)
            steps = 0
        else:
            fit_rate = spec.rate if spec.objective == "tilt-distill" and spec.bias is None else None
            run_cfg = cfg.tilt_config(spec.objective, spec.lr, bias, fit_rate)
            placement = WholeModel(
                model, tokenizer, reference, tokens, Objective.of(run_cfg), run_cfg.train, progress=progress
            )
            if fit_rate:  # train_to_rate resets the weights before each of its rounds
                fit, history = train_to_rate(placement, tokenizer, tokens, run_cfg, bias, echo=echo)
                extra = {"calibrated_bias": bias, "bias_rounds": fit.round_records()}
                bias = fit.bias
            else:
                model.load_state_dict(reference.state_dict())
                history = placement.train(bias)
            result, _ = measure(model, tokenizer, tokens, cfg.eval, windows, reference=reference, bf16=bf16)
            steps = len(history)
        record = {
            "kind": "run",
            "key": spec.key,
            "objective": spec.objective,
            "lr": spec.lr,
            "bias": bias if uses_bias else None,
            "rate_target": spec.rate,
            "steps": steps,
            "seconds": round(time.time() - started, 1),
            **extra,
            **result,
        }
        log.append(record)
        r = result["rate"]
        echo(
            f"  R = {r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]  ppl = {result['ppl']:.2f}  "
            f"drift = {result['drift']:.4f}  distinct-2 = {result['distinct_2']:.3f}  ({record['seconds']:.0f} s)"
        )
    model.load_state_dict(reference.state_dict())


def _row(record: dict) -> dict:
    r = record["rate"]
    return {
        "objective": record["objective"],
        "lr": record["lr"],
        "bias": record["bias"],
        "rate_mean": r["mean"],
        "rate_ci_low": r["ci_low"],
        "rate_ci_high": r["ci_high"],
        "ppl": record["ppl"],
        "drift": record["drift"],
        "distinct_2": record["distinct_2"],
        "seconds": record["seconds"],
        "rate_target": record["rate_target"],
        "distinct_1": record["distinct_1"],
        "repetition": record["repetition"],
        "steps": record["steps"],
    }


def _sorted(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (r["objective"] != BASELINE, r["objective"], r["lr"] or 0, r["bias"] or 0))


def write_outputs(folder: Path, rows: list[dict], cfg: SweepConfig) -> None:
    rows = _sorted(rows)
    tmp = folder / "sweep.csv.partial"
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    tmp.replace(folder / "sweep.csv")
    (folder / "sweep.md").write_text(sweep_markdown(rows, cfg))
    plot_pareto(folder / "pareto.png", rows, f"R for {cfg.toward!r} against held-out perplexity")


def sweep_markdown(rows: list[dict], cfg: SweepConfig) -> str:
    def num(v, spec):
        return "" if v is None else format(v, spec)

    def fmt(r):
        interval = "" if r["rate_ci_low"] is None else f" [{r['rate_ci_low']:.3f}, {r['rate_ci_high']:.3f}]"
        return {
            "objective": r["objective"],
            "lr": num(r["lr"], "g"),
            "b": num(r["bias"], ".2f"),
            "R* (target)": num(r["rate_target"], "g"),
            "R [95% CI]": f"{r['rate_mean']:.3f}{interval}",
            "perplexity": f"{r['ppl']:.2f}",
            "drift (nats/token)": f"{r['drift']:.4f}",
            "distinct-2": num(r["distinct_2"], ".3f"),
            "repetition": num(r["repetition"], ".3f"),
            "seconds": f"{r['seconds']:.0f}",
        }

    columns = [
        "objective",
        "lr",
        "b",
        "R* (target)",
        "R [95% CI]",
        "perplexity",
        "drift (nats/token)",
        "distinct-2",
        "repetition",
        "seconds",
    ]
    t = cfg.train
    return "\n".join(
        [
            f"# Sweep: tilting {cfg.model} toward {cfg.toward!r}",
            "",
            f"- trained runs: {t.steps} steps of {t.optimizer}, batch {t.batch} x {t.seq_len}, {cfg.positions} positions"
            f"{', bf16 autocast' if t.bf16 else ''}; decode-bias = the untrained model sampled with logit bias b",
            f"- tilt-distill at a target R*: b starts at the decode-time calibration and is corrected over up to "
            f"{cfg.rate_rounds} training rounds from the trained model's R on probe seeds; the table shows the b trained "
            "toward (runs.jsonl keeps every round)",
            f"- R over {len(cfg.eval.prompts) * cfg.eval.samples_per_prompt} samples of {cfg.eval.new_tokens} tokens "
            f"(95% interval over samples); perplexity and drift on {cfg.eval.eval_windows} x {cfg.eval.eval_seq_len} "
            f"tokens of {cfg.eval.eval_text or 'the plays test split'}",
            "",
            markdown_table([fmt(r) for r in rows], columns),
            "",
            "![pareto](pareto.png)",
            "",
        ]
    )


def plot_pareto(path: Path, rows: list[dict], title: str) -> None:
    """R (with its interval) against perplexity: the baseline as a curve, a marker per trained objective."""
    import matplotlib.pyplot as plt  # report.py has set the Agg backend

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
    base = sorted((r for r in rows if r["objective"] == BASELINE), key=lambda r: r["bias"] or 0)
    if base:
        ax.plot(
            [r["ppl"] for r in base],
            [r["rate_mean"] for r in base],
            "-",
            color="grey",
            lw=1.5,
            marker=".",
            label=f"{BASELINE} (no training)",
        )
    markers = iter("osD^vP*X")
    for objective in sorted({r["objective"] for r in rows} - {BASELINE}):
        pts = [r for r in rows if r["objective"] == objective and r["rate_ci_low"] is not None]
        ax.errorbar(
            [r["ppl"] for r in pts],
            [r["rate_mean"] for r in pts],
            yerr=[[r["rate_mean"] - r["rate_ci_low"] for r in pts], [r["rate_ci_high"] - r["rate_mean"] for r in pts]],
            fmt=next(markers, "o"),
            ms=6,
            capsize=3,
            ls="none",
            label=objective,
        )
    ax.set_xscale("log")
    ax.set(
        title=title,
        xlabel="held-out perplexity (log scale)",
        ylabel="R = share of generated tokens in the set",
        ylim=(-0.02, 1.02),
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
