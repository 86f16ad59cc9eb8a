"""Fused dropout: torch semantics, the mask's statistics and reproducibility,
no stored mask, fused variants against their compositions, opcheck, compile."""
from __future__ import annotations

import math

import pytest
import torch

import fastact.functional as F
import fastact.nn as fnn
from fastact import reference as R
from conftest import FLOAT_DTYPES, assert_matches, requires_cuda

ops = torch.ops.fastact


def mask_of(seed: torch.Tensor, shape, p):
    """The keep-mask of stream `seed` (what every kernel applies)."""
    s, o = seed.tolist()
    return F.dropout_mask(shape, p, s, o, device=seed.device)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.001])
def test_kept_fraction(p, device):
    n = 1 << 20
    y = F.dropout(torch.ones(n, device=device), p)
    kept = (y != 0).double().mean().item()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(kept - (1 - p)) < 5 * sigma, (kept, 1 - p)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("p", [0.2, 0.7])
def test_kept_values_and_gradient(dtype, p, device):
    # kept is read off y != 0, so x has no zeros: drawn in float32 (torch
    # 2.11's CPU randn in float16/bfloat16 gives exact zeros, 0.1-0.6 %)
    x = torch.randn(3, 1001, device=device).to(dtype)
    x = x.masked_fill(x == 0, 1.0).requires_grad_()
    y = F.dropout(x, p)
    kept = y != 0
    opmath = torch.float64 if dtype == torch.float64 else torch.float32
    scale = torch.tensor(1 / (1 - p), dtype=opmath)
    expected = (x.detach().to(opmath) * scale).to(dtype)
    assert torch.equal(y[kept], expected[kept])
    dy = torch.randn_like(y)
    (g,) = torch.autograd.grad(y, x, dy)
    assert torch.equal(g, (dy.to(opmath) * kept.to(opmath) * scale).to(dtype))


def test_reproducible_and_fresh(device):
    x = torch.randn(10000, device=device)
    torch.manual_seed(7)
    a = F.dropout(x, 0.5)
    torch.manual_seed(7)
    b = F.dropout(x, 0.5)
    c = F.dropout(x, 0.5)
    assert torch.equal(a, b)
    assert not torch.equal(b, c)  # successive calls draw fresh streams
    g1 = torch.Generator(device=device).manual_seed(3)
    g2 = torch.Generator(device=device).manual_seed(3)
    assert torch.equal(F.dropout(x, 0.5, generator=g1), F.dropout(x, 0.5, generator=g2))


def test_mask_is_function_of_seed_and_offset(device):
    x = torch.randn(4, 257, device=device)
    torch.manual_seed(11)
    seed = ops._philox_seed(x)
    torch.manual_seed(11)
    y = F.dropout(x, 0.4)
    assert torch.equal(y != 0, mask_of(seed, x.shape, 0.4) | (x == 0))


def test_torch_semantics(device):
    x = torch.randn(100, device=device)
    state = torch.get_rng_state()
    assert F.dropout(x, 0.0) is x
    assert F.dropout(x, 0.5, training=False) is x
    assert torch.equal(torch.get_rng_state(), state)  # no random numbers drawn
    torch.testing.assert_close(F.dropout(x, 1.0), torch.zeros_like(x))
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="fastact.dropout.*probability"):
            F.dropout(x, bad)
        with pytest.raises(ValueError, match="probability"):
            F.dropout_add(x, x, bad)
    nan = torch.full((64,), math.nan, device=device)
    assert torch.isnan(F.dropout(nan, 0.5)).all()  # dropped NaN stays NaN, as in torch


def test_inplace(device):
    x = torch.randn(8, 33, device=device)
    torch.manual_seed(1)
    expected = F.dropout(x, 0.3)
    y = x.clone()
    torch.manual_seed(1)
    out = F.dropout(y, 0.3, inplace=True)
    assert out is y and torch.equal(y, expected)
    a = x.clone().requires_grad_(True)
    b = a * 1.0
    torch.manual_seed(1)
    F.dropout(b, 0.3, inplace=True).sum().backward()
    assert torch.equal(a.grad != 0, expected != 0)
    z = x.clone()
    torch.manual_seed(1)
    F.dropout(z.t(), 0.3, inplace=True)  # non-contiguous in place
    torch.manual_seed(1)
    assert torch.equal(z.t(), F.dropout(x.t().contiguous(), 0.3))


