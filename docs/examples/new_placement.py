"""A new placement: where the change lives. Here only the last block's MLP trains."""

from tokentilt.training.loop import frozen_copy
from tokentilt.training.placements import Objective, WholeModel
from tokentilt.training.rate import train_to_rate


class LastMLP:
    """The placement protocol (training/placements.py): model, reference, head_only, offsets, train(bias)."""

    head_only, offsets = False, None  # the body changes; no closed form for the set's logits

    def __init__(self, model, tokenizer, target, train_cfg):
        self.model, self.reference = model, frozen_copy(model)
        last = f".{model.config.num_hidden_layers - 1}.mlp."  # Llama: layers.N.mlp, GPT-2: h.N.mlp
        for name, p in model.named_parameters():
            p.requires_grad_(last in name)  # the loop trains what requires grad, nothing else
        self.loop = WholeModel(model, tokenizer, self.reference, target, Objective("tilt-distill"), train_cfg)

    def train(self, bias: float) -> list[dict]:
        return self.loop.train(bias)  # tilt-distill toward the decode-time tilt at b


def demo(model, tokenizer, target, cfg):
    """The rate rounds take any placement: train, measure R, correct b; cfg is a TiltConfig."""
    return train_to_rate(LastMLP(model, tokenizer, target, cfg.train), tokenizer, target, cfg, bias=2.0)
