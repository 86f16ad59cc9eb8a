"""Plain-torch formulas of every fastact op: what the tests compare against and
what the docs mean. Keyed by op name, as in the op list."""
from __future__ import annotations

import torch
import torch.nn.functional as TF

#: Activation name -> torch function taking (input, *scalar params).
ACTIVATIONS = {
    "relu": TF.relu,
    "relu6": TF.relu6,
    "leaky_relu": TF.leaky_relu,
    "elu": TF.elu,
    "selu": TF.selu,
    "celu": TF.celu,
    "gelu": lambda x, approximate="none": TF.gelu(x, approximate=approximate),
    "silu": TF.silu,
    "mish": TF.mish,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "logsigmoid": TF.logsigmoid,
    "hardswish": TF.hardswish,
    "hardsigmoid": TF.hardsigmoid,
    "hardtanh": TF.hardtanh,
    "softplus": TF.softplus,
    "softshrink": TF.softshrink,
    "hardshrink": TF.hardshrink,
    "tanhshrink": TF.tanhshrink,
    "softsign": TF.softsign,
    "threshold": TF.threshold,
    "swish": lambda x, beta=1.0: x * torch.sigmoid(beta * x),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "squared_relu": lambda x: TF.relu(x) ** 2,
}

#: Parameter sets the tests and the self-check run each activation with.
PARAMS = {
    "leaky_relu": [(0.01,), (0.2,)],
    "elu": [(1.0,), (0.5,)],
    "celu": [(1.0,), (2.0,)],
    "gelu": [("none",), ("tanh",)],
    "hardtanh": [(-1.0, 1.0), (-2.0, 0.5)],
    "softplus": [(1.0, 20.0), (2.0, 1.0)],
    "softshrink": [(0.5,), (1.0,)],
    "hardshrink": [(0.5,), (1.0,)],
    "threshold": [(0.1, 20.0), (-1.0, -2.0)],
    "swish": [(1.0,), (0.5,)],
}


def params(name: str) -> list:
    return PARAMS.get(name, [()])


def prelu(x, weight):
    return TF.prelu(x, weight)


def clamp_ends_included(x, min=None, max=None):
    """``x.clamp(min, max)`` whose gradient passes where ``min <= x <= max``,
    ends included (torch 2.11's clamp backward; 2.14 and later pass it only
    strictly inside), and never at a NaN. Differentiable twice."""
    inside = torch.ones_like(x, dtype=torch.bool)
    if min is not None:
        inside = inside & (x >= min)
    if max is not None:
        inside = inside & (x <= max)
    return torch.where(inside, x, x.detach().clamp(min=min, max=max))


def clamped_swiglu(gate, up, alpha=1.702, limit=7.0):
    """gpt-oss's gated unit (transformers' GptOssExperts), its clamps passing
    the gradient at the bounds as API.md specifies."""
    gate = clamp_ends_included(gate, max=limit)
    up = clamp_ends_included(up, min=-limit, max=limit)
    return (up + 1) * (gate * torch.sigmoid(gate * alpha))


#: Gated op name -> its formula, taking (gate, up, *params).
GLU_FORMULAS = {
    "swiglu": lambda g, u: TF.silu(g) * u,
    "geglu": lambda g, u, approximate="none": TF.gelu(g, approximate=approximate) * u,
    "reglu": lambda g, u: TF.relu(g) * u,
    "clamped_swiglu": clamped_swiglu,
}
#: Parameter sets the tests and the self-check run each gated op with (in
#: schema order; fastact.ops.GLUS names them).
GLU_PARAMS = {"geglu": [("none",), ("tanh",)],
              "clamped_swiglu": [(1.702, 7.0), (1.0, 1.5)]}


def glu_params(name: str) -> list:
    return GLU_PARAMS.get(name, [()])


def split_packed(x, dim: int = -1, interleaved: bool = False):
    """(gate, up) of a packed tensor: its two halves along ``dim``, or its even
    and odd positions there (``x[..., ::2]``, ``x[..., 1::2]``)."""
    if not interleaved:
        return x.chunk(2, dim=dim)
    at = [slice(None)] * x.ndim
    at[dim] = slice(0, None, 2)
    gate = x[tuple(at)]
    at[dim] = slice(1, None, 2)
    return gate, x[tuple(at)]


def gated(name: str, gate, up=None, dim: int = -1, *params, interleaved: bool = False):
    """The gated op ``name`` of ``gate`` and ``up``, or of the two parts of
    ``gate`` along ``dim`` (halves, or even/odd positions when interleaved)."""
    if up is None:
        gate, up = split_packed(gate, dim, interleaved)
    return GLU_FORMULAS[name](gate, up, *params)
