"""`tokentilt profile`'s settings (jobs/profile.py), without torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ProfileConfig:
    """`tokentilt profile`: the words and phrases a chat model over-uses in creative replies, against human text."""

    model: str = "bundled"  # model to load: 'bundled' (SmolLM2-135M-Instruct, offline), a local HF folder, or a hub id
    out: str = (
        "slop.txt"  # the list, one entry per line (for phrases:FILE), with OUT.tsv beside it: each entry's counts
    )
    overwrite: bool = False  # replace OUT and OUT.tsv if they exist
    samples: int = 4  # replies per profiling request (96 built-in creative requests)
    everyday_samples: int = 2  # replies per everyday request (80 built-in questions and requests for advice)
    new_tokens: int = 200  # tokens per reply at most (a reply stops at end-of-turn)
    reference: str = ""  # plain-text file of human text to compare with; empty = the plays' train split
    max_words: int = 4  # longest phrase, in words
    min_count: int = 4  # an entry occurs at least this often in the replies
    min_requests: int = 16  # in replies to at least this many different requests (a habit, not a topic: each
    # subject of the profiling requests has 6)
    min_ratio: float = 10.0  # and this many times as often per word as in the reference (add-one smoothed)
    min_phrase_ratio: float = 30.0  # the same for a phrase of several words, whose words are often common ones
    min_everyday_ratio: float = 3.0  # and this many times as often as in the model's own everyday replies
    max_entries: int = 500  # keep the most over-used entries
    seed: int = 0  # sampling seed
    bf16: bool = False  # bf16 autocast while sampling
    system: str = ""  # a system message before each request

    def check(self) -> None:
        for name in (
            "samples",
            "everyday_samples",
            "new_tokens",
            "max_words",
            "min_count",
            "min_requests",
            "max_entries",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("min_ratio", "min_phrase_ratio", "min_everyday_ratio"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
