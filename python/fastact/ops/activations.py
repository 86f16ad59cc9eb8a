"""Fake (meta) kernels and autograd of the activations.

Generated from the op list: the C++ library reports its activations through
``torch.ops.fastact._activation_ops()``, and every one of them gets the same
three registrations here (plus double backward through its reference
formula). The activations whose parameter is a tensor or a random stream
(``prelu``, ``swish_beta``, ``rrelu_train``; indexed_ops.h) follow. Backward
calls registered ops, so ``opcheck`` and ``torch.compile(fullgraph=True)``
see no Python-only code.
"""
from __future__ import annotations

import torch
from torch.library import register_autograd, register_fake

from .. import _dtensor, reference
from .common import op_table, register_double_backward

__all__ = ["ACTIVATIONS"]


#: Every activation of the op list: name -> its scalar argument names.
ACTIVATIONS: dict[str, list[str]] = op_table(torch.ops.fastact._activation_ops())


def _fake_forward(self, *args):
    return torch.empty_like(self)


def _fake_inplace(self, *args):
    return None


def _fake_backward(grad_output, self, *args):
    return torch.empty_like(self)


def _second_derivative_term(name, x, params, weight):
    """weight * f''(x), from the plain-torch formula (double backward only)."""
    formulas = reference.ACTIVATIONS
    with torch.enable_grad():
        xx = x.detach().requires_grad_(True)
        (d1,) = torch.autograd.grad(formulas[name](xx, *params), xx, torch.ones_like(xx),
                                    create_graph=True)
        if not d1.requires_grad:  # f' is piecewise constant: f'' = 0
            return torch.zeros_like(x)
        (d2,) = torch.autograd.grad(d1, xx, weight, allow_unused=True)
    return torch.zeros_like(x) if d2 is None else d2


# Activations whose derivative is a polynomial in the output (sigmoid: y (1 -
# y), tanh: 1 - y^2): for bfloat16/float16 CPU tensors backward uses the
# saved output, as torch does (same memory: one tensor of the input's size),
# instead of recomputing exp/tanh per element, which costs 3-4x more there
# (measured: bf16 sigmoid backward 4.7 ms vs 1.5 ms at 8M elements). The
# gradient is torch's own formula and kernel for the output. float32/64 and
# CUDA recompute from the input (memory-bound there: recomputing is free).
_FROM_OUTPUT = {"sigmoid": torch.ops.aten.sigmoid_backward.default,
                "tanh": torch.ops.aten.tanh_backward.default}


def _half_on_cpu(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16)


def _register_activation(name: str) -> None:
    backward_op = getattr(torch.ops.fastact, name + "_backward").default
    from_output = _FROM_OUTPUT.get(name)

    def setup_context(ctx, inputs, output):
        ctx.from_output = from_output is not None and _half_on_cpu(inputs[0])
        ctx.save_for_backward(output if ctx.from_output else inputs[0])
        ctx.params = tuple(inputs[1:])

    def backward(ctx, grad):
        (saved,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            dx = None
        elif ctx.from_output:
            dx = from_output(grad, saved)
        else:
            dx = backward_op(grad, saved, *ctx.params)
        return (dx,) + (None,) * len(ctx.params)

    register_fake(f"fastact::{name}")(_fake_forward)
    register_fake(f"fastact::{name}_")(_fake_inplace)
    register_fake(f"fastact::{name}_backward")(_fake_backward)
    register_autograd(f"fastact::{name}", backward, setup_context=setup_context)

    # Double backward: backward_op(dy, x) = dy * f'(x) is linear in dy, so its
    # gradient for dy is backward_op again; the one for x, gg * dy * f''(x),
    # comes from the reference formula (correct, not fused).
    def setup_backward(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], inputs[1])
        ctx.params = tuple(inputs[2:])

    def backward_backward(ctx, gg):
        dy, x = ctx.saved_tensors
        g_dy = backward_op(gg, x, *ctx.params) if ctx.needs_input_grad[0] else None
        g_x = _second_derivative_term(name, x, ctx.params, gg * dy) if ctx.needs_input_grad[1] else None
        return (g_dy, g_x) + (None,) * len(ctx.params)

    register_autograd(f"fastact::{name}_backward", backward_backward, setup_context=setup_backward)


for _name in ACTIVATIONS:
    _register_activation(_name)


# Activations whose parameter is a tensor or a random stream (indexed_ops.h).
@register_fake("fastact::prelu")
def _prelu_fake(self, weight):
    return torch.empty_like(self, memory_format=torch.contiguous_format)


@register_fake("fastact::prelu_backward")
def _prelu_backward_fake(grad_output, self, weight):
    return (torch.empty_like(self, memory_format=torch.contiguous_format),
            torch.empty_like(weight))


def _prelu_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])


def _prelu_backward(ctx, grad):
    x, w = ctx.saved_tensors
    dx, dw = torch.ops.fastact.prelu_backward(grad, x, w)
    return dx, dw


register_autograd("fastact::prelu", _prelu_backward, setup_context=_prelu_setup)


@register_fake("fastact::swish_beta")
def _swish_beta_fake(self, beta):
    return torch.empty_like(self, memory_format=torch.contiguous_format)


@register_fake("fastact::swish_beta_backward")
def _swish_beta_backward_fake(grad_output, self, beta):
    return (torch.empty_like(self, memory_format=torch.contiguous_format),
            torch.empty_like(beta))


def _swish_beta_backward(ctx, grad):
    x, beta = ctx.saved_tensors
    dx, dbeta = torch.ops.fastact.swish_beta_backward(grad, x, beta)
    return dx, (dbeta if ctx.needs_input_grad[1] else None)


register_autograd("fastact::swish_beta", _swish_beta_backward, setup_context=_prelu_setup)
register_double_backward("prelu_backward", 2, reference.prelu)
register_double_backward("swish_beta_backward", 2, reference.ACTIVATIONS["swish"])


@register_fake("fastact::rrelu_train")
def _rrelu_fake(self, lower, upper, seed):
    return torch.empty_like(self)


@register_fake("fastact::rrelu_train_backward")
def _rrelu_backward_fake(grad_output, self, lower, upper, seed):
    return torch.empty_like(self)


def _rrelu_setup(ctx, inputs, output):
    x, lower, upper, seed = inputs
    ctx.save_for_backward(x, seed)
    ctx.bounds = (lower, upper)
    ctx.placements = _dtensor.placements(output)  # a DTensor's: the slopes belong to it


def _rrelu_backward(ctx, grad):
    x, seed = ctx.saved_tensors
    if ctx.placements is not None:
        grad = _dtensor.align(grad, ctx.placements)
    dx = torch.ops.fastact.rrelu_train_backward(grad, x, *ctx.bounds, seed)
    return dx, None, None, None


register_autograd("fastact::rrelu_train", _rrelu_backward, setup_context=_rrelu_setup)
