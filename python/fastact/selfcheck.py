"""The self-check of ``python -m fastact``: every op, forward and backward, on
every available device, against the plain-torch formulas of ``reference``.

Each op family contributes cases through ``cases()``; a case returns None
when it passes and a message when it does not.
"""
from __future__ import annotations

import time
from typing import Callable, Iterator, Optional

import torch

from . import functional as F
from . import reference as R
from .ops import ACTIVATIONS, GLUS

Case = Callable[[str], Optional[str]]


def _compare(name: str, ours: torch.Tensor, ref: torch.Tensor, rtol: float, atol: float) -> Optional[str]:
    if ours.shape != ref.shape or ours.dtype != ref.dtype:
        return f"{name}: got {ours.dtype}{tuple(ours.shape)}, want {ref.dtype}{tuple(ref.shape)}"
    if not torch.allclose(ours, ref, rtol=rtol, atol=atol, equal_nan=True):
        err = (ours.double() - ref.double()).abs().nan_to_num(0).max().item()
        return f"{name}: max abs error {err:.3g} (rtol {rtol}, atol {atol})"
    return None


def _activation_case(name: str, params: tuple) -> Case:
    def case(device: str) -> Optional[str]:
        problems = []
        for dtype, rtol, atol in ((torch.float32, 1e-5, 1e-5), (torch.bfloat16, 2e-2, 2e-2)):
            x = (torch.randn(4097, device=device) * 4).to(dtype).requires_grad_(True)
            y = getattr(torch.ops.fastact, name)(x, *params)
            (g,) = torch.autograd.grad(y.sum(), x)
            x64 = x.detach().double().requires_grad_(True)
            y64 = R.ACTIVATIONS[name](x64, *params)
            (g64,) = torch.autograd.grad(y64.sum(), x64)
            for what, a, b in (("forward", y, y64), ("backward", g, g64)):
                msg = _compare(f"{name}{list(params)} {what} {dtype}", a.detach(), b.to(dtype), rtol, atol)
                if msg:
                    problems.append(msg)
        return "; ".join(problems) or None
    return case


def _prelu_case(device: str) -> Optional[str]:
    x = torch.randn(8, 3, 17, device=device, requires_grad=True)
    w = torch.tensor([0.1, -0.2, 0.3], device=device, requires_grad=True)
    y = F.prelu(x, w)
    gx, gw = torch.autograd.grad(y.sum(), (x, w))
    xr, wr = x.detach().requires_grad_(True), w.detach().requires_grad_(True)
    yr = R.prelu(xr, wr)
    gxr, gwr = torch.autograd.grad(yr.sum(), (xr, wr))
    for what, a, b in (("forward", y, yr), ("grad input", gx, gxr), ("grad weight", gw, gwr)):
        msg = _compare(f"prelu {what}", a.detach(), b.detach(), 1e-5, 1e-5)
        if msg:
            return msg
    return None


def _swish_beta_case(device: str) -> Optional[str]:
    x = torch.randn(16, 9, device=device, requires_grad=True)
    b = torch.rand(9, device=device, requires_grad=True)
    gx, gb = torch.autograd.grad(F.swish(x, b).sum(), (x, b))
    xr, br = x.detach().requires_grad_(True), b.detach().requires_grad_(True)
    gxr, gbr = torch.autograd.grad(R.ACTIVATIONS["swish"](xr, br).sum(), (xr, br))
    return _compare("swish(beta tensor) grad input", gx, gxr, 1e-5, 1e-5) or \
        _compare("swish(beta tensor) grad beta", gb, gbr, 1e-4, 1e-4)


def _glu_case(name: str, params: tuple) -> Case:
    def case(device: str) -> Optional[str]:
        x = torch.randn(64, 2 * 48, device=device, requires_grad=True)
        y = getattr(F, name)(x, None, -1, *params)
        (g,) = torch.autograd.grad(y.sum(), x)
        xr = x.detach().requires_grad_(True)
        yr = R.gated(name, xr, None, -1, *params)
        (gr,) = torch.autograd.grad(yr.sum(), xr)
        return _compare(f"{name} forward", y.detach(), yr.detach(), 1e-5, 1e-5) or \
            _compare(f"{name} backward", g, gr, 1e-5, 1e-5)
    return case


def _glu_case_torch(device: str) -> Optional[str]:
    x = torch.randn(32, 40, device=device, requires_grad=True)
    (g,) = torch.autograd.grad(F.glu(x, 0).sum(), x)
    xr = x.detach().requires_grad_(True)
    (gr,) = torch.autograd.grad(torch.nn.functional.glu(xr, 0).sum(), xr)
    return _compare("glu backward", g, gr, 1e-5, 1e-5)


