"""The `tokentilt audit` job: load both models, audit, write audit.json, report.md, lift.png and lift.safetensors."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from tokentilt.audit.combine import GATE_CUT, MIN_LIFT  # noqa: E402
from tokentilt.audit.lift import AuditResult, audit  # noqa: E402
from tokentilt.jobs.audit_config import AuditConfig  # noqa: E402
from tokentilt.preflight import preflight_audit as preflight  # noqa: E402
from tokentilt.runs.folder import RunFolder  # noqa: E402
from tokentilt.runs.report import fmt_rate, markdown_table  # noqa: E402


def run(cfg: AuditConfig, *, echo=print, progress: bool = False) -> AuditResult:
    """Audit cfg.model against cfg.reference and write the folder cfg.out (built in OUT.partial)."""
    preflight(cfg)
    start = time.time()
    result = audit(cfg.model, cfg.reference, cfg=cfg, echo=echo, progress=progress)
    seconds = time.time() - start
    folder = RunFolder(cfg.out, overwrite=cfg.overwrite).start()
    folder.write_yaml("config.yaml", dataclasses.asdict(cfg))
    folder.write_json(
        "audit.json", {"model": cfg.model, "reference": cfg.reference, "seconds": round(seconds, 1), **result.to_json()}
    )
    save_file(
        {"lift": result.lift.float().contiguous(), "unexplained": result.unexplained.float().contiguous()},
        folder.path("lift.safetensors"),
    )
    plot_lift(folder.path("lift.png"), result)
    folder.path("report.md").write_text(audit_report(cfg, result, seconds))
    out = folder.finish()
    echo(result.verdict)
    if result.combined is not None:
        echo(combined_line(result.combined))
    echo(f"wrote {out} in {seconds:.0f} s")
    return result


def run_audit(cfg: AuditConfig, echo=print, progress: bool = False) -> AuditResult:
    """The API's name for run()."""
    return run(cfg, echo=echo, progress=progress)


# ---------------------------------------------------------------- plot and report


def plot_lift(path: Path, result: AuditResult) -> None:
    """Histograms of every token's lift and of its unexplained part, the top feature's tokens against the rest."""
    mask, top = result.top_mask, result.features[0]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), dpi=110)
    panels = (
        (result.lift, "lift", "lift: mean log p_model - log p_ref, centred (nats)"),
        (result.unexplained, "unexplained", "unexplained: the lift less its best fit W u + c (nats)"),
    )
    for ax, (values, view, xlabel) in zip(axes, panels):
        values = values.float()
        lo, hi = float(values.min()), float(values.max())
        span = dict(bins=80 if hi > lo else 1, range=(lo, hi if hi > lo else lo + 1))
        ax.hist(values[~mask].numpy(), **span, alpha=0.6, label=f"other tokens ({int((~mask).sum())})")
        ax.hist(
            values[mask].numpy(),
            **span,
            alpha=0.7,
            label=f"{top['selector']} ({int(mask.sum())}), AUROC {top['auroc_' + view]:.3f}",
        )
        ax.set_yscale("log")
        ax.axvline(0, color="grey", lw=1, ls="--")
        ax.set(title=f"{view}{' (scored here)' if top['view'] == view else ''}", xlabel=xlabel, ylabel="tokens")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Per-token lift, by the top feature" + ("" if result.stands_out else " (nothing stands out)"))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _cell(text: str, limit: int = 160) -> str:
    text = text.replace("\n", " ⏎ ").replace("|", "\\|")
    return text if len(text) <= limit else text[:limit] + " …"


