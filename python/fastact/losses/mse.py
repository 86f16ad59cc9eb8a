"""mse_loss. 'mean' and 'sum': one fused reduction of (x - t)^2 (nothing of
the input's size is written) and a backward pass 2 s (x - t) that reads the
scalar s on the device. 'none': fused elementwise forward and backward (fake
kernels and autograd in ops/mse.py)."""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

_ops = torch.ops.fastact

__all__ = ["mse_loss"]


def mse_loss(input: Tensor, target: Tensor, size_average=None, reduce=None, reduction: str = "mean",
             weight=None) -> Tensor:
    """``torch.nn.functional.mse_loss`` (``size_average``/``reduce`` are
    torch's deprecated aliases and must be left None; ``weight`` is unsupported)."""
    if size_average is not None or reduce is not None:
        reduction = torch.nn._reduction.legacy_get_string(size_average, reduce)
    if weight is not None:
        raise ValueError("fastact.mse_loss: weight is not supported")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"fastact.mse_loss: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if target.shape != input.shape:
        warnings.warn(f"Using a target size ({target.shape}) that is different to the input size "
                      f"({input.shape}). This will likely lead to incorrect results due to broadcasting. "
                      "Please ensure they have the same size.", stacklevel=2)
        input, target = torch.broadcast_tensors(input, target)
    if reduction == "none":
        return _ops.squared_difference(input, target)
    total = _ops.squared_difference_sum(input, target)
    if reduction == "mean":
        total = total / input.numel()
    return total.to(input.dtype)
