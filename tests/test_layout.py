"""The shape of the package: jobs apart from components, and each option's default written once."""

import ast
import pkgutil
import re
from pathlib import Path

import pytest

import tokentilt
import tokentilt.jobs
from tokentilt.cli import build_parser
from tokentilt.config import to_flat
from tokentilt.tilting import TiltConfig

SRC = Path(tokentilt.__file__).parent
JOBS = sorted(m.name for m in pkgutil.walk_packages(tokentilt.jobs.__path__, "tokentilt.jobs.") if not m.ispkg)


def imported_modules(path: Path) -> set[str]:
    """Every tokentilt module a file imports, at any depth of its code."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.startswith("tokentilt")}


def test_the_jobs_are_found():
    assert {"tokentilt.jobs.tilt", "tokentilt.jobs.sweep", "tokentilt.jobs.eval", "tokentilt.jobs.audit",
            "tokentilt.jobs.pretrain", "tokentilt.jobs.experiments.x_factor"} <= set(JOBS)


@pytest.mark.parametrize("job", JOBS)
def test_no_job_imports_another_job(job):
    path = SRC.parent / (job.replace(".", "/") + ".py")
    others = {m for m in imported_modules(path) if m.startswith("tokentilt.jobs.") and m != job}
    assert others == set(), f"{job} imports {sorted(others)}"


def test_components_import_no_job():
    for path in SRC.glob("*.py"):
        if path.name in ("cli.py", "__main__.py", "__init__.py"):
            continue  # the CLI dispatches to the jobs; __init__ re-exports them
        jobs = {m for m in imported_modules(path) if m.startswith("tokentilt.jobs")}
        assert jobs == set(), f"{path.name} imports {sorted(jobs)}"


def test_no_option_default_is_written_in_the_cli():
    # defaults come from the config dataclasses through show_defaults, never typed into a help string
    text = (SRC / "cli.py").read_text()
    assert re.findall(r"\(default: (?!\{)[^)]*\)", text) == []  # only show_defaults' own f-string


def _subparser(name: str):
    action = next(a for a in build_parser()._actions if a.dest == "command")
    return action.choices[name]


def test_tilt_help_shows_every_default_from_the_dataclass():
    defaults = to_flat(TiltConfig())
    shown = 0
    for action in _subparser("tilt")._actions:
        value = defaults.get(action.dest)
        if value is None or isinstance(value, bool) or value in ("", []):
            continue
        expected = f"{value:g}" if isinstance(value, float) else str(value)
        assert action.help.endswith(f"(default: {expected})"), (action.dest, action.help)
        shown += 1
    assert shown >= 40  # every valued option of tilt, not a handful
    assert defaults["objective"] == "tilt-distill" and defaults["rate"] == 0.5  # the product, not the course



def test_every_name_in_the_api_resolves():
    for name in tokentilt.__all__:
        obj = getattr(tokentilt, name)
        assert getattr(obj, "__name__", name) == name or name == "OBJECTIVES", name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tokentilt.nope  # noqa: B018
