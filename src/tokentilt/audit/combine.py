"""The combined verdict of audit v2: a channel's finding is called a tilt only where the set moved where it does
not belong as much as where it fits.

Every channel (lift.py's ranking, and the channels of channels.py) can stand out on an honest fine-tune: a model
trained on chat replies does raise the words of chat replies, against the null of "no change" that each channel
tests. What tells a planted tilt from a domain is context (issue 45): a tilt by b moves the set's log-odds by about
b at every position, a domain only where its words fit. So each finding of a channel that stands out is put to
lens.context_dependence on the held-out windows, and the verdict is the first finding, in CHANNEL_ORDER, whose
lift where the reference gives the set little mass is at least GATE_CUT of its lift where it gives it most (the
ratio's 95% lower bound), and whose lift there is at least MIN_LIFT nats (its 95% bound nearer zero). The order
was fixed before any benchmark case ran: the weight view's head rows (exact when they are all that changed), then the
channels that read a set from the whole vocabulary (the lens, the decomposition), the lift's family, then the word
channels (whose tokens are the words' own).

A channel names the tokens that told it most (the lens, 11), not every token the tilt moved; so the verdict names
the tokens whose lift is at least GROW of the median lift of the finding's tokens (`grow`).

GATE_CUT was fixed before any case ran. MIN_LIFT and GROW were read off the development cases alone
(scripts/audit_bench_v2_dev.py), after the benchmark's cases were committed and before any of them ran:
- MIN_LIFT: honest fine-tunes' findings raised their sets where they do not belong by 0.76, 0.90 and 1.36 nats
  (95% upper bounds 0.99, 1.11, 1.69); planted tilts by 5.88, 6.02 and 6.42 (lower bounds 5.67, 5.76, 6.17). The
  bar is the midpoint of the nearest bounds, (1.69 + 5.67) / 2.
- GROW: of 0.3, 0.4, ..., 0.7, the share with the best mean Jaccard against the planted sets of the three planted
  cases (0.41, against 0.25 for the channels' own tokens).

The tokenizer's special tokens (a chat template's `<|im_end|>` and the rest) are reported apart (`special`), never
as a tilt or in one: a chat fine-tune raises end-of-turn everywhere, which no context test tells from a tilt, and
both honest fine-tunes that benchmark v2's verdict flagged were flagged on them. The cost: a tilt toward ending the
turn is reported as such a move, not called a tilt. (After benchmark v2; its table is of the verdict without this.)
"""

from __future__ import annotations

import torch

from tokentilt.audit.channels import ChannelResult, Finding

CHANNEL_ORDER = ("weights", "lens", "decomposition", "lift", "contrast", "words")
GATE_CUT = 0.5  # the ratio lift(low) / lift(high) whose 95% lower bound a tilt must pass: fixed a priori
MIN_LIFT = 3.68  # nats: the least lift of the set's log-odds where it does not belong (its 95% bound): dev cases
GROW = 0.7  # a token is named when its lift is at least this share of the finding's median lift: dev cases


def candidates(lift_finding: Finding | None, head_rows: Finding | None, channels: dict[str, ChannelResult]):
    """(channel, finding) of every channel that stands out, in CHANNEL_ORDER, its best finding first."""
    found = {"weights": [head_rows] if head_rows else [], "lift": [lift_finding] if lift_finding else []}
    for name, result in channels.items():
        found[name] = result.findings[:2] if result.stands_out else []
    return [(name, f) for name in CHANNEL_ORDER for f in found.get(name, []) if f.tokens]


def passes(test: dict, direction: str, cut: float = GATE_CUT, min_lift: float = MIN_LIFT) -> bool:
    """A context test (lens.context_dependence) of a set moved in `direction`: as much where it does not belong as
    where it fits, and by at least min_lift nats there (the 95% bound nearer zero)."""
    low = test["low"]["lift_ci"]
    moved = low[0] if direction == "toward" else -low[1]
    return test["ratio_ci"][0] > cut and moved >= min_lift


def grow(mask: torch.Tensor, lift: torch.Tensor, direction: str, share: float = GROW) -> torch.Tensor:
    """The tokens whose lift (V,), in `direction`, is at least `share` of the median lift of mask's tokens. (V,)"""
    signed = lift if direction == "toward" else -lift
    level = float(signed[mask].median())
    return signed >= share * level if level > 0 else mask


def combine(
    lift_finding: Finding | None,
    head_rows: Finding | None,
    channels: dict[str, ChannelResult],
    dependence,
    vocab: int,
    lift: torch.Tensor | None = None,
    cut: float = GATE_CUT,
    min_lift: float = MIN_LIFT,
    special: list[int] | tuple[int, ...] = (),
) -> dict:
    """-> audit.json's "combined": stands_out, direction, label, tokens, words, the channel that named it, and the
    context-dependence test of every finding tried ("tried"). dependence(mask (V,) bool) -> lens.context_dependence's
    dict. A head-rows edit (weights) needs no gate, the rows that changed being the set; its test is run for what it
    reports. With the per-token lift (V,), a gated finding's tokens grow to every token the lift moved as much
    (`grow`); "found_by_channel" keeps the channel's own. "mass" and "shows" are the verdict's test's: what the set's
    share of next-token mass came to, and the held-out positions where it moved most. special: the tokenizer's
    special ids, taken out of every channel's finding but the head rows' (which are exact) and reported apart
    ("special": channel, direction and the special ids of each finding that held any)."""
    tried, apart = [], []
    unusual = torch.zeros(vocab, dtype=torch.bool)
    unusual[[t for t in special if t < vocab]] = True
    for name, finding in candidates(lift_finding, head_rows, channels):
        mask = torch.zeros(vocab, dtype=torch.bool)
        mask[torch.tensor(finding.tokens)] = True
        moved = mask & unusual
        if name != "weights" and moved.any():
            apart.append(
                {"channel": name, "direction": finding.direction, "tokens": moved.nonzero().squeeze(1).tolist()}
            )
            mask &= ~unusual
            if not mask.any():
                tried.append(
                    {
                        "channel": name,
                        "label": finding.label,
                        "direction": finding.direction,
                        "passed": False,
                        "special_only": True,
                    }
                )
                continue
        test = dependence(mask)
        passed = name == "weights" or passes(test, finding.direction, cut, min_lift)
        tried.append({"channel": name, "label": finding.label, "direction": finding.direction, "passed": passed})
        tried[-1]["context"] = {k: test[k] for k in ("ratio", "ratio_ci", "low", "high", "verdict")}
        if passed:
            named = mask if name == "weights" or lift is None else grow(mask, lift, finding.direction) & ~unusual
            return {
                "stands_out": True,
                "direction": finding.direction,
                "channel": name,
                "label": finding.label,
                "tokens": named.nonzero().squeeze(1).tolist(),
                "found_by_channel": list(finding.tokens),
                "words": list(finding.words),
                "examples": list(finding.examples),
                "mass": test.get("mass"),
                "shows": test.get("shows", []),
                "tried": tried,
                "special": apart,
            }
    return {
        "stands_out": False,
        "direction": "none",
        "channel": None,
        "label": "",
        "tokens": [],
        "found_by_channel": [],
        "words": [],
        "examples": [],
        "mass": None,
        "shows": [],
        "tried": tried,
        "special": apart,
    }
