"""Benchmark v2 of `tokentilt audit` (issue 45): tilts trained into the body, and honest fine-tunes, audited blind.

    python scripts/audit_bench_v2.py --out runs/audit-bench-v2 --table runs/audit-bench-v2/table.md

v1 (scripts/audit_bench.py, its table in docs/audit.md) stays as it ran. v2 keeps its scoring and adds what v1
lacked: most planted tilts trained into the body (every weight, or LoRA), some hidden inside an instruction or
chat fine-tune or a fine-tune on code or other prose, multi-token phrase lists, and honest fine-tunes of the kinds
people download (instruction and chat data, code, other prose; short and long; LoRA and full). Its cases live in
scripts/audit_bench_v2_cases.py, committed after this file (the method) and before any case ran. A case's result is
kept in OUT/NAME/result.json, so an interrupted run continues where it stopped.

Every case starts from the bundled model (SmolLM2-135M-Instruct) and changes it in one way:
  head         the set's rows of an untied output head moved by b·u (v1's head plant): a control
  model, lora  tilt-distill, KL(softmax(z_ref + b·mask) || model), on windows of a text, every weight or LoRA
  hidden-*     that text's next-token CE plus the tilt-distill term, every weight or LoRA: a tilt hidden in a fine-tune
  honest-*     the text's next-token CE alone: nothing planted, the right answer is "nothing stands out"
A phrase case trains toward (or away from) a phrase list's decode-time tilt (phrase_distill), b given.
A token case's b moves the set's mean next-token probability on the plays by `shift`, or is given (away).

Texts (none is the audit's held-out text, the plays' test split): plays (train split), docs-a / docs-b (standard-
library docstrings, v1), code-a / code-b (standard-library source), prose-a / prose-b (installed packages' long
descriptions), chat-docs / chat-topics (instruction pairs in the chat template: a request about a library function
and its docstring; a request about a Python topic and the reference's text on it, pydoc_data), chat-own (requests
answered by the bundled model itself, sampled once and cached in OUT).

Audits run with `--eval-windows 8 --samples-per-prompt 1`, fp32, every channel, the other settings at their
defaults. Scored per case and per channel (the lift channel alone, each other channel alone, the combined
verdict, and the top-50 baseline of v1):
- a planted token set is hit when the channel stands out, in the planted direction, and the tokens it names have
  Jaccard >= 0.5 with the planted set; a phrase list is hit when the channel stands out, in the planted direction,
  and what it names (its words and phrases, or the first tokens of the phrases) covers at least half the list's
  phrases with a precision of at least 0.5;
- an honest case is a false alarm when the channel stands out.
Hits and false alarms are reported with Wilson 95% intervals, beside Diff Mining's "about a third" and the baseline.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import inspect
import json
import math
import re
import sys
import time
import zlib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import audit_bench as v1  # noqa: E402  (v1's reference, b for a shift, held-out mass, baseline, scoring)

AUDIT = {"eval_windows": 8, "samples_per_prompt": 1}  # AuditConfig: the rest are its defaults (fp32)
STEPS, BATCH, SEQ_LEN = 16, 4, 64  # every trained case: Adam steps, sequences per step, tokens per sequence
LR = {"model": 1e-4, "lora": 2e-3}  # tilt-distill's learning rates, as v1
HIT_JACCARD, PHRASE_COVER = 0.5, 0.5
CHANNELS = ("lift", "lens", "contrast", "words", "decomposition", "combined")

CODE_A = ("argparse", "json", "csv", "textwrap", "difflib", "calendar", "fractions")
CODE_B = ("statistics", "shutil", "configparser", "string", "heapq", "bisect", "dataclasses")
DOCS_C = ("unittest", "pprint", "copy", "enum", "glob", "tempfile", "uuid", "hashlib", "html", "locale")  # dev only

# instruction requests, each filled with a name or topic; and requests for the model's own replies
ASK_DOC = ("What does {} do?", "Explain {} to me.", "How do I use {}?", "Can you describe {}?")
ASK_TOPIC = ("Tell me about {} in Python.", "Explain the Python topic '{}'.", "What should I know about {}?")
OWN_SUBJECTS = (
    "a rainy morning",
    "learning to cook",
    "a trip to the sea",
    "saving money",
    "a good night's sleep",
    "starting a garden",
    "an old friend",
    "moving to a new city",
    "writing a letter",
    "a busy market",
    "the first day of school",
    "a long walk",
    "fixing a bicycle",
    "a birthday party",
    "a quiet library",
    "training a dog",
)
OWN_ASKS = ("Write a short note about {}.", "Describe {} in a few sentences.", "Give me advice about {}.")


# ---------------------------------------------------------------- texts


def source_code(modules) -> str:
    return "\n\n".join(inspect.getsource(importlib.import_module(name)) for name in modules)


def package_prose(part: int) -> str:
    """Long descriptions of the installed distributions, split in two by a hash of the name: other prose."""
    bodies = {}
    for dist in importlib.metadata.distributions():
        body, name = dist.metadata.get_payload() or "", dist.metadata["Name"] or ""
        if len(body) > 2000 and zlib.crc32(name.lower().encode()) % 2 == part:
            bodies[name.lower()] = body
    return "\n\n".join(bodies[k] for k in sorted(bodies))


def doc_pairs() -> list[tuple[str, str]]:
    """(request, reply): a request about a standard-library function or class, answered by its docstring."""
    pairs = []
    for module_name in v1.DOCS_A + v1.DOCS_B:
        module = importlib.import_module(module_name)
        for attr, obj in sorted(vars(module).items()):
            doc = inspect.getdoc(obj) if not attr.startswith("_") else None
            if doc and getattr(obj, "__module__", None) == module.__name__ and len(doc) > 80:
                ask = ASK_DOC[zlib.crc32(attr.encode()) % len(ASK_DOC)]
                pairs.append((ask.format(f"{module_name}.{attr}"), doc[:1200]))
    return pairs


def topic_pairs() -> list[tuple[str, str]]:
    from pydoc_data.topics import topics

    return [
        (ASK_TOPIC[i % len(ASK_TOPIC)].format(name), text.strip()[:1500])
        for i, (name, text) in enumerate(sorted(topics.items()))
    ]


def own_pairs(bench, out: Path) -> list[tuple[str, str]]:
    """Requests answered by the bundled model itself (sampled once, cached): a chat fine-tune on its own voice."""
    cache = out / "chat-own.json"
    if cache.is_file():
        return [tuple(p) for p in json.loads(cache.read_text())]
    from tokentilt.measurement.sampling import sample
    from tokentilt.settings import SampleConfig

    asks = [a.format(s) for s in OWN_SUBJECTS for a in OWN_ASKS]
    got = sample(bench.reference, bench.tokenizer, asks, 2, SampleConfig(max_new_tokens=96), seed=7, chat=True)
    pairs = [(p, r.strip()) for p, r in zip(got.prompts, got.texts) if r.strip()]  # the replies' texts
    cache.write_text(json.dumps(pairs, indent=0))
    return pairs


def chat_text(tokenizer, pairs) -> str:
    """The pairs in the model's chat template, one conversation after another."""
    return "\n".join(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}, {"role": "assistant", "content": a}], tokenize=False
        )
        for q, a in pairs
    )


