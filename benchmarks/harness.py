"""Benchmark harness: timing, bandwidth, context and result files.

Timing: on CUDA, events around each call with warm-up and an L2 flush
before every repeat, median of the repeats; on CPU, median wall time. The
implementations of one comparison are timed in interleaved rounds.
Bandwidth: effective GB/s from each case's bytes model, and the same as a
percentage of a copy measured in the same run on the same device (the
practical limit of a memory-bound kernel).
"""
from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_commit() -> str:
    """The short commit, with "-dirty" when tracked code differs from it (the
    results folders and the README's generated table do not count)."""
    try:
        commit = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                         stderr=subprocess.DEVNULL, text=True).strip()
        changed = subprocess.check_output(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                           ".", ":!benchmarks/results", ":!README.md"], cwd=ROOT,
                                          stderr=subprocess.DEVNULL, text=True).strip()
        return commit + ("-dirty" if changed else "")
    except Exception:
        return "unknown"


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} threads)"


def context(device: str) -> dict:
    import fastact

    info = {
        "device": device,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "fastact": fastact.__version__,
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
    }
    if device == "cuda":
        info["driver"] = torch.cuda.driver_version() if hasattr(torch.cuda, "driver_version") else None
    return info


class Timer:
    def __init__(self, device: str, warmup: int = 3, repeats: int = 15):
        self.device, self.warmup, self.repeats = device, warmup, repeats
        self._flush = torch.empty(64 * 2**20, dtype=torch.int8, device="cuda") if device == "cuda" else None

    def __call__(self, fn: Callable[[], object]) -> float:
        """Median time of fn() in milliseconds, after warm-up: `warmup` calls
        and, on the CPU, at least 0.1 s of calls (the steady state of a
        training loop: allocator and page reuse settled)."""
        return self.interleaved({"fn": fn})["fn"]

    def interleaved(self, fns: dict[str, Callable[[], object]]) -> dict[str, float]:
        """Median time in milliseconds of each function, timed in rounds: each
        round calls every function once, the order rotating from round to
        round. What the machine does meanwhile (a neighbour on a shared VM, the
        kernel gathering huge pages) then slows every implementation of a
        comparison alike instead of whichever one was being timed alone at
        the time. Warm-up first: `warmup` calls of each and, on the CPU, at
        least 0.1 s of calls of each."""
        for fn in fns.values():
            for _ in range(self.warmup):
                fn()
            if self.device != "cuda":
                t_end = time.perf_counter() + 0.1
                while time.perf_counter() < t_end:
                    fn()
        names = list(fns)
        times: dict[str, list[float]] = {name: [] for name in names}
        for r in range(self.repeats):
            for i in range(len(names)):
                name = names[(r + i) % len(names)]
                times[name].append(self._once(fns[name]))
        return {name: statistics.median(t) for name, t in times.items()}

    def _once(self, fn: Callable[[], object]) -> float:
        if self.device == "cuda":
            self._flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3


def copy_bandwidth(device: str, timer: Timer, nbytes: int = 256 * 2**20) -> float:
    """GB/s of a same-device copy (bytes read + written), measured now."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    return 2 * nbytes / ms / 1e6


@dataclass
class Row:
    op: str
    case: str          # "fwd", "bwd" or "fwd+bwd"
    impl: str          # "fastact", "eager", "compile", "liger", ...
    dtype: str
    shape: str
    ms: float
    gbps: float
    pct_copy: float
    peak_mb: Optional[float] = None
    speedup_vs_eager: Optional[float] = None
    extra: dict = field(default_factory=dict)
    family: str = ""   # "activations", "glu", "dropout", "losses", "linear_ce", "posttrain", "transformers" (set by run.py)


def peak_memory_mb(device: str, fn: Callable[[], object]) -> Optional[float]:
    """Peak device memory of one call beyond what was allocated before (CUDA)."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def write_results(rows: list[Row], ctx: dict, out_dir: Optional[str] = None) -> str:
    """JSON, CSV and a markdown table under benchmarks/results/<device>/: the
    latest run per device (its date, commit and versions are in the files;
    git keeps the earlier runs)."""
    slug = "".join(c if c.isalnum() else "-" for c in ctx["device_name"]).strip("-").lower()
    slug = "-".join(p for p in slug.split("-") if p)[:60]
    out_dir = out_dir or os.path.join(ROOT, "benchmarks", "results", slug)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"context": ctx, "rows": [asdict(r) for r in rows]}, f, indent=1)
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["op", "case", "impl", "dtype", "shape", "ms", "GB/s", "% copy", "peak MB", "speedup vs eager"])
        for r in rows:
            w.writerow([r.op, r.case, r.impl, r.dtype, r.shape, f"{r.ms:.4f}", f"{r.gbps:.1f}",
                        f"{r.pct_copy:.1f}", "" if r.peak_mb is None else f"{r.peak_mb:.1f}",
                        "" if r.speedup_vs_eager is None else f"{r.speedup_vs_eager:.2f}"])
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown_table(rows, ctx))
    return out_dir


