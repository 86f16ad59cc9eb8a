"""GLU family: packed SwiGLU/GeGLU/ReGLU forward, backward and forward+backward,
fastact vs eager (chunk + act * up with autograd) vs torch.compile of it vs
Liger-Kernel's SwiGLU when importable."""
from __future__ import annotations

import torch

import fastact.functional as F
from fastact import reference as R

from harness import time_cases


def shapes(device, full):
    if device == "cuda":
        base = [(4096, 2 * 11008), (8192, 2 * 14336)]
        return base + ([(16384, 2 * 14336)] if full else [])
    return [(4096, 2 * 2048)] + ([(2048, 2 * 5504)] if full else [])


def liger_swiglu():
    try:
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction
    except Exception:
        return None
    return lambda x: LigerSiLUMulFunction.apply(*x.chunk(2, -1))


def run(device, timer, copy_gbps, full=False, with_compile=True, dtypes=(torch.float32,), progress=None,
        only_shapes=None):
    rows = []
    ops = [("swiglu", ()), ("geglu", ("tanh",)), ("reglu", ())] if full else [("swiglu", ())]
    for name, params in ops:
        for shape in only_shapes or shapes(device, full):
            for dtype in dtypes:
                x = torch.randn(shape, device=device, dtype=dtype).requires_grad_(True)
                n = x.numel() // 2 * x.element_size()  # bytes of one half (= of the output)
                impls = {
                    "fastact": lambda t: getattr(F, name)(t, None, -1, *params),
                    "eager": lambda t: R.gated(name, t, None, -1, *params),
                }
                if with_compile:
                    impls["compile"] = torch.compile(lambda t: R.gated(name, t, None, -1, *params), dynamic=False)
                liger = liger_swiglu() if name == "swiglu" and device == "cuda" else None
                if liger:
                    impls["liger"] = liger
                rows += time_cases(f"{name}{list(params) if params else ''}", x, impls, timer, copy_gbps,
                                   bytes_of={"fwd": 3 * n, "bwd": 5 * n, "fwd+bwd": 8 * n},
                                   progress=progress)
    return rows
