"""Fake (meta) kernels and autograd of the fused dropout ops (dropout_ops.h).

The keep-mask is never stored. Each call draws a fresh Philox stream
(seed, offset) from the input device's generator into a 2-element int64
tensor (``_philox_seed``); forward and backward apply the mask of that
stream, so the autograd graph keeps 16 bytes instead of a byte per element.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.library import register_autograd, register_fake

from .. import _dtensor

_ops = torch.ops.fastact

__all__: list[str] = []


# --- fake kernels ----------------------------------------------------------------------

@register_fake("fastact::_philox_seed")
def _philox_seed_fake(like, generator=None):
    return like.new_empty((2,), dtype=torch.int64)


@register_fake("fastact::dropout")
def _dropout_fake(input, p, seed):
    return torch.empty_like(input, memory_format=torch.contiguous_format)


@register_fake("fastact::dropout_")
def _dropout_inplace_fake(self, p, seed):
    return None


@register_fake("fastact::dropout_add")
def _dropout_add_fake(input, residual, p, seed):
    return torch.empty_like(input, memory_format=torch.contiguous_format)


@register_fake("fastact::bias_dropout_add")
def _bias_dropout_add_fake(input, bias, residual, p, seed):
    return torch.empty_like(input, memory_format=torch.contiguous_format)


@register_fake("fastact::bias_act_dropout")
def _bias_act_dropout_fake(input, bias, activation, p, seed):
    return torch.empty_like(input, memory_format=torch.contiguous_format)


@register_fake("fastact::bias_act_dropout_backward")
def _bias_act_dropout_backward_fake(grad_output, input, bias, activation, p, seed):
    return torch.empty_like(input, memory_format=torch.contiguous_format)


# --- autograd: every backward regenerates the mask from `seed` ------------------------

def _bias_grad(grad_input: Tensor, bias: Tensor) -> Tensor:
    """Sum over all but the last dim, accumulated in the opmath type."""
    acc = torch.float64 if bias.dtype == torch.float64 else torch.float32
    return grad_input.reshape(-1, bias.shape[0]).sum(0, dtype=acc).to(bias.dtype)


def _keep_placement(ctx, output):
    """On DTensors the mask belongs to the output's placement (the shard index
    chose it): backward first places the gradient alike."""
    ctx.placements = _dtensor.placements(output)


def _placed(ctx, grad):
    return grad if ctx.placements is None else _dtensor.align(grad, ctx.placements)


def _dropout_setup(ctx, inputs, output):
    _, p, seed = inputs
    ctx.save_for_backward(seed)
    ctx.p = p
    _keep_placement(ctx, output)


def _dropout_backward(ctx, grad):
    (seed,) = ctx.saved_tensors
    return _ops.dropout(_placed(ctx, grad), ctx.p, seed), None, None


register_autograd("fastact::dropout", _dropout_backward, setup_context=_dropout_setup)


def _dropout_add_setup(ctx, inputs, output):
    _, _, p, seed = inputs
    ctx.save_for_backward(seed)
    ctx.p = p
    _keep_placement(ctx, output)


def _dropout_add_backward(ctx, grad):
    (seed,) = ctx.saved_tensors
    return _ops.dropout(_placed(ctx, grad), ctx.p, seed), grad, None, None


register_autograd("fastact::dropout_add", _dropout_add_backward, setup_context=_dropout_add_setup)


def _bias_dropout_add_setup(ctx, inputs, output):
    _, bias, _, p, seed = inputs
    ctx.save_for_backward(seed, bias)
    ctx.p = p
    _keep_placement(ctx, output)


def _bias_dropout_add_backward(ctx, grad):
    seed, bias = ctx.saved_tensors
    grad_input = _ops.dropout(_placed(ctx, grad), ctx.p, seed)
    grad_bias = _bias_grad(grad_input, bias) if bias is not None and ctx.needs_input_grad[1] else None
    return grad_input, grad_bias, grad, None, None


register_autograd("fastact::bias_dropout_add", _bias_dropout_add_backward,
                  setup_context=_bias_dropout_add_setup)


def _bias_act_dropout_setup(ctx, inputs, output):
    input, bias, activation, p, seed = inputs
    ctx.save_for_backward(input, bias, seed)
    ctx.activation, ctx.p = activation, p
    _keep_placement(ctx, output)


def _bias_act_dropout_backward(ctx, grad):
    input, bias, seed = ctx.saved_tensors
    grad_input = _ops.bias_act_dropout_backward(_placed(ctx, grad), input, bias, ctx.activation, ctx.p, seed)
    grad_bias = _bias_grad(grad_input, bias) if bias is not None and ctx.needs_input_grad[1] else None
    return grad_input, grad_bias, None, None, None


register_autograd("fastact::bias_act_dropout", _bias_act_dropout_backward,
                  setup_context=_bias_act_dropout_setup)
