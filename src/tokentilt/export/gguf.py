"""Export a model where people run it: a GGUF file (llama.cpp, ollama, LM Studio), an ollama Modelfile,
and a token set's decode-time tilt as an OpenAI-style `logit_bias` map.

The file format is the `gguf` package's: its GGUFWriter writes the header, the metadata and the
tensors; its tensor name map (gguf.get_tensor_name_map) turns Hugging Face names into GGUF ones.
What is ours is only what each architecture's converter must do to the weights, the same steps that
llama.cpp's convert_hf_to_gguf.py takes and that transformers' GGUF loader undoes:
- Llama: the rows of q_proj and k_proj are permuted from the rotary layout of Hugging Face (two halves)
  to llama.cpp's (interleaved pairs), per head;
- GPT-2: Conv1D weights are stored (in, out), so they are transposed to (out, in).
1-D tensors (norms, biases) stay float32 in every type; q8_0 and q4_0 quantize the 2-D tensors whose rows
are a multiple of their 32-value block, the rest stay f16. A tied head (GPT-2, or Llama with tied embeddings)
writes no `output.weight`; an untied one (a head-rows tilt unties it) writes its own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from tokentilt.settings import DEFAULT_TYPE, TYPES  # noqa: F401 (re-exported)

ARCHITECTURES = ("llama", "gpt2")


class ExportError(ValueError):
    """A model or an output the export cannot handle (an architecture without a mapping, a bad path)."""


def _gguf():
    import gguf  # imported on use: a run that never exports never pays for it

    return gguf


def qtype_of(array: np.ndarray, kind: str):
    """The GGML type a tensor is stored in for export type `kind`."""
    T = _gguf().GGMLQuantizationType
    if array.ndim < 2 or kind == "f32":
        return T.F32
    if kind in ("q8_0", "q4_0"):  # both in blocks of 32 values per row
        return (T.Q8_0 if kind == "q8_0" else T.Q4_0) if array.shape[-1] % 32 == 0 else T.F16
    return {"f16": T.F16, "bf16": T.BF16}[kind]


def permute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face's rotary row order -> llama.cpp's, per head (transformers' GGUF loader reverses it)."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, 2, dim, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rope_theta(cfg) -> float:
    params = getattr(cfg, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))


def _hparams(writer, cfg, arch: str) -> None:
    if arch == "llama":
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        writer.add_context_length(cfg.max_position_embeddings)
        writer.add_embedding_length(cfg.hidden_size)
        writer.add_block_count(cfg.num_hidden_layers)
        writer.add_feed_forward_length(cfg.intermediate_size)
        writer.add_head_count(cfg.num_attention_heads)
        writer.add_head_count_kv(cfg.num_key_value_heads)
        writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        writer.add_rope_freq_base(_rope_theta(cfg))
        writer.add_rope_dimension_count(head_dim)
        writer.add_vocab_size(cfg.vocab_size)
    else:
        writer.add_context_length(cfg.n_positions)
        writer.add_embedding_length(cfg.n_embd)
        writer.add_block_count(cfg.n_layer)
        writer.add_feed_forward_length(cfg.n_inner or 4 * cfg.n_embd)
        writer.add_head_count(cfg.n_head)
        writer.add_layer_norm_eps(cfg.layer_norm_epsilon)


def _tokenizer(writer, tokenizer, pre: str) -> None:
    """A byte-level BPE tokenizer (GPT-2's family, SmolLM's) as GGUF metadata: tokens in id order, their
    types, the merges, the special ids and the chat template."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise ExportError(f"GGUF export handles byte-level BPE tokenizers; this one is {model.get('type')!r}")
    vocab = dict(model["vocab"])
    special = {t["content"]: t for t in spec.get("added_tokens", [])}
    for text, tok in special.items():
        vocab.setdefault(text, tok["id"])
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    for text, i in vocab.items():
        tokens[i] = text
    T = _gguf().TokenType
    types = [T.NORMAL] * size
    for text, tok in special.items():
        types[tok["id"]] = T.CONTROL if tok.get("special") else T.USER_DEFINED
    for i, text in enumerate(tokens):
        if text == f"[PAD{i}]":
            types[i] = T.UNUSED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for setter, token_id in (
        (writer.add_bos_token_id, tokenizer.bos_token_id),
        (writer.add_eos_token_id, tokenizer.eos_token_id),
        (writer.add_pad_token_id, tokenizer.pad_token_id),
        (writer.add_unk_token_id, tokenizer.unk_token_id),
    ):
        if token_id is not None:
            setter(token_id)
    writer.add_add_bos_token(False)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def _tensors(model, arch: str):
    """(GGUF name, float32 array) for every weight, transformed as the architecture's converter does."""
    gguf = _gguf()
    cfg = model.config
    name_map = gguf.get_tensor_name_map(
        gguf.MODEL_ARCH.LLAMA if arch == "llama" else gguf.MODEL_ARCH.GPT2, cfg.num_hidden_layers
    )
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    for name, tensor in model.state_dict().items():
        if name.endswith((".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")):
            continue  # buffers (GPT-2's causal mask), not weights
        if tied and name == "lm_head.weight":
            continue  # the loader ties the head to token_embd when no output.weight is written
        gguf_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ExportError(f"no GGUF name for tensor {name!r} of a {arch} model")
        w = tensor.detach().float().cpu().numpy()
        if arch == "llama" and name.endswith("self_attn.q_proj.weight"):
            w = permute_rotary(w, cfg.num_attention_heads)
        elif arch == "llama" and name.endswith("self_attn.k_proj.weight"):
            w = permute_rotary(w, cfg.num_key_value_heads)
        elif arch == "gpt2" and name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            w = w.T  # Conv1D keeps (in, out)
        yield gguf_name, np.ascontiguousarray(w)


