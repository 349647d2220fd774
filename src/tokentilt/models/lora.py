"""LoRA through PEFT: train a low-rank adapter instead of every weight.

The frozen base doubles as tilt-distill's reference (the same model with its adapter switched
off), so the weights are held once. A run saves the adapter (`adapter/`, for
`PeftModel.from_pretrained(base, dir)`) and the merged model (`model/`, plain transformers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

DEFAULT_LR = 2e-3  # the learning rate --lora uses unless --lr is given; the R it reaches, beside other
# learning rates, is measured in docs/training-engine.md (the LoRA table), not claimed here


@dataclass
class LoraArgs:
    """Where the change lives: every weight (lora off) or a LoRA adapter."""

    lora: bool = False  # train a LoRA adapter (PEFT) instead of every weight; writes adapter/ and model/ (merged)
    lora_r: int = 16  # LoRA rank
    lora_alpha: float = 32.0  # LoRA alpha; the update is scaled by alpha/r
    lora_dropout: float = 0.0  # dropout on the adapter's input
    lora_targets: str = (
        "all-linear"  # comma-separated module names, or all-linear = every linear layer of attention and MLP
    )

    def check(self) -> None:
        if not self.lora:
            return
        if not (isinstance(self.lora_r, int) and self.lora_r > 0):
            raise ValueError(f"lora-r must be a positive integer, got {self.lora_r!r}")
        if not self.lora_alpha > 0:
            raise ValueError(f"lora-alpha must be positive, got {self.lora_alpha!r}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora-dropout must be in [0, 1), got {self.lora_dropout!r}")
        if not self.targets():
            raise ValueError("lora-targets names no module")

    def targets(self) -> str | list[str]:
        if self.lora_targets.strip() == "all-linear":
            return "all-linear"
        return [t.strip() for t in self.lora_targets.split(",") if t.strip()]


def add_adapter(model, args: LoraArgs, seed: int = 0):
    """Wrap `model` in a PEFT model whose only trainable weights are a fresh LoRA adapter.
    Its random initialisation (lora_A) comes from `seed`, so a run is reproducible."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=args.targets(),
        task_type="CAUSAL_LM",
    )
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return get_peft_model(model, config)
    except ValueError as err:  # e.g. a target module that the model does not have
        raise ValueError(f"cannot add a LoRA adapter: {str(err).splitlines()[0]}") from None


class AdapterOff(torch.nn.Module):
    """The base of a PEFT model, as a frozen reference: its forward runs with the adapter disabled."""

    def __init__(self, peft_model):
        super().__init__()
        self.peft_model = [peft_model]  # a list, so the weights are not registered (held) twice

    def forward(self, **kwargs):
        with self.peft_model[0].disable_adapter():
            return self.peft_model[0](**kwargs)

    def parameters(self, recurse: bool = True):
        return self.peft_model[0].parameters(recurse)

    def get_output_embeddings(self):
        return self.peft_model[0].get_output_embeddings()  # the same head as the trained model's

    def get_base_model(self):
        return self.peft_model[0].get_base_model()  # whose forward tells which arguments it takes

    def to(self, *args, **kwargs):
        return self  # lives wherever the trained model lives


def param_counts(model) -> dict:
    """{"trainable_params", "total_params"} (tied weights counted once)."""
    params = list(model.parameters())
    return {
        "trainable_params": sum(p.numel() for p in params if p.requires_grad),
        "total_params": sum(p.numel() for p in params),
    }


def save_adapter_and_merged(peft_model, tokenizer, folder: Path):
    """Write folder/adapter (PEFT) and folder/model (merged, plain transformers); return the merged model."""
    from tokentilt.models.load import save_model

    peft_model.save_pretrained(folder / "adapter", save_embedding_layers=False)  # LoRA weights only
    merged = peft_model.merge_and_unload()
    save_model(merged, tokenizer, folder / "model")
    return merged
