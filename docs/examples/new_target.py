import torch

from tokentilt.targets.tokens import SetBias, token_texts


class DigitShare:
    """A new target kind (the protocol: targets/target.py): a token set's tilt, R in digit characters."""

    def __init__(self, tokenizer, vocab_size: int):
        texts = token_texts(tokenizer)[:vocab_size]
        self.selector, self.vocab_size = "digits", vocab_size
        self.mask = torch.tensor([any(c.isdigit() for c in t) for t in texts] + [False] * (vocab_size - len(texts)))
        self.size, self.share = int(self.mask.sum()), float(self.mask.float().mean())

    def describe(self) -> str:
        return f"{self.size} tokens with a digit; R = digits / characters of each sample"

    def tilt(self, logits, ids, bias):  # (B, T, V) -> float32, +b on the set
        return logits.float() + bias * self.mask.to(logits.device, torch.float32)

    def processor(self, bias):  # the sampler's decode-time tilt
        return SetBias(self.mask, bias)

    def rates(self, samples) -> torch.Tensor:  # (N,)
        return torch.tensor([sum(c.isdigit() for c in t) / max(len(t), 1) for t in samples.texts])

    def summary(self, tokenizer, bias: float) -> dict:
        return {"kind": "digit-share", "tokens": self.size}
