"""P6 (sampling): tokentilt's batched KV-cache sampler against Hugging Face `generate` on the same batch.

    python benchmarks/p6_sampling.py --rounds 3 [--gguf FILE.gguf]

One R measurement's batch on the bundled model: the 16 default prompts x 4 samples, 48 new tokens
each, multinomial at temperature 1 with EOS banned (HF: min_new_tokens = max_new_tokens, top_k = 0).
The sides alternate round by round; the table gives generated tokens per second (minimum,
median and maximum over the rounds) and the ratio of the medians. With --gguf, llama.cpp
(llama-cpp-python, 2 threads) samples the same prompts' token ids from that file as a third side,
one sequence at a time as its high-level API does, 48 tokens each whatever it draws (EOS included).
Its weights are the GGUF's own type (the bundled file is Q4_1), ours are de-quantised to fp32.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from tokentilt.measurement.sampling import DEFAULT_PROMPTS, SampleConfig, sample
from tokentilt.models.load import load_model
from tokentilt.training.engine import native_bf16


def ours(model, tokenizer, per_prompt: int, new: int, bf16: bool) -> int:
    samples = sample(model, tokenizer, DEFAULT_PROMPTS, per_prompt, SampleConfig(max_new_tokens=new), 0, bf16=bf16)
    return samples.tokens.numel()


def theirs(model, tokenizer, per_prompt: int, new: int, bf16: bool) -> int:
    prompts = [p for p in DEFAULT_PROMPTS for _ in range(per_prompt)]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    tokenizer.padding_side = side
    torch.manual_seed(0)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        out = model.generate(
            **enc,
            do_sample=True,
            top_k=0,
            top_p=1.0,
            temperature=1.0,
            max_new_tokens=new,
            min_new_tokens=new,
            pad_token_id=tokenizer.pad_token_id,
        )
    return out[:, enc["input_ids"].shape[1] :].numel()


def llama_cpp(llm, prompt_ids: list[list[int]], per_prompt: int, new: int) -> int:
    generated = 0
    for p, ids in enumerate(prompt_ids):
        for s in range(per_prompt):
            llm.set_seed(1000 * p + s)
            for i, _ in enumerate(llm.generate(ids, top_k=0, top_p=1.0, min_p=0.0, temp=1.0, repeat_penalty=1.0)):
                generated += 1
                if i + 1 == new:
                    break
    return generated


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-prompt", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--gguf", default="", help="also sample this GGUF with llama.cpp (the bundled one: --gguf bundled)")
    args = ap.parse_args()
    model, tokenizer = load_model("bundled")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    bf16 = native_bf16()
    sides = {"tokentilt sample()": ours, "HF generate()": theirs}
    if args.gguf:
        from llama_cpp import Llama

        from tokentilt.models.load import BUNDLED_FILE, bundled_dir

        path = str(bundled_dir() / BUNDLED_FILE) if args.gguf == "bundled" else args.gguf
        llm = Llama(model_path=path, n_ctx=512, verbose=False, n_threads=torch.get_num_threads())
        prompt_ids = [tokenizer(p)["input_ids"] for p in DEFAULT_PROMPTS]
        sides[f"llama.cpp ({path.rsplit('/', 1)[-1]})"] = lambda m, t, k, n, b: llama_cpp(llm, prompt_ids, k, n)
    rates = {name: [] for name in sides}
    for r in range(args.rounds):
        for name, fn in sides.items():
            started = time.perf_counter()
            tokens = fn(model, tokenizer, args.per_prompt, args.new_tokens, bf16)
            rates[name].append(tokens / (time.perf_counter() - started))
            print(f"round {r + 1}: {name} {rates[name][-1]:.0f} tokens/s", flush=True)
    print(
        f"\n{args.per_prompt * len(DEFAULT_PROMPTS)} rows x {args.new_tokens} tokens, {'bf16' if bf16 else 'fp32'}, "
        f"{torch.get_num_threads()} threads\n"
    )
    print("| sampler | tokens/s min | median | max |\n|---|---|---|---|")
    for name, values in rates.items():
        print(f"| {name} | {min(values):.0f} | {statistics.median(values):.0f} | {max(values):.0f} |")
    ours_median = statistics.median(rates["tokentilt sample()"])
    for name in list(rates)[1:]:
        print(f"\ntokentilt / {name}: {ours_median / statistics.median(rates[name]):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
