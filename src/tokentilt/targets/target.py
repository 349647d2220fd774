"""The Target type: what every consumer needs of a set to tilt toward, a token set or a phrase set.

Two kinds implement it: tokens.TokenSet (single tokens: a (V,) mask, the same at every position) and
phrases.PhraseSet (words and phrases of any length: membership depends on the text before a position).
Consumers call these members and never ask which kind they hold; where a computation only exists for
single tokens (a one-pass proxy, importance weights, the one-pass costs), it uses `mask`, which is None
for a phrase set. `as_target` is the one place outside the two classes that tells the kinds apart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

from tokentilt.targets.tokens import TokenSet

if TYPE_CHECKING:
    from transformers import LogitsProcessor

RAW_MASK = "<mask>"  # the selector of a TokenSet built from a bare (V,) mask


@runtime_checkable
class Target(Protocol):
    """A set to tilt toward, resolved against one vocabulary."""

    selector: str  # the rule as the user wrote it ("<mask>" for a bare mask)
    vocab_size: int  # V, the vocabulary the set is resolved against

    @property
    def size(self) -> int:
        """Tokens in a token set, entries in a phrase set."""

    @property
    def share(self) -> float:
        """Share of the vocabulary that the set (or its entries' tokenizations) touches."""

    @property
    def mask(self) -> torch.Tensor | None:
        """(V,) bool mask of a set of single tokens (its mass at a position is then exact and per-token);
        None for a phrase set, whose membership depends on context."""

    def describe(self) -> str:
        """One or a few lines saying what the set holds."""

    def tilt(self, logits: torch.Tensor, ids: torch.Tensor, bias: float) -> torch.Tensor:
        """The decode-time tilt at bias b of teacher-forced logits (B, T, V) over ids (B, T): (B, T, V) float32."""

    def processor(self, bias: float) -> LogitsProcessor:
        """The same tilt as a sampler's logits processor."""

    def rates(self, samples) -> torch.Tensor:
        """R of each sample of the sampler's output (.tokens, .lengths, .special, .texts). (N,) float32, NaN
        for a sample with nothing to count."""

    def summary(self, tokenizer, bias: float) -> dict:
        """What a run records about the set at bias b (summary.json); {} when there is nothing beyond the
        selector and size."""


def as_target(x) -> Target:
    """A Target, returned as it is, or a bare (V,) bool mask, wrapped into a TokenSet with selector "<mask>"."""
    if isinstance(x, torch.Tensor):
        if x.dtype != torch.bool or x.dim() != 1:
            raise TypeError(
                f"a target mask must be a 1-D bool tensor of shape (V,), got dtype {x.dtype} and shape {tuple(x.shape)}"
            )
        return TokenSet(RAW_MASK, x)
    if isinstance(x, Target):
        return x
    raise TypeError(f"a target must be a TokenSet, a PhraseSet or a (V,) bool mask, got {type(x).__name__}")
