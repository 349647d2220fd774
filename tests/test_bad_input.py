"""Bad input, as a table: every case exits with code 2, one line on stderr that names the problem,
no traceback, and no output folder that looks complete. Cases marked early must fail before any
model is loaded or any training starts (those functions are replaced by ones that fail the test).

The CLI runs in-process on the tiny GPT-2 of conftest (context 128 tokens, vocabulary 50257).
"""

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import tokentilt.course.pretraining
import tokentilt.data.corpus
import tokentilt.jobs.eval
import tokentilt.jobs.experiments.like_x
import tokentilt.jobs.experiments.x_factor
import tokentilt.jobs.export
import tokentilt.jobs.pretrain
import tokentilt.jobs.tilt
import tokentilt.models.load
import tokentilt.training.placements
import tokentilt.training.rate
from tokentilt.cli import main

GOOD_TEXT = "The quick brown fox jumps over the lazy dog, and the box of wax is next to the axe. " * 6


class Files:
    """Builds argv for each subcommand with small working settings, and the files a case needs."""

    def __init__(self, tmp: Path, model: Path):
        self.tmp, self.model = tmp, str(model)
        self.out = tmp / "out"
        self.eval_text = self.text("eval.txt", GOOD_TEXT)

    def text(self, name: str, content) -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return str(path)

    def folder(self, name: str) -> str:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    def tilt(self, *extra):
        return [
            "tilt",
            "--model",
            self.model,
            "--toward",
            "x",
            "--objective",
            "kl-uniform",
            "--precision",
            "fp32",
            "--steps",
            "2",
            "--batch",
            "2",
            "--seq-len",
            "16",
            "--samples-per-prompt",
            "1",
            "--new-tokens",
            "4",
            "--eval-every",
            "0",
            "--eval-text",
            self.eval_text,
            "--eval-windows",
            "2",
            "--eval-seq-len",
            "16",
            "--out",
            str(self.out),
            *extra,
        ]

    def sweep(self, *extra):
        return [
            "sweep",
            "--model",
            self.model,
            "--toward",
            "x",
            "--objective",
            "kl-alpha-beta",
            "--lr",
            "1e-3",
            "--rate",
            "",
            "--bias",
            "3",
            "--steps",
            "2",
            "--batch",
            "2",
            "--seq-len",
            "16",
            "--samples-per-prompt",
            "1",
            "--new-tokens",
            "4",
            "--eval-text",
            self.eval_text,
            "--eval-windows",
            "2",
            "--eval-seq-len",
            "16",
            "--curve-points",
            "0",
            "--out",
            str(self.out),
            *extra,
        ]

    def eval(self, *extra):
        return [
            "eval",
            "--model",
            self.model,
            "--reference",
            self.model,
            "--toward",
            "x",
            "--samples-per-prompt",
            "1",
            "--new-tokens",
            "4",
            "--eval-text",
            self.eval_text,
            "--eval-windows",
            "2",
            "--eval-seq-len",
            "16",
            *extra,
        ]

    def audit(self, *extra, model=None):
        return [
            "audit",
            model or self.model,
            "--reference",
            self.model,
            "--eval-text",
            self.eval_text,
            "--eval-windows",
            "2",
            "--eval-seq-len",
            "16",
            "--samples-per-prompt",
            "1",
            "--new-tokens",
            "4",
            "--null-draws",
            "2",
            "--out",
            str(self.out),
            *extra,
        ]

    def generate(self, *extra):
        return ["generate", "--model", self.model, "--prompt", "Hello", "--new-tokens", "4", *extra]

    def pretrain(self, *extra):
        return [
            "pretrain",
            "--steps",
            "2",
            "--batch",
            "2",
            "--seq-len",
            "16",
            "--n-layer",
            "1",
            "--n-embd",
            "32",
            "--n-head",
            "2",
            "--eval-every",
            "1",
            "--out",
            str(self.out),
            *extra,
        ]

    def experiment(self, name, *extra):
        return ["experiment", name, "--epochs", "20", "--out", str(self.out), *extra]

    def common_words(self) -> str:
        """A list of the 3,000 commonest words of the plays: most of any text's words."""
        from tokentilt.targets.phrases import plays_reference

        return self.text("common.txt", "\n".join(w for w, _ in plays_reference().most_common(3000)))

    def yaml(self, content) -> str:
        return self.text("config.yaml", content)

    def model_folder(self, kind: str) -> str:
        """A broken model folder: 'empty', 'config' (config.json is not JSON), 'truncated' (safetensors cut)."""
        folder = Path(self.folder(f"model-{kind}"))
        if kind == "config":
            (folder / "config.json").write_text('{"model_type": "gpt2", "n_embd": ')
        if kind == "truncated":
            for f in Path(self.model).iterdir():
                if f.is_file() and f.name != "model.safetensors":
                    (folder / f.name).write_bytes(f.read_bytes())
            save_file({"w": torch.zeros(64, 64)}, folder / "whole.safetensors")
            (folder / "model.safetensors").write_bytes((folder / "whole.safetensors").read_bytes()[:100])
            (folder / "whole.safetensors").unlink()
        return str(folder)

    def existing_run(self) -> str:
        self.out.mkdir()
        (self.out / "summary.json").write_text("{}")
        (self.out / "config.yaml").write_text("steps: 1\n")
        return str(self.out)

    def unwritable_parent(self) -> str:
        """An output path whose parent cannot be written: a read-only folder, or for root (whom file
        permissions do not stop) a folder under /sys, where nobody may create one."""
        if os.geteuid() == 0:
            return "/sys/tokentilt-test/run"
        folder = Path(self.folder("read-only"))
        folder.chmod(0o555)
        return str(folder / "run")


