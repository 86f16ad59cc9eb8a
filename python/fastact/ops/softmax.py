"""Fake (meta) kernels and autograd of the softmax row ops (``softmax_rows``:
softmax or log_softmax over the last dim of rows)."""
from __future__ import annotations

import torch
from torch.library import register_autograd, register_fake

_ops = torch.ops.fastact

__all__: list[str] = []


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
