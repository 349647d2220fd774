"""tokentilt profile: the over-used words and phrases of a model's replies against human text, checked on
texts whose counts are worked out by hand, and its bad input."""

from pathlib import Path

import pytest

from tokentilt.cli import main
from tokentilt.data.prompts import CHAT_REQUESTS, CREATIVE_PROFILE_PROMPTS
from tokentilt.jobs.profile import count_ngrams, profile_entries, write_list
from tokentilt.jobs.profile_config import ProfileConfig

REFERENCE = "the man was in the house and the sea was grey. " * 50  # 550 words; "vibrant" and "tapestry" absent
EVERYDAY = ["The sea is grey and the man is in the house."] * 10  # the model's everyday register, 110 words


def replies():
    """Replies to 12 requests: the reference's sentence with "vibrant" after it in every one and "tapestry" in
    10, and "island" (a topic) in the replies to one request only. Every other word and phrase is as common in
    the reference."""
    texts, requests = [], []
    for i in range(12):
        texts.append("The man was in the house and the sea was grey vibrant" + (" tapestry" if i < 10 else ""))
        requests.append(f"request {i}")
    texts += ["island island island island island"] * 3
    requests += ["request 0"] * 3
    return texts, requests


def test_count_ngrams_counts_occurrences_and_groups_by_hand():
    counts, spread, total = count_ngrams(["a b a b", "b a"], 2, groups=["x", "x"])
    assert total == 6
    assert counts[("a",)] == 3 and counts[("a", "b")] == 2 and counts[("b", "a")] == 2
    assert spread[("a", "b")] == 1  # both texts are one group


def test_profile_keeps_habits_not_topics_or_common_words():
    texts, requests = replies()
    rows = profile_entries(texts, requests, REFERENCE, EVERYDAY, ProfileConfig(min_requests=10, min_count=4))
    entries = [r["entry"] for r in rows]
    # the phrases that hold "vibrant" or "tapestry" ("grey vibrant", "vibrant tapestry") are covered by the words
    assert entries == ["vibrant", "tapestry"]  # the higher ratio first
    assert "island" not in entries  # 15 uses, but in replies to one request
    assert "the" not in entries and "sea" not in entries  # as common in the reference
    vibrant = next(r for r in rows if r["entry"] == "vibrant")
    total_words = sum(len(t.split()) for t in texts)  # no punctuation inside words here
    assert vibrant["count"] == 12 and vibrant["requests"] == 12
    assert vibrant["per_1000"] == pytest.approx(1000 * 12 / total_words)
    assert vibrant["ratio"] == pytest.approx((12 / total_words) / (1 / 550))  # add-one: 0 uses count as one
    assert vibrant["everyday_ratio"] == pytest.approx((12 / total_words) / (1 / 110))


def test_a_word_of_the_models_everyday_register_is_not_slop():
    """ "grey" is absent from the reference but as common in the everyday replies as in the creative ones."""
    texts, requests = replies()
    reference = REFERENCE.replace("grey", "blue")
    everyday = ["the sea was grey and the man was in the house. " * 3] * 10
    rows = profile_entries(texts, requests, reference, everyday, ProfileConfig(min_requests=10, min_count=4))
    assert [r["entry"] for r in rows] == ["vibrant", "tapestry"]
    neutral = ["the man is in the house."] * 20  # everyday replies without it: only the plays would judge it
    alone = profile_entries(texts, requests, reference, neutral, ProfileConfig(min_requests=10, min_count=4))
    assert "grey" in [r["entry"] for r in alone]


def test_a_phrase_whose_words_are_common_is_kept_whole():
    texts = [f"once upon a time there was a cat number {i}" for i in range(12)]
    reference = "once there was a cat upon the time. " * 40
    rows = profile_entries(
        texts, [str(i) for i in range(12)], reference, EVERYDAY, ProfileConfig(min_phrase_ratio=5, min_requests=10)
    )
    entries = [r["entry"] for r in rows]
    # every word and "there was a cat" occur in the reference; the phrase's sub-phrases that occur only inside
    # it ("upon a time", "once upon a", ...) go with it
    assert "once upon a time" in entries
    assert not {"upon a time", "once upon a", "upon a", "a time"} & set(entries)


def test_write_list_is_readable_as_a_phrase_list(tmp_path):
    from tokentilt.targets.selectors import parse_phrases

    texts, requests = replies()
    cfg = ProfileConfig(min_requests=10)
    rows = profile_entries(texts, requests, REFERENCE, EVERYDAY, cfg)
    out = tmp_path / "slop.txt"
    write_list(rows, out, cfg, "bundled", len(texts))
    entries, keep_case = parse_phrases(f"phrases:{out}")
    assert entries == [r["entry"] for r in rows] and not keep_case
    assert (tmp_path / "slop.txt.tsv").read_text().splitlines()[0].split("\t")[:3] == ["entry", "count", "requests"]
    assert not (tmp_path / "slop.txt.partial").exists()


def test_profile_requests_are_disjoint_from_every_measured_or_trained_request():
    used = {p for family in CHAT_REQUESTS.values() for part in family for p in part}
    assert not used & set(CREATIVE_PROFILE_PROMPTS)
    creative = CHAT_REQUESTS["creative"]
    assert not (set(creative.measure) & set(creative.train) or set(creative.measure) & set(creative.held_out))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--samples", "0"], "samples must be positive"),
        (["--min-ratio", "0.5"], "min-ratio must be at least 1"),
        (["--min-everyday-ratio", "0"], "min-everyday-ratio must be at least 1"),
        (["--reference", "no/such/file.txt"], "reference text not found"),
    ],
)
def test_bad_profile_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    assert main(["profile", "--out", str(tmp_path / "l.txt"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_profile_refuses_to_overwrite_a_list(tmp_path, capsys):
    (tmp_path / "l.txt").write_text("vibrant\n")
    assert main(["profile", "--out", str(tmp_path / "l.txt")]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_the_shipped_list_is_a_phrase_list_made_by_profile_and_not_a_word_class():
    from tokentilt.targets.selectors import builtin_word_lists, parse_phrases

    entries, keep_case = parse_phrases("phrases:slop")
    text = (Path(__file__).parents[1] / "src/tokentilt/targets/phraselists/slop.txt").read_text()
    assert entries and not keep_case and "made by `tokentilt profile`" in text
    assert text == (Path(__file__).parents[1] / "docs/slop/slop.txt").read_text()  # the copy docs describe
    assert "slop" not in builtin_word_lists()  # the audit's word classes stay as they were