def family_of(op: str) -> str:
    """The family of a row's op name, for results written before rows carried
    one ("gelu['tanh']" -> "activations", "cross_entropy[V=32000]" -> "losses")."""
    from fastact.ops import ACTIVATIONS, GLUS

    base = op.split("[", 1)[0]
    if base in ACTIVATIONS or base == "prelu":
        return "activations"
    if base in GLUS:
        return "glu"
    if "dropout" in base:
        return "dropout"
    if base in ("linear_cross_entropy", "vocab_parallel_cross_entropy"):
        return "linear_ce"
    if base in ("linear_logprobs", "linear_distill_loss"):
        return "posttrain"
    if base.startswith("llama train step"):
        return "transformers"
    return "losses"


def verdicts(rows: list[Row]) -> list[str]:
    """One line per family and dtype on the forward+backward timings: how many
    of its cases (op and shape) fastact runs faster than eager and than
    torch.compile, and the slower ones with their speed ratios (baseline time /
    fastact time: below 1x is slower). A case counts against a baseline only
    where that baseline was timed."""
    order: list[tuple[str, str]] = []
    cases: dict[tuple[str, str], dict[tuple[str, str], dict[str, float]]] = {}
    for r in rows:
        if r.case != "fwd+bwd":
            continue
        key = (r.family or family_of(r.op), r.dtype)
        if key not in cases:
            order.append(key)
            cases[key] = {}
        cases[key].setdefault((r.op, r.shape), {})[r.impl] = r.ms
    lines = []
    for family, dtype in order:
        group = cases[(family, dtype)]
        shapes_per_op: dict[str, int] = {}
        for op, _ in group:
            shapes_per_op[op] = shapes_per_op.get(op, 0) + 1
        counts, slower = [], []
        for base, label in (("eager", "eager"), ("compile", "torch.compile")):
            timed = [(k, t[base] / t["fastact"]) for k, t in group.items() if "fastact" in t and base in t]
            if timed:
                counts.append(f"{sum(s > 1 for _, s in timed)}/{len(timed)} faster than {label}")
            for (op, shape), s in timed:
                if s <= 1:
                    name = op if shapes_per_op[op] == 1 else f"{op} {shape}"
                    slower.append((name, s, label))
        if not counts:
            continue
        line = f"{family} {dtype}: " + ", ".join(counts)
        if slower:
            by_op: dict[str, list[str]] = {}
            for name, s, label in slower:
                by_op.setdefault(name, []).append(f"{s:.2f}x {label}")
            line += "; slower: " + ", ".join(f"{n} ({', '.join(v)})" for n, v in by_op.items())
        lines.append(line)
    return lines


def read_results(path: str) -> tuple[list[Row], dict]:
    """The rows and context of a results.json written by write_results."""
    with open(path) as f:
        data = json.load(f)
    return [Row(**r) for r in data["rows"]], data["context"]


