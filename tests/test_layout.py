"""The shape of the package: jobs apart from components, and each option's default written once."""

import ast
import dataclasses
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import tokentilt
import tokentilt.jobs
from tokentilt.cli import build_parser
from tokentilt.config import field_comments, options, to_flat
from tokentilt.jobs.audit_config import AuditConfig
from tokentilt.jobs.eval_config import EvalJobConfig
from tokentilt.jobs.generate_config import GenerateConfig
from tokentilt.jobs.pretrain_config import PretrainConfig
from tokentilt.jobs.sweep_config import SweepConfig
from tokentilt.jobs.tilt_config import TiltConfig
from tokentilt.measurement.evaluate import EvalConfig
from tokentilt.models.lora import LoraArgs
from tokentilt.training.loop import TrainConfig

SRC = Path(tokentilt.__file__).parent
CONFIGS = [
    TiltConfig,
    TrainConfig,
    EvalConfig,
    LoraArgs,
    SweepConfig,
    EvalJobConfig,
    AuditConfig,
    PretrainConfig,
    GenerateConfig,
]
MODULES = sorted(m.name for m in pkgutil.walk_packages(tokentilt.jobs.__path__, "tokentilt.jobs.") if not m.ispkg)
JOBS = [m for m in MODULES if not m.endswith("_config")]  # each with its config beside it, <job>_config.py
# a sweep is a grid of tilts: its config builds each run's TiltConfig, the one job config another one imports
SHARED_CONFIGS = {"tokentilt.jobs.sweep_config": {"tokentilt.jobs.tilt_config"}}


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


def jobs_imported(path: Path) -> set[str]:
    """The modules under jobs/ that a file imports (a name imported from one counts as that module)."""
    names = imported_modules(path)
    return {m for m in MODULES if any(n == m or n.startswith(m + ".") for n in names)}


def test_the_jobs_are_found():
    assert set(JOBS) == {
        "tokentilt.jobs.tilt",
        "tokentilt.jobs.sweep",
        "tokentilt.jobs.eval",
        "tokentilt.jobs.generate",
        "tokentilt.jobs.audit",
        "tokentilt.jobs.export",
        "tokentilt.jobs.profile",
        "tokentilt.jobs.pretrain",
        "tokentilt.jobs.experiments.l1_vs_l2",
        "tokentilt.jobs.experiments.like_x",
        "tokentilt.jobs.experiments.x_factor",
    }
    assert set(MODULES) == set(JOBS) | {job + "_config" for job in JOBS}  # every job has its config beside it


@pytest.mark.parametrize("module", MODULES)
def test_no_job_imports_another_job(module):
    # a job may import its own config; a config imports no job, and no other job's config but SHARED_CONFIGS
    own = {module, module + "_config"}
    others = jobs_imported(SRC.parent / (module.replace(".", "/") + ".py")) - own - SHARED_CONFIGS.get(module, set())
    assert others == set(), f"{module} imports {sorted(others)}"


def test_components_import_no_job():
    for path in sorted(SRC.rglob("*.py")):
        name = path.relative_to(SRC).as_posix()
        if name in ("cli.py", "__main__.py", "__init__.py") or name.startswith("jobs/"):
            continue  # the CLI dispatches to the jobs; __init__ re-exports them
        jobs = jobs_imported(path)
        assert jobs == set(), f"{name} imports {sorted(jobs)}"


