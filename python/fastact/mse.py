"""mse_loss: the squared difference and its gradients are fused elementwise
kernels; mean and sum are torch reductions on the result (as in torch)."""
from __future__ import annotations

import warnings

import torch
from torch import Tensor
from torch.library import register_autograd, register_fake

_ops = torch.ops.fastact

__all__ = ["mse_loss"]


@register_fake("fastact::squared_difference")
def _sqdiff_fake(input, target):
    return torch.empty_like(input)


@register_fake("fastact::squared_difference_backward")
def _sqdiff_backward_fake(grad_output, input, target):
    return torch.empty_like(input), torch.empty_like(input)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad):
    x, t = ctx.saved_tensors
    dx, dt = _ops.squared_difference_backward(grad, x, t)
    return dx, dt


register_autograd("fastact::squared_difference", _backward, setup_context=_setup)


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
    d = _ops.squared_difference(input, target)
    if reduction == "none":
        return d
    return d.mean() if reduction == "mean" else d.sum()
