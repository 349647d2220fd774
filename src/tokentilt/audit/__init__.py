"""Audit: which tokens a fine-tune tilted, found blind by comparing it with its reference.

lift.py      audit(): the per-token lift on held-out and sampled contexts, scored and judged
features.py  the candidate sets the lift is scored on (substrings, word classes, ...)
weights.py   the weight view: what changed in the output head and the embeddings
"""

from tokentilt.audit.lift import AuditResult, audit

__all__ = ["AuditResult", "audit"]
