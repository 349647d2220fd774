"""Model 5: a compact GPT-2 built from scratch, with a KV-cache and two-way conversion to HF GPT-2.

Module names follow GPT-2's (`transformer.h.0.attn.c_attn`, ...) so that converting to and from
Hugging Face's `GPT2LMHeadModel` is a rename-free copy; only HF's Conv1D weights need a transpose.

The forward pass speaks the same language as a Hugging Face causal LM:
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=past, use_cache=True)
    out.logits           # (B, T, V), float32
    out.past_key_values  # feed back unchanged on the next call
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers.modeling_outputs import CausalLMOutputWithPast

if TYPE_CHECKING:  # importing HF's GPT-2 costs seconds; only the conversions need it
    from transformers import GPT2LMHeadModel

# One (key, value) pair per layer, each (B, n_head, T_past, head_dim).
KVCache = tuple[tuple[torch.Tensor, torch.Tensor], ...]

CONFIG_FILE = "gpt_config.json"
WEIGHTS_FILE = "gpt.safetensors"


@dataclass
class GPTConfig:
    vocab_size: int = 50257  # GPT-2's BPE vocabulary; the last id is <|endoftext|>
    block_size: int = 256  # longest context (past + current tokens) the position table covers
    n_layer: int = 4  # transformer blocks; small so a 2-core CPU trains it in minutes
    n_head: int = 4  # attention heads per block; must divide n_embd
    n_embd: int = 128  # width of the residual stream
    dropout: float = 0.0  # on embeddings, attention weights and residual branches (training only)
    bias: bool = True  # biases in Linear and LayerNorm layers, as in GPT-2
    layer_norm_epsilon: float = 1e-5  # LayerNorm's epsilon, GPT-2's value

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, past: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x: (B, T, C); mask: None for plain causal, else bool (B or 1, 1, T, S), True = may attend."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, D)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, D)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)  # (B, H, S, D)
            v = torch.cat([past[1], v], dim=2)  # (B, H, S, D)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            # SDPA's built-in causal mask is aligned top-left, which is right only when there is no
            # cache; with one, the caller passes an explicit mask.
            is_causal=mask is None,
        )  # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y)), (k, v)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"; exact erf GELU would not match its weights
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C)


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, mask, past):
        # Pre-LN: the residual stream itself is never normalised, which keeps deep stacks trainable.
        a, kv = self.attn(self.ln_1(x), mask, past)
        x = x + a  # (B, T, C)
        x = x + self.mlp(self.ln_2(x))  # (B, T, C)
        return x, kv


class GPT(nn.Module):
    def __init__(self, config: GPTConfig | None = None):
        super().__init__()
        self.config = config = config or GPTConfig()
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: reading a token and writing it share one matrix, as in GPT-2 (and it halves
        # the parameter count of a small model, most of which is this matrix).
        self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # Each block adds two residual branches; shrinking their output projections keeps the
        # residual stream's variance from growing with depth (GPT-2 paper, section 2.3).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    # --- HF-style conveniences, so shared code can treat this like a transformers model ---

    @property
    def device(self) -> torch.device:
        return self.transformer.wte.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.wte.weight.dtype

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Parameter count; the tied head is counted once. Optionally without the two embedding tables."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.transformer.wte.weight.numel() + self.transformer.wpe.weight.numel()
        return n

    # --- forward ---

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,  # accepted for HF compatibility; we always return the dataclass
        logits_to_keep: int = 0,
    ) -> CausalLMOutputWithPast:
        """input_ids: (B, T) token ids.
        attention_mask: (B, T_past + T) of 1 (real) / 0 (padding); padded keys are never attended to.
        position_ids: (B, T); if None they are counted from the attention mask (so left padding is
            handled), or, without a mask, continue from the cache length.
        past_key_values: the previous call's `past_key_values`, or None.
        labels: (B, T) ids, -100 = ignore; if given, `loss` is the next-token cross-entropy (shift inside).
        logits_to_keep: compute logits for the last n positions only (0 = all), as HF models do;
            sampling needs only the last, and the head is most of a small model's cost.
        Returns logits (B, T, V) in float32, past_key_values if use_cache, and loss if labels.
        """
        B, T = input_ids.shape
        past_len = past_key_values[0][0].shape[2] if past_key_values else 0
        S = past_len + T
        device = input_ids.device
        if past_key_values is not None and len(past_key_values) != self.config.n_layer:
            raise ValueError(f"past_key_values has {len(past_key_values)} layers, model has {self.config.n_layer}")
        if attention_mask is not None and tuple(attention_mask.shape) != (B, S):
            raise ValueError(
                f"attention_mask must cover past + current tokens: expected shape {(B, S)}, "
                f"got {tuple(attention_mask.shape)}"
            )

        if position_ids is None:
            if attention_mask is not None:
                # A real token's position is the number of real tokens before it, so a left-padded
                # row gets the same positions as the same text unpadded. Pads get 0 (never used).
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past_len:]  # (B, T)
            else:
                position_ids = torch.arange(past_len, S, device=device).unsqueeze(0)  # (1, T)
        if position_ids.numel() and int(position_ids.max()) >= self.config.block_size:
            raise ValueError(
                f"position {int(position_ids.max())} is beyond block_size={self.config.block_size}; "
                "shorten the input or generate fewer tokens"
            )

        mask = self._attention_mask(attention_mask, past_len, T, device)
        x = self.transformer.wte(input_ids) + self.transformer.wpe(position_ids)  # (B, T, C)
        x = self.transformer.drop(x)
        new_past = []
        for i, block in enumerate(self.transformer.h):
            x, kv = block(x, mask, past_key_values[i] if past_key_values else None)  # (B, T, C)
            new_past.append(kv)
        x = self.transformer.ln_f(x)  # (B, T, C)
        # Float32 logits even under bf16 autocast: log-softmax and KL over 50k tokens need the digits.
        if logits_to_keep:
            if labels is not None:
                raise ValueError("labels need the logits of every position (logits_to_keep=0)")
            x = x[:, -logits_to_keep:]  # (B, n, C)
        logits = self.lm_head(x).float()  # (B, T or n, V)

        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)),  # (B*(T-1), V): position t predicts token t+1
                labels[:, 1:].reshape(-1),  # (B*(T-1),)
                ignore_index=-100,
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=tuple(new_past) if use_cache else None)

    @staticmethod
    def _attention_mask(
        attention_mask: torch.Tensor | None, past_len: int, T: int, device: torch.device
    ) -> torch.Tensor | None:
        """None when the fused causal kernel suffices, else bool (B or 1, 1, T, past_len + T)."""
        padded = attention_mask is not None and not bool(attention_mask.all())
        if not padded and past_len == 0:
            return None
        q_pos = torch.arange(past_len, past_len + T, device=device).unsqueeze(1)  # (T, 1)
        k_pos = torch.arange(past_len + T, device=device).unsqueeze(0)  # (1, S)
        allowed = k_pos <= q_pos  # (T, S)
        if padded:
            real = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
            # A pad query whose every earlier key is a pad would have an empty row, and softmax over
            # nothing is NaN; letting each query see itself keeps pad rows finite (their output is unused).
            allowed = (allowed & real) | (k_pos == q_pos)  # (B, 1, T, S)
        else:
            allowed = allowed[None, None]  # (1, 1, T, S)
        return allowed

    # --- conversion to and from Hugging Face GPT-2 ---

    @classmethod
    def from_hf(cls, hf_model: GPT2LMHeadModel) -> GPT:
        """An equivalent GPT from a transformers GPT2LMHeadModel (weights copied, same dtype and device)."""
        c = hf_model.config
        if c.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"Model 5 uses tanh GELU; this GPT-2 uses {c.activation_function!r}")
        if c.n_inner not in (None, 4 * c.n_embd):
            raise ValueError(f"Model 5 uses a 4x MLP; this GPT-2 has n_inner={c.n_inner}")
        if not c.scale_attn_weights or c.scale_attn_by_inverse_layer_idx:
            raise ValueError("Model 5 scales attention by 1/sqrt(head_dim) only; this GPT-2 scales differently")
        if not torch.equal(hf_model.lm_head.weight, hf_model.transformer.wte.weight):
            raise ValueError("Model 5 ties its head to the token embedding; this GPT-2's head is untied")
        config = GPTConfig(
            vocab_size=c.vocab_size,
            block_size=c.n_positions,
            n_layer=c.n_layer,
            n_head=c.n_head,
            n_embd=c.n_embd,
            dropout=c.resid_pdrop,
            bias=True,
            layer_norm_epsilon=c.layer_norm_epsilon,
        )
        ref = hf_model.transformer.wte.weight
        model = cls(config).to(device=ref.device, dtype=ref.dtype)
        missing, unexpected = model.load_state_dict(_transpose_conv1d(hf_model.state_dict()), strict=False)
        if unexpected or set(missing) - {"lm_head.weight"}:
            raise ValueError(f"not a plain GPT-2: missing {missing}, unexpected {unexpected}")
        model.train(hf_model.training)
        return model

    def to_hf(self) -> GPT2LMHeadModel:
        """A transformers GPT2LMHeadModel with the same weights; `.save_pretrained(dir)` writes safetensors."""
        from transformers import GPT2Config, GPT2LMHeadModel

        c = self.config
        hf_config = GPT2Config(
            vocab_size=c.vocab_size,
            n_positions=c.block_size,
            n_embd=c.n_embd,
            n_layer=c.n_layer,
            n_head=c.n_head,
            n_inner=None,
            activation_function="gelu_new",
            resid_pdrop=c.dropout,
            embd_pdrop=c.dropout,
            attn_pdrop=c.dropout,
            layer_norm_epsilon=c.layer_norm_epsilon,
            tie_word_embeddings=True,
            # GPT-2 puts <|endoftext|> last; keep that for smaller vocabularies too.
            bos_token_id=c.vocab_size - 1,
            eos_token_id=c.vocab_size - 1,
        )
        hf = GPT2LMHeadModel(hf_config).to(device=self.device, dtype=self.dtype)
        state = _transpose_conv1d(self.state_dict())  # the transpose is its own inverse
        if not c.bias:
            # GPT-2 always has biases; zeros reproduce a bias-free model exactly.
            for name, p in hf.state_dict().items():
                if name.endswith(".bias") and name not in state:
                    state[name] = torch.zeros_like(p)
        missing, unexpected = hf.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"lm_head.weight"}:
            raise RuntimeError(f"weight mismatch converting to GPT-2: missing {missing}, unexpected {unexpected}")
        hf.tie_weights()
        hf.train(self.training)
        return hf

    # --- native checkpoint: safetensors weights + JSON config (never pickle) ---

    def save(self, path: str | Path) -> None:
        """Write `gpt_config.json` and `gpt.safetensors` into the folder `path`."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(self.config), indent=2) + "\n")
        # safetensors refuses shared tensors, so the tied head is stored once, as the embedding.
        state = {k: v.contiguous() for k, v in self.state_dict().items() if k != "lm_head.weight"}
        save_file(state, str(path / WEIGHTS_FILE))

    @classmethod
    def load(cls, path: str | Path) -> GPT:
        """Load a folder written by `save`, or a Hugging Face GPT-2 folder (via `from_hf`)."""
        path = Path(path)
        if not (path / CONFIG_FILE).is_file() and (path / "config.json").is_file():
            from transformers import GPT2LMHeadModel

            return cls.from_hf(GPT2LMHeadModel.from_pretrained(path))
        try:
            config = GPTConfig(**json.loads((path / CONFIG_FILE).read_text()))
            state = load_file(str(path / WEIGHTS_FILE))
        except FileNotFoundError as e:
            raise FileNotFoundError(f"no Model 5 checkpoint in {path}: missing {Path(e.filename).name}") from None
        except (SafetensorError, json.JSONDecodeError, TypeError) as e:
            raise ValueError(f"corrupt Model 5 checkpoint in {path}: {e}") from None
        model = cls(config)
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # a tensor whose shape disagrees with the config
            raise ValueError(f"corrupt Model 5 checkpoint in {path}: {e}") from None
        if unexpected or set(missing) - {"lm_head.weight"}:
            raise ValueError(f"corrupt Model 5 checkpoint in {path}: missing {missing}, unexpected {unexpected}")
        return model


_CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _transpose_conv1d(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF GPT-2 stores these projections as Conv1D, (in, out); nn.Linear is (out, in)."""
    out = {}
    for name, tensor in state.items():
        if name == "lm_head.weight":
            continue  # tied: it arrives as transformer.wte.weight
        out[name] = tensor.t().contiguous() if name.endswith(_CONV1D_SUFFIXES) else tensor
    return out
