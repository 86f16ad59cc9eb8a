"""Fake (meta) kernels and autograd for the fastact operators.

Generated from the op list: the C++ library reports its activations through
``torch.ops.fastact._activation_ops()``, and every one of them gets the same
three registrations here. Backward calls registered ops, so ``opcheck`` and
``torch.compile(fullgraph=True)`` see no Python-only code.
"""
from __future__ import annotations

import torch
from torch.library import register_autograd, register_fake
from . import reference

__all__ = ["ACTIVATIONS"]


def _op_table(lines: list[str]) -> dict[str, list[str]]:
    """name -> names of the op's scalar arguments, in schema order, from the
    "name|schema arguments" lines the C++ op lists report."""
    table = {}
    for line in lines:
        name, args = line.split("|", 1)
        table[name] = [a.strip().split(" ")[1].split("=")[0] for a in args.split(",") if a.strip()]
    return table


#: Every activation of the op list: name -> its scalar argument names.
ACTIVATIONS: dict[str, list[str]] = _op_table(torch.ops.fastact._activation_ops())


def _fake_forward(self, *args):
    return torch.empty_like(self)


def _fake_inplace(self, *args):
    return None


def _fake_backward(grad_output, self, *args):
    return torch.empty_like(self)


def _second_derivative_term(name, x, params, weight):
    """weight * f''(x), from the plain-torch formula (double backward only)."""
    from .reference import ACTIVATIONS as formulas

    with torch.enable_grad():
        xx = x.detach().requires_grad_(True)
        (d1,) = torch.autograd.grad(formulas[name](xx, *params), xx, torch.ones_like(xx),
                                    create_graph=True)
        if not d1.requires_grad:  # f' is piecewise constant: f'' = 0
            return torch.zeros_like(x)
        (d2,) = torch.autograd.grad(d1, xx, weight, allow_unused=True)
    return torch.zeros_like(x) if d2 is None else d2


def _register_double_backward(op: str, n_in: int, ref) -> None:
    """Double backward of the backward op ``op(grad, *inputs, *params)``, which
    returns the gradients of the ``n_in`` inputs: its vector-Jacobian product
    taken through the plain-torch formula ``ref(*inputs, *params)`` (correct,
    not fused; what gradient penalties and Hessian-vector products need)."""

    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:n_in + 1])
        ctx.params = tuple(inputs[n_in + 1:])

    def backward(ctx, *ggs):
        saved = ctx.saved_tensors
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(True) for t in saved]
            y = ref(*leaves[1:], *ctx.params)
            firsts = torch.autograd.grad(y, leaves[1:], leaves[0], create_graph=True)
            pairs = [(f, g) for f, g in zip(firsts, ggs) if g is not None and f.requires_grad]
            outs = [None] * len(leaves)
            if pairs:
                outs = torch.autograd.grad([f for f, _ in pairs], leaves, [g for _, g in pairs],
                                           allow_unused=True)
        outs = [torch.zeros_like(t) if o is None else o for o, t in zip(outs, saved)]
        outs = [o if need else None for o, need in zip(outs, ctx.needs_input_grad)]
        return tuple(outs) + (None,) * len(ctx.params)

    register_autograd(f"fastact::{op}", backward, setup_context=setup)


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
_register_double_backward("prelu_backward", 2, reference.prelu)
_register_double_backward("swish_beta_backward", 2, reference.ACTIVATIONS["swish"])


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
    ctx.placements = getattr(output, "placements", None)  # a DTensor's: the slopes belong to it


def _rrelu_backward(ctx, grad):
    x, seed = ctx.saved_tensors
    if ctx.placements is not None and tuple(grad.placements) != tuple(ctx.placements):
        grad = grad.redistribute(grad.device_mesh, ctx.placements)
    dx = torch.ops.fastact.rrelu_train_backward(grad, x, *ctx.bounds, seed)
    return dx, None, None, None


register_autograd("fastact::rrelu_train", _rrelu_backward, setup_context=_rrelu_setup)


# The GLU family (glu_ops.h): two-tensor and packed forms, generated from the
# list; the packed forms take `interleaved` after the op's own arguments.
GLUS: dict[str, list[str]] = _op_table(torch.ops.fastact._glu_ops())


def _packed_shape(x, dim):
    shape = list(x.shape)
    shape[dim] = shape[dim] // 2
    return shape


def _register_glu(name: str) -> None:
    backward_op = getattr(torch.ops.fastact, name + "_backward").default
    packed_backward_op = getattr(torch.ops.fastact, name + "_packed_backward").default

    def fake(gate, up, *args):
        return torch.empty_like(gate)

    def fake_backward(grad_output, gate, up, *args):
        return torch.empty_like(gate), torch.empty_like(gate)

    def fake_packed(input, dim=-1, *args):
        return input.new_empty(_packed_shape(input, dim))

    def fake_packed_backward(grad_output, input, dim=-1, *args):
        return torch.empty_like(input, memory_format=torch.contiguous_format)

    def setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], inputs[1])
        ctx.params = tuple(inputs[2:])

    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        d_gate, d_up = backward_op(grad, gate, up, *ctx.params)
        return (d_gate, d_up) + (None,) * len(ctx.params)

    def setup_packed(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.params = tuple(inputs[1:])

    def backward_packed(ctx, grad):
        (x,) = ctx.saved_tensors
        return (packed_backward_op(grad, x, *ctx.params),) + (None,) * len(ctx.params)

    register_fake(f"fastact::{name}")(fake)
    register_fake(f"fastact::{name}_backward")(fake_backward)
    register_fake(f"fastact::{name}_packed")(fake_packed)
    register_fake(f"fastact::{name}_packed_backward")(fake_packed_backward)
    register_autograd(f"fastact::{name}", backward, setup_context=setup)
    register_autograd(f"fastact::{name}_packed", backward_packed, setup_context=setup_packed)
    _register_double_backward(f"{name}_backward", 2,
                              lambda gate, up, *params: reference.gated(name, gate, up, -1, *params))
    # (the packed ops' last argument is `interleaved`)
    _register_double_backward(f"{name}_packed_backward", 1,
                              lambda x, dim, *params: reference.gated(name, x, None, dim, *params[:-1],
                                                                      interleaved=params[-1]))


for _name in GLUS:
    _register_glu(_name)


@register_fake("fastact::glu")
def _glu_fake(self, dim=-1):
    return self.new_empty(_packed_shape(self, dim))


@register_fake("fastact::glu_backward")
def _glu_backward_fake(grad_output, self, dim=-1):
    return torch.empty_like(self, memory_format=torch.contiguous_format)


def _glu_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.dim = inputs[1]


def _glu_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return torch.ops.fastact.glu_backward(grad, x, ctx.dim), None


register_autograd("fastact::glu", _glu_backward, setup_context=_glu_setup)
_register_double_backward("glu_backward", 1, torch.nn.functional.glu)
