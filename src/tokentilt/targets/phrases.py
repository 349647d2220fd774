"""Words and phrases as a target: entries of any number of tokens, counted as words of the text.

A phrase selector names strings, not tokens:

    phrase:TEXT         one word or phrase, e.g. phrase:"Alice in Wonderland"
    phrases:FILE        one entry per line (blank lines and lines starting with '#' are skipped)
    phrases:NAME        a built-in list (wordlists/NAME.txt), e.g. phrases:colours
    ...:case            append ':case' to keep each entry's case (otherwise case variants count too)

**The word rule (R).** R is the share of generated *words* that are entries. A word is a maximal
run of letters and digits, with apostrophes inside it ("don't" is one word; "well-known" is two;
"_" and punctuation are not words): the regex WORD below, applied to the decoded continuation. An
entry is the word sequence the same rule cuts from it; an occurrence is that sequence of
consecutive words (case-folded unless ':case'), so a phrase of three words counts once. Entries
are matched greedily, longest first, without overlaps. The rule never looks at tokens, so anyone
can recount R from samples.jsonl with a regex.

**Variants.** Each entry is tokenized as the model meets it: after a space (" Wonderland" ->
" Wonder" "land") and bare, at the start of a word after a newline or a quote ("Wonderland" ->
"W" "onder" "land"), in its own case, lower case, capitalised and upper case (unless ':case').
Both tokenizations are taken from inside a text (the anchor's tokens removed), so SentencePiece's
"▁" and byte-level "Ġ" pieces come out as the tokenizer really uses them.

**The decode-time tilt (PhraseBias).** The sequence-level tilt that tokentilt targets is
q(text) ∝ p(text)·exp(b·count(text)). Sampled one token at a time, its exact per-step form is
q(v | s) ∝ p(v | s)·exp(b·completed(v))·W(s+v)/W(s), with W(s) = E_p[exp(b·future count) | s]:
a token that completes an entry gains b, and a token that *starts or continues* one gains the
value of the partial match. tokentilt approximates W at a partial match c by its first-order
form log W(c) ≈ log(1 + π(c)·(e^b − 1)), where π(c) is the model's probability of finishing the
entry from c, measured once per set (in a few neutral contexts; see completion_probs). So:

    completing token:  + b (+ log W of the node it reaches, if a longer entry continues it)
    starting / continuing token:  + log(1 + π(c)(e^b - 1))
    b = -inf (a hard ban):  completing tokens are removed; starting ones get log(1 - π(c))

Hugging Face's `sequence_bias` is this with π = 0: it biases only the last token after its
prefix, so a rare first token caps the rate it can reach (benchmarks/p7_phrases.py compares them).
A trie over every variant's token ids holds the partial matches; bare variants may start only
where the previous token does not end inside a word.

**No expected count.** A token set's R has a lower-variance twin, the expected count (the set's
probability at each counted step, tokens.expected_rates); a phrase set has none that is unbiased for its
word-level R: whether a completing token makes a hit depends on the tokens after it (the word must end
there, and the greedy longest-first matching may take it into a longer entry), and the word count that
divides is random too. The trie's per-step probability of completing an entry would estimate the count of
completions, another number. measure() reports rate_expected None for a phrase set (docs/method.md).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from transformers import LogitsProcessor, SequenceBiasLogitsProcessor

from tokentilt.data import corpus

# the phrase lists are parsed in selectors.py (no torch); their names stay importable from here
from tokentilt.targets.selectors import PHRASE_KINDS, WORD, SelectorError, is_phrase_selector, words_of  # noqa: F401
from tokentilt.targets.selectors import parse_phrases as parse
from tokentilt.targets.tokens import resolve_set

METHODS = ("trie", "sequence-bias")
COLLATERAL_SHIFT = 0.05  # the per-entry report's collateral: words the tilt moves by this much log-odds or more
MAX_COVERAGE = 0.5  # a list whose entries are this share of a reference text's words leaves nothing to tilt
SPACE_ANCHORS = ("It was", "I saw the", "They said")  # contexts in which completion_probs measures π
BARE_ANCHORS = ("\n", '"', "(")


# ---------------------------------------------------------------- entries


def case_forms(entry: str, keep_case: bool) -> list[str]:
    if keep_case:
        return [entry]
    return list(dict.fromkeys([entry, entry.lower(), entry[:1].upper() + entry[1:], entry.upper()]))


def encode_in_text(tokenizer, text: str, anchor: str) -> list[int]:
    """Token ids of `text` as they come after `anchor` inside a longer text (the anchor's own tokens
    removed), or of `text` alone when the anchor's tokens merge into it."""
    whole = tokenizer.encode(anchor + text, add_special_tokens=False)
    head = tokenizer.encode(anchor, add_special_tokens=False)
    if whole[: len(head)] == head and len(whole) > len(head):
        return whole[len(head) :]
    return tokenizer.encode(text, add_special_tokens=False)


