"""`make bench`: benchmark every op family on the device present (CUDA if
available, else CPU), print a table and write results under
benchmarks/results/<device>/ (the latest run per device). `--full` runs every op.
`--quick` (benchmarks/gpu_run.sh --quick): the headline ops only, few rounds,
cross_entropy and softmax at the row kernels' shapes (bench_losses.ROW_SHAPES;
on the CPU with 1/16 of the rows), results under benchmarks/results/_tmp/quick
unless --out is given (never in the README's tables)."""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import bench_activations  # noqa: E402
import bench_dropout  # noqa: E402
import bench_glu  # noqa: E402
import bench_linear_ce  # noqa: E402
import bench_losses  # noqa: E402
import bench_posttrain  # noqa: E402
import bench_transformers  # noqa: E402
from harness import (Timer, context, copy_bandwidth, markdown_table, read_results, verdicts,  # noqa: E402
                     write_results)


def warm_up_cpu_memory(seconds: float = 1.5) -> None:
    """A process's first large CPU outputs can be slow to fault in while the
    kernel gathers transparent huge pages (fastact advises them, see
    csrc/include/fastact/alloc.h; seen on a VM: tens of calls at 5-10x the
    steady time). A training loop runs in the steady state, so the benchmark
    does too: large outputs are allocated and written for a moment first."""
    import time

    import fastact.functional as F

    x = torch.randn(16 * 2**20)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        F.relu(x)


QUICK_ACTIVATIONS = [("gelu", ("tanh",)), ("silu", ())]


def quick_families(device: str):
    """(label, run) of `--quick`: gelu and silu, packed SwiGLU at LLaMA-7B's
    FFN size, the dropout family, cross_entropy and softmax at the row
    kernels' shapes and (CUDA) the fused linear cross-entropy LM head."""
    from functools import partial

    cuda = device == "cuda"
    row_shapes = bench_losses.ROW_SHAPES if cuda else [(max(1, n // 16), v) for n, v in bench_losses.ROW_SHAPES]

    def losses(device, timer, copy_gbps, full=False, **kw):
        return bench_losses.run_quick(device, timer, copy_gbps, row_shapes=row_shapes, **kw)

    families = [("activations", partial(bench_activations.run, ops=QUICK_ACTIVATIONS)),
                ("glu", partial(bench_glu.run, only_shapes=[(4096, 2 * 11008) if cuda else (1024, 2 * 2048)])),
                ("dropout", bench_dropout.run),
                ("losses", losses)]
    if cuda:  # (on the CPU its memory rows run subprocesses: seconds per call)
        families.append(("linear_ce", bench_linear_ce.run))
    return families


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true", help="every op and dtype (slow on CPU)")
    ap.add_argument("--quick", action="store_true",
                    help="the headline ops at the row-kernel shapes, few rounds (minutes on a GPU)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    ap.add_argument("--out", default=None, help="results folder (default: benchmarks/results/...)")
    ap.add_argument("--report", metavar="RESULTS_JSON", default=None,
                    help="benchmark nothing: rewrite results.md next to a results.json and print it")
    args = ap.parse_args()

    if args.report:
        rows, ctx = read_results(args.report)
        table = markdown_table(rows, ctx)
        with open(os.path.join(os.path.dirname(args.report), "results.md"), "w") as f:
            f.write(table)
        print(table)
        print("\n".join(verdicts(rows)))
        return 0

    if args.quick and args.full:
        ap.error("--quick and --full exclude each other")
    device = args.device
    if args.quick:
        timer = Timer(device, warmup=2, repeats=5 if device == "cuda" else 3)
    else:
        timer = Timer(device, warmup=3, repeats=15 if device == "cuda" else 7)
    if device == "cpu":
        warm_up_cpu_memory()
    ctx = context(device)
    ctx["copy_gbps"] = copy_bandwidth(device, timer)
    print(f"{ctx['device_name']}: copy bandwidth {ctx['copy_gbps']:.1f} GB/s")
    ctx["baselines"] = {"compile": not args.no_compile, **bench_losses.baselines()}
    missing = [k for k, ok in ctx["baselines"].items() if not ok]
    if missing:
        print("baselines not in this run (not importable or disabled): " + ", ".join(missing))
    dtypes = (torch.float32, torch.bfloat16) if (args.full or device == "cuda") else (torch.float32,)
    if args.full:
        dtypes += (torch.float16,)
    if args.quick:
        dtypes = (torch.bfloat16,) if device == "cuda" else (torch.float32,)

    families = [("activations", bench_activations.run), ("glu", bench_glu.run), ("dropout", bench_dropout.run),
                ("losses", bench_losses.run),
                ("linear_ce", bench_linear_ce.run), ("posttrain", bench_posttrain.run)]
    if bench_transformers.available():  # a Hugging Face LLaMA training step, unpatched vs fastact.transformers
        families.append(("transformers", bench_transformers.run))
    if args.quick:
        families = quick_families(device)
    rows = []
    for label, run in families:
        progress, bar = None, None
        try:
            from tqdm import tqdm
            bar = tqdm(desc=label, unit="impl")
            progress = bar.update
        except ImportError:
            print(f"benchmarking {label} ...")
        family_rows = run(device, timer, ctx["copy_gbps"], full=args.full,
                          with_compile=not args.no_compile, dtypes=dtypes, progress=progress)
        for r in family_rows:
            r.family = label
        rows += family_rows
        if bar is not None:
            bar.close()
    if args.quick and args.out is None:
        args.out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "_tmp", "quick")
    out = write_results(rows, ctx, args.out)
    try:
        import plot
        plot.plot(os.path.join(out, "results.json"))
    except ImportError:
        print("matplotlib not importable: no plots")
    if args.out is None and not args.quick:  # a run under benchmarks/results: refresh the README's tables
        import update_readme
        update_readme.main()
    print(markdown_table(rows, ctx))
    print("\n".join(verdicts(rows)))
    print(f"results written to {os.path.relpath(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
