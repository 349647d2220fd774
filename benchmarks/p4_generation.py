"""P4: Model 5's KV-cache sampling against Hugging Face's GPT2LMHeadModel.generate, side by side.

    python benchmarks/p4_generation.py [--rounds 5] [--batch 8] [--new-tokens 64]

The same weights in both (Model 5, converted with GPT.to_hf), the same batch of prompts, the same
length and the same sampling (multinomial, temperature 1, no top-k/top-p, end-of-text suppressed so
every row gets every token). Model 5 samples through tokentilt's generate() with its own KV-cache;
HF through model.generate(do_sample=True) with its DynamicCache. The two alternate round by round
after one warm-up each. Two sizes: Model 5's default (4 layers, width 128) and GPT-2 small's shape
(12 layers, width 768), both with the GPT-2 vocabulary. A greedy run first checks that both produce
the same tokens. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tokentilt.course.gpt import GPT, GPTConfig
from tokentilt.measurement.sampling import SampleConfig, generate

EOS = 50256
SIZES = {
    "Model 5 default (4 x 128)": GPTConfig(),
    "GPT-2 small shape (12 x 768)": GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024),
}


def ours(model, ids, new_tokens, greedy=False):
    cfg = SampleConfig(max_new_tokens=new_tokens, strategy="greedy" if greedy else "multinomial")
    return generate(model, ids, cfg=cfg, generator=torch.Generator().manual_seed(0), eos_ids=[EOS])


def theirs(hf, ids, new_tokens, greedy=False):
    torch.manual_seed(0)
    out = hf.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=not greedy,
        max_new_tokens=new_tokens,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        suppress_tokens=[EOS],
        pad_token_id=EOS,
        use_cache=True,
    )
    return out[:, ids.size(1) :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    from transformers.utils import logging

    logging.set_verbosity_error()  # top_k=0 draws a notice; it means "off", as in tokentilt
    print(
        f"batch {args.batch}, prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, fp32, "
        f"{torch.get_num_threads()} threads, {args.rounds} rounds\n"
    )
    print(
        "| model | Model 5 tokens/s | HF generate tokens/s | Model 5 / HF | greedy tokens equal |\n|---|---|---|---|---|"
    )
    for name, config in SIZES.items():
        torch.manual_seed(0)
        model = GPT(config).eval()
        hf = model.to_hf().eval()
        ids = torch.randint(0, EOS, (args.batch, args.prompt_len), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            same = torch.equal(ours(model, ids, 16, greedy=True), theirs(hf, ids, 16, greedy=True))
        times = {"ours": [], "theirs": []}
        for r in range(args.rounds + 1):
            for kind, fn, m in (("ours", ours, model), ("theirs", theirs, hf)):
                start = time.perf_counter()
                with torch.no_grad():
                    out = fn(m, ids, args.new_tokens)
                assert out.shape == (args.batch, args.new_tokens)
                if r:
                    times[kind].append(time.perf_counter() - start)
        rate = {k: args.batch * args.new_tokens / statistics.median(v) for k, v in times.items()}
        print(
            f"| {name} | {rate['ours']:.0f} | {rate['theirs']:.0f} | **{rate['ours'] / rate['theirs']:.2f}x** | "
            f"{'yes' if same else 'NO'} |"
        )


if __name__ == "__main__":
    main()
