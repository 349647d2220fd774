"""The output head fused with the loss, a chunk of rows at a time: no (N, V) tensor for the batch.

The training step asks the model for its final hidden states h (the head's inputs) instead of its
logits. The loss then computes z = h·W^T for a chunk of rows, takes the chunk's loss and dL/dz at
once, turns dL/dz into dL/dh = dL/dz·W and dL/dW += dL/dz^T·h, and drops the chunk. Backward only
scales the stored gradients. This is the recompute-per-chunk scheme of Liger-Kernel's fused linear
losses. Peak memory is one chunk of logits plus dL/dW (V, d), instead of several (B·T, V) fp32
tensors; with V = 49,152 those dominate a training step long before the model does.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from tokentilt.settings import DEFAULT_CHUNK  # noqa: F401 (re-exported)

# row_loss(z, start, stop) -> this chunk's share of the loss; z (stop - start, V) are fp32 logits
RowLoss = Callable[[torch.Tensor, int, int], torch.Tensor]


@dataclass
class Head:
    """An output head (V, d) as the loss sees it: the matmul dtype and the chunk size."""

    weight: torch.Tensor  # (V, d), the head's weight (tied to the embedding or not)
    dtype: torch.dtype = torch.float32  # matmul dtype: bf16 under --bf16, as autocast would use
    chunk: int = DEFAULT_CHUNK  # rows per chunk
    _cast: torch.Tensor | None = field(default=None, repr=False)

    def cast(self) -> torch.Tensor:
        """The weight in the matmul dtype, detached; cast once per Head."""
        if self._cast is None:
            self._cast = self.weight.detach().to(self.dtype)
        return self._cast

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """(n, d) -> (n, V) logits at least fp32, without gradient (a frozen reference's)."""
        with torch.no_grad():
            return _wide(h.detach().to(self.dtype) @ self.cast().T)

    def loss(self, h: torch.Tensor, row_loss: RowLoss) -> torch.Tensor:
        """Sum over chunks of row_loss(h[chunk]·W^T, start, stop); gradients reach h and the weight."""
        if h.dim() != 2:
            raise ValueError(f"hidden rows must be (N, d), got shape {tuple(h.shape)}")
        return _ChunkedHeadLoss.apply(h, self.weight, row_loss, self)


def _wide(z: torch.Tensor) -> torch.Tensor:
    """bf16 / fp16 logits -> fp32; fp32 and fp64 stay as they are (the softmax runs in >= fp32)."""
    return z.float() if z.dtype in (torch.bfloat16, torch.float16) else z


class _ChunkedHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, row_loss: RowLoss, head: Head):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        w = head.cast()  # (V, d)
        acc = torch.float64 if head.dtype == torch.float64 else torch.float32  # the loss and dL/dW sum in this
        total = torch.zeros((), dtype=acc, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None  # (N, d)
        grad_w = None  # (V, d) in the accumulation dtype: the first chunk's product, then a sum (no zero-fill)
        for start in range(0, hidden.size(0), head.chunk):
            h = hidden[start : start + head.chunk].detach().to(head.dtype)  # (c, d)
            with torch.enable_grad():
                z = _wide(h @ w.T).requires_grad_()  # (c, V), the only chunk-sized logits
                loss = row_loss(z, start, start + h.size(0))
            if need_h or need_w:
                (grad_z,) = torch.autograd.grad(loss, z)  # (c, V)
                grad_z = grad_z.to(head.dtype)
                if need_h:
                    grad_h[start : start + h.size(0)] = grad_z @ w  # (c, d)
                if need_w:
                    part = grad_z.T @ h  # (V, d)
                    grad_w = part.to(acc) if grad_w is None else grad_w.add_(part)
            total += loss.detach()
        if need_w and grad_w is None:  # no rows
            grad_w = torch.zeros_like(weight, dtype=acc)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        if grad_out.item() != 1.0:  # the usual 1 skips a pass over the (V, d) gradient
            grad_h = None if grad_h is None else grad_h * grad_out
            grad_w = None if grad_w is None else grad_w * grad_out
        return grad_h, None if grad_w is None else grad_w.to(ctx.weight_dtype), None, None


def output_head(model) -> torch.nn.Module | None:
    """The model's output head (HF, PEFT, Model 5, or a wrapper that holds one), else None."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        head = next((m for name, m in model.named_modules() if name.split(".")[-1] == "lm_head"), None)
    return head


def fusable_head(model) -> torch.nn.Module | None:
    """The head, if it is a plain bias-free Linear (not, say, LoRA-wrapped): then the loss can take it over."""
    head = output_head(model)
    return head if type(head) is torch.nn.Linear and head.bias is None else None


@torch.no_grad()
def logits_come_from_head(model, head: torch.nn.Module, tokens: int = 8) -> bool:
    """Whether the model's logits are its head applied to what the head receives, and nothing after
    it (no soft-capping or scaling, as some architectures add), checked on one short probe in eval
    mode and fp32. Only then may the fused loss take the head over."""
    ids = (torch.arange(tokens, device=head.weight.device) % head.weight.shape[0])[None]  # (1, tokens)
    was_training = model.training
    model.eval()
    try:
        logits = model(input_ids=ids).logits.float()  # (1, tokens or fewer, V)
        with heads_return_inputs(head):
            hidden = model(input_ids=ids).logits  # (1, tokens or fewer, d)
    finally:
        model.train(was_training)
    if hidden.shape[:-1] != logits.shape[:-1] or hidden.shape[-1] != head.weight.shape[1]:
        return False
    return torch.allclose(hidden.to(head.weight.dtype) @ head.weight.T, logits, rtol=1e-4, atol=1e-4)


@contextmanager
def heads_return_inputs(*heads: torch.nn.Module):
    """While active, each head returns its input: the model's "logits" are its final hidden states.

    Only the instance's forward is replaced, so every wrapper around the model (Accelerate's
    autocast, DDP, PEFT, an adapter-off reference sharing the head) calls through unchanged."""
    heads = list({id(h): h for h in heads}.values())
    for h in heads:
        h.forward = _identity
    try:
        yield
    finally:
        for h in heads:
            h.__dict__.pop("forward", None)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x
