"""Audit v2's evidence beside the lift: run the channels, then the combined verdict (combine.py).

Each channel is measured alone (audit.json "channels") before the combination reads them ("combined"), so the
benchmark scores each one by itself. The channels reuse what the lift already has: the held-out windows, both
models' samples, the candidate family.
"""

from __future__ import annotations

import math
import time

import torch

from tokentilt.audit.channels import ChannelResult, Finding
from tokentilt.audit.combine import combine
from tokentilt.data import chat as chat_module
from tokentilt.settings import parse_channels

CONTEXT_TOKENS = 16  # the tokens of held-out text shown before a position where the verdict's set moved


def run_channels(model, reference, tokenizer, cfg, texts, *, family, windows, sampled, echo) -> dict:
    """{name: ChannelResult} for cfg.channels, each timed."""

    def lens():
        from tokentilt.audit.lens import lens_channel

        return lens_channel(model, reference, tokenizer, cfg, texts, family=family)

    def contrast():
        from tokentilt.audit.contrast import contrast_channel

        return contrast_channel(model, reference, tokenizer, cfg, texts, sampled=sampled)

    def words():
        from tokentilt.audit.contrast import words_channel

        return words_channel(model, reference, tokenizer, cfg, texts, sampled=sampled)

    def decomposition():
        from tokentilt.audit.decompose import decompose_channel

        return decompose_channel(model, reference, tokenizer, cfg, texts, windows=windows, family=family)

    calls = {"lens": lens, "contrast": contrast, "words": words, "decomposition": decomposition}
    results = {}
    for name in parse_channels(cfg.channels):
        echo(f"channel {name} ...")
        start = time.perf_counter()
        results[name] = calls[name]()
        results[name].seconds = round(time.perf_counter() - start, 1)
        best = results[name].findings[0] if results[name].findings else None
        echo(
            f"  {name}: {'stands out' if results[name].stands_out else 'nothing stands out'}"
            + (f"; best: {best.label} ({best.direction}, p {best.p_value:.2g})" if best else "")
            + f" ({results[name].seconds:.0f} s)"
        )
    return results


def lift_findings(rows: list[dict], masks: list[torch.Tensor], stands_out: bool) -> tuple:
    """The lift's top feature as a Finding (None unless it stands out), and as the head-rows finding when the
    weights named it (only the output head changed, in at most half its rows)."""
    if not stands_out:
        return None, None
    top = rows[0]
    finding = Finding(
        label=top.get("label") or top["selector"],
        tokens=masks[0].nonzero().squeeze(1).tolist(),
        direction="toward" if top["auroc"] > 0.5 else "away",
        statistic=top["score"],
        p_value=math.nan,  # the lift's bar is the random-direction threshold, not a p-value
    )
    return (None, finding) if top["kind"] == "weights" else (finding, None)


def combined_verdict(model, reference, tokenizer, windows, rows, masks, stands_out, channels, cfg, lift) -> dict:
    """combine.combine over the lift's finding and the channels', each gated by lens.context_dependence; the
    per-token lift (V,) grows the named set; the tokenizer's special tokens are reported apart ("special", with
    their "strings"). The held-out positions where the set moved most come back as text:
    {"text": the window's last CONTEXT_TOKENS tokens up to the position, "lift", "p_reference", "p_model"}."""
    from tokentilt.audit.lens import context_dependence

    lift_finding, head_rows = lift_findings(rows, masks, stands_out)
    out = combine(
        lift_finding,
        head_rows,
        channels,
        lambda mask: context_dependence(model, reference, windows, mask, bf16=cfg.bf16, seed=cfg.seed),
        len(lift),
        lift=lift,
        special=chat_module.special_ids(tokenizer),
    )
    for moved in out["special"]:
        moved["strings"] = tokenizer.convert_ids_to_tokens(moved["tokens"])
    out["shows"] = [
        {
            "text": tokenizer.decode(windows[w, max(t + 1 - CONTEXT_TOKENS, 0) : t + 1].tolist()),
            "lift": round(up, 3),
            "p_reference": round(p_ref, 5),
            "p_model": round(p_model, 5),
        }
        for w, t, up, p_ref, p_model in out["shows"]
    ]
    return out


def channels_json(channels: dict[str, ChannelResult]) -> dict:
    return {name: result.to_json() for name, result in channels.items()}
