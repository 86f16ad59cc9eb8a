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


#: Gated op name -> the activation applied to the gate, taking (gate, *params).
GLU_ACTIVATIONS = {
    "swiglu": TF.silu,
    "geglu": lambda g, approximate="none": TF.gelu(g, approximate=approximate),
    "reglu": TF.relu,
}
GLU_PARAMS = {"geglu": [("none",), ("tanh",)]}


def glu_params(name: str) -> list:
    return GLU_PARAMS.get(name, [()])


def gated(name: str, gate, up=None, dim: int = -1, *params):
    """``act(gate) * up``, or of the two halves of ``gate`` along ``dim``."""
    if up is None:
        gate, up = gate.chunk(2, dim=dim)
    return GLU_ACTIVATIONS[name](gate, *params) * up
