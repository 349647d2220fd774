"""Inference with oneDNN's prepacked linear layers on the CPU.

PyTorch computes an fp32 `nn.Linear` on the CPU with MKL's sgemm. At the shapes of sampling it leaves
much of the machine idle: on the 2-core AVX2 machine of benchmarks/README.md (P8) the bundled model's
49,152 x 576 output head ran at 36 GFLOP/s for 64 rows, where oneDNN, with the weight reordered once
into its blocked layout, ran at 67. A 64-row R batch took 1.1-1.3x less time. That is what
`torch.compile`'s CPU backend does with frozen weights (`torch.ops.mkldnn._linear_pointwise`); the
compiler itself took minutes to build the bundled model's decoding step here, longer than it saves.

Only without autograd and autocast, and for weights that stay as they are inside: the packed weight
is in general a copy made on entry, which no gradient reaches and an in-place update would not change.
Results agree with `F.linear` within fp32 rounding (the sums run in another order).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# Below this many rows a call, only layers of at least BIG_LAYER weights pack. Measured end to end on
# the bundled model at 1 row (P8): packing every layer cost more than it saved (the copy is made on
# each entry), the 49,152 x 576 output head alone saved about 10%. At 64 rows every layer gains.
SMALL_BATCH = 16
BIG_LAYER = 4_000_000


def can_pack(model: nn.Module, rows: int = SMALL_BATCH) -> bool:
    """Whether packing applies: fp32 linear weights on the CPU, oneDNN's linear built into this torch,
    and room in memory for a second copy of them (at most half of what is free now)."""
    linears = _linears(model, rows)
    if not linears or not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    if any(m.weight.device.type != "cpu" or m.weight.dtype != torch.float32 for m in linears):
        return False
    size = sum(m.weight.numel() * 4 for m in linears)
    return size <= free_bytes() / 2


@contextmanager
def packed_linears(model: nn.Module, rows: int = 64, enabled: bool = True, head_only: bool = False):
    """While inside, every `nn.Linear` of `model` runs on a oneDNN copy of its weight, packed for about
    `rows` rows per call (any number works; below SMALL_BATCH rows, or with `head_only`, only the big
    layers, the output head, pack). Does nothing if `enabled` is False, `can_pack` says no, or an
    enclosing call packed them already.

    A call that needs autograd (grad enabled and a tensor requiring it) or runs under autocast uses
    F.linear with the live weight, as outside.
    """
    selected = 1 if head_only else rows
    linears = _linears(model, selected)
    if not enabled or any("forward" in m.__dict__ for m in linears) or not can_pack(model, selected):
        yield  # off, or packed already by an enclosing call (which unpacks on its exit)
        return
    try:
        for m in linears:
            m.forward = _packed_forward(m, torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), max(rows, 1)))
        yield
    finally:
        for m in linears:
            m.__dict__.pop("forward", None)  # back to nn.Linear.forward


def _packed_forward(m: nn.Linear, packed: torch.Tensor):
    def forward(x: torch.Tensor) -> torch.Tensor:
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or m.weight.requires_grad)
        if needs_grad or torch.is_autocast_enabled("cpu") or x.dtype != torch.float32:
            return F.linear(x, m.weight, m.bias)
        return _packed_linear(x, packed, m.bias)

    return forward


def _packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")  # no fused activation


def _linears(model: nn.Module, rows: int = SMALL_BATCH) -> list[nn.Linear]:
    """The layers to pack for calls of about `rows` rows."""
    layers = [m for m in model.modules() if type(m) is nn.Linear]
    return layers if rows >= SMALL_BATCH else [m for m in layers if m.weight.numel() >= BIG_LAYER]


def free_bytes() -> int:
    """Memory the kernel can hand out without swapping: MemAvailable, which counts the page cache it can
    drop. MemFree does not, so after reading a few GB of files the same run would skip its weight copies
    (and decode through another path, with other float roundings) on one machine state and not another."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not Linux: no measure, no packing
        return 0
