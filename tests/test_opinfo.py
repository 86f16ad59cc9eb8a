"""PyTorch's own test inputs through fastact: the OpInfo reference/sample
inputs and error inputs (``op_db``) of every op fastact mirrors, and the
ModuleInfo inputs and error inputs (``module_db``) of every module, on the CPU
in float32, float64, bfloat16 and float16.

Values and gradients (of every floating tensor argument that requires grad)
are compared with torch on the same inputs (conftest.assert_matches: float32 /
float64 within assert_close's tolerances, half types at most twice torch's own
error against a float64 reference); error inputs must raise an instance of the
exception type torch raises. Random ops (dropout, rrelu in training) are
checked for what they promise instead of against torch's random stream.

The one documented exception (``_Lanes``): at a NaN/inf input torch's own
answer for some activations differs between its vectorized loop and its
scalar loop (which also runs the tail of a vector loop and non-contiguous
inputs): at NaN the gradient of elu/selu/celu/hardswish is NaN in one and
grad_output in the other, that of hardtanh/relu6/hardshrink/softshrink 0 in
one and grad_output in the other, and gelu(inf) is NaN in one and inf in the
other. There is no single torch answer to match; at those positions (and only
there) fastact must give what torch gives in one of its lanes (the output;
the gradient's NaN-ness) instead of equal its answer on this input, and the
test counts them.

Runtime: at most MAX_SAMPLES samples per (op, dtype), one of them at most
with over LARGE elements, and MAX_MODULE_INPUTS module inputs per (module,
dtype), taken evenly from torch's list with fixed seeds, so that the whole
module runs in about a minute and a half on 2 cores.
"""
from __future__ import annotations

import copy
import math
import random

import pytest
import torch

import fastact.functional as F
import fastact.nn as fnn
from conftest import HALF_DTYPES, assert_matches

common_methods_invocations = pytest.importorskip("torch.testing._internal.common_methods_invocations")
common_modules = pytest.importorskip("torch.testing._internal.common_modules")

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
MAX_SAMPLES = 24
LARGE = 1 << 16
MAX_MODULE_INPUTS = 24
# ops whose output element i depends on input element i only (and scalar
# parameters): where torch's answer at a non-finite input can depend on the lane
ELEMENTWISE = {"relu", "relu6", "leaky_relu", "rrelu", "elu", "selu", "celu", "gelu", "silu", "mish", "sigmoid",
               "tanh", "logsigmoid", "hardswish", "hardsigmoid", "hardtanh", "softplus", "softshrink",
               "hardshrink", "tanhshrink", "softsign", "threshold"}


def _short(name: str) -> str:
    return name[len("nn.functional."):] if name.startswith("nn.functional.") else name


OPS = [o for o in common_methods_invocations.op_db
       if _short(o.name) in F.__all__ and o.variant_test_name != "complex"]
MODULES = [m for m in common_modules.module_db
           if m.module_cls.__module__.startswith("torch.nn") and hasattr(fnn, m.module_cls.__name__)]


def _op_id(o) -> str:
    return o.name + (f".{o.variant_test_name}" if o.variant_test_name else "")


def _seed(i: int) -> None:
    torch.manual_seed(i)
    random.seed(i)


def _evenly(items: list, k: int) -> list:
    """At most k items, spread evenly over the list (deterministic)."""
    if len(items) <= k:
        return items
    step = len(items) / k
    return [items[int(i * step)] for i in range(k)]


def _bounded(samples: list) -> list:
    """At most MAX_SAMPLES samples, of which at most one large one (torch's
    reference inputs include several ~1M-element tensors: one of them covers
    the vectorized loops, the others would only cost time)."""
    large = [s for s in samples if s.input.numel() > LARGE]
    small = [s for s in samples if s.input.numel() <= LARGE]
    return _evenly(small, MAX_SAMPLES - min(1, len(large))) + large[:1]


# --- inputs ------------------------------------------------------------------------


