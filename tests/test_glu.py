"""The GLU family against torch formulas: the two-tensor form and both packed
forms (halves, interleaved), any dim, every dtype and device, gradients,
gradcheck, opcheck, torch.compile, errors, and the LLaMA SwiGLU block; then
what only gpt-oss's clamped SwiGLU has (its clamps at special values, its
arguments)."""
from __future__ import annotations

import inspect
import math

import pytest
import torch

import fastact.functional as F
import fastact.nn as fnn
from fastact import reference as R
from fastact.ops import GLUS
from conftest import FLOAT_DTYPES, HALF_DTYPES, assert_matches

CASES = [(n, p) for n in GLUS for p in R.glu_params(n)]
IDS = [f"{n}{list(p) if p else ''}" for n, p in CASES]
SHAPES_DIMS = [((6,), -1), ((4, 2 * 33), -1), ((3, 8, 5), 1), ((8, 3, 5), 0), ((2, 0, 10), -1),
               ((5, 2 * 1024 + 2), -1), ((2, 3, 4, 6), 2)]


PACKINGS = ["halves", "interleaved", "two-tensor"]


def call(name, gate, up, dim, params, interleaved=False):
    """fastact's op: the functional API with the op's arguments by name; an
    interleaved packed input of an op whose functional form does not take
    `interleaved` (all but clamped_swiglu) through the registered op."""
    kwargs = dict(zip(GLUS[name], params))
    if interleaved and "interleaved" not in inspect.signature(getattr(F, name)).parameters:
        assert up is None
        return getattr(torch.ops.fastact, name + "_packed")(gate, dim, *params, True)
    if interleaved:
        kwargs["interleaved"] = True
    return getattr(F, name)(gate, up, dim, **kwargs)


def split(x, dim, packing):
    """The inputs of a packing: [x] when packed, else its two halves."""
    return list(x.chunk(2, dim=dim)) if packing == "two-tensor" else [x]


def torch_value_and_grads(name, params, inputs, dy, dim, packing):
    """torch's output and input gradients in the inputs' dtype (in float32,
    rounded once, where torch's CPU kernels lack the half type)."""
    def run(ts, g):
        ts = [t.detach().clone().requires_grad_(True) for t in ts]
        y = R.gated(name, ts[0], ts[1] if packing == "two-tensor" else None, dim, *params,
                    interleaved=packing == "interleaved")
        return (y.detach(), *torch.autograd.grad(y, ts, g))
    try:
        return run(inputs, dy)
    except RuntimeError:
        out = run([t.float() for t in inputs], dy.float())
        return tuple(o.to(inputs[0].dtype) for o in out)


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape,dim", SHAPES_DIMS, ids=str)
@pytest.mark.parametrize("packing", PACKINGS)
def test_matches_torch(name, params, dtype, shape, dim, packing, device):
    x = (torch.randn(shape, dtype=torch.float64) * 3).to(dtype).to(device)
    inputs = [t.requires_grad_(True) for t in split(x, dim, packing)]
    y = call(name, inputs[0], inputs[1] if packing == "two-tensor" else None, dim, params,
             packing == "interleaved")
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, inputs, dy)
    theirs = torch_value_and_grads(name, params, inputs, dy, dim, packing)
    ref64 = torch_value_and_grads(name, params, [t.double() for t in inputs], dy.double(), dim, packing)
    for ours, t, r in zip((y.detach(), *grads), theirs, ref64):
        assert_matches(ours, t, r if dtype in HALF_DTYPES or dtype == torch.float32 else None)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape,dim", SHAPES_DIMS, ids=str)
