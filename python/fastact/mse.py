"""mse_loss. 'mean' and 'sum': one fused reduction of (x - t)^2 (nothing of
the input's size is written) and a backward pass 2 s (x - t) that reads the
scalar s on the device. 'none': fused elementwise forward and backward."""
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


@register_fake("fastact::squared_difference_sum")
def _sqdiff_sum_fake(input, target):
    acc = torch.float64 if input.dtype == torch.float64 else torch.float32
    return input.new_empty((), dtype=acc)


@register_fake("fastact::squared_difference_sum_backward")
def _sqdiff_sum_backward_fake(grad, input, target):
    return torch.empty_like(input)


def _sum_backward(ctx, grad):
    x, t = ctx.saved_tensors
    dx = _ops.squared_difference_sum_backward(grad, x, t) if any(ctx.needs_input_grad) else None
    return (dx if ctx.needs_input_grad[0] else None), (-dx if ctx.needs_input_grad[1] else None)


register_autograd("fastact::squared_difference_sum", _sum_backward, setup_context=_setup)


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
