#!/usr/bin/env python3
"""The resource table of the CUDA kernels: registers, spills, stack and
shared memory per kernel and architecture (from the ptxas reports that
tools/nvcc_ptxas.py leaves beside each object of the CUDA build), and the
theoretical occupancy at each kernel's block size (its __launch_bounds__).

    python tools/kernel_resources.py [--build build] [--out python/fastact/kernel_resources.json] [--check]

Prints nothing but a summary; `python -m fastact --kernels` prints the
table. --check fails on a kernel that spills more than tools/accepted_spills.json
accepts for it (a byte budget per kernel, with the measured cause).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cuda_sources import ROOT, kernel_block_sizes  # noqa: E402

# Per SM: registers, warps, resident blocks, shared memory for blocks (bytes),
# and the shared memory the driver reserves per block.
SM = {
    "sm_80": dict(regs=65536, warps=64, blocks=32, smem=164 * 1024, reserved=1024),
    "sm_90": dict(regs=65536, warps=64, blocks=32, smem=228 * 1024, reserved=1024),
}


def parse(text: str) -> list[dict]:
    rows, cur = [], None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\S+)' for '(sm_\d+)'", line)
        if m:
            cur = dict(mangled=m.group(1), arch=m.group(2), registers=0, spill_stores=0, spill_loads=0,
                       stack=0, shared=0)
            rows.append(cur)
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            cur["stack"], cur["spill_stores"], cur["spill_loads"] = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            cur["registers"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            cur["shared"] = int(s.group(1)) if s else 0
    return rows


def occupancy(arch: str, regs: int, shared: int, threads: int) -> float:
    sm = SM.get(arch, SM["sm_90"])
    warps = (threads + 31) // 32
    regs_per_warp = (max(regs, 1) * 32 + 255) // 256 * 256
    by_regs = sm["regs"] // regs_per_warp // warps
    by_warps = sm["warps"] // warps
    by_smem = sm["smem"] // (shared + sm["reserved"]) if shared else sm["blocks"]
    blocks = min(by_regs, by_warps, by_smem, sm["blocks"])
    return blocks * warps / sm["warps"]


def demangle(names: list[str]) -> list[str]:
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
        return out.stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return names


def short(name: str) -> str:
    """fastact::(anonymous namespace)::ce_forward_kernel<4, float, float>(...) -> ce_forward_kernel<4, float, float>"""
    name = name.replace("(anonymous namespace)::", "")
    depth, cut = 0, len(name)
    for i, ch in enumerate(name):  # drop the parameter list
        depth += ch == "<"
        depth -= ch == ">"
        if ch == "(" and depth == 0:
            cut = i
            break
    head = name[:cut]
    if head.startswith("void "):  # the return type of a function template
        head = head[5:]
    base = head.split("<")[0].split("::")[-1]
    return base + head[len(head.split("<")[0]):] if "<" in head else base


def table(build: str) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(os.path.join(build, "**", "*.ptxas"), recursive=True)):
        with open(path) as f:
            rows += parse(f.read())
    names = demangle([r["mangled"] for r in rows])
    blocks = kernel_block_sizes()
    for r, name in zip(rows, names):
        r["kernel"] = short(name)
        base = r["kernel"].split("<")[0]
        r["threads"] = blocks.get(base, 1)
        r["occupancy"] = round(occupancy(r["arch"], r["registers"], r["shared"], r["threads"]), 3)
    rows.sort(key=lambda r: (r["kernel"], r["arch"]))
    return rows


def check(rows: list[dict]) -> list[str]:
    """Spills beyond each kernel's accepted budget (tools/accepted_spills.json:
    kernel name -> {"max_spill_bytes": stores + loads of any instantiation,
    "why": the measured cause}); a kernel not listed may not spill at all."""
    with open(os.path.join(ROOT, "tools", "accepted_spills.json")) as f:
        accepted = json.load(f)
    bad = []
    for r in rows:
        spilled = r["spill_stores"] + r["spill_loads"]
        budget = accepted.get(r["kernel"].split("<")[0], {}).get("max_spill_bytes", 0)
        if spilled > budget:
            bad.append(f"{r['kernel']} on {r['arch']} spills {r['spill_stores']}/{r['spill_loads']} bytes, "
                       f"over its accepted {budget} (tools/accepted_spills.json)")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--out", default=os.path.join(ROOT, "python", "fastact", "kernel_resources.json"))
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    rows = table(args.build)
    if not rows:
        print(f"no ptxas reports under {args.build} (a CUDA build writes them)", file=sys.stderr)
        return 1 if args.check else 0
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"{len(rows)} kernel builds -> {args.out} (python -m fastact --kernels prints them)")
    if args.check:
        bad = check(rows)
        for b in bad:
            print("SPILL:", b, file=sys.stderr)
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