def test_glu_matches_torch(dtype, shape, dim, device):
    x = (torch.randn(shape, dtype=torch.float64) * 3).to(dtype).to(device).requires_grad_(True)
    y = F.glu(x, dim)
    dy = torch.randn_like(y)
    (g,) = torch.autograd.grad(y, x, dy)

    def torch_glu(t, d):
        t = t.detach().clone().requires_grad_(True)
        out = torch.nn.functional.glu(t, dim)
        return out.detach(), torch.autograd.grad(out, t, d)[0]
    try:
        yt, gt = torch_glu(x, dy)
    except RuntimeError:
        yt, gt = (o.to(dtype) for o in torch_glu(x.float(), dy.float()))
    y64, g64 = torch_glu(x.double(), dy.double())
    assert_matches(y.detach(), yt, y64 if dtype != torch.float64 else None)
    assert_matches(g, gt, g64 if dtype != torch.float64 else None)


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_non_contiguous(name, params, device):
    base = torch.randn(10, 2 * 24, device=device)
    gate, up = base.t()[:24], base.t()[24:]  # transposed halves
    torch.testing.assert_close(call(name, gate, up, -1, params),
                               call(name, gate.contiguous(), up.contiguous(), -1, params))
    sliced = torch.randn(6, 40, device=device)[:, ::2]  # packed input with gaps
    torch.testing.assert_close(call(name, sliced, None, -1, params),
                               call(name, sliced.contiguous(), None, -1, params))
    offset = torch.randn(1 + 4 * 34, device=device)[1:].view(4, 34)  # misaligned for vector loads
    torch.testing.assert_close(call(name, offset, None, -1, params),
                               call(name, offset.clone(), None, -1, params))
    for interleaved_dim in (-1, 0):  # interleaved, paired along the last dim / pairs of rows
        t = torch.randn(40, 12, device=device).t()
        torch.testing.assert_close(call(name, t, None, interleaved_dim, params, True),
                                   call(name, t.contiguous(), None, interleaved_dim, params, True))


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_packed_backward_writes_one_gradient(name, params, device):
    x = torch.randn(3, 16, device=device, requires_grad=True)
    y = call(name, x, None, -1, params)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert g.shape == x.shape and g.is_contiguous()
    gate, up = x.detach().chunk(2, -1)
    gate_r, up_r = gate.clone().requires_grad_(True), up.clone().requires_grad_(True)
    yr = call(name, gate_r, up_r, -1, params)
    g_gate, g_up = torch.autograd.grad(yr.sum(), (gate_r, up_r))
    torch.testing.assert_close(g, torch.cat([g_gate, g_up], -1))
    # interleaved: the gradient of gate at the even, of up at the odd positions
    (gi,) = torch.autograd.grad(call(name, x, None, -1, params, True).sum(), x)
    assert gi.shape == x.shape and gi.is_contiguous()
    gate_r, up_r = (t.clone().requires_grad_(True) for t in R.split_packed(x.detach(), -1, True))
    g_gate, g_up = torch.autograd.grad(call(name, gate_r, up_r, -1, params).sum(), (gate_r, up_r))
    torch.testing.assert_close(gi, torch.stack([g_gate, g_up], -1).flatten(-2))


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_gradcheck(name, params, device):
    x = torch.randn(3, 10, dtype=torch.float64, device=device)
    x[x.abs() < 1e-2] += 0.05  # away from relu's kink
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: call(name, t, None, -1, params), (x,))
    assert torch.autograd.gradcheck(lambda t: call(name, t, None, -1, params, True), (x,))
    assert torch.autograd.gradcheck(lambda t: call(name, t, None, 0, params, True), (x[:2].detach().clone().requires_grad_(True),))
    g, u = (t.detach().clone().requires_grad_(True) for t in x.chunk(2, -1))
    assert torch.autograd.gradcheck(lambda a, b: call(name, a, b, -1, params), (g, u))


def test_glu_gradcheck(device):
    x = torch.randn(4, 6, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: F.glu(t, 0), (x,))


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_opcheck(name, params, device):
    x = torch.randn(3, 2, 10, device=device)
    g, u = torch.randn(3, 10, device=device), torch.randn(3, 10, device=device)
    ops = torch.ops.fastact
    torch.library.opcheck(getattr(ops, name).default, (g.requires_grad_(True), u.requires_grad_(True), *params))
    torch.library.opcheck(getattr(ops, name + "_backward").default, (torch.randn(3, 10, device=device), g.detach(), u.detach(), *params))
    torch.library.opcheck(getattr(ops, name + "_packed").default, (x.clone().requires_grad_(True), 1, *params))
    torch.library.opcheck(getattr(ops, name + "_packed_backward").default, (torch.randn(3, 1, 10, device=device), x, 1, *params))
    for dim in (1, 2):  # interleaved: pairs of rows, paired elements
        out_shape = (3, 1, 10) if dim == 1 else (3, 2, 5)
        torch.library.opcheck(getattr(ops, name + "_packed").default,
                              (x.clone().requires_grad_(True), dim, *params, True))
        torch.library.opcheck(getattr(ops, name + "_packed_backward").default,
                              (torch.randn(out_shape, device=device), x, dim, *params, True))


