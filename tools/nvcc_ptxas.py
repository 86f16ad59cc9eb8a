#!/usr/bin/env python3
"""nvcc with `ptxas -v`: setup.py runs the CUDA compiles through this
wrapper (PYTORCH_NVCC), which writes ptxas's per-kernel resource lines
(registers, spills, stack, shared memory) of each object to <object>.ptxas,
where tools/kernel_resources.py reads them; everything else nvcc prints
passes through."""
import os
import subprocess
import sys


def main() -> int:
    nvcc = os.environ.get("FASTACT_REAL_NVCC") or os.path.join(
        os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
    args = sys.argv[1:]
    compiling = "-c" in args and "-o" in args
    if not compiling:
        return subprocess.call([nvcc, *args])
    out = args[args.index("-o") + 1]
    r = subprocess.run([nvcc, *args, "-Xptxas=-v"], stderr=subprocess.PIPE, text=True)
    keep, ptxas = [], []
    for line in r.stderr.splitlines():
        is_ptxas = line.startswith("ptxas info") or "bytes stack frame" in line
        (ptxas if is_ptxas else keep).append(line)
    if r.returncode == 0:
        with open(out + ".ptxas", "w") as f:
            f.write("\n".join(ptxas) + "\n")
    if keep:
        sys.stderr.write("\n".join(keep) + "\n")
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
