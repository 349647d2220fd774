"""Where a model runs: the device 'auto' means, and whether its bf16 is native (what precision 'auto' means).

Below every layer that measures or trains, so that option checks (settings.py) can ask the hardware.
"""

from __future__ import annotations

import platform
import sys

import torch


def resolve_device(name: str) -> str:
    """'auto' -> cuda, else mps, else cpu. A named device that is missing is a one-line error."""
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
    }
    if name == "auto":
        return next(d for d in ("cuda", "mps", "cpu") if available[d])
    if name not in available:
        raise ValueError(f"device must be one of {', '.join(('auto', *available))}, got {name!r}")
    if not available[name]:
        raise ValueError(f"device {name!r} is not available on this machine (try --device cpu)")
    return name


def native_bf16(device: str = "auto") -> bool:
    """Whether `device` (resolved as resolve_device does) runs bf16 matmuls natively: a GPU with
    bf16, or a CPU with AVX512-BF16 or AMX. Without them (an AVX2-only CPU), oneDNN emulates bf16 and
    a bf16 matmul is tens of times slower than fp32 (measured on an AVX2 EPYC: 1.2 against 75 GFLOP/s)."""
    resolved = resolve_device(device)
    if resolved == "cuda":
        return torch.cuda.is_bf16_supported()
    if resolved != "cpu":
        return False
    if platform.machine().lower() in X86:
        # oneDNN's own check (torch.ops.mkldnn._is_mkldnn_bf16_supported) says yes on any AVX512 CPU, where
        # it emulates bf16 too: on an AVX512 Xeon without AVX512-BF16 a batch-1 bf16 linear measured 36x
        # slower than fp32. The instructions themselves decide.
        return cpu_has_bf16(torch.cpu)
    try:  # ARM: oneDNN's check reads the BF16 extension itself
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


X86 = ("x86_64", "amd64", "i386", "i686", "x86")


def cpu_has_bf16(cpu) -> bool:
    """Whether an x86 CPU has AVX512-BF16 or AMX (cpu: torch.cpu, whose checks are private; a torch without
    them counts as no)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


_warned_bf16 = False


def settle_precision(precision: str, device: str = "auto") -> str:
    """'auto' -> bf16 where it is native (native_bf16), else fp32. bf16 asked for by name on a CPU
    that only emulates it is kept, with one warning on stderr per process (it is the user's choice,
    but a run 60x slower than it needs to be should not go unexplained)."""
    global _warned_bf16
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "bf16" and resolve_device(device) == "cpu" and not native_bf16("cpu") and not _warned_bf16:
        _warned_bf16 = True
        print(
            "tokentilt: warning: this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 autocast is "
            "emulated and much slower than fp32 here; --precision auto picks fp32 on such a CPU",
            file=sys.stderr,
        )
    return precision
