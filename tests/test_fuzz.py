"""Property tests (Hypothesis): random selectors and random config files/flags never crash.

The only exceptions allowed out are the project's user errors, which the CLI turns into exit 2
with one line:
- the selector parser raises targets.SelectorError, nothing else;
- read_yaml/merge raise config.UsageError, nothing else;
- building a job's config the way the CLI does (YAML + flags, then the dataclass checks) raises
  ValueError: UsageError, SelectorError, DataError and ModelLoadError all derive from it, and the
  dataclasses' check() methods raise plain ValueError for a bad value. cli.main maps exactly
  ValueError (and OSError) to exit 2, so that is the contract; classify_config holds each one to it:
  a user-error class, or a plain ValueError raised in tokentilt's own code, with a one-line message.
CI runs 200 examples per property; benchmarks/fuzz.py runs 10,000 and counts crashes.
Crashes found by fuzzing are kept below as explicit examples.
"""

import math
import tempfile
import traceback
from pathlib import Path

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import tokentilt
from tokentilt.cli import sweep_axes, sweep_config, tilt_config
from tokentilt.config import UsageError, merge, read_yaml
from tokentilt.data.corpus import DataError
from tokentilt.jobs.sweep import SweepConfig
from tokentilt.jobs.tilt_config import TiltConfig
from tokentilt.models.load import ModelLoadError
from tokentilt.runs.folder import RunFolderError
from tokentilt.targets.tokens import SelectorError, resolve
from tokentilt.training.checkpoint import CheckpointError

CI = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# A small fixed vocabulary: letters, a space-prefixed word, an x-token, punctuation, a newline.
TEXTS = ["a", "b", "x", " x", "xx", "X", " the", "ab", ".", ",", "\n", "Xy", "\0", "1", " 12"]

FRAGMENTS = [
    "contains:",
    "regex:",
    "words:",
    "ids:",
    "not:",
    "foo:",
    "x",
    "a",
    "X",
    ":case",
    " & ",
    " | ",
    "&",
    "|",
    "(",
    ")",
    "[",
    "]",
    "*",
    "+",
    "?",
    "{9999999999}",
    "1",
    "3",
    "-1",
    ",",
    "99",
    " ",
    ":",
    "\\",
    "^",
    "$",
    ".",
    "/nonexistent",
    "/dev/null",
    "~nosuchuser/",
    "\0",
    "é",
    "ß",
]


def selectors():
    return st.one_of(st.text(max_size=24), st.lists(st.sampled_from(FRAGMENTS), max_size=8).map("".join))


def classify_selector(spec: str) -> str:
    """'ok' or 'user-error'; any other exception is a crash and propagates."""
    try:
        resolve(spec, TEXTS)
        return "ok"
    except SelectorError:
        return "user-error"


TILT_KEYS = sorted(TiltConfig.__dataclass_fields__) + [
    "lr",
    "steps",
    "batch",
    "seq_len",
    "prompts",
    "top_p",
    "eval_text",
    "lora_r",
    "precision",
    "optimizer",
    "bf16",
]
SWEEP_KEYS = ["objective", "objectives", "lr", "lrs", "rate", "rates", "bias", "biases", "curve_points"]


def yaml_values():
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=True),
        st.text(max_size=12),
        st.sampled_from(["1e-4", "nan", "inf", "-1", "0", "yes", "x", "tilt-distill", "all"]),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
        max_leaves=6,
    )


def mappings():
    keys = st.one_of(st.sampled_from(TILT_KEYS + SWEEP_KEYS), st.text(max_size=10))
    return st.dictionaries(keys, yaml_values(), max_size=5)


def flag_values():
    """What argparse can hand over: typed numbers, strings for the list flags, True for store_true flags."""
    return st.fixed_dictionaries(
        {},
        optional={
            "lr": st.one_of(st.floats(allow_nan=True), st.text(max_size=10)),
            "steps": st.integers(),
            "batch": st.integers(),
            "seq_len": st.integers(-2, 10**6),
            "top_p": st.floats(allow_nan=True),
            "temperature": st.floats(allow_nan=True),
            "toward": st.text(max_size=10),
            "model": st.sampled_from(["bundled", "~nosuchuser/m", "", "a/b/c", "gpt2"]),
            "rates": st.text(max_size=10),
            "biases": st.text(max_size=10),
            "objectives": st.text(max_size=20),
            "bf16": st.just(True),
            "overwrite": st.just(True),
        },
    )