def _map(obj, fn):
    """obj with fn applied to every tensor in it (tuples, lists and dicts too)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map(o, fn) for o in obj)
    if isinstance(obj, dict):
        return {k: _map(v, fn) for k, v in obj.items()}
    return obj


def _tensors(obj) -> list:
    out = []
    _map(obj, lambda t: out.append(t) or t)
    return out


def _fresh(call, to64: bool = False):
    """A deep copy of (args, kwargs): new leaves, same requires_grad (in
    float64 with to64: torch's float64 reference)."""
    def copy(t):
        c = t.detach().clone()
        if to64 and c.is_floating_point():
            c = c.double()
        return c.requires_grad_(t.requires_grad)
    args, kwargs = _map(call, copy)
    if to64 and kwargs.get("options") is not None:
        # linear_cross_entropy's chunking options (an acc_dtype for half
        # inputs) change how, not what, torch computes: its float64 answer is
        # the reference path's
        kwargs["options"] = None
    return args, kwargs


def _leaves(call) -> list:
    return [t for t in _tensors(call) if t.requires_grad]


def _grad_output(out, grad_seed, dtype):
    """A seeded random grad_output, rounded to the dtype under test (the
    float64 reference gets the very same values)."""
    gen = torch.Generator().manual_seed(grad_seed)
    return torch.randn(out.shape, generator=gen, dtype=torch.float64).to(dtype).to(out.dtype)


def _run(fn, call, grad_seed: int, dtype, extra_leaves=()):
    """(output, gradients of the leaves that require grad) of fn(*args, **kwargs)."""
    args, kwargs = call
    out = fn(*args, **kwargs)
    leaves = _leaves(call) + list(extra_leaves)
    if not leaves or not out.requires_grad:
        return out.detach(), []
    g = _grad_output(out, grad_seed, dtype if out.dtype.is_floating_point and dtype != torch.float64 else out.dtype)
    grads = torch.autograd.grad(out, leaves, g, allow_unused=True)
    grads = [torch.zeros_like(t) if gr is None else gr for t, gr in zip(leaves, grads)]
    return out.detach(), grads


# --- lane-dependent positions of torch's own result ---------------------------------


def _torch_lanes(torch_fn, value: float, dtype, params):
    """torch's (output, gradient) at `value` in its vectorized loop (the
    value inside a long contiguous tensor) and in its scalar loop (a
    one-element tensor, or the tail of a vector loop), for grad_output 1."""
    results = []
    for n in (64, 1):
        x = torch.full((n,), value, dtype=dtype, requires_grad=True)
        out = torch_fn(x, *params[0], **params[1])
        (g,) = torch.autograd.grad(out, x, torch.ones_like(out))
        results.append((out[0].item(), g[0].item()))
    return results


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


class _Lanes:
    """The positions of non-finite inputs of an elementwise op where torch's
    own answer depends on the lane it is computed in (see the module
    docstring), and what torch gives there in either lane."""

    def __init__(self, torch_fn, call):
        args, kwargs = call
        x = args[0].detach()
        self.out_mask = torch.zeros(x.shape, dtype=torch.bool)
        self.grad_mask = torch.zeros(x.shape, dtype=torch.bool)
        self.cases = []  # (positions, torch's outputs in both lanes, whether its gradients are NaN)
        for value in (float("nan"), float("inf"), float("-inf")):
            at = torch.isnan(x) if math.isnan(value) else x == value
            if not at.any():
                continue
            (ov, gv), (os_, gs) = _torch_lanes(torch_fn, value, x.dtype, (args[1:], kwargs))
            self.out_mask |= at & (not _same(ov, os_))
            self.grad_mask |= at & (not _same(gv, gs))
            self.cases.append((at, (ov, os_), (math.isnan(gv), math.isnan(gs))))

    @staticmethod
    def of(torch_fn, call):
        args, kwargs = call
        x = args[0]
        scalar_params = not any(isinstance(t, torch.Tensor) for t in (*args[1:], *kwargs.values()))
        if isinstance(x, torch.Tensor) and scalar_params and x.numel() and not torch.isfinite(x).all():
            return _Lanes(torch_fn, call)
        return None

    def check_ours(self, out, grad):
        """Where torch is lane-dependent, ours must be what torch gives in one
        of its lanes (the output; the gradient's NaN-ness)."""
        for at, outs, grad_nans in self.cases:
            o = out[at & self.out_mask].double()
            if o.numel():
                assert all(any(_same(v, t) for t in outs) for v in o.tolist()), (o[:4].tolist(), outs)
            if grad is not None:
                g = grad[at & self.grad_mask]
                assert all(bool(v) in grad_nans for v in torch.isnan(g).tolist()), (g[:4].tolist(), grad_nans)


def _drop(t: torch.Tensor, mask) -> torch.Tensor:
    return t[~mask] if mask is not None else t


# --- the comparison -----------------------------------------------------------------


def _compare(ours_fn, torch_fn, call, dtype, grad_seed, skipped, elementwise):
    theirs = _run(torch_fn, _fresh(call), grad_seed, dtype)
    ours = _run(ours_fn, _fresh(call), grad_seed, dtype)
    ref = _run(torch_fn, _fresh(call, to64=True), grad_seed, dtype) if dtype in HALF_DTYPES else None
    lanes = _Lanes.of(torch_fn, call) if elementwise else None
    out_mask, grad_mask = (lanes.out_mask, lanes.grad_mask) if lanes is not None else (None, None)
    for mask in (out_mask, grad_mask):
        if mask is not None and mask.any():
            skipped.append(int(mask.sum()))
    if lanes is not None:
        lanes.check_ours(ours[0], ours[1][0] if ours[1] else None)
    assert_matches(_drop(ours[0], out_mask), _drop(theirs[0], out_mask),
                   _drop(ref[0], out_mask) if ref is not None else None)
    assert len(ours[1]) == len(theirs[1]), "fastact gives gradients to other arguments than torch"
    for i, (go, gt) in enumerate(zip(ours[1], theirs[1])):
        mask = grad_mask if i == 0 else None  # (the input's gradient; other leaves: no lane question)
        g64 = ref[1][i] if ref is not None else None
        assert_matches(_drop(go, mask), _drop(gt, mask), _drop(g64, mask) if g64 is not None else None)


def _check_random(name, ours_fn, call):
    """dropout / rrelu(training=True): what they promise, on our own draw."""
    args, kwargs = _fresh(call)
    x = args[0]
    out = ours_fn(*args, **kwargs)
    xd, od = x.detach().double(), out.detach().double()
    if name == "dropout":
        p = kwargs.get("p", args[1] if len(args) > 1 else 0.5)
        training = kwargs.get("training", args[2] if len(args) > 2 else True)
        if not training or p == 0:
            assert torch.equal(od, xd) or torch.allclose(od, xd, equal_nan=True)
            return
        if p == 1:
            assert (od == 0).all()
            return
        kept = od != 0
        scaled = (xd / (1 - p)).to(x.dtype).double()
        assert torch.allclose(od[kept], scaled[kept], equal_nan=True)
        if x.requires_grad and out.requires_grad:
            (g,) = torch.autograd.grad(out, x, torch.ones_like(out))
            expect = torch.where(kept | (xd == 0), torch.full_like(xd, 1 / (1 - p)), torch.zeros_like(xd))
            # (where x == 0 the mask is not visible in the output: either is fine)
            gd = g.double()
            ok = torch.isclose(gd, expect.to(x.dtype).double()) | ((xd == 0) & ((gd == 0) | torch.isclose(
                gd, torch.full_like(gd, 1 / (1 - p)).to(x.dtype).double())))
            assert ok.all()
    else:  # rrelu, training: a slope in [lower, upper] for each negative element
        lower = kwargs.get("lower", args[1] if len(args) > 1 else 1 / 8)
        upper = kwargs.get("upper", args[2] if len(args) > 2 else 1 / 3)
        neg, finite = xd < 0, torch.isfinite(xd)
        assert torch.equal(od[~neg & finite], xd[~neg & finite])
        assert torch.isnan(od[torch.isnan(xd)]).all()
        neg = neg & finite
        slope = od[neg] / xd[neg]
        tol = 1e-2 if x.dtype in HALF_DTYPES else 1e-6
        assert ((slope >= lower - tol) & (slope <= upper + tol)).all()


# --- OpInfo -------------------------------------------------------------------------


# (op, dtype) for each dtype torch's OpInfo supports on the CPU (there is no
# torch answer to compare with otherwise: rrelu has no float16 CPU kernel)
OP_CASES = [pytest.param(o, d, id=f"{_op_id(o)}-{str(d)[6:]}") for o in OPS for d in DTYPES
            if d in o.supported_dtypes("cpu")]


@pytest.mark.parametrize("op,dtype", OP_CASES)
def test_opinfo_reference_inputs(op, dtype):
    name = _short(op.name)
    ours_fn = getattr(F, name)
    _seed(0)
    samples = _bounded(list(op.reference_inputs("cpu", dtype, requires_grad=True)))
    skipped = []
    for i, s in enumerate(samples):
        call = ((s.input, *s.args), dict(s.kwargs))
        training = s.kwargs.get("training", s.args[2] if len(s.args) > 2 else False)  # (rrelu's)
        try:
            if name == "dropout" or (name == "rrelu" and training):
                _check_random(name, ours_fn, call)
            else:
                _compare(ours_fn, op.op, call, dtype, grad_seed=i, skipped=skipped,
                         elementwise=name in ELEMENTWISE)
        except AssertionError as e:
            raise AssertionError(f"sample {i}: {s.summary() if hasattr(s, 'summary') else s}\n{e}") from None
    if skipped:
        print(f"{_op_id(op)} {dtype}: {sum(skipped)} positions left out where torch's own output or "
              f"gradient is lane-dependent")


ERROR_OPS = [o for o in OPS if o.error_inputs_func is not None]


@pytest.mark.parametrize("op", ERROR_OPS, ids=_op_id)
def test_opinfo_error_inputs(op):
    ours_fn = getattr(F, _short(op.name))
    _seed(0)
    for ei in op.error_inputs("cpu"):
        s = ei.sample_input
        with pytest.raises(ei.error_type) as info:
            ours_fn(s.input, *s.args, **s.kwargs)
        assert "fastact" in str(info.value), str(info.value)


# --- ModuleInfo ---------------------------------------------------------------------


# (module, dtype) for each of our dtypes that torch's ModuleInfo lists
MODULE_CASES = [pytest.param(m, d, id=f"{m.module_cls.__name__}-{str(d)[6:]}") for m in MODULES for d in DTYPES
                if d in m.dtypes]


@pytest.mark.parametrize("module_info,dtype", MODULE_CASES)
def test_moduleinfo_inputs(module_info, dtype):
    cls = module_info.module_cls
    ours_cls = getattr(fnn, cls.__name__)
    _seed(0)
    inputs = module_info.module_inputs_func(module_info, device="cpu", dtype=dtype, requires_grad=True,
                                            training=True)
    inputs = [mi for mi in inputs if mi.forward_input is not None]
    for i, mi in enumerate(_evenly(inputs, MAX_MODULE_INPUTS)):
        c = mi.constructor_input
        _seed(i)
        theirs_m = cls(*c.args, **c.kwargs).to(dtype)
        ours_m = ours_cls(*c.args, **c.kwargs).to(dtype)
        ours_m.load_state_dict(theirs_m.state_dict())
        ours_m.train(theirs_m.training)
        f = mi.forward_input
        call = (tuple(f.args), dict(f.kwargs))
        try:
            _compare_modules(ours_m, theirs_m, call, dtype, grad_seed=i)
        except AssertionError as e:
            raise AssertionError(f"input {i} ({mi.desc}): {c.args} {c.kwargs}\n{e}") from None


def _compare_modules(ours_m, theirs_m, call, dtype, grad_seed):
    def run(m, call):
        return _run(m, call, grad_seed, dtype, [p for p in m.parameters() if p.requires_grad])

    theirs = run(theirs_m, _fresh(call))
    ours = run(ours_m, _fresh(call))
    ref = None
    if dtype in HALF_DTYPES:
        ref = run(copy.deepcopy(theirs_m).double(), _fresh(call, to64=True))
    assert_matches(ours[0], theirs[0], ref[0] if ref is not None else None)
    assert len(ours[1]) == len(theirs[1])
    for i, (go, gt) in enumerate(zip(ours[1], theirs[1])):
        assert_matches(go, gt, ref[1][i] if ref is not None else None)


MODULES_WITH_ERRORS = [m for m in MODULES if m.module_error_inputs_func is not None]


@pytest.mark.parametrize("module_info", MODULES_WITH_ERRORS, ids=lambda m: m.module_cls.__name__)
def test_moduleinfo_error_inputs(module_info):
    cls = module_info.module_cls
    ours_cls = getattr(fnn, cls.__name__)
    _seed(0)
    errors = module_info.module_error_inputs_func(module_info, device="cpu", dtype=torch.float32,
                                                  requires_grad=False, training=True)
    for ei in errors:
        mi = ei.module_error_input
        c = mi.constructor_input
        if ei.error_on == common_modules.ModuleErrorEnum.CONSTRUCTION_ERROR:
            with pytest.raises(ei.error_type):
                ours_cls(*c.args, **c.kwargs)
            continue
        m = ours_cls(*c.args, **c.kwargs)
        f = mi.forward_input
        with pytest.raises(ei.error_type):
            m(*f.args, **f.kwargs)
