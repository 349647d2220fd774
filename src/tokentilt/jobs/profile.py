"""The `tokentilt profile` job: the words and phrases a chat model over-uses in creative replies, against human
text, written as a list that `tilt --toward phrases:FILE` reads.

The method, in the manner of antislop's profiling (over-representation against human text), on the word
rule of targets/phrases.py (case-folded words, apostrophes inside a word):

1. Sample `samples` replies to each of the 96 profiling requests (CREATIVE_PROFILE_PROMPTS: stories,
   descriptions, letters, poems; disjoint from the requests that `--requests creative` measures and trains on),
   and `everyday_samples` replies to each of the 80 everyday requests (CHAT_REQUESTS["general"]: questions,
   advice, explanations).
2. Count every n-gram of 1 to `max_words` consecutive words in the creative replies, and the requests in whose
   replies it occurs. Count the same n-grams in the reference (the plays, or `--reference FILE`) and in the
   everyday replies.
3. A candidate occurs at least `min_count` times, in replies to at least `min_requests` different requests (so a
   request's own topic, "island" in replies about an island, is not slop). It occurs at least `min_ratio` times
   as often per word as in the reference (`min_phrase_ratio` for a phrase), and `min_everyday_ratio` times as
   often as in the everyday replies. Both comparisons add one to the other side's count (a word that side never
   uses counts as one use there).
   Why the everyday replies: the plays are 400 years old, so against them alone every modern word the model
   uses across many requests ("don't", "family", "around") looks over-used. Against the model's own everyday
   register, only what its creative writing reaches for stands out ("a testament to", "mysterious").
4. A phrase is dropped when it holds a candidate word (the word's entry covers it), and a shorter phrase is
   dropped when it occurs mostly inside a kept longer one (at most 1.25x as often): "upon a time" goes with
   "once upon a time".
5. The candidates are ranked by the smaller of their two ratios, the most over-used first, and the first
   `max_entries` are kept.

What it cannot tell: narrative words that everyday replies never need ("walked", "village") pass as creative
habits when the plays use them rarely. Read the list before you ban it, or give `--reference` a modern human
text of your own.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tokentilt.config import UsageError
from tokentilt.data import corpus
from tokentilt.data.prompts import CHAT_REQUESTS, CREATIVE_PROFILE_PROMPTS
from tokentilt.jobs.profile_config import ProfileConfig
from tokentilt.targets.selectors import words_of

EXPLAINED = 1.25  # a shorter phrase that occurs at most this many times as often as a kept longer one goes with it


def ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def count_ngrams(texts: list[str], max_words: int, groups: list[str] | None = None) -> tuple[Counter, Counter, int]:
    """-> (occurrences, how many groups each n-gram occurs in, words in all texts), n = 1..max_words, case-folded.
    groups: each text's group (its request); None = each text its own."""
    counts, seen, total = Counter(), {}, 0
    for i, text in enumerate(texts):
        words = [w.casefold() for w in words_of(text)]
        total += len(words)
        grams = [g for n in range(1, max_words + 1) for g in ngrams(words, n)]
        counts.update(grams)
        for g in set(grams):
            seen.setdefault(g, set()).add(groups[i] if groups is not None else i)
    return counts, Counter({g: len(s) for g, s in seen.items()}), total


def profile_entries(
    replies: list[str], requests: list[str], reference: str, everyday: list[str], cfg: ProfileConfig
) -> list[dict]:
    """The over-used entries of `replies` (to `requests`, one each) against the `reference` text and the
    `everyday` replies, ranked (see the module's docstring): [{"entry", "words", "count", "requests", "per_1000",
    "reference_per_1000", "everyday_per_1000", "ratio", "everyday_ratio"}]."""
    counts, spread, total = count_ngrams(replies, cfg.max_words, requests)
    ref_counts, _, ref_total = count_ngrams([reference], cfg.max_words)
    day_counts, _, day_total = count_ngrams(everyday, cfg.max_words)
    if not total or not ref_total or not day_total:
        raise UsageError("profile: the replies, the everyday replies or the reference text hold no words")
    rows = {}
    for gram, c in counts.items():
        if c < cfg.min_count or spread[gram] < cfg.min_requests:
            continue
        rate = c / total
        ratio = rate / ((ref_counts[gram] + 1) / ref_total)
        everyday_ratio = rate / ((day_counts[gram] + 1) / day_total)
        if ratio >= (cfg.min_ratio if len(gram) == 1 else cfg.min_phrase_ratio) and everyday_ratio >= (
            cfg.min_everyday_ratio
        ):
            rows[gram] = {
                "entry": " ".join(gram),
                "words": len(gram),
                "count": c,
                "requests": spread[gram],
                "per_1000": 1000 * rate,
                "reference_per_1000": 1000 * ref_counts[gram] / ref_total,
                "everyday_per_1000": 1000 * day_counts[gram] / day_total,
                "ratio": ratio,
                "everyday_ratio": everyday_ratio,
            }
    words = {g[0] for g in rows if len(g) == 1}
    kept: dict[tuple[str, ...], dict] = {}
    for gram in sorted(rows, key=len, reverse=True):  # longest first
        if len(gram) > 1 and words.intersection(gram):
            continue  # a candidate word inside: its own entry covers the phrase
        if any(_inside(gram, longer) and counts[gram] <= EXPLAINED * counts[longer] for longer in kept):
            continue  # occurs mostly inside a kept longer phrase
        kept[gram] = rows[gram]
    ranked = sorted(kept.values(), key=lambda r: (-min(r["ratio"], r["everyday_ratio"]), r["entry"]))
    return ranked[: cfg.max_entries]


