"""GLU family: packed SwiGLU/GeGLU/ReGLU and gpt-oss's clamped SwiGLU (in its
interleaved layout, gate_up[..., ::2] / [..., 1::2], as transformers' GptOss
experts hold it) forward, backward and forward+backward, fastact vs eager
(split + the torch formula with autograd) vs torch.compile of it vs
Liger-Kernel's SwiGLU when importable."""
from __future__ import annotations

import torch

import fastact.functional as F
from fastact import reference as R
from fastact.ops import GLUS

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
    # (name, params in schema order, interleaved)
    ops = [("swiglu", (), False), ("geglu", ("tanh",), False), ("reglu", (), False)] if full else \
        [("swiglu", (), False)]
    ops.append(("clamped_swiglu", (1.702, 7.0), True))
    for name, params, interleaved in ops:
        kwargs = dict(zip(GLUS[name], params), **({"interleaved": True} if interleaved else {}))
        label = f"{name}{list(params) if params else ''}{' interleaved' if interleaved else ''}"
        for shape in only_shapes or shapes(device, full):
            for dtype in dtypes:
                x = (torch.randn(shape, device=device, dtype=dtype) * 4).requires_grad_(True)
                n = x.numel() // 2 * x.element_size()  # bytes of one half (= of the output)

                def eager(t, name=name, params=params, interleaved=interleaved):
                    return R.gated(name, t, None, -1, *params, interleaved=interleaved)
                impls = {
                    "fastact": lambda t, name=name, kwargs=kwargs: getattr(F, name)(t, None, -1, **kwargs),
                    "eager": eager,
                }
                if with_compile:
                    impls["compile"] = torch.compile(eager, dynamic=False)
                liger = liger_swiglu() if name == "swiglu" and device == "cuda" else None
                if liger:
                    impls["liger"] = liger
                rows += time_cases(label, x, impls, timer, copy_gbps,
                                   bytes_of={"fwd": 3 * n, "bwd": 5 * n, "fwd+bwd": 8 * n},
                                   progress=progress)
    return rows
