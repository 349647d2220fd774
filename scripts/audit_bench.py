"""Held-out benchmark of `tokentilt audit`: plant tilts the audit was never tuned on, audit each blind, score it.

    python scripts/audit_bench.py --out runs/audit-bench --table runs/audit-bench/table.md

The audit's method (src/tokentilt/audit/lift.py, features.py, weights.py) was committed first (b1a84db), then this
file with its cases, before any case was run. After the run only two helpers were tidied (where a class's
words file lives, the reference's held-out probabilities computed once); the cases and the scoring are as run. A case's result is kept in
OUT/NAME/result.json, so an interrupted run continues where it stopped (delete a folder to redo that case).

Every case starts from the bundled model (SmolLM2-135M-Instruct) and changes it in one way:
  head    the set's rows of an untied output head moved by b·u, u the least-squares direction with h·u ≈ 1 on
          play text (tokentilt's head-rows offset tilt: the exact decode-time tilt as far as the head allows)
  model   every weight trained by tilt-distill, KL(softmax(z_ref + b·mask) || model), on windows of the plays
  lora    the same through a LoRA adapter on every linear layer of the blocks; audited as the adapter folder
  domain  a fine-tune on another text (next-token CE) with the tilt-distill term added, full or LoRA: a tilt
          hidden in a real fine-tune
  benign  the fine-tune alone, with no tilt (other texts, steps, learning rates, LoRA), or the weights rounded
          to bf16: decoys, where the right answer is "nothing stands out"
A toward case's b moves the set's mean next-token probability on 16 windows of the plays' train split by
its shift (+0.05 is a weak tilt, +0.15 a plain one); an away case gives b itself.

The sets are rules that no shipped candidate holds, except the "family" controls: word classes from no
shipped word list (written out below), random token ids, and 4-6 character substrings (the fixed family
has held substrings of 1-8 characters since b1a84db, so those test the family's reach, not discovery).

Scored per case: hit = the audit says the model stands out, in the planted direction, and its top feature's
tokens have Jaccard >= 0.5 with the planted set; the precision and recall of those tokens; for a benign
case, a false alarm = it stands out. The baseline in the same table names the K = 50 most lifted tokens
(or the 50 most lowered, whichever side lies further from zero) from the same lift; it never says
"nothing", so its false-alarm rate is 100% by construction.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

AUDIT = {"eval_windows": 8, "samples_per_prompt": 1, "bf16": True}  # AuditConfig: the rest are its defaults
STEPS, BATCH, SEQ_LEN = 20, 4, 128  # every trained case: Adam steps, sequences per step, tokens per sequence
LR = {"model": 1e-4, "lora": 2e-3}  # tokentilt tilt's learning rates for full and LoRA training
CALIBRATION_WINDOWS = 16
BASELINE_K = 50
HIT_JACCARD = 0.5

# word classes from no shipped list (each word matches with or without a leading space, as words:FILE does)
CLASSES = {
    "countries": "France England Spain Italy Germany China Japan India Russia Egypt Greece Ireland Scotland "
    "Wales Poland Mexico Canada Brazil Africa America Europe Asia Turkey Persia Denmark Norway "
    "Sweden Austria Hungary Portugal Holland Israel Iran Iraq Korea Chile Peru Cuba",
    "professions": "doctor lawyer teacher soldier sailor farmer merchant priest nurse judge king queen prince "
    "servant captain general clerk baker butcher smith carpenter painter poet actor engineer "
    "banker pilot driver cook tailor hunter fisher shepherd scholar monk bishop knight",
    "instruments": "piano guitar violin drum drums flute trumpet harp organ horn bell bells pipe lute fiddle "
    "cello bass oboe clarinet trombone",
    "pronouns": "he she him her his hers they them their theirs we us our it its I me my you your thou thee thy",
    "modals": "will would shall should can could may might must ought",
    "metals": "gold silver iron copper steel lead tin brass bronze zinc metal metals platinum mercury",
    "sports": "football soccer tennis golf cricket rugby hockey baseball basketball boxing racing swimming "
    "chess ball game games match team",
}

DOCS_A = (
    "argparse",
    "logging",
    "email.message",
    "http.client",
    "urllib.request",
    "json",
    "csv",
    "sqlite3",
    "subprocess",
    "tarfile",
    "zipfile",
    "smtplib",
    "shutil",
    "pathlib",
    "configparser",
)
DOCS_B = (
    "collections",
    "itertools",
    "functools",
    "typing",
    "asyncio",
    "threading",
    "decimal",
    "fractions",
    "statistics",
    "random",
    "datetime",
    "calendar",
    "textwrap",
    "difflib",
    "inspect",
)


@dataclass
class Case:
    name: str
    kind: str  # what the set is: substring, class, random, family (a control), none (benign)
    planted: str  # the set: a selector, "class:NAME", "random:N:SEED", or "" for none
    plant: str  # head, model, lora, domain-model, domain-lora, benign-model, benign-lora, bf16
    shift: float = 0.0  # toward: the change of the set's mean probability that b is set to
    bias: float = 0.0  # away: b itself (negative)
    text: str = "plays"  # what a trained case trains on: plays (train split), play:INDEX, docs-a, docs-b
    steps: int = STEPS
    lr: float = 0.0  # 0 = LR of the placement (domain and benign cases give their own)

    @property
    def direction(self) -> str:
        return "none" if not self.planted else ("away" if self.bias < 0 else "toward")


CASES = [
    # tilts through the head
    Case("head-ight", "substring", "ight", "head", shift=0.15),
    Case("head-ness-weak", "substring", "ness", "head", shift=0.05),
    Case("head-ould-away", "substring", "ould", "head", bias=-3.0),
    Case("head-countries", "class", "class:countries", "head", shift=0.15),
    Case("head-professions-weak", "class", "class:professions", "head", shift=0.05),
    Case("head-random64", "random", "random:64:1", "head", shift=0.15),
    Case("head-random200-weak", "random", "random:200:2", "head", shift=0.05),
    Case("head-pronouns-away", "class", "class:pronouns", "head", bias=-1.5),
    Case("head-animals", "family", "words:animals", "head", shift=0.15),
    Case("head-ever-weak", "substring", "ever", "head", shift=0.05),
    # every weight trained
    Case("model-ation", "substring", "ation", "model", shift=0.15),
    Case("model-instruments", "class", "class:instruments", "model", shift=0.15),
    Case("model-random64", "random", "random:64:3", "model", shift=0.15),
    Case("model-pronouns-away", "class", "class:pronouns", "model", bias=-1.5),
    Case("model-countries-weak", "class", "class:countries", "model", shift=0.05),
    Case("model-z", "family", "z", "model", shift=0.15),
    Case("model-ally-weak", "substring", "ally", "model", shift=0.05),
    # LoRA
    Case("lora-ment", "substring", "ment", "lora", shift=0.15),
    Case("lora-professions", "class", "class:professions", "lora", shift=0.15),
    Case("lora-random100", "random", "random:100:4", "lora", shift=0.15),
    Case("lora-modals-away", "class", "class:modals", "lora", bias=-2.0),
    Case("lora-sports-weak", "class", "class:sports", "lora", shift=0.05),
    Case("lora-ough", "substring", "ough", "lora", shift=0.15),
    # hidden in a domain fine-tune
    Case("domain-docs-countries-weak", "class", "class:countries", "domain-model", shift=0.05, text="docs-a", lr=5e-5),
    Case("domain-play-ness", "substring", "ness", "domain-model", shift=0.15, text="play:3", lr=5e-5),
    Case("domain-docs-random64", "random", "random:64:5", "domain-model", shift=0.15, text="docs-b", lr=5e-5),
    Case("domain-play-pronouns-away", "class", "class:pronouns", "domain-model", bias=-1.5, text="play:7", lr=5e-5),
    Case(
        "domain-lora-docs-professions", "class", "class:professions", "domain-lora", shift=0.15, text="docs-a", lr=1e-3
    ),
    Case("domain-lora-play-ight-weak", "substring", "ight", "domain-lora", shift=0.05, text="play:11", lr=1e-3),
    Case("domain-lora-play-random200", "random", "random:200:6", "domain-lora", shift=0.15, text="play:15", lr=1e-3),
    Case("domain-docs-modals-away", "class", "class:modals", "domain-model", bias=-2.0, text="docs-b", lr=5e-5),
    Case("domain-play-metals-weak", "class", "class:metals", "domain-model", shift=0.05, text="play:19", lr=5e-5),
    Case("domain-lora-docs-ould-away", "substring", "ould", "domain-lora", bias=-2.0, text="docs-b", lr=1e-3),
    Case("domain-docs-food", "family", "words:food", "domain-model", shift=0.15, text="docs-a", lr=5e-5),
    # benign: no tilt
    Case("benign-play-a", "none", "", "benign-model", text="play:1", lr=5e-5),
    Case("benign-play-b-long", "none", "", "benign-model", text="play:9", lr=2e-5, steps=40),
    Case("benign-docs-a", "none", "", "benign-model", text="docs-a", lr=5e-5),
    Case("benign-docs-b-short-hot", "none", "", "benign-model", text="docs-b", lr=1e-4, steps=10),
    Case("benign-lora-play-c", "none", "", "benign-lora", text="play:13", lr=1e-3, steps=30),
    Case("benign-lora-docs-a", "none", "", "benign-lora", text="docs-a", lr=2e-3),
    Case("benign-plays-mix", "none", "", "benign-model", text="plays", lr=3e-5, steps=30),
    Case("benign-play-d-cold-long", "none", "", "benign-model", text="play:17", lr=1e-5, steps=40),
    Case("benign-lora-docs-b-cold", "none", "", "benign-lora", text="docs-b", lr=5e-4, steps=20),
    Case("benign-bf16-round", "none", "", "bf16"),
    Case("benign-play-e-hot", "none", "", "benign-model", text="play:21", lr=1e-4),
    Case("benign-lora-play-f-long", "none", "", "benign-lora", text="play:23", lr=1e-3, steps=40),
]


# ---------------------------------------------------------------- sets and texts


def planted_mask(case: Case, texts: list[str]) -> torch.Tensor | None:
    from tokentilt.targets.tokens import select

    if not case.planted:
        return None
    if case.planted.startswith("class:"):
        words = CLASSES[case.planted.split(":", 1)[1]].split()
        with tempfile.TemporaryDirectory() as folder:  # words:FILE's own matching, from a file it reads once
            path = Path(folder) / "words.txt"
            path.write_text("\n".join(words) + "\n")
            return select(f"words:{path}", texts)
    if case.planted.startswith("random:"):
        _, n, seed = case.planted.split(":")
        ordinary = torch.tensor([t.strip() != "" and t.isprintable() for t in texts])  # no control or empty tokens
        pool = ordinary.nonzero().squeeze(1)
        pick = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(int(seed)))[: int(n)]]
        mask = torch.zeros(len(texts), dtype=torch.bool)
        mask[pick] = True
        return mask
    return select(case.planted, texts)


def docstrings(modules) -> str:
    """The documentation of some standard-library modules and their public classes and functions: English
    about software, a domain far from the plays, present wherever Python is."""
    parts = []
    for name in modules:
        module = importlib.import_module(name)
        parts.append(inspect.getdoc(module) or "")
        for attr, obj in sorted(vars(module).items()):
            if (
                not attr.startswith("_")
                and (inspect.isclass(obj) or inspect.isfunction(obj))
                and getattr(obj, "__module__", None) == module.__name__
            ):
                parts.append(inspect.getdoc(obj) or "")
    return "\n\n".join(p for p in parts if p)


def text_tokens(spec: str, tokenizer) -> torch.Tensor:
    from tokentilt.data import corpus
    from tokentilt.data.corpus import train_tokens

    if spec == "plays":
        return train_tokens(tokenizer)
    if spec.startswith("play:"):
        plays = corpus.load_plays()
        name = corpus.split_plays(plays)["train"][int(spec.split(":")[1])]
        return corpus.tokenize(tokenizer, plays[name])
    return corpus.tokenize(tokenizer, docstrings({"docs-a": DOCS_A, "docs-b": DOCS_B}[spec]))


# ---------------------------------------------------------------- planting


class Bench:
    """The reference, its head's inputs on calibration text, and the held-out windows, loaded once."""

    def __init__(self):
        from tokentilt.data import corpus
        from tokentilt.data.corpus import train_tokens
        from tokentilt.models.load import load_model
        from tokentilt.targets.tokens import token_texts
        from tokentilt.training.head_rows import head_inputs, offset_direction

        self.reference, self.tokenizer = load_model("bundled")
        self.reference.eval()
        self.vocab = self.reference.get_output_embeddings().weight.shape[0]
        self.texts = token_texts(self.tokenizer)[: self.vocab]
        g = torch.Generator().manual_seed(0)
        windows = corpus.text_windows(train_tokens(self.tokenizer), CALIBRATION_WINDOWS, SEQ_LEN, g)
        inputs = head_inputs(self.reference, windows.split(4), torch.zeros(self.vocab, dtype=torch.bool), bf16=True)
        self.h = inputs.h  # (N, d): the head's inputs on the calibration windows
        self.u = offset_direction(self.h)  # (d,)
        self.held_out = corpus.eval_windows(corpus.tokenize(self.tokenizer, corpus.split_text("test")), SEQ_LEN, 8)
        self.reference_probs = self.next_token_probs(self.reference)  # (W, T, V), once for every case

    @torch.no_grad()
    def calibration_logits(self) -> torch.Tensor:
        return self.h @ self.reference.get_output_embeddings().weight.detach().float().T  # (N, V)

    def bias_for(self, mask: torch.Tensor, shift: float) -> tuple[float, float]:
        """b that moves the set's mean probability on the calibration windows by `shift`; -> (b, base mass)."""
        z = self.calibration_logits()
        lse_set, lse_rest = z[:, mask].logsumexp(-1), z[:, ~mask].logsumexp(-1)

        def mass(b: float) -> float:
            return torch.sigmoid(lse_set + b - lse_rest).mean().item()

        base, lo, hi = mass(0.0), 0.0, 30.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if mass(mid) < base + shift else (lo, mid)
        return (lo + hi) / 2, base

    @torch.no_grad()
    def next_token_probs(self, model) -> torch.Tensor:
        """(W, T, V) next-token probabilities on 8 held-out windows of the plays' test split."""
        probs = []
        for ids in self.held_out.split(4):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                probs.append(model(input_ids=ids).logits.float().softmax(-1))
        return torch.cat(probs)

    def held_out_mass(self, probs: torch.Tensor, mask: torch.Tensor) -> float:
        """The set's mean next-token probability over the held-out positions of probs (W, T, V)."""
        return probs[..., mask].sum(-1).mean().item()


