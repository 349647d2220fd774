"""Run folders that are either complete or clearly not: work in DIR.partial, rename at the end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

RUN_MARKERS = ("summary.json", "config.yaml")


class RunFolderError(ValueError):
    """The output folder cannot be used (holds a run, or is not ours to replace)."""


def holds_run(folder: Path) -> bool:
    return any((folder / m).exists() for m in RUN_MARKERS)


class RunFolder:
    """Everything is written to `<out>.partial/`; finish() moves it to `<out>/` in one rename."""

    def __init__(self, out: str | Path, overwrite: bool = False, resume: bool = False):
        self.out = Path(out)
        self.tmp = self.out.with_name(self.out.name + ".partial")
        self.resume = resume
        if resume:  # continue the unfinished run in <out>.partial/
            if self.out.is_dir() and holds_run(self.out):
                raise RunFolderError(
                    f"{self.out} holds a finished run; there is nothing to resume "
                    "(drop --resume, and add --overwrite to redo it)"
                )
            if not (self.tmp / "config.yaml").is_file():
                raise RunFolderError(f"nothing to resume: no unfinished run in {self.tmp}")
            return
        if self.out.exists():
            if not self.out.is_dir():
                raise RunFolderError(f"output path exists and is not a folder: {self.out}")
            if any(self.out.iterdir()):
                if not holds_run(self.out):
                    raise RunFolderError(f"refusing to write into non-empty folder that is not a run: {self.out}")
                if not overwrite:
                    raise RunFolderError(f"output folder already holds a run: {self.out} (use --overwrite)")

    def start(self) -> RunFolder:
        if self.resume:
            return self
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        return self

    def path(self, name: str) -> Path:
        return self.tmp / name

    def write_json(self, name: str, data) -> None:
        self.path(name).write_text(json.dumps(data, indent=2) + "\n")

    def write_yaml(self, name: str, data) -> None:
        self.path(name).write_text(yaml.safe_dump(data, sort_keys=False))

    def append_jsonl(self, name: str, record: dict) -> None:
        with self.path(name).open("a") as f:
            f.write(json.dumps(record) + "\n")

    def finish(self) -> Path:
        if self.out.exists():
            shutil.rmtree(self.out)
        self.tmp.rename(self.out)
        return self.out


def keep_records_until(path, step: int, key: str = "step") -> None:
    """Drop the metrics.jsonl records after `step` (written after the checkpoint that resumes); key="round":
    those of the rounds after the first `step` rounds of a --rate run."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)[key] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):  # a line cut short by kill -9
            continue
    path.write_text("".join(line + "\n" for line in kept))


def write_samples(path, before, after) -> None:
    """samples.jsonl: one line per sample with its prompt, and the generated text and token ids
    before and after (the same prompt and seed), so anyone can recount R with their own code. Each side
    sampled until its own R was known (evaluate.sample_until), so the side with more samples has lines of
    its own at the end.

    In chat, each record also holds the prompt as the model saw it (`formatted`, in its chat template),
    and "text" and "ids" are the reply: the tokens before its end-of-turn token."""
    before_ids, after_ids = before.replies(), after.replies()
    longer = before if len(before.prompts) >= len(after.prompts) else after
    with open(path, "w", encoding="utf-8") as f:
        for i, prompt in enumerate(longer.prompts):  # each side sampled until its own R was known
            record = {
                "prompt": prompt,
                **({"formatted": longer.formatted[i]} if longer.formatted else {}),
                **({"before": {"text": before.texts[i], "ids": before_ids[i]}} if i < len(before.prompts) else {}),
                **({"after": {"text": after.texts[i], "ids": after_ids[i]}} if i < len(after.prompts) else {}),
            }
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
