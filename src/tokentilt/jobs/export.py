"""The `tokentilt export` job: a run's (or any model folder's) model as a GGUF file with an ollama
Modelfile beside it, and optionally the run's decode-time tilt as a logit_bias JSON."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tokentilt.export.gguf import ExportError, export_gguf, logit_bias_map, modelfile
from tokentilt.jobs.export_config import ExportConfig
from tokentilt.models.load import load_model
from tokentilt.preflight import check_output
from tokentilt.targets.phrases import is_phrase_selector
from tokentilt.targets.tokens import resolve_set


def model_of(source: str) -> tuple[str, dict | None]:
    """A run folder -> (its model/ folder, its summary); anything else is a model name as load_model takes it."""
    path = Path(source).expanduser()
    if (path / "summary.json").is_file() and (path / "model").is_dir():
        return str(path / "model"), json.loads((path / "summary.json").read_text())
    return source, None


def check_out(path: str | None, suffix: str, what: str) -> None:
    """Refuse an output path with the wrong suffix, or one that cannot be written (preflight.check_output),
    before the model loads."""
    if path is None:
        return
    if not Path(path).name.endswith(suffix):
        raise ExportError(f"{what} must end in {suffix}, got {path!r}")
    check_output(path, "file")


def run(cfg: ExportConfig, *, echo=print, progress: bool = False) -> dict:
    """Export cfg.source (a run folder, a model folder, a .gguf or "bundled") -> {"gguf", "logit_bias", ...}.
    No progress bar: the writing is reported line by line."""
    gguf, logit_bias, toward, bias = cfg.gguf or None, cfg.logit_bias or None, cfg.toward or None, cfg.bias
    if gguf is None and logit_bias is None:
        raise ExportError("nothing to export: give --gguf OUT.gguf and/or --logit-bias OUT.json")
    check_out(gguf, ".gguf", "--gguf")
    check_out(logit_bias, ".json", "--logit-bias")
    name, summary = model_of(cfg.source)
    if logit_bias is not None:
        toward = toward or (summary or {}).get("selector")
        bias = bias if bias is not None else (summary or {}).get("bias")
        if not toward or bias is None:
            raise ExportError("--logit-bias needs --toward SELECTOR and --bias B (a tilt-distill run folder has both)")
        if is_phrase_selector(toward):
            raise ExportError(
                "--logit-bias maps token ids to a bias; a phrase list's bias depends on context "
                "(see docs/phrases.md), so it has no logit_bias form"
            )
    echo(f"loading model {name!r} ...")
    model, tokenizer = load_model(name)
    result = {"source": cfg.source}
    if gguf is not None:
        started = time.time()
        echo(f"writing {gguf} ({cfg.type}) ...")
        info = export_gguf(model, tokenizer, gguf, cfg.type, name=Path(name).name or "tokentilt")
        card = Path(gguf).with_suffix(".Modelfile")
        card.write_text(modelfile(Path(gguf).name, tokenizer))
        result.update(gguf=info, modelfile=str(card), seconds=round(time.time() - started, 1))
        echo(
            f"{gguf}: {info['bytes'] / 1e6:.1f} MB, {info['tensors']} tensors; ollama: "
            f"ollama create NAME -f {card} && ollama run NAME"
        )
    if logit_bias is not None:
        tokens = resolve_set(toward, tokenizer, model.get_output_embeddings().weight.shape[0])
        Path(logit_bias).write_text(json.dumps(logit_bias_map(tokens.mask, bias)))
        result["logit_bias"] = {"path": logit_bias, "selector": toward, "bias": bias, "tokens": tokens.size}
        echo(f"{logit_bias}: logit_bias of {bias:+.3f} on {tokens.size} tokens ({toward!r})")
    return result


def run_export(cfg: ExportConfig, echo=print) -> dict:
    """The API's name for run()."""
    return run(cfg, echo=echo)
