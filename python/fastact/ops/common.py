"""What the op families share: their op tables, and double backward through
a plain-torch reference formula."""
from __future__ import annotations

import torch
from torch.library import register_autograd

__all__ = ["op_table", "register_double_backward"]


def op_table(lines: list[str]) -> dict[str, list[str]]:
    """name -> names of the op's scalar arguments, in schema order, from the
    "name|schema arguments" lines the C++ op lists report."""
    table = {}
    for line in lines:
        name, args = line.split("|", 1)
        table[name] = [a.strip().split(" ")[1].split("=")[0] for a in args.split(",") if a.strip()]
    return table


def register_double_backward(op: str, n_in: int, ref) -> None:
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
