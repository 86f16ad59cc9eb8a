"""The self-check of ``python -m fastact`` passes for every seed, not for a
lucky one; it leaves the caller's RNG alone; and its bounds are tight enough
to see a real error."""
from __future__ import annotations

import time

import pytest
import torch

import fastact.functional as F
from fastact import selfcheck
from fastact.accuracy import cross_entropy_error, within
from conftest import EMULATION


# In the emulation lane every op runs on the SIMT emulator (tens of times
# slower): 20 seeds there; the 200-seed sweep is about the derived bounds,
# which the regular lane checks.
SEEDS = 20 if EMULATION else 200


def test_quick_selfcheck_passes_for_many_seeds():
    # The same cases and comparisons as the default check, at smaller sizes
    # (the large-vocabulary cross-entropy keeps V = 65539). On one thread: the
    # sweep is about inputs, and on a busy 2-core runner OpenMP's hand-offs
    # make these tiny ops several times slower (the multi-threaded paths run
    # in the default-size check below and in the rest of the suite). About
    # 0.12 s a run on a 2-core EPYC VM.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        failures = [f for seed in range(SEEDS) for f in selfcheck.run(verbose=False, seed=seed, quick=True,
                                                                      devices=["cpu"])]
        elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    assert not failures, "\n".join(failures[:10])
    print(f"{SEEDS} quick self-checks in {elapsed:.1f} s")


@pytest.mark.parametrize("seed", [selfcheck.DEFAULT_SEED, 1, 2])
def test_default_selfcheck_passes(seed):
    failures = selfcheck.run(verbose=False, seed=seed, devices=["cpu"])
    assert not failures, "\n".join(failures)


def test_leaves_global_rng_alone():
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    assert not selfcheck.run(verbose=False, seed=7, quick=True)
    assert torch.equal(torch.get_rng_state(), state)
    if cuda_state is not None:
        assert all(torch.equal(a, b) for a, b in zip(torch.cuda.get_rng_state_all(), cuda_state))


def test_same_seed_same_inputs():
    a = selfcheck.Setup("cpu", gen=torch.Generator().manual_seed(5)).randn(100)
    b = selfcheck.Setup("cpu", gen=torch.Generator().manual_seed(5)).randn(100)
    assert torch.equal(a, b)


def test_bounds_see_a_small_error():
    # The derived bounds of the large-vocabulary cross-entropy are a few 1e-5
    # relative: a 0.1 % error in the gradient or 1e-3 in the loss fails.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 65539, generator=g)
    t = torch.tensor([0, 65538, -100, 77])
    x64 = x.double().requires_grad_(True)
    loss64 = torch.nn.functional.cross_entropy(x64, t, label_smoothing=0.1)
    (g64,) = torch.autograd.grad(loss64, x64)
    xf = x.clone().requires_grad_(True)
    loss = F.cross_entropy(xf, t, label_smoothing=0.1)
    (gf,) = torch.autograd.grad(loss, xf)
    loss_bound, grad_bound = cross_entropy_error(x.double(), t, torch.float32, label_smoothing=0.1)
    assert within("loss", loss, loss64, loss_bound) is None
    assert within("grad", gf, g64, grad_bound) is None
    assert within("loss", loss + 1e-3, loss64, loss_bound) is not None
    assert within("grad", gf * 1.001, g64, grad_bound) is not None
