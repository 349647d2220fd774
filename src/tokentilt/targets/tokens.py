"""Selectors -> vocabulary mask -> target distributions.

A selector is a small rule written as ``kind:argument`` that picks tokens by their
*decoded text* (never by raw BPE markers such as ``Ġ`` or ``▁``):

    contains:x        tokens whose text contains "x", case-insensitive
    contains:x:case   ... case-sensitive
    regex:PATTERN     tokens whose text matches PATTERN (re.search)
    words:FILE        whole words listed in FILE, with and without a leading space
    words:NAME        a built-in word list (wordlists/NAME.txt), e.g. words:colours
                      (entries that are several tokens are not in the set: the run names them;
                      phrases:FILE tilts them, see phrases.py)
    ids:1,2,3         explicit token ids
    not:SELECTOR      the complement of another selector
    A & B, A | B      intersection / union of selectors (spaces required around & and |)

A bare string with no known kind, such as ``x``, means ``contains:x``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import LogitsProcessor

from tokentilt.targets.selectors import (  # noqa: F401 (re-exported: the selector language is named here too)
    KINDS,
    WORDLISTS,
    SelectorError,
    builtin_word_lists,
    check_syntax,
    read_list_text,
    select_flags,
    token_selector_only,
    word_list,
)


def token_texts(tokenizer) -> list[str]:
    """Decoded text of every token id, in id order (length = vocabulary size)."""
    size = max(len(tokenizer), getattr(tokenizer, "vocab_size", 0) or 0)
    return [tokenizer.decode([i]) for i in range(size)]


def select(spec: str, texts: list[str]) -> torch.Tensor:
    """Build a boolean mask of shape (V,) from a selector string and the token texts (selectors.py parses it)."""
    return torch.tensor(select_flags(spec, texts), dtype=torch.bool)


def dropped_words(spec: str, texts: list[str]) -> list[str]:
    """The entries of a words: selector that are no single token (with or without a leading space), so the
    set leaves them out. [] for other selectors."""
    kind, _, arg = spec.partition(":")
    if kind != "words" or not arg.strip():
        return []
    vocab = set(texts)
    words = dict.fromkeys(w.strip() for w in read_list_text(word_list(arg), "words").splitlines() if w.strip())
    return [w for w in words if w not in vocab and " " + w not in vocab]


@dataclass
class TokenSet:
    """A selector resolved against one vocabulary: a Target (target.py) of single tokens."""

    selector: str  # the rule as the user wrote it
    mask: torch.Tensor  # (V,) bool, True for tokens in the set
    dropped: list[str] = field(default_factory=list)  # words: entries that are several tokens, left out

    @property
    def size(self) -> int:
        return int(self.mask.sum())

    @property
    def vocab_size(self) -> int:
        return self.mask.numel()

    @property
    def share(self) -> float:
        return self.size / self.vocab_size

    def describe(self) -> str:
        line = f"{self.selector!r} selects {self.size} of {self.vocab_size} tokens ({100 * self.share:.2f}%)"
        if self.dropped:
            shown = ", ".join(repr(w) for w in self.dropped[:8]) + (" ..." if len(self.dropped) > 8 else "")
            line += (
                f"\n  {len(self.dropped)} entries are several tokens and are NOT in the set: {shown}"
                f"\n  (phrases:{self.selector.partition(':')[2]} tilts whole words of any length)"
            )
        return line

    def tilt(self, logits: torch.Tensor, ids: torch.Tensor, bias: float) -> torch.Tensor:
        """z + b * M at every position (ids are not needed: the set is the same everywhere). (B, T, V) float32"""
        return bias_logits(logits, self.mask, bias)

    def processor(self, bias: float) -> LogitsProcessor:
        return SetBias(self.mask, bias)

    def rates(self, samples) -> torch.Tensor:
        """Per-sample share of generated tokens in the set (sample_rates); in chat, only the reply counts and
        special tokens never do. (N,)"""
        return sample_rates(samples.tokens, counted_mask(self.mask, samples.special), samples.lengths)

    def summary(self, tokenizer, bias: float) -> dict:
        return {}  # the selector and the size are recorded by the run itself


class SetBias(LogitsProcessor):
    """Add b to the logits of every token in the set: p'(i) ∝ p(i)·exp(b·M_i)."""

    def __init__(self, mask: torch.Tensor, bias: float):
        self.bias_row = bias_row(mask, bias)  # (V,)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores + self.bias_row.to(scores.device)[: scores.size(-1)]


def sample_rates(new_tokens: torch.Tensor, mask: torch.Tensor, lengths=None) -> torch.Tensor:
    """Per-sample share of generated tokens that are in the target set.

    new_tokens (N, L) generated ids; mask (V,) bool; lengths (N,) optional, counts only the first
    lengths[i] tokens of row i (the rest may be padding of any value). Returns (N,) float32.
    A row with no tokens has no rate: NaN (mean_ci skips it).
    """
    new_tokens = torch.as_tensor(new_tokens)
    if new_tokens.dim() == 1:
        new_tokens = new_tokens.unsqueeze(0)
    n, width = new_tokens.shape
    mask = mask.to(new_tokens.device, torch.bool)
    if lengths is None:
        lengths = torch.full((n,), width, device=new_tokens.device)
    lengths = torch.as_tensor(lengths, device=new_tokens.device).clamp(max=width)
    valid = torch.arange(width, device=new_tokens.device) < lengths[:, None]  # (N, L)
    hits = mask[torch.where(valid, new_tokens, 0)] & valid  # (N, L)
    counts = hits.sum(1).float()  # (N,)
    return torch.where(lengths > 0, counts / lengths.clamp(min=1), torch.nan)


