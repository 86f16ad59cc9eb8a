"""Every activation of the op list against torch: values, gradients, dtypes,
shapes, layouts, special values, gradcheck, opcheck, torch.compile, in-place
and bad input. A new op in the op list is picked up here automatically."""
from __future__ import annotations

import math

import pytest
import torch

import fastact.functional as F
from fastact import reference as R
from fastact.ops import ACTIVATIONS
from conftest import DEVICES, FLOAT_DTYPES, HALF_DTYPES, assert_matches, requires_cuda

CASES = [(name, p) for name in ACTIVATIONS for p in R.params(name)]
CASE_IDS = [f"{n}{list(p) if p else ''}" for n, p in CASES]

# ops without an in-place form in torch.nn.functional
NO_INPLACE = {"gelu", "sigmoid", "tanh", "logsigmoid", "softplus", "softshrink", "hardshrink",
              "tanhshrink", "softsign", "swish", "quick_gelu", "squared_relu"}

SHAPES = [(), (0,), (1,), (7,), (3, 0, 2), (4, 33), (2, 3, 5, 7), (3, 70001)]


def op(name):
    return getattr(torch.ops.fastact, name)


def special_points(name, params):
    """Values where an activation has a kink, a branch or a cut-off, and the
    IEEE specials."""
    pts = [0.0, -0.0, 1.0, -1.0, 3.0, -3.0, 6.0, 20.0, -20.0, 1e-8, -1e-8, 88.0, -88.0,
           1e4, -1e4, math.inf, -math.inf, math.nan]
    for v in params:
        if isinstance(v, float):
            pts += [v, -v, v / 2 if v else 1.0]
    if name == "softplus":
        beta, thr = params
        pts += [thr / beta, thr / beta + 1e-3, thr / beta - 1e-3]
    return pts


def make_input(shape, dtype, device, name, params, scale=4.0):
    x = torch.randn(shape, dtype=torch.float64) * scale
    if x.numel() >= 40:
        pts = torch.tensor(special_points(name, params), dtype=torch.float64)
        x.view(-1)[: pts.numel()] = pts
    return x.to(dtype).to(device)


def torch_forward_backward(name, params, x, dy):
    """torch's value and gradient for x (in x's dtype), or for x upcast to float32
    and rounded back where torch's CPU kernels lack the half type."""
    fn = R.ACTIVATIONS[name]
    xr = x.detach().clone().requires_grad_(True)
    try:
        y = fn(xr, *params)
        (g,) = torch.autograd.grad(y, xr, dy)
        return y.detach(), g
    except RuntimeError:
        xf = x.detach().float().requires_grad_(True)
        y = fn(xf, *params)
        (g,) = torch.autograd.grad(y, xf, dy.float())
        return y.detach().to(x.dtype), g.to(x.dtype)


