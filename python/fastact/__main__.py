"""``python -m fastact``: print build_info() and run the self-check; exit 1 on a mismatch.

``--seed N`` draws other inputs (the default is fixed, so the check is
deterministic); ``--quick`` runs the same comparisons at smaller sizes.
``--kernels [--all]`` prints the CUDA kernels' resource table (registers,
spills, shared memory, occupancy) that the CUDA build wrote.
"""
import argparse
import json
import os
import sys

import fastact
from fastact import selfcheck


def kernels(every: bool = False) -> int:
    """The resource table: per kernel and architecture, over its template
    instantiations (op, dtype, vector width), the register range, the most
    spilled bytes, static shared memory and the lowest theoretical occupancy
    at its block size; with --all, every instantiation."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernel_resources.json")
    if not os.path.exists(path):
        print("no kernel resource table: a CUDA build writes it (python tools/kernel_resources.py)")
        return 1
    with open(path) as f:
        rows = json.load(f)
    if every:
        groups = {(r["kernel"], r["arch"]): [r] for r in rows}
    else:
        groups = {}
        for r in rows:
            groups.setdefault((r["kernel"].split("<")[0], r["arch"]), []).append(r)
    print(f"{'kernel':56s} {'arch':6s} {'builds':>6s} {'registers':>9s} {'spills':>6s} {'smem':>5s} "
          f"{'block':>5s} {'occupancy':>9s}")
    for (name, arch), rs in sorted(groups.items()):
        regs = sorted(r["registers"] for r in rs)
        reg = f"{regs[0]}" if regs[0] == regs[-1] else f"{regs[0]}-{regs[-1]}"
        spill = max(r["spill_stores"] + r["spill_loads"] for r in rs)
        print(f"{name[:56]:56s} {arch:6s} {len(rs):6d} {reg:>9s} {spill:6d} {max(r['shared'] for r in rs):5d} "
              f"{rs[0]['threads']:5d} {min(r['occupancy'] for r in rs):9.0%}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastact", description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=selfcheck.DEFAULT_SEED, help="seed of the self-check's inputs")
    ap.add_argument("--quick", action="store_true", help="the same comparisons at smaller sizes")
    ap.add_argument("--kernels", action="store_true", help="print the CUDA kernels' resource table")
    ap.add_argument("--all", action="store_true", help="with --kernels: every template instantiation")
    args = ap.parse_args(argv)
    if args.kernels:
        return kernels(every=args.all)
    print("fastact build info:")
    print(json.dumps(fastact.build_info(), indent=2))
    print("self-check (every op, forward and backward, against torch):")
    failures = selfcheck.run(verbose=True, seed=args.seed, quick=args.quick)
    if failures:
        print(f"self-check FAILED: {len(failures)} mismatches")
        return 1
    print("self-check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
