"""Post-training heads vs the same losses on the full logits: linear_logprobs
(log-probs + entropy, a GRPO-style loss of both) and linear_distill_loss
(KL to a teacher head), forward+backward time and peak memory (CUDA:
max_memory_allocated; CPU: peak RSS of a fresh subprocess).

``python benchmarks/bench_posttrain.py [--size N H V]`` runs one small CPU
comparison and prints it."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

import torch

import fastact.functional as F

from harness import RSS_PEAK_PRELUDE, Row

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_SIZE = (1024, 256, 32000)
GPU_SIZE = (8192, 4096, 128256)

TF = torch.nn.functional


# (the peak-RSS subprocess imports these, so both measure the same code)
def make(n, h, v, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, generator=g).to(device, dtype).requires_grad_(True)
    w = (torch.randn(v, h, generator=g) / h ** 0.5).to(device, dtype).requires_grad_(True)
    t = torch.randint(0, v, (n,), generator=g).to(device)
    xt = torch.randn(n, h, generator=g).to(device, dtype)
    wt = (torch.randn(v, h, generator=g) / h ** 0.5).to(device, dtype)
    return x, w, t, xt, wt


def grpo_fastact(x, w, t, xt, wt):
    logp, ent = F.linear_logprobs(x, w, t, return_entropy=True)
    return (torch.exp(logp - logp.detach()) + 0.01 * ent).mean()


def grpo_eager(x, w, t, xt, wt):
    logp = (x @ w.t()).float().log_softmax(-1)
    ent = -(logp.exp() * logp).sum(-1)
    lp = logp.gather(-1, t[:, None]).squeeze(-1)
    return (torch.exp(lp - lp.detach()) + 0.01 * ent).mean()


def kl_fastact(x, w, t, xt, wt):
    return F.linear_distill_loss(x, w, xt, wt, t, temperature=2.0)


def kl_eager(x, w, t, xt, wt):
    log_q = ((x @ w.t()).float() / 2.0).log_softmax(-1)
    log_p = ((xt @ wt.t()).float() / 2.0).log_softmax(-1)
    return TF.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


# op name (the row's, with the size) -> implementations
CASES = {"linear_logprobs": {"fastact": grpo_fastact, "eager": grpo_eager},
         "linear_distill_loss": {"fastact": kl_fastact, "eager": kl_eager}}


_PEAK_SCRIPT = """
import sys, time, torch
sys.path[:0] = [{python!r}, {benchmarks!r}]
from bench_posttrain import CASES, make
n, h, v = {size}
x, w, t, xt, wt = make(n, h, v, getattr(torch, {dtype!r}), "cpu")
{rss_prelude}
start = time.perf_counter()
CASES[{case!r}][{impl!r}](x, w, t, xt, wt).backward()
print(time.perf_counter() - start, status("VmHWM") - before)
"""


def cpu_peak(case: str, impl: str, size, dtype: str = "float32"):
    """(seconds of one fwd+bwd, peak extra RSS in MB) in a fresh subprocess."""
    code = _PEAK_SCRIPT.format(python=os.path.join(ROOT, "python"), benchmarks=os.path.join(ROOT, "benchmarks"),
                               size=tuple(size), case=case, impl=impl, dtype=dtype, rss_prelude=RSS_PEAK_PRELUDE)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, peak = out.stdout.strip().splitlines()[-1].split()
    return float(seconds), float(peak)


def run(device, timer, copy_gbps, full=False, with_compile=True, dtypes=(torch.float32,), progress=None,
        size=None):
    n, h, v = size or (GPU_SIZE if device == "cuda" else CPU_SIZE)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tensors = make(n, h, v, dtype, device)
    x, w = tensors[:2]
    if device != "cuda":  # seconds per call on the CPU: few repeats
        from harness import Timer
        timer = Timer(device, warmup=1, repeats=3)
    logits_mb = n * v * 4 / 2**20  # the float32 logits the unfused losses hold (several times)
    rows = []
    for case, impls in CASES.items():
        case_rows = []
        for impl, loss in impls.items():
            fn = lambda: torch.autograd.grad(loss(*tensors), (x, w))  # noqa: E731
            ms = timer(fn)
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                fn()
                peak = (torch.cuda.max_memory_allocated() - base) / 2**20
            else:
                peak = cpu_peak(case, impl, (n, h, v))[1]
            case_rows.append(Row(op=f"{case}[N={n},H={h},V={v}]", case="fwd+bwd", impl=impl,
                                 dtype=str(dtype).replace("torch.", ""), shape=f"({n}, {h}) x ({v}, {h})", ms=ms,
                                 gbps=0.0, pct_copy=0.0, peak_mb=peak,
                                 extra={"logits_mb": logits_mb, "peak_pct_of_logits": 100 * peak / logits_mb}))
            if progress:
                progress()
        eager_ms = next(r.ms for r in case_rows if r.impl == "eager")
        for r in case_rows:
            r.speedup_vs_eager = eager_ms / r.ms
        rows += case_rows
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=3, metavar=("N", "H", "V"), default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    from harness import Timer

    for r in run(args.device, Timer(args.device), 0.0, size=args.size):
        print(f"{r.op:45s} {r.impl:8s} {r.ms:9.1f} ms  x{r.speedup_vs_eager:.2f} vs eager  peak {r.peak_mb:8.1f} MB "
              f"({r.extra['peak_pct_of_logits']:.0f} % of the float32 logits)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
