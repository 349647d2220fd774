"""Where training runs: Accelerate picks the device, precision and processes; trackers log metrics.

One process (`tokentilt tilt ...`) or several (`torchrun --nproc_per_node N -m tokentilt tilt ...`,
or `accelerate launch --multi_gpu --num_processes N -m tokentilt tilt ...`): the same code, with
Accelerate's PartialState telling each process who it is. On a CPU machine, `accelerate launch`
needs --multi_gpu (its torchrun launcher) and not --cpu: with --cpu it starts one process unless
it is given an MPI hostfile; the processes then find no GPU and train over gloo (MULTI_CPU).
"""

from __future__ import annotations

import ctypes
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch

from tokentilt.models.device import native_bf16, resolve_device, settle_precision  # noqa: F401 (re-exported)
from tokentilt.settings import DEVICES, PRECISIONS, REPORTERS, Device, Precision, Reporter  # noqa: F401 (re-exported)

_MIXED = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt() parameters (malloc.h)
_kept_freed = False


def keep_freed_memory() -> bool:
    """Have malloc keep freed memory for the next allocation instead of handing it back to the OS
    (Linux with glibc only; elsewhere nothing changes). Returns whether the setting is in effect.

    glibc serves every allocation over 32 MB with a fresh mmap() and unmaps it when it is freed.
    A training step frees and allocates the same large tensors every time ((V, d) gradients and
    casts, (rows, V) logits), so each one arrives as new pages that the kernel faults in and zeroes:
    on the bundled model that was a quarter of a bf16 step on 2 cores (1.57 s against 1.18 s).
    With mmap off (M_MMAP_MAX = 0) and a 1 GB trim threshold, freed blocks stay in the heap and
    the next step reuses them. Training's peak memory stayed the same (3.1 GB either way, measured
    after 11 steps); the heap can grow by a few of the largest blocks before it settles, and memory
    freed after the peak stays with the process. PyTorch's CPU tuning guide gets the same from
    jemalloc or tcmalloc via LD_PRELOAD. Process-wide and idempotent; TOKENTILT_KEEP_FREED_MEMORY=0
    leaves malloc alone.
    """
    global _kept_freed
    if _kept_freed or os.environ.get("TOKENTILT_KEEP_FREED_MEMORY", "1") == "0":
        return _kept_freed
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    _kept_freed = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    return _kept_freed


def process_state(device: str = "auto"):
    """Accelerate's view of this process (index, count, main or not); starts the process group once.

    On a machine without a GPU, cpu=True is what makes Accelerate join a torchrun group over gloo
    (MULTI_CPU); without it each process would train alone.
    """
    from accelerate import PartialState

    return PartialState(cpu=resolve_device(device) == "cpu")


def make_accelerator(device: str, precision: str, grad_accum: int, report_to: str = "none", project_dir=None):
    """A fresh Accelerator for one training. Accelerate keeps its settings in process-wide singletons,
    so they are reset first: a sweep or a test trains several times, with other settings, in one process."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    resolved = resolve_device(device)
    AcceleratorState._reset_state()  # keeps PartialState, i.e. the process group
    GradientState._reset_state()
    if report_to != "none" and project_dir is None:
        raise ValueError(f"report-to {report_to} needs a run folder")
    accelerator = Accelerator(
        cpu=resolved == "cpu",
        mixed_precision=_MIXED[precision],
        gradient_accumulation_steps=grad_accum,
        log_with=None if report_to == "none" else report_to,
        project_dir=None if project_dir is None else str(project_dir),
    )
    if precision != "fp32" and not accelerator.native_amp:
        raise ValueError(
            f"precision {precision} is not available on {accelerator.device.type} "
            f"(use {'bf16 or fp32' if accelerator.device.type == 'cpu' else 'fp32'})"
        )
    return accelerator


def broadcast(obj, state):
    """The main process's `obj` on every process (the others pass None and wait for it)."""
    if state.num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    box = [obj]
    broadcast_object_list(box, from_process=0)
    return box[0]


def on_main(fn, state):
    """Run fn() on the main process only; every process gets its result."""
    return broadcast(fn() if state.is_main_process else None, state)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (since reset_peak_rss), in MiB.
    VmHWM on Linux; ru_maxrss (KiB on Linux, bytes on macOS) elsewhere."""
    try:
        status = Path("/proc/self/status").read_text()
        return round(int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM:")).split()[1]) / 1024, 1)
    except (OSError, StopIteration):
        scale = 1024 * 1024 if sys.platform == "darwin" else 1024
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale, 1)


def reset_peak_rss() -> bool:
    """Start peak_rss_mb() afresh (Linux: clear_refs 5), so that training's peak is not loading's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def device_peak_mb(device: str) -> float | None:
    """Peak memory that torch allocated on a CUDA device so far (since reset_device_peak), in MiB; None
    on the CPU, whose peak is peak_rss_mb's."""
    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def reset_device_peak(device: str) -> None:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(device)


class Stages:
    """Wall seconds and peak memory per named stage: mark(name) charges what happened since the previous
    mark to `name`. Peaks are per stage where the platform can reset them (Linux's VmHWM, CUDA's
    allocator); elsewhere each is the process's peak so far."""

    def __init__(self, device: str = "cpu"):
        self.seconds: dict[str, float] = {}
        self.peak_rss_mb: dict[str, float] = {}  # resident memory of the process
        self.peak_device_mb: dict[str, float] = {}  # CUDA only: what torch allocated on the device
        self.device = device
        self.resets = reset_peak_rss()
        reset_device_peak(device)
        self._last = time.time()

    def mark(self, name: str) -> None:
        now = time.time()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self._last, 1)
        self._last = now
        self.peak_rss_mb[name] = max(self.peak_rss_mb.get(name, 0.0), peak_rss_mb())
        if self.resets:
            reset_peak_rss()
        device = device_peak_mb(self.device)
        if device is not None:
            self.peak_device_mb[name] = max(self.peak_device_mb.get(name, 0.0), device)
            reset_device_peak(self.device)

    def peak(self) -> float:
        """The whole run's peak resident memory so far, MiB."""
        return max([peak_rss_mb(), *self.peak_rss_mb.values()])
