"""softmax / log_softmax against torch: any dim, dtypes, shapes, special values,
gradients, gradcheck, opcheck, compile, modules."""
from __future__ import annotations

import pytest
import torch

import fastact.functional as F
import fastact.nn as fnn
from fastact.accuracy import TERM_EPS, eps, softmax_error, sum_error, within
from conftest import FLOAT_DTYPES, HALF_DTYPES, assert_matches

TF = torch.nn.functional
FNS = ["softmax", "log_softmax"]


@pytest.mark.parametrize("fn", FNS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
# (130, 13) ... (3, 4500): a row launch plan of the CUDA kernels each (lane
# groups of 4 to 32, a block per row; (2, 50257): split rows), see
# test_cross_entropy.ROW_PLAN_SHAPES
@pytest.mark.parametrize("shape,dim", [((7,), 0), ((4, 33), -1), ((4, 33), 0), ((2, 3, 5), 1),
                                       ((3, 0, 4), -1), ((), 0), ((2, 50257), 1), ((130, 13), -1),
                                       ((20, 27), -1), ((20, 61), -1), ((9, 1001), -1), ((3, 4500), 1)],
                         ids=str)
def test_matches_torch(fn, dtype, shape, dim, device):
    x = (torch.randn(shape, dtype=torch.float64) * 4).to(dtype).to(device)
    if x.numel() > 8:
        x.view(-1)[:3] = torch.tensor([1e4, -1e4, -float("inf")], dtype=dtype)

    def run(f, t):
        t = t.detach().clone().requires_grad_(True)
        y = f(t, dim)
        g = torch.ones_like(y) if y.dim() == 0 else torch.linspace(-1, 1, y.numel(), device=device).view(y.shape).to(y.dtype)
        return y.detach(), torch.autograd.grad(y, t, g)[0]

    y, g = run(getattr(F, fn), x)
    try:
        yt, gt = run(getattr(TF, fn), x)
    except RuntimeError:
        yt, gt = (v.to(dtype) for v in run(getattr(TF, fn), x.float()))
    y64, g64 = run(getattr(TF, fn), x.double())
    if dtype in HALF_DTYPES:
        assert_matches(y, yt, y64)
        assert_matches(g, gt, g64)
        return
    # float32/float64: against float64 within bounds derived from the dtype,
    # the row length and the magnitudes (accuracy.softmax_error): the
    # backward p (g - sum p g) or g - p sum g adds a sum over the row
    d = dim % max(x.dim(), 1)
    x64 = x.double().cpu()
    gout = torch.ones_like(x64) if x.dim() == 0 else \
        torch.linspace(-1, 1, x.numel(), dtype=torch.float64).view(x.shape).to(dtype).double()
    p, logp, logp_err, p_relerr = softmax_error(x64.reshape(1) if x.dim() == 0 else x64, d, dtype)
    p, logp_err, p_relerr = (v.reshape(x.shape) for v in (p, logp_err, p_relerr))
    n = x.shape[d] if x.dim() else 1
    e = eps(dtype)
    if fn == "softmax":
        s = (p * gout.abs()).sum(d, keepdim=True) if x.dim() else p * gout.abs()
        y_bound = p * p_relerr
        g_bound = p * (gout.abs() + s) * (p_relerr + TERM_EPS * e) + p * sum_error(dtype, n, s, 0.0)
    else:
        s = gout.abs().sum(d, keepdim=True) if x.dim() else gout.abs()
        y_bound = logp_err
        g_bound = p * s * p_relerr + p * sum_error(dtype, n, s, 0.0) + TERM_EPS * e * (gout.abs() + p * s)
    for what, ours, ref, bound in (("forward", y, y64, y_bound), ("backward", g, g64, g_bound)):
        assert ours.dtype == dtype
        msg = within(what, ours, ref, bound)
        assert msg is None, msg


@pytest.mark.parametrize("fn", FNS)
def test_gradcheck_opcheck_compile(fn, device):
    x = torch.randn(3, 6, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: getattr(F, fn)(t, 1), (x,))
    assert torch.autograd.gradcheck(lambda t: getattr(F, fn)(t, 0), (x,))
    xf = x.detach().float().requires_grad_(True)
    torch.library.opcheck(torch.ops.fastact.softmax_rows.default, (xf, fn == "log_softmax"))
    torch._dynamo.reset()
    f = lambda t: getattr(F, fn)(t, -1) * 2  # noqa: E731
    y = torch.compile(f, fullgraph=True, backend="aot_eager")(xf)
    torch.testing.assert_close(y, f(xf))


def test_dtype_argument_and_nan_row(device):
    x = torch.randn(4, 9, device=device, dtype=torch.bfloat16)
    torch.testing.assert_close(F.softmax(x, -1, dtype=torch.float32), TF.softmax(x, -1, dtype=torch.float32))
    y = torch.randn(3, 5, device=device)
    y[1, 2] = float("nan")
    torch.testing.assert_close(F.log_softmax(y, 1), TF.log_softmax(y, 1), equal_nan=True)


@pytest.mark.parametrize("fn", FNS)
def test_plus_inf_rows(fn, device):
    # a row whose max is +inf is NaN throughout in torch (exp(inf - inf));
    # also when the +inf is the only value besides -inf padding
    x = torch.tensor([[float("inf"), 0.0, 1.0, 2.0],
                      [0.0, 1.0, float("inf"), 2.0],
                      [-float("inf"), float("inf"), -float("inf"), -float("inf")],
                      [1.0, 2.0, 3.0, 4.0]], device=device)
    x = torch.cat([x, torch.full((4, 37), -float("inf"), device=device)], 1)  # beyond one vector
    torch.testing.assert_close(getattr(F, fn)(x, -1), getattr(TF, fn)(x, -1), equal_nan=True)


def test_modules():
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(fnn.Softmax(1)(x), torch.nn.Softmax(1)(x))
    torch.testing.assert_close(fnn.LogSoftmax(-1)(x), torch.nn.LogSoftmax(-1)(x))
    m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LogSoftmax(-1))
    fnn.patch(m)
    assert type(m[1]) is fnn.LogSoftmax


