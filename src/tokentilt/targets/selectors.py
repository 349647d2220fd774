"""The selector language without a vocabulary or torch: its grammar, its word and phrase lists, and the
syntax check that lets a command refuse a bad selector before it imports torch and loads a model.

select_flags(spec, texts) is the whole grammar over the decoded token texts, as a list of bools; targets.py
turns it into the (V,) mask and documents the selectors. phrase:/phrases: lists are parsed here and
tokenized in phrases.py.
"""

from __future__ import annotations

import re
from pathlib import Path

from tokentilt.data.textfiles import read_user_file

KINDS = ("contains", "regex", "words", "ids", "not", "phrase", "phrases")
PHRASE_KINDS = ("phrase", "phrases")
WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
WORDLISTS = Path(__file__).parent / "wordlists"
PHRASELISTS = Path(__file__).parent / "phraselists"  # phrases:NAME only (slop: docs/deslop.md); not word classes


class SelectorError(ValueError):
    """A selector the user wrote cannot be built into a usable mask."""


def select_flags(spec: str, texts: list[str]) -> list[bool]:
    """Whether each token text is in the set of the selector `spec` (length len(texts)); texts=[] checks
    the syntax only (and reads a words file)."""
    if not spec.strip():
        raise SelectorError("empty selector")
    is_regex = spec.startswith(("regex:", "not:regex:"))
    if not is_regex:
        _check_operators(spec)
    # Combinators bind loosest; ' | ' before ' & ' so that 'a & b | c' = '(a & b) | c'.
    if " | " in spec and not is_regex:
        parts = [select_flags(part, texts) for part in spec.split(" | ")]
        return [any(flags) for flags in zip(*parts)]
    if " & " in spec and not is_regex:
        parts = [select_flags(part, texts) for part in spec.split(" & ")]
        return [all(flags) for flags in zip(*parts)]

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
        return [pattern.search(t) is not None for t in texts]
    if kind == "words":
        if not arg.strip():
            raise SelectorError(f"selector {spec!r}: 'words:' needs a file name")
        return _words(word_list(arg), texts)
    if kind == "ids":
        return _ids(arg, len(texts))
    if kind in PHRASE_KINDS:
        raise SelectorError(
            f"selector {spec!r}: {kind}: selects words, not tokens, so it stands alone (not inside &, | or not:)"
        )
    if kind == "not":
        if not arg.strip():
            raise SelectorError(f"selector {spec!r}: 'not:' needs a selector to negate")
        return [not flag for flag in select_flags(arg, texts)]
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


def _contains(needle: str, texts: list[str], case_sensitive: bool) -> list[bool]:
    if case_sensitive:
        return [needle in t for t in texts]
    needle = needle.lower()
    return [needle in t.lower() for t in texts]


def builtin_word_lists() -> list[str]:
    return sorted(f.stem for f in WORDLISTS.glob("*.txt"))


def word_list(arg: str, folders: tuple[Path, ...] = (WORDLISTS,)) -> Path:
    """The words file `arg`, or the built-in list of that name (the first of `folders` that has it) when no
    such file exists."""
    path = Path(arg)
    if not path.exists() and re.fullmatch(r"[a-z_]+", arg):
        for folder in folders:
            if (folder / f"{arg}.txt").is_file():
                return folder / f"{arg}.txt"
    return path


def read_list_text(path: Path, kind: str) -> str:
    """The text of a user's list file (`kind` is "words" or "phrases", for the messages), or a one-line
    SelectorError: missing, not a file, not UTF-8, unreadable, binary."""
    return read_user_file(path, kind, SelectorError, f" (built-in lists: {', '.join(builtin_word_lists())})")


def _words(path: Path, texts: list[str]) -> list[bool]:
    text = read_list_text(path, "words")
    words = {w.strip() for w in text.splitlines() if w.strip()}
    if not words:
        raise SelectorError(f"words file is empty: {path}")
    wanted = words | {" " + w for w in words}
    return [t in wanted for t in texts]


def _ids(arg: str, vocab_size: int) -> list[bool]:
    try:
        ids = [int(s) for s in arg.split(",") if s.strip()]
    except ValueError:
        raise SelectorError(f"ids selector needs comma-separated integers, got {arg!r}") from None
    if not ids:
        raise SelectorError("ids selector needs at least one id")
    if any(i < 0 for i in ids):
        raise SelectorError(f"token ids must be >= 0, got {[i for i in ids if i < 0][:5]}")
    if vocab_size == 0:  # syntax check only (see check_syntax)
        return []
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise SelectorError(f"token ids out of range [0, {vocab_size}): {bad[:5]}")
    flags = [False] * vocab_size
    for i in ids:
        flags[i] = True
    return flags


def check_syntax(spec: str) -> None:
    """Raise SelectorError for a malformed selector without needing a vocabulary.

    Lets a command fail in milliseconds, before it spends seconds loading a model.
    """
    if is_phrase_selector(spec):
        parse_phrases(spec)
        return
    select_flags(spec, [])


def token_selector_only(spec: str, command: str) -> None:
    """sweep and audit work on token sets; a phrase list goes to tilt, eval and generate."""
    if is_phrase_selector(spec):
        raise SelectorError(
            f"{command} takes a token selector; phrase:/phrases: lists work with tilt, eval and generate"
        )


# ---------------------------------------------------------------- phrase lists


def is_phrase_selector(spec: str) -> bool:
    return spec.partition(":")[0] in PHRASE_KINDS


def words_of(text: str) -> list[str]:
    """The word rule: maximal runs of letters and digits, apostrophes allowed inside."""
    return WORD.findall(text)


def parse_phrases(spec: str) -> tuple[list[str], bool]:
    """phrase:TEXT / phrases:FILE[:case] -> (entries, keep_case). One-line SelectorErrors for bad input."""
    kind, _, arg = spec.partition(":")
    keep_case = arg.endswith(":case")
    if keep_case:
        arg = arg[: -len(":case")]
    if kind == "phrase":
        if not arg:
            raise SelectorError(f"selector {spec!r}: 'phrase:' needs a word or phrase")
        entries = [arg]
    else:
        entries = _read_phrases(arg, spec)
    for entry in entries:
        if not words_of(entry):
            raise SelectorError(f"selector {spec!r}: entry {entry!r} holds no word (letters or digits)")
    unique = {}  # one entry per word sequence (per case-folded one unless :case)
    for entry in entries:
        key = tuple(w if keep_case else w.casefold() for w in words_of(entry))
        unique.setdefault(key, entry.strip())
    return list(unique.values()), keep_case


def _read_phrases(arg: str, spec: str) -> list[str]:
    if not arg.strip():
        raise SelectorError(f"selector {spec!r}: 'phrases:' needs a file name")
    path = word_list(arg, (PHRASELISTS, WORDLISTS))
    text = read_list_text(path, "phrases")
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line or line.lstrip().startswith("#"):
            continue
        if not line.strip():
            raise SelectorError(f"phrases file {path}, line {number}: the entry is only spaces")
        entries.append(line.strip())
    if not entries:
        raise SelectorError(f"phrases file is empty: {path}")
    return entries
