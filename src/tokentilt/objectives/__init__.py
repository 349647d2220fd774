"""Objectives: what a training step minimises.

losses.py  pure functions fn(logits, input_ids, ctx) -> scalar, and the OBJECTIVES registry by name
fused.py   the output head fused with a loss, a chunk of rows at a time (never holds (B·T, V) logits)
"""

from tokentilt.objectives.losses import FUSED, OBJECTIVES, ObjectiveContext, phrase_distill

__all__ = ["FUSED", "OBJECTIVES", "ObjectiveContext", "phrase_distill"]
