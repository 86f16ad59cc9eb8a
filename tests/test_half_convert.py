"""The CPU kernels' own bfloat16/float16 <-> float conversions
(csrc/cpu/half_convert.h: branch-free, vectorized) against torch's, bit for
bit: every one of the 65536 inputs of each type (widened, then narrowed back),
and float results rounded to the type (ties, overflow to inf, subnormals,
NaN) through ops whose float arithmetic torch does the same way."""
from __future__ import annotations

import pytest
import torch

import fastact.functional as F
from conftest import DEVICES, HALF_DTYPES


def every_value(dtype):
    return torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)


def same_bits(a, b):
    """Equal bit patterns, except that any NaN equals any NaN (torch's NaN
    payloads are not part of its contract)."""
    nan = torch.isnan(a) & torch.isnan(b)
    bits = a.view(torch.int16) == b.view(torch.int16)
    return bool((bits | nan).all()) and bool((torch.isnan(a) == torch.isnan(b)).all())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_every_value_round_trips(dtype, device):
    x = every_value(dtype).to(device)
    inf = float("inf")
    # hardtanh(-inf, inf) is the identity: widen, compare in float, narrow
    y = F.hardtanh(x, -inf, inf)
    assert same_bits(y, x)
    # odd sizes: the block loop's tails
    for n in (1, 7, 511, 513, 1025):
        assert same_bits(F.hardtanh(x[:n], -inf, inf), x[:n])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("slope", [0.01, 0.3, 1e-3, 7.77, 1e4, 3e-6])
def test_rounding_of_float_results(dtype, slope, device):
    # leaky_relu's negative half is x * slope in float, rounded once to the
    # type: every tie, overflow to inf and subnormal result the type has
    x = every_value(dtype).to(device)
    ours = F.leaky_relu(x, slope)
    theirs = torch.nn.functional.leaky_relu(x, slope)
    assert same_bits(ours, theirs)
    g = torch.ones_like(x)
    xr = x.clone().requires_grad_(True)
    (ours_grad,) = torch.autograd.grad(F.leaky_relu(xr, slope), xr, g)
    (theirs_grad,) = torch.autograd.grad(torch.nn.functional.leaky_relu(xr, slope), xr, g)
    assert same_bits(ours_grad, theirs_grad)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_squared_difference_sum_of_every_copy(dtype):
    # mse_loss's fused sum in bfloat16/float16 (in-register conversions,
    # float lane sums per block of 1024, blocks added in double) against a
    # float64 sum of the same values: a sum of non-negative terms, so the
    # float lane sums (at most 1024 terms each, for any lane count) are off by
    # at most 1024 float32 epsilons relative to the total (twice that here)
    g = torch.Generator().manual_seed(5)
    for n in (1, 7, 15, 16, 17, 1023, 1024, 1025, 4099, 70001):
        x = torch.randn(n, generator=g).to(dtype)
        t = torch.randn(n, generator=g).to(dtype)
        ours = torch.ops.fastact.squared_difference_sum(x, t).double()
        want = ((x.double() - t.double()) ** 2).sum()
        rtol = 2 * 1024 * 2.0 ** -24
        assert abs(ours - want) <= rtol * want, (n, ours.item(), want.item())


@pytest.mark.parametrize("isa", ["avx2", "scalar"])
def test_every_conversion_copy(isa):
    # the same checks with the conversions capped at AVX2+F16C or scalar (the
    # machine running the suite picks one copy; the others are run here)
    import os
    import subprocess
    import sys
    env = dict(os.environ, FASTACT_HALF_CONVERT=isa)
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                          "-k", "round_trips or rounding_of or squared_difference", "-x"],
                         cwd=here, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert " passed" in out.stdout