# ---------------------------------------------------------------- the trie


@dataclass(eq=False)  # nodes hash by identity: a state is a frozenset of them
class Node:
    depth: int = 0
    children: dict[int, Node] = field(default_factory=dict)
    ends: list[int] = field(default_factory=list)  # entries a variant of which ends here
    pi: float = 0.0  # the model's probability of completing an entry from here (completion_probs)


@dataclass
class Variant:
    entry: int  # index into entries
    text: str  # e.g. " Wonderland"
    bare: bool  # starts a word without a leading space (allowed only at a word start)
    ids: list[int]


def build_trie(variants: list[Variant]) -> tuple[Node, Node]:
    """-> (root of the spaced variants, root of the bare ones)."""
    roots = (Node(), Node())
    for v in variants:
        node = roots[v.bare]
        for i in v.ids:
            node = node.children.setdefault(i, Node(node.depth + 1))
        if v.entry not in node.ends:
            node.ends.append(v.entry)
    return roots


def _credit(pi: float, bias: float) -> float:
    """log W ≈ log(1 + π(e^b - 1)): the value of a partial match that completes with probability π."""
    pi = min(max(pi, 0.0), 1 - 1e-6)
    if bias == -math.inf:
        return math.log1p(-pi)
    if bias > 30:  # e^b overflows soon: log(1 + π(e^b - 1)) -> log π + b
        return math.log(pi) + bias if pi > 0 else 0.0
    return math.log1p(pi * math.expm1(bias))


# ---------------------------------------------------------------- the set


