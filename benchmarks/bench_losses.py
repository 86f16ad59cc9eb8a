"""Cross-entropy: forward, backward and forward+backward of the logits,
fastact vs eager vs torch.compile vs Liger-Kernel's (CUDA, when importable)."""
from __future__ import annotations

import torch

import fastact.functional as F

from harness import time_cases


def shapes(device, full):
    if device == "cuda":
        vocab = [4096, 32000, 65536, 128256, 256000] if full else [32000, 128256]
        return [(8192, v) for v in vocab]
    return [(4096, 32000)]


def liger_ce():
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss
    except Exception:
        return None
    return LigerCrossEntropyLoss()


def run(device, timer, copy_gbps, full=False, with_compile=True, dtypes=(torch.float32,), progress=None):
    rows = []
    for n, v in shapes(device, full):
        for dtype in dtypes:
            x = torch.randn(n, v, device=device, dtype=dtype).requires_grad_(True)
            t = torch.randint(0, v, (n,), device=device)
            nbytes = x.numel() * x.element_size()
            impls = {"fastact": lambda z: F.cross_entropy(z, t),
                     "eager": lambda z: torch.nn.functional.cross_entropy(z, t)}
            if with_compile:
                impls["compile"] = torch.compile(impls["eager"], dynamic=False)
            liger = liger_ce() if device == "cuda" else None
            if liger is not None:
                impls["liger"] = lambda z: liger(z, t)
            # logits read once forward; read once and the gradient written once backward
            rows += time_cases(f"cross_entropy[V={v}]", x, impls, timer, copy_gbps,
                               bytes_of={"fwd": nbytes, "bwd": 2 * nbytes, "fwd+bwd": 3 * nbytes},
                               progress=progress)
    return rows
