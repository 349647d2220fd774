"""A lean decoding step for Hugging Face Llama models (the bundled SmolLM2 among them).

One sampled token of the bundled model at one row took about 65 ms through `LlamaForCausalLM.forward`
on the 2-core machine of benchmarks/README.md (P8), against about 19 ms to read its weights once at
the machine's copy bandwidth. The matrix-vector products on the (out, in) weights took about 40 ms of
it; the rest was the Python of the forward's modules, its mask and cache bookkeeping, and small ops.

`LlamaDecoder` runs the prompt through the model's own body (its cache, masks and RoPE), once per
distinct prompt row, then each step through the same layers' weights with fewer ops:
- q, k and v in one matrix, gate and up in another (so 4 matrix products a layer, not 7), stored
  (in, out) for one row (`Transposed`) or packed by oneDNN for 16 rows and more (`Packed`);
- RoPE on q and k in one pass;
- the KV-cache in one buffer allocated once, written in place (no concatenation per step);
- attention over a padding mask alone (a step has one query: no causal mask to build);
- the final norm and the output head as the model's own modules, so hooks on the head (the sampler's
  recorded head inputs) and a packed head (models/packed.py) work as in the forward.

The logits agree with the forward's within fp32 rounding (tests/models/test_llama_step.py). It takes
only what it can run exactly: a `LlamaForCausalLM`, or a PEFT model of one, whose layers are Hugging
Face's own, with plain linears or LoRA ones (their weight and adapters' B·A added once per call), no
hooks inside the body, a SiLU MLP, RoPE from the model's rotary module, and no autocast. Anything
else, and any model off the CPU, goes through the forward (`generate.decoder` picks).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


def supports(model: nn.Module) -> bool:
    """Whether `LlamaDecoder` can run this model's steps exactly as its forward would."""
    try:
        from transformers.models.llama import modeling_llama as hf
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    base = _base(model)
    if type(base) is not hf.LlamaForCausalLM or getattr(base.config, "hidden_act", None) != "silu":
        return False
    body = base.model
    if type(body.rotary_emb) is not hf.LlamaRotaryEmbedding or type(body.norm) is not hf.LlamaRMSNorm:
        return False
    for layer in body.layers:
        attn, mlp = layer.self_attn, layer.mlp
        if type(layer) is not hf.LlamaDecoderLayer or type(attn) is not hf.LlamaAttention:
            return False
        if type(mlp) is not hf.LlamaMLP or {type(layer.input_layernorm), type(layer.post_attention_layernorm)} != {
            hf.LlamaRMSNorm
        }:
            return False
        if any(_part(m) is None for m in _linears(layer)):
            return False
    # a hook on the model or inside its body would not run here (the head's do: it is called as a module)
    hooked = [model, base, *body.modules()]
    return not (_global_hooks() or any(m._forward_hooks or m._forward_pre_hooks for m in hooked))


def _base(model: nn.Module) -> nn.Module:
    """The model under a PEFT wrapper (whose linears may be LoRA layers), or the model itself. Only a
    PeftModel is unwrapped: another wrapper (lora.AdapterOff) may change what its base computes."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return model
    return model.get_base_model() if isinstance(model, PeftModel) else model


class Part(NamedTuple):
    """What one linear layer computes: x·weightᵀ + bias + Σ scaling·x·Aᵀ·Bᵀ over its active LoRA adapters."""

    weight: torch.Tensor  # (out, in)
    bias: torch.Tensor | None
    adapters: list[tuple[torch.Tensor, torch.Tensor, float]]  # (A (r, in), B (out, r), scaling)


def _part(m: nn.Module) -> Part | None:
    """An nn.Linear's weight and bias, or a PEFT LoRA layer's base weight and bias with its active
    adapters (dropout is off in eval mode). Adding scaling·B·A to the weight once per call equals its
    unmerged forward within rounding. None for a layer this cannot express: DoRA and other LoRA
    variants, LoRA biases, a merged layer whose adapters are disabled."""
    if type(m) is nn.Linear:
        return Part(m.weight, m.bias, [])
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # pragma: no cover - peft is a dependency
        return None
    if type(m) is not LoraLinear or type(m.base_layer) is not nn.Linear or m.fan_in_fan_out:
        return None
    if getattr(m, "lora_variant", None) or any(m.use_dora.values()) or any(getattr(m, "lora_bias", {}).values()):
        return None
    if m.merged and m.disable_adapters:  # its forward would unmerge the weights first
        return None
    adapters = []
    if not (m.merged or m.disable_adapters):  # merged: the base weight holds them already
        adapters = [(m.lora_A[a].weight, m.lora_B[a].weight, m.scaling[a]) for a in m.active_adapters if a in m.lora_A]
    return Part(m.base_layer.weight, m.base_layer.bias, adapters)


def _global_hooks() -> bool:
    from torch.nn.modules import module

    return bool(module._global_forward_hooks or module._global_forward_pre_hooks)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the copies a `LlamaDecoder` makes: every linear weight of the body, fused and laid out anew."""
    weights = [_part(m).weight for layer in _base(model).model.layers for m in _linears(layer)]
    return sum(w.numel() * w.element_size() for w in weights)


