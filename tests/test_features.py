"""Candidate features and their AUROC, checked against hand-computed values and exhaustive permutations."""

import itertools
import math
import re

import pytest
import torch

from tokentilt.audit.features import (
    CLASSES,
    Feature,
    FeatureTable,
    auroc,
    average_ranks,
    bonferroni_z,
    candidate_features,
    jaccard,
    mask_auroc,
    separation,
)
from tokentilt.audit.lift import unexplained
from tokentilt.targets.tokens import select


def table_of(masks: list[list[int]], vocab: int) -> FeatureTable:
    feats = [Feature(f"ids:{i}", "given", "") for i in range(len(masks))]
    return FeatureTable(
        feats,
        torch.tensor([j for j, m in enumerate(masks) for _ in m], dtype=torch.long),
        torch.tensor([t for m in masks for t in m], dtype=torch.long),
        vocab,
    )


def test_auroc_matches_a_hand_count():
    # members score 0.35 and 0.8, non-members 0.1 and 0.4: 3 of the 4 pairs are ordered -> 0.75
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8])
    assert mask_auroc(scores, torch.tensor([False, False, True, True])) == pytest.approx(0.75)
    # ties count one half: members {1, 2} vs {1, 3}: 0.5 + 0 + 1 + 0 = 1.5 of 4 pairs
    scores = torch.tensor([1.0, 1.0, 2.0, 3.0])
    assert mask_auroc(scores, torch.tensor([True, False, True, False])) == pytest.approx(0.375)
    # all members above all non-members, and below: 1 and 0
    scores = torch.arange(10.0)
    assert mask_auroc(scores, scores >= 7) == 1.0
    assert mask_auroc(-scores, scores >= 7) == 0.0


def test_auroc_equals_the_pairwise_definition_on_random_data():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (40,), generator=g).float()  # many ties
    mask = torch.rand(40, generator=g) < 0.3
    pos, neg = scores[mask], scores[~mask]
    by_pairs = ((pos[:, None] > neg[None]).float() + 0.5 * (pos[:, None] == neg[None]).float()).mean()
    assert mask_auroc(scores, mask) == pytest.approx(float(by_pairs))


def test_standard_error_equals_the_exact_permutation_variance_with_ties():
    scores = torch.tensor([1.0, 1.0, 2.0, 3.0, 3.0, 3.0, 5.0])
    n, k = len(scores), 3
    areas = [mask_auroc(scores, torch.tensor([i in s for i in range(n)])) for s in itertools.combinations(range(n), k)]
    mean = sum(areas) / len(areas)
    exact_sd = math.sqrt(sum((a - mean) ** 2 for a in areas) / len(areas))
    _, se = auroc(scores, table_of([[0, 1, 2]], n))
    assert mean == pytest.approx(0.5)
    assert float(se[0]) == pytest.approx(exact_sd)


def test_average_ranks_share_ties():
    ranks, ties = average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0]))
    assert ranks.tolist() == [3.5, 1.0, 3.5, 2.0]
    assert sorted(ties.tolist()) == [1, 1, 2]


def test_separation_prefers_the_whole_lifted_set_to_a_small_subset_of_it():
    g = torch.Generator().manual_seed(1)
    lift = torch.randn(5000, generator=g) * 0.3
    lifted = list(range(200))
    lift[lifted] += 1.5  # a planted set of 200 tokens
    table = table_of([lifted, lifted[:6], lifted + list(range(200, 2000))], 5000)
    area, se = auroc(lift, table)
    score = separation(area, se, bonferroni_z(0.01, 3))
    assert area[1] > 0.95  # the subset's AUROC is high too (0.970 here, the whole set's 0.9996) ...
    assert score[0] > score[1] and score[0] > score[2]  # ... but the whole set is surer, the superset worse


def test_separation_is_symmetric_for_a_lowered_set():
    lift = torch.linspace(-1, 1, 100)
    area, se = auroc(lift, table_of([list(range(10)), list(range(90, 100))], 100))
    assert float(area[0]) == pytest.approx(0.0) and float(area[1]) == pytest.approx(1.0)
    score = separation(area, se, 3.0)
    assert float(score[0]) == pytest.approx(float(score[1]))


def test_bonferroni_z():
    assert bonferroni_z(0.05, 1) == pytest.approx(1.95996, abs=1e-4)
    assert bonferroni_z(0.01, 1000) > bonferroni_z(0.01, 10)


def test_jaccard():
    a = torch.tensor([True, True, False, False])
    assert jaccard(a, torch.tensor([True, False, True, False])) == pytest.approx(1 / 3)
    assert jaccard(a, a) == 1.0