def test_glu_opcheck(device):
    x = torch.randn(4, 6, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.fastact.glu.default, (x, 0))
    torch.library.opcheck(torch.ops.fastact.glu_backward.default, (torch.randn(2, 6, device=device), x.detach(), 0))


def test_compile_fullgraph(device):
    torch._dynamo.reset()

    def block(x, w):
        h = F.swiglu(x @ w)
        return (F.geglu(h, approximate="tanh") + F.reglu(h[:, :8], h[:, 8:]) + F.glu(h)
                + F.clamped_swiglu(h, interleaved=True, limit=2.0) + F.clamped_swiglu(h[:, :8], h[:, 8:]))

    x = torch.randn(8, 16, device=device, requires_grad=True)
    w = torch.randn(16, 32, device=device, requires_grad=True)
    y = torch.compile(block, fullgraph=True)(x, w)
    y.sum().backward()
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    y_ref = block(x, w)
    y_ref.sum().backward()
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gw, w.grad)


@pytest.mark.parametrize("name", list(GLUS))
def test_bad_input_raises(name, device):
    fn = getattr(F, name)
    with pytest.raises(ValueError, match=f"fastact.{name}.*even"):
        fn(torch.randn(3, 7, device=device))
    with pytest.raises(ValueError, match=f"fastact.{name}.*shape"):
        fn(torch.randn(3, 4, device=device), torch.randn(3, 5, device=device))
    with pytest.raises(TypeError, match=f"fastact.{name}.*dtype"):
        fn(torch.randn(3, 4, device=device), torch.randn(3, 4, device=device, dtype=torch.float64))
    with pytest.raises(TypeError, match=f"fastact.{name}"):
        fn(torch.ones(3, 4, device=device, dtype=torch.long))
    with pytest.raises(ValueError, match=f"fastact.{name}.*dim"):
        fn(torch.randn(3, 4, device=device), None, 2)
    with pytest.raises(ValueError, match=f"fastact.{name}.*at least one"):
        fn(torch.tensor(1.0, device=device))


def test_glu_bad_input_raises():
    with pytest.raises(ValueError, match="fastact.glu.*even"):
        F.glu(torch.randn(3, 5))


def llama_ffn(x, w1, w2, w3):
    return torch.nn.functional.linear(
        torch.nn.functional.silu(torch.nn.functional.linear(x, w1)) * torch.nn.functional.linear(x, w3), w2)


@pytest.mark.parametrize("bias", [False, True])
def test_swiglu_module_is_llama_ffn(bias, device):
    m = fnn.SwiGLU(16, 40, bias=bias).to(device)
    assert [n for n, _ in m.named_parameters()] == (
        ["w1.weight", "w1.bias", "w2.weight", "w2.bias", "w3.weight", "w3.bias"] if bias else
        ["w1.weight", "w2.weight", "w3.weight"])
    x = torch.randn(2, 5, 16, device=device, requires_grad=True)
    y = m(x)
    y.sum().backward()
    xr = x.detach().clone().requires_grad_(True)
    w = [p.detach().clone().requires_grad_(True) for p in (m.w1.weight, m.w2.weight, m.w3.weight)]
    if bias:
        yr = torch.nn.functional.linear(
            torch.nn.functional.silu(torch.nn.functional.linear(xr, w[0], m.w1.bias)) *
            torch.nn.functional.linear(xr, w[2], m.w3.bias), w[1], m.w2.bias)
    else:
        yr = llama_ffn(xr, *w)
    yr.sum().backward()
    torch.testing.assert_close(y, yr)
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(m.w1.weight.grad, w[0].grad)
    torch.testing.assert_close(m.w3.weight.grad, w[2].grad)
    # state dict round trip with a plain module of the same structure
    twin = fnn.SwiGLU(16, 40, bias=bias).to(device)
    twin.load_state_dict(m.state_dict())
    torch.testing.assert_close(twin(x), y)


def test_glu_module_and_patch():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GLU(), torch.nn.Linear(4, 2))
    x = torch.randn(3, 4)
    before = model(x)
    fnn.patch(model)
    assert isinstance(model[1], fnn.GLU)
    assert isinstance(model[0], torch.nn.Linear) and type(model[0]) is torch.nn.Linear
    assert model.fastact_patched == {"GLU": 1}
    torch.testing.assert_close(model(x), before)


