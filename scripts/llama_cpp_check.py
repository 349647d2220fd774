"""R of an exported GGUF sampled by llama.cpp itself (llama-cpp-python), an independent path from tokentilt's
sampler: llama.cpp reads the file, runs the model and draws the tokens; this script only counts them.

    python scripts/llama_cpp_check.py runs/export/x-05.q8_0.gguf runs/export/x-05.f16.gguf --toward x

Each prompt of tokentilt's 16 (as the same token ids, no BOS added) gets --samples-per-prompt continuations
of --new-tokens tokens at temperature 1 with top-k, top-p and min-p off (pure sampling, as tokentilt
samples), each from its own seed, stopping at end-of-text. R is the share of generated tokens in the set,
with the same 95% interval over samples as `tokentilt eval`. Needs llama-cpp-python: `pip install -e ".[llamacpp]"` (compiled from source).
"""

from __future__ import annotations

import argparse
import time

import torch


def sample_r(
    path: str, prompts: list[list[int]], mask: torch.Tensor, samples: int, new_tokens: int, seed: int, eos: int | None
) -> tuple[dict, float]:
    from llama_cpp import Llama

    from tokentilt.measurement.metrics import mean_ci

    llm = Llama(model_path=path, n_ctx=512, verbose=False, n_threads=2, seed=seed)
    start, rates = time.time(), []
    for p, ids in enumerate(prompts):
        for s in range(samples):
            llm.set_seed(seed + 1000 * p + s)
            out = []
            for token in llm.generate(ids, top_k=0, top_p=1.0, min_p=0.0, temp=1.0, repeat_penalty=1.0):
                if token == eos:
                    break
                out.append(token)
                if len(out) == new_tokens:
                    break
            rates.append(float(mask[out].float().mean()) if out else float("nan"))  # no tokens: no rate
    return mean_ci(torch.tensor(rates)), time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gguf", nargs="+", help="GGUF files to sample")
    parser.add_argument("--toward", default="x", help="selector of the token set")
    parser.add_argument("--tokenizer", default="bundled", help="the model whose tokenizer names the ids")
    parser.add_argument("--samples-per-prompt", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from tokentilt.measurement.sampling import DEFAULT_PROMPTS
    from tokentilt.models.load import load_model
    from tokentilt.targets.tokens import resolve_set

    model, tokenizer = load_model(args.tokenizer)
    mask = resolve_set(args.toward, tokenizer, model.get_output_embeddings().weight.shape[0]).mask
    del model
    prompts = [tokenizer(p)["input_ids"] for p in DEFAULT_PROMPTS]
    n = len(prompts) * args.samples_per_prompt
    print(f"| GGUF | R over {n} llama.cpp samples [95% CI] | seconds |\n|---|---|---|")
    for path in args.gguf:
        ci, seconds = sample_r(
            path, prompts, mask, args.samples_per_prompt, args.new_tokens, args.seed, tokenizer.eos_token_id
        )
        print(f"| `{path}` | {ci['mean']:.3f} [{ci['ci_low']:.3f}, {ci['ci_high']:.3f}] | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