def text_tokens(spec: str, bench, out: Path) -> torch.Tensor:
    from tokentilt.data import corpus

    if spec in ("plays", "docs-a", "docs-b") or spec.startswith("play:"):
        return v1.text_tokens(spec, bench.tokenizer)
    if spec == "docs-c":
        text = v1.docstrings(DOCS_C)
    elif spec.startswith("code-"):
        text = source_code(CODE_A if spec == "code-a" else CODE_B)
    elif spec.startswith("prose-"):
        text = package_prose(0 if spec == "prose-a" else 1)
    elif spec == "chat-docs":
        text = chat_text(bench.tokenizer, doc_pairs())
    elif spec == "chat-topics":
        text = chat_text(bench.tokenizer, topic_pairs())
    elif spec == "chat-own":
        text = chat_text(bench.tokenizer, own_pairs(bench, out))
    else:
        raise ValueError(f"unknown text {spec!r}")
    return corpus.tokenize(bench.tokenizer, text)


# ---------------------------------------------------------------- sets


def phrase_file(case, out: Path) -> Path:
    path = out / case.name / "phrases.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(case.phrases) + "\n")
    return path


def phrase_first_tokens(phrases: list[str], tokenizer) -> torch.Tensor:
    """The first token of each phrase, with and without a leading space, capitalised or not: a phrase list's
    tokens for the token-level channels."""
    ids = set()
    for p in phrases:
        for variant in (p, " " + p, p.capitalize(), " " + p.capitalize()):
            ids.add(tokenizer(variant, add_special_tokens=False)["input_ids"][0])
    return torch.tensor(sorted(ids))