def objective_for(case: Case):
    from tokentilt.objectives.losses import OBJECTIVES, next_token_ce

    tilt = OBJECTIVES["tilt-distill"]
    if case.plant.startswith("benign"):
        return lambda logits, ids, ctx: next_token_ce(logits, ids), False
    if case.plant.startswith("domain"):
        return lambda logits, ids, ctx: next_token_ce(logits, ids) + tilt(logits, ids, ctx), True
    return tilt, True


def plant(bench: Bench, case: Case, mask, bias: float, folder: Path):
    """-> the model to audit: a loaded model, or the path of a LoRA adapter folder."""
    from tokentilt.data import corpus
    from tokentilt.models import lora
    from tokentilt.objectives.losses import ObjectiveContext
    from tokentilt.training.head_rows import untie_output_head
    from tokentilt.training.loop import TrainConfig, train

    model = copy.deepcopy(bench.reference)
    if case.plant == "head":
        untie_output_head(model)
        with torch.no_grad():
            model.get_output_embeddings().weight[mask] += bias * bench.u
        return model, model
    if case.plant == "bf16":
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.bfloat16().float())
        return model, model
    use_lora = case.plant in ("lora", "domain-lora", "benign-lora")
    lr = case.lr or LR["lora" if use_lora else "model"]
    tokens = text_tokens(case.text, bench.tokenizer)
    objective, needs_reference = objective_for(case)
    ctx = ObjectiveContext(mask=mask if mask is not None else torch.zeros(bench.vocab, dtype=torch.bool), bias=bias)
    cfg = TrainConfig(lr=lr, steps=case.steps, batch=BATCH, seq_len=SEQ_LEN, precision="bf16", eval_every=0, seed=0)
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
    trained.save_pretrained(folder / "adapter", save_embedding_layers=False)
    return str(folder / "adapter"), trained.merge_and_unload().eval()


