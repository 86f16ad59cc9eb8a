"""Fake (meta) kernels and autograd of the squared-difference ops behind
mse_loss: elementwise (x - t)^2, and its fused sum."""
from __future__ import annotations

import torch
from torch.library import register_autograd, register_fake

_ops = torch.ops.fastact

__all__: list[str] = []


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