# --- mse_loss ---------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(), (0,), (7,), (4, 33), (3, 70001)], ids=str)
def test_mse_loss_matches_torch(reduction, dtype, shape, device):
    x = torch.randn(shape, device=device).to(dtype)
    t = torch.randn(shape, device=device).to(dtype)

    def run(f, a, b):
        a, b = a.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
        y = f(a, b, reduction=reduction)
        g = torch.ones_like(y) * 0.5
        return (y.detach(), *torch.autograd.grad(y, (a, b), g))

    ours = run(F.mse_loss, x, t)
    theirs = run(TF.mse_loss, x, t)
    ref = run(TF.mse_loss, x.double(), t.double())
    for o, th, r in zip(ours, theirs, ref):
        if dtype in HALF_DTYPES and o.dim() == 0:
            # a mean or sum: ours accumulates in float32/64 and rounds once; the
            # final rounding may land one half-precision ulp from torch's
            ulp = r.abs().double() * (2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -10)
            err, err_torch = (o.double() - r).abs(), (th.double() - r).abs()
            assert (err <= 2 * err_torch + ulp) | (r.isnan() & o.isnan()), (o, th, r)
        else:
            assert_matches(o, th, r if dtype != torch.float64 else None)


def test_mse_loss_misc(device):
    x = torch.randn(4, 5, dtype=torch.float64, device=device, requires_grad=True)
    t = torch.randn(4, 5, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: F.mse_loss(a, b), (x, t))
    torch.library.opcheck(torch.ops.fastact.squared_difference.default, (x.float(), t.float()))
    torch.library.opcheck(torch.ops.fastact.squared_difference_sum.default, (x.float(), t.float()))
    torch.library.opcheck(torch.ops.fastact.squared_difference_sum_backward.default,
                          (torch.tensor(0.5, device=device), x.float().detach(), t.float().detach()))
    # mean and sum save only their inputs for backward
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda v: saved.append(v) or v, lambda v: v):
        F.mse_loss(x, t)
    assert all(v is x or v is t for v in saved) and len(saved) == 2
    with pytest.warns(UserWarning, match="target size"):
        torch.testing.assert_close(F.mse_loss(x, t[:1]), TF.mse_loss(x, t[:1].expand_as(x)))
    with pytest.raises(ValueError, match="reduction"):
        F.mse_loss(x, t, reduction="avg")
    torch.testing.assert_close(fnn.MSELoss(reduction="sum")(x, t), torch.nn.MSELoss(reduction="sum")(x, t))
