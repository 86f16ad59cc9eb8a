"""Fake (meta) kernels and autograd of the gated linear units (glu_ops.h):
the two-tensor and packed forms of every GLU of the op list, generated from
it (the packed forms take ``interleaved`` after the op's own arguments), and
torch's ``glu``; double backward through the reference formulas."""
from __future__ import annotations

import torch
from torch.library import register_autograd, register_fake

from .. import reference
from .common import op_table, register_double_backward

__all__ = ["GLUS"]

#: Every GLU of the op list: name -> its scalar argument names.
GLUS: dict[str, list[str]] = op_table(torch.ops.fastact._glu_ops())


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
    register_double_backward(f"{name}_backward", 2,
                              lambda gate, up, *params: reference.gated(name, gate, up, -1, *params))
    # (the packed ops' last argument is `interleaved`)
    register_double_backward(f"{name}_packed_backward", 1,
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
register_double_backward("glu_backward", 1, torch.nn.functional.glu)
