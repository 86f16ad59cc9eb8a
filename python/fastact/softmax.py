"""softmax and log_softmax on the fused row kernels (any dim: the dim is
moved last, which copies only when it is not already last and contiguous)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.library import register_autograd, register_fake

_ops = torch.ops.fastact

__all__ = ["softmax", "log_softmax"]


@register_fake("fastact::softmax_rows")
def _softmax_fake(input, log):
    return torch.empty_like(input, memory_format=torch.contiguous_format)


@register_fake("fastact::softmax_rows_backward")
def _softmax_backward_fake(grad_output, output, log):
    return torch.empty_like(output, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(output)
    ctx.log = inputs[1]


def _backward(ctx, grad):
    (out,) = ctx.saved_tensors
    return _ops.softmax_rows_backward(grad, out, ctx.log), None


register_autograd("fastact::softmax_rows", _backward, setup_context=_setup)


def _implicit_dim(ndim: int) -> int:
    # torch.nn.functional's legacy choice when dim is None
    return 0 if ndim in (0, 1, 3) else 1


def _apply(input: Tensor, dim: Optional[int], dtype, log: bool) -> Tensor:
    if dtype is not None:
        input = input.to(dtype)
    if dim is None:
        dim = _implicit_dim(input.dim())
    if input.dim() == 0:
        return _ops.softmax_rows(input.reshape(1, 1), log).reshape(())
    moved = input.movedim(dim, -1)
    rows = moved.reshape(-1, moved.shape[-1]) if moved.numel() else moved.reshape(0, moved.shape[-1])
    out = _ops.softmax_rows(rows, log)
    return out.reshape(moved.shape).movedim(-1, dim)


def softmax(input: Tensor, dim: Optional[int] = None, _stacklevel: int = 3, dtype=None) -> Tensor:
    """``torch.nn.functional.softmax``."""
    return _apply(input, dim, dtype, log=False)


def log_softmax(input: Tensor, dim: Optional[int] = None, _stacklevel: int = 3, dtype=None) -> Tensor:
    """``torch.nn.functional.log_softmax``."""
    return _apply(input, dim, dtype, log=True)