def markdown_table(rows: list[Row], ctx: dict) -> str:
    lines = [
        f"Device: {ctx['device_name']} · torch {ctx['torch']} (CUDA {ctx['cuda']}) · "
        f"fastact {ctx['fastact']} @ {ctx['commit']} · {ctx['date']}",
        f"Copy bandwidth measured in this run: {ctx.get('copy_gbps', 0):.1f} GB/s",
        "Baselines: " + ", ".join(f"{k} {'yes' if ok else 'no (not importable or disabled)'}"
                                  for k, ok in ctx.get("baselines", {}).items()),
        "",
        "Verdict (forward+backward, median time):",
        "",
        *(f"- {v}" for v in verdicts(rows)),
        "",
        "| op | case | dtype | shape | impl | ms | GB/s | % copy | peak MB | vs eager |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        sp = "" if r.speedup_vs_eager is None else f"{r.speedup_vs_eager:.2f}×"
        peak = "" if r.peak_mb is None else f"{r.peak_mb:.0f}"
        if r.extra.get("extra_pct_of_logits") is not None:
            peak += f" ({r.extra['extra_pct_of_logits']:.1f} % of logits beyond grads)"
        if r.extra.get("rss_peak_mb") is not None:
            peak += f" (tensors; peak RSS {r.extra['rss_peak_mb']:.0f})"
        lines.append(f"| {r.op} | {r.case} | {r.dtype} | {r.shape} | {r.impl} | {r.ms:.3f} | "
                     f"{r.gbps:.1f} | {r.pct_copy:.1f} | {peak} | {sp} |")
    return "\n".join(lines) + "\n"


def time_cases(op: str, x: torch.Tensor, impls: dict, timer: Timer, copy_gbps: float,
               bytes_of: dict, progress=None) -> list[Row]:
    """Times forward, backward and forward+backward of each implementation
    (a function of x) on the same input and gradient; the first one named
    "eager" is the speedup baseline."""
    rows = []
    # The compile baselines of a family often share one lambda's code object;
    # dynamo caches a bounded number of compilations per code object and runs
    # eagerly past it, so each op starts from a clean cache.
    torch._dynamo.reset()
    y0 = impls["eager"](x)
    dy = torch.randn_like(y0)
    del y0
    # (each bwd closure holds its implementation's forward output until fns goes)
    fns: dict[str, dict[str, Callable[[], object]]] = {"fwd": {}, "bwd": {}, "fwd+bwd": {}}
    for impl, f in impls.items():
        y_keep = f(x)

        def fwd(f=f):
            with torch.no_grad():
                return f(x)

        def bwd(y_keep=y_keep):
            return torch.autograd.grad(y_keep, x, dy, retain_graph=True)

        def fwd_bwd(f=f):
            return torch.autograd.grad(f(x), x, dy)

        fns["fwd"][impl], fns["bwd"][impl], fns["fwd+bwd"][impl] = fwd, bwd, fwd_bwd
    # Each case times its implementations against each other in interleaved
    # rounds (Timer.interleaved); the rows keep the implementation-major order.
    ms_of = {case: timer.interleaved(case_fns) for case, case_fns in fns.items()}
    eager_ms = {case: ms_of[case]["eager"] for case in ms_of}
    for impl in impls:
        for case in ("fwd", "bwd", "fwd+bwd"):
            ms = ms_of[case][impl]
            gbps = bytes_of[case] / ms / 1e6
            rows.append(Row(op=op, case=case, impl=impl, dtype=str(x.dtype).replace("torch.", ""),
                            shape=str(tuple(x.shape)), ms=ms, gbps=gbps, pct_copy=100 * gbps / copy_gbps,
                            peak_mb=peak_memory_mb(x.device.type, fns[case][impl])))
        if progress:
            progress()
    del fns
    for r in rows:
        r.speedup_vs_eager = eager_ms[r.case] / r.ms
    return rows


# For the scripts that measure a peak RSS in a subprocess: status(key) reads a
# /proc/self/status field in MiB; the peak (VmHWM) is reset to the current RSS
# and `before` holds it, so status("VmHWM") - before is what the code after adds.
RSS_PEAK_PRELUDE = """
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
open("/proc/self/clear_refs", "w").write("5")
before = status("VmRSS")
"""