@pytest.mark.parametrize("name,params", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_backward_match_torch(name, params, dtype, shape, device):
    x = make_input(shape, dtype, device, name, params)
    dy = torch.randn(shape, dtype=dtype, device=device)
    y = op(name)(x, *params)
    dx = getattr(torch.ops.fastact, name + "_backward")(dy, x, *params)
    y_torch, dx_torch = torch_forward_backward(name, params, x, dy)
    y64, dx64 = torch_forward_backward(name, params, x.double(), dy.double())
    assert_matches(y, y_torch, y64)
    assert_matches(dx, dx_torch, dx64)


@pytest.mark.parametrize("name,params", CASES, ids=CASE_IDS)
def test_autograd_matches_torch(name, params, device):
    x = make_input((5, 40), torch.float32, device, name, params).requires_grad_(True)
    y = op(name)(x, *params)
    (g,) = torch.autograd.grad(y.sum(), x)
    y_torch, g_torch = torch_forward_backward(name, params, x, torch.ones_like(x))
    y64, g64 = torch_forward_backward(name, params, x.double(), torch.ones_like(x).double())
    assert_matches(y.detach(), y_torch, y64)
    assert_matches(g, g_torch, g64)


@pytest.mark.parametrize("name,params", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("layout", ["transposed", "sliced", "expanded", "offset"])
def test_non_contiguous_input(name, params, layout, device):
    base = make_input((24, 40), torch.float32, device, name, params)
    x = {
        "transposed": base.t(),
        "sliced": base[::2, 1::3],
        "expanded": base[:1].expand(5, 40),
        "offset": base.view(-1)[1:],  # misaligned for 128-bit loads
    }[layout]
    dy = torch.randn_like(x.contiguous()).t().contiguous().t() if layout == "transposed" else \
        torch.randn(x.shape, device=device)
    y = op(name)(x, *params)
    dx = getattr(torch.ops.fastact, name + "_backward")(dy, x, *params)
    torch.testing.assert_close(y, op(name)(x.contiguous(), *params), equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(
        dx, getattr(torch.ops.fastact, name + "_backward")(dy.contiguous(), x.contiguous(), *params),
        equal_nan=True, rtol=0, atol=0)
    if layout == "transposed":  # dense inputs keep their layout, as in torch
        assert y.stride() == x.stride()


def away_from_kinks(name, params, n=24):
    """float64 inputs at least 1e-3 from every point where the op is not smooth."""
    x = torch.randn(n, dtype=torch.float64) * 3
    kinks = [0.0, 3.0, -3.0, 6.0] + [v for p in params if isinstance(p, float) for v in (p, -p)]
    if name == "softplus":
        kinks.append(params[1] / params[0])
    for k in kinks:
        close = (x - k).abs() < 1e-3
        x[close] += 1e-2
    return x


@pytest.mark.parametrize("name,params", CASES, ids=CASE_IDS)
def test_gradcheck(name, params, device):
    x = away_from_kinks(name, params).to(device).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: op(name)(t, *params), (x,))


@pytest.mark.parametrize("name,params", CASES, ids=CASE_IDS)
def test_gradgradcheck(name, params, device):
    """Double backward works wherever torch's own does (and raises where torch's raises)."""
    x = away_from_kinks(name, params, n=12).to(device).requires_grad_(True)
    try:
        (g,) = torch.autograd.grad(R.ACTIVATIONS[name](x, *params).sum(), x, create_graph=True)
        torch.autograd.grad(g.sum(), x, allow_unused=True)
    except RuntimeError:
        with pytest.raises(RuntimeError):
            (g,) = torch.autograd.grad(op(name)(x, *params).sum(), x, create_graph=True)
            torch.autograd.grad(g.sum(), x)
        return
    assert torch.autograd.gradgradcheck(lambda t: op(name)(t, *params), (x,))


@pytest.mark.parametrize("name,params", CASES, ids=CASE_IDS)
def test_opcheck(name, params, device):
    x = torch.randn(3, 17, device=device)
    dy = torch.randn(3, 17, device=device)
    torch.library.opcheck(op(name).default, (x.clone().requires_grad_(True), *params))
    torch.library.opcheck(getattr(torch.ops.fastact, name + "_backward").default, (dy, x, *params))
    torch.library.opcheck(getattr(torch.ops.fastact, name + "_").default, (x.clone(), *params))


@pytest.mark.parametrize("name,params", CASES, ids=CASE_IDS)
def test_compile_fullgraph_aot(name, params, device):
    torch._dynamo.reset()  # every case compiles the same lambda code afresh
    f = lambda t: op(name)(t, *params) * 2  # noqa: E731
    x = make_input((4, 9), torch.float32, device, name, params)
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    y1, y2 = compiled(x1), f(x2)
    torch.testing.assert_close(y1, y2, equal_nan=True)
    y1.sum().backward()
    y2.sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, equal_nan=True)


def test_compile_fullgraph_inductor_chain(device):
    def chain(x, beta):
        x = F.gelu(x, approximate="tanh")
        x = F.silu(x) + F.leaky_relu(x, 0.1)
        x = F.hardtanh(F.softplus(x, 2.0, 10.0), -2.0, 2.0)
        return F.swish(x, beta) * F.sigmoid(x)

    x = torch.randn(8, 33, device=device, requires_grad=True)
    beta = torch.tensor(1.3, device=device, requires_grad=True)
    compiled = torch.compile(chain, fullgraph=True)
    y = compiled(x, beta)
    y.sum().backward()
    gx, gb = x.grad.clone(), beta.grad.clone()
    x.grad, beta.grad = None, None
    y_ref = chain(x, beta)
    y_ref.sum().backward()
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gb, beta.grad)


