"""Two evidence channels of the audit that read words: contrastive samples, and plain samples, against the reference's.

A tilt by b on a set S multiplies p(v) by e^b on S at every step. Sampling from the contrast
p_model^(1+a) / p_ref^a (logits (1+a) z_model - a z_ref, renormalised) turns it into a tilt by
(1+a) b on S on top of the reference, so a weak tilt surfaces as words the reference rarely
writes: with a = 1 a +2 nat tilt samples as +4, 55 times the reference's odds. The reverse
contrast p_ref^(1+a) / p_model^a raises a set the model lowered by b < 0 by a |b| over the
reference (z_ref - a (z_model - z_ref)), so a tilt away from S surfaces the same way. Against
the reference's own samples of the same prompts, each word (a run of letters, lower-cased) and
each 2-3 word phrase is tested for a higher rate, the discoveries are kept at a false discovery
rate q by Benjamini-Hochberg over every test made, and the significant words of each direction
are one Finding. `words_channel` makes the same test on plain samples of both models (no amplification),
so the benchmark can measure what the contrast adds.

Counting words, not tokens, names a planted class as its words (' car', 'car' and 'Car' are one
word), and a planted phrase list as its phrases. The test is conditional: given a word's count n
in both sample sets, its count in the first is Binomial(n, N_a / (N_a + N_b)) if both write it at
the same rate (N: every word counted). A sample counts a word at most `cap` times, so that one
sample caught in a loop does not make a word alone. A word whose n is too small ever to reach q
(r^n > q) is no test (its p-value cannot count against it), so BH's m is the tests that could.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections import Counter
from contextlib import ExitStack

import torch
import torch.nn.functional as F
from scipy.stats import binom

from tokentilt.audit.channels import ChannelResult, Finding
from tokentilt.data import chat as chat_module
from tokentilt.data.prompts import CHAT_PROMPTS, DEFAULT_PROMPTS
from tokentilt.measurement.sampling import Samples, decoder, draw, eos_ids_of, make_processors, sample
from tokentilt.models.fast import llama_step
from tokentilt.models.fast.packed import packed_linears
from tokentilt.settings import AuditOptions, SampleConfig

WORD = re.compile(r"[^\W\d_]+")  # a run of letters (any script): digits and underscores split words

# ---------------------------------------------------------------- contrastive samples


@torch.no_grad()
def mixed_generate(
    models: list,
    weights: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cfg: SampleConfig,
    generator: torch.Generator,
    eos_ids: list[int] | None = None,
    bf16: bool = False,
    stop_ids: list[int] | None = None,
    drawn=None,
) -> torch.Tensor:
    """Continue a left-padded batch, row r from softmax(sum_i w_ri log p_i): input_ids (B, T) -> new tokens (B, L).

    weights (B, M): each row's weight on each of the M models; (1 + a, -a) on (model, reference) give the
    contrast, (-a, 1 + a) the reverse. Every model keeps its own KV-cache and sees the same tokens. Each step's log-probabilities then go through the same processors
    and the same inverse-CDF draw as generate(). drawn(probs, nxt),
    if given, sees each step's distribution (B, V) float32 and the ids drawn (B, 1).
    """
    device = next(models[0].parameters()).device
    weights = weights.to(device)
    ids = input_ids.to(device)
    mask = attention_mask.long().to(device)
    procs = make_processors(cfg, eos_ids=eos_ids, device=device)  # a banned EOS, and any warpers
    vocab = min(m.get_output_embeddings().weight.shape[0] for m in models)
    capacity = ids.size(1) + cfg.max_new_tokens
    steppers = [decoder(m, len(ids), capacity, lean=not bf16) for m in models]
    was_training = [m.training for m in models]
    # bf16: frozen weights marked as needing grad, so autocast casts each once per call (as generate() does)
    frozen = [p for m in models for p in m.parameters() if not p.requires_grad] if bf16 else []
    seen, positions = ids, (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    step_ids, new = ids, []
    stop = torch.tensor(stop_ids or [], dtype=torch.long, device=device)
    stopped = torch.zeros(len(ids), dtype=torch.bool, device=device)
    with ExitStack() as stack:
        for m, s in zip(models, steppers):
            m.eval()
            lean = isinstance(s, llama_step.LlamaDecoder)
            stack.enter_context(packed_linears(m, len(ids), enabled=not bf16, head_only=lean))
        stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16))
        for p in frozen:
            p.requires_grad_(True)
        try:
            logits = [s.prefill(step_ids, mask, positions) for s in steppers]
            for i in range(cfg.max_new_tokens):
                if i:
                    logits = [s.step(step_ids, mask, positions) for s in steppers]
                mixed = sum(w[:, None] * F.log_softmax(z[:, :vocab].float(), -1) for w, z in zip(weights.T, logits))
                probs = torch.softmax(procs(seen, mixed), -1)  # (B, V)
                nxt = draw(probs, generator).to(device)  # (B, 1)
                if drawn:
                    drawn(probs, nxt)
                new.append(nxt)
                seen = torch.cat([seen, nxt], 1)
                mask = torch.cat([mask, torch.ones_like(nxt)], 1)
                step_ids, positions = nxt, positions[:, -1:] + 1
                if stop_ids:
                    stopped |= torch.isin(nxt[:, 0], stop)
                    if stopped.all():
                        break
        finally:
            for p in frozen:
                p.requires_grad_(False)
            for m, training in zip(models, was_training):
                m.train(training)
    return torch.cat(new, 1).cpu()


def contrast_samples(
    model,
    reference,
    tokenizer,
    prompts,
    per_prompt: int,
    cfg: SampleConfig,
    a: float = 1.0,
    directions: tuple[str, ...] = ("toward", "away"),
    seed: int = 0,
    bf16: bool = False,
    chat: bool = False,
    system: str = "",
    batch_size: int = 128,
    drawn=None,
) -> dict[str, Samples]:
    """`per_prompt` samples of every prompt from p_model^(1+a) / p_ref^a ("toward") and from p_ref^(1+a) /
    p_model^a ("away"), the rows of both in the same batches (one forward of each model per step serves
    both). -> direction -> Samples. chat: as sample()."""
    all_prompts = [p for p in prompts for _ in range(per_prompt)]
    inputs = chat_module.format_prompts(tokenizer, all_prompts, system) if chat else all_prompts
    pair = {"toward": [1.0 + a, -a], "away": [-a, 1.0 + a]}  # weights on (model, reference)
    weights = torch.tensor([pair[d] for d in directions for _ in inputs])  # (N, 2)
    inputs = inputs * len(directions)
    stop_ids = chat_module.end_of_turn_ids(tokenizer) if chat else None
    if chat:
        cfg = dataclasses.replace(cfg, ban_eos=False)  # a reply ends where the model ends its turn
    generator = torch.Generator().manual_seed(seed)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    chunks = []
    try:
        for start in range(0, len(inputs), batch_size):
            rows = slice(start, start + batch_size)
            enc = tokenizer(inputs[rows], return_tensors="pt", padding=True, add_special_tokens=not chat)
            chunks.append(
                mixed_generate(
                    [model, reference],
                    weights[rows],
                    enc["input_ids"],
                    enc["attention_mask"],
                    cfg,
                    generator,
                    eos_ids_of(tokenizer),
                    bf16,
                    stop_ids,
                    drawn,
                )
            )
    finally:
        tokenizer.padding_side = side
    width = max(c.size(1) for c in chunks)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    tokens = torch.cat([F.pad(c, (0, width - c.size(1)), value=pad) for c in chunks])  # (D N, L)
    out, n = {}, len(all_prompts)
    for i, direction in enumerate(directions):
        part = tokens[i * n : (i + 1) * n]  # (N, L)
        if not chat:
            out[direction] = Samples(all_prompts, part, tokenizer.batch_decode(part, skip_special_tokens=False))
            continue
        lengths = chat_module.reply_lengths(part, stop_ids)
        texts = tokenizer.batch_decode(chat_module.replies(part, lengths), skip_special_tokens=True)
        out[direction] = Samples(
            all_prompts, part, texts, lengths, inputs[i * n : (i + 1) * n], tuple(chat_module.special_ids(tokenizer))
        )
    return out


# ---------------------------------------------------------------- words, phrases and their test


def words_of(text: str) -> list[str]:
    """The words of a text: runs of letters, lower-cased."""
    return [w.lower() for w in WORD.findall(text)]


def count_terms(texts: list[str], longest: int = 3, cap: int = 2) -> Counter:
    """Each word and each phrase of 2..longest consecutive words, over the texts; a text counts a term at
    most `cap` times."""
    total: Counter = Counter()
    for text in texts:
        words = words_of(text)
        own = Counter(" ".join(words[i : i + n]) for n in range(1, longest + 1) for i in range(len(words) - n + 1))
        total.update({term: min(c, cap) for term, c in own.items()})
    return total


def benjamini_hochberg(p: torch.Tensor) -> torch.Tensor:
    """BH-adjusted p-values (m,) float64: min over k >= rank of p_(k) m / k, capped at 1. Reject at q: adjusted <= q."""
    m = len(p)
    if m == 0:
        return p.double()
    order = torch.argsort(p)
    scaled = p.double()[order] * m / torch.arange(1, m + 1, dtype=torch.float64)  # (m,)
    running = torch.flip(torch.cummin(torch.flip(scaled, [0]), 0).values, [0]).clamp(max=1.0)
    adjusted = torch.empty(m, dtype=torch.float64)
    adjusted[order] = running
    return adjusted


@dataclasses.dataclass
class Tests:
    """Every term tested, in every comparison: 'term a is written more often in A than in B'."""

    terms: list[str]  # (m,) the word or phrase
    directions: list[str]  # (m,) the comparison's direction: "toward" or "away"
    in_a: torch.Tensor  # (m,) its count in A (capped per sample)
    in_b: torch.Tensor  # (m,) its count in B
    totals: list[tuple[int, int]]  # (m,) every term of its length counted in A and in B: N_a, N_b
    p: torch.Tensor  # (m,) one-sided conditional binomial p-value
    adjusted: torch.Tensor  # (m,) BH-adjusted over all m
    untestable: int  # terms left out: too rare ever to reach q


def term_tests(comparisons: list[tuple[list[str], list[str], str]], q: float, cap: int = 2) -> Tests:
    """Test each term of each comparison (texts A, texts B, direction), one-sided for a higher rate in A, and
    adjust by BH over every test of every comparison. Words and phrases of each length have their own totals."""
    rows, untestable = [], 0
    for texts_a, texts_b, direction in comparisons:
        ca, cb = count_terms(texts_a, cap=cap), count_terms(texts_b, cap=cap)
        for n in (1, 2, 3):
            terms = sorted(t for t in ca.keys() | cb.keys() if t.count(" ") == n - 1)
            na, nb = sum(ca[t] for t in terms), sum(cb[t] for t in terms)
            if not na or not nb:
                continue
            r = na / (na + nb)
            for t in terms:
                k, total = ca[t], ca[t] + cb[t]
                if total * math.log(r) > math.log(q):  # r^n > q: no count of it could be significant
                    untestable += 1
                    continue
                rows.append((t, direction, k, cb[t], (na, nb), r))
    a = torch.tensor([row[2] for row in rows], dtype=torch.float64)
    b = torch.tensor([row[3] for row in rows], dtype=torch.float64)
    r = torch.tensor([row[5] for row in rows], dtype=torch.float64)
    p = torch.from_numpy(binom.sf(a.numpy() - 1, (a + b).numpy(), r.numpy())) if rows else a  # P(X >= a)
    return Tests(
        [row[0] for row in rows],
        [row[1] for row in rows],
        a,
        b,
        [row[4] for row in rows],
        p,
        benjamini_hochberg(p),
        untestable,
    )


def term_tokens(terms: list[str], texts: list[str], tokenizer) -> list[int]:
    """Vocabulary ids of the terms' words: every token whose stripped, lower-cased text is one of them, and the
    first token of each word written alone and after a space (a word of several tokens)."""
    words = {w for t in terms for w in t.split()}
    ids = {i for i, s in enumerate(texts) if s.strip().lower() in words}
    for w in words:
        for form in (w, " " + w):
            ids.update(tokenizer(form, add_special_tokens=False)["input_ids"][:1])
    return sorted(ids)


def findings_of(tests: Tests, q: float, samples: dict, texts: list[str], tokenizer, shown: int = 8) -> list[Finding]:
    """One Finding per direction with a discovery: its significant words, and the phrases none of whose words is
    significant (a phrase of a significant word adds nothing). samples: direction -> texts of its A side."""
    findings = []
    for direction in ("toward", "away"):
        hits = [i for i, d in enumerate(tests.directions) if d == direction and float(tests.adjusted[i]) <= q]
        if not hits:
            continue
        hits.sort(key=lambda i: (float(tests.p[i]), -float(tests.in_a[i])))
        words = {tests.terms[i] for i in hits if " " not in tests.terms[i]}
        keep = [i for i in hits if " " not in tests.terms[i] or not words & set(tests.terms[i].split())]
        terms = [tests.terms[i] for i in keep]
        # pooled log rate ratio: the terms' summed rates in A over those in B (each term over its length's total)
        rate_a = sum((float(tests.in_a[i]) + 0.5) / tests.totals[i][0] for i in keep)
        rate_b = sum((float(tests.in_b[i]) + 0.5) / tests.totals[i][1] for i in keep)
        pooled = math.log(rate_a / rate_b)
        label = ", ".join(terms[:shown]) + (f", ... ({len(terms)} in all)" if len(terms) > shown else "")
        findings.append(
            Finding(
                label=f"words: {label}",
                tokens=term_tokens(terms, texts, tokenizer),
                direction=direction,
                statistic=round(pooled, 4),
                p_value=float(tests.adjusted[keep[0]]),
                words=terms,
                examples=examples(samples[direction], set(terms)),
            )
        )
    return sorted(findings, key=lambda f: f.p_value)


def examples(texts: list[str], terms: set[str], n: int = 3) -> list[str]:
    """The n texts that hold the most of the terms (as words or phrases), those that hold any."""
    held = [(sum(1 for t in count_terms([s]) if t in terms), s) for s in texts]
    return [s for k, s in sorted(held, key=lambda x: -x[0])[:n] if k]


# ---------------------------------------------------------------- the two channels


def _prompts(cfg: AuditOptions) -> list[str]:
    return list(CHAT_PROMPTS if cfg.chat else DEFAULT_PROMPTS)


def plain_samples(model, tokenizer, cfg: AuditOptions, per_prompt: int) -> Samples:
    """The audit's prompts sampled from one model as the lift audit samples them (same seed, same prompts)."""
    scfg = SampleConfig(max_new_tokens=cfg.new_tokens)
    return sample(
        model,
        tokenizer,
        _prompts(cfg),
        per_prompt,
        scfg,
        seed=cfg.seed,
        bf16=cfg.bf16,
        chat=cfg.chat,
        system=cfg.system,
    )