@pytest.mark.parametrize("name,params", CASES, ids=[f"{n}{p}" for n, p in CASES])
def test_double_backward(name, params, device):
    # second derivatives (gradient penalties, Hessian-vector products) go
    # through the plain-torch formula: checked numerically in float64
    gate = torch.randn(3, 5, dtype=torch.float64, device=device, requires_grad=True)
    up = torch.randn(3, 5, dtype=torch.float64, device=device, requires_grad=True)
    x = torch.randn(3, 10, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a, b: call(name, a, b, -1, params), (gate, up))
    assert torch.autograd.gradgradcheck(lambda a: call(name, a, None, 1, params), (x,))
    assert torch.autograd.gradgradcheck(lambda a: call(name, a, None, 1, params, True), (x,))
    assert torch.autograd.gradgradcheck(lambda a: F.glu(a, 1), (x,))


# --- gpt-oss's clamped SwiGLU -------------------------------------------------------------

LIMIT = 7.0
# every value class the clamps and the sigmoid distinguish
SPECIAL = [-math.inf, -1e30, -100.0, -LIMIT - 1, -LIMIT, -LIMIT + 1e-3, -1.0, -0.0, 0.0, 0.5,
           LIMIT - 1e-3, LIMIT, LIMIT + 1e-3, 100.0, math.inf, math.nan]


def gpt_oss_experts_glu(gate_up, alpha=1.702, limit=LIMIT):
    """transformers' GptOssExperts: gate at gate_up[..., ::2], up at [..., 1::2],
    its formula in the same order of operations (reference.clamped_swiglu),
    its clamps' gradient as API.md has it, ends included (torch 2.11's clamp;
    2.14's passes none at the bounds, where bfloat16 inputs often land)."""
    return R.clamped_swiglu(gate_up[..., ::2], gate_up[..., 1::2], alpha, limit)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_clamped_swiglu_special_values(dtype, device):
    # every (gate, up) pair of special values, as two tensors and interleaved;
    # NaN where torch gives NaN, and the clamps' gradient masks exactly
    g, u = torch.meshgrid(torch.tensor(SPECIAL, dtype=torch.float64), torch.tensor(SPECIAL, dtype=torch.float64),
                          indexing="ij")
    g, u = g.to(dtype).to(device), u.to(dtype).to(device)
    packed = torch.stack([g, u], -1).flatten(-2)
    dy = torch.randn(g.shape, dtype=torch.float64).to(dtype).to(device)
    compute = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    ref = _value_and_grads(R.clamped_swiglu, [g.to(compute), u.to(compute)], dy.to(compute))
    ref = [r.to(dtype) for r in ref]
    ours = _value_and_grads(F.clamped_swiglu, [g, u], dy)
    ours_packed = _value_and_grads(lambda t: F.clamped_swiglu(t, interleaved=True), [packed], dy)
    ours_packed = [ours_packed[0], ours_packed[1][..., ::2], ours_packed[1][..., 1::2]]
    for got in (ours, ours_packed):
        for a, b in zip(got, ref):
            assert torch.equal(a.isnan(), b.isnan())
            torch.testing.assert_close(a, b, equal_nan=True,
                                       **({} if dtype in (torch.float32, torch.float64) else dict(atol=0, rtol=1e-2)))
    # the masks (API.md): gradient within the bounds, ends included; none
    # past them or at a NaN
    d_gate, d_up = ours[1:]
    assert (d_gate[(g > LIMIT) | g.isnan()] == 0).all()
    assert (d_up[(u.abs() > LIMIT) | u.isnan()] == 0).all()
    inside = (g <= LIMIT) & g.isfinite() & (u.abs() <= LIMIT)
    assert (d_up[inside & (g > 0)] != 0).all()
    assert (d_up[(u.abs() == LIMIT) & (g > 0) & g.isfinite()] != 0).all()
    assert (d_gate[(g == LIMIT) & ~u.isnan() & (u != -1)] != 0).all()


