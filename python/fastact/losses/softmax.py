"""softmax and log_softmax on the fused row kernels (any dim: the dim is
moved last, which copies only when it is not already last and contiguous;
fake kernels and autograd in ops/softmax.py)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

_ops = torch.ops.fastact

__all__ = ["softmax", "log_softmax"]


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