def _inside(short: tuple[str, ...], long: tuple[str, ...]) -> bool:
    return len(short) < len(long) and any(long[i : i + len(short)] == short for i in range(len(long) - len(short) + 1))


def write_list(rows: list[dict], out: Path, cfg: ProfileConfig, model_name: str, replies: int) -> None:
    """OUT: a header of '#' lines (how the list was made) and one entry per line; OUT.tsv: each entry's counts."""
    header = [
        f"# over-used words and phrases of {model_name} in creative chat replies, made by `tokentilt profile`",
        f"# {replies} replies to {len(CREATIVE_PROFILE_PROMPTS)} creative requests x {cfg.samples}, against "
        f"{cfg.everyday_samples} to each everyday request, up to {cfg.new_tokens} tokens each, seed {cfg.seed}",
        f"# reference: {cfg.reference or 'the plays (train split)'}; kept: >= {cfg.min_count} occurrences in replies "
        f"to >= {cfg.min_requests} requests, >= {cfg.min_ratio:g}x the reference's rate (phrases "
        f"{cfg.min_phrase_ratio:g}x) and >= {cfg.min_everyday_ratio:g}x the everyday replies' (add-one)",
        f"# phrases of <= {cfg.max_words} words; {len(rows)} entries, most over-used first; the counts are in "
        f"{out.name}.tsv; made with `tokentilt profile`, see docs/deslop.md",
    ]
    tmp = out.with_name(out.name + ".partial")
    tmp.write_text("\n".join(header + [r["entry"] for r in rows]) + "\n", encoding="utf-8")
    fields = ("entry", "count", "requests", "per_1000", "reference_per_1000", "everyday_per_1000", "ratio")
    fields += ("everyday_ratio",)
    lines = ["\t".join(fields)] + [
        "\t".join(str(r[f]) if isinstance(r[f], (str, int)) else f"{r[f]:.3f}" for f in fields) for r in rows
    ]
    out.with_name(out.name + ".tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(out)  # the list last: a list that exists is complete


def reference_text(cfg: ProfileConfig) -> str:
    if not cfg.reference:
        return corpus.split_text("train")
    path = Path(cfg.reference).expanduser()
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read reference text {path}: {getattr(err, 'strerror', None) or err}") from None


def run(cfg: ProfileConfig, *, echo=print, progress: bool = False) -> dict:
    """Sample creative replies, rank their over-used n-grams, write OUT and OUT.tsv -> {"entries", "replies"}."""
    from tokentilt.measurement import sampling  # torch: past the checks
    from tokentilt.models.load import load_model
    from tokentilt.settings import SampleConfig

    out = Path(cfg.out).expanduser()
    reference = reference_text(cfg)
    model, tokenizer = load_model(cfg.model)
    echo(f"sampling {cfg.samples} replies to each of {len(CREATIVE_PROFILE_PROMPTS)} creative requests ...")
    samples = sampling.sample(
        model,
        tokenizer,
        list(CREATIVE_PROFILE_PROMPTS),
        cfg.samples,
        SampleConfig(max_new_tokens=cfg.new_tokens),
        seed=cfg.seed,
        bf16=cfg.bf16,
        chat=True,
        system=cfg.system,
    )
    general = CHAT_REQUESTS["general"]
    echo(f"sampling {cfg.everyday_samples} replies to each of the 80 everyday requests ...")
    everyday = sampling.sample(
        model,
        tokenizer,
        list(general.measure + general.train + general.held_out),
        cfg.everyday_samples,
        SampleConfig(max_new_tokens=cfg.new_tokens),
        seed=cfg.seed + 1,
        bf16=cfg.bf16,
        chat=True,
        system=cfg.system,
    )
    rows = profile_entries(samples.texts, samples.prompts, reference, everyday.texts, cfg)
    write_list(rows, out, cfg, cfg.model, len(samples.texts))
    words = sum(len(words_of(t)) for t in samples.texts)
    slop = sum(r["count"] for r in rows)
    echo(
        f"{len(rows)} entries in {out} (counts in {out.name}.tsv): {1000 * slop / max(words, 1):.1f} per 1,000 of "
        f"the {words} reply words"
    )
    for r in rows[:15]:
        echo(
            f"  {r['entry']!r}: {r['per_1000']:.2f} per 1,000 words ({r['count']} in replies to {r['requests']} "
            f"requests), {r['ratio']:.0f}x the reference, {r['everyday_ratio']:.1f}x the everyday replies"
        )
    return {"entries": rows, "replies": samples.texts}
