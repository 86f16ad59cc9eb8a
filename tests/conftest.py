"""Shared fixtures and comparison helpers for the fastact tests.

Every test that takes ``device`` runs on CPU and, when a GPU is present, on
CUDA; without one the CUDA cases are reported as skipped.
"""
from __future__ import annotations

import re

import pytest
import torch

import fastact  # registers the ops
from fastact.accuracy import mismatch

HAS_CUDA = torch.cuda.is_available()
# The emulation lane (make test-emu): "cpu" tensors run the CUDA kernels on
# the SIMT emulator, so CUDA behaviour (device asserts) shows on CPU.
EMULATION = fastact.build_info()["cuda_emulation"]

# Every CUDA test carries the `cuda` marker (`pytest -m cuda` runs exactly
# those: benchmarks/gpu_run.sh --quick) and skips without a CUDA device.
CUDA_MARKS = (pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device"))
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=CUDA_MARKS),
]
FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
HALF_DTYPES = (torch.float16, torch.bfloat16)


def requires_cuda(test):
    """Decorator of a CUDA-only test (function or class): the `cuda` marker,
    skipped without a CUDA device."""
    for mark in CUDA_MARKS:
        test = mark(test)
    return test


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device")


def pytest_terminal_summary(terminalreporter):
    """In the emulation lane: which CUDA kernel variants the run launched."""
    if not EMULATION:
        return
    from fastact import _emulation

    rows = _emulation.coverage()
    write = terminalreporter.write_line
    write(f"CUDA kernel variants launched on the emulator: {len(rows)}")
    kernels = {}
    for kernel, params, count in rows:
        k = kernels.setdefault(kernel, [0, set(), set()])
        k[0] += count
        # the first dtype named in the parameters is the data's (CE kernels also take double* lse)
        found = [(params.find(d), d) for d in ("c10::BFloat16", "c10::Half", "double", "float") if d in params]
        dtype = min(found)[1] if found else ""
        k[1].add(dtype.replace("c10::", ""))
        # the row kernels' team parameter: threads per row (lane groups, or 256: a block)
        k[2].update(int(n) for n in re.findall(r"RowTeam<(\d+)>", params))
    for kernel, (count, dtypes, teams) in sorted(kernels.items()):
        lanes = f"  lanes per row {', '.join(map(str, sorted(teams)))}" if teams else ""
        write(f"  {kernel:60s} {count:8d} launches  {', '.join(sorted(d for d in dtypes if d))}{lanes}")


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def assert_matches(ours: torch.Tensor, theirs: torch.Tensor, reference64: torch.Tensor | None = None,
                   ulps: float = 0.0):
    """fp32/fp64: equal to torch (or to the float64 reference rounded) within
    assert_close's default tolerances. fp16/bf16: max error against the
    float64 reference at most twice torch's own error on the same input
    (non-finite positions must agree exactly), plus ``ulps`` ulps of the
    dtype for sums of half-precision terms. The rule lives in
    fastact.accuracy.mismatch, which the self-check uses too."""
    msg = mismatch(ours, theirs, reference64, ulps)
    assert msg is None, msg