def _feature_table(rows: list[dict]) -> str:
    table = [
        {
            "#": i + 1,
            "selector": f"`{_cell(r['selector'], 40)}`",
            "what": _cell(r["label"], 90)
            + (f" (closest rule `{r['rule']['selector']}`, Jaccard {r['rule']['jaccard']:.2f})" if "rule" in r else ""),
            "tokens": r["size"],
            "AUROC: lift / unexplained": f"{r['auroc_lift']:.3f} / {r['auroc_unexplained']:.3f}",
            "score": f"{r['score']:.3f} ({r['view']})",
            "lift, nats [95% CI]": f"{r['lift']:+.2f} [{r['lift_ci'][0]:+.2f}, {r['lift_ci'][1]:+.2f}]",
            "mass ratio": f"{r['mass_ratio']:.3g}x",
            "share in samples: ref → model": f"{fmt_rate(r['share_reference'])} → {fmt_rate(r['share_model'])}",
        }
        for i, r in enumerate(rows)
    ]
    return markdown_table(table, list(table[0]))


def _token_table(rows: list[dict]) -> str:
    table = [
        {
            "token": f"`{_cell(repr(r['text']), 30)}`",
            "lift [95% CI]": f"{r['lift']:+.2f} [{r['lift_ci'][0]:+.2f}, {r['lift_ci'][1]:+.2f}]",
            "p ref → model": f"{r['p_reference']:.2e} → {r['p_model']:.2e}",
            "share in samples: ref → model": f"{r['share_reference']:.4f} → {r['share_model']:.4f}",
        }
        for r in rows
    ]
    return markdown_table(table, list(table[0]))


def audit_report(cfg: AuditConfig, r: AuditResult, seconds: float) -> str:
    c = r.contexts
    lines = [
        f"# tokentilt audit of `{cfg.model}` against `{cfg.reference}`",
        "",
        f"**{r.verdict}.**",
        "",
        f"- direction: **{r.direction}**; {r.candidates} candidate features: substrings of 1-8 characters, token "
        f"classes and word lists of at least {cfg.min_tokens} tokens, sets read off one half of the contexts' lift "
        "(scored on the other half), and the head rows that changed when nothing else did",
        f"- weights: {r.weights['summary']}" if r.weights else "- weights: not compared",
        f"- lift measured on {c['text_positions']} positions of {c['text_windows']} held-out windows of "
        f"{c['eval_text']} and on {c['sample_positions']} positions of {c['samples']} sampled continuations "
        f"(half from each model); 95% intervals over those {c['text_windows'] + c['samples']} contexts",
        "- each feature is scored on the lift and on its unexplained part (the lift less its best fit by a shift "
        "of the final hidden state, W u + c: the change the head itself carries), and keeps the better score",
        f"- score = 0.5 + |AUROC - 0.5| - {r.z_critical:.2f} SE (a lower bound at family-wise level {cfg.alpha} "
        f"over all candidates and both views); a feature stands out above {max(r.threshold, 0.5):.3f}, the best score any "
        f"candidate reaches on {cfg.null_draws} random logit directions (and chance)",
        f"- {seconds:.0f} s",
        "",
    ]
    if r.combined is not None:
        lines += channels_section(r)
    if r.truth:
        t = r.truth
        lines += [
            f"The given set `{t['selector']}` ({t['size']} tokens): AUROC {t['auroc']:.3f}, score {t['score']:.3f}, "
            f"rank {t['rank']} of {r.candidates}, Jaccard with the top feature {t['jaccard_with_top']:.2f}, "
            f"lift {t['lift']:+.2f} nats, mass ratio {t['mass_ratio']:.3g}x.",
            "",
        ]
    lines += [
        "## Features, best first",
        "",
        _feature_table(r.features),
        "",
        "![lift](lift.png)",
        "",
        "## Most lifted tokens",
        "",
        _token_table(r.tokens_up),
        "",
        "## Most lowered tokens",
        "",
        _token_table(r.tokens_down),
        "",
        "## Samples side by side (one per prompt, same seed)",
        "",
        "| prompt | reference | model |",
        "|---|---|---|",
    ]
    seen = set()
    for prompt, ref, mod in zip(r.samples["prompts"], r.samples["reference"], r.samples["model"]):
        if prompt not in seen:
            seen.add(prompt)
            lines.append(f"| {_cell(prompt, 60)} | {_cell(ref)} | {_cell(mod)} |")
    return "\n".join(lines) + "\n"


def combined_line(combined: dict) -> str:
    """The combined verdict in one line, and the special tokens it set apart."""
    return _verdict_line(combined) + special_note(combined.get("special", []))


