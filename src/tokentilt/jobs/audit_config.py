"""`tokentilt audit`'s settings (jobs/audit.py), without torch: the audit's options (settings.AuditOptions, what
audit/lift.py reads) and the output folder."""

from __future__ import annotations

from dataclasses import dataclass

from tokentilt.settings import AuditOptions


@dataclass
class AuditConfig(AuditOptions):
    """One audit: which models, which contexts, which candidates, how strict, and where it is written."""

    out: str = "runs/audit"  # output folder
    overwrite: bool = False  # replace the output folder if it already holds an audit
