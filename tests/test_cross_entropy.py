"""cross_entropy against torch over the option matrix: targets, reductions,
weight, ignore_index, label smoothing, shapes, dtypes, extreme and NaN logits,
gradients, gradcheck, z-loss and softcap, opcheck, compile, errors."""
from __future__ import annotations

import itertools

import pytest
import torch

import fastact.functional as F
import fastact.nn as fnn
from fastact.accuracy import cross_entropy_error, ulp, within
from conftest import EMULATION, FLOAT_DTYPES, HALF_DTYPES

TF = torch.nn.functional
OPTIONS = [dict(reduction=r, label_smoothing=ls, weighted=w, ignore=ig)
           for r, ls, w, ig in itertools.product(("mean", "sum", "none"), (0.0, 0.2), (False, True), (False, True))]


def make(shape_n, classes, device, dtype=torch.float32, ignore=False, prob=False, scale=3.0):
    x = (torch.randn(*shape_n[:1], classes, *shape_n[1:], dtype=torch.float64) * scale).to(dtype).to(device)
    if prob:
        t = torch.softmax(torch.randn_like(x, dtype=torch.float64), 1).to(dtype)
    else:
        t = torch.randint(0, classes, shape_n, device=device)
        if ignore and t.numel() > 1:
            t.view(-1)[::3] = -100
    return x, t


def both(x, t, g=None, **kw):
    """Our and torch's loss and input gradient for the same inputs (for the
    loss gradient g: by default random for reduction "none", else 1)."""
    xa = x.detach().clone().requires_grad_(True)
    xb = x.detach().clone().requires_grad_(True)
    a = F.cross_entropy(xa, t, **kw)
    b = TF.cross_entropy(xb, t, **kw)
    if g is None:
        g = torch.randn_like(b) if b.dim() else torch.tensor(1.0, dtype=b.dtype, device=b.device)
    (ga,) = torch.autograd.grad(a, xa, g)
    (gb,) = torch.autograd.grad(b, xb, g)
    return a, ga, b, gb


def assert_near_float64(x, t, a, ga, g, weight=None, label_smoothing=0.0, reduction="mean"):
    """float32/float64 loss a and gradient ga (for loss gradient g) against
    torch's float64 answer, within accuracy.cross_entropy_error's bounds:
    derived from the dtype, the number of classes and rows, and the
    magnitudes of the logits and terms (a fixed tolerance is too loose for
    the small gradients of a large vocabulary, or fails by chance)."""
    classes = x.shape[1] if x.dim() > 1 else x.shape[0]
    w64 = None if weight is None else weight.double()
    x64 = x.detach().double().requires_grad_(True)
    t64 = t.double() if t.is_floating_point() else t
    kw = dict(weight=w64, label_smoothing=label_smoothing, reduction=reduction)
    a64 = TF.cross_entropy(x64, t64, **kw)
    (g64,) = torch.autograd.grad(a64, x64, g.double())
    rows = x.detach().movedim(1, -1) if x.dim() > 1 else x.detach()[None]
    row_t = t.movedim(1, -1) if t.is_floating_point() and t.dim() > 1 else (t if t.dim() else t[None])
    row_shape = rows.shape
    row_t = row_t.reshape(-1, classes) if t.is_floating_point() else row_t.reshape(-1)
    grad_out = g.double().reshape(-1) if reduction == "none" else g.item()
    lb, gbound = cross_entropy_error(rows.reshape(-1, classes), row_t, x.dtype, w64, label_smoothing,
                                     reduction=reduction, grad_out=grad_out)
    gbound = gbound.reshape(row_shape).movedim(-1, 1) if x.dim() > 1 else gbound.reshape(classes)
    for what, ours, ref, bound in (("loss", a, a64, lb.reshape(a64.shape)), ("gradient", ga, g64, gbound)):
        msg = within(what, ours, ref, bound)
        assert msg is None, msg