def _verdict_line(combined: dict) -> str:
    if not combined["stands_out"]:
        gated = sum(1 for t in combined["tried"] if not t["passed"] and "context" in t)
        return "combined: no tilt" + (
            f" ({gated} finding(s) of the channels failed the context test: their set moved only where it fits, "
            f"or by less than {MIN_LIFT:.2f} nats where it does not)"
            if gated
            else ""
        )
    shown = ", ".join(combined["words"][:8]) if combined["words"] else combined["label"]
    line = f"combined: a tilt {combined['direction']} {shown} ({len(combined['tokens'])} tokens, named by {combined['channel']})"
    mass = combined.get("mass")
    if mass:
        lo, hi = mass["change_ci"]
        line += (
            f"; the set's next-token mass on held-out text {mass['reference']:.4f} -> {mass['model']:.4f} "
            f"({mass['change']:+.4f} [{lo:+.4f}, {hi:+.4f}])"
        )
    return line


def special_note(special: list[dict]) -> str:
    """The special tokens (a chat template's end of turn) that channels named, which the verdict sets apart."""
    moved = {}
    for m in special:
        for token in m.get("strings", m["tokens"]):
            moved.setdefault((str(token), m["direction"]), []).append(m["channel"])
    if not moved:
        return ""
    shown = ", ".join(
        f"{token} {direction} ({', '.join(dict.fromkeys(by))})" for (token, direction), by in moved.items()
    )
    return f"; special tokens moved, reported apart and not called a tilt: {shown}"


def channels_section(r: AuditResult) -> list[str]:
    """report.md's section on audit v2: each channel alone, then the combined verdict and its context tests."""
    rows = []
    for name, ch in r.channels.items():
        best = ch.findings[0] if ch.findings else None
        rows.append(
            [
                name,
                "yes" if ch.stands_out else "no",
                _cell(best.label, 80) if best else "",
                best.direction if best else "",
                f"{best.p_value:.2g}" if best else "",
                f"{ch.seconds:.0f}",
            ]
        )
    lines = [
        "## Evidence channels, each alone",
        "",
        _table(["channel", "stands out", "best finding", "direction", "p", "s"], rows),
        "",
        f"**{combined_line(r.combined)}.** A channel's finding counts as a tilt only where the set's log-odds rose "
        "(or fell) where the reference gives it little mass about as much as where it fits (the ratio's 95% lower "
        f"bound above {GATE_CUT}), and by at least {MIN_LIFT:.2f} nats there (the 95% bound nearer zero): a domain "
        "fine-tune raises its words where they fit, or a little everywhere.",
        "",
    ]
    tried = [
        [
            t["channel"],
            _cell(t["label"], 60),
            t["direction"],
            _with_ci(t["context"]["ratio"], t["context"]["ratio_ci"]) if "context" in t else "",
            _with_ci(t["context"]["low"]["lift"], t["context"]["low"]["lift_ci"]) if "context" in t else "",
            ("tilt" if t["passed"] else "not a tilt") if "context" in t else "special tokens only: set apart",
        ]
        for t in r.combined["tried"]
    ]
    if tried:
        columns = ["channel", "finding", "direction", "lift ratio, low / high", "lift where it fits least", "verdict"]
        lines += [_table(columns, tried), ""]
    if r.combined.get("shows"):
        lines += ["Held-out text where the set moved most (p: reference -> model, of the next token being in it):", ""]
        lines += [
            f"- `{_cell(c['text'], 200)}` {c['p_reference']:.4f} -> {c['p_model']:.4f}" for c in r.combined["shows"]
        ]
        lines.append("")
    if r.combined.get("examples"):
        lines += ["Where it shows:", ""] + [f"- {_cell(e, 200)}" for e in r.combined["examples"][:3]] + [""]
    return lines


def _with_ci(value: float, ci: list[float]) -> str:
    return f"{value:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def _table(columns: list[str], rows: list[list[str]]) -> str:
    return markdown_table([dict(zip(columns, row)) for row in rows], columns)
