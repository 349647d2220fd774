"""LoRA through PEFT: train a low-rank adapter instead of every weight.

The frozen base doubles as tilt-distill's reference (the same model with its adapter switched
off), so the weights are held once. A run saves the adapter (`adapter/`, for
`PeftModel.from_pretrained(base, dir)`) and the merged model (`model/`, plain transformers).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tokentilt.settings import DEFAULT_LR, LoraArgs  # noqa: F401 (re-exported)


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
