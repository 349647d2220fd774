"""R of an exported GGUF sampled by llama.cpp itself (llama-cpp-python), an independent path from tokentilt's
sampler: llama.cpp reads the file, runs the model and draws the tokens; this script only counts them.

Raw text, a token set (tokentilt's 16 prompts, as the same token ids, no BOS added):

    python scripts/llama_cpp_check.py runs/export/x-05.q8_0.gguf runs/export/x-05.f16.gguf --toward x

Each prompt gets --samples-per-prompt continuations of --new-tokens tokens at temperature 1 with top-k,
top-p and min-p off (pure sampling, as tokentilt samples), each from its own seed, stopping at end-of-text.
R is the share of generated tokens in the set, with the same 95% interval over samples as `tokentilt eval`.

Chat, the measurement of a run (`--run RUN`: its selector, its requests, its reply length, as many samples as
its R took, from its config.yaml and summary.json):

    python scripts/llama_cpp_check.py runs/base.q8_0.gguf runs/demo.q8_0.gguf --run runs/demo

Each of the run's requests goes through llama.cpp's own chat completion (create_chat_completion), which formats
it with the chat template in the GGUF's metadata, and the replies are counted by the run's own rule (a phrase
list: the word rule of `phrases:`, on the reply text). The table says whether each R lies inside the run's
interval before training and after it.

Needs llama-cpp-python: `pip install -e ".[llamacpp]"` (compiled from source).
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


def chat_r(path: str, prompts: list[str], target, samples: int, new_tokens: int, seed: int, system: str):
    """R of the replies llama.cpp's chat completion gives to each prompt (`samples` each, each on its own seed),
    counted by target.rates on the reply texts -> (mean_ci, seconds, the replies)."""
    from llama_cpp import Llama

    from tokentilt.measurement.metrics import mean_ci

    llm = Llama(model_path=path, n_ctx=1024, verbose=False, n_threads=2, seed=seed)
    if "tokenizer.chat_template" not in llm.metadata:
        raise SystemExit(f"{path} has no chat template in its metadata: export it from a chat model")
    start, texts = time.time(), []
    head = [{"role": "system", "content": system}] if system else []
    for p, prompt in enumerate(prompts):
        for s in range(samples):
            out = llm.create_chat_completion(
                head + [{"role": "user", "content": prompt}],
                max_tokens=new_tokens,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                min_p=0.0,
                repeat_penalty=1.0,
                seed=seed + 1000 * p + s,
            )
            texts.append(out["choices"][0]["message"]["content"] or "")
    return mean_ci(target.rates(texts)), time.time() - start, texts


def run_settings(run: str) -> tuple[dict, dict]:
    """A tilt run folder's config.yaml and summary.json."""
    import json
    from pathlib import Path

    import yaml

    folder = Path(run)
    return yaml.safe_load((folder / "config.yaml").read_text()), json.loads((folder / "summary.json").read_text())


def main_chat(args) -> None:
    from tokentilt.models.load import load_model
    from tokentilt.targets.phrases import is_phrase_selector, resolve_phrases

    cfg, summary = run_settings(args.run)
    if not cfg.get("chat") or not is_phrase_selector(cfg["toward"]):
        raise SystemExit("--run takes a chat run with a phrase list (--chat --toward phrases:...)")
    model, tokenizer = load_model(args.tokenizer)
    target = resolve_phrases(cfg["toward"], tokenizer, model.get_output_embeddings().weight.shape[0])
    del model
    prompts, after = cfg["prompts"], summary["rate_after"]
    per_prompt = args.samples_per_prompt or -(-after["n"] // len(prompts))
    n = per_prompt * len(prompts)
    before = summary["rate_before"]
    print(f"tokentilt's R ({args.run}): before {fmt(before)}, {before['n']} samples; after {fmt(after)}, {after['n']}")
    print(
        f"| GGUF | R over {n} llama.cpp chat replies [95% CI] | per 1,000 words | in tokentilt's interval: "
        "before / after | seconds |"
    )
    print("|---|---|---|---|---|")
    for path in args.gguf:
        ci, seconds, texts = chat_r(
            path, prompts, target, per_prompt, int(cfg["new_tokens"]), args.seed, cfg.get("system") or ""
        )
        hits = [target.count(t) for t in texts]
        per_1000 = 1000 * sum(h for h, _ in hits) / max(1, sum(w for _, w in hits))
        inside = ["yes" if r["ci_low"] <= ci["mean"] <= r["ci_high"] else "no" for r in (before, after)]
        print(f"| `{path}` | {fmt(ci)} | {per_1000:.2f} | {' / '.join(inside)} | {seconds:.0f} |", flush=True)
        if args.replies:
            for prompt, text in list(zip([p for p in prompts for _ in range(per_prompt)], texts))[: args.replies]:
                print(f"  --- {prompt}\n  {text.strip()}")


def fmt(ci: dict) -> str:
    return f"{ci['mean']:.4f} [{ci['ci_low']:.4f}, {ci['ci_high']:.4f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gguf", nargs="+", help="GGUF files to sample")
    parser.add_argument("--toward", default="x", help="selector of the token set")
    parser.add_argument("--tokenizer", default="bundled", help="the model whose tokenizer names the ids")
    parser.add_argument("--samples-per-prompt", type=int, default=None, help="4 (raw text); --run: as its R took")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run", help="a chat tilt run with a phrase list: count its list in chat replies")
    parser.add_argument("--replies", type=int, default=0, help="with --run, print this many replies of each GGUF")
    args = parser.parse_args()
    if args.run:
        return main_chat(args)
    args.samples_per_prompt = args.samples_per_prompt or 4
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