INPLACE_CASES = [(n, p) for n, p in CASES if n not in NO_INPLACE]


@pytest.mark.parametrize("name,params", INPLACE_CASES, ids=[f"{n}{list(p)}" for n, p in INPLACE_CASES])
def test_inplace(name, params, device):
    fn = getattr(F, name)
    x = make_input((6, 50), torch.float32, device, name, params)
    expected = R.ACTIVATIONS[name](x, *params)
    y = x.clone()
    out = fn(y, *params, inplace=True)
    assert out is y
    torch.testing.assert_close(y, expected, equal_nan=True)
    # non-dense tensor: written through its strides
    z = x.clone()
    view = z[:, ::2]
    fn(view, *params, inplace=True)
    torch.testing.assert_close(z[:, ::2], expected[:, ::2], equal_nan=True)
    torch.testing.assert_close(z[:, 1::2], x[:, 1::2], equal_nan=True)
    # with autograd on a non-leaf, as torch allows
    a = x.clone().requires_grad_(True)
    b = a * 1.0
    fn(b, *params, inplace=True).sum().backward()
    a2 = x.clone().requires_grad_(True)
    R.ACTIVATIONS[name](a2 * 1.0, *params).sum().backward()
    torch.testing.assert_close(a.grad, a2.grad, equal_nan=True)
    # a leaf that requires grad cannot be modified in place
    with pytest.raises(RuntimeError, match="in-place"):
        fn(x.clone().requires_grad_(True), *params, inplace=True)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_bad_dtype_raises(name, dtype, device):
    params = R.params(name)[0]
    x = torch.ones(4, device=device).to(dtype)
    with pytest.raises(TypeError, match=f"fastact.{name}"):
        op(name)(x, *params)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_backward_shape_mismatch_raises(name, device):
    params = R.params(name)[0]
    with pytest.raises(ValueError, match=f"fastact.{name}.*shape"):
        getattr(torch.ops.fastact, name + "_backward")(
            torch.ones(3, device=device), torch.ones(4, device=device), *params)
    with pytest.raises(TypeError, match=f"fastact.{name}.*dtype"):
        getattr(torch.ops.fastact, name + "_backward")(
            torch.ones(4, device=device, dtype=torch.float64), torch.ones(4, device=device), *params)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda x: F.gelu(x, approximate="fast"), "approximate"),
        (lambda x: F.celu(x, alpha=0.0), "alpha"),
        (lambda x: F.softshrink(x, -1.0), "lambd"),
        (lambda x: F.hardtanh(x, 2.0, 1.0), "min_val"),
    ],
    ids=["gelu-approximate", "celu-alpha", "softshrink-lambd", "hardtanh-bounds"],
)
def test_bad_argument_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.randn(4))


# --- activations with a tensor or random parameter -----------------------------------

@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape,channels", [((5,), 1), ((4, 3), 3), ((2, 6, 5, 7), 6),
                                            ((2, 6, 5, 7), 1), ((0, 3, 4), 3), ((), 1)])
def test_prelu(dtype, shape, channels, device):
    x = make_input(shape, dtype, device, "prelu", ()).requires_grad_(True)
    w = (torch.rand(channels, dtype=dtype, device=device) - 0.3).requires_grad_(True)
    if len(shape) == 0:
        w = w.detach().reshape(()).requires_grad_(True)
    y = F.prelu(x, w)
    dy = torch.randn_like(y)
    dx, dw = torch.autograd.grad(y, (x, w), dy)
    xr, wr = x.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    try:
        yr = torch.nn.functional.prelu(xr, wr)
        dxr, dwr = torch.autograd.grad(yr, (xr, wr), dy)
    except RuntimeError:  # half types on CPU: torch in float32, rounded once
        xf, wf = x.detach().float().requires_grad_(True), w.detach().float().requires_grad_(True)
        yf = torch.nn.functional.prelu(xf, wf)
        dxf, dwf = torch.autograd.grad(yf, (xf, wf), dy.float())
        yr, dxr, dwr = yf.to(dtype), dxf.to(dtype), dwf.to(dtype)
    refs = [None] * 3
    if dtype in HALF_DTYPES:
        x64, w64 = x.detach().double().requires_grad_(True), w.detach().double().requires_grad_(True)
        y64 = torch.nn.functional.prelu(x64, w64)
        refs = [y64.detach(), *torch.autograd.grad(y64, (x64, w64), dy.double())]
    assert_matches(y.detach(), yr.detach(), refs[0])
    assert_matches(dx, dxr, refs[1])
    assert_matches(dw, dwr, refs[2])