def test_no_mask_saved(device):
    x = torch.randn(1 << 16, device=device, requires_grad=True)

    def saved_bytes(fn):
        total = []
        def pack(t):
            total.append(t.numel() * t.element_size())
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return sum(total)

    assert saved_bytes(lambda: F.dropout(x, 0.5)) == 16  # the (seed, offset) pair
    assert saved_bytes(lambda: torch.nn.functional.dropout(x, 0.5)) >= x.numel()


def test_no_pattern_across_index(device):
    """Chi-square over index residues and a runs test on a fixed stream."""
    n, p = 1 << 20, 0.5
    mask = mask_of(torch.tensor([1234, 8], device=device), (n,), p).cpu()
    for period in (4, 16, 64):
        counts = mask.view(-1, period).sum(0).double()
        expected = n / period * (1 - p)
        chi2 = ((counts - expected) ** 2 / expected).sum().item()
        # 99.99 % quantile of chi-square with period-1 degrees of freedom (Wilson-Hilferty)
        df = period - 1
        limit = df * (1 - 2 / (9 * df) + 3.72 * math.sqrt(2 / (9 * df))) ** 3
        assert chi2 < limit, (period, chi2, limit)
    m = mask.long()
    runs = 1 + (m[1:] != m[:-1]).sum().item()
    n1 = m.sum().item()
    n0 = n - n1
    mean = 1 + 2 * n1 * n0 / n
    var = 2 * n1 * n0 * (2 * n1 * n0 - n) / (n * n * (n - 1))
    assert abs(runs - mean) / math.sqrt(var) < 4.5


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_fused_variants_match_compositions(dtype, device):
    x = torch.randn(6, 40, device=device, dtype=dtype, requires_grad=True)
    r = torch.randn(6, 40, device=device, dtype=dtype, requires_grad=True)
    b = torch.randn(40, device=device, dtype=dtype, requires_grad=True)
    seed = torch.tensor([99, 4], device=device)
    p = 0.3
    keep = mask_of(seed, x.shape, p)
    scale = 1 / (1 - p)
    half = dtype in (torch.float16, torch.bfloat16)

    def check(ours, compose, inputs):
        # fp32/fp64: torch's composition within the dtype's default
        # tolerances (grad bias: a sum of 6 rows); half types: the rule of
        # assert_matches against the composition in float64, with one ulp
        # for the grad bias (a sum of gradient elements rounded to the dtype)
        theirs = compose(*inputs)
        inputs64 = [v.detach().double().requires_grad_(True) for v in inputs]
        ref64 = compose(*inputs64)
        assert_matches(ours.detach(), theirs.detach(), ref64.detach() if half else None)
        dy = torch.randn_like(ours)
        for go, gt, g64 in zip(torch.autograd.grad(ours, inputs, dy), torch.autograd.grad(theirs, inputs, dy),
                               torch.autograd.grad(ref64, inputs64, dy.double())):
            assert_matches(go, gt, g64 if half else None, ulps=1.0 if go.shape != ours.shape else 0.0)

    check(ops.dropout_add(x, r, p, seed), lambda a, c: c + a * keep.to(a.dtype) * scale, (x, r))
    check(ops.bias_dropout_add(x, b, r, p, seed), lambda a, c, d: d + (a + c) * keep.to(a.dtype) * scale, (x, b, r))
    for act in ("gelu", "silu", "relu", "tanh", "squared_relu"):
        check(ops.bias_act_dropout(x, b, act, p, seed),
              lambda a, c, f=R.ACTIVATIONS[act]: f(a + c) * keep.to(a.dtype) * scale, (x, b))
    check(ops.bias_act_dropout(x, None, "silu", p, seed),
          lambda a: R.ACTIVATIONS["silu"](a) * keep.to(a.dtype) * scale, (x,))


