"""Config plumbing in one place: dataclass defaults <- YAML file <- flags, typed, one-line errors.

Every job's settings are a dataclass (nested ones for train/eval/lora). YAML files and flags
are flat (`lr: 1e-4`, `--lr 1e-4`); each key is routed to the nested field of that name.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import re
import sys
import textwrap
import tokenize
import types
import typing

import yaml

from tokentilt.data.textfiles import read_user_file


class UsageError(ValueError):
    """Bad input the user can fix: printed as one line, exit code 2."""


def read_yaml(path: str | None) -> dict:
    if path is None:
        return {}
    text = read_user_file(path, "config", UsageError)
    try:
        values = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError) as err:  # ValueError: e.g. a date like 2024-13-45
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UsageError(f"config file {path} is not valid YAML: {first}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UsageError(f"config file {path} must hold a mapping of option: value")
    bad = [k for k in values if not isinstance(k, str)]
    if bad:
        raise UsageError(f"config file {path}: option names must be text, got {bad[0]!r}")
    return {k.replace("-", "_"): v for k, v in values.items()}


def coerce(name: str, value, default):
    """Cast a YAML/flag value to the type of the field's default, with a one-line error."""
    if default is None:
        return value
    if value is None:  # `alpha:` with nothing after it; the field has no "unset" state to go to
        raise UsageError(f"bad value for {name.replace('_', '-')}: None (give a value, or leave the option out)")
    scalar = (str, int, float)  # YAML may also give lists, mappings, dates, bytes
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "yes", "no", "1", "0"):
                    raise ValueError
                return value.lower() in ("true", "yes", "1")
            if not isinstance(value, (bool, int)) or value not in (0, 1):
                raise ValueError
            return bool(value)
        if isinstance(value, bool) and not isinstance(default, str):
            raise ValueError  # `lr: true` is a slip, not 1.0
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            if not isinstance(value, scalar):
                raise TypeError
            return int(value)
        if isinstance(default, float):
            if not isinstance(value, scalar):
                raise TypeError
            return float(value)
        if isinstance(default, list):
            # items take the type of the default's items (lrs: [1e-6, 1e-4] -> floats), else strings
            item = type(default[0]) if default and type(default[0]) in (int, float) else str
            if isinstance(value, list):
                if not all(isinstance(v, scalar) and not isinstance(v, bool) for v in value):
                    raise TypeError
                return [item(v) for v in value]
            if not isinstance(value, str):
                raise TypeError
            return [item(s) for s in value.split("|") if s]
        if not isinstance(value, scalar):
            raise TypeError
        return str(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(float("inf"))
        raise UsageError(f"bad value for {name.replace('_', '-')}: {value!r}") from None


def merge(cls, yaml_values: dict, flags: dict):
    """dataclass defaults <- YAML <- flags, typed. Unknown YAML keys are an error."""
    defaults = to_flat(cls())
    unknown = sorted(str(k) if str(k).isprintable() else repr(k) for k in set(yaml_values) - set(defaults))
    if unknown:  # a key may be a number, or hold a line break: the message stays one line
        raise UsageError(f"unknown option(s) in config file: {', '.join(unknown)}")
    typed = {k: coerce(k, v, defaults[k]) for k, v in yaml_values.items()}
    typed.update({k: coerce(k, v, defaults[k]) for k, v in flags.items() if k in defaults})
    return from_flat(cls, typed)


def to_flat(cfg) -> dict:
    """Dataclass -> flat dict (nested sections merged in); the shape of config.yaml."""
    flat = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            flat.update(to_flat(value))
        else:
            flat[f.name] = value
    return flat


def from_flat(cls, values: dict):
    """Flat dict -> dataclass `cls`, routing each key to the (nested) field of that name.

    Starts from cls()'s own defaults, so a nested default built by a factory (say TrainConfig
    with eval_every=0) keeps whatever the flat dict does not override.
    """
    return _fill(cls(), values)


def _fill(obj, values: dict):
    changes = {}
    for f in dataclasses.fields(obj):
        current = getattr(obj, f.name)
        if dataclasses.is_dataclass(current):
            changes[f.name] = _fill(current, values)
        elif f.name in values:
            changes[f.name] = values[f.name]
    return dataclasses.replace(obj, **changes)


@dataclasses.dataclass
class Option:
    """One field of a config dataclass as the CLI offers it."""

    name: str  # the field's name: the flat YAML key and the flag's dest
    type: type  # str, int, float, bool or list
    default: object  # the value in an instance of the config
    choices: tuple | None  # from a Literal[...] type
    help: str  # the field's comment
    computed: bool  # the default comes from a factory (a bool of this kind can be switched off too)


def options(cfg) -> list[Option]:
    """Every field of the dataclass instance `cfg` and of its nested ones, flat, in order.

    Two fields of one name would be one YAML key and one flag, so that is an error here."""
    out = []
    hints, comments = typing.get_type_hints(type(cfg)), field_comments(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out += options(value)
            continue
        hint, choices = hints[f.name], None
        if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None: the X
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        if typing.get_origin(hint) is typing.Literal:
            choices = typing.get_args(hint)
            hint = type(choices[0])
        out.append(
            Option(
                f.name,
                typing.get_origin(hint) or hint,
                value,
                choices,
                comments.get(f.name, ""),
                f.default_factory is not dataclasses.MISSING,
            )
        )
    names = [o.name for o in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise TypeError(f"{type(cfg).__name__}: field name(s) used twice across its sections: {', '.join(twice)}")
    return out


@functools.cache
def field_comments(cls) -> dict[str, str]:
    """Each field's `# comment` in the class source: the comments inside its statement (a formatter may wrap a
    long default over several lines), joined with the comment-only lines right below it. A dataclass that
    extends another (a job's config that adds its output folder to a component's options) has its base's too."""
    inherited = {}
    for base in reversed(cls.__mro__[1:]):
        if dataclasses.is_dataclass(base):
            inherited.update(field_comments(base))
    return {**inherited, **_own_comments(cls)}


def _own_comments(cls) -> dict[str, str]:
    source = textwrap.dedent(class_source(cls))
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type != tokenize.INDENT]
    found, name, open_statement = {}, None, False
    for tok, after in zip(tokens, tokens[1:] + tokens[-1:]):
        starts_line = tok.line[: tok.start[1]].strip() == ""
        if tok.type == tokenize.NAME and tok.start[1] == 4 and starts_line and after.string == ":":
            name, open_statement = tok.string, True
            found[name] = []
        elif tok.type == tokenize.COMMENT:
            if name and (open_statement or starts_line):
                found[name].append(tok.string.lstrip("#").strip())
        elif tok.type == tokenize.NEWLINE:
            open_statement = False
        elif tok.type == tokenize.NL:
            if not open_statement and not tok.line.strip():
                name = None  # a blank line ends the comment lines below a field
        elif not open_statement:
            name = None  # any other statement ends them too
    return {k: " ".join(v) for k, v in found.items() if v}


def class_source(cls) -> str:
    """The source of a class defined at the top level of its module, from its `class NAME` line to the next line
    that is not indented; else inspect.getsource's. (getsource parses the whole module into an AST for each
    class, which took most of the time that `tokentilt --help` spent building its options.)"""
    lines = inspect.getsource(sys.modules[cls.__module__]).splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if re.match(rf"class {re.escape(cls.__name__)}\b", line)]
    if len(starts) != 1:
        return inspect.getsource(cls)
    end = next((j for j in range(starts[0] + 1, len(lines)) if lines[j][:1] not in (" ", "\t", "\n")), len(lines))
    return "".join(lines[starts[0] : end])
