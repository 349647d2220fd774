import dataclasses
import subprocess
import sys
from typing import Literal

import pytest

from tokentilt.config import UsageError, coerce, merge, options
from tokentilt.jobs.tilt_config import TiltConfig


@pytest.mark.parametrize(
    "module,forbidden",
    [
        ("tokentilt.measurement.evaluate", ["tokentilt.measurement.calibrate", "tokentilt.jobs.tilt"]),
        ("tokentilt.measurement.calibrate", ["tokentilt.jobs.tilt", "tokentilt.jobs.eval"]),
        ("tokentilt.runs.report", ["tokentilt.jobs.tilt"]),
        ("tokentilt.config", ["tokentilt.jobs.tilt", "tokentilt.cli", "torch"]),
    ],
)
def test_lower_layers_do_not_import_the_jobs(module, forbidden):
    code = f"import sys, {module}; print(','.join(m for m in {forbidden!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_merge_routes_flat_keys_into_nested_sections_and_flags_win():
    cfg = merge(TiltConfig, {"lr": 3e-4, "steps": "7", "new_tokens": 5}, {"lr": 1e-3})
    assert cfg.train.lr == 1e-3 and cfg.train.steps == 7 and cfg.eval.new_tokens == 5


@pytest.mark.parametrize(
    "yaml_values,message",
    [
        ({"nonsense": 1}, "unknown option(s) in config file: nonsense"),
        ({"steps": 2.5}, "bad value for steps: 2.5"),
        ({"bf16": "maybe"}, "bad value for bf16: 'maybe'"),
    ],
)
def test_merge_refuses_bad_values_with_one_line(yaml_values, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        merge(TiltConfig, yaml_values, {})


def test_coerce_types():
    assert coerce("lr", "1e-4", 0.1) == 1e-4
    assert coerce("bf16", "yes", False) is True
    assert coerce("prompts", "a|b", ["x"]) == ["a", "b"]


@dataclasses.dataclass
class _Inner:
    steps: int = 3  # optimizer steps
    mode: Literal["a", "b"] = "a"  # a mode, with a help text that goes on
    # over a second comment line


@dataclasses.dataclass
class _Outer:
    name: str = "x"  # a name
    inner: _Inner = dataclasses.field(default_factory=_Inner)


@dataclasses.dataclass
class _Clash:
    steps: int = 1  # steps, again
    inner: _Inner = dataclasses.field(default_factory=_Inner)


def test_options_are_the_fields_flat_with_their_comments_and_choices():
    found = {o.name: o for o in options(_Outer())}
    assert list(found) == ["name", "steps", "mode"]
    assert found["mode"].choices == ("a", "b") and found["mode"].type is str
    assert found["mode"].help == "a mode, with a help text that goes on over a second comment line"
    assert found["steps"].type is int and found["steps"].default == 3 and found["steps"].help == "optimizer steps"


def test_a_field_name_used_twice_across_sections_is_an_error():
    with pytest.raises(TypeError, match="used twice across its sections: steps"):
        options(_Clash())


# fmt: off
@dataclasses.dataclass
class Wrapped:
    """A config as a formatter may leave it (kept as written: the formatter would join the wrapped field)."""

    short: int = 1  # one line
    long_default: str = (
        "all-linear"  # the comment inside a wrapped default
    )  # and after it
    # a comment line below the field continues its help

    # a comment after a blank line belongs to nothing
    bare: int = 2
    made: list[int] = dataclasses.field(default_factory=list)  # factory
# fmt: on


def test_field_comments_follow_a_field_over_wrapped_lines():
    from tokentilt.config import field_comments

    assert field_comments(Wrapped) == {
        "short": "one line",
        "long_default": "the comment inside a wrapped default and after it a comment line below the field continues "
        "its help",
        "made": "factory",
    }


@pytest.mark.parametrize(
    ("toward", "given", "expected"),
    [
        ("x", {}, (300, 1e-2)),  # a token set's kl fit
        ("phrases:slop", {}, (300, 1e-2)),  # a phrase list toward or at a rate
        ("phrases:slop", {"ban": True, "objective": "tilt-distill"}, (1000, 3e-3)),  # its ban: longer, gentler
        ("phrase:vibrant", {"head_steps": 50, "head_lr": 0.02}, (50, 0.02)),  # given values are kept
    ],
)
def test_the_head_fit_defaults_depend_on_the_target(toward, given, expected):
    cfg = dataclasses.replace(TiltConfig(toward=toward), **given)
    cfg.check()
    resolved = cfg.resolved()
    assert (resolved.head_steps, resolved.head_lr) == expected
    assert (cfg.head_steps, cfg.head_lr) == ((50, 0.02) if "head_steps" in given else (0, 0.0))  # a copy
