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
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

KINDS = ("contains", "regex", "words", "ids", "not", "phrase", "phrases")


class SelectorError(ValueError):
    """A selector the user wrote cannot be built into a usable mask."""


def token_texts(tokenizer) -> list[str]:
    """Decoded text of every token id, in id order (length = vocabulary size)."""
    size = max(len(tokenizer), getattr(tokenizer, "vocab_size", 0) or 0)
    return [tokenizer.decode([i]) for i in range(size)]


def select(spec: str, texts: list[str]) -> torch.Tensor:
    """Build a boolean mask of shape (V,) from a selector string and the token texts."""
    if not spec.strip():
        raise SelectorError("empty selector")
    is_regex = spec.startswith(("regex:", "not:regex:"))
    if not is_regex:
        _check_operators(spec)
    # Combinators bind loosest; ' | ' before ' & ' so that 'a & b | c' = '(a & b) | c'.
    if " | " in spec and not is_regex:
        parts = spec.split(" | ")
        mask = select(parts[0], texts)
        for part in parts[1:]:
            mask = mask | select(part, texts)
        return mask
    if " & " in spec and not is_regex:
        parts = spec.split(" & ")
        mask = select(parts[0], texts)
        for part in parts[1:]:
            mask = mask & select(part, texts)
        return mask

    kind, sep, arg = spec.partition(":")
    if not sep:
        return _contains(spec, texts, case_sensitive=False)
    if kind == "contains":
        needle, _, flag = arg.rpartition(":") if arg.endswith(":case") else (arg, "", "")
        if not needle:
            raise SelectorError(f"selector {spec!r}: 'contains:' needs text to look for")
        return _contains(needle, texts, case_sensitive=flag == "case")
    if kind == "regex":
        try:
            pattern = re.compile(arg)
        except (re.error, OverflowError, RecursionError) as err:  # OverflowError: a{99999999999}
            raise SelectorError(f"selector {spec!r}: bad regular expression ({err})") from None
        return torch.tensor([pattern.search(t) is not None for t in texts], dtype=torch.bool)
    if kind == "words":
        if not arg.strip():
            raise SelectorError(f"selector {spec!r}: 'words:' needs a file name")
        return _words(word_list(arg), texts)
    if kind == "ids":
        return _ids(arg, len(texts))
    if kind in ("phrase", "phrases"):
        raise SelectorError(
            f"selector {spec!r}: {kind}: selects words, not tokens, so it stands alone (not inside &, | or not:)"
        )
    if kind == "not":
        if not arg.strip():
            raise SelectorError(f"selector {spec!r}: 'not:' needs a selector to negate")
        return ~select(arg, texts)
    if re.fullmatch(r"[A-Za-z_]+", kind):
        raise SelectorError(f"unknown selector kind {kind!r} in {spec!r}; use one of: {', '.join(KINDS)}")
    # Something like 'x:y' that is not a kind at all: treat the whole thing as text.
    return _contains(spec, texts, case_sensitive=False)


def _check_operators(spec: str) -> None:
    """Name a stray '&' or '|' (at either end, or with nothing between two of them): without this
    check 'x &' would be read as the text 'x &' and fail later as "matches no token"."""
    for op in ("&", "|"):
        parts = [p.strip() for p in spec.split(f" {op} ")]
        if any(p in ("", op) or p.startswith(f"{op} ") or p.endswith(f" {op}") for p in parts):
            raise SelectorError(f"selector {spec!r}: stray '{op}'; write 'A {op} B' with a selector on each side")


def _contains(needle: str, texts: list[str], case_sensitive: bool) -> torch.Tensor:
    if case_sensitive:
        return torch.tensor([needle in t for t in texts], dtype=torch.bool)
    needle = needle.lower()
    return torch.tensor([needle in t.lower() for t in texts], dtype=torch.bool)


WORDLISTS = Path(__file__).parent / "wordlists"


def builtin_word_lists() -> list[str]:
    return sorted(f.stem for f in WORDLISTS.glob("*.txt"))


def word_list(arg: str) -> Path:
    """The words file `arg`, or the built-in list of that name when no such file exists."""
    path = Path(arg)
    if not path.exists() and re.fullmatch(r"[a-z_]+", arg) and (WORDLISTS / f"{arg}.txt").is_file():
        return WORDLISTS / f"{arg}.txt"
    return path


