"""Every `--help` of the command, byte for byte against tests/data/help/: a guard for refactors of the CLI.

After a deliberate change of an option or its help, rewrite the files with
`PYTHONPATH=src python tests/test_help.py --write` and read the diff."""

import contextlib
import io
import os
import sys
from pathlib import Path

import pytest

from tokentilt.cli import main

GOLDEN = Path(__file__).parent / "data" / "help"
COLUMNS = "100"  # argparse wraps to $COLUMNS; fixed, so the text does not depend on the terminal
COMMANDS = {
    "tokentilt": [],
    "tilt": ["tilt"],
    "generate": ["generate"],
    "sweep": ["sweep"],
    "eval": ["eval"],
    "profile": ["profile"],
    "audit": ["audit"],
    "export": ["export"],
    "pretrain": ["pretrain"],
    "experiment": ["experiment"],
    "experiment-l1-vs-l2": ["experiment", "l1-vs-l2"],
    "experiment-like-x": ["experiment", "like-x"],
    "experiment-x-factor": ["experiment", "x-factor"],
}


def help_text(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return out.getvalue()


def test_every_command_has_a_golden_file():
    from tokentilt.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    experiments = next(a for a in commands["experiment"]._actions if a.dest == "experiment").choices
    expected = {"tokentilt", *commands, *(f"experiment-{name}" for name in experiments)}
    assert set(COMMANDS) == expected
    assert {p.stem for p in GOLDEN.glob("*.txt")} == expected


@pytest.mark.parametrize("name", COMMANDS)
def test_help_is_unchanged(name, monkeypatch):
    monkeypatch.setenv("COLUMNS", COLUMNS)
    assert help_text(COMMANDS[name]) == (GOLDEN / f"{name}.txt").read_text(encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit(__doc__)
    os.environ["COLUMNS"] = COLUMNS
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for name, argv in COMMANDS.items():
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            main([*argv, "--help"])
        (GOLDEN / f"{name}.txt").write_text(out.getvalue(), encoding="utf-8")
        print(f"wrote {GOLDEN / name}.txt")
