"""A user's text file (--eval-text), read with one-line errors and without torch, so that a command
refuses a missing or empty file before it imports torch and loads a model."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A data problem the user can fix (missing or empty file, text too short)."""


def read_text_file(path) -> str:
    """Read a user's text file (for --eval-text), as UTF-8. Raises DataError with one clear line."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"text file not found: {path}")
    if not path.is_file():
        raise DataError(f"not a regular file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"text file is not valid UTF-8: {path}") from None
    except OSError as err:
        raise DataError(f"cannot read text file {path}: {err.strerror or err}") from None
    if not text.strip():
        raise DataError(f"text file is empty: {path}")
    return text
