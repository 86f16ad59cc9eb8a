"""Fake (meta) kernels and autograd of the log-probability row ops
(logprob_ops.h): per row of float32/float64 logits divided by a temperature,
the float64 log-sum-exp, log p(target) and the entropy (``logprob_rows``), and
the gradient of the logits from the rows' gradients of all three."""
from __future__ import annotations

import torch
from torch.library import register_autograd, register_fake

_ops = torch.ops.fastact

__all__: list = []


@register_fake("fastact::logprob_rows")
def _rows_fake(logits, target, temperature, ignore_index, entropy):
    n = logits.shape[0]
    # the lse is float64: backward forms z / T - lse exactly from it
    return (logits.new_empty((n,), dtype=torch.float64), logits.new_empty((n,)),
            logits.new_empty((n if entropy else 0,)))


@register_fake("fastact::logprob_rows_backward")
def _rows_backward_fake(logits, target, lse, entropy, grad_lse, grad_logp, grad_entropy, temperature,
                        ignore_index):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


@register_fake("fastact::logprob_rows_backward_")
def _rows_backward_inplace_fake(logits, target, lse, entropy, grad_lse, grad_logp, grad_entropy, temperature,
                                ignore_index):
    return None


def _rows_setup(ctx, inputs, output):
    logits, target, temperature, ignore_index, entropy = inputs
    lse, _, ent = output
    ctx.save_for_backward(logits, target, lse, ent if entropy else None)
    ctx.options = (temperature, ignore_index)


def _rows_backward(ctx, grad_lse, grad_logp, grad_entropy):
    logits, target, lse, entropy = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None, None, None, None, None
    if entropy is None:
        grad_entropy = None  # (the empty output's gradient)
    grad = _ops.logprob_rows_backward(logits, target, lse, entropy, grad_lse, grad_logp, grad_entropy,
                                      *ctx.options)
    return grad, None, None, None, None


register_autograd("fastact::logprob_rows", _rows_backward, setup_context=_rows_setup)
