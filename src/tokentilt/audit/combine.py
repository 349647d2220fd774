"""The combined verdict of audit v2: a channel's finding is called a tilt only where the set moved where it does
not belong as much as where it fits.

Every channel (lift.py's ranking, and the channels of channels.py) can stand out on an honest fine-tune: a model
trained on chat replies does raise the words of chat replies, against the null of "no change" that each channel
tests. What tells a planted tilt from a domain is context (issue 45): a tilt by b moves the set's log-odds by about
b at every position, a domain only where its words fit. So each finding of a channel that stands out is put to
lens.context_dependence on the held-out windows, and the verdict is the first finding, in CHANNEL_ORDER, whose
lift where the reference gives the set little mass is at least GATE_CUT of its lift where it gives it most (the
ratio's 95% lower bound). The order was fixed before any benchmark case ran: the weight view's head rows (exact
when they are all that changed), then the channels that read a set from the whole vocabulary (the lens, the
decomposition), the lift's family, then the word channels (whose tokens are the words' own).
"""

from __future__ import annotations

import torch

from tokentilt.audit.channels import ChannelResult, Finding

CHANNEL_ORDER = ("weights", "lens", "decomposition", "lift", "contrast", "words")
GATE_CUT = 0.5  # the ratio lift(low) / lift(high) whose 95% lower bound a tilt must pass: set on the dev cases


def candidates(lift_finding: Finding | None, head_rows: Finding | None, channels: dict[str, ChannelResult]):
    """(channel, finding) of every channel that stands out, in CHANNEL_ORDER, its best finding first."""
    found = {"weights": [head_rows] if head_rows else [], "lift": [lift_finding] if lift_finding else []}
    for name, result in channels.items():
        found[name] = result.findings[:2] if result.stands_out else []
    return [(name, f) for name in CHANNEL_ORDER for f in found.get(name, []) if f.tokens]


def combine(
    lift_finding: Finding | None,
    head_rows: Finding | None,
    channels: dict[str, ChannelResult],
    dependence,
    vocab: int,
    cut: float = GATE_CUT,
) -> dict:
    """-> audit.json's "combined": stands_out, direction, label, tokens, words, the channel that named it, and the
    context-dependence test of every finding tried ("tried"). dependence(mask (V,) bool) -> lens.context_dependence's
    dict. A head-rows edit (weights) needs no gate: the rows that changed are the set."""
    tried = []
    for name, finding in candidates(lift_finding, head_rows, channels):
        mask = torch.zeros(vocab, dtype=torch.bool)
        mask[torch.tensor(finding.tokens)] = True
        test = None if name == "weights" else dependence(mask)
        passed = name == "weights" or test["ratio_ci"][0] > cut
        tried.append({"channel": name, "label": finding.label, "direction": finding.direction, "passed": passed})
        if test is not None:
            tried[-1]["context"] = {k: test[k] for k in ("ratio", "ratio_ci", "low", "high", "verdict")}
        if passed:
            return {
                "stands_out": True,
                "direction": finding.direction,
                "channel": name,
                "label": finding.label,
                "tokens": list(finding.tokens),
                "words": list(finding.words),
                "examples": list(finding.examples),
                "tried": tried,
            }
    return {
        "stands_out": False,
        "direction": "none",
        "channel": None,
        "label": "",
        "tokens": [],
        "words": [],
        "examples": [],
        "tried": tried,
    }
