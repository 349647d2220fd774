"""The course's experiments as short recipes built from the pieces in tokentilt.

Each module has a config dataclass and a `run(cfg, progress, echo) -> summary` function that writes
one run folder (summary.json, plots, report.md) through outputs.RunFolder.
"""

EXPERIMENTS = ("l1-vs-l2", "like-x", "x-factor")
