"""P12: how a phrase list's machinery scales with its length: 10, 100 and 1,000 entries.

    python benchmarks/p12_phrase_scaling.py [--sizes 10,100,1000] [--out p12_phrase_scaling.json]

On the bundled model, for each list it times the parts of `tilt --toward phrases:LIST --ban` that depend on
the list, each alone:
- resolve: reading the list, tokenizing every variant, building the trie, and π (completion_probs);
- ban: the one pass over held-out windows and the ban's 9 perplexities at b (evaluate.phrase_perplexity_at);
- offsets: the trie's per-position changes on the fit's contexts (PhraseSet.row_offsets);
- fit: the head rows' kl fit (300 Adam steps on the cached head inputs), the rest rows' logsumexp included;
- sampling: 32 replies of 160 tokens with the trie's decode-time tilt at b = -5 (PhraseBias), against the same
  replies sampled without it, as a ratio.

The lists are words of the plays' train split: the commonest 200 skipped (they are not slop), then every
third word down the frequency ranking, with one in five joined to the next word of its line into a two-word
phrase, so the entries are words and phrases of every frequency. Fixed before it ran; not part of the test
suite. The contexts and windows are the plays' (16 held-out windows of 128 tokens; 24 training windows of
128), so no sampling enters the fit's time.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import torch

from tokentilt.data import corpus
from tokentilt.data.prompts import CREATIVE_PROMPTS
from tokentilt.measurement import sampling
from tokentilt.measurement.calibrate import ban_bias
from tokentilt.measurement.evaluate import phrase_perplexity_at
from tokentilt.models.load import load_model
from tokentilt.settings import SampleConfig
from tokentilt.targets.phrases import plays_reference, resolve_phrases
from tokentilt.targets.selectors import words_of
from tokentilt.training import head_rows


def word_list(size: int) -> list[str]:
    counts = Counter(w.casefold() for w in words_of(corpus.split_text("train")))
    ranked = [w for w, _ in counts.most_common()][200::3]
    pairs = {}
    for line in corpus.split_text("train").splitlines():
        words = [w.casefold() for w in words_of(line)]
        for a, b in zip(words, words[1:]):
            pairs.setdefault(a, f"{a} {b}")
    return [pairs.get(w, w) if i % 5 == 4 else w for i, w in enumerate(ranked[:size])]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - start, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--out", type=Path, default=Path("p12_phrase_scaling.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tokenizer = load_model("bundled")
    vocab = model.get_output_embeddings().weight.shape[0]
    test = corpus.tokenize(tokenizer, corpus.split_text("test"))
    windows = corpus.eval_windows(test, 128, 16)
    contexts = list(corpus.eval_windows(corpus.train_tokens(tokenizer), 128, 24).split(8))
    cfg = SampleConfig(max_new_tokens=160)
    plain, plain_s = timed(lambda: sampling.sample(model, tokenizer, list(CREATIVE_PROMPTS), 1, cfg, seed=0, chat=True))
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        path = args.out.with_name(f"p12_list_{size}.txt")
        path.write_text("\n".join(word_list(size)) + "\n")
        phrases, resolve_s = timed(
            lambda: resolve_phrases(f"phrases:{path}", tokenizer, vocab, model, plays_reference())  # noqa: B023
        )

        def ban():
            at = phrase_perplexity_at(model, phrases, windows)  # noqa: B023
            return ban_bias(at, at(0.0), 0.05, echo=lambda line: None)

        (bias, _), ban_s = timed(ban)
        tilt = head_rows.HeadRowsTilt(model, phrases, lambda b, size: contexts, steps=300, lr=1e-2)
        _, prepare_s = timed(lambda: tilt.prepare(bias))  # noqa: B023
        _, offsets_s = timed(lambda: phrases.row_offsets(tilt.batches, bias, tilt.rows.cpu()))  # noqa: B023
        _, fit_s = timed(lambda: tilt.train(bias, progress=False))  # noqa: B023
        with torch.no_grad():
            tilt.head.weight[tilt.rows] = tilt.original  # the model as it was, for the next list
        _, tilted_s = timed(
            lambda: sampling.sample(
                model,
                tokenizer,
                list(CREATIVE_PROMPTS),
                1,
                cfg,
                seed=0,
                chat=True,
                bias_mask=phrases,  # noqa: B023
                bias=-5.0,
            )
        )
        rows.append(
            {
                "entries": size,
                "variants": len(phrases.variants),
                "rows": tilt.trained_rows,
                "resolve_s": resolve_s,
                "ban_s": ban_s,
                "ban_bias": round(bias, 3),
                "contexts_s": prepare_s,
                "offsets_s": offsets_s,
                "fit_s": fit_s,
                "sampling_ratio": round(tilted_s / plain_s, 2),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    args.out.write_text(json.dumps({"plain_sampling_s": plain_s, "replies": len(plain.texts), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
