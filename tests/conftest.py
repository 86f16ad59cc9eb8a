"""Shared fixtures and comparison helpers for the fastact tests.

Every test that takes ``device`` runs on CPU and, when a GPU is present, on
CUDA; without one the CUDA cases are reported as skipped.
"""
from __future__ import annotations

import pytest
import torch

import fastact  # noqa: F401  (registers the ops)

HAS_CUDA = torch.cuda.is_available()

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")),
]
FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
HALF_DTYPES = (torch.float16, torch.bfloat16)

requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device")


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def assert_matches(ours: torch.Tensor, theirs: torch.Tensor, reference64: torch.Tensor | None = None):
    """fp32/fp64: equal to torch within assert_close's default tolerances.
    fp16/bf16: max error against the float64 reference at most twice torch's
    own error on the same input (non-finite positions must agree exactly)."""
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    assert ours.dtype == theirs.dtype, (ours.dtype, theirs.dtype)
    assert ours.device == theirs.device
    if ours.dtype not in HALF_DTYPES:
        if reference64 is None:
            torch.testing.assert_close(ours, theirs, equal_nan=True)
            return
        # Each element must match torch in this dtype or torch's float64
        # answer rounded to it (torch's float32 CPU kernels differ from its own
        # float64 ones at a few special values, e.g. gelu(inf) is NaN).
        rounded = reference64.to(ours.dtype)
        tol = dict(rtol=1.3e-6, atol=1e-5) if ours.dtype == torch.float32 else dict(rtol=1e-7, atol=1e-7)
        ok = torch.isclose(ours, theirs, equal_nan=True, **tol) | \
            torch.isclose(ours, rounded, equal_nan=True, **tol)
        assert ok.all(), (f"{(~ok).sum().item()} mismatches, e.g. ours {ours[~ok][:4].tolist()} "
                          f"torch {theirs[~ok][:4].tolist()} float64 {rounded[~ok][:4].tolist()}")
        return
    assert reference64 is not None
    ours64, theirs64 = ours.double().cpu(), theirs.double().cpu()
    ref = reference64.double().cpu()
    finite = torch.isfinite(ref) & torch.isfinite(theirs64)
    rounded = reference64.to(ours.dtype).double().cpu()
    special = ~finite
    same = torch.isclose(ours64[special], theirs64[special], equal_nan=True, rtol=0, atol=0) | \
        torch.isclose(ours64[special], rounded[special], equal_nan=True, rtol=0, atol=0)
    assert same.all(), f"non-finite results differ: ours {ours64[special][~same][:4].tolist()}"
    if finite.any():
        err_ours = (ours64[finite] - ref[finite]).abs().max().item()
        err_torch = (theirs64[finite] - ref[finite]).abs().max().item()
        assert err_ours <= 2 * err_torch, f"error {err_ours:g} > 2 x torch's {err_torch:g}"
