"""Runs: the run folder (folder.py: DIR.partial -> DIR, never a half-written folder that looks complete)
and its report (report.py: plots and Markdown)."""