@pytest.mark.parametrize("shape", [(3, 7, 1000), (2, 257, 33), (1, 3, 65537), (5, 131, 3, 5), (9, 2)])
def test_prelu_and_swish_channel_of_every_element(shape, device):
    # the channel (prelu, dim 1) and the feature (swish, last dim) of each
    # element come from multiply-shift dividers: every element checked exactly
    # (float64: x * w rounds as torch's), odd and large divisors included
    x = torch.randn(shape, dtype=torch.float64, device=device)
    w = torch.rand(shape[1], dtype=torch.float64, device=device) + 0.5
    assert torch.equal(F.prelu(x, w), torch.nn.functional.prelu(x, w))
    beta = torch.rand(shape[-1], dtype=torch.float64, device=device) + 0.5
    (dbeta,) = torch.autograd.grad(F.swish(x, beta.requires_grad_(True)).sum(), beta)
    b = beta.detach()
    want = (x * x * torch.sigmoid(b * x) * (1 - torch.sigmoid(b * x))).reshape(-1, shape[-1]).sum(0)
    torch.testing.assert_close(dbeta, want)


def test_prelu_gradcheck_and_opcheck(device):
    x = away_from_kinks("prelu", ()).reshape(2, 3, 4).to(device).requires_grad_(True)
    w = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(F.prelu, (x, w))
    torch.library.opcheck(torch.ops.fastact.prelu.default, (x.float(), w.float()))
    torch.library.opcheck(torch.ops.fastact.prelu_backward.default,
                          (torch.randn(2, 3, 4, device=device), x.detach().float(), w.detach().float()))


def test_prelu_bad_weight_raises():
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="fastact.prelu.*channels"):
        F.prelu(x, torch.ones(4))
    with pytest.raises(ValueError, match="fastact.prelu.*1-D"):
        F.prelu(x, torch.ones(3, 1))
    with pytest.raises(TypeError, match="fastact.prelu"):
        F.prelu(x, torch.ones(3, dtype=torch.long))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("beta_shape", [(), (1,), (33,)])
def test_swish_tensor_beta(dtype, beta_shape, device):
    x = make_input((4, 33), dtype, device, "swish", ()).requires_grad_(True)
    beta = (torch.rand(beta_shape, dtype=dtype, device=device) + 0.5).requires_grad_(True)
    y = F.swish(x, beta)
    dy = torch.randn_like(y)
    dx, db = torch.autograd.grad(y, (x, beta), dy)
    ref = R.ACTIVATIONS["swish"]
    xr, br = x.detach().clone().requires_grad_(True), beta.detach().clone().requires_grad_(True)
    yr = ref(xr, br)
    dxr, dbr = torch.autograd.grad(yr, (xr, br), dy)
    refs = [None] * 3
    if dtype in HALF_DTYPES:
        x64, b64 = x.detach().double().requires_grad_(True), beta.detach().double().requires_grad_(True)
        y64 = ref(x64, b64)
        refs = [y64.detach(), *torch.autograd.grad(y64, (x64, b64), dy.double())]
    assert_matches(y.detach(), yr.detach(), refs[0])
    assert_matches(dx, dxr, refs[1])
    assert_matches(db, dbr, refs[2])


