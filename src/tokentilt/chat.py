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

# R in chat: questions, instructions, advice, explanations and a little creative writing.
CHAT_PROMPTS = (
    "What is the tallest mountain in Africa?",
    "Explain why the sky is blue in two sentences.",
    "Write a short poem about the sea.",
    "Give me three tips for sleeping better.",
    "How do I boil an egg?",
    "What are the main differences between a frog and a toad?",
    "Summarize the story of Cinderella in one paragraph.",
    "Can you suggest a name for my new puppy?",
    "What should I pack for a weekend of camping?",
    "Translate 'good morning' into French and Spanish.",
    "Why do leaves change colour in autumn?",
    "Write a friendly email inviting my neighbours to a barbecue.",
    "What is photosynthesis?",
    "List four healthy breakfast ideas.",
    "How can I stay focused while studying?",
    "Tell me a fun fact about octopuses.",
    "What is the difference between weather and climate?",
    "Describe a sunset over a city.",
    "How do vaccines work?",
    "Give me a simple recipe for tomato soup.",
    "What are some good ways to save money each month?",
    "Write the opening line of a mystery novel.",
    "Why is exercise good for the heart?",
    "How many planets are in the solar system, and which is the largest?",
    "What is a haiku? Write one about rain.",
    "Explain what a computer program is to a child.",
    "What are the benefits of reading books?",
    "How do I make a paper aeroplane?",
    "Tell me a short story about a brave mouse.",
    "What causes earthquakes?",
    "Suggest three hobbies I could start this year.",
    "What is the water cycle?",
)

# Training contexts in chat (head-rows policy replies, model-placement exchanges): disjoint from the above.
CHAT_TRAIN_PROMPTS = (
    "What is the capital of Australia?",
    "Write a limerick about a cat.",
    "How do I change a flat tyre?",
    "Give me five words that rhyme with light.",
    "Why do we have seasons?",
    "Describe your ideal holiday.",
    "How does a rainbow form?",
    "What is a good way to learn to play the guitar?",
    "Write a thank-you note to a teacher.",
    "What are clouds made of?",
    "Explain how a bicycle works.",
    "What can I cook with rice and beans?",
    "Tell me about the history of the Olympic Games.",
    "How do bees make honey?",
    "Write a short dialogue between a robot and a child.",
    "What is gravity?",
    "Give me advice for a job interview.",
    "Why is the ocean salty?",
    "What are three things that make a good friend?",
    "Describe a forest in winter.",
    "How do I start a vegetable garden?",
    "What does a doctor do?",
    "Write a riddle and give its answer.",
    "How do birds know where to migrate?",
    "What is the difference between a virus and a bacterium?",
    "Plan a simple birthday party for a ten-year-old.",
    "Why do cats purr?",
    "Explain what electricity is.",
    "What are some tips for public speaking?",
    "Write a two-line motto for a bakery.",
    "How is paper made?",
    "What would you take to a desert island?",
)

# Held-out exchanges for perplexity and drift: the reference's replies to these, sampled once per run.
CHAT_HELD_OUT_PROMPTS = (
    "What is the largest animal on Earth?",
    "Write a short song about friendship.",
    "How do I clean a cast-iron pan?",
    "Why do stars twinkle?",
    "Give me a plan for a productive morning.",
    "What is the purpose of the moon's phases?",
    "Describe a busy market.",
    "How do plants drink water?",
    "Write a postcard from a trip to the mountains.",
    "What is democracy?",
    "How do I tie a tie?",
    "Tell me something interesting about volcanoes.",
    "What makes a good story?",
    "How do fish breathe underwater?",
    "Write a short note to cheer up a friend.",
    "What is recycling and why does it matter?",
)

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


def check_options(chat: bool, system: str) -> None:
    """--system belongs to --chat."""
    if system and not chat:
        raise ValueError("--system is a chat option; give --chat with it")
