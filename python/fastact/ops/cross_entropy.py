"""Fake (meta) kernels and autograd of the cross-entropy row ops
(cross_entropy_ops.h): per row of logits, the float32 loss and the log-sum-exp
(``cross_entropy_rows``), and the gradient of the logits from them."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.library import register_autograd, register_fake

_ops = torch.ops.fastact

__all__ = ["prob_target_grad"]


@register_fake("fastact::cross_entropy_rows")
def _rows_fake(logits, target, weight, ignore_index, label_smoothing, z_loss, softcap):
    n = logits.shape[0]
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    # the lse is float64 for every dtype: backward forms z - lse exactly from it
    return logits.new_empty((n,), dtype=acc), logits.new_empty((n,), dtype=torch.float64)


@register_fake("fastact::cross_entropy_rows_backward")
def _rows_backward_fake(grad, logits, target, weight, lse, ignore_index, label_smoothing, z_loss, softcap):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


@register_fake("fastact::cross_entropy_rows_backward_")
def _rows_backward_inplace_fake(grad, logits, target, weight, lse, ignore_index, label_smoothing, z_loss,
                                softcap):
    return None


def _rows_setup(ctx, inputs, output):
    logits, target, weight, *options = inputs
    ctx.save_for_backward(logits, target, weight, output[1])
    ctx.options = tuple(options)


def prob_target_grad(grad_rows: Tensor, logits: Tensor, weight: Optional[Tensor], smoothing: float,
                     softcap: float, dtype: torch.dtype) -> Tensor:
    """d(row losses)/d(probability target) for rows of logits [rows, C]:
    ``-g_r * (1 - eps) * w_c * log_softmax(z_r)_c`` (z the softcapped logits;
    the z-loss term does not depend on the target). Plain torch ops, run only
    when the target requires grad."""
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    z = logits.to(acc)
    if softcap > 0:
        z = softcap * torch.tanh(z / softcap)
    scale = grad_rows.to(acc)[:, None] * -(1.0 - smoothing)
    if weight is not None:
        scale = scale * weight.to(acc)
    return (torch.log_softmax(z, 1) * scale).to(dtype)


def _rows_backward(ctx, grad_loss, grad_lse):
    logits, target, weight, lse = ctx.saved_tensors
    grad_logits = grad_target = None
    if grad_loss is None:
        grad_loss = torch.zeros(lse.shape, dtype=logits.dtype if logits.dtype == torch.float64 else torch.float32,
                                device=lse.device)
    if ctx.needs_input_grad[0]:
        grad_logits = _ops.cross_entropy_rows_backward(grad_loss, logits, target, weight, lse, *ctx.options)
    if ctx.needs_input_grad[1] and target.is_floating_point():
        _, smoothing, _, softcap = ctx.options
        grad_target = prob_target_grad(grad_loss, logits, weight, smoothing, softcap, target.dtype)
    return grad_logits, grad_target, None, None, None, None, None


register_autograd("fastact::cross_entropy_rows", _rows_backward, setup_context=_rows_setup)
