"""The layers the tree shows: each package imports only from the layers below it, and no module imports
itself back through others (an import circle)."""

import ast
from pathlib import Path

import pytest

import tokentilt

SRC = Path(tokentilt.__file__).parent

# Lowest first. A module may import from its own package and from any lower layer; the packages of the
# first layer may also import each other (they are leaves: options, text, models, run folders), and so
# may the door's modules.
LAYERS = [
    {"config", "settings", "data", "models", "runs"},
    {"targets"},  # token sets and phrase sets: the Target type
    {"objectives"},  # losses and their fused twins
    {"measurement"},  # sampling, metrics, evaluation, calibration, importance weights
    {"training"},  # the loop, the engine, checkpoints, placements, the rate rounds
    {"audit", "export", "course", "preflight"},  # what builds on training and measurement
    {"jobs"},  # one file per command, beside its config
    {"cli", "__init__", "__main__"},  # the door
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def imports(path: Path) -> set[str]:
    """The tokentilt modules a file imports, at any depth of its code (lazy imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tokentilt"):
            for alias in node.names:  # `from tokentilt.x import y`: y is a module or a name in x
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("tokentilt"))
    return found


def package(module: str) -> str:
    """tokentilt.training.loop -> training; tokentilt.cli -> cli; tokentilt -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_package_has_a_layer():
    assert {package(m) for m in MODULES} <= set(LAYER), sorted({package(m) for m in MODULES} - set(LAYER))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers(module):
    here = package(module)
    wrong = []
    for other in sorted(imports(MODULES[module])):
        there = package(other)
        if there == here or other == "tokentilt" and here in LAYERS[-1]:
            continue
        if LAYER[there] > LAYER[here] or (LAYER[there] == LAYER[here] and LAYER[here] not in (0, len(LAYERS) - 1)):
            wrong.append(other)
    assert wrong == [], f"{module} (layer {LAYER[here]}) imports {wrong}"


def test_no_import_circle():
    graph = {m: {o for o in imports(p) if o in MODULES and o != m} for m, p in MODULES.items()}
    done, path = set(), []

    def visit(m):  # depth first; a module met again on the current path closes a circle
        if m in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(m) :] + [m]))
        if m in done:
            return
        path.append(m)
        for o in sorted(graph[m]):
            visit(o)
        path.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)


def test_the_layer_rules_can_fail(tmp_path, monkeypatch):
    # a lower layer importing a higher one, and two modules importing each other, are both caught
    bad = tmp_path / "bad.py"
    bad.write_text("from tokentilt.jobs import tilt\nimport tokentilt.training.loop\n")
    assert imports(bad) == {"tokentilt.jobs.tilt", "tokentilt.training.loop"}
    monkeypatch.setitem(MODULES, "tokentilt.targets.bad", bad)
    with pytest.raises(AssertionError, match="imports"):
        test_imports_go_down_the_layers("tokentilt.targets.bad")
    loop = tmp_path / "loop.py"
    loop.write_text("from tokentilt.targets import bad\n")
    monkeypatch.setitem(MODULES, "tokentilt.training.loop", loop)
    with pytest.raises(AssertionError, match="import circle"):
        test_no_import_circle()


def test_no_two_files_share_a_name():
    names = [p.name for p in SRC.rglob("*.py") if p.name != "__init__.py"]
    assert sorted({n for n in names if names.count(n) > 1}) == []