def test_fused_eval_and_errors(device):
    x = torch.randn(4, 8, device=device)
    b = torch.randn(8, device=device)
    r = torch.randn(4, 8, device=device)
    torch.testing.assert_close(F.bias_dropout_add(x, b, r, 0.5, training=False), r + x + b)
    torch.testing.assert_close(F.dropout_add(x, r, 0.5, training=False), r + x)
    torch.testing.assert_close(F.bias_act_dropout(x, b, "gelu", 0.5, training=False),
                               torch.nn.functional.gelu(x + b))
    with pytest.raises(ValueError, match="unknown activation"):
        F.bias_act_dropout(x, b, "nope", 0.5)
    with pytest.raises(ValueError, match="needs arguments"):
        F.bias_act_dropout(x, b, "threshold", 0.5)
    with pytest.raises(ValueError, match="bias"):
        F.bias_dropout_add(x, torch.randn(3, device=device), r, 0.5)
    with pytest.raises(ValueError, match="shape"):
        F.dropout_add(x, torch.randn(4, 9, device=device), 0.5)
    with pytest.raises(TypeError, match="fastact.dropout"):
        F.dropout(torch.ones(4, dtype=torch.long, device=device), 0.5)


def test_non_contiguous(device):
    x = torch.randn(30, 17, device=device)
    seed = torch.tensor([5, 0], device=device)
    assert torch.equal(ops.dropout(x.t(), 0.5, seed), ops.dropout(x.t().contiguous(), 0.5, seed))
    assert torch.equal(ops.dropout(x[:, ::2], 0.5, seed), ops.dropout(x[:, ::2].contiguous(), 0.5, seed))


def test_opcheck(device):
    x = torch.randn(5, 12, device=device, requires_grad=True)
    r = torch.randn(5, 12, device=device, requires_grad=True)
    b = torch.randn(12, device=device, requires_grad=True)
    seed = torch.tensor([42, 8], device=device)
    torch.library.opcheck(ops.dropout.default, (x, 0.3, seed))
    torch.library.opcheck(ops.dropout_.default, (x.detach().clone(), 0.3, seed))
    torch.library.opcheck(ops.dropout_add.default, (x, r, 0.3, seed))
    torch.library.opcheck(ops.bias_dropout_add.default, (x, b, r, 0.3, seed))
    torch.library.opcheck(ops.bias_act_dropout.default, (x, b, "gelu", 0.3, seed))
    torch.library.opcheck(ops.bias_act_dropout_backward.default,
                          (torch.randn(5, 12, device=device), x.detach(), b.detach(), "gelu", 0.3, seed))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph(backend, device):
    torch._dynamo.reset()

    def block(x, b, r):
        h = F.bias_act_dropout(x, b, "gelu", 0.25)
        return F.bias_dropout_add(h, b, r, 0.25) + F.dropout(h, 0.25)

    x = torch.randn(16, 64, device=device, requires_grad=True)
    b = torch.randn(64, device=device, requires_grad=True)
    r = torch.randn(16, 64, device=device, requires_grad=True)
    y = torch.compile(block, fullgraph=True, backend=backend)(x, b, r)
    y.sum().backward()
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert r.grad is not None and torch.equal(r.grad, torch.ones_like(r))
    assert x.grad is not None and b.grad is not None

    def single(t):
        return F.dropout(t, 0.5)
    t = torch.randn(4096, device=device, requires_grad=True)
    out = torch.compile(single, fullgraph=True, backend=backend)(t)
    (g,) = torch.autograd.grad(out.sum(), t)
    kept = out != 0
    assert torch.equal(g != 0, kept)  # backward used the forward's mask
    assert 0.4 < kept.float().mean().item() < 0.6


def test_module_and_patch():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.2), torch.nn.GELU())
    fnn.patch(model)
    assert type(model[1]) is fnn.Dropout and type(model[2]) is fnn.GELU
    assert model.fastact_patched == {"Dropout": 1, "GELU": 1}
    x = torch.randn(4, 8)
    model.eval()
    torch.testing.assert_close(model(x), torch.nn.functional.gelu(model[0](x)))
    model.train()
    y = model[1](torch.ones(10000))
    assert 0.75 < (y != 0).float().mean().item() < 0.85
    assert torch.nn.Dropout(0.2).state_dict().keys() == fnn.Dropout(0.2).state_dict().keys()


