"""Facts read from the CUDA sources (csrc/cuda/), shared by setup.py (the
emulation build's launch-bounds table) and tools/kernel_resources.py."""
from __future__ import annotations

import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch_bounds(path: str) -> list[tuple[str, str]]:
    """(kernel, bound expression) of every __launch_bounds__ in a source."""
    with open(path) as f:
        text = f.read()
    return [(name, expr) for expr, name in re.findall(r"__launch_bounds__\(([^)]*)\)\s+(\w+)\s*\(", text)]


def included_headers(cu: str) -> list[str]:
    """The csrc/cuda/*.cuh headers a source includes, transitively."""
    headers = {os.path.basename(h): h for h in glob.glob(os.path.join(ROOT, "csrc/cuda/*.cuh"))}
    with open(cu) as f:
        todo = re.findall(r'#include "cuda/(\w+\.cuh)"', f.read())
    seen = set()
    while todo:
        h = todo.pop()
        if h in seen or h not in headers:
            continue
        seen.add(h)
        with open(headers[h]) as f:
            todo += re.findall(r'#include "cuda/(\w+\.cuh)"', f.read())
    return [headers[h] for h in sorted(seen)]


def constant_values() -> dict[str, int]:
    """`constexpr int kName = <int or kOther>;` of the CUDA sources."""
    values: dict[str, int] = {}
    pending = []
    for path in sorted(glob.glob(os.path.join(ROOT, "csrc/cuda/*.cu*"))):
        with open(path) as f:
            pending += re.findall(r"constexpr int (\w+) = ([^;]+);", f.read())
    for _ in range(len(pending)):
        for name, expr in pending:
            expr = expr.strip()
            if re.fullmatch(r"\d+", expr):
                values[name] = int(expr)
            elif expr in values:
                values[name] = values[expr]
    return values


def kernel_block_sizes() -> dict[str, int]:
    """Kernel name -> its __launch_bounds__ (the block size it launches with)."""
    consts = constant_values()
    out = {}
    for path in glob.glob(os.path.join(ROOT, "csrc/cuda/*.cu*")):
        for name, expr in launch_bounds(path):
            expr = expr.strip()
            out[name] = int(expr) if expr.isdigit() else consts.get(expr, 0)
    return out