FOLDER = Path(tempfile.mkdtemp(prefix="tokentilt-fuzz-"))


def classify_config(content, flags: dict) -> str:
    """Write `content` (a mapping dumped as YAML, or raw text) to a file and build both jobs' configs
    from it and `flags`, as the CLI does. 'ok', 'usage-error' (read/merge) or 'user-error' (checks)."""
    path = FOLDER / "config.yaml"
    if isinstance(content, dict):
        path.write_text(yaml.safe_dump(content, allow_unicode=True))
    else:
        path.write_bytes(content.encode("utf-8", "surrogatepass"))
    outcome = "ok"
    for build, cls in ((tilt_config, TiltConfig), (sweep_config, SweepConfig)):
        try:
            values = read_yaml(str(path))
            merge(cls, sweep_axes(values) if cls is SweepConfig else values, {})
        except UsageError:
            outcome = "usage-error"
        try:
            build({**flags, "config": str(path)})
        except ValueError as err:
            assert_user_error(err)
            outcome = "user-error" if outcome == "ok" else outcome
    return outcome


USER_ERRORS = (UsageError, SelectorError, DataError, ModelLoadError, RunFolderError, CheckpointError)
PACKAGE = str(Path(tokentilt.__file__).parent)


def assert_user_error(err: ValueError) -> None:
    """A ValueError the CLI may turn into exit 2: one of the project's user-error classes, or a plain
    ValueError raised by tokentilt's own code (a check() method), never one leaking out of a library
    (UnicodeDecodeError, json/yaml internals, int() deep inside); its message is one non-empty line."""
    raised_in = traceback.extract_tb(err.__traceback__)[-1].filename
    assert isinstance(err, USER_ERRORS) or (type(err) is ValueError and raised_in.startswith(PACKAGE)), (
        f"{type(err).__name__} from {raised_in}: {err}"
    )
    message = str(err)
    assert message.strip() and "\n" not in message.strip() and "Traceback" not in message, repr(message)


@CI
@given(selectors())
@example("x &")  # read as the text 'x &' and reported "matches no token" before the stray-operator check
@example("regex:a{9999999999}")  # OverflowError out of re.compile
@example("not:")
@example("ids:-1")
def test_selector_parser_raises_only_selector_errors(spec):
    assert classify_selector(spec) in ("ok", "user-error")


@CI
@given(selectors())
def test_a_selector_that_resolves_is_a_proper_subset(spec):
    try:
        tokens = resolve(spec, TEXTS)
    except SelectorError:
        return
    assert 0 < tokens.size < len(TEXTS) and tokens.mask.shape == (len(TEXTS),)


@CI
@given(st.one_of(mappings(), st.text(max_size=40)), flag_values())
@example({1: 2}, {})  # a non-text key: AttributeError in read_yaml
@example({"steps": True}, {})  # a boolean taken for the number 1
@example({"prompts": {"a": "b"}}, {})  # a mapping taken for a list of prompts
@example({"steps": math.inf}, {})  # int(inf): OverflowError
@example("a: 2024-13-45", {})  # yaml's date constructor raises ValueError
@example({}, {"model": "~nosuchuser/m"})  # Path.expanduser: RuntimeError
@example({"toward": ["x", "y"]}, {})  # str(list) became the selector "['x', 'y']"
@example({"alpha": None}, {})  # `alpha:` with no value: TypeError comparing None < 0 in TiltConfig.check
def test_config_from_yaml_and_flags_raises_only_user_errors(content, flags):
    assert classify_config(content, flags) in ("ok", "usage-error", "user-error")


@CI
@given(mappings())
def test_merge_types_every_field_like_its_default(values):
    try:
        cfg = merge(TiltConfig, values, {})
    except UsageError:
        return
    from tokentilt.config import to_flat

    defaults = to_flat(TiltConfig())
    for key, value in to_flat(cfg).items():
        assert type(value) is type(defaults[key]), key