@pytest.mark.parametrize("opt", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("shape,classes", [((16,), 11), ((3, 4, 5), 7), ((), 9), ((5,), 1), ((2,), 50257)],
                         ids=["NC", "NCd1d2", "C", "C=1", "C=50257"])
def test_index_targets_match_torch(opt, shape, classes, device):
    x, t = make(shape, classes, device, ignore=opt["ignore"])
    if shape == ():
        x = x.reshape(classes)
    kw = dict(reduction=opt["reduction"], label_smoothing=opt["label_smoothing"])
    if opt["weighted"]:
        kw["weight"] = torch.rand(classes, device=device) + 0.1
    g = torch.randn(t.shape, device=device) if opt["reduction"] == "none" else torch.tensor(1.0, device=device)
    a, ga, b, gb = both(x, t, g, **kw)
    assert_near_float64(x, t, a, ga, g, **kw)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize("weighted", [False, True])
def test_probability_targets_match_torch(reduction, smoothing, weighted, device):
    for shape, classes in (((6,), 13), ((2, 3), 5)):
        x, t = make(shape, classes, device, prob=True)
        kw = dict(reduction=reduction, label_smoothing=smoothing)
        if weighted:
            kw["weight"] = torch.rand(classes, device=device) + 0.1
        a, ga, b, gb = both(x, t, **kw)
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(ga, gb)


def test_all_ignored_mean_is_nan_like_torch(device):
    x, _ = make((4,), 6, device)
    t = torch.full((4,), -100, device=device)
    a, ga, b, gb = both(x, t)
    assert torch.isnan(a) and torch.isnan(b)
    torch.testing.assert_close(ga, gb, equal_nan=True)
    a, ga, b, gb = both(x, t, reduction="sum")
    torch.testing.assert_close(a, b)


def test_extreme_and_nan_logits(device):
    x, t = make((6,), 10, device, scale=1e4)
    a, ga, b, gb = both(x, t, reduction="none")
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(ga, gb)
    x[2, 3] = float("nan")
    a, ga, b, gb = both(x, t, reduction="none")
    torch.testing.assert_close(a, b, equal_nan=True)
    torch.testing.assert_close(ga, gb, equal_nan=True)
    assert torch.isnan(a[2]) and torch.isfinite(a[[0, 1, 3, 4, 5]]).all()


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_zero_classes(reduction, device):
    # (N, 0) logits: every target ignored (no class exists); probability
    # targets of shape (N, 0)
    x = torch.randn(3, 0, device=device, requires_grad=True)
    t = torch.full((3,), -100, device=device)
    a, b = F.cross_entropy(x, t, reduction=reduction), TF.cross_entropy(x, t, reduction=reduction)
    torch.testing.assert_close(a, b, equal_nan=True)
    y = torch.randn(3, 0, device=device)
    a, b = F.cross_entropy(x, y, reduction=reduction), TF.cross_entropy(x, y, reduction=reduction)
    torch.testing.assert_close(a, b, equal_nan=True)
    (g,) = torch.autograd.grad(a.sum(), x)
    assert g.shape == (3, 0)


def test_masked_vocabulary_padding(device):
    # padded vocabulary entries masked with -inf, at the start and end of rows
    # (a thread's first values being -inf must not poison its running sum)
    x, t = make((9,), 300, device)
    x[:, :40] = float("-inf")
    x[:, 290:] = float("-inf")
    x[4, :] = float("-inf")
    x[4, 100] = 2.0
    t = t.clamp(40, 289)
    t[4] = 100
    for kw in (dict(), dict(label_smoothing=0.0, reduction="none")):
        a, ga, b, gb = both(x, t, **kw)
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(ga, gb)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", ["index", "weight-smooth", "prob"])
def test_few_rows_large_vocabulary(kind, dtype, device):
    # few rows and a large, odd vocabulary: on CUDA each row is split over
    # several blocks whose partial (max, sum) pairs are merged
    _check_rows(6, 131075, kind, dtype, device)


def _check_rows(rows, classes, kind, dtype, device):
    """Loss and gradient of [rows, classes] (reduction "none", random loss
    gradient) against float64: float32 within cross_entropy_error's bounds,
    bfloat16 within twice torch's error. kind: "index" (with "-ignore": every
    third row ignored), "weight-smooth" (class weights, label smoothing 0.1),
    "prob" (class-probability targets, with "-weight-smooth" as above)."""
    x, t = make((rows,), classes, device, dtype=dtype, ignore="ignore" in kind, prob=kind.startswith("prob"))
    w = torch.rand(classes, device=device, dtype=dtype) if "weight" in kind else None
    kw = dict(weight=w, label_smoothing=0.1) if w is not None else {}
    g = torch.randn(rows, device=device, dtype=dtype)
    a, ga, b, gb = both(x, t, g, reduction="none", **kw)
    if dtype == torch.float32:
        assert_near_float64(x, t, a, ga, g, reduction="none", **kw)
    else:
        if w is not None:
            kw["weight"] = w.double()
        t64 = t.double() if t.is_floating_point() else t
        a64, ga64, _, _ = both(x.double(), t64, g.double(), reduction="none", **kw)
        # the loss is rounded to bf16 at the end: a flip of one bf16 ulp
        # (2^-7 relative) against torch's rounding is allowed
        ulp = 2.0 ** -7 * a64.abs().max()
        assert (a.double() - a64).abs().max() <= 2 * (b.double() - a64).abs().max() + ulp
        assert (ga.double() - ga64).abs().max() <= 2 * (gb.double() - ga64).abs().max()


# One shape per launch plan of the CUDA row kernels (csrc/cuda/row_launch.cuh;
# tests/test_emulation.py checks the plan each takes on the emulated device):
# rows of 4, 8, 16 and 32 lanes of a warp (a partly filled last block), a
# block per row, rows split over blocks; class counts that are not multiples
# of the warp or of the vector width.
ROW_PLAN_SHAPES = [(130, 13), (20, 27), (20, 61), (9, 1001), (3, 4500), (2, 20001)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", ["index-ignore", "weight-smooth", "prob-weight-smooth"])
@pytest.mark.parametrize("rows,classes", ROW_PLAN_SHAPES, ids=str)
def test_row_launch_plans(rows, classes, kind, dtype, device):
    _check_rows(rows, classes, kind, dtype, device)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_dtypes_against_float64(dtype, device):
    x, t = make((64,), 1000, device, dtype=dtype)
    a, ga, b, gb = both(x, t, label_smoothing=0.1)
    assert a.dtype == dtype and ga.dtype == dtype
    a64, ga64, _, _ = both(x.double(), t, label_smoothing=0.1)
    if dtype in HALF_DTYPES:
        # the loss is rounded to the half type once at the end: ours may land
        # one ulp of it from torch's rounding
        err, err_torch = (a.double() - a64).abs().item(), (b.double() - a64).abs().item()
        assert err <= 2 * err_torch + ulp(a64, dtype).item(), (err, err_torch)
        gerr = (ga.double() - ga64).abs().max().item()
        gerr_torch = (gb.double() - ga64).abs().max().item()
        assert gerr <= 2 * gerr_torch, (gerr, gerr_torch)
    elif dtype == torch.float32:
        assert_near_float64(x, t, a, ga, torch.tensor(1.0, dtype=dtype, device=device), label_smoothing=0.1)
    else:  # float64 with label smoothing: see test_float64_label_smoothing_keeps_float64_precision
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(ga, gb)


def test_float64_label_smoothing_keeps_float64_precision(device):
    # within the bounds derived for float64, with smoothing too (the
    # smoothing, z-loss and softcap parameters were carried in float32: the
    # loss was off by ~3e-9 relative per row, the gradient entries -s / (V N)
    # by ~1.5e-8)
    x, t = make((64,), 1000, device, dtype=torch.float64)
    a, ga, _, _ = both(x, t)
    assert_near_float64(x, t, a, ga, torch.tensor(1.0, dtype=torch.float64, device=device))
    a, ga, _, _ = both(x, t, label_smoothing=0.1)
    assert_near_float64(x, t, a, ga, torch.tensor(1.0, dtype=torch.float64, device=device), label_smoothing=0.1)


def composed(x, t, z_loss=0.0, softcap=None, **kw):
    """The documented definition in plain torch."""
    z = softcap * torch.tanh(x / softcap) if softcap else x
    loss = TF.cross_entropy(z, t, reduction="none", **{k: v for k, v in kw.items() if k != "reduction"})
    counted = (t != kw.get("ignore_index", -100)).to(loss.dtype)
    loss = loss + z_loss * torch.logsumexp(z, 1) ** 2 * counted
    red = kw.get("reduction", "mean")
    if red == "none":
        return loss
    return loss.sum() if red == "sum" else loss.sum() / counted.sum()


@pytest.mark.parametrize("z_loss,softcap", [(1e-3, None), (0.0, 5.0), (1e-2, 2.0)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_z_loss_and_softcap(z_loss, softcap, reduction, device):
    x, t = make((12,), 9, device, ignore=True)
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    a = F.cross_entropy(xa, t, reduction=reduction, z_loss=z_loss, softcap=softcap)
    b = composed(xb, t, z_loss=z_loss, softcap=softcap, reduction=reduction)
    torch.testing.assert_close(a, b)
    g = torch.randn_like(b)
    torch.testing.assert_close(torch.autograd.grad(a, xa, g)[0], torch.autograd.grad(b, xb, g)[0])


def test_gradcheck(device):
    x = torch.randn(5, 7, dtype=torch.float64, device=device, requires_grad=True)
    t = torch.tensor([0, 6, -100, 3, 3], device=device)
    w = torch.rand(7, dtype=torch.float64, device=device) + 0.5
    assert torch.autograd.gradcheck(
        lambda v: F.cross_entropy(v, t, weight=w, label_smoothing=0.1, z_loss=1e-2, softcap=3.0), (x,))
    y = torch.softmax(torch.randn(5, 7, dtype=torch.float64, device=device), 1)
    assert torch.autograd.gradcheck(lambda v: F.cross_entropy(v, y, label_smoothing=0.2), (x,))


def test_opcheck(device):
    x = torch.randn(6, 9, device=device, requires_grad=True)
    t = torch.randint(0, 9, (6,), device=device)
    w = torch.rand(9, device=device)
    torch.library.opcheck(torch.ops.fastact.cross_entropy_rows.default, (x, t, w, -100, 0.1, 1e-3, 0.0))
    torch.library.opcheck(torch.ops.fastact.cross_entropy_rows.default, (x, t, None, 2, 0.0, 0.0, 4.0))
    _, lse = torch.ops.fastact.cross_entropy_rows(x.detach(), t, None, -100, 0.0, 0.0, 0.0)
    torch.library.opcheck(torch.ops.fastact.cross_entropy_rows_backward.default,
                          (torch.rand(6, device=device), x.detach(), t, None, lse, -100, 0.0, 0.0, 0.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", ["index", "weight-smooth-softcap", "prob"])
def test_inplace_backward_equals_out_of_place(case, dtype, device):
    # the fused linear cross-entropy overwrites its chunk of logits with their
    # gradient; odd V and a misaligned row start exercise the vector edges
    x = torch.randn(5, 50257 if case == "index" else 37, device=device).to(dtype)[:, 1:]
    x = x.contiguous()
    c = x.shape[1]
    w = torch.rand(c, device=device) if case != "index" else None
    t = torch.softmax(torch.randn(5, c, device=device), 1).to(dtype) if case == "prob" \
        else torch.tensor([0, c - 1, -100, 3, 7], device=device)
    opts = (-100, 0.1, 1e-3, 4.0) if case == "weight-smooth-softcap" else (-100, 0.0, 1e-3, 0.0)
    _, lse = torch.ops.fastact.cross_entropy_rows(x, t, w, *opts)
    g = torch.rand(5, device=device)
    expected = torch.ops.fastact.cross_entropy_rows_backward(g, x, t, w, lse, *opts)
    y = x.clone()
    torch.ops.fastact.cross_entropy_rows_backward_(g, y, t, w, lse, *opts)
    assert torch.equal(y, expected)
    if case == "index":
        assert (y[2] == 0).all()  # the ignored row
    torch.library.opcheck(torch.ops.fastact.cross_entropy_rows_backward_.default, (g, x.clone(), t, w, lse, *opts))
    with pytest.raises(ValueError, match="contiguous"):
        torch.ops.fastact.cross_entropy_rows_backward_(g, x.t(), t, w, lse, *opts)
    with pytest.raises(ValueError, match="grad must have shape"):
        torch.ops.fastact.cross_entropy_rows_backward(g[:3], x, t, w, lse, *opts)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph(backend, device):
    torch._dynamo.reset()
    x = torch.randn(8, 33, device=device, requires_grad=True)
    t = torch.randint(0, 33, (8,), device=device)
    f = lambda v: F.cross_entropy(v, t, label_smoothing=0.1, z_loss=1e-3)  # noqa: E731
    y = torch.compile(f, fullgraph=True, backend=backend)(x)
    (g,) = torch.autograd.grad(y, x)
    torch.testing.assert_close(y, f(x))
    torch.testing.assert_close(g, torch.autograd.grad(f(x), x)[0])


def test_bad_input_raises(device):
    x = torch.randn(4, 5, device=device)
    t = torch.tensor([0, 1, 2, 3], device=device)
    if device == "cpu" and not EMULATION:
        with pytest.raises(IndexError, match="fastact.cross_entropy: target 7"):
            F.cross_entropy(x, torch.tensor([0, 7, 1, 2]))
    elif EMULATION:  # the CUDA kernel's device-side assert
        with pytest.raises(RuntimeError, match="device-side assert triggered.*target out of bounds"):
            F.cross_entropy(x, torch.tensor([0, 7, 1, 2]))
    with pytest.raises(ValueError, match="label_smoothing"):
        F.cross_entropy(x, t, label_smoothing=1.5)
    with pytest.raises(ValueError, match="reduction"):
        F.cross_entropy(x, t, reduction="avg")
    with pytest.raises(ValueError, match="target must have shape"):
        F.cross_entropy(x, t[:3])
    with pytest.raises(ValueError, match="weight"):
        F.cross_entropy(x, t, weight=torch.ones(4, device=device))
    with pytest.raises(TypeError, match="fastact.cross_entropy"):
        F.cross_entropy(x.long(), t)
    with pytest.raises(TypeError, match="int64"):
        F.cross_entropy(x, t.int())


def test_module_and_patch():
    w = torch.rand(5)
    ours = fnn.CrossEntropyLoss(weight=w, label_smoothing=0.1, ignore_index=2)
    theirs = torch.nn.CrossEntropyLoss(weight=w, label_smoothing=0.1, ignore_index=2)
    x, t = torch.randn(7, 5), torch.randint(0, 5, (7,))
    torch.testing.assert_close(ours(x, t), theirs(x, t))
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    model = torch.nn.ModuleDict({"loss": torch.nn.CrossEntropyLoss(label_smoothing=0.2)})
    fnn.patch(model)
    assert type(model["loss"]) is fnn.CrossEntropyLoss and model.fastact_patched == {"CrossEntropyLoss": 1}
    torch.testing.assert_close(model["loss"](x, t), TF.cross_entropy(x, t, label_smoothing=0.2))
    z = fnn.CrossEntropyLoss(z_loss=1e-2, softcap=3.0)
    torch.testing.assert_close(z(x, t), composed(x, t, z_loss=1e-2, softcap=3.0))


@pytest.mark.parametrize("offset", [1e4, -1e4, 1e6, -1e6], ids=lambda o: f"{o:+g}")
@pytest.mark.parametrize("kind", ["index", "weight-smooth-zloss", "prob"])
def test_shift_invariance_against_float64(kind, offset, device):
    # rows offset by a large constant: loss and gradient relative to the row
    # max, so float32 gives the float64 answer to float32 precision (forming
    # lse - z_t on numbers near 1e4 loses the ulp of 1e4, ~1e-3). (softcap is
    # not shift-invariant: c * tanh(x / c) itself is rounded on x's scale.)
    torch.manual_seed(7)
    x64 = torch.randn(8, 37, dtype=torch.float64, device=device) * 2 + offset
    x64[3] = offset  # a row of equal logits: exactly log(C)
    x64 = x64.to(torch.float32).double()  # representable in float32: both see the same logits
    prob = kind == "prob"
    t = torch.softmax(torch.randn(8, 37, dtype=torch.float64, device=device), 1) if prob else \
        torch.randint(0, 37, (8,), device=device)
    kw = {}
    if kind == "weight-smooth-zloss":
        kw = dict(weight=torch.rand(37, device=device) + 0.5, label_smoothing=0.1, z_loss=1e-9)
    for reduction in ("none", "sum"):
        x = x64.float().requires_grad_(True)
        ref_in = x64.clone().requires_grad_(True)
        kw64 = dict(kw, weight=kw["weight"].double()) if "weight" in kw else kw
        a = F.cross_entropy(x, t.float() if prob else t, reduction=reduction, **kw)
        b = F.cross_entropy(ref_in, t, reduction=reduction, **kw64)
        if not kw.get("z_loss"):
            torch.testing.assert_close(b, TF.cross_entropy(ref_in, t, reduction=reduction, **kw64))
        g = torch.linspace(0.5, 1.5, a.numel(), device=device).view(a.shape)
        (ga,) = torch.autograd.grad(a, x, g)
        (gb,) = torch.autograd.grad(b, ref_in, g.double())
        torch.testing.assert_close(a.double(), b, rtol=2e-6, atol=2e-6)
        torch.testing.assert_close(ga.double(), gb, rtol=2e-6, atol=1e-7)
    if kind == "index":
        x = torch.full((3, 100), offset, device=device)
        torch.testing.assert_close(F.cross_entropy(x, torch.tensor([0, 5, 99], device=device)),
                                   torch.tensor(4.605170185988091, device=device), rtol=1e-7, atol=0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", [dict(), dict(label_smoothing=0.3), dict(weighted=True),
                                  dict(weighted=True, label_smoothing=0.1)], ids=["plain", "smooth", "weight",
                                                                                   "weight-smooth"])
@pytest.mark.parametrize("shape,classes", [((6,), 13), ((2, 3), 5), ((), 4)], ids=["NC", "NCd", "C"])
def test_probability_target_gradient(reduction, opts, shape, classes, device):
    # torch gives a probability target that requires grad its gradient: so do we
    x, t = make(shape or (1,), classes, device, prob=True)
    if shape == ():
        x, t = x.reshape(classes), t.reshape(classes)
    kw = dict(reduction=reduction, label_smoothing=opts.get("label_smoothing", 0.0))
    if opts.get("weighted"):
        kw["weight"] = torch.rand(classes, device=device) + 0.1
    xa, ta = x.clone().requires_grad_(True), t.clone().requires_grad_(True)
    xb, tb = x.clone().requires_grad_(True), t.clone().requires_grad_(True)
    a, b = F.cross_entropy(xa, ta, **kw), TF.cross_entropy(xb, tb, **kw)
    g = torch.randn_like(b)
    for ours, theirs in zip(torch.autograd.grad(a, (xa, ta), g), torch.autograd.grad(b, (xb, tb), g)):
        torch.testing.assert_close(ours, theirs)
    # the target alone
    (gt,) = torch.autograd.grad(F.cross_entropy(x, ta, **kw), ta, g)
    (gt_ref,) = torch.autograd.grad(TF.cross_entropy(x, tb, **kw), tb, g)
    torch.testing.assert_close(gt, gt_ref)


def test_probability_target_gradcheck(device):
    x = torch.randn(4, 6, dtype=torch.float64, device=device, requires_grad=True)
    y = torch.softmax(torch.randn(4, 6, dtype=torch.float64, device=device), 1).requires_grad_(True)
    w = torch.rand(6, dtype=torch.float64, device=device) + 0.5
    for kw in (dict(), dict(weight=w, label_smoothing=0.2), dict(reduction="none", label_smoothing=0.1),
               dict(z_loss=1e-2, softcap=3.0, reduction="sum")):
        assert torch.autograd.gradcheck(lambda a, b: F.cross_entropy(a, b, **kw), (x, y))


def test_probability_target_gradient_module(device):
    x, t = make((5,), 7, device, prob=True)
    ta, tb = t.clone().requires_grad_(True), t.clone().requires_grad_(True)
    fnn.CrossEntropyLoss(label_smoothing=0.1)(x, ta).backward()
    torch.nn.CrossEntropyLoss(label_smoothing=0.1)(x, tb).backward()
    torch.testing.assert_close(ta.grad, tb.grad)
