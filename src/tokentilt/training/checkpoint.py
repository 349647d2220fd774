"""Checkpoints that resume a training bitwise: `checkpoints/step-N/` inside an unfinished run folder.

One checkpoint holds
- model.safetensors: the trainable parameters (every weight, or only LoRA's adapter);
- optimizer.pt: the optimizer's state_dict (tensors, numbers, tuples; read with weights_only=True);
- rng-<process>.pt: the batch generator and torch's global generator (dropout) of each process;
- state.json: the step, the history of step records so far, and the early-stopping counters.

Nothing is unpickled on load: safetensors, JSON, and torch.load(weights_only=True), which
refuses anything but tensors and plain containers. Accelerate's save_state/load_state (1.15)
also reads with weights_only=True, but it widens torch's allow-list to NumPy's array globals
while it loads (and clears that list afterwards), and our batch generator would have to be
registered with it as a custom object; what we need fits in the functions below.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

_STEP = re.compile(r"step-(\d+)")


class CheckpointError(ValueError):
    """No usable checkpoint (missing, corrupt, or from another model)."""


@dataclass
class Resumed:
    step: int  # the last finished step
    history: list[dict]  # its step records
    early_stop: dict  # {"best_val", "bad_evals"}


def trainable(model) -> dict[str, torch.Tensor]:
    """The parameters that train, by name (tied weights once)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Finished checkpoints under `folder`, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), d) for d in folder.iterdir() if d.is_dir() and (m := _STEP.fullmatch(d.name))]
    return sorted(found)


def save(
    folder: Path,
    step: int,
    model,
    optimizer,
    generator: torch.Generator,
    history: list[dict],
    early_stop: dict,
    state,
    keep: int,
) -> Path:
    """Write checkpoints/step-<step>/ (collectively: every process calls it) and keep the newest `keep`.

    The main process writes the weights, optimizer and state; every process writes its own RNG
    states. The folder is built as step-N.tmp and renamed, so a kill mid-write leaves no
    checkpoint that looks complete.
    """
    final, tmp = folder / f"step-{step}", folder / f"step-{step}.tmp"
    if state.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    state.wait_for_everyone()
    torch.save(
        {"batches": generator.get_state(), "torch": torch.get_rng_state()}, tmp / f"rng-{state.process_index}.pt"
    )
    if state.is_main_process:
        save_file({k: v.detach().cpu().contiguous() for k, v in trainable(model).items()}, tmp / "model.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(
            json.dumps({"step": step, "history": history, "early_stop": early_stop, "processes": state.num_processes})
            + "\n"
        )
    state.wait_for_everyone()
    if state.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for _, old in checkpoints(folder)[:-keep]:
            shutil.rmtree(old)
    state.wait_for_everyone()
    return final


def load(folder: Path, model, optimizer, generator: torch.Generator, state) -> Resumed:
    """Restore the newest checkpoint under `folder` into model, optimizer and generators."""
    found = checkpoints(folder)
    if not found:
        raise CheckpointError(f"no checkpoint to resume in {folder}")
    step, path = found[-1]
    try:
        meta = json.loads((path / "state.json").read_text())
        if meta["processes"] != state.num_processes:
            raise CheckpointError(
                f"checkpoint {path} was written by {meta['processes']} process(es); "
                f"resume with the same number (now {state.num_processes})"
            )
        weights = load_file(path / "model.safetensors")
        optim_state = torch.load(path / "optimizer.pt", weights_only=True)
        rng = torch.load(path / f"rng-{state.process_index}.pt", weights_only=True)
    except CheckpointError:
        raise
    except Exception as err:  # unreadable, truncated, or refused by weights_only (an UnpicklingError)
        raise CheckpointError(f"checkpoint {path} cannot be read: {str(err).splitlines()[0]}") from None
    expected = trainable(model)
    if set(weights) != set(expected) or any(weights[k].shape != v.shape for k, v in expected.items()):
        raise CheckpointError(f"checkpoint {path} does not match this model's trainable parameters")
    with torch.no_grad():
        for name, p in expected.items():
            p.copy_(weights[name])
    try:
        optimizer.load_state_dict(optim_state)
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"checkpoint {path}: optimizer state does not fit: {err}") from None
    generator.set_state(rng["batches"])
    torch.set_rng_state(rng["torch"])
    return Resumed(step=meta["step"], history=meta["history"], early_stop=meta["early_stop"])
