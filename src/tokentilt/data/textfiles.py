"""A user's file (--eval-text, --config, words: and phrases: lists), read with one-line errors and without
torch, so that a command refuses a missing, unreadable or empty file before it imports torch and loads a model."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A data problem the user can fix (missing or empty file, text too short)."""


def read_user_file(path, kind: str, error: type[Exception] = DataError, hint: str = "") -> str:
    """The UTF-8 text of a user's `kind` file ("text", "config", "words", ...), or `error` with one line: missing
    (`hint` appended), not a file, unreadable, not UTF-8, binary (NUL bytes)."""
    path = Path(path)
    if not path.exists():
        raise error(f"{kind} file not found: {path}{hint}")
    if not path.is_file():
        raise error(f"{kind} file is not a regular file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise error(f"{kind} file is not UTF-8 text: {path}") from None
    except OSError as err:
        raise error(f"cannot read {kind} file {path}: {err.strerror or err}") from None
    if "\0" in text:
        raise error(f"{kind} file looks binary (it holds NUL bytes): {path}")
    return text


def read_text_file(path) -> str:
    """Read a user's text file (for --eval-text), as UTF-8. Raises DataError with one clear line."""
    text = read_user_file(path, "text")
    if not text.strip():
        raise DataError(f"text file is empty: {path}")
    return text