def _value_and_grads(fn, inputs, dy):
    ts = [t.detach().clone().requires_grad_(True) for t in inputs]
    y = fn(*ts)
    return [y.detach(), *torch.autograd.grad(y, ts, dy)]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_clamped_swiglu_is_gpt_oss(dtype, device):
    # the interleaved packed form against transformers' code, large and odd
    # row lengths, values well past the limit
    for shape in [(4, 2 * 2881), (3, 5, 2 * 7), (2,)]:
        x = (torch.randn(shape, dtype=torch.float64) * 6).to(dtype).to(device).requires_grad_(True)
        y = F.clamped_swiglu(x, interleaved=True)
        dy = torch.randn_like(y)
        (g,) = torch.autograd.grad(y, x, dy)
        x64 = x.detach().double().requires_grad_(True)
        y64 = gpt_oss_experts_glu(x64)
        (g64,) = torch.autograd.grad(y64, x64, dy.double())
        xt = x.detach().clone().requires_grad_(True)
        try:
            yt = gpt_oss_experts_glu(xt)
            (gt,) = torch.autograd.grad(yt, xt, dy)
        except RuntimeError:
            xf = x.detach().float().requires_grad_(True)
            yt = gpt_oss_experts_glu(xf)
            (gt,) = torch.autograd.grad(yt, xf, dy.float())
            yt, gt = yt.to(dtype), gt.to(dtype)
        ref = dtype != torch.float64
        assert_matches(y.detach(), yt.detach(), y64.detach() if ref else None)
        assert_matches(g, gt, g64 if ref else None)


def test_clamped_swiglu_shapes(device):
    # 0-dim and empty two-tensor inputs, the defaults, a keyword-only alpha/limit
    gate, up = torch.tensor(8.0, device=device), torch.tensor(-9.0, device=device)
    torch.testing.assert_close(F.clamped_swiglu(gate, up), R.clamped_swiglu(gate, up))
    empty = torch.randn(0, 6, device=device, requires_grad=True)
    for interleaved in (False, True):
        y = F.clamped_swiglu(empty, interleaved=interleaved)
        assert y.shape == (0, 3)
        y.sum().backward()
        assert empty.grad.shape == (0, 6)
    assert F.clamped_swiglu(torch.randn(2, 4, 0, device=device), None, 1, interleaved=True).shape == (2, 2, 0)
    x = torch.randn(5, 8, device=device) * 4
    torch.testing.assert_close(F.clamped_swiglu(x, alpha=0.5, limit=2.0), R.gated("clamped_swiglu", x, None, -1, 0.5, 2.0))
    torch.testing.assert_close(F.clamped_swiglu(x, limit=math.inf), R.gated("clamped_swiglu", x, None, -1, 1.702, math.inf))
    with pytest.raises(TypeError):
        F.clamped_swiglu(x, None, -1, 1.0)  # alpha is keyword-only


def test_clamped_swiglu_bad_input_raises(device):
    x = torch.randn(3, 8, device=device)
    with pytest.raises(ValueError, match="fastact.clamped_swiglu.*interleaved.*up=None"):
        F.clamped_swiglu(x, x, interleaved=True)
    with pytest.raises(ValueError, match="fastact.clamped_swiglu.*even.*pairs"):
        F.clamped_swiglu(torch.randn(3, 7, device=device), interleaved=True)
    for limit in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="fastact.clamped_swiglu: limit must be positive"):
            F.clamped_swiglu(x, limit=limit)
        with pytest.raises(ValueError, match="fastact.clamped_swiglu: limit"):
            F.clamped_swiglu(x[:, :4], x[:, 4:], limit=limit)
    for alpha in (math.nan, math.inf):
        with pytest.raises(ValueError, match="fastact.clamped_swiglu: alpha must be finite"):
            F.clamped_swiglu(x, alpha=alpha)
    with pytest.raises(TypeError, match="fastact.clamped_swiglu.*float32"):
        F.clamped_swiglu(torch.ones(3, 8, device=device, dtype=torch.int32))
    with pytest.raises(RuntimeError):  # both a ValueError and a RuntimeError
        F.clamped_swiglu(x, limit=0.0)


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_interleaved_reads_in_place(name, params, device):
    # the interleaved kernels take the packed buffer as it is: no split, no
    # copy, no cat, forward or backward
    x = torch.randn(64, 2 * 100, device=device, requires_grad=True)
    with torch.profiler.profile() as prof:
        y = call(name, x, None, -1, params, True)
        (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    names = {e.name for e in prof.events()}
    assert not names & {"aten::copy_", "aten::clone", "aten::cat", "aten::stack", "aten::slice"}, names
    torch.testing.assert_close(y, R.gated(name, x.detach(), None, -1, *params, interleaved=True))
