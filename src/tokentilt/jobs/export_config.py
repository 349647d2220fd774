"""`tokentilt export`'s settings (jobs/export.py), without torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tokentilt.settings import DEFAULT_TYPE, TYPES


@dataclass
class ExportConfig:
    """What `tokentilt export` writes, and from what."""

    source: str = ""  # a tilt run folder, a model folder, a .gguf or 'bundled'
    gguf: str = ""  # write the model here as GGUF (OUT.Modelfile beside it)
    type: Literal[TYPES] = DEFAULT_TYPE  # tensor type of the 2-D weights
    logit_bias: str = ""  # write the decode-time tilt here as JSON {token id: bias}
    toward: str = ""  # --logit-bias: the token set; a run folder's when not given
    bias: float | None = None  # --logit-bias: the bias b; a run folder's trained b when not given