@requires_cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("beta_dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_swish_host_scalar_beta_on_cuda(dtype, beta_dtype):
    # a CPU 0-dim beta goes by value (no copy to the device): the same result
    # as that beta on the device; one that requires grad still gets it
    x = make_input((4, 33), dtype, "cuda", "swish", ())
    beta = torch.tensor(0.7, dtype=beta_dtype)
    torch.testing.assert_close(F.swish(x, beta), F.swish(x, beta.cuda()), rtol=0, atol=0)
    beta.requires_grad_(True)
    (grad,) = torch.autograd.grad(F.swish(x, beta).sum(), beta)
    assert grad.device.type == "cpu" and grad.dtype == beta_dtype


def test_swish_beta_gradcheck_and_opcheck(device):
    x = torch.randn(3, 5, dtype=torch.float64, device=device, requires_grad=True)
    beta = torch.rand(5, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(F.swish, (x, beta))
    torch.library.opcheck(torch.ops.fastact.swish_beta.default, (x.detach().float(), beta.detach().float()))
    with pytest.raises(ValueError, match="fastact.swish.*beta"):
        F.swish(torch.randn(3, 5, device=device), torch.ones(4, device=device))


def test_rrelu_eval_is_leaky_relu_at_midpoint(device):
    x = torch.randn(100, device=device)
    torch.testing.assert_close(F.rrelu(x, 0.1, 0.3, training=False),
                               torch.nn.functional.leaky_relu(x, 0.2))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_rrelu_training(dtype, device):
    lower, upper = 0.1, 0.4
    x = torch.randn(20000, device=device).to(dtype).requires_grad_(True)
    torch.manual_seed(3)
    y = F.rrelu(x, lower, upper, training=True)
    torch.manual_seed(3)
    y_again = F.rrelu(x, lower, upper, training=True)
    assert torch.equal(y, y_again)  # reproducible with torch.manual_seed
    assert not torch.equal(y, F.rrelu(x, lower, upper, training=True))  # fresh draws
    neg = x.detach() < 0
    slope = (y.detach().float()[neg] / x.detach().float()[neg])
    # y = x a rounded to dtype, then y / x in float32: |slope - a| <= a eps
    # (eps of dtype, or of float32 where that is coarser), or where y is
    # subnormal half its spacing over |x|; the gradient is a rounded to
    # dtype. Twice that, at the largest a.
    eps = max(torch.finfo(dtype).eps, torch.finfo(torch.float32).eps)
    subnormal = torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps
    tol = 2 * (eps * upper + subnormal / x.detach().float()[neg].abs())
    assert (slope >= lower - tol).all() and (slope <= upper + tol).all()
    # uniform draws: the mean of n of them within 8 standard deviations
    sigma = (upper - lower) / math.sqrt(12 * slope.numel())
    assert abs(slope.mean().item() - (lower + upper) / 2) < 8 * sigma + tol.mean().item()
    assert torch.equal(y.detach()[~neg], x.detach()[~neg])
    (g,) = torch.autograd.grad(y.sum(), x)
    assert ((g.float()[neg] - slope).abs() <= tol).all()
    assert torch.all(g[~neg] == 1)


def test_rrelu_opcheck_and_bounds(device):
    seed = torch.tensor([123, 4], dtype=torch.int64, device=device)
    x = torch.randn(4, 5, device=device)
    torch.library.opcheck(torch.ops.fastact.rrelu_train.default,
                          (x.clone().requires_grad_(True), 0.1, 0.3, seed))
    with pytest.raises(ValueError, match="fastact.rrelu"):
        F.rrelu(x, 0.5, 0.1, training=True)


@requires_cuda
def test_cuda_past_2_pow_31_elements():
    n = 2**31 + 8  # 64-bit indexing: 4 GiB of bfloat16 in, 4 GiB out
    x = torch.full((n,), -1.0, dtype=torch.bfloat16, device="cuda")
    x[-4:] = 2.0
    y = F.relu(x)
    assert y[-4:].eq(2).all() and y[-5] == 0 and y[: 2**20].eq(0).all()
    del x, y
    torch.cuda.empty_cache()


@requires_cuda
def test_cuda_device_mismatch_raises():
    x = torch.randn(4, device="cuda")
    with pytest.raises(RuntimeError, match="fastact.silu.*cuda"):
        torch.ops.fastact.silu_backward(torch.randn(4), x)
    with pytest.raises(RuntimeError, match="fastact.prelu.*weight"):
        F.prelu(x, torch.ones(1))


def _rrelu_reference_slopes(n, lower, upper, seed, offset):
    """rrelu's slopes of stream (seed, offset) in plain Python: Philox draw u
    of each element (tests/test_dropout.py), then lower + (upper - lower) * u
    with float32 bounds, summed in float64 and rounded once to float32."""
    from test_dropout import _philox4x32_10

    lo, hi = torch.tensor([lower, upper], dtype=torch.float32).tolist()
    span = torch.tensor(hi, dtype=torch.float32) - torch.tensor(lo, dtype=torch.float32)
    u = torch.tensor([(_philox4x32_10(seed, offset, i >> 2)[i & 3] >> 8) / 16777216.0 for i in range(n)],
                     dtype=torch.float64)
    return (lo + span.double() * u).float()


def test_rrelu_slopes_match_philox_reference():
    # CPU here; in the emulation lane the same calls run the CUDA kernels, so
    # the CPU and CUDA slopes equal one reference bit for bit, and so each
    # other (dropout's masks are checked the same way)
    n, lower, upper = 1003, 0.1, 0.3
    for seed, offset in ((0, 0), (123456789, 4), (-5, 1 << 40)):
        want = _rrelu_reference_slopes(n, lower, upper, seed, offset)
        rng = torch.tensor([seed, offset], dtype=torch.int64)
        x = -torch.ones(n)
        assert torch.equal(-torch.ops.fastact.rrelu_train(x, lower, upper, rng), want)
        assert torch.equal(torch.ops.fastact.rrelu_train_backward(torch.ones(n), x, lower, upper, rng), want)
        # a misaligned input takes the kernels' scalar path: the same draws
        misaligned = torch.full((n + 1,), -1.0)[1:]
        assert torch.equal(-torch.ops.fastact.rrelu_train(misaligned, lower, upper, rng), want)


def test_rrelu_reproducible_and_on_the_input_device_stream(device):
    # the stream is the input device's generator's (torch.manual_seed seeds
    # every device), drawn into a tensor on that device, as dropout's
    x = -torch.ones(4099, device=device)
    torch.manual_seed(11)
    a = F.rrelu(x, 0.1, 0.3, training=True)
    b = F.rrelu(x, 0.1, 0.3, training=True)
    torch.manual_seed(11)
    assert torch.equal(F.rrelu(x, 0.1, 0.3, training=True), a)
    assert not torch.equal(a, b)
    seed = torch.ops.fastact._philox_seed(x)
    assert seed.device == x.device and seed.dtype == torch.int64 and seed.shape == (2,)
    with pytest.raises(RuntimeError, match="fastact.rrelu: seed"):
        torch.ops.fastact.rrelu_train(x, 0.1, 0.3, torch.zeros(2, dtype=torch.int32, device=device))


@requires_cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_rrelu_cpu_and_cuda_slopes_identical(dtype):
    # the slopes are a function of (seed, offset, index): a GPU run's are
    # reproduced on the CPU bit for bit, forward and backward
    x = (torch.randn(3, 4099, dtype=torch.float64) * 3).to(dtype)
    outs = []
    for device in ("cpu", "cuda"):
        xd = x.to(device)
        seed = torch.tensor([123456789, 1 << 40], dtype=torch.int64, device=device)
        outs.append((torch.ops.fastact.rrelu_train(xd, 0.1, 0.3, seed).cpu(),
                     torch.ops.fastact.rrelu_train_backward(torch.ones_like(xd), xd, 0.1, 0.3, seed).cpu()))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


@requires_cuda
def test_rrelu_cuda_generator():
    # torch.cuda.manual_seed and the CUDA generator's state decide the slopes
    x = -torch.ones(4099, device="cuda")
    torch.cuda.manual_seed(5)
    a = F.rrelu(x, training=True)
    torch.cuda.manual_seed(5)
    assert torch.equal(F.rrelu(x, training=True), a)
    torch.cuda.manual_seed(6)
    assert not torch.equal(F.rrelu(x, training=True), a)


@requires_cuda
def test_cuda_runs_on_current_stream():
    x = torch.randn(1 << 20, device="cuda")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        y = F.gelu(x)
    s.synchronize()
    torch.testing.assert_close(y, torch.nn.functional.gelu(x))


def test_double_backward_of_parametrized(device):
    # prelu (weight) and swish with a tensor beta: second derivatives through
    # the plain-torch formula, checked numerically in float64
    x = torch.randn(4, 6, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.rand(6, dtype=torch.float64, device=device, requires_grad=True)
    beta = torch.tensor(0.7, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a, b: F.prelu(a, b), (x, w))
    assert torch.autograd.gradgradcheck(lambda a, b: F.swish(a, b), (x, beta))