@dataclass
class Case:
    id: str
    argv: callable  # Files -> argv
    message: str | tuple  # substring(s) the stderr line must hold
    early: bool = True  # must fail before loading a model or training
    env: dict | None = None


CASES = [
    # ---- selectors
    Case("tilt-selector-empty", lambda f: f.tilt("--toward", ""), "empty selector"),
    Case("tilt-selector-unknown-kind", lambda f: f.tilt("--toward", "foo:bar"), "unknown selector kind 'foo'"),
    Case("tilt-selector-bad-regex", lambda f: f.tilt("--toward", "regex:("), "bad regular expression"),
    Case("eval-selector-bad-regex", lambda f: f.eval("--toward", "regex:[a-"), "bad regular expression"),
    Case(
        "tilt-selector-matches-none",
        lambda f: f.tilt("--toward", "contains:qqqzzzqqqzzz"),
        "matches no token",
        early=False,
    ),
    Case("sweep-selector-matches-all", lambda f: f.sweep("--toward", "regex:"), "matches every token", early=False),
    Case(
        "tilt-selector-not-of-everything", lambda f: f.tilt("--toward", "not:regex:"), "matches no token", early=False
    ),
    Case("tilt-selector-stray-and", lambda f: f.tilt("--toward", "x &"), "stray '&'"),
    Case("sweep-selector-stray-or", lambda f: f.sweep("--toward", "| x"), "stray '|'"),
    Case("generate-selector-double-and", lambda f: f.generate("--toward", "x & & y", "--bias", "2"), "stray '&'"),
    Case("eval-selector-not-nothing", lambda f: f.eval("--toward", "not:"), "'not:' needs a selector"),
    Case("tilt-words-missing", lambda f: f.tilt("--toward", "words:/nonexistent/words.txt"), "words file not found"),
    Case("tilt-words-no-name", lambda f: f.tilt("--toward", "words:"), "'words:' needs a file name"),
    Case("tilt-words-empty", lambda f: f.tilt("--toward", "words:" + f.text("w.txt", "\n  \n")), "words file is empty"),
    Case(
        "eval-words-binary",
        lambda f: f.eval("--toward", "words:" + f.text("bin.words", b"\xff\xfe\x00\x81x\n")),
        ("words file is not UTF-8 text", "bin.words"),
    ),
    Case(
        "generate-words-nul-bytes",
        lambda f: f.generate("--toward", "words:" + f.text("nul.words", "ab\0cd\n")),
        ("looks binary", "nul.words"),
    ),
    # ---- words and phrases
    Case(
        "tilt-phrases-empty",
        lambda f: f.tilt("--toward", "phrases:" + f.text("p.txt", "\n# only a comment\n")),
        "phrases file is empty",
    ),
    Case("tilt-phrase-only-spaces", lambda f: f.tilt("--toward", "phrase:   "), "holds no word"),
    Case(
        "tilt-phrases-line-only-spaces",
        lambda f: f.tilt("--toward", "phrases:" + f.text("p.txt", "red\n   \n")),
        "line 2: the entry is only spaces",
    ),
    Case(
        "eval-phrases-not-utf8",
        lambda f: f.eval("--toward", "phrases:" + f.text("p.txt", b"caf\xe9\n")),
        "phrases file is not UTF-8 text",
    ),
    Case(
        "generate-phrases-missing",
        lambda f: f.generate("--toward", "phrases:/nonexistent/p.txt"),
        "phrases file not found",
    ),
    Case("tilt-phrase-inside-a-combination", lambda f: f.tilt("--toward", "x | phrase:red"), "stands alone"),
    Case("tilt-phrases-course-objective", lambda f: f.tilt("--toward", "phrase:red"), "tilted by tilt-distill only"),
    Case("sweep-phrases", lambda f: f.sweep("--toward", "phrase:red"), "sweep takes a token selector"),
    Case("audit-phrases", lambda f: f.audit("--toward", "phrases:colours"), "audit takes a token selector"),
    Case(
        "tilt-phrases-cover-every-word",
        lambda f: f.tilt("--toward", "phrases:" + f.common_words(), "--objective", "tilt-distill"),
        "nearly every word",
        early=False,
    ),
    Case("tilt-ids-non-numeric", lambda f: f.tilt("--toward", "ids:a,b"), "comma-separated integers"),
    Case(
        "generate-ids-negative", lambda f: f.generate("--toward", "ids:5,-3", "--bias", "1"), "must be >= 0, got [-3]"
    ),
    Case(
        "tilt-ids-out-of-range", lambda f: f.tilt("--toward", "ids:3,99999999"), "out of range [0, 50257)", early=False
    ),
    # ---- numbers
    Case("tilt-lr-nan", lambda f: f.tilt("--lr", "nan"), "lr must be positive"),
    Case("tilt-lr-inf", lambda f: f.tilt("--lr", "inf"), "lr must be positive, got inf"),
    Case("tilt-lr-not-a-number", lambda f: f.tilt("--lr", "fast"), "argument --lr: invalid float value: 'fast'"),
    Case("tilt-steps-zero", lambda f: f.tilt("--steps", "0"), "steps must be positive"),
    Case("tilt-batch-negative", lambda f: f.tilt("--batch", "-2"), "batch must be positive"),
    Case("tilt-grad-clip-negative", lambda f: f.tilt("--grad-clip", "-1"), "grad-clip"),
    Case(
        "tilt-rate-above-1", lambda f: f.tilt("--objective", "tilt-distill", "--rate", "1.5"), "rate must be in (0, 1)"
    ),
    Case("sweep-rate-zero", lambda f: f.sweep("--rate", "0"), "rate must be in (0, 1)"),
    Case("eval-rate-one", lambda f: f.eval("--rate", "1"), "rate must be in (0, 1)"),
    Case("eval-bias-and-rate", lambda f: f.eval("--bias", "2", "--rate", "0.5"), "give --bias or --rate, not both"),
    Case("tilt-top-p-2", lambda f: f.tilt("--top-p", "2"), "top-p must be in (0, 1]"),
    Case("generate-top-p-zero", lambda f: f.generate("--top-p", "0"), "top-p must be in (0, 1]"),
    Case("eval-top-p-nan", lambda f: f.eval("--top-p", "nan"), "top-p must be in (0, 1]"),
    Case("tilt-top-k-negative", lambda f: f.tilt("--top-k", "-1"), "top-k must be >= 0"),
    Case("generate-temperature-zero", lambda f: f.generate("--temperature", "0"), "temperature must be a positive"),
    Case("generate-samples-not-int", lambda f: f.generate("--samples", "two"), "invalid int value: 'two'"),
    Case("generate-samples-zero", lambda f: f.generate("--samples", "0"), "--samples must be positive"),
    Case("generate-new-tokens-zero", lambda f: f.generate("--new-tokens", "0"), "new-tokens must be positive"),
    Case("generate-empty-prompt", lambda f: f.generate("--prompt", " "), "prompts must be non-empty text"),
    Case(
        "tilt-seq-len-beyond-context",
        lambda f: f.tilt("--seq-len", "100000"),
        "seq-len 100000 is beyond the model's context of 128 tokens",
    ),
    Case(
        "eval-eval-seq-len-beyond-context",
        lambda f: f.eval("--eval-seq-len", "4096"),
        "eval-seq-len 4096 is beyond the model's context of 128 tokens",
    ),
    Case("tilt-eval-windows-zero", lambda f: f.tilt("--eval-windows", "0"), "eval-windows must be positive"),
    Case(
        "tilt-samples-per-prompt-zero",
        lambda f: f.tilt("--samples-per-prompt", "0"),
        "samples-per-prompt and new-tokens must be positive",
    ),
    Case("sweep-seq-len-zero", lambda f: f.sweep("--seq-len", "0"), "seq-len must be positive"),
    Case("sweep-lr-negative", lambda f: f.sweep("--lr", "1e-3,-1"), "lr values must be positive"),
    Case("sweep-bias-inf", lambda f: f.sweep("--bias", "inf"), "bias values must be finite"),
    Case("sweep-bias-nan", lambda f: f.sweep("--bias", "3,nan"), "bias values must be finite"),
    Case("sweep-curve-points-negative", lambda f: f.sweep("--curve-points", "-1"), "curve-points must be >= 0"),
    Case("sweep-objective-unknown", lambda f: f.sweep("--objective", "bogus"), "objective must be one of"),
    Case("pretrain-steps-zero", lambda f: f.pretrain("--steps", "0"), "steps must be positive"),
    Case(
        "pretrain-heads-do-not-divide",
        lambda f: f.pretrain("--n-embd", "30", "--n-head", "4"),
        "must be divisible by n_head",
    ),
    Case("pretrain-dropout-above-1", lambda f: f.pretrain("--dropout", "1.5"), "dropout must be in [0, 1)"),
    Case("pretrain-seq-len-beyond-block", lambda f: f.pretrain("--seq-len", "512"), "must be <= block-size"),
    Case("experiment-l1-epochs-zero", lambda f: f.experiment("l1-vs-l2", "--epochs", "0"), "epochs"),
    Case("experiment-x-factor-lr-nan", lambda f: f.experiment("x-factor", "--lr", "nan", "--model", f.model), "lr"),
    Case(
        "experiment-like-x-unknown-optimizer",
        lambda f: f.experiment("like-x", "--optimizer", "rmsprop"),
        "optimizer must be one of sgd, adam, adamw",
    ),
    Case("experiment-unknown-name", lambda f: ["experiment", "z-factor"], "invalid choice: 'z-factor'"),
    # ---- config files
    Case("tilt-config-missing", lambda f: f.tilt("--config", "/nonexistent/c.yaml"), "config file not found"),
    Case(
        "tilt-config-a-folder", lambda f: f.tilt("--config", f.folder("a-folder")), "config file is not a regular file"
    ),
    Case("tilt-config-invalid-yaml", lambda f: f.tilt("--config", f.yaml("lr: [1e-3,\n")), "is not valid YAML"),
    Case("sweep-config-is-a-list", lambda f: f.sweep("--config", f.yaml("- a\n- b\n")), "must hold a mapping"),
    Case(
        "tilt-config-unknown-key",
        lambda f: f.tilt("--config", f.yaml("colour: red\n")),
        "unknown option(s) in config file: colour",
    ),
    Case(
        "eval-config-unknown-key",
        lambda f: f.eval("--config", f.yaml("steps: 3\n")),
        "unknown option(s) in config file: steps",
    ),
    Case(
        "tilt-config-wrong-type", lambda f: f.tilt("--config", f.yaml("steps: many\n")), "bad value for steps: 'many'"
    ),
    Case("tilt-config-bool-for-number", lambda f: f.tilt("--config", f.yaml("lr: true\n")), "bad value for lr: True"),
    Case(
        "pretrain-config-fraction-for-int",
        lambda f: f.pretrain("--config", f.yaml("n_layer: 2.5\n")),
        "bad value for n-layer: 2.5",
    ),
    Case("tilt-config-number-key", lambda f: f.tilt("--config", f.yaml("1: 2\n")), "option names must be text"),
    Case(
        "tilt-config-binary",
        lambda f: f.tilt("--config", f.text("c.yaml", b"lr: \xff\xfe\n")),
        ("is not UTF-8 text", "c.yaml"),
    ),
    Case(
        "tilt-config-prompts-empty",
        lambda f: f.tilt("--config", f.yaml("prompts: []\n")),
        "prompts must be a non-empty list",
    ),
    Case(
        "eval-config-prompts-not-a-list",
        lambda f: f.eval("--config", f.yaml("prompts: 5\n")),
        "bad value for prompts: 5",
    ),
    Case(
        "sweep-config-prompts-a-mapping",
        lambda f: f.sweep("--config", f.yaml("prompts: {a: b}\n")),
        "bad value for prompts",
    ),
    Case("tilt-config-toward-a-list", lambda f: f.tilt("--config", f.yaml("toward: [x, y]\n")), "bad value for toward"),
    # ---- files and models
    Case("tilt-eval-text-missing", lambda f: f.tilt("--eval-text", "/nonexistent/eval.txt"), "text file not found"),
    Case("sweep-eval-text-empty", lambda f: f.sweep("--eval-text", f.text("empty.txt", "\n\n")), "text file is empty"),
    Case("eval-eval-text-a-folder", lambda f: f.eval("--eval-text", f.folder("a-folder")), "not a regular file"),
    Case(
        "tilt-eval-text-binary",
        lambda f: f.tilt("--eval-text", f.text("bin.txt", b"\x89PNG\xff\x00\xfe")),
        "text file is not UTF-8 text",
    ),
    Case(
        "tilt-eval-text-too-short",
        lambda f: f.tilt("--eval-text", f.text("short.txt", "Hello there.")),
        "too short for one window of 16 tokens",
        early=False,
    ),
    Case(
        "eval-eval-text-too-short",
        lambda f: f.eval("--eval-text", f.text("short.txt", "One two three."), "--eval-seq-len", "64"),
        "too short for one window of 64 tokens",
        early=False,
    ),
    Case(
        "tilt-model-folder-empty", lambda f: f.tilt("--model", f.model_folder("empty")), "no config.json", early=False
    ),
    Case(
        "eval-model-config-corrupt",
        lambda f: f.eval("--model", f.model_folder("config")),
        "cannot load model",
        early=False,
    ),
    Case(
        "generate-model-safetensors-truncated",
        lambda f: f.generate("--model", f.model_folder("truncated")),
        "cannot load model",
        early=False,
    ),
    Case(
        "tilt-model-missing", lambda f: f.tilt("--model", "/nonexistent/model"), "model folder not found", early=False
    ),
    Case(
        "tilt-hub-id-offline",
        lambda f: f.tilt("--model", "tokentilt-test/no-such-model-anywhere"),
        "not in the local Hugging Face cache",
        early=False,
        env={"HF_HUB_OFFLINE": "1"},
    ),
    Case(
        "experiment-like-x-checkpoint-missing",
        lambda f: f.experiment("like-x", "--checkpoint", "/nonexistent/ck"),
        "checkpoint folder not found",
    ),
    # ---- output
    Case("tilt-out-is-a-file", lambda f: f.tilt("--out", f.text("a-file", "x")), "exists and is not a folder"),
    Case("sweep-out-is-a-file", lambda f: f.sweep("--out", f.text("a-file", "x")), "exists and is not a folder"),
    Case("tilt-out-under-a-file", lambda f: f.tilt("--out", f.text("a-file", "x") + "/run"), "is not a folder"),
    Case("tilt-out-parent-not-writable", lambda f: f.tilt("--out", f.unwritable_parent()), "is not writable"),
    Case("eval-out-folder-missing", lambda f: f.eval("--out", str(f.tmp / "no" / "such" / "r.json")), "does not exist"),
    Case("tilt-out-holds-a-run", lambda f: f.tilt("--out", f.existing_run()), "already holds a run"),
    Case("pretrain-out-holds-a-run", lambda f: f.pretrain("--out", f.existing_run()), "already holds a run"),
    Case(
        "experiment-out-holds-a-run",
        lambda f: f.experiment("l1-vs-l2", "--out", f.existing_run()),
        "already holds a run",
    ),
    # ---- audit
    Case("audit-no-model", lambda f: ["audit"], "the following arguments are required: MODEL"),
    Case("audit-model-missing", lambda f: f.audit(model="/nonexistent/model"), "model folder not found", early=False),
    Case("audit-toward-bad-regex", lambda f: f.audit("--toward", "regex:("), "bad regular expression"),
    Case("audit-toward-stray-or", lambda f: f.audit("--toward", "x |"), "stray '|'"),
    Case("audit-channels-unknown", lambda f: f.audit("--channels", "lens,tea"), "unknown channel 'tea'"),
    Case(
        "audit-toward-matches-none",
        lambda f: f.audit("--toward", "contains:qqqzzzqqqzzz"),
        "matches no token",
        early=False,
    ),
    Case("audit-words-missing", lambda f: f.audit("--words", "/nonexistent/w.txt"), "words file not found"),
    Case("audit-words-empty", lambda f: f.audit("--words", f.text("w.txt", "\n")), "words file is empty"),
    Case("audit-windows-zero", lambda f: f.audit("--eval-windows", "0"), "eval-windows must be positive"),
    Case(
        "audit-config-unknown-key",
        lambda f: f.audit("--config", f.yaml("steps: 3\n")),
        "unknown option(s) in config file: steps",
    ),
    Case(
        "audit-config-min-tokens-zero",
        lambda f: f.audit("--config", f.yaml("min_tokens: 0\n")),
        "min-tokens must be positive",
    ),
    Case("audit-config-wrong-type", lambda f: f.audit("--config", f.yaml("top: many\n")), "bad value for top: 'many'"),
    Case("audit-null-draws-not-int", lambda f: f.audit("--null-draws", "many"), "invalid int value: 'many'"),
    Case(
        "audit-seq-len-beyond-context",
        lambda f: f.audit("--eval-seq-len", "4096"),
        "eval-seq-len 4096 is beyond the model's context of 128 tokens",
    ),
    Case("audit-text-missing", lambda f: f.audit("--eval-text", "/nonexistent/t.txt"), "text file not found"),
    Case(
        "audit-text-too-short",
        lambda f: f.audit("--eval-text", f.text("short.txt", "Hello there.")),
        "too short for one window of 16 tokens",
        early=False,
    ),
    Case("audit-out-is-a-file", lambda f: f.audit("--out", f.text("a-file", "x")), "exists and is not a folder"),
    Case("audit-out-holds-a-run", lambda f: f.audit("--out", f.existing_run()), "already holds a run"),
    Case(
        "sweep-out-other-settings",
        lambda f: f.sweep(
            "--out", f.text("sw/runs.jsonl", '{"kind": "settings", "settings": {"steps": 1}}\n').rsplit("/", 1)[0]
        ),
        "other settings",
    ),
]


