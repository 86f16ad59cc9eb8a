"""Activations: forward, backward and forward+backward, fastact vs PyTorch
eager vs torch.compile of the eager formula, on one device."""
from __future__ import annotations

import torch

import fastact  # noqa: F401
from fastact import reference as R
from fastact.ops import ACTIVATIONS

from harness import time_cases

QUICK_OPS = [("relu", ()), ("gelu", ("none",)), ("gelu", ("tanh",)), ("silu", ()), ("mish", ()),
             ("sigmoid", ()), ("softplus", (1.0, 20.0)), ("hardswish", ())]
ELEMENTS = 8 * 2**20  # the 8 M float32 elements of the foundation issue


def cases(full: bool):
    if full:
        return [(n, p) for n in ACTIVATIONS for p in R.params(n)[:1]]
    return QUICK_OPS


def run(device, timer, copy_gbps, full=False, with_compile=True, dtypes=(torch.float32,), progress=None,
        ops=None):
    rows = []
    for name, params in ops or cases(full):
        fast = getattr(torch.ops.fastact, name)
        ref = R.ACTIVATIONS[name]
        for dtype in dtypes:
            x = torch.randn(ELEMENTS, device=device, dtype=dtype).requires_grad_(True)
            n = x.numel() * x.element_size()
            impls = {"fastact": lambda t: fast(t, *params), "eager": lambda t: ref(t, *params)}
            if with_compile:
                impls["compile"] = torch.compile(lambda t: ref(t, *params), dynamic=False)
            rows += time_cases(f"{name}{list(params) if params else ''}", x, impls, timer, copy_gbps,
                               bytes_of={"fwd": 2 * n, "bwd": 3 * n, "fwd+bwd": 5 * n}, progress=progress)
    return rows