TEXTS = [
    "<eos>",
    "x",
    " box",
    "Box",
    "ex",
    " the",
    "The",
    " 12",
    "3",
    "?!",
    " ,",
    "\n",
    "é",
    " wax",
    "text",
    "axe",
    " THE",
    "   ",
    "a | b",
    "ab",
]


def by_hand(selector: str, texts: list[str]) -> torch.Tensor:
    """What a class or substring candidate means, written with Python's re and str, not the selector code."""
    kind, arg = selector.split(":", 1)
    if kind == "regex":
        return torch.tensor([re.search(arg, t) is not None for t in texts])
    assert kind == "contains", selector
    return torch.tensor([arg.lower() in t.lower() for t in texts])  # case-insensitive, as documented


def test_candidates_select_what_their_selector_selects():
    table = candidate_features(TEXTS, min_tokens=1)
    assert {f.selector.split(":")[0] for f in table.features} == {"regex", "contains"}
    for i, f in enumerate(table.features):
        assert torch.equal(table.mask(i), select(f.selector, TEXTS)), f.selector
        assert torch.equal(table.mask(i), by_hand(f.selector, TEXTS)), f.selector
    by_selector = {f.selector: table.mask(i).nonzero().flatten().tolist() for i, f in enumerate(table.features)}
    assert by_selector["regex:^ ?[A-Z]"] == [3, 6, 16]  # 'Box', 'The', ' THE'
    assert by_selector["contains:t"] == [5, 6, 14, 16]  # ' the', 'The', 'text', ' THE'


def test_candidates_are_distinct_sets_and_sized():
    table = candidate_features(TEXTS, min_tokens=2)
    sets = [tuple(table.mask(i).nonzero().flatten().tolist()) for i in range(len(table.features))]
    assert len(sets) == len(set(sets))
    sizes = table.sizes
    assert int(sizes.min()) >= 2 and int(sizes.max()) <= len(TEXTS) - 2
    by_selector = {f.selector: i for i, f in enumerate(table.features)}
    assert sets[by_selector["contains:x"]] == (1, 2, 3, 4, 13, 14, 15)  # case-insensitive, like the selector
    assert "contains: | " not in by_selector  # ' | ' would read as two selectors
    one = {f.selector for f in candidate_features(TEXTS, min_tokens=1).features}
    assert "contains:|" in one and "contains: | " not in one  # 'a | b' is the only token with '|'; its bar alone
    assert not any(f.selector == "contains:   " for f in table.features)  # whitespace alone is a class


def test_candidates_include_word_lists_and_given_sets(tmp_path):
    words = tmp_path / "w.txt"
    words.write_text("box\nthe\n")
    given = Feature("ids:1", "given", "")
    table = candidate_features(TEXTS, words=[str(words)], min_tokens=2, extra=[given])
    kinds = {f.kind: i for i, f in enumerate(table.features)}
    assert table.mask(kinds["words"]).nonzero().flatten().tolist() == [2, 5]  # ' box', ' the'; not 'Box', ' THE'
    assert table.mask(kinds["given"]).nonzero().flatten().tolist() == [1]  # kept although below min_tokens


def test_every_class_is_a_valid_selector_on_a_real_vocabulary():
    from tokentilt.course.gpt2_tokenizer import gpt2_tokenizer
    from tokentilt.targets.tokens import token_texts

    texts = token_texts(gpt2_tokenizer())[:3000]
    for selector, _ in CLASSES:
        n = int(select(selector, texts).sum())
        assert 0 < n < len(texts), selector


def test_unexplained_removes_exactly_what_a_hidden_state_shift_can_do():
    """A shift u of the final hidden state (plus the per-position constant -log Z) changes the logits
    by W u + c: nothing of it is left. A bias b on a set is a change of the head rows: it is left,
    less its own best fit, so the set still stands apart; the result is orthogonal to W and to 1."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(2000, 16, generator=g)
    u = torch.randn(16, generator=g)
    assert unexplained(weight @ u + 3.0, weight).abs().max() < 1e-4
    planted = torch.zeros(2000, dtype=torch.bool)
    planted[:50] = True
    rest = unexplained(weight @ u + 2.0 * planted.float(), weight)
    assert float(rest[planted].min()) > float(rest[~planted].max())  # the set, apart from every other token
    assert rest[planted].mean() == pytest.approx(2.0 * (1 - 50 / 2000), abs=0.3)  # most of the bias survives
    assert (weight.T @ rest).abs().max() < 1e-3 and abs(float(rest.sum())) < 1e-3
