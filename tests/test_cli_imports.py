"""`--help` and the errors that need no model answer without importing torch: each case runs the CLI in a
fresh process and checks what it printed, its exit code, and that none of the heavy libraries was loaded."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tokentilt
from test_help import COLUMNS, COMMANDS, GOLDEN

HEAVY = ("torch", "transformers", "peft", "accelerate", "matplotlib", "gguf")
# main(argv) in a fresh process; its last line of stdout: the exit code and which heavy modules it loaded
CHILD = f"""
import json, sys
from tokentilt.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit_:
    code = exit_.code
sys.stdout.flush()
print(json.dumps({{"code": code, "heavy": sorted(m for m in {HEAVY!r} if m in sys.modules)}}))
"""


def run_cli(argv: list[str], cwd: Path) -> tuple[int, list[str], str, str]:
    """-> (exit code, heavy modules loaded, stdout without the last line, stderr)."""
    env = {**os.environ, "COLUMNS": COLUMNS, "PYTHONPATH": str(Path(tokentilt.__file__).parents[1])}
    env.pop("TOKENTILT_DEBUG", None)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )
    *out, last = done.stdout.splitlines(keepends=True)
    result = json.loads(last)
    return result["code"], result["heavy"], "".join(out), done.stderr


@pytest.mark.parametrize("name", COMMANDS)
def test_help_imports_no_torch(name, tmp_path):
    code, heavy, out, err = run_cli([*COMMANDS[name], "--help"], tmp_path)
    assert (code, heavy, err) == (0, [], "")
    assert out == (GOLDEN / f"{name}.txt").read_text(encoding="utf-8")


def test_no_command_prints_the_help_and_exits_2(tmp_path):
    code, heavy, out, err = run_cli([], tmp_path)
    assert (code, heavy, err) == (2, [], "")
    assert out == (GOLDEN / "tokentilt.txt").read_text(encoding="utf-8")


def used_folder(tmp: Path) -> str:
    run = tmp / "used"
    run.mkdir()
    (run / "summary.json").write_text("{}")
    return str(run)


# (argv, a part of the one error line); {tmp} is the test's folder, {used} a folder that holds a run
CASES = {
    "bad-flag": (["tilt", "--nope"], "unrecognized arguments: --nope (see 'tokentilt --help')"),
    "bad-choice": (["tilt", "--objective", "nope"], "argument --objective: invalid choice: 'nope'"),
    "bad-number": (["eval", "--new-tokens", "many"], "argument --new-tokens: invalid int value: 'many'"),
    "bad-value": (["tilt", "--steps", "0", "--out", "{tmp}/run"], "steps must be positive, got 0"),
    "bad-eval-value": (["tilt", "--eval-windows", "0", "--out", "{tmp}/run"], "eval-windows must be positive"),
    "bad-rate": (["sweep", "--rate", "1.5", "--out", "{tmp}/sweep"], "rate must be in (0, 1), got 1.5"),
    "missing-eval-text": (
        ["tilt", "--eval-text", "{tmp}/missing.txt", "--out", "{tmp}/run"],
        "text file not found: {tmp}/missing.txt",
    ),
    "missing-eval-text-eval": (["eval", "--eval-text", "{tmp}/missing.txt"], "text file not found"),
    "bad-selector": (["tilt", "--toward", "x &", "--out", "{tmp}/run"], "stray '&'"),
    "bad-regex": (["eval", "--toward", "regex:("], "bad regular expression"),
    "unknown-selector-kind": (["generate", "--toward", "colour:red"], "unknown selector kind 'colour'"),
    "missing-words-file": (["tilt", "--toward", "words:{tmp}/none.txt", "--out", "{tmp}/run"], "words file not found"),
    "missing-phrases-file": (["tilt", "--toward", "phrases:{tmp}/none.txt", "--out", "{tmp}/run"], "phrases file"),
    "phrases-in-sweep": (["sweep", "--toward", "phrase:red fox"], "sweep takes a token selector"),
    "audit-missing-words": (["audit", "m", "--words", "{tmp}/none.txt", "--out", "{tmp}/a"], "words file not found"),
    "used-folder": (["tilt", "--out", "{used}"], "output folder already holds a run: {used} (use --overwrite)"),
    "used-folder-audit": (["audit", "m", "--out", "{used}"], "output folder already holds a run"),
    "system-without-chat": (["generate", "--system", "Be brief."], "--system is a chat option"),
}


@pytest.mark.parametrize("case", CASES)
def test_model_free_errors_import_no_torch(case, tmp_path):
    argv, message = CASES[case]
    names = {"tmp": str(tmp_path), "used": used_folder(tmp_path)}
    code, heavy, out, err = run_cli([a.format(**names) for a in argv], tmp_path)
    assert (code, heavy, out) == (2, [], "")
    assert err.count("\n") == 1 and err.startswith("tokentilt: error: "), err
    assert message.format(**names) in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


def test_a_good_command_goes_on_to_import_torch(tmp_path):
    # the check above is not vacuous: past its checks, a command loads torch (and here fails on the model)
    code, heavy, out, err = run_cli(
        ["tilt", "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "r")], tmp_path
    )
    assert code == 2 and "torch" in heavy, (code, heavy, err)
