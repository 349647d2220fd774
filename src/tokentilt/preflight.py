"""Checks of user input that need no model in memory, run before the slow part of a command.

Each raises config.UsageError with one line. They repeat nothing the config dataclasses already
check; they cover what those cannot see: the model's context length (read from its config.json,
not its weights), sampling settings, and whether the output path can be written at all.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

from tokentilt.config import UsageError
from tokentilt.data.textfiles import read_text_file
from tokentilt.runs.folder import RunFolder
from tokentilt.targets.selectors import check_syntax, token_selector_only

# SmolLM2-135M-Instruct's context (llama.context_length in the bundled GGUF; test_preflight checks
# it). Reading it from the file takes ~5 s of GGUF parsing, which an early check should not cost.
BUNDLED_CONTEXT = 8192
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length")


def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
    if not (math.isfinite(temperature) and temperature > 0):
        raise UsageError(f"temperature must be a positive number, got {temperature!r}")
    if top_k < 0:
        raise UsageError(f"top-k must be >= 0 (0 = off), got {top_k!r}")
    if not 0 < top_p <= 1:  # also refuses NaN
        raise UsageError(f"top-p must be in (0, 1] (1 = off), got {top_p!r}")


def model_context(name: str) -> int | None:
    """The longest sequence the model takes, from its config alone; None if that cannot be told cheaply."""
    if name == "bundled":
        return BUNDLED_CONTEXT
    try:
        folder = Path(name).expanduser()
    except RuntimeError:  # '~nosuchuser/model': pathlib cannot find that home folder
        raise UsageError(f"model folder not found: {name} (no home folder for {name.split('/')[0]})") from None
    config = folder / "config.json"
    if folder.is_dir() and config.is_file():
        try:
            values = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # load_model reports the corrupt file with its own message
        if isinstance(values, dict):
            for key in CONTEXT_KEYS:
                if isinstance(values.get(key), int) and values[key] > 0:
                    return values[key]
    return None  # a hub id: its config may not even be cached; the model load decides


def check_lengths(model: str, **lengths: int) -> None:
    """Refuse a sequence length beyond the model's context (seq_len=..., eval_seq_len=...); with no
    lengths, only a model name that cannot name anything."""
    context = model_context(model)
    if context is None:
        return
    for name, n in lengths.items():
        if n is not None and n > context:
            raise UsageError(f"{name.replace('_', '-')} {n} is beyond the model's context of {context} tokens")


def check_output(out: str | Path, kind: str = "folder") -> None:
    """`out` (a folder, or a file with kind="file") can be created: it is not the wrong kind of thing,
    and its nearest existing parent is a folder that this process can write into."""
    out = Path(out).expanduser()
    if out.exists():
        if kind == "folder" and not out.is_dir():
            raise UsageError(f"output path exists and is not a folder: {out}")
        if kind == "file" and out.is_dir():
            raise UsageError(f"output path is a folder, not a file: {out}")
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"cannot create {out}: {parent} is not a folder")
    if kind == "file" and parent != out.absolute().parent:
        raise UsageError(f"cannot write {out}: folder {out.absolute().parent} does not exist")
    try:  # os.access says yes to root even where the file system refuses, so try it
        probe = tempfile.mkdtemp(prefix=".tokentilt-probe-", dir=parent)
    except OSError as err:
        raise UsageError(f"cannot create {out}: {parent} is not writable ({err.strerror or err})") from None
    shutil.rmtree(probe, ignore_errors=True)


def check_prompts(prompts) -> None:
    if prompts is not None and not all(isinstance(p, str) and p.strip() for p in prompts):
        raise UsageError("prompts must be non-empty text")


def preflight_audit(cfg) -> None:
    """Everything about an audit (a jobs/audit_config.AuditConfig) that can be refused before a model is loaded,
    each as one line."""
    if not cfg.model:
        raise UsageError("audit needs the model to audit: tokentilt audit MODEL --reference BASE")
    cfg.check()
    if cfg.toward:
        token_selector_only(cfg.toward, "audit")
        check_syntax(cfg.toward)
    for path in cfg.words:
        check_syntax(f"words:{path}")  # reads the file: missing, empty, binary
    if cfg.eval_text:
        read_text_file(cfg.eval_text)
    for name in dict.fromkeys((cfg.model, cfg.reference)):
        check_lengths(name, eval_seq_len=cfg.eval_seq_len, new_tokens=cfg.new_tokens)
    check_output(cfg.out)
    RunFolder(cfg.out, overwrite=cfg.overwrite)  # refuses a folder that holds a run, or is not ours
