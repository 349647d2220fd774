"""The course's experiments as short recipes built from the pieces in tokentilt.

Each experiment is a module with a `run(cfg, *, echo, progress) -> summary` function that writes one run folder
(summary.json, plots, report.md) through runs.folder.RunFolder, and its config beside it in <name>_config.py.
"""

EXPERIMENTS = ("l1-vs-l2", "like-x", "x-factor")