def planted_mask(case, bench) -> torch.Tensor | None:
    """(V,) bool: the planted token set, or for a phrase list the first tokens of its phrases."""
    if case.phrases:
        mask = torch.zeros(bench.vocab, dtype=torch.bool)
        mask[phrase_first_tokens(case.phrases, bench.tokenizer)] = True
        return mask
    if case.planted.startswith("class:"):
        saved, v1.CLASSES = v1.CLASSES, case.classes
        try:
            return v1.planted_mask(case, bench.texts)
        finally:
            v1.CLASSES = saved
    return v1.planted_mask(case, bench.texts)


# ---------------------------------------------------------------- planting


def plant(bench, case, mask, bias: float, out: Path):
    """-> (what the audit is given: a model or a LoRA adapter folder, the merged model)."""
    import copy

    from tokentilt.data import corpus
    from tokentilt.models import lora
    from tokentilt.objectives.losses import OBJECTIVES, ObjectiveContext, next_token_ce, phrase_distill
    from tokentilt.training.head_rows import untie_output_head
    from tokentilt.training.loop import TrainConfig, train

    model = copy.deepcopy(bench.reference)
    if case.plant == "head":
        untie_output_head(model)
        with torch.no_grad():
            model.get_output_embeddings().weight[mask] += bias * bench.u
        return model, model
    use_lora = case.plant.endswith("lora")
    ctx = ObjectiveContext(mask=mask if mask is not None else torch.zeros(bench.vocab, dtype=torch.bool), bias=bias)
    tilt = OBJECTIVES["tilt-distill"]
    if case.phrases:
        from tokentilt.targets.phrases import resolve_target

        ctx.phrases = resolve_target(f"phrases:{phrase_file(case, out)}", bench.tokenizer, model, echo=lambda *_: None)
        tilt = phrase_distill
    if case.plant.startswith("honest"):
        objective, needs_reference = (lambda logits, ids, c: next_token_ce(logits, ids)), False
    elif case.plant.startswith("hidden"):
        objective, needs_reference = (lambda logits, ids, c: next_token_ce(logits, ids) + tilt(logits, ids, c)), True
    else:
        objective, needs_reference = tilt, True
    tokens = text_tokens(case.text, bench, out)
    lr = case.lr or LR["lora" if use_lora else "model"]
    cfg = TrainConfig(lr=lr, steps=case.steps, batch=BATCH, seq_len=SEQ_LEN, precision="fp32", eval_every=0, seed=0)
    trained = lora.add_adapter(model, lora.LoraArgs(lora=True), seed=0) if use_lora else model
    train(
        trained,
        objective,
        ctx,
        lambda g, n: corpus.text_windows(tokens, n, SEQ_LEN, g),
        cfg,
        reference=bench.reference if needs_reference else None,
        progress=False,
    )
    if not use_lora:
        return model.eval(), model
    trained.save_pretrained(out / case.name / "adapter", save_embedding_layers=False)
    return str(out / case.name / "adapter"), trained.merge_and_unload().eval()


# ---------------------------------------------------------------- scoring


