"""Fused linear cross-entropy vs matmul + cross_entropy, torch's own chunked
linear_cross_entropy (torch >= 2.14, ``options=LinearCrossEntropyOptions()``)
and Liger's fused linear cross-entropy (CUDA, when importable): forward+backward
time and peak memory (CUDA: max_memory_allocated; CPU: peak RSS of a fresh
subprocess)."""
from __future__ import annotations

import os
import subprocess
import sys

import torch

import fastact.functional as F

from harness import RSS_PEAK_PRELUDE, Row

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_SIZE = (2048, 512, 32000)
GPU_SIZE = (8192, 4096, 128256)

# The LM-head size (N=8192, V=128256, bf16) with H reduced to 256 so
# that the CPU matmuls finish in seconds: the extra memory depends on N and V.
CPU_HEAD_SIZE = (8192, 256, 128256)

_PEAK_SCRIPT = """
import sys, time, torch
sys.path.insert(0, {python!r})
import fastact.functional as F
n, h, v = {size}
dtype = getattr(torch, {dtype!r})
torch.manual_seed(0)
x = torch.randn(n, h, requires_grad=True, dtype=dtype)
w = (torch.randn(v, h) / h ** 0.5).to(dtype).requires_grad_(True)
t = torch.randint(0, v, (n,))
{rss_prelude}
start = time.perf_counter()
if {impl!r} == "fastact":
    loss = F.linear_cross_entropy(x, w, t)
elif {impl!r} == "fastact-fp32acc":
    loss = F.linear_cross_entropy(x, w, t, accum_dtype=torch.float32)
elif {impl!r} == "torch-chunked":
    loss = torch.nn.functional.linear_cross_entropy(x, w, t, options=torch.nn.LinearCrossEntropyOptions())
else:
    loss = torch.nn.functional.cross_entropy(x @ w.t(), t)
loss.backward()
print(time.perf_counter() - start, status("VmHWM") - before)
"""


def cpu_peak(impl: str, size, dtype: str = "float32"):
    """(seconds of one fwd+bwd, peak extra RSS in MB) in a fresh subprocess."""
    code = _PEAK_SCRIPT.format(python=os.path.join(ROOT, "python"), size=tuple(size), impl=impl, dtype=dtype,
                               rss_prelude=RSS_PEAK_PRELUDE)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, peak = out.stdout.strip().splitlines()[-1].split()
    return float(seconds), float(peak)


def _memory_extra(peak, n, h, v, itemsize):
    logits_mb = n * v * itemsize / 2**20
    grads_mb = (n * h + v * h) * itemsize / 2**20  # the returned gradients themselves
    return {"logits_mb": logits_mb, "extra_mb": peak - grads_mb,
            "extra_pct_of_logits": 100 * (peak - grads_mb) / logits_mb}


def cpu_head_rows(progress=None):
    """The LM-head size in bf16 on the CPU, each run once in its own process
    (time and peak RSS of that one call)."""
    n, h, v = CPU_HEAD_SIZE
    rows = []
    for impl in ("fastact", "fastact-fp32acc") + (("torch-chunked",) if torch_chunked() else ()) + ("eager",):
        seconds, peak = cpu_peak(impl, CPU_HEAD_SIZE, "bfloat16")
        rows.append(Row(op=f"linear_cross_entropy[N={n},H={h},V={v}]", case="fwd+bwd (1 call)", impl=impl,
                        dtype="bfloat16", shape=f"({n}, {h}) x ({v}, {h})", ms=1e3 * seconds, gbps=0.0,
                        pct_copy=0.0, peak_mb=peak, extra=_memory_extra(peak, n, h, v, 2)))
        if progress:
            progress()
    for r in rows:
        r.speedup_vs_eager = rows[-1].ms / r.ms
    return rows


def torch_chunked():
    """torch's chunked linear_cross_entropy (torch >= 2.14), or None."""
    options = getattr(torch.nn, "LinearCrossEntropyOptions", None)
    fn = getattr(torch.nn.functional, "linear_cross_entropy", None)
    if options is None or fn is None:
        return None
    return lambda x, w, t: fn(x, w, t, options=options())


def liger():
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except Exception:
        return None
    return LigerFusedLinearCrossEntropyLoss()


def run(device, timer, copy_gbps, full=False, with_compile=True, dtypes=(torch.float32,), progress=None):
    n, h, v = GPU_SIZE if device == "cuda" else CPU_SIZE
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    x = torch.randn(n, h, device=device, dtype=dtype, requires_grad=True)
    w = (torch.randn(v, h, device=device, dtype=dtype) / h ** 0.5).requires_grad_(True)
    t = torch.randint(0, v, (n,), device=device)
    impls = {"fastact": lambda: F.linear_cross_entropy(x, w, t),
             "eager": lambda: torch.nn.functional.cross_entropy((x @ w.t()).float(), t)}
    if dtype != torch.float32:  # grad_weight accumulated in float32 (torch's precision)
        impls["fastact-fp32acc"] = lambda: F.linear_cross_entropy(x, w, t, accum_dtype=torch.float32)
    chunked = torch_chunked()
    if chunked is not None:
        impls["torch-chunked"] = lambda: chunked(x, w, t)
    lg = liger() if device == "cuda" else None
    if lg is not None:
        impls["liger"] = lambda: lg(w, x, t)
    if device != "cuda":  # seconds per call on CPU: fewer repeats keep `make bench` short
        from harness import Timer
        timer = Timer(device, warmup=1, repeats=3)
    rows, eager_ms = [], None
    for impl, f in impls.items():
        fn = lambda: torch.autograd.grad(f(), (x, w))  # noqa: E731
        ms = timer(fn)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            peak = cpu_peak(impl, (n, h, v))[1] if impl in ("fastact", "torch-chunked", "eager") else None
        extra = None if peak is None else _memory_extra(peak, n, h, v, x.element_size())
        eager_ms = ms if impl == "eager" else eager_ms
        rows.append(Row(op=f"linear_cross_entropy[N={n},H={h},V={v}]", case="fwd+bwd", impl=impl,
                        dtype=str(dtype).replace("torch.", ""), shape=f"({n}, {h}) x ({v}, {h})", ms=ms,
                        gbps=0.0, pct_copy=0.0, peak_mb=peak, extra=extra or {}))
        if progress:
            progress()
    for r in rows:
        r.speedup_vs_eager = eager_ms / r.ms
    if device != "cuda" and full:
        rows += cpu_head_rows(progress)
    return rows
