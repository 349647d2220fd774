"""Chat: prompts as user turns in the tokenizer's own chat template, and replies cut at end-of-turn.

With `--chat`, every prompt becomes a conversation [system?, user] formatted by
`tokenizer.apply_chat_template(..., add_generation_prompt=True)`, and everything tokentilt measures
(R, distinct-n, repetition, held-out perplexity and drift) is measured on the assistant's reply only:
the generated tokens before the first end-of-turn token. Special tokens never count toward R.

Three sets of user requests, pairwise disjoint: CHAT_PROMPTS (R is measured on them),
CHAT_TRAIN_PROMPTS (training contexts) and CHAT_HELD_OUT_PROMPTS (the held-out exchanges that
perplexity and drift are measured on: the reference model's own replies to them).
"""

from __future__ import annotations

import torch

from tokentilt.data.prompts import CHAT_HELD_OUT_PROMPTS, CHAT_PROMPTS, CHAT_TRAIN_PROMPTS  # noqa: F401 (re-exported)
from tokentilt.settings import check_options  # noqa: F401 (re-exported)

HELD_OUT_SEED_OFFSET = 2  # the held-out replies are drawn on eval_seed + 2 (the probe uses + 1)
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>")


class ChatTemplateError(ValueError):
    """The tokenizer has no chat template (a user error: --chat on a base model)."""


def check_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            "--chat needs a tokenizer with a chat template, and this model's has none "
            "(use an instruct/chat model, or leave --chat out)"
        )


def format_prompts(tokenizer, prompts, system: str = "") -> list[str]:
    """Each prompt as a user turn (after an optional system turn), with the assistant's generation prompt."""
    check_template(tokenizer)
    head = [{"role": "system", "content": system}] if system else []
    return [
        tokenizer.apply_chat_template(
            head + [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        for p in prompts
    ]


def end_of_turn_ids(tokenizer) -> list[int]:
    """Tokens that end the assistant's turn: the EOS token and the usual end-of-turn tokens the vocabulary has."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    ids |= {vocab[t] for t in END_OF_TURN_TOKENS if t in vocab}
    return sorted(ids)


def special_ids(tokenizer) -> list[int]:
    """Every special token of the tokenizer (the template's markers): never a word, never in R."""
    return sorted(set(tokenizer.all_special_ids) | set(end_of_turn_ids(tokenizer)))


def reply_lengths(tokens: torch.Tensor, stop_ids: list[int]) -> torch.Tensor:
    """(N, L) generated ids -> (N,) tokens before the first stop token (L when a row never stops)."""
    stop = torch.isin(tokens, torch.tensor(stop_ids, dtype=tokens.dtype))  # (N, L)
    first = torch.where(stop.any(1), stop.float().argmax(1), torch.full((len(tokens),), tokens.size(1)))
    return first.long()


def replies(tokens: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """Each row's reply ids: the first lengths[i] tokens."""
    return [row[:n].tolist() for row, n in zip(tokens, lengths.tolist())]


def exchanges(tokenizer, samples) -> list[tuple[list[int], list[int]]]:
    """Each chat sample as (context ids, reply ids): the prompt in its template, then the reply with its
    end-of-turn token when it has one."""
    return [
        (tokenizer(formatted, add_special_tokens=False)["input_ids"], row[: n + 1].tolist())
        for formatted, row, n in zip(samples.formatted, samples.tokens, samples.lengths.tolist())
    ]
