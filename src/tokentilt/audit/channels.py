"""What an evidence channel of the audit reports: its findings, each a named set with a direction and a test.

The lift (lift.py) is one channel. Others read other evidence (the activation difference through the
unembedding, contrastive samples, word and phrase counts, a decomposition of per-context logit
differences); each returns a ChannelResult, which the audit writes under audit.json's "channels" and
which the benchmark scores alone before any combination.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Finding:
    """One set that a channel names: what it is, which way it moved, and how sure the channel is."""

    label: str  # readable: "words: lion, tiger, horse, ...", "contains:ight", "12 tokens near ' France'"
    tokens: list[int]  # the vocabulary ids the finding names (for a word or phrase finding, the ids of its words)
    direction: str  # "toward" or "away"
    statistic: float  # the channel's own effect size (documented by the channel)
    p_value: float  # of the channel's test against its null; corrected for the tests the channel made
    words: list[str] = field(default_factory=list)  # a word- or phrase-level finding: the words or phrases
    examples: list[str] = field(default_factory=list)  # contexts or samples where it shows


@dataclass
class ChannelResult:
    """A channel's answer: its findings, best first, and whether any passes the channel's own bar."""

    channel: str  # "lens", "contrast", "words", "decomposition", ...
    stands_out: bool  # the best finding passes the channel's test at the audit's alpha
    findings: list[Finding]
    seconds: float = 0.0
    notes: dict = field(default_factory=dict)  # the channel's own numbers (null, thresholds, sizes)

    def to_json(self) -> dict:
        out = asdict(self)
        for f in out["findings"]:
            f["size"] = len(f.pop("tokens"))
        return out
