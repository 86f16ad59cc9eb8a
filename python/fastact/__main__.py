"""``python -m fastact``: print build_info() and run the self-check; exit 1 on a mismatch.

``python -m fastact --kernels`` prints the CUDA kernels' resource table
(registers, spills, shared memory, occupancy) that the CUDA build wrote.
"""
import json
import os
import sys

import fastact
from fastact import selfcheck


def kernels() -> int:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernel_resources.json")
    if not os.path.exists(path):
        print("no kernel resource table: it is written by a CUDA build (python tools/kernel_resources.py)")
        return 1
    with open(path) as f:
        rows = json.load(f)
    print(f"{'kernel':64s} {'arch':6s} {'regs':>4s} {'spill st/ld':>11s} {'smem':>5s} {'block':>5s} {'occupancy':>9s}")
    for r in rows:
        print(f"{r['kernel'][:64]:64s} {r['arch']:6s} {r['registers']:4d} {r['spill_stores']:5d}/{r['spill_loads']:<5d} "
              f"{r['shared']:5d} {r['threads']:5d} {r['occupancy']:9.0%}")
    return 0


def main() -> int:
    if "--kernels" in sys.argv[1:]:
        return kernels()
    print("fastact build info:")
    print(json.dumps(fastact.build_info(), indent=2))
    print("self-check (every op, forward and backward, against torch):")
    failures = selfcheck.run(verbose=True)
    if failures:
        print(f"self-check FAILED: {len(failures)} mismatches")
        return 1
    print("self-check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