def pre_tokenizer(tokenizer) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer (its regex split): "smollm" for the bundled
    SmolLM2 vocabulary (49,152 tokens with <|im_start|>), else "gpt-2" (GPT-2's)."""
    if len(tokenizer) == 49152 and tokenizer.convert_tokens_to_ids("<|im_start|>") == 1:
        return "smollm"
    return "gpt-2"


def export_gguf(
    model, tokenizer, out: str | Path, kind: str = DEFAULT_TYPE, name: str = "tokentilt", pre: str | None = None
) -> dict:
    """Write `model` and `tokenizer` to the GGUF file `out` (through OUT.partial, renamed when complete).
    -> {"path", "type", "bytes", "tensors"}."""
    if kind not in TYPES:
        raise ExportError(f"--type must be one of {', '.join(TYPES)}, got {kind!r}")
    arch = getattr(model.config, "model_type", None)
    if arch not in ARCHITECTURES:
        raise ExportError(f"no GGUF mapping for architecture {arch!r} (export handles: {', '.join(ARCHITECTURES)})")
    gguf = _gguf()
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(str(partial), arch)
    try:
        writer.add_name(name)
        writer.add_file_type(
            {
                "f32": gguf.LlamaFileType.ALL_F32,
                "f16": gguf.LlamaFileType.MOSTLY_F16,
                "bf16": gguf.LlamaFileType.MOSTLY_BF16,
                "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
            }[kind]
        )
        _hparams(writer, model.config, arch)
        _tokenizer(writer, tokenizer, pre or pre_tokenizer(tokenizer))
        count = 0
        for gguf_name, w in _tensors(model, arch):
            qtype = qtype_of(w, kind)
            T = gguf.GGMLQuantizationType
            if qtype in (T.F32, T.F16):
                writer.add_tensor(gguf_name, w.astype(np.float32 if qtype == T.F32 else np.float16))
            else:
                writer.add_tensor(
                    gguf_name, gguf.quants.quantize(w, qtype), raw_dtype=qtype
                )  # bytes; the shape follows
            count += 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    writer.close()
    os.replace(partial, out)
    return {"path": str(out), "type": kind, "bytes": out.stat().st_size, "tensors": count}


def logit_bias_map(mask: torch.Tensor, bias: float) -> dict[str, float]:
    """A token set's decode-time tilt in the `logit_bias` shape of OpenAI-compatible servers (vLLM,
    llama.cpp's server): {"token id": b}. OpenAI's own API clips values to [-100, 100]."""
    return {str(i): float(bias) for i in torch.nonzero(mask).flatten().tolist()}


SYSTEM_MARK, PROMPT_MARK = "\x00SYSTEM\x00", "\x00PROMPT\x00"  # stand-ins that no template writes


def modelfile(gguf_name: str, tokenizer=None) -> str:
    """An ollama Modelfile beside the GGUF: `ollama create NAME -f Modelfile`, then `ollama run NAME`.

    Sampling as tokentilt measures R: temperature 1, and ollama's top-k (40), top-p (0.9) and repeat penalty
    (1.1) turned off. A chat model's template is written out for one turn (ollama_template), with the system
    message its template adds when none is given, so that ollama formats a request as tokentilt did; a model
    without a chat template gets its prompt as plain text."""
    lines = [f"FROM ./{gguf_name}", "PARAMETER temperature 1", "PARAMETER top_k 0", "PARAMETER top_p 1"]
    lines += ["PARAMETER min_p 0", "PARAMETER repeat_penalty 1"]
    turn = ollama_template(tokenizer) if getattr(tokenizer, "chat_template", None) else None
    if turn is None:
        lines.append('TEMPLATE """{{ .Prompt }}"""')  # a base model (or a template not for one turn): plain text
        return "\n".join(lines) + "\n"
    template, system, stop = turn
    lines.append(f'TEMPLATE """{template}"""')
    if system:
        lines.append(f'SYSTEM """{system}"""')
    if stop:
        lines.append(f"PARAMETER stop {json.dumps(stop)}")
    return "\n".join(lines) + "\n"


def ollama_template(tokenizer) -> tuple[str, str, str] | None:
    """A Hugging Face chat template as ollama's one-turn Go template -> (template, default system message,
    the end-of-turn text), by rendering it with stand-ins for the system message and the prompt; None where
    the rendering does not split that way (a template that rewrites its messages)."""

    def render(messages: list[dict]) -> str:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    user = [{"role": "user", "content": PROMPT_MARK}]
    try:
        with_system = render([{"role": "system", "content": SYSTEM_MARK}] + user)
        without = render(user)
    except Exception:  # a template that refuses a system turn: no one-turn form
        return None
    if with_system.count(SYSTEM_MARK) != 1 or with_system.count(PROMPT_MARK) != 1 or without.count(PROMPT_MARK) != 1:
        return None
    head, rest = with_system.split(SYSTEM_MARK)  # head + system + between + prompt + tail
    between, tail = rest.split(PROMPT_MARK)
    opening, after_prompt = without.split(PROMPT_MARK)
    if after_prompt != tail:
        return None
    system_turn = "{{ if .System }}" + head + "{{ .System }}"
    if len(opening) >= len(head) + len(between) and opening.startswith(head) and opening.endswith(between):
        system = opening[len(head) : len(opening) - len(between)]  # the template's default system message
        template = head + "{{ .System }}" + between + "{{ .Prompt }}" + tail  # always a system turn, as here
    elif between.endswith(opening):  # no default: the system turn only when given, then the user's turn
        system = ""
        template = system_turn + between[: len(between) - len(opening)] + "{{ end }}" + opening + "{{ .Prompt }}" + tail
    else:
        return None
    eos = getattr(tokenizer, "eos_token", None)
    return template, system, eos if eos and eos in with_system else ""