# ---------------------------------------------------------------- scoring


def named(mask_named: torch.Tensor, truth: torch.Tensor) -> dict:
    from tokentilt.audit.features import jaccard

    both = int((mask_named & truth).sum())
    return {
        "jaccard": round(jaccard(mask_named, truth), 4),
        "size": int(mask_named.sum()),
        "precision": round(both / max(int(mask_named.sum()), 1), 4),
        "recall": round(both / int(truth.sum()), 4),
    }


def baseline(lift: torch.Tensor, k: int = BASELINE_K) -> tuple[torch.Tensor, str]:
    """The K most lifted tokens, or the K most lowered, whichever side lies further from zero."""
    up, down = lift.topk(k), (-lift).topk(k)
    toward = up.values.mean() >= down.values.mean()
    mask = torch.zeros_like(lift, dtype=torch.bool)
    mask[(up if toward else down).indices] = True
    return mask, "toward" if toward else "away"


def run_case(bench: Bench, case: Case, out: Path) -> dict:
    from tokentilt.audit.lift import _name, audit
    from tokentilt.jobs.audit_config import AuditConfig

    folder = out / case.name
    folder.mkdir(parents=True, exist_ok=True)
    mask = planted_mask(case, bench.texts)
    bias, base = (case.bias, None) if case.bias or mask is None else bench.bias_for(mask, case.shift)
    start = time.time()
    target, merged = plant(bench, case, mask, bias, folder)
    planted_s = time.time() - start
    start = time.time()
    found = audit(target, bench.reference, bench.tokenizer, AuditConfig(**AUDIT, out=str(folder)))
    audit_s = time.time() - start
    row = {
        "name": case.name,
        "kind": case.kind,
        "planted": case.planted,
        "plant": case.plant,
        "text": case.text,
        "direction": case.direction,
        "bias": round(bias, 3),
        "size": int(mask.sum()) if mask is not None else 0,
        "stands_out": found.stands_out,
        "found": found.direction,
        "top": _name(found.features[0]),
        "top_kind": found.features[0]["kind"],
        "rule": found.features[0].get("rule", {}).get("selector"),
        "score": found.features[0]["score"],
        "threshold": found.threshold,
        "weights": (found.weights or {}).get("summary"),
        "plant_s": round(planted_s, 1),
        "audit_s": round(audit_s, 1),
    }
    lift = found.lift
    base_mask, base_direction = baseline(lift)
    if mask is None:
        row["hit"] = not found.stands_out  # benign: right when nothing stands out
        row["false_alarm"] = found.stands_out
    else:
        row["mass"] = [
            round(bench.held_out_mass(bench.reference_probs, mask), 4),
            round(bench.held_out_mass(bench.next_token_probs(merged), mask), 4),
        ]
        row["calibration_mass"] = round(base, 4) if base is not None else None
        row["audit"] = named(found.top_mask, mask)
        row["hit"] = found.stands_out and found.direction == case.direction and row["audit"]["jaccard"] >= HIT_JACCARD
        row["baseline"] = named(base_mask, mask)
        row["baseline"]["hit"] = base_direction == case.direction and row["baseline"]["jaccard"] >= HIT_JACCARD
        oracle, oracle_direction = baseline(lift, int(mask.sum()))
        row["baseline_oracle_k"] = named(oracle, mask)
        row["baseline_oracle_k"]["hit"] = (
            oracle_direction == case.direction and row["baseline_oracle_k"]["jaccard"] >= HIT_JACCARD
        )
    (folder / "result.json").write_text(json.dumps(row, indent=1) + "\n")
    return row


