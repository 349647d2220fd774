"""Candidate token features from the vocabulary, and how well each one separates a per-token score.

The audit asks "what do the lifted tokens have in common?" without being told. The candidates
come from the vocabulary itself, each written as a selector that `tokentilt tilt --toward` takes:

    contains:ab        substrings of 1-8 characters (case-insensitive, like the selector)
    regex:^ ?[A-Z]     classes: capitalised, digits, punctuation, leading space, non-ASCII, length
    words:NAME         the shipped word lists (wordlists/), always, and those the user gives (--words FILE)

The audit adds sets found from the lift itself (audit.discover) and from the weights (weights.py).

A feature is scored against a per-token score s (V,), such as the lift, by the rank-based AUROC
(Mann-Whitney U): the chance that a random member of the feature scores above a random
non-member. All features are scored at once from one ranking of s, so thousands cost milliseconds.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from statistics import NormalDist

import torch

from tokentilt.targets.tokens import builtin_word_lists, select, word_list

# Token classes; each is a selector and a short description for the report.
CLASSES = (
    (
        ("regex:^ ", "tokens with a leading space"),
        ("regex:^[A-Z]", "capitalised tokens without a leading space"),
        ("regex:^ [A-Z]", "capitalised tokens after a leading space"),
        ("regex:^ ?[A-Z]", "capitalised tokens"),
        ("regex:^ ?[A-Z][A-Z]+$", "all-capitals tokens"),
        ("regex:^ ?[a-z]+$", "lower-case words"),
        ("regex:^ ?[A-Za-z]+$", "letters-only tokens"),
        ("regex:[0-9]", "tokens holding a digit"),
        ("regex:^ ?[0-9]+$", "digits-only tokens"),
        ("regex:[^\\w\\s]", "tokens holding punctuation"),
        ("regex:^ ?[^\\w\\s]+$", "punctuation-only tokens"),
        ("regex:^\\s+$", "whitespace-only tokens"),
        ("regex:\\n", "tokens holding a newline"),
        ("regex:[^\\x00-\\x7f]", "non-ASCII tokens"),
    )
    + tuple((f"regex:^.{{1,{n}}}$", f"tokens of at most {n} characters") for n in range(1, 13))
    + tuple((f"regex:^.{{{n},}}$", f"tokens of at least {n} characters") for n in range(2, 14))
)

SUBSTRING_LENGTHS = tuple(range(1, 9))  # a 4-8 character substring names a word part (' ness', 'tion')
UNSAFE = (" & ", " | ")  # a substring holding these would be read as two selectors


@dataclass(frozen=True)
class Feature:
    """One candidate: a selector, its kind and a description."""

    selector: str  # a string `tokentilt tilt --toward` accepts
    kind: str  # substring | class | words | given
    label: str  # the tokens it selects, for people: "tokens containing 'x'", "capitalised tokens", ...


@dataclass
class FeatureTable:
    """Features and their members as (feature, token) pairs: a sparse (F, V) membership matrix."""

    features: list[Feature]
    feature_idx: torch.Tensor  # (P,) long: the feature of each pair
    token_idx: torch.Tensor  # (P,) long: the token of each pair
    vocab_size: int

    @property
    def sizes(self) -> torch.Tensor:
        """(F,) number of tokens in each feature."""
        return torch.bincount(self.feature_idx, minlength=len(self.features))

    def mask(self, i: int) -> torch.Tensor:
        """(V,) bool membership of feature i."""
        m = torch.zeros(self.vocab_size, dtype=torch.bool)
        m[self.token_idx[self.feature_idx == i]] = True
        return m

    def sums(self, values: torch.Tensor) -> torch.Tensor:
        """(F,) or (F, G): values (V,) or (V, G) summed over each feature's tokens."""
        picked = values[self.token_idx]  # (P,) or (P, G)
        out = torch.zeros((len(self.features),) + tuple(values.shape[1:]), dtype=values.dtype)
        return out.index_add_(0, self.feature_idx, picked)


def substring_members(texts: list[str], lengths=SUBSTRING_LENGTHS) -> dict[str, list[int]]:
    """Lower-cased substrings (not all whitespace) -> ids of the tokens whose text contains them."""
    members: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        low = text.lower()
        seen = {low[a : a + n] for n in lengths for a in range(len(low) - n + 1)}
        for sub in seen:
            if sub.strip() and not any(u in sub for u in UNSAFE):
                members.setdefault(sub, []).append(i)
    return members


def candidate_features(
    texts: list[str], words: list[str] = (), min_tokens: int = 5, extra: list[Feature] = ()
) -> FeatureTable:
    """All candidates over the token texts (V,), each selecting between min_tokens and V - min_tokens tokens.

    Candidates that select exactly the same tokens are kept once (the simplest: classes and word
    lists before substrings, shorter substrings first), so the ranking lists distinct token sets.
    `extra` features are always kept (the audit's --toward, whatever their size).
    """
    vocab = len(texts)
    found: list[tuple[Feature, list[int]]] = []
    for f in extra:
        found.append((f, select(f.selector, texts).nonzero().flatten().tolist()))
    for path in dict.fromkeys([*builtin_word_lists(), *words]):
        found.append(
            (
                Feature(f"words:{path}", "words", f"the words of {path}"),
                select(f"words:{path}", texts).nonzero().flatten().tolist(),
            )
        )
    for selector, label in CLASSES:
        found.append((Feature(selector, "class", label), select(selector, texts).nonzero().flatten().tolist()))
    subs = substring_members(texts)
    for sub in sorted(subs, key=lambda s: (len(s), s)):
        found.append((Feature(f"contains:{sub}", "substring", f"tokens containing {sub!r}"), subs[sub]))

    kept, seen = [], set()
    for i, (feature, ids) in enumerate(found):
        key = hashlib.blake2b(str(ids).encode(), digest_size=16).digest()
        if i >= len(extra):  # a given set never hides the vocabulary's own candidate for the same tokens
            if key in seen or not min_tokens <= len(ids) <= vocab - min_tokens:
                continue
            seen.add(key)
        kept.append((feature, ids))
    return table_of(kept, vocab)


