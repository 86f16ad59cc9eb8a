"""Fused dropout family: forward, backward and forward+backward, fastact vs
eager compositions vs torch.compile of them; plus the bytes each keeps for
backward (fastact: the 16-byte Philox seed; eager: a byte mask per element)."""
from __future__ import annotations

import torch

import fastact.functional as F

from harness import time_cases

P = 0.1


def shapes(device, full):
    if device == "cuda":
        return [(8192, 4096), (16384, 8192)] if full else [(8192, 4096)]
    return [(8192, 1024)]  # the 8 M elements of the issue


def saved_bytes(fn) -> int:
    total = []

    def pack(t):
        total.append(t.numel() * t.element_size())
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(total)


def run(device, timer, copy_gbps, full=False, with_compile=True, dtypes=(torch.float32,), progress=None):
    rows = []
    for shape in shapes(device, full):
        for dtype in dtypes:
            x = torch.randn(shape, device=device, dtype=dtype).requires_grad_(True)
            bias = torch.randn(shape[-1], device=device, dtype=dtype)
            res = torch.randn(shape, device=device, dtype=dtype)
            n = x.numel() * x.element_size()
            families = {
                "dropout": ({"fastact": lambda t: F.dropout(t, P),
                             "eager": lambda t: torch.nn.functional.dropout(t, P)},
                            {"fwd": 2 * n, "bwd": 2 * n, "fwd+bwd": 4 * n}),
                "bias_dropout_add": ({"fastact": lambda t: F.bias_dropout_add(t, bias, res, P),
                                      "eager": lambda t: res + torch.nn.functional.dropout(t + bias, P)},
                                     {"fwd": 3 * n, "bwd": 2 * n, "fwd+bwd": 5 * n}),
                "bias_act_dropout[gelu]": ({"fastact": lambda t: F.bias_act_dropout(t, bias, "gelu", P),
                                            "eager": lambda t: torch.nn.functional.dropout(
                                                torch.nn.functional.gelu(t + bias), P)},
                                           {"fwd": 2 * n, "bwd": 3 * n, "fwd+bwd": 5 * n}),
            }
            for op, (impls, bytes_of) in families.items():
                if with_compile:
                    impls["compile"] = torch.compile(impls["eager"], dynamic=False)
                op_rows = time_cases(op, x, impls, timer, copy_gbps, bytes_of=bytes_of, progress=progress)
                for r in op_rows:
                    if r.case == "fwd" and r.impl in ("fastact", "eager"):
                        r.extra["saved_bytes_for_backward"] = saved_bytes(lambda: impls[r.impl](x))
                rows += op_rows
    return rows