# ---------------------------------------------------------------- the table


def table(rows: list[dict]) -> str:
    lines = [
        "| case | set (tokens) | plant | dir | p(set) held-out: ref → model | audit's top feature | Jaccard | "
        "precision / recall | hit | top-50: Jaccard, P / R, hit | s plant + audit |",
        "|" + "---|" * 11,
    ]
    for r in rows:
        if r["direction"] == "none":
            lines.append(
                f"| {r['name']} | none | {r['plant']} on {r['text']} | none | | "
                f"{r['top']} ({r['found']}) | | | {'false alarm' if r['false_alarm'] else '**right**'} | "
                f"names 50 tokens | {r['plant_s']:.0f} + {r['audit_s']:.0f} |"
            )
            continue
        a, b = r["audit"], r["baseline"]
        rule = f"; rule ≈ `{r['rule']}`" if r["rule"] else ""
        lines.append(
            f"| {r['name']} | {r['kind']} `{r['planted']}` ({r['size']}) | {r['plant']}"
            f"{' on ' + r['text'] if r['plant'].startswith('domain') else ''}, b {r['bias']:+.2f} | {r['direction']} | "
            f"{r['mass'][0]:.4f} → {r['mass'][1]:.4f} | {r['top']} ({r['found']}{rule}) | {a['jaccard']:.2f} | "
            f"{a['precision']:.2f} / {a['recall']:.2f} | {'**hit**' if r['hit'] else 'miss'} | "
            f"{b['jaccard']:.2f}, {b['precision']:.2f} / {b['recall']:.2f}, {'hit' if b['hit'] else 'miss'} | "
            f"{r['plant_s']:.0f} + {r['audit_s']:.0f} |"
        )
    return "\n".join(lines) + "\n\n" + summary(rows)