def read_list_text(path: Path, kind: str) -> str:
    """The text of a user's list file (`kind` is "words" or "phrases", for the messages), or a one-line
    SelectorError: missing, not a file, not UTF-8, unreadable, binary."""
    if not path.is_file():
        raise SelectorError(
            f"{kind} file not found: {path} (built-in lists: {', '.join(builtin_word_lists())})"
            if not path.exists()
            else f"{kind} file is not a file: {path}"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SelectorError(f"{kind} file is not UTF-8 text: {path}") from None
    except OSError as err:
        raise SelectorError(f"cannot read {kind} file {path}: {err.strerror or err}") from None
    if "\0" in text:
        raise SelectorError(f"{kind} file looks binary (it holds NUL bytes): {path}")
    return text


def _words(path: Path, texts: list[str]) -> torch.Tensor:
    text = read_list_text(path, "words")
    words = {w.strip() for w in text.splitlines() if w.strip()}
    if not words:
        raise SelectorError(f"words file is empty: {path}")
    wanted = words | {" " + w for w in words}
    return torch.tensor([t in wanted for t in texts], dtype=torch.bool)


def _ids(arg: str, vocab_size: int) -> torch.Tensor:
    try:
        ids = [int(s) for s in arg.split(",") if s.strip()]
    except ValueError:
        raise SelectorError(f"ids selector needs comma-separated integers, got {arg!r}") from None
    if not ids:
        raise SelectorError("ids selector needs at least one id")
    if any(i < 0 for i in ids):
        raise SelectorError(f"token ids must be >= 0, got {[i for i in ids if i < 0][:5]}")
    if vocab_size == 0:  # syntax check only (see check_syntax)
        return torch.zeros(0, dtype=torch.bool)
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise SelectorError(f"token ids out of range [0, {vocab_size}): {bad[:5]}")
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    mask[ids] = True
    return mask


def check_syntax(spec: str) -> None:
    """Raise SelectorError for a malformed selector without needing a vocabulary.

    Lets a command fail in milliseconds, before it spends seconds loading a model.
    """
    if spec.partition(":")[0] in ("phrase", "phrases"):
        from tokentilt.phrases import parse  # phrases builds on this module

        parse(spec)
        return
    select(spec, [])


def token_selector_only(spec: str, command: str) -> None:
    """sweep and audit work on token sets; a phrase list goes to tilt, eval and generate."""
    if spec.partition(":")[0] in ("phrase", "phrases"):
        raise SelectorError(
            f"{command} takes a token selector; phrase:/phrases: lists work with tilt, eval and generate"
        )


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
    """A selector resolved against one vocabulary."""

    selector: str  # the rule as the user wrote it
    mask: torch.Tensor  # (V,) bool, True for tokens in the set
    dropped: list[str] = field(default_factory=list)  # words: entries that are several tokens, left out

    @property
    def size(self) -> int:
        return int(self.mask.sum())

    @property
    def target(self) -> torch.Tensor:
        """What sampling, R and the costs take: the mask (a phrases.PhraseSet passes itself)."""
        return self.mask

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
    return logits.float() + bias * mask.to(logits.device, torch.float32)


def apply_bias(logits: torch.Tensor, ids: torch.Tensor, target, bias: float) -> torch.Tensor:
    """The decode-time tilt of (B, T, V) logits over (B, T) ids: +b on a token set's mask, or a phrase
    set's context-dependent bias (phrases.PhraseSet.adjust). float32."""
    if hasattr(target, "adjust"):
        return target.adjust(logits, ids, bias)
    return bias_logits(logits, target, bias)


def tilted_set_mass(logits: torch.Tensor, mask: torch.Tensor, bias: float) -> torch.Tensor:
    """Probability mass the tilted distribution puts on the set, per row. (...,)"""
    return tilted_log_probs(logits, mask, bias)[..., mask].exp().sum(-1)


def bias_for_mass(p_set: float, target: float) -> float:
    """Closed form b with p' = target when the set holds mass p_set: odds ratio in log space."""
    if not (0 < p_set < 1 and 0 < target < 1):
        raise ValueError("masses must be in (0, 1)")
    return math.log(target / (1 - target)) - math.log(p_set / (1 - p_set))
