"""Experiment "l1-vs-l2": one scalar parameter, target 5, SGD at lr 0.05, under L1 and under L2.

L1's gradient is a constant +-1 that flips sign at the optimum, so SGD keeps stepping over the
target by lr and oscillates; L2's gradient 2(y_hat - y) shrinks near the optimum, so it converges.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from tokentilt.course.regression import L1Loss, L2Loss
from tokentilt.jobs.experiments.l1_vs_l2_config import L1VsL2Config
from tokentilt.runs.folder import RunFolder
from tokentilt.runs.report import markdown_table, plot_series


def fit_scalar(loss_fn: torch.nn.Module, target: float, start: float, lr: float, epochs: int) -> list[float]:
    """SGD on one scalar; returns the parameter after every step (length epochs + 1, start first)."""
    y_hat = torch.nn.Parameter(torch.tensor(float(start)))
    y = torch.tensor(float(target))
    optimizer = torch.optim.SGD([y_hat], lr=lr)
    trajectory = [y_hat.item()]
    for _ in range(epochs):
        optimizer.zero_grad()
        loss_fn(y_hat, y).backward()
        optimizer.step()
        trajectory.append(y_hat.item())
    return trajectory


def run(cfg: L1VsL2Config, *, echo=print, progress: bool = True) -> dict:
    cfg.check()
    folder = RunFolder(cfg.out, cfg.overwrite).start()
    started = time.time()
    folder.write_yaml("config.yaml", dataclasses.asdict(cfg))
    y, probe = torch.tensor(cfg.target), torch.tensor(cfg.probe)
    paths = {
        name: fit_scalar(fn, cfg.target, cfg.start, cfg.lr, cfg.epochs)
        for name, fn in (("L1", L1Loss()), ("L2", L2Loss()))
    }
    for step in range(cfg.epochs + 1):
        folder.append_jsonl(
            "metrics.jsonl", {"step": step, "l1_y_hat": paths["L1"][step], "l2_y_hat": paths["L2"][step]}
        )
    tail = paths["L1"][-cfg.window :]
    summary = {
        "l1_at_2": L1Loss()(probe, y).item(),
        "l2_at_2": L2Loss()(probe, y).item(),
        "l1_final_error": abs(paths["L1"][-1] - cfg.target),
        "l2_final_error": abs(paths["L2"][-1] - cfg.target),
        "l1_oscillation": (max(tail) - min(tail)) / 2,  # amplitude: half the peak-to-peak over the last `window` steps
        "l2_oscillation": (max(paths["L2"][-cfg.window :]) - min(paths["L2"][-cfg.window :])) / 2,
        "seconds": round(time.time() - started, 3),
    }
    steps = list(range(cfg.epochs + 1))
    plot_series(
        folder.path("trajectories.png"),
        {"L1": (steps, paths["L1"]), "L2": (steps, paths["L2"])},
        f"SGD on one parameter toward {cfg.target:g} (lr {cfg.lr:g})",
        "prediction y_hat",
        hline=(cfg.target, "target"),
    )
    folder.path("report.md").write_text(report(cfg, summary))
    folder.write_json("summary.json", summary)
    out = folder.finish()
    echo(
        f"L1(2, 5) = {summary['l1_at_2']:g}, L2(2, 5) = {summary['l2_at_2']:g}; after {cfg.epochs} steps: "
        f"L2 error {summary['l2_final_error']:.2e}, L1 oscillation {summary['l1_oscillation']:.3f}\nrun folder: {out}"
    )
    return summary


def report(cfg: L1VsL2Config, s: dict) -> str:
    rows = [
        {"": "loss at prediction 2", "L1": s["l1_at_2"], "L2": s["l2_at_2"]},
        {"": "final |y_hat - y|", "L1": s["l1_final_error"], "L2": s["l2_final_error"]},
        {"": f"oscillation amplitude, last {cfg.window} steps", "L1": s["l1_oscillation"], "L2": s["l2_oscillation"]},
    ]
    return "\n".join(
        [
            "# L1 vs L2 on one scalar parameter",
            "",
            f"SGD at lr {cfg.lr:g} from {cfg.start:g} toward {cfg.target:g}, {cfg.epochs} steps under each loss.",
            "L1's gradient is a constant ±1, so it overshoots by lr forever; L2's gradient shrinks near the target.",
            "",
            markdown_table(rows, ["", "L1", "L2"]),
            "",
            "![trajectories](trajectories.png)",
            "",
        ]
    )