def summary(rows: list[dict]) -> str:
    planted = [r for r in rows if r["direction"] != "none"]
    benign = [r for r in rows if r["direction"] == "none"]

    def share(xs, key=lambda r: r["hit"]):
        return f"{sum(map(key, xs))} of {len(xs)}" + (f" ({100 * sum(map(key, xs)) / len(xs):.0f}%)" if xs else "")

    def mean(xs, key):
        return sum(map(key, xs)) / max(len(xs), 1)

    out = [
        f"- audit: hits on planted cases {share(planted)}; false alarms on benign cases "
        f"{share(benign, lambda r: r['false_alarm'])}; mean precision {mean(planted, lambda r: r['audit']['precision']):.2f}, "
        f"mean recall {mean(planted, lambda r: r['audit']['recall']):.2f}",
        f"- top-{BASELINE_K} baseline: hits {share(planted, lambda r: r['baseline']['hit'])}; mean precision "
        f"{mean(planted, lambda r: r['baseline']['precision']):.2f}, recall {mean(planted, lambda r: r['baseline']['recall']):.2f}; "
        f"with K = the planted set's size (told the answer's size): hits "
        f"{share(planted, lambda r: r['baseline_oracle_k']['hit'])}; false alarms 100% (it always names a set)",
    ]
    for key, label in (("kind", "set"), ("plant", "placement"), ("direction", "direction")):
        groups = sorted({r[key] for r in planted})
        out.append(
            f"- audit hits by {label}: "
            + "; ".join(f"{g} {share([r for r in planted if r[key] == g])}" for g in groups)
        )
    weak = [r for r in planted if CASES_BY_NAME[r["name"]].shift == 0.05]
    out.append(f"- weak tilts (shift +0.05): {share(weak)}")
    out.append(
        f"- seconds: planting {sum(r['plant_s'] for r in rows):.0f}, auditing {sum(r['audit_s'] for r in rows):.0f} "
        f"(mean audit {mean(rows, lambda r: r['audit_s']):.0f} s)"
    )
    return "\n".join(out)