def _linears(layer: nn.Module) -> list[nn.Linear]:
    attn, mlp = layer.self_attn, layer.mlp
    return [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]


class _Layer:
    """One decoder layer's weights for a step: fused qkv and gate-up, and its cache buffers."""

    def __init__(self, layer: nn.Module, rows: int, capacity: int, linear):
        attn, mlp = layer.self_attn, layer.mlp
        qkv, gate_up = _parts(attn.q_proj, attn.k_proj, attn.v_proj), _parts(mlp.gate_proj, mlp.up_proj)
        self.qkv, self.gate_up = linear.prepare(qkv), linear.prepare(gate_up)
        self.o, self.down = linear.prepare(_parts(attn.o_proj)), linear.prepare(_parts(mlp.down_proj))
        self.q_width, self.kv_width, self.inner = len(qkv[0].weight), len(qkv[1].weight), len(gate_up[0].weight)
        self.norm1, self.norm2 = layer.input_layernorm, layer.post_attention_layernorm
        self.head_dim, self.scaling = attn.head_dim, attn.scaling
        self.heads, self.kv_heads = self.q_width // self.head_dim, self.kv_width // self.head_dim
        w = qkv[0].weight
        shape = (rows, self.kv_heads, capacity, self.head_dim)
        self.keys = torch.zeros(shape, dtype=w.dtype, device=w.device)
        self.values = torch.zeros(shape, dtype=w.dtype, device=w.device)


def _parts(*layers: nn.Module) -> list[Part]:
    return [_part(m) for m in layers]


def _cat_bias(parts: list[Part]) -> torch.Tensor | None:
    if all(p.bias is None for p in parts):
        return None
    return torch.cat([p.weight.new_zeros(len(p.weight)) if p.bias is None else p.bias.detach() for p in parts])


def _add_adapters(fused: torch.Tensor, parts: list[Part], transposed: bool) -> torch.Tensor:
    """Add each part's scaling·B·A, in place, to its rows of the fused (out, in) weight, or to its columns
    of the fused (in, out) one: one small product each, no full-size temporary."""
    start = 0
    for p in parts:
        rows = slice(start, start + len(p.weight))
        for a, b, scaling in p.adapters:
            if transposed:
                fused[:, rows].addmm_(a.detach().t(), b.detach().t(), alpha=scaling)
            else:
                fused[rows].addmm_(b.detach(), a.detach(), alpha=scaling)
        start = rows.stop
    return fused


def _norm(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """LlamaRMSNorm in one op (equal within rounding)."""
    return F.rms_norm(x, module.weight.shape, module.weight, module.variance_epsilon)


class Transposed:
    """Weights stored (in, out): a one-row product then runs 1.3x faster than F.linear on (out, in)
    (the bundled model's body on the P8 machine: 25 against 33 ms a step). A copy of the weights."""

    def prepare(self, parts: list[Part]):
        """One product for the parts side by side: (in, sum of out) weights, their bias or None."""
        return _add_adapters(torch.cat([p.weight.detach().t() for p in parts], 1), parts, True), _cat_bias(parts)

    def __call__(self, x: torch.Tensor, prepared) -> torch.Tensor:
        weight_t, bias = prepared
        return x @ weight_t if bias is None else torch.addmm(bias, x.flatten(0, -2), weight_t).view(*x.shape[:-1], -1)


class Packed:
    """oneDNN's weights packed for `rows` rows a call (models/packed.py): for batches of 16 rows and more."""

    def __init__(self, rows: int):
        self.rows = rows

    def prepare(self, parts: list[Part]):
        weight = parts[0].weight.detach()
        if len(parts) > 1 or parts[0].adapters:  # a new tensor, which the adapters may be added to
            weight = _add_adapters(torch.cat([p.weight.detach() for p in parts]), parts, False)
        return torch.ops.mkldnn._reorder_linear_weight(weight, self.rows), _cat_bias(parts)

    def __call__(self, x: torch.Tensor, prepared) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, *prepared, "none", [], "")