@pytest.mark.parametrize("job", JOBS)
def test_every_job_runs_with_one_signature(job):
    run = importlib.import_module(job).run
    params = list(inspect.signature(run).parameters.values())
    assert [(p.name, p.kind) for p in params] == [
        ("cfg", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("echo", inspect.Parameter.KEYWORD_ONLY),
        ("progress", inspect.Parameter.KEYWORD_ONLY),
    ], f"{job}.run{inspect.signature(run)}"
    assert params[1].default is print and isinstance(params[2].default, bool)


def test_the_cli_runs_every_command_through_its_job():
    from tokentilt.cli import COMMANDS
    from tokentilt.jobs.experiments import EXPERIMENTS

    action = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(COMMANDS) == (set(action.choices) - {"experiment"}) | set(EXPERIMENTS)
    assert {c.job for c in COMMANDS.values()} == set(JOBS)


def test_no_option_default_is_written_in_the_cli():
    # defaults come from the config dataclasses through show_defaults, never typed into a help string
    text = (SRC / "cli.py").read_text()
    assert re.findall(r"\(default: (?!\{)[^)]*\)", text) == []  # only show_defaults' own f-string


def _subparser(name: str):
    action = next(a for a in build_parser()._actions if a.dest == "command")
    return action.choices[name]


def test_tilt_help_shows_every_default_from_the_dataclass(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # unwrapped help, so each default can be read off `--help`
    entries = [" ".join(e.split()) for e in re.split(r"\n  (?=-)|\n\n", _subparser("tilt").format_help())]
    defaults, shown = to_flat(TiltConfig()), 0
    for action in _subparser("tilt")._actions:
        value = defaults.get(action.dest)
        if value is None or isinstance(value, bool) or value in ("", []):
            continue
        expected = f"{value:g}" if isinstance(value, float) else str(value)
        entry = next(e for e in entries if e.startswith(action.option_strings[0] + " "))
        assert entry.endswith(f"(default: {expected})"), entry
        shown += 1
    assert shown >= 45  # every valued option of tilt, not a handful
    assert defaults["objective"] == "tilt-distill" and defaults["rate"] == 0.5  # the product, not the course


def test_no_option_default_is_written_twice():
    # a default lives on its dataclass field; the CLI passes SUPPRESS (so YAML is not overridden) or names a
    # constant of the module that owns it, and never types a value of its own
    calls = [node for node in ast.walk(ast.parse((SRC / "cli.py").read_text())) if isinstance(node, ast.Call)]
    for call in calls:
        for kw in call.keywords:
            if kw.arg == "default":
                assert ast.unparse(kw.value) in ("argparse.SUPPRESS", "DEFAULT_TYPE"), ast.unparse(call)
            if getattr(call.func, "attr", "") == "set_defaults":
                assert kw.arg == "func", ast.unparse(call)  # only which command runs
    for cls in CONFIGS:  # nor in a field's comment, which is the option's help
        assert not [h for h in field_comments(cls).values() if "(default" in h], cls.__name__


@pytest.mark.parametrize(
    "command,cls",
    [
        ("tilt", TiltConfig),
        ("sweep", SweepConfig),
        ("eval", EvalJobConfig),
        ("audit", AuditConfig),
        ("pretrain", PretrainConfig),
        ("generate", GenerateConfig),
    ],
)
def test_every_field_is_an_option_with_its_comment_as_help(command, cls):
    from tokentilt.cli import YAML_ONLY

    actions = {a.dest: a for a in _subparser(command)._actions}
    offered = [o for o in options(cls()) if o.name in actions]
    assert {o.name for o in options(cls())} - {o.name for o in offered} <= YAML_ONLY | {
        "lr",
        "patience",
        "save_every",
        "keep",
        "report_to",
        "during_samples_per_prompt",
    }  # what a job leaves out
    for o in offered:
        assert o.help and actions[o.name].help.startswith(o.help[:20]), o.name
    if hasattr(cls(), "eval") and command != "sweep":
        assert {f.name for f in dataclasses.fields(EvalConfig)} - YAML_ONLY - {"during_samples_per_prompt"} <= set(
            actions
        )


def test_every_name_in_the_api_resolves():
    for name in tokentilt.__all__:
        obj = getattr(tokentilt, name)
        assert getattr(obj, "__name__", name) == name or name == "OBJECTIVES", name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tokentilt.nope  # noqa: B018


# what `tokentilt --help` and the model-free checks import: none of them may import torch at module level
TORCH_FREE = {
    "tokentilt",
    "tokentilt.cli",
    "tokentilt.config",
    "tokentilt.preflight",
    "tokentilt.settings",
    *(m for m in MODULES if m.endswith("_config")),
    "tokentilt.targets.selectors",
    "tokentilt.data.textfiles",
    "tokentilt.data.prompts",
    "tokentilt.runs.folder",
    "tokentilt.course.pretraining_config",
}
HEAVY = {"torch", "transformers", "peft", "accelerate", "matplotlib", "gguf", "safetensors", "numpy"}


@pytest.mark.parametrize("module", sorted(TORCH_FREE - {"tokentilt"}))
def test_the_door_imports_only_torch_free_modules(module):
    tree = ast.parse((SRC.parent / (module.replace(".", "/") + ".py")).read_text())
    top = set()  # imports at module level (those inside a function run when it is called)
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            top.add(node.module)
        elif isinstance(node, ast.Import):
            top.update(a.name for a in node.names)
    assert {n.split(".")[0] for n in top} & HEAVY == set(), module
    assert {n for n in top if n.startswith("tokentilt")} <= TORCH_FREE, module


def test_the_torch_free_names_agree_with_the_registries():
    from tokentilt.objectives.losses import OBJECTIVES
    from tokentilt.settings import OBJECTIVE_NAMES, REFERENCE_OBJECTIVES, TEXT_OBJECTIVES

    assert tuple(OBJECTIVES) == OBJECTIVE_NAMES
    assert REFERENCE_OBJECTIVES <= TEXT_OBJECTIVES <= set(OBJECTIVE_NAMES)


# Where the code asks "which kind of target is this?", the Target type (targets/target.py) is missing a member.
KIND_CHECKS = re.compile(
    r"isinstance\(.*PhraseSet|hasattr\(.*rates|hasattr\(.*adjust|hasattr\(.*processor|isinstance\(target, torch.Tensor\)"
)


def test_only_the_targets_tell_target_kinds_apart():
    found = [
        f"{path.relative_to(SRC)}:{n}: {line.strip()}"
        for path in sorted(SRC.rglob("*.py"))
        if path.parent.relative_to(SRC).parts[:1] != ("targets",)
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if KIND_CHECKS.search(line)
    ]
    assert found == [], "ask the Target (targets/target.py) instead:\n" + "\n".join(found)
