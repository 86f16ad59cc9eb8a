"""Cross-entropy, softmax / log_softmax and mse_loss: forward, backward and
forward+backward, fastact vs eager vs torch.compile vs Liger-Kernel's and
quack's (CUDA, when importable; `baselines()` says which were)."""
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


def quack_ce():
    try:
        from quack import cross_entropy
    except Exception:
        return None
    return cross_entropy


def quack_softmax():
    try:
        from quack import softmax
    except Exception:
        return None
    return softmax


def baselines() -> dict:
    """Which optional baselines this run could import."""
    return {"liger": liger_ce() is not None, "quack": quack_ce() is not None}


# The shapes of the row kernels' regimes (many short rows, medium rows, a
# vocabulary, a few very long rows split over blocks): `run.py --quick`.
ROW_SHAPES = [(2**20, 16), (65536, 512), (8192, 32000), (4, 2**22)]


def cross_entropy_rows(device, timer, copy_gbps, n, v, dtype, with_compile=True, progress=None, label=None):
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
    quack = quack_ce() if device == "cuda" and dtype != torch.float64 else None
    if quack is not None:
        impls["quack"] = lambda z: quack(z, t)
    # logits read once forward; read once and the gradient written once backward
    return time_cases(label or f"cross_entropy[V={v}]", x, impls, timer, copy_gbps,
                      bytes_of={"fwd": nbytes, "bwd": 2 * nbytes, "fwd+bwd": 3 * nbytes}, progress=progress)


def softmax_rows(device, timer, copy_gbps, n, v, dtype, with_compile=True, progress=None, log=False,
                 label=None):
    x = torch.randn(n, v, device=device, dtype=dtype).requires_grad_(True)
    nbytes = x.numel() * x.element_size()
    name, ours, eager = (("log_softmax", F.log_softmax, lambda z: torch.log_softmax(z, -1)) if log else
                         ("softmax", F.softmax, lambda z: torch.softmax(z, -1)))
    impls = {"fastact": lambda z: ours(z, -1), "eager": eager}
    if with_compile:
        impls["compile"] = torch.compile(eager, dynamic=False)
    quack = quack_softmax() if not log and device == "cuda" and dtype != torch.float64 else None
    if quack is not None:
        impls["quack"] = quack
    # forward reads x, writes y; backward reads y and dy, writes dx
    return time_cases(label or f"{name}[V={v}]", x, impls, timer, copy_gbps,
                      bytes_of={"fwd": 2 * nbytes, "bwd": 3 * nbytes, "fwd+bwd": 5 * nbytes}, progress=progress)


def run(device, timer, copy_gbps, full=False, with_compile=True, dtypes=(torch.float32,), progress=None):
    rows = []
    for n, v in shapes(device, full):
        for dtype in dtypes:
            rows += cross_entropy_rows(device, timer, copy_gbps, n, v, dtype, with_compile, progress)
    rows += run_softmax_mse(device, timer, copy_gbps, full, with_compile, dtypes, progress)
    return rows


def run_quick(device, timer, copy_gbps, with_compile=True, dtypes=(torch.float32,), progress=None, row_shapes=None):
    """cross_entropy and softmax at the row-kernel shapes (`ROW_SHAPES`)."""
    rows = []
    for n, v in row_shapes or ROW_SHAPES:
        for dtype in dtypes:
            label = f"[N={n},V={v}]"
            rows += cross_entropy_rows(device, timer, copy_gbps, n, v, dtype, with_compile, progress,
                                       label="cross_entropy" + label)
            rows += softmax_rows(device, timer, copy_gbps, n, v, dtype, with_compile, progress,
                                 label="softmax" + label)
    return rows


def run_softmax_mse(device, timer, copy_gbps, full, with_compile, dtypes, progress):
    rows = []
    n, v = (8192, 32000) if device == "cuda" else (1024, 32000)
    for dtype in dtypes:
        for log in (False, True) if full else (False,):
            rows += softmax_rows(device, timer, copy_gbps, n, v, dtype, with_compile, progress, log=log)
        x = torch.randn(n, v, device=device, dtype=dtype).requires_grad_(True)
        nbytes = x.numel() * x.element_size()
        target = torch.randn_like(x).detach()
        impls = {"fastact": lambda z: F.mse_loss(z, target),
                 "eager": lambda z: torch.nn.functional.mse_loss(z, target)}
        if with_compile:
            impls["compile"] = torch.compile(impls["eager"], dynamic=False)
        # forward reads input and target; backward reads both, writes the gradient
        rows += time_cases("mse_loss", x, impls, timer, copy_gbps,
                           bytes_of={"fwd": 2 * nbytes, "bwd": 3 * nbytes, "fwd+bwd": 5 * nbytes},
                           progress=progress)
    return rows