def _dropout_case(device: str) -> Optional[str]:
    x = torch.randn(64, 256, device=device, requires_grad=True)
    b = torch.randn(256, device=device, requires_grad=True)
    seed = torch.tensor([2024, 4], device=device)
    keep = F.dropout_mask(x.shape, 0.25, 2024, 4, device=device).float()
    y = torch.ops.fastact.bias_act_dropout(x, b, "gelu", 0.25, seed)
    gx, gb = torch.autograd.grad(y.sum(), (x, b))
    xr, br = x.detach().requires_grad_(True), b.detach().requires_grad_(True)
    yr = torch.nn.functional.gelu(xr + br) * keep / 0.75
    gxr, gbr = torch.autograd.grad(yr.sum(), (xr, br))
    frac = keep.mean().item()
    if not 0.65 < frac < 0.85:
        return f"dropout keeps {frac:.3f} of elements at p=0.25"
    return _compare("bias_act_dropout forward", y.detach(), yr.detach(), 1e-5, 1e-5) or \
        _compare("bias_act_dropout grad input", gx, gxr, 1e-5, 1e-5) or \
        _compare("bias_act_dropout grad bias", gb, gbr, 1e-4, 1e-4)


def _losses_case(device: str) -> Optional[str]:
    x = torch.randn(32, 1000, device=device, requires_grad=True)
    t = torch.randint(0, 1000, (32,), device=device)
    t[3] = -100
    w = torch.rand(1000, device=device)
    problems = []
    for name, ours, ref in (
        ("cross_entropy", lambda v: F.cross_entropy(v, t, weight=w, label_smoothing=0.1),
         lambda v: torch.nn.functional.cross_entropy(v, t, weight=w, label_smoothing=0.1)),
        ("log_softmax", lambda v: (F.log_softmax(v, 1) * w).sum(), lambda v: (torch.log_softmax(v, 1) * w).sum()),
        ("softmax", lambda v: (F.softmax(v, 0) * w).sum(), lambda v: (torch.softmax(v, 0) * w).sum()),
        ("mse_loss", lambda v: F.mse_loss(v, v.detach().flip(0)), lambda v: torch.nn.functional.mse_loss(v, v.detach().flip(0))),
    ):
        a = ours(x)
        (ga,) = torch.autograd.grad(a, x)
        b = ref(x)
        (gb,) = torch.autograd.grad(b, x)
        msg = _compare(f"{name} forward", a.detach(), b.detach(), 1e-4, 1e-5) or \
            _compare(f"{name} backward", ga, gb, 1e-4, 1e-6)
        if msg:
            problems.append(msg)
    return "; ".join(problems) or None


def _lm_head_case(device: str) -> Optional[str]:
    # a few rows of a large, odd vocabulary (on CUDA each row is split over
    # blocks), and the fused linear cross-entropy against matmul + cross_entropy
    x = torch.randn(4, 131075, device=device, requires_grad=True)
    t = torch.tensor([0, 131074, -100, 77], device=device)
    a = F.cross_entropy(x, t, label_smoothing=0.1)
    (ga,) = torch.autograd.grad(a, x)
    b = torch.nn.functional.cross_entropy(x, t, label_smoothing=0.1)
    (gb,) = torch.autograd.grad(b, x)
    msg = _compare("cross_entropy large vocab forward", a.detach(), b.detach(), 1e-4, 1e-5) or \
        _compare("cross_entropy large vocab backward", ga, gb, 1e-4, 1e-7)
    if msg:
        return msg
    h = torch.randn(40, 32, device=device, requires_grad=True)
    w = (torch.randn(1000, 32, device=device) / 6).requires_grad_(True)
    t = torch.randint(0, 1000, (40,), device=device)
    a = F.linear_cross_entropy(h, w, t, chunk_size=16)
    ga = torch.autograd.grad(a, (h, w))
    b = torch.nn.functional.cross_entropy(h @ w.t(), t)
    gb = torch.autograd.grad(b, (h, w))
    return _compare("linear_cross_entropy forward", a.detach(), b.detach(), 1e-4, 1e-5) or \
        _compare("linear_cross_entropy grad hidden", ga[0], gb[0], 1e-4, 1e-6) or \
        _compare("linear_cross_entropy grad weight", ga[1], gb[1], 1e-4, 1e-6)


def cases() -> Iterator[tuple[str, Case]]:
    for name in ACTIVATIONS:
        for params in R.params(name):
            yield f"{name}{list(params) if params else ''}", _activation_case(name, params)
    yield "prelu", _prelu_case
    yield "swish(beta tensor)", _swish_beta_case
    for name in GLUS:
        for params in R.glu_params(name):
            yield f"{name}{list(params) if params else ''}", _glu_case(name, params)
    yield "glu", _glu_case_torch
    yield "dropout family", _dropout_case
    yield "losses", _losses_case
    yield "lm head", _lm_head_case


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def run(verbose: bool = True) -> list[str]:
    """Runs every case on every device; returns the failures."""
    import fastact

    failures = []
    if torch.cuda.is_available() and not fastact.cuda_compiled():
        failures.append("a CUDA device is present but fastact was built without CUDA kernels")
    for device in devices():
        start = time.perf_counter()
        count = 0
        for label, case in cases():
            try:
                msg = case(device)
            except Exception as e:  # a crash of one op is a failure, not the end of the check
                msg = f"{label}: {type(e).__name__}: {e}"
            count += 1
            if msg:
                failures.append(f"[{device}] {msg}")
                if verbose:
                    print(f"  FAIL [{device}] {msg}")
        if verbose:
            print(f"{device}: {count} ops checked in {time.perf_counter() - start:.1f} s")
    return failures
