"""`tokentilt generate`'s settings (jobs/generate.py), without torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tokentilt.settings import SampleConfig


@dataclass
class GenerateConfig:
    """`tokentilt generate`: samples from a model, optionally with a decode-time bias on a token set."""

    model: str = "bundled"  # model to load: 'bundled' (SmolLM2-135M-Instruct, offline), a local HF folder, or a hub id
    prompt: list[str] = field(default_factory=list)  # prompt (repeat for several); none = the 16 built-in prompts
    # (with --chat, the 32 built-in requests)
    samples: int = 1  # samples per prompt
    new_tokens: int = SampleConfig.max_new_tokens  # tokens generated per sample
    strategy: Literal["greedy", "multinomial"] = SampleConfig.strategy  # greedy argmax or sampling
    temperature: float = SampleConfig.temperature  # sampling temperature
    top_k: int = SampleConfig.top_k  # top-k sampling, 0 = off
    top_p: float = SampleConfig.top_p  # nucleus sampling, 1.0 = off
    toward: str = ""  # selector of the token set for --bias and for counting R
    bias: float = 0.0  # decode-time logit bias on the set
    seed: int = 0  # sampling seed
    bf16: bool = False  # bf16 autocast on CPU
    chat: bool = False  # each prompt as a user turn in the model's chat template; the reply, cut at end-of-turn
    system: str = ""  # chat: a system message before each user turn

    def sample_config(self) -> SampleConfig:
        """How each next token is picked."""
        return SampleConfig(
            max_new_tokens=self.new_tokens,
            strategy=self.strategy,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
        )