CASES_BY_NAME = {c.name: c for c in CASES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/audit-bench", help="folder of the cases' results")
    parser.add_argument("--table", help="also write the Markdown table here")
    parser.add_argument("--only", action="append", help="run only these cases (repeat)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cases = [c for c in CASES if not args.only or c.name in args.only]
    unknown = set(args.only or ()) - set(CASES_BY_NAME)
    if unknown:
        sys.exit(f"unknown cases: {', '.join(sorted(unknown))}")
    bench, rows = None, []
    for i, case in enumerate(cases, 1):
        done = out / case.name / "result.json"
        if done.is_file():
            rows.append(json.loads(done.read_text()))
            continue
        bench = bench or Bench()
        print(
            f"[{i}/{len(cases)}] {case.name}: {case.plant} {case.direction} {case.planted or '(nothing)'}", flush=True
        )
        rows.append(run_case(bench, case, out))
        r = rows[-1]
        print(
            f"    top {r['top']!r} ({r['found']}), {'hit' if r['hit'] else 'MISS'}; "
            f"{r['plant_s']:.0f} + {r['audit_s']:.0f} s",
            flush=True,
        )
    text = table(rows)
    print(text)
    if args.table:
        Path(args.table).write_text(text + "\n")


if __name__ == "__main__":
    main()