def _philox4x32_10(seed: int, offset: int, group: int, fastact_domain: bool = True):
    """Philox 4x32-10 in plain Python (fastact/philox.h), the yardstick both
    the CPU kernels and (in the emulation lane) the CUDA kernels must match;
    counter (group, offset | 2^63). With fastact_domain=False the counter is
    curand's (group, subsequence) as torch's CUDA random kernels use it."""
    m32 = 0xFFFFFFFF
    seed, offset = seed & 0xFFFFFFFFFFFFFFFF, offset & 0xFFFFFFFFFFFFFFFF
    c = [group & m32, group >> 32 & m32, offset & m32, offset >> 32 | (1 << 31 if fastact_domain else 0)]
    k0, k1 = seed & m32, seed >> 32
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k0, p1 & m32, (p0 >> 32) ^ c[3] ^ k1, p0 & m32]
        k0, k1 = (k0 + 0x9E3779B9) & m32, (k1 + 0xBB67AE85) & m32
    return c


def test_mask_matches_philox_reference():
    # CPU here; in the emulation lane the same call runs the CUDA kernel, so
    # CPU and CUDA masks equal one reference and so each other.
    n, p = 1003, 0.3
    for seed, offset in ((0, 0), (123456789, 4), (-5, 1 << 40)):
        want = torch.tensor([(_philox4x32_10(seed, offset, i >> 2)[i & 3] >> 8) / 16777216.0 >= p
                             for i in range(n)])
        assert torch.equal(F.dropout_mask((n,), p, seed, offset), want)
        # a misaligned input takes the kernels' staged path: the same draws
        rng = torch.tensor([seed, offset], dtype=torch.int64)
        misaligned = torch.ones(n + 1)[1:]
        assert torch.equal(torch.ops.fastact.dropout(misaligned, p, rng) != 0, want)


def test_streams_apart_from_torch_curand_streams():
    # torch's CUDA random kernels draw curand Philox numbers with key = the
    # generator's seed and counter (offset / 4 + k, thread index); ours have
    # counter (i / 4, offset | 2^63): a torch thread whose index equals our
    # offset must not see our mask's numbers (it did before the top bit).
    seed, offset, n = 42, 8, 64
    ours = F.dropout_mask((n,), 0.5, seed, offset)
    torch_thread = torch.tensor([(_philox4x32_10(seed, offset, i >> 2, fastact_domain=False)[i & 3] >> 8)
                                 / 16777216.0 >= 0.5 for i in range(n)])
    assert not torch.equal(ours, torch_thread)


@requires_cuda
def test_cpu_and_cuda_masks_identical():
    for seed, offset in ((0, 0), (123456789, 4), (-5, 1 << 40)):
        a = F.dropout_mask((3, 1000), 0.3, seed, offset, device="cpu")
        b = F.dropout_mask((3, 1000), 0.3, seed, offset, device="cuda")
        assert torch.equal(a, b.cpu())


@requires_cuda
def test_cuda_graph_capture():
    x = torch.randn(1 << 16, device="cuda")
    static_out = torch.empty_like(x)
    F.dropout(x, 0.5)  # warm up outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static_out.copy_(F.dropout(x, 0.5))
    g.replay()
    first = static_out.clone()
    g.replay()
    assert not torch.equal(first, static_out)  # each replay draws a fresh stream
    assert 0.45 < (static_out != 0).float().mean().item() < 0.55


def test_vector_and_portable_draws_agree(tmp_path):
    # The CPU kernels draw with AVX-512 where the CPU has it and with the
    # portable Philox elsewhere (FASTACT_HALF_CONVERT=scalar forces the
    # latter): the same masks, over sizes that split across threads at
    # unaligned draw numbers.
    import os
    import subprocess
    import sys
    cases = [((300007,), 0.3, 12345, 0), ((7, 1001), 0.5, -9, 1 << 40), ((65, 3),  0.1, 3, 12)]
    script = (
        "import sys, torch, fastact.functional as F\n"
        f"cases = {cases!r}\n"
        "torch.save([F.dropout_mask(s, p, seed, off) for s, p, seed, off in cases], sys.argv[1])\n")
    out = tmp_path / "masks.pt"
    env = dict(os.environ, FASTACT_HALF_CONVERT="scalar")
    r = subprocess.run([sys.executable, "-c", script, str(out)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    portable = torch.load(out)
    for (shape, p, seed, off), want in zip(cases, portable):
        assert torch.equal(F.dropout_mask(shape, p, seed, off), want)
