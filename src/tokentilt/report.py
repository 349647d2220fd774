"""Plots (PNG) and the Markdown report of a run."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_series(path: Path, series: dict[str, tuple[list, list]], title: str, ylabel: str,
                xlabel: str = "step", logy: bool = False, hline: tuple[float, str] | None = None) -> None:
    """One line per named (x, y) series."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=name)
    if hline is not None:
        ax.axhline(hline[0], color="grey", ls="--", lw=1, label=hline[1])
    if logy:
        ax.set_yscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1 or hline is not None:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_rate(path: Path, points: list[tuple[int, dict]], title: str = "R over training") -> None:
    """R with its 95% interval at each measured step. points: [(step, {"mean","ci_low","ci_high"})]."""
    steps = [s for s, _ in points]
    mean = [r["mean"] for _, r in points]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    ax.fill_between(steps, [r["ci_low"] for _, r in points], [r["ci_high"] for _, r in points], alpha=0.25,
                    label="95% interval")
    ax.plot(steps, mean, marker="o", ms=3, label="R")
    ax.set(title=title, xlabel="step", ylabel="R = share of generated tokens in the set", ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def fmt_rate(r: dict) -> str:
    return f"{r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def samples_section(title: str, prompts: list[str], texts: list[str], limit: int = 6) -> str:
    lines = [f"### {title}", ""]
    seen = set()
    for prompt, text in zip(prompts, texts):
        if prompt in seen:  # one sample per prompt keeps the report short
            continue
        seen.add(prompt)
        shown = (prompt + text).replace("\n", " ⏎ ").replace("|", "\\|")
        lines.append(f"- `{prompt}` → {shown[len(prompt):]!s}")
        if len(seen) >= limit:
            break
    return "\n".join(lines) + "\n"
