"""An independent count of R in chat: Hugging Face `generate` on the chat-formatted requests, counted here.

    python scripts/chat_check.py runs/chat-x/model --toward x --samples 2
    python scripts/chat_check.py runs/chat-words/model --words benchmarks/phrases/toward.txt --samples 2

Shares with tokentilt only the list of requests and the model loader (the bundled model arrives as a
GGUF). The prompts are formatted by the tokenizer's own `apply_chat_template`, sampled with
`model.generate` (temperature 1, no top-k or top-p, stopping at the tokenizer's EOS), and R is counted
here: the share of reply tokens, before the end-of-turn token, whose decoded text contains the letter
(case-insensitive), special tokens excluded. The interval is a normal one over samples, so it
differs slightly from tokentilt's Student-t one; the seeds differ too, so agreement means overlapping
intervals, not equal numbers.

With --words FILE, R is the share of reply *words* that are entries of the list, by the word rule of
docs/phrases.md written out again here: a word is a run of letters and digits with apostrophes
inside, an entry is its own word sequence, case is folded, and a multi-word entry counts once per
occurrence, longest entries first, without overlaps. The reply is decoded without special tokens.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
from pathlib import Path

import torch

from tokentilt.data.chat import CHAT_PROMPTS
from tokentilt.models.load import load_model

WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")


def word_rate(text: str, entries: list[tuple[str, ...]]) -> float | None:
    """Share of the text's words that are entries (None without words); entries longest first."""
    words = [w.casefold() for w in WORD.findall(text)]
    hits, i = 0, 0
    while i < len(words):
        match = next((e for e in entries if tuple(words[i : i + len(e)]) == e), None)
        hits, i = (hits + 1, i + len(match)) if match else (hits, i + 1)
    return hits / len(words) if words else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model folder, a .gguf, or 'bundled'")
    parser.add_argument("--toward", default="x", help="a letter or substring; R counts reply tokens containing it")
    parser.add_argument("--words", default="", help="a word list file; R counts reply words that are its entries")
    parser.add_argument("--samples", type=int, default=2, help="replies per request")
    parser.add_argument("--new-tokens", type=int, default=48, help="at most this many reply tokens")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model, tokenizer = load_model(args.model)
    model.eval()
    torch.manual_seed(args.seed)
    special = set(tokenizer.all_special_ids)
    lines = Path(args.words).read_text().splitlines() if args.words else []
    # as tokentilt reads a list: blank lines and lines starting with '#' (after spaces) are skipped; an entry
    # without a word would match everywhere, and tokentilt refuses it, so it is left out here
    keys = {tuple(w.casefold() for w in WORD.findall(line)) for line in lines if not line.lstrip().startswith("#")}
    entries = sorted(keys - {()}, key=len, reverse=True)
    rates = []
    for request in CHAT_PROMPTS:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": request}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=args.new_tokens,
                num_return_sequences=args.samples,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.eos_token_id,
            )
        for row in out[:, ids.size(1) :].tolist():
            reply = row[: row.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in row else row
            if entries:
                rate = word_rate(tokenizer.decode(reply, skip_special_tokens=True), entries)
                if rate is not None:
                    rates.append(rate)
            elif reply:
                hits = sum(i not in special and args.toward.lower() in tokenizer.decode([i]).lower() for i in reply)
                rates.append(hits / len(reply))
    mean = statistics.fmean(rates)
    half = 1.96 * statistics.stdev(rates) / math.sqrt(len(rates))
    print(f"R = {mean:.3f} [{mean - half:.3f}, {mean + half:.3f}] over {len(rates)} replies (HF generate)")


if __name__ == "__main__":
    main()