def table_of(found: list[tuple[Feature, list[int]]], vocab: int) -> FeatureTable:
    """A FeatureTable of (feature, member token ids) pairs, in their order."""
    feature_idx = torch.cat([torch.full((len(ids),), j, dtype=torch.long) for j, (_, ids) in enumerate(found)])
    token_idx = torch.cat([torch.tensor(ids, dtype=torch.long) for _, ids in found])
    return FeatureTable([f for f, _ in found], feature_idx, token_idx, vocab)


def concat(a: FeatureTable, b: FeatureTable) -> FeatureTable:
    """a's features, then b's (same vocabulary)."""
    return FeatureTable(
        a.features + b.features,
        torch.cat([a.feature_idx, b.feature_idx + len(a.features)]),
        torch.cat([a.token_idx, b.token_idx]),
        a.vocab_size,
    )


def closest(table: FeatureTable, mask: torch.Tensor) -> tuple[int, float]:
    """The feature of `table` with the highest Jaccard overlap with mask (V,) bool, and that overlap."""
    inter = table.sums(mask.double())  # (F,)
    score = inter / (table.sizes.double() + int(mask.sum()) - inter).clamp(min=1)
    best = int(score.argmax())
    return best, float(score[best])


# ---------------------------------------------------------------- AUROC by ranks


def average_ranks(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based ranks of scores (V,), ties sharing their average rank, in float64; and the tie sizes."""
    s = scores.double()
    order = torch.argsort(s)
    _, inverse, counts = torch.unique_consecutive(s[order], return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()  # last rank of each run of ties
    mean_rank = ends - (counts.double() - 1) / 2  # (runs,)
    ranks = torch.empty_like(s)
    ranks[order] = mean_rank[inverse]
    return ranks, counts


def auroc(scores: torch.Tensor, table: FeatureTable) -> tuple[torch.Tensor, torch.Tensor]:
    """AUROC of every feature as a separator of high from low scores, and its standard error under no relation.

    AUROC_f = P(score of a member > score of a non-member) + 0.5 P(tie): 1 when every member
    outranks every non-member, 0 when every member is below, 0.5 for no relation. The standard
    error is that of U / (k (V - k)) when the k members are a random draw from the V tokens
    (tie-corrected): the exact large-sample null of a feature that has nothing to do with the
    scores. Returns (F,), (F,) float64; a feature with no members or no non-members gets 0.5, inf.
    """
    n = scores.numel()
    ranks, ties = average_ranks(scores)
    k = table.sizes.double()  # (F,)
    u = table.sums(ranks) - k * (k + 1) / 2  # (F,) Mann-Whitney U of the members
    pairs = k * (n - k)
    ok = pairs > 0
    area = torch.where(ok, u / pairs.clamp(min=1), torch.full_like(u, 0.5))
    tie_term = float((ties.double() ** 3 - ties.double()).sum()) / (n * (n - 1))
    var_u = pairs / 12 * ((n + 1) - tie_term)
    se = torch.where(
        ok & (var_u > 0), var_u.clamp(min=1e-300).sqrt() / pairs.clamp(min=1), torch.full_like(u, math.inf)
    )
    return area, se


def separation(area: torch.Tensor, se: torch.Tensor, z: float) -> torch.Tensor:
    """How surely a feature separates, either way: 0.5 + |AUROC - 0.5| - z * SE, a lower confidence bound.

    Ranking by the bare AUROC would put a 5-token subset of the lifted set above the whole set
    (both near 1); the bound charges the small one for its uncertainty. Above 0.5 means
    significant at the level z was chosen for. (F,) float64.
    """
    return 0.5 + (area - 0.5).abs() - z * se


def bonferroni_z(alpha: float, tests: int) -> float:
    """Two-sided normal critical value at family-wise level alpha over `tests` tests."""
    return NormalDist().inv_cdf(1 - alpha / (2 * max(tests, 1)))


def mask_auroc(scores: torch.Tensor, mask: torch.Tensor) -> float:
    """AUROC of one set (V,) bool against scores (V,); see auroc."""
    table = FeatureTable(
        [Feature("", "given", "")],
        torch.zeros(int(mask.sum()), dtype=torch.long),
        mask.nonzero().flatten(),
        mask.numel(),
    )
    return float(auroc(scores, table)[0][0])


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """|A & B| / |A | B| of two (V,) bool masks; 1.0 for two empty sets."""
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 1.0


def file_key(arg: str) -> tuple:
    """A words file's name with its size and time, so an edited file is read again."""
    path = word_list(arg)
    stat = path.stat() if path.is_file() else None
    return arg, stat and stat.st_mtime_ns, stat and stat.st_size


@functools.lru_cache(maxsize=4)
def cached_candidates(texts: tuple, words: tuple, min_tokens: int, extra: tuple):
    """candidate_features, kept for the next audit of the same vocabulary (a few seconds for 50k tokens)."""
    return candidate_features(list(texts), [w[0] for w in words], min_tokens, list(extra))