class LlamaDecoder:
    """Steps of a left-padded batch of `rows` prompts, at most `capacity` tokens long in all.

    prefill(input_ids, mask, positions) -> (B, V) logits of the last position, through the model's body;
    step(ids (B, 1), mask (B, T), positions (B, 1)) -> (B, V) logits of the new position. `mask` is the
    attention mask over every token so far (prompt and new), as for the forward.
    """

    def __init__(self, model: nn.Module, rows: int, capacity: int, linear=None):
        linear = linear or Transposed()
        self.base = _base(model)  # its modules: the body for the prompt, the head and the weights for steps
        self.layers = [_Layer(layer, rows, capacity, linear) for layer in self.base.model.layers]
        self.linear = linear
        self.length = 0  # tokens in the cache

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The body runs once per distinct row (the samples of one prompt share theirs), the head on every row,
        so that its hooks see the whole batch as in a step."""
        t = input_ids.size(1)
        distinct, row_of = torch.unique(torch.cat([input_ids, mask, positions], 1), dim=0, return_inverse=True)
        ids, mask, positions = distinct.split(t, 1)
        out = self.base.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        for layer, cached in zip(self.layers, out.past_key_values.layers, strict=True):
            layer.keys[:, :, :t] = cached.keys[row_of]
            layer.values[:, :, :t] = cached.values[row_of]
        self.length = t
        return self.base.lm_head(out.last_hidden_state[row_of, -1:])[:, -1]

    @torch.no_grad()
    def step(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        body, t = self.base.model, self.length
        x = body.embed_tokens(ids)  # (B, 1, d)
        cos, sin = body.rotary_emb(x, positions)  # (B, 1, hd), as the forward computes them
        half = sin.size(-1) // 2
        # rotate_half(x)·sin = flip(x's halves)·(-sin, sin)
        cos, sin = cos[:, :, None], torch.cat((-sin[..., :half], sin[..., half:]), -1)[:, :, None]  # (B, 1, 1, hd)
        keep = mask[:, None, None, : t + 1].bool()  # (B, 1, 1, t+1): no padded key is attended to
        b = len(ids)
        for layer in self.layers:
            qkv = self.linear(_norm(layer.norm1, x), layer.qkv)  # (B, 1, (H + 2 KV)·hd)
            # RoPE on q and k together: (B, 1, H + KV, hd)
            qk = qkv[..., : layer.q_width + layer.kv_width].view(b, 1, -1, layer.head_dim)
            qk = qk * cos + qk.unflatten(-1, (2, half)).flip(-2).flatten(-2) * sin
            q, k = qk.transpose(1, 2).split([layer.heads, layer.kv_heads], 1)  # (B, H, 1, hd), (B, KV, 1, hd)
            layer.keys[:, :, t : t + 1] = k
            layer.values[:, :, t : t + 1] = (
                qkv[..., layer.q_width + layer.kv_width :].view(b, 1, -1, layer.head_dim).transpose(1, 2)
            )
            a = F.scaled_dot_product_attention(
                q,
                layer.keys[:, :, : t + 1],
                layer.values[:, :, : t + 1],
                attn_mask=keep,
                scale=layer.scaling,
                enable_gqa=True,
            )  # (B, H, 1, hd)
            x = x + self.linear(a.transpose(1, 2).reshape(b, 1, -1), layer.o)
            gate, up = self.linear(_norm(layer.norm2, x), layer.gate_up).split(layer.inner, -1)
            x = x + self.linear(F.silu(gate) * up, layer.down)
        self.length = t + 1
        return self.base.lm_head(body.norm(x))[:, -1]  # the modules, so the head's hooks run