@dataclass
class PhraseSet:
    """Entries of words and phrases resolved against one tokenizer (and, for π, one model): a Target
    (target.py) whose membership depends on context."""

    selector: str
    entries: list[str]
    keep_case: bool
    variants: list[Variant]
    vocab_size: int
    word_ends: torch.Tensor  # (V,) bool: the token's text ends inside a word (a letter or digit)
    roots: tuple[Node, Node] = None
    method: str = "trie"  # the decode-time tilt: "trie" (PhraseBias) or "sequence-bias" (Hugging Face's)
    _bias_cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.roots is None:
            self.roots = build_trie(self.variants)
        self._keys = [tuple(self._fold(w) for w in words_of(e)) for e in self.entries]
        self._entry_of = {key: e for e, key in reversed(list(enumerate(self._keys)))}  # the first entry of a key
        self._by_first: dict[str, list[tuple[str, ...]]] = {}
        for key in sorted(set(self._keys), key=len, reverse=True):
            self._by_first.setdefault(key[0], []).append(key)

    # ------------------------------------------------------------ the Target type (target.py)

    @property
    def mask(self) -> None:
        """None: whether a token belongs depends on the text before it (tilt, processor)."""
        return None

    @property
    def size(self) -> int:
        return len(self.entries)

    @property
    def share(self) -> float:
        return len({i for v in self.variants for i in v.ids}) / self.vocab_size

    def describe(self) -> str:
        multi = sum(1 for e in range(len(self.entries)) if self.spaced(e) and len(self.spaced(e).ids) > 1)
        return (
            f"{self.selector!r}: {len(self.entries)} entries ({multi} of several tokens), "
            f"{len(self.variants)} tokenized variants; R counts words (phrases.WORD)"
        )

    def spaced(self, entry: int) -> Variant | None:
        """The entry's variant after a space, in its own case: how it usually appears mid-sentence."""
        return next((v for v in self.variants if v.entry == entry and not v.bare), None)

    def tokenizations(self, tokenizer) -> list[dict]:
        """Per entry: each distinct variant's token pieces, for the run's report."""
        rows = []
        for e, entry in enumerate(self.entries):
            pieces = {v.text: [tokenizer.decode([i]) for i in v.ids] for v in self.variants if v.entry == e}
            rows.append(
                {"entry": entry, "tokens": len(self.spaced(e).ids) if self.spaced(e) else None, "variants": pieces}
            )
        return rows

    # ------------------------------------------------------------ R: counted on words

    def _fold(self, word: str) -> str:
        return word if self.keep_case else word.casefold()

    def matches(self, text: str) -> tuple[list[int], int]:
        """(the entry of each occurrence, in order; words) in a text, by the word rule: greedy, longest first."""
        words = [self._fold(w) for w in words_of(text)]
        found, i = [], 0
        while i < len(words):
            for key in self._by_first.get(words[i], ()):
                if tuple(words[i : i + len(key)]) == key:
                    found.append(self._entry_of[key])
                    i += len(key)
                    break
            else:
                i += 1
        return found, len(words)

    def count(self, text: str) -> tuple[int, int]:
        """(occurrences of entries, words) in a text, by the word rule."""
        found, words = self.matches(text)
        return len(found), words

    def entry_report(self, tokenizer, before: list[str], after: list[str], bias: float, top: int = 15) -> dict:
        """Each entry's occurrences before and after (texts: the replies or continuations), per 1,000 words,
        the entries that rose flagged (the replacements the model found), and the collateral seen in the texts:
        the commonest words there that are not entries but share a biased transition with one (collateral(),
        a shift of at least COLLATERAL_SHIFT), with their counts before and after. -> {"words_before", "words_after", "entries", "rose", "collateral"}"""
        sides = [self._tally(texts) for texts in (before, after)]
        (hits_b, words_b, all_b), (hits_a, words_a, all_a) = sides

        def per_1000(n: int, words: int) -> float:
            return round(1000 * n / words, 3) if words else 0.0

        rows = [
            {
                "entry": entry,
                "before": hits_b[e],
                "after": hits_a[e],
                "before_per_1000": per_1000(hits_b[e], words_b),
                "after_per_1000": per_1000(hits_a[e], words_a),
                "rose": per_1000(hits_a[e], words_a) > per_1000(hits_b[e], words_b),
            }
            for e, entry in enumerate(self.entries)
            if hits_b[e] or hits_a[e]
        ]
        rows.sort(key=lambda r: (-r["before"] - r["after"], r["entry"]))
        moved = self.collateral(tokenizer, all_b + all_a, bias, top, COLLATERAL_SHIFT)
        collateral = [
            {
                "word": m["word"],
                "log_odds_shift": m["log_odds_shift"],
                "before_per_1000": per_1000(all_b[m["word"]], words_b),
                "after_per_1000": per_1000(all_a[m["word"]], words_a),
            }
            for m in moved
        ]
        return {
            "words_before": words_b,
            "words_after": words_a,
            "per_1000_before": per_1000(sum(hits_b.values()), words_b),
            "per_1000_after": per_1000(sum(hits_a.values()), words_a),
            "entries": rows,
            "rose": [r["entry"] for r in rows if r["rose"]],
            "collateral": collateral,
        }

    def _tally(self, texts: list[str]) -> tuple[Counter, int, Counter]:
        """(occurrences per entry index, words, counts of every word as written) over texts."""
        hits, words, seen = Counter(), 0, Counter()
        for text in texts:
            found, n = self.matches(text)
            hits.update(found)
            words += n
            seen.update(words_of(text))
        return hits, words, seen

    def rates(self, samples) -> torch.Tensor:
        """Per-sample share of words that are entries (NaN for a sample with no word), of the sampler's output
        (its decoded .texts) or of a list of texts. (N,)"""
        texts = samples.texts if hasattr(samples, "texts") else samples
        counts = [self.count(t) for t in texts]
        return torch.tensor([h / n if n else math.nan for h, n in counts], dtype=torch.float32)

    # ------------------------------------------------------------ the decode-time tilt

    def step(self, state: frozenset, at_word_start: bool, token: int) -> tuple[frozenset, int]:
        """Advance the partial matches by one token -> (new state, entries completed)."""
        nodes = [*state, self.roots[0]] + ([self.roots[1]] if at_word_start else [])
        nxt, done = [], 0
        for node in nodes:
            child = node.children.get(token)
            if child is not None:
                done += len(child.ends)
                if child.children:
                    nxt.append(child)
        return frozenset(nxt), done

    def advance(self, state: frozenset, at_word_start: bool, token: int) -> tuple[frozenset, bool]:
        """The (partial matches, at a word start) after one more token."""
        state, _ = self.step(state, at_word_start, token)
        return state, not bool(self.word_ends[token])

    def states(self, ids: list[int]) -> list[tuple[frozenset, bool]]:
        """The (partial matches, at a word start) after each token of a sequence; the sequence is
        taken to start at a word start."""
        state, start, out = frozenset(), True, []
        for t in ids:
            state, start = self.advance(state, start, t)
            out.append((state, start))
        return out

    def bias_terms(self, state: frozenset, at_word_start: bool, bias: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The logit changes after (state, at_word_start) at bias b -> (token ids, values), cached."""
        key = (state, at_word_start, bias)
        if key not in self._bias_cache:
            terms: dict[int, float] = {}
            for node in [*state, self.roots[0]] + ([self.roots[1]] if at_word_start else []):
                for token, child in node.children.items():
                    value = bias * len(child.ends) if child.ends else 0.0
                    if child.children:
                        value += _credit(child.pi, bias)
                    terms[token] = terms.get(token, 0.0) + value
            ids = torch.tensor(sorted(terms), dtype=torch.long)
            self._bias_cache[key] = (ids, torch.tensor([terms[i] for i in ids.tolist()], dtype=torch.float32))
        return self._bias_cache[key]

    def row_ids(self) -> torch.Tensor:
        """The token ids the decode-time tilt can change: every variant's tokens, sorted. (K,)"""
        return torch.tensor(sorted({i for v in self.variants for i in v.ids}), dtype=torch.long)

    def row_offsets(self, batches: list[torch.Tensor], bias: float, rows: torch.Tensor) -> torch.Tensor:
        """The decode-time tilt's logit changes on `rows` (K,) at every position of (b, T) id batches,
        in order (batch, row, position): (N, K). Position t holds the change for the token after ids[:t+1],
        as in adjust(); each row is taken to start at a word start."""
        column = {t: k for k, t in enumerate(rows.tolist())}
        dense: dict[tuple, torch.Tensor] = {}
        out = []
        for batch in batches:
            for seq in batch.tolist():
                for state, start in self.states(seq):
                    key = (state, start)
                    if key not in dense:
                        tok, val = self.bias_terms(state, start, bias)
                        vec = torch.zeros(len(column))
                        vec[[column[t] for t in tok.tolist()]] = val
                        dense[key] = vec
                    out.append(dense[key])
        return torch.stack(out)

    def with_method(self, method: str) -> PhraseSet:
        """The same entries and trie with another decode-time tilt (METHODS)."""
        if method not in METHODS:
            raise ValueError(f"phrase method must be one of {', '.join(METHODS)}, got {method!r}")
        return dataclasses.replace(self, method=method, _bias_cache={})

    def adjust(self, logits: torch.Tensor, ids: torch.Tensor, bias: float) -> torch.Tensor:
        """The decode-time tilt applied at every position of (B, T) ids: logits (B, T, V) -> new float32
        logits, position t's row predicting token t+1 from the state after ids[:, :t+1]."""
        out = logits.float().clone()
        if bias == 0:
            return out
        if self.method == "sequence-bias":
            proc = self.processor(bias)
            for t in range(ids.size(1)):
                out[:, t] = proc(ids[:, : t + 1], out[:, t])
            return out
        for row, seq in enumerate(ids.tolist()):
            for t, (state, start) in enumerate(self.states(seq)):
                tok, val = self.bias_terms(state, start, bias)
                out[row, t, tok[tok < out.size(-1)]] += val[tok < out.size(-1)].to(out.device)
        return out

    def tilt(self, logits: torch.Tensor, ids: torch.Tensor, bias: float) -> torch.Tensor:
        """The decode-time tilt of teacher-forced logits: adjust(). (B, T, V) float32"""
        return self.adjust(logits, ids, bias)

    def processor(self, bias: float) -> LogitsProcessor:
        if self.method == "sequence-bias":  # every variant's last token, after its prefix (no start credit)
            return SequenceBiasLogitsProcessor(
                sequence_bias=[[list(k), v] for k, v in self.sequence_bias(bias).items()]
            )
        return PhraseBias(self, bias)

    def sequence_bias(self, bias: float) -> dict[tuple[int, ...], float]:
        """The same variants in Hugging Face's SequenceBiasLogitsProcessor form (for comparison)."""
        return {tuple(v.ids): bias for v in self.variants}

    # ------------------------------------------------------------ what else moves

    def collateral(
        self, tokenizer, reference: Counter, bias: float, top: int = 15, min_shift: float = 1e-6
    ) -> list[dict]:
        """Words of a reference word count that are not entries but whose own tokenization (after a
        space) passes through a biased transition, by at least `min_shift` in log-odds: they move with the
        tilt. Sorted by how often the reference uses them. -> [{"word", "count", "log_odds_shift"}]."""
        entries = {k for k in self._keys if len(k) == 1}
        rows = []
        for word, n in reference.most_common():
            if (self._fold(word),) in entries:
                continue
            ids = encode_in_text(tokenizer, " " + word, SPACE_ANCHORS[0])
            state, start, shift = frozenset(), True, 0.0
            for t in ids:
                tok, val = self.bias_terms(state, start, bias)
                hit = (tok == t).nonzero()
                if len(hit):
                    shift += float(val[hit[0, 0]])
                state, _ = self.step(state, start, t)
                start = not bool(self.word_ends[t])
            if abs(shift) >= min_shift:
                rows.append({"word": word, "count": n, "log_odds_shift": round(shift, 3)})
            if len(rows) >= top:
                break
        return rows

    def summary(self, tokenizer, bias: float) -> dict:
        """What a run records (summary.json's "phrases"): the word rule, how each entry tokenizes, and the
        collateral at b: the reference words (the plays' train split) that are not entries but move with the
        tilt, the commonest first."""
        return {
            "word_rule": WORD.pattern,
            "keep_case": self.keep_case,
            "entries": self.tokenizations(tokenizer),
            "collateral": self.collateral(tokenizer, plays_reference(), bias),
        }

    def coverage(self, reference: Counter) -> float:
        """Share of the reference text's words that are (one-word) entries."""
        total = sum(reference.values())
        one = {k[0] for k in self._keys if len(k) == 1}
        return sum(n for w, n in reference.items() if self._fold(w) in one) / total if total else 0.0


class PhraseBias(LogitsProcessor):
    """The decode-time phrase tilt: each row's partial matches decide which tokens it biases.

    Generation calls it once per step with every row one token longer, so each row's trie state is carried
    from the call before and advanced by the new token (O(1) per row and step, where walking the whole
    sequence again made a reply of L tokens cost O(L^2)); a row that does not extend the one before it
    (another batch) is walked from its start."""

    def __init__(self, phrases: PhraseSet, bias: float):
        self.phrases, self.bias = phrases, bias
        self._rows: dict[int, tuple[list[int], frozenset, bool]] = {}  # row -> (its ids, state, at a word start)

    def _state(self, row: int, seq: list[int]) -> tuple[frozenset, bool]:
        seen = self._rows.get(row)
        if seen is not None and len(seq) == len(seen[0]) + 1 and seq[:-1] == seen[0]:
            state, start = self.phrases.advance(seen[1], seen[2], seq[-1])
        else:
            state, start = self.phrases.states(seq)[-1] if seq else (frozenset(), True)
        self._rows[row] = (seq, state, start)
        return state, start

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        for row, seq in enumerate(input_ids.tolist()):
            state, start = self._state(row, seq)
            tok, val = self.phrases.bias_terms(state, start, self.bias)
            keep = tok < scores.size(-1)
            scores[row, tok[keep]] += val[keep].to(scores.device, scores.dtype)
        return scores


# ---------------------------------------------------------------- building one


def token_word_ends(tokenizer, vocab_size: int) -> torch.Tensor:
    """(V,) bool: the token's decoded text ends in a letter or digit, so a word may continue after it."""
    texts = [tokenizer.decode([i]) for i in range(min(vocab_size, len(tokenizer)))]
    ends = [bool(t) and (t[-1].isalnum()) for t in texts]
    return torch.tensor(ends + [False] * (vocab_size - len(ends)), dtype=torch.bool)


def tokenize_entries(tokenizer, entries: list[str], keep_case: bool, vocab_size: int) -> list[Variant]:
    variants, seen = [], set()
    for e, entry in enumerate(entries):
        for form in case_forms(entry, keep_case):
            for bare, text, anchor in ((False, " " + form, SPACE_ANCHORS[0]), (True, form, BARE_ANCHORS[0])):
                ids = encode_in_text(tokenizer, text, anchor)
                if not ids or any(i >= vocab_size for i in ids) or (bare, tuple(ids)) in seen:
                    continue
                seen.add((bare, tuple(ids)))
                variants.append(Variant(e, text, bare, ids))
    return variants


@torch.no_grad()
def completion_probs(model, tokenizer, phrases: PhraseSet, bf16: bool = False) -> None:
    """Set π on every inner node: the model's probability of the rest of an entry given its first
    tokens, averaged over a few neutral contexts (SPACE_ANCHORS / BARE_ANCHORS). Several entries
    below one node add up (an expected count), capped below 1 in _credit."""
    device = next(model.parameters()).device
    rows = []  # (variant, anchor ids)
    for v in phrases.variants:
        if len(v.ids) > 1:
            for anchor in BARE_ANCHORS if v.bare else SPACE_ANCHORS:
                rows.append((v, tokenizer.encode(anchor, add_special_tokens=False)))
    if not rows:
        return
    rows.sort(key=lambda row: len(row[1]) + len(row[0].ids))  # chunks of like lengths: little padding
    sums: dict[int, list] = {}  # id(node) -> [node, sum of P(rest | node) over its rows, rows]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(rows), 64):
            chunk = rows[start : start + 64]
            seqs = [a + v.ids for v, a in chunk]
            width = max(map(len, seqs))
            ids = torch.zeros(len(seqs), width, dtype=torch.long)
            att = torch.zeros_like(ids)
            for r, s in enumerate(seqs):  # right-padded: every position read comes before the padding
                ids[r, : len(s)], att[r, : len(s)] = torch.tensor(s), 1
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(input_ids=ids.to(device), attention_mask=att.to(device)).logits.float()
            logp = torch.log_softmax(logits, -1).cpu()
            for r, (v, a) in enumerate(chunk):
                step = [float(logp[r, len(a) + k - 1, v.ids[k]]) for k in range(len(v.ids))]  # log p per token
                node = phrases.roots[v.bare]
                for depth, tok in enumerate(v.ids[:-1]):
                    node = node.children[tok]
                    slot = sums.setdefault(id(node), [node, 0.0, set()])
                    slot[1] += math.exp(sum(step[depth + 1 :]))
                    slot[2].add(tuple(a))
    finally:
        model.train(was_training)
    for node, total, anchors in sums.values():
        node.pi = total / len(anchors)  # the mean over contexts of the summed completion probabilities
    phrases._bias_cache.clear()


def resolve_phrases(
    spec: str, tokenizer, vocab_size: int, model=None, reference: Counter | None = None, bf16: bool = False
) -> PhraseSet:
    """phrase:/phrases: selector -> PhraseSet over the tokenizer; with `model`, π from the model.
    With `reference` (word counts), refuse a list that covers MAX_COVERAGE of its words."""
    entries, keep_case = parse(spec)
    variants = tokenize_entries(tokenizer, entries, keep_case, vocab_size)
    missing = sorted({entries[i] for i in range(len(entries))} - {entries[v.entry] for v in variants})
    if missing:
        raise SelectorError(f"selector {spec!r}: {missing[0]!r} has no tokenization inside the model's vocabulary")
    phrases = PhraseSet(spec, entries, keep_case, variants, vocab_size, token_word_ends(tokenizer, vocab_size))
    if reference is not None and phrases.coverage(reference) >= MAX_COVERAGE:
        raise SelectorError(
            f"selector {spec!r} covers {100 * phrases.coverage(reference):.0f}% of the words of "
            f"the reference text: nearly every word is an entry, so there is nothing to tilt"
        )
    if model is not None:
        completion_probs(model, tokenizer, phrases, bf16)
    return phrases


def reference_words(text: str) -> Counter:
    """Word counts of a text by the word rule."""
    return Counter(words_of(text))


@lru_cache(maxsize=1)
def plays_reference() -> Counter:
    """Word counts of the plays' train split: the reference for a list's coverage and its collateral."""
    return reference_words(corpus.split_text("train"))


def resolve_target(spec: str, tokenizer, model, echo=print):
    """Any selector over a model's output vocabulary: a TokenSet, or a PhraseSet (π from the model), described
    on `echo` (a phrase set: how each entry tokenizes)."""
    vocab_size = model.get_output_embeddings().weight.shape[0]
    if not is_phrase_selector(spec):
        tokens = resolve_set(spec, tokenizer, vocab_size)
        echo(tokens.describe())
        return tokens
    phrases = resolve_phrases(spec, tokenizer, vocab_size, model, plays_reference())
    echo(phrases.describe())
    for row in phrases.tokenizations(tokenizer)[:20]:
        pieces = next(iter(row["variants"].values()))
        echo(f"  {row['entry']!r}: " + " ".join(repr(p) for p in pieces) + f" ({len(row['variants'])} variants)")
    if len(phrases.entries) > 20:
        echo(f"  ... and {len(phrases.entries) - 20} more (summary.json lists them all)")
    return phrases
