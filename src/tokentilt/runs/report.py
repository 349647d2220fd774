"""Plots (PNG) and the Markdown report of a run."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_series(
    path: Path,
    series: dict[str, tuple[list, list]],
    title: str,
    ylabel: str,
    xlabel: str = "step",
    logy: bool = False,
    hline: tuple[float, str] | None = None,
) -> None:
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
    ax.fill_between(
        steps, [r["ci_low"] for _, r in points], [r["ci_high"] for _, r in points], alpha=0.25, label="95% interval"
    )
    ax.plot(steps, mean, marker="o", ms=3, label="R")
    ax.set(title=title, xlabel="step", ylabel="R = share of generated tokens in the set", ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def fmt_rate(r: dict) -> str:
    return f"{r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"


STOPS = {"half-width": "interval narrow enough", "budget": "budget spent", "fixed": "a fixed count"}


def fmt_samples(r: dict) -> str:
    """The samples an R took and why sampling stopped (evaluate.sample_until): "384 (interval narrow enough)"."""
    return f"{r['n']} ({STOPS.get(r.get('stop'), 'a fixed count')})"


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
        lines.append(f"- `{prompt}` → {shown[len(prompt) :]!s}")
        if len(seen) >= limit:
            break
    return "\n".join(lines) + "\n"


def side_by_side(before, after, pairs: int = 2) -> str:
    """The first samples of `pairs` prompts before and after, as plain text for the console: what a run did, to
    read (before and after are Samples on the same prompts)."""
    lines, seen = [], set()
    for i, prompt in enumerate(before.prompts):
        if prompt in seen or i >= len(after.texts):
            continue
        seen.add(prompt)
        lines += [f"--- {prompt}", f"before: {before.texts[i].strip()}", f"after:  {after.texts[i].strip()}"]
        if len(seen) >= pairs:
            break
    return "\n".join(lines)


# ---------------------------------------------------------------- the tilt run's table and report


def summary_table(s: dict) -> str:
    rows = summary_rows(s)
    width = max(len(r[""]) for r in rows)
    lines = [f"{'':{width}}  {'before':>22}  {'after':>22}" + ("  decode-time baseline" if "baseline" in s else "")]
    lines += [
        f"{r['']:{width}}  {r['before']:>22}  {r['after']:>22}  {r.get('decode-time baseline', '')}".rstrip()
        for r in rows
    ]
    return "\n".join(lines)


COST_ROWS = (
    ("held-out perplexity", "ppl", "{:.2f}"),
    ("drift KL(ref || model) / token", "drift", "{:.4f}"),
    ("distinct-1 of samples", "distinct_1", "{:.3f}"),
    ("distinct-2 of samples", "distinct_2", "{:.3f}"),
    ("4-gram repetition", "repetition", "{:.3f}"),
)


def summary_rows(s: dict) -> list[dict]:
    """Before / after (/ decode-time baseline) rows for the console and the report."""
    base = s.get("baseline")
    what = "R (share of words that are entries)" if s.get("phrases") else "R (share of set tokens)"
    rows = [
        {
            "": what,
            "before": fmt_rate(s["rate_before"]),
            "after": fmt_rate(s["rate_after"]),
            **({"decode-time baseline": fmt_rate(base["rate"])} if base else {}),
        }
    ]
    if "stop" in s["rate_after"]:  # how many samples R took, and why sampling stopped there
        rows.append(
            {
                "": "samples for R (why it stopped)",
                "before": fmt_samples(s["rate_before"]),
                "after": fmt_samples(s["rate_after"]),
                **({"decode-time baseline": fmt_samples(base["rate"])} if base else {}),
            }
        )
    if s.get("rate_expected_before") and s.get("rate_expected_after"):  # a token set's Rao-Blackwellised R
        expected = (base or {}).get("rate_expected")
        rows.append(
            {
                "": "R, expected count (lower variance)",
                "before": fmt_rate(s["rate_expected_before"]),
                "after": fmt_rate(s["rate_expected_after"]),
                **({"decode-time baseline": fmt_rate(expected)} if expected else {}),
            }
        )
    for name, key, fmt in COST_ROWS:
        row = {"": name, "before": fmt.format(s[f"{key}_before"]), "after": fmt.format(s[f"{key}_after"])}
        if base:
            row["decode-time baseline"] = fmt.format(base[key])
        rows.append(row)
    rows.append({"": "loss", "before": f"{s['loss_start']:.4f}", "after": f"{s['loss_end']:.4f}"})
    return rows


def tilt_bias_note(s: dict) -> str:
    if s.get("ban") and s.get("bias_rounds"):  # --ban's budget rounds
        rounds = ", ".join(f"b = {r['bias']:.3f} -> {r['ppl_tuned']:.2f}" for r in s["bias_rounds"])
        return (
            f"; --ban: b = {s['ban']['bias']:.3f} keeps the decode-time tilt within the fluency budget of "
            f"{s['ban']['fluency_budget']:.0%}; the budget rounds (trained held-out perplexity: {rounds}) trained "
            f"toward b = {s['bias']:.3f}, where the decode-time baseline is measured"
        )
    if not s.get("rate_target"):
        return f"; decode-time baseline and tilt-distill target use b = {s['bias']:.3f}"
    rounds = ", ".join(f"b = {r['bias']:.3f} -> R = {r['probe_rate']:.3f}" for r in s["bias_rounds"])
    return (
        f"; decode-time baseline at b = {s['calibrated_bias']:.3f}, calibrated to R = {s['rate_target']}; "
        f"tilt-distill trained toward b = {s['bias']:.3f}, the round nearest R* on probe seeds ({rounds})"
    )


def with_interval(s: dict, key: str) -> str:
    """s[key] as "1.23 [1.05, 1.41]" with its 95% interval (key_ci_low, key_ci_high) where s has one."""
    low, high = s.get(f"{key}_ci_low"), s.get(f"{key}_ci_high")
    return f"{s[key]:.2f}" + (f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else "")


def excess_cost_note(s: dict) -> str:
    """One line: rho and the drift ratio, each with its 95% interval (a paired bootstrap over the held-out
    windows and the samples of R), against the decode-time tilt at the same R ("" without one)."""
    m = s.get("matched_decode")
    if not m:
        return ""
    rho = "n/a (the decode-time tilt does not raise perplexity)" if s["rho"] is None else with_interval(s, "rho")
    ratio = "n/a" if s["drift_ratio"] is None else with_interval(s, "drift_ratio")
    return (
        f"excess cost rho = {rho} (1 = as cheap as a decode-time bias); drift ratio {ratio}; decode-time "
        f"tilt at the trained R {s['rate_after']['mean']:.3f}: b = {m['bias']:.3f}, perplexity {m['ppl']:.2f}, "
        f"drift {m['drift']:.4f}"
    )


BAN_SIDES = (("base", "before"), ("decode", "decode-time tilt at b"), ("tuned", "after"), ("hard_ban", "hard ban"))


def _ci(value: float, ci: tuple[float, float] | list | None, fmt: str) -> str:
    """value with its interval, "1.23 [1.05, 1.41]" ("n/a" for None, "inf" for an unbounded bound)."""
    if value is None:
        return "n/a"
    return fmt.format(value) + (" [" + ", ".join(fmt.format(v) for v in ci) + "]" if ci else "")


def hard_ban_note(s: dict) -> str:
    """One line: the tuned model's cost on its own samples against the hard ban and the decode-time tilt at b
    ("" without --ban's comparison)."""
    h = s.get("hard_ban")
    if not h or "tuned" not in h:
        return ""
    ban, decode = h["vs_hard_ban"], h["vs_decode"]
    return (
        f"on their own replies, KL(model || reference) per token: tuned {h['tuned']['kl']:.4f}, hard ban "
        f"{h['hard_ban']['kl']:.4f} (ratio {_ci(ban['kl_ratio'], ban['kl_ratio_ci'], '{:.2f}')}), decode-time tilt "
        f"at b {h['decode']['kl']:.4f} (ratio {_ci(decode['kl_ratio'], decode['kl_ratio_ci'], '{:.2f}')}); "
        f"R of the hard ban {fmt_rate(h['hard_ban']['rate'])}"
    )


def hard_ban_section(s: dict, before, after, ban) -> list[str]:
    """--ban's fluency table: the model before, the decode-time tilt at b, the tuned model and a hard ban at
    decode time, each on its own replies (jobs/tilt.hard_ban_comparison), and one reply of each to the same
    request; [] without the comparison."""
    h = s.get("hard_ban")
    if not h:
        return []
    sides = [(key, name) for key, name in BAN_SIDES if key in h]
    cells = [
        ("R", lambda c: fmt_rate(c["rate"])),
        ("reference's perplexity of the replies", lambda c: _ci(c["ppl"], c["ppl_ci"], "{:.2f}")),
        ("KL(model || reference) per reply token", lambda c: _ci(c["kl"], c["kl_ci"], "{:.4f}")),
        ("distinct-2", lambda c: f"{c['distinct_2']:.3f}"),
        ("4-gram repetition", lambda c: f"{c['repetition']:.3f}"),
    ]
    rows = [{"": label, **{name: show(h[key]) for key, name in sides}} for label, show in cells]
    lines = [
        "## Fluency of the replies: before, decode-time, tuned, hard ban",
        "",
        "Each model on its own replies, scored by the reference (the model before training): its perplexity of "
        "them, and the KL from the reference of the distribution each token was drawn from. A hard ban's "
        "perplexity of the reference's own replies is infinite wherever they use an entry; on its own replies "
        "both numbers are finite. 95% bootstrap intervals over replies. The perplexity varies with the replies "
        "more than a ban moves it; the KL ratio is the comparison (1 = as far from the reference as the other).",
        "",
        markdown_table(rows, [""] + [name for _, name in sides]),
        "",
    ]
    for key, label in (("vs_hard_ban", "the hard ban"), ("vs_decode", "the decode-time tilt at b")):
        if key in h:
            c = h[key]
            lines.append(f"- tuned against {label}: KL ratio {_ci(c['kl_ratio'], c['kl_ratio_ci'], '{:.2f}')}")
    texts = {"base": before, "tuned": after, "hard_ban": ban}
    lines += ["", f"The first reply of each to: {before.prompts[0]}", ""]
    for key, name in sides:
        side = texts.get(key)
        if side is not None and side.texts:
            lines += [f"**{name}:** {side.texts[0].strip()}", ""]
    return lines


def tilt_placement(cfg, s: dict) -> str:
    if s.get("placement") == "head-rows":
        h = s["head"]
        side = "its complement's" if h["via_complement"] else "the set's"
        how = (
            f"{s['steps']} Adam steps (lr {h['lr']:g}, cosine) on"
            if h.get("fit", "kl") == "kl"
            else f"least-squares offset b·u (h·u = {h['offset_mean']:.3f} ± {h['offset_std']:.3f}) added to"
        )
        return (
            f"- {how} {side} {h['trained_rows']} rows of the "
            f"untied output head, fitted on {h['context_positions']} cached positions ({h['contexts']} "
            f"contexts){', bf16 autocast' if cfg.train.bf16 else ''}; {s['seconds']:.0f} s in all"
        )
    return (
        f"- {s['steps']} steps of {cfg.train.optimizer} at lr {cfg.train.lr:g}, batch {cfg.train.batch} x "
        f"{cfg.train.seq_len} tokens, {cfg.input_kind()} inputs, {cfg.positions} positions"
        f"{', bf16 autocast' if cfg.train.bf16 else ''}; {s['seconds']:.0f} s in all"
    )


def entries_section(s: dict, top: int = 25) -> list[str]:
    """A phrase list's entries before and after, per 1,000 words, with those that rose flagged, and the
    collateral seen in the samples; [] for a token set."""
    report = (s.get("phrases") or {}).get("per_entry")
    if not report:
        return []
    rows = [
        {
            "entry": f"`{r['entry']}`",
            "before": f"{r['before']} ({r['before_per_1000']:.2f})",
            "after": f"{r['after']} ({r['after_per_1000']:.2f})",
            "": "rose" if r["rose"] else "",
        }
        for r in report["entries"][:top]
    ]
    lines = [
        "## Entries before and after",
        "",
        f"All entries: {report['per_1000_before']:.2f} per 1,000 words before ({report['words_before']} words), "
        f"{report['per_1000_after']:.2f} after ({report['words_after']} words). "
        f"{len(report['entries'])} entries occurred; the {min(top, len(report['entries']))} commonest "
        "(count, and per 1,000 words):",
        "",
        markdown_table(rows, ["entry", "before", "after", ""]),
        "",
        "Entries whose rate rose (replacements the model found): "
        + (", ".join(f"`{e}`" for e in report["rose"]) if report["rose"] else "none"),
        "",
    ]
    if report["collateral"]:
        rows = [
            {
                "word": f"`{c['word']}`",
                "decode-time log-odds shift": f"{c['log_odds_shift']:+.2f}",
                "before": f"{c['before_per_1000']:.2f}",
                "after": f"{c['after_per_1000']:.2f}",
            }
            for c in report["collateral"]
        ]
        lines += [
            "Collateral: the commonest words in these samples that are not entries but share a tilted token "
            "transition with one (per 1,000 words):",
            "",
            markdown_table(rows, ["word", "decode-time log-odds shift", "before", "after"]),
            "",
        ]
    return lines


def tilt_report(cfg, s: dict, before, after, ban=None) -> str:
    """report.md of a tilt run: cfg is its TiltConfig, s its summary, before/after the Samples (ban: the hard
    ban's, with --ban)."""
    columns = ["", "before", "after"] + (["decode-time baseline"] if "baseline" in s else [])
    table = markdown_table(summary_rows(s), columns)
    return "\n".join(
        [
            f"# tokentilt run: {cfg.objective} toward {cfg.toward!r}",
            "",
            f"- model: `{cfg.model}`; "
            + (
                f"list: {s['target_size']} entries, counted as words by `{s['phrases']['word_rule']}`"
                if s.get("phrases")
                else f"set: {s['target_size']} of {s['vocab_size']} tokens ({100 * s['target_share']:.2f}%)"
            ),
            tilt_placement(cfg, s),
            f"- R over {s['samples']} samples of {s['new_tokens']} tokens, 95% interval over samples; perplexity "
            f"and drift on {s['eval_tokens']} held-out tokens of {s['eval_text']}"
            + (tilt_bias_note(s) if "bias" in s else ""),
            "",
            table,
            "",
            excess_cost_note(s),
            "",
            "![loss](loss.png) ![R](rate.png)",
            "",
            *entries_section(s),
            *hard_ban_section(s, before, after, ban),
            samples_section("Samples before", before.prompts, before.texts),
            samples_section("Samples after", after.prompts, after.texts),
        ]
    )