def counted_mask(mask: torch.Tensor, special=()) -> torch.Tensor:
    """The set that R counts: the (V,) mask without the special ids (a chat template's markers). (V,) bool"""
    if not special:
        return mask
    mask = mask.clone()
    mask[[i for i in special if i < len(mask)]] = False
    return mask


def expected_rates(set_mass: torch.Tensor, lengths=None) -> torch.Tensor:
    """The expected count, a Rao-Blackwellised R: per sample, the mean over the positions R counts (the first
    lengths[i], or all L) of the set's probability under the distribution each token was drawn from
    (sampling.SetMass). (N, L) -> (N,) float32, NaN for a sample with no position.

    Where every sample has L positions (no chat) it has exactly the expectation of counted R (sample_rates):
    each step's indicator and its probability differ by a zero-mean term given the prefix; and it leaves out
    the per-step coin flip, so its variance is smaller. In chat the reply's length is random, and how many
    tokens follow a step may depend on which token the step drew, so R's ratio has no such exact twin:
    the expected count is then a close, not an exact, estimate of E[R].
    """
    set_mass = torch.as_tensor(set_mass, dtype=torch.float64)
    n, width = set_mass.shape
    lengths = torch.full((n,), width) if lengths is None else torch.as_tensor(lengths).clamp(max=width)
    valid = torch.arange(width) < lengths[:, None]  # (N, L)
    total = torch.where(valid, set_mass, 0.0).sum(1)  # (N,)
    return torch.where(lengths > 0, total / lengths.clamp(min=1), torch.nan).float()


def resolve(spec: str, texts: list[str]) -> TokenSet:
    """Selector -> TokenSet, refusing sets that are empty or cover the whole vocabulary."""
    mask = select(spec, texts)
    n = int(mask.sum())
    dropped = dropped_words(spec, texts)
    if n == 0 and dropped:
        raise SelectorError(
            f"selector {spec!r}: none of its entries is a single token (e.g. {dropped[0]!r}); "
            f"use phrases:{spec.partition(':')[2]} for words of several tokens"
        )
    if n == 0:
        raise SelectorError(f"selector {spec!r} matches no token in the vocabulary")
    if n == mask.numel():
        raise SelectorError(f"selector {spec!r} matches every token; there is nothing to tilt toward")
    return TokenSet(spec, mask, dropped)


def resolve_set(spec: str, tokenizer, vocab_size: int) -> TokenSet:
    """Selector -> TokenSet over the model's output vocabulary (padded ids never match)."""
    texts = token_texts(tokenizer)[:vocab_size]
    texts += ["\0"] * (vocab_size - len(texts))
    return resolve(spec, texts)


def uniform_target(mask: torch.Tensor) -> torch.Tensor:
    """Q = M / sum(M): uniform over the set. Shape (V,), sums to 1."""
    m = mask.float()
    return m / m.sum()


def alpha_beta_target(mask: torch.Tensor, alpha: float = 10.0, beta: float = 1.0) -> torch.Tensor:
    """Two-level target: weight alpha inside the set and beta outside, normalised. (V,)

    alpha > beta tilts toward the set; alpha < beta tilts away from it.
    """
    if alpha < 0 or beta < 0 or (alpha == 0 and beta == 0):
        raise SelectorError(f"alpha and beta must be >= 0 and not both 0, got {alpha}, {beta}")
    w = torch.where(mask, torch.tensor(float(alpha)), torch.tensor(float(beta)))
    return w / w.sum()


def tilted_log_probs(logits: torch.Tensor, mask: torch.Tensor, bias: float) -> torch.Tensor:
    """Exponential tilt: log softmax(z + b*M). Same shape as logits (..., V).

    This is the minimum-KL change of softmax(z) with a given expected mass on the set,
    and it is exactly what a decode-time logit bias of b does.
    """
    return F.log_softmax(bias_logits(logits, mask, bias), dim=-1)


def bias_logits(logits: torch.Tensor, mask: torch.Tensor, bias: float) -> torch.Tensor:
    """Decode-time logit bias: z + b * M, in float32. (..., V)"""
    return logits.float() + bias_row(mask.to(logits.device), bias)


def bias_row(mask: torch.Tensor, bias: float) -> torch.Tensor:
    """b on the set's tokens, 0 elsewhere, float32 (V,): b * M, but b = -inf (a hard ban) gives -inf on the set
    and 0 off it, where -inf * 0 would be NaN."""
    return torch.where(mask.bool(), torch.tensor(bias, dtype=torch.float32, device=mask.device), 0.0)


def tilted_set_mass(logits: torch.Tensor, mask: torch.Tensor, bias: float) -> torch.Tensor:
    """Probability mass the tilted distribution puts on the set, per row. (...,)"""
    return tilted_log_probs(logits, mask, bias)[..., mask].exp().sum(-1)


def bias_for_mass(p_set: float, target: float) -> float:
    """Closed form b with p' = target when the set holds mass p_set: odds ratio in log space."""
    if not (0 < p_set < 1 and 0 < target < 1):
        raise ValueError("masses must be in (0, 1)")
    return math.log(target / (1 - target)) - math.log(p_set / (1 - p_set))