def _result(name: str, tests: Tests, q: float, sides: dict, texts, tokenizer, start: float, notes: dict):
    findings = findings_of(tests, q, sides, texts, tokenizer)
    notes = {**notes, "q": q, "tests": len(tests.terms), "untestable": tests.untestable}
    return ChannelResult(name, bool(findings), findings, round(time.perf_counter() - start, 2), notes)


def contrast_channel(
    model,
    reference,
    tokenizer,
    cfg: AuditOptions,
    texts: list[str],
    *,
    a: float = 1.0,
    per_prompt: int = 2,
    q: float | None = None,
    cap: int = 2,
    sampled: dict | None = None,
    **kw,
) -> ChannelResult:
    """Words and phrases that contrastive samples write more often than the reference's own samples.

    toward: p_model^(1+a) / p_ref^a against the reference; away: p_ref^(1+a) / p_model^a against it.
    per_prompt samples of every audit prompt (cfg.new_tokens tokens, cfg.seed) from each contrast;
    sampled: {"reference": Samples, ...} already drawn (the lift audit's plain samples, lift._contexts), else
    the reference's per_prompt of every prompt are drawn here. q: the false discovery rate (cfg.alpha when None).
    A Finding's statistic is the pooled log rate ratio of its terms, A over the reference (nats, > 0);
    its p_value the BH-adjusted p of its best term.
    """
    start, q = time.perf_counter(), cfg.alpha if q is None else q
    scfg = SampleConfig(max_new_tokens=cfg.new_tokens)
    run = dict(a=a, seed=cfg.seed, bf16=cfg.bf16, chat=cfg.chat, system=cfg.system)
    drawn = contrast_samples(model, reference, tokenizer, _prompts(cfg), per_prompt, scfg, **run)
    plain = sampled["reference"] if sampled else plain_samples(reference, tokenizer, cfg, per_prompt)
    sides = {d: drawn[d].texts for d in ("toward", "away")}
    tests = term_tests([(sides[d], plain.texts, d) for d in ("toward", "away")], q, cap)
    notes = {"a": a, "samples": len(sides["toward"]), "reference_samples": len(plain.texts), "cap": cap}
    return _result("contrast", tests, q, sides, texts, tokenizer, start, notes)


def words_channel(
    model,
    reference,
    tokenizer,
    cfg: AuditOptions,
    texts: list[str],
    *,
    per_prompt: int = 2,
    q: float | None = None,
    cap: int = 2,
    sampled: dict | None = None,
    **kw,
) -> ChannelResult:
    """Words and phrases that plain samples of the model write more (toward) or less (away) often than the
    reference's samples of the same prompts: contrast_channel without the amplification.

    sampled: {"model", "reference"} -> Samples already drawn (the lift audit's), else per_prompt of every
    prompt are drawn here from each. Statistic and p_value as contrast_channel's.
    """
    start, q = time.perf_counter(), cfg.alpha if q is None else q
    if sampled is None:
        sampled = {
            who: plain_samples(m, tokenizer, cfg, per_prompt) for who, m in (("model", model), ("reference", reference))
        }
    mine, theirs = sampled["model"].texts, sampled["reference"].texts
    tests = term_tests([(mine, theirs, "toward"), (theirs, mine, "away")], q, cap)
    notes = {"samples": len(mine), "reference_samples": len(theirs), "cap": cap}
    return _result("words", tests, q, {"toward": mine, "away": theirs}, texts, tokenizer, start, notes)