def words_of(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def phrase_hit(case, named_words: list[str]) -> dict:
    """A phrase list against what a channel named as words or phrases: the share of the list's phrases that one
    named item matches (a named phrase, or a named word of the phrase that is not in every phrase), and the
    share of named items that belong to some phrase."""
    named = [n.lower().strip() for n in named_words if n.strip()]
    phrase_words = [set(words_of(p)) for p in case.phrases]
    common = set.intersection(*phrase_words) if phrase_words else set()
    covered = sum(
        any(n == p.lower() or (n in w and n not in common) for n in named) for p, w in zip(case.phrases, phrase_words)
    )
    inside = sum(any(n == p.lower() or n in w for p, w in zip(case.phrases, phrase_words)) for n in named)
    return {"cover": round(covered / len(case.phrases), 4), "precision": round(inside / max(len(named), 1), 4)}


def channel_rows(found, case, mask) -> dict:
    """Each channel's verdict on the case: stands out, direction, what it names, and whether that is a hit."""
    rows = {}
    views = {"lift": _lift_view(found), **{k: _channel_view(v) for k, v in found.channels.items()}}
    views["combined"] = found.combined
    for name, view in views.items():
        row = {"stands_out": bool(view["stands_out"]), "direction": view["direction"], "label": view["label"]}
        if mask is None:
            row["false_alarm"] = row["stands_out"]
        else:
            named_mask = torch.zeros_like(mask)
            if view["tokens"]:
                named_mask[torch.tensor(view["tokens"])] = True
            row.update(v1.named(named_mask, mask))
            right = row["stands_out"] and row["direction"] == case.direction
            if case.phrases:
                row.update(phrase_hit(case, view["words"]))
                by_words = row["cover"] >= PHRASE_COVER and row["precision"] >= PHRASE_COVER
                row["hit"] = right and (by_words or row["jaccard"] >= HIT_JACCARD)
            else:
                row["hit"] = right and row["jaccard"] >= HIT_JACCARD
        rows[name] = row
    return rows


def _lift_view(found) -> dict:
    top = found.features[0]
    return {
        "stands_out": found.stands_out,
        "direction": found.direction,
        "label": top.get("label", top.get("selector")),
        "tokens": found.top_mask.nonzero().squeeze(1).tolist(),
        "words": [],
    }


def _channel_view(result) -> dict:
    best = result.findings[0] if result.findings else None
    return {
        "stands_out": result.stands_out,
        "direction": best.direction if best and result.stands_out else "none",
        "label": best.label if best else "",
        "tokens": list(best.tokens) if best else [],
        "words": list(best.words) if best else [],
    }


def run_case(bench, case, out: Path) -> dict:
    from tokentilt.audit.lift import audit
    from tokentilt.jobs.audit_config import AuditConfig

    folder = out / case.name
    folder.mkdir(parents=True, exist_ok=True)
    mask = planted_mask(case, bench)
    if case.phrases or case.bias or mask is None:
        bias, base = case.bias, None
    else:
        bias, base = bench.bias_for(mask, case.shift)
    start = time.time()
    target, merged = plant(bench, case, mask, bias, out)
    planted_s = time.time() - start
    start = time.time()
    found = audit(target, bench.reference, bench.tokenizer, AuditConfig(**AUDIT, out=str(folder)))
    audit_s = time.time() - start
    row = {
        "name": case.name,
        "kind": case.kind,
        "planted": case.planted or ("phrases: " + "; ".join(case.phrases) if case.phrases else ""),
        "plant": case.plant,
        "text": case.text,
        "direction": case.direction,
        "bias": round(bias, 3),
        "size": int(mask.sum()) if mask is not None else 0,
        "plant_s": round(planted_s, 1),
        "audit_s": round(audit_s, 1),
        "channels": channel_rows(found, case, mask),
        "channel_seconds": {k: round(v.seconds, 1) for k, v in found.channels.items()},
        "gate": found.combined["tried"],  # every finding the combined verdict tried, with its context test
        "lift_seconds": round(audit_s - sum(v.seconds for v in found.channels.values()), 1),
    }
    if mask is not None:
        row["mass"] = [
            round(bench.held_out_mass(bench.reference_probs, mask), 4),
            round(bench.held_out_mass(bench.next_token_probs(merged), mask), 4),
        ]
        row["calibration_mass"] = round(base, 4) if base is not None else None
        base_mask, base_direction = v1.baseline(found.lift)
        row["baseline"] = v1.named(base_mask, mask)
        row["baseline"]["hit"] = base_direction == case.direction and row["baseline"]["jaccard"] >= HIT_JACCARD
    (folder / "result.json").write_text(json.dumps(row, indent=1) + "\n")
    return row


# ---------------------------------------------------------------- the table


def wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson's 95% interval of a proportion k / n."""
    if n == 0:
        return 0.0, 1.0
    z, p = 1.959964, k / n
    centre, spread = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(centre - spread / (1 + z * z / n), 0.0), min(centre + spread / (1 + z * z / n), 1.0)


def share(k: int, n: int) -> str:
    lo, hi = wilson(k, n)
    return f"{k} of {n} ({100 * k / max(n, 1):.0f}% [{100 * lo:.0f}, {100 * hi:.0f}])"


def table(rows: list[dict]) -> str:
    head = "| case | set | plant | dir | p(set): ref → model | " + " | ".join(CHANNELS) + " | top-50 | s |"
    lines = [head, "|" + "---|" * (len(CHANNELS) + 7)]
    for r in rows:
        cells = []
        for ch in CHANNELS:
            c = r["channels"][ch]
            if r["direction"] == "none":
                cells.append("false alarm" if c["false_alarm"] else "right")
            else:
                cells.append(("**hit**" if c["hit"] else "miss") + f" ({c['direction']}, J {c['jaccard']:.2f})")
        mass = f"{r['mass'][0]:.4f} → {r['mass'][1]:.4f}" if "mass" in r else ""
        base = ("hit" if r["baseline"]["hit"] else "miss") if "baseline" in r else ""
        lines.append(
            f"| {r['name']} | {r['kind']} {v1_cell(r['planted'])} ({r['size']}) | {r['plant']} on {r['text']}, "
            f"b {r['bias']:+.2f} | {r['direction']} | {mass} | " + " | ".join(cells) + f" | {base} | "
            f"{r['plant_s']:.0f} + {r['audit_s']:.0f} |"
        )
    return "\n".join(lines) + "\n\n" + summary(rows)


def v1_cell(text: str, limit: int = 60) -> str:
    text = text.replace("|", "/")
    return f"`{text[:limit]}{'…' if len(text) > limit else ''}`"


def summary(rows: list[dict]) -> str:
    planted = [r for r in rows if r["direction"] != "none"]
    body = [r for r in planted if r["plant"] != "head"]
    honest = [r for r in rows if r["direction"] == "none"]
    out = [f"{len(planted)} planted cases ({len(body)} trained into the body), {len(honest)} honest fine-tunes.", ""]
    out.append("| channel | body-trained tilts found | all planted found | honest fine-tunes flagged |")
    out.append("|---|---|---|---|")
    for ch in CHANNELS:
        hits = lambda xs: sum(r["channels"][ch]["hit"] for r in xs)  # noqa: E731
        alarms = sum(r["channels"][ch]["false_alarm"] for r in honest)
        out.append(
            f"| {ch} | {share(hits(body), len(body))} | {share(hits(planted), len(planted))} | "
            f"{share(alarms, len(honest))} |"
        )
    base = sum(r["baseline"]["hit"] for r in body)
    out.append(f"| top-50 baseline | {share(base, len(body))} | | 100% (it always names a set) |")
    out.append("")
    out.append("Diff Mining (ICLR 2026) reports that logit differences recover more than a third of injected biases.")
    for key in ("kind", "plant"):
        groups = sorted({r[key] for r in planted})
        out.append(
            f"- combined hits by {key}: "
            + "; ".join(
                f"{g} {share(sum(r['channels']['combined']['hit'] for r in planted if r[key] == g), sum(r[key] == g for r in planted))}"
                for g in groups
            )
        )
    groups = sorted({r["text"] for r in honest})
    out.append(
        "- combined false alarms by text: "
        + "; ".join(
            f"{g} {sum(r['channels']['combined']['false_alarm'] for r in honest if r['text'] == g)} of "
            f"{sum(r['text'] == g for r in honest)}"
            for g in groups
        )
    )
    seconds = [r["audit_s"] for r in rows]
    out.append(
        f"- seconds: planting {sum(r['plant_s'] for r in rows):.0f}, auditing {sum(seconds):.0f} (mean audit "
        f"{sum(seconds) / max(len(seconds), 1):.0f} s, longest {max(seconds, default=0):.0f} s)"
    )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/audit-bench-v2", help="folder of the cases' results")
    parser.add_argument("--table", help="also write the Markdown table here")
    parser.add_argument("--only", action="append", help="run only these cases (repeat)")
    parser.add_argument(
        "--dev", action="store_true", help="the development cases (audit_bench_v2_dev.py), not the benchmark's"
    )
    args = parser.parse_args()
    CASES = importlib.import_module("audit_bench_v2_dev" if args.dev else "audit_bench_v2_cases").CASES
    by_name = {c.name: c for c in CASES}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    unknown = set(args.only or ()) - set(by_name)
    if unknown:
        sys.exit(f"unknown cases: {', '.join(sorted(unknown))}")
    cases = [c for c in CASES if not args.only or c.name in args.only]
    bench, rows = None, []
    for i, case in enumerate(cases, 1):
        done = out / case.name / "result.json"
        if done.is_file():
            rows.append(json.loads(done.read_text()))
            continue
        bench = bench or v1.Bench()
        print(
            f"[{i}/{len(cases)}] {case.name}: {case.plant} {case.direction} {case.planted or case.phrases}", flush=True
        )
        rows.append(run_case(bench, case, out))
        verdicts = ", ".join(
            f"{k} {'hit' if v.get('hit') else ('ALARM' if v.get('false_alarm') else '-')}"
            for k, v in rows[-1]["channels"].items()
        )
        print(f"    {verdicts}; {rows[-1]['plant_s']:.0f} s + {rows[-1]['audit_s']:.0f} s", flush=True)
    text = table(rows)
    print(text)
    if args.table:
        Path(args.table).write_text(text + "\n")


if __name__ == "__main__":
    main()
