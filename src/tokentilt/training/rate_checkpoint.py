"""Checkpoints of a tilt --rate run at its stage and round boundaries: DIR.partial/checkpoints/rate/.

A --rate run measures before training, calibrates b, measures the decode-time baseline at that b, then
trains up to rate-rounds times. After each of these it rewrites `state.safetensors`, which holds everything
the run has computed so far that a resume cannot recompute cheaply: the measurements (their dicts), the
samples before training, the calibration and the importance-weight pools (their tensors), the rounds'
(b, R) and the kept round's training history, and torch's global RNG state. The kept round's trainable
weights go to `round-<k>.safetensors` beside it, written before the state that names it.

Nothing is unpickled on load: every dataclass is stored as its fields, tensors in the safetensors file and
the rest as JSON in its metadata, and only the dataclasses in KINDS are rebuilt. Every file is written to a
temporary name and renamed over the old one, so a kill mid-write leaves the previous boundary usable.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tokentilt.measurement.calibrate import Calibration
from tokentilt.measurement.importance import Draw, Pool
from tokentilt.measurement.intervals import WindowCosts
from tokentilt.measurement.metrics import TiltCosts
from tokentilt.measurement.sampling import Samples, StepScores
from tokentilt.training.checkpoint import CheckpointError

FORMAT = "tokentilt-rate-1"
STATE = "state.safetensors"
# The dataclasses a checkpoint may hold, rebuilt by name from their fields (and nothing else is).
KINDS = {cls.__name__: cls for cls in (Samples, StepScores, Draw, Pool, Calibration, TiltCosts, WindowCosts)}


def pack(obj, tensors: dict[str, torch.Tensor]):
    """obj -> JSON-able value; its tensors go into `tensors` under fresh names."""
    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = obj.detach().cpu().contiguous().clone()  # no shared storage in a safetensors file
        return {"__tensor__": name}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        kind = type(obj).__name__
        if KINDS.get(kind) is not type(obj):
            raise TypeError(f"a --rate checkpoint cannot hold a {kind}")
        return {
            "__dataclass__": kind,
            "fields": {f.name: pack(getattr(obj, f.name), tensors) for f in dataclasses.fields(obj)},
        }
    if isinstance(obj, dict):  # keys may be floats (calibration's b -> R)
        return {"__dict__": [[pack(k, tensors), pack(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [pack(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [pack(v, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"a --rate checkpoint cannot hold a {type(obj).__name__}")


def unpack(value, tensors: dict[str, torch.Tensor]):
    """pack's inverse."""
    if isinstance(value, list):
        return [unpack(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__tuple__" in value:
        return tuple(unpack(v, tensors) for v in value["__tuple__"])
    if "__dict__" in value:
        return {_key(unpack(k, tensors)): unpack(v, tensors) for k, v in value["__dict__"]}
    if "__dataclass__" in value:
        cls = KINDS[value["__dataclass__"]]  # a KeyError for any other name
        return cls(**{k: unpack(v, tensors) for k, v in value["fields"].items()})
    raise ValueError(f"unknown entry {sorted(value)}")


def _key(k):
    return tuple(k) if isinstance(k, list) else k


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, tmp, metadata)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RateCheckpoint:
    """The newest boundary of a --rate run: `values` by name (before, samples_before, calibration, baseline,
    eval_pool, rounds), `boundary` (measure_before, calibrate, baseline, round-<k>) and the kept round's weights."""

    def __init__(self, folder: Path, values: dict | None = None, boundary: str | None = None, rng=None, weights=None):
        self.folder = Path(folder)
        self.values = values or {}
        self.boundary = boundary
        self.resumed_from = boundary  # the boundary a resumed run goes on from (None for a fresh one)
        self.rng = rng  # torch's global RNG state at the boundary
        self.weights = weights  # the kept round's trainable weights, with "rounds"

    @classmethod
    def load(cls, folder: Path) -> RateCheckpoint:
        """The checkpoint in `folder`; CheckpointError (one line) when it is missing or cannot be read."""
        path = Path(folder) / STATE
        if not path.is_file():
            raise CheckpointError(f"no --rate checkpoint to resume in {folder}")
        try:
            with safe_open(path, "pt") as f:
                meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"checkpoint {path} is not a tokentilt --rate checkpoint ({FORMAT})")
            tensors = load_file(path)
            values = unpack(json.loads(meta["state"]), tensors)
            weights = None
            if "rounds" in values:
                weights = load_file(Path(folder) / f"round-{values['rounds']['best'] + 1}.safetensors")
        except CheckpointError:
            raise
        except Exception as err:  # truncated, not safetensors, a missing round file, a field that does not fit
            lines = str(err).splitlines() or [type(err).__name__]
            raise CheckpointError(f"checkpoint {path} cannot be read: {lines[0]}") from None
        return cls(folder, values, meta["boundary"], tensors.get("rng"), weights)

    def get(self, name: str):
        return self.values.get(name)

    def restore_rng(self) -> None:
        """torch's global RNG as it was at the boundary (once, where the resumed run reaches it)."""
        if self.rng is not None:
            torch.set_rng_state(self.rng)
            self.rng = None

    def save(self, boundary: str, weights: dict[str, torch.Tensor] | None = None, **values) -> None:
        """Add `values` and write the boundary. With "rounds", `weights` are its kept round's (None: unchanged)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.values.update(values)
        rounds = self.values.get("rounds")
        if weights is not None:
            _atomic_save(
                {k: v.detach().cpu().contiguous() for k, v in weights.items()},
                self.folder / f"round-{rounds['best'] + 1}.safetensors",
            )
        tensors: dict[str, torch.Tensor] = {}
        state = json.dumps(pack(self.values, tensors))
        tensors["rng"] = torch.get_rng_state()
        _atomic_save(tensors, self.folder / STATE, {"format": FORMAT, "boundary": boundary, "state": state})
        self.boundary = boundary
        keep = f"round-{rounds['best'] + 1}.safetensors" if rounds else None
        for old in self.folder.glob("round-*.safetensors"):  # an earlier kept round's weights
            if old.name != keep:
                old.unlink()

    def size_mb(self) -> float:
        return sum(p.stat().st_size for p in self.folder.glob("*.safetensors")) / 2**20


def boundary_of(folder: Path) -> str | None:
    """The newest boundary written in `folder` (for tests and progress), None if none."""
    try:
        with safe_open(Path(folder) / STATE, "pt") as f:
            return (f.metadata() or {}).get("boundary")
    except Exception:
        return None