def no_slow_work(*args, **kwargs):
    raise AssertionError("bad input reached a model load or training")


@pytest.fixture
def guard_slow_work(monkeypatch):
    # every module that binds load_model at import is imported above, before any patch: one first
    # imported while the patch is on (the CLI imports jobs lazily) would keep the fake for good
    for module in (tokentilt.models.load, tokentilt.training.rate, tokentilt.jobs.eval, tokentilt.jobs.export):
        monkeypatch.setattr(module, "load_model", no_slow_work)
    for module in (
        tokentilt.training.placements,
        tokentilt.course.pretraining,
        tokentilt.jobs.experiments.like_x,
        tokentilt.jobs.experiments.x_factor,
    ):
        monkeypatch.setattr(module, "train", no_slow_work)
    monkeypatch.setattr(tokentilt.data.corpus, "split_text", no_slow_work)


def snapshot(folder: Path) -> dict:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def test_the_table_is_big_and_distinct():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, tiny_model_dir, capsys, monkeypatch, request):
    files = Files(tmp_path, tiny_model_dir)
    argv = case.argv(files)
    outs = [Path(a) for a in argv[argv.index("--out") + 1 :][:1]] if "--out" in argv else []
    before = {o: snapshot(o) for o in outs}
    for key, value in (case.env or {}).items():
        monkeypatch.setenv(key, value)
    if case.early:
        request.getfixturevalue("guard_slow_work")
    capsys.readouterr()

    code = main(argv)

    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("tokentilt: error: ") and "Traceback" not in err
    for part in (case.message,) if isinstance(case.message, str) else case.message:
        assert part in lines[0]
    for out in outs:
        assert snapshot(out) == before[out]  # nothing new, nothing removed
        partial = out.with_name(out.name + ".partial")
        assert not (partial / "summary.json").exists() and not (out / "sweep.csv").exists()
