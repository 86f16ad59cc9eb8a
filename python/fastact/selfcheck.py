"""The self-check of ``python -m fastact``: every op, forward and backward, on
every available device, against torch and its float64 answer.

Each op family contributes cases through ``cases()``; a case returns None
when it passes and a message when it does not.

Deterministic: every input is drawn from a ``torch.Generator`` seeded from
``run``'s ``seed`` and the case's name (the caller's global RNG state is
neither read nor changed), on the CPU and then moved to the device, so every
device checks the same numbers. Tolerances are derived from the dtype, the
length of each reduction and the magnitudes involved (see ``accuracy``), so
the check passes for every seed, not for a lucky one; tests/test_selfcheck.py
runs it under 200 seeds.
"""
from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import torch

from . import functional as F
from . import reference as R
from .accuracy import cross_entropy_error, eps, mismatch, softmax_error, sum_error, within
from .ops import ACTIVATIONS, GLUS

DEFAULT_SEED = 0


@dataclass
class Setup:
    """What a case runs on: the device, quick (smaller sizes, same
    comparisons) or not, and its own seeded generator."""
    device: str
    seed: int = DEFAULT_SEED
    quick: bool = False
    gen: torch.Generator = field(default_factory=torch.Generator)

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def randn(self, *shape, scale: float = 1.0, dtype=torch.float32) -> torch.Tensor:
        x = torch.randn(shape, generator=self.gen, dtype=torch.float64) * scale
        return x.to(dtype).to(self.device)

    def rand(self, *shape, dtype=torch.float32) -> torch.Tensor:
        return torch.rand(shape, generator=self.gen, dtype=torch.float64).to(dtype).to(self.device)

    def randint(self, high: int, *shape) -> torch.Tensor:
        return torch.randint(0, high, shape, generator=self.gen).to(self.device)


Case = Callable[[Setup], Optional[str]]


def _first(*messages: Optional[str]) -> Optional[str]:
    return next((m for m in messages if m), None)


def _rule(name: str, ours: torch.Tensor, theirs: torch.Tensor, ref64: torch.Tensor) -> Optional[str]:
    """Elementwise results: accuracy.mismatch, the rule the tests use."""
    msg = mismatch(ours.detach(), theirs.detach(), ref64.detach().to(ours.device))
    return f"{name}: {msg}" if msg else None


def _grads(fn, *inputs, grad_out=None):
    """fn(*inputs) and its gradients for fresh leaf copies of the inputs."""
    leaves = [v.detach().clone().requires_grad_(True) for v in inputs]
    y = fn(*leaves)
    g = torch.ones_like(y) if grad_out is None else grad_out
    return (y.detach(), *torch.autograd.grad(y, leaves, g))


def _torch_grads(fn, *inputs):
    """torch's answer in the inputs' dtype, or in float32 rounded back where
    torch's CPU kernels lack the half type."""
    try:
        return _grads(fn, *inputs)
    except RuntimeError:
        out = _grads(fn, *(v.float() for v in inputs))
        return tuple(o.to(inputs[0].dtype) for o in out)


def _activation_case(name: str, params: tuple) -> Case:
    def case(s: Setup) -> Optional[str]:
        problems = []
        for dtype in (torch.float32, torch.bfloat16):
            x = s.randn(s.size(4097, 1025), scale=4.0, dtype=dtype)
            ours = _grads(lambda t: getattr(torch.ops.fastact, name)(t, *params), x)
            theirs = _torch_grads(lambda t: R.ACTIVATIONS[name](t, *params), x)
            ref = _grads(lambda t: R.ACTIVATIONS[name](t, *params), x.double())
            for what, a, b, r in zip(("forward", "backward"), ours, theirs, ref):
                msg = _rule(f"{name}{list(params)} {what} {dtype}", a, b, r)
                if msg:
                    problems.append(msg)
        return "; ".join(problems) or None
    return case


def _prelu_case(s: Setup) -> Optional[str]:
    x = s.randn(8, 3, 17)
    w = torch.tensor([0.1, -0.2, 0.3], device=s.device)
    y, gx, gw = _grads(F.prelu, x, w)
    yt, gxt, _ = _grads(R.prelu, x, w)
    y64, gx64, gw64 = _grads(R.prelu, x.double(), w.double())
    # grad weight: per channel a sum of n = 8 * 17 terms x (where x < 0)
    x64 = x.double()
    mag = (x64.abs() * (x64 < 0)).sum((0, 2))
    return _first(_rule("prelu forward", y, yt, y64), _rule("prelu grad input", gx, gxt, gx64),
                  within("prelu grad weight", gw, gw64, sum_error(torch.float32, 8 * 17, mag)))


def _swish_beta_case(s: Setup) -> Optional[str]:
    x = s.randn(16, 9)
    b = s.rand(9)
    swish = R.ACTIVATIONS["swish"]
    _, gx, gb = _grads(F.swish, x, b)
    _, gxt, _ = _grads(swish, x, b)
    _, gx64, gb64 = _grads(swish, x.double(), b.double())
    # grad beta: per feature a sum over 16 rows of d(x sigmoid(beta x))/d beta
    # = x^2 s (1 - s), s = sigmoid(beta x) (the gradient of beta broadcast to
    # x's shape). Each term also inherits the rounding of beta x: relative
    # |d log(s (1 - s)) / du| eps |u| = |1 - 2 s| eps |u| <= eps |beta x|.
    (terms,) = _grads(swish, x.double(), b.double().expand(16, 9).contiguous())[2:]
    arg_err = (terms.abs() * (x.double() * b.double()).abs() * eps(torch.float32)).sum(0)
    return _first(_rule("swish(beta tensor) grad input", gx, gxt, gx64),
                  within("swish(beta tensor) grad beta", gb, gb64,
                         sum_error(torch.float32, 16, terms.abs().sum(0)) + arg_err))


def _glu_case(name: str, params: tuple, interleaved: bool = False) -> Case:
    kwargs = dict(zip(GLUS[name], params), **({"interleaved": True} if interleaved else {}))
    label = f"{name}{list(params)}{' interleaved' if interleaved else ''}"

    def case(s: Setup) -> Optional[str]:
        x = s.randn(64, 2 * 48)
        ours = _grads(lambda t: getattr(F, name)(t, None, -1, **kwargs), x)
        theirs = _grads(lambda t: R.gated(name, t, None, -1, *params, interleaved=interleaved), x)
        ref = _grads(lambda t: R.gated(name, t, None, -1, *params, interleaved=interleaved), x.double())
        return _first(*(_rule(f"{label} {what}", a, b, r)
                        for what, a, b, r in zip(("forward", "backward"), ours, theirs, ref)))
    return case


def _glu_case_torch(s: Setup) -> Optional[str]:
    x = s.randn(32, 40)
    ours = _grads(lambda t: F.glu(t, 0), x)
    theirs = _grads(lambda t: torch.nn.functional.glu(t, 0), x)
    ref = _grads(lambda t: torch.nn.functional.glu(t, 0), x.double())
    return _first(*(_rule(f"glu {what}", a, b, r) for what, a, b, r in zip(("forward", "backward"), ours, theirs, ref)))


def _dropout_case(s: Setup) -> Optional[str]:
    rows, p = s.size(64, 16), 0.25
    x = s.randn(rows, 256)
    b = s.randn(256)
    philox = (int(torch.randint(0, 2**62, (), generator=s.gen)), int(torch.randint(0, 2**20, (), generator=s.gen)) * 4)
    seed = torch.tensor(philox, device=s.device)
    keep = F.dropout_mask(x.shape, p, *philox, device=s.device)
    # the kept fraction of n Bernoulli(1 - p) draws: 8 standard deviations
    # (Hoeffding: a false alarm below 1e-13 for a correct generator)
    frac, n = keep.double().mean().item(), keep.numel()
    if abs(frac - (1 - p)) > 8 * math.sqrt(p * (1 - p) / n):
        return f"dropout keeps {frac:.4f} of {n} elements at p={p}"

    def ref(a, c):
        return torch.nn.functional.gelu(a + c) * keep.to(a.dtype) / (1 - p)
    y, gx, gb = _grads(lambda a, c: torch.ops.fastact.bias_act_dropout(a, c, "gelu", p, seed), x, b)
    yt, gxt, _ = _grads(ref, x, b)
    y64, gx64, gb64 = _grads(ref, x.double(), b.double())
    # grad bias: per feature a sum over the rows of grad input's elements
    # gelu'(z) k, z = x + b, k = keep / (1 - p). gelu'(z) = Phi(z) + z phi(z)
    # with Phi(z) = (1 + erf(z / sqrt 2)) / 2 rounds at the magnitude of its
    # parts, about 1 even where gelu'(z) is tiny (z << 0: 1 + erf cancels;
    # z near -0.75: Phi and z phi cancel); the rounding of z (eps |z| at
    # most) moves it by gelu''(z) eps |z|.
    z = (x.double() + b.double()).requires_grad_(True)
    (d1,) = torch.autograd.grad(torch.nn.functional.gelu(z).sum(), z, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), z)
    z = z.detach()
    k = keep.double() / (1 - p)
    parts = ((1 + torch.erf(z / math.sqrt(2)).abs()) / 2 + z.abs() * torch.exp(-z * z / 2) / math.sqrt(2 * math.pi)) * k
    arg_err = (d2.abs() * z.abs() * eps(torch.float32) * k).sum(0)
    return _first(_rule("bias_act_dropout forward", y, yt, y64), _rule("bias_act_dropout grad input", gx, gxt, gx64),
                  within("bias_act_dropout grad bias", gb, gb64, sum_error(torch.float32, rows, parts.sum(0)) + arg_err))


def _losses_case(s: Setup) -> Optional[str]:
    n, v = s.size(32, 8), 1000
    f32 = torch.float32
    x = s.randn(n, v)
    t = s.randint(v, n)
    t[3] = -100
    w = s.rand(v)
    x64, w64 = x.double(), w.double()
    TF = torch.nn.functional
    problems = []

    # cross-entropy, weighted, smoothed, one ignored row
    loss, g = _grads(lambda a: F.cross_entropy(a, t, weight=w, label_smoothing=0.1), x)
    loss64, g64 = _grads(lambda a: TF.cross_entropy(a, t, weight=w64, label_smoothing=0.1), x64)
    lb, gbound = cross_entropy_error(x64, t, f32, w64, 0.1)
    problems += [within("cross_entropy forward", loss, loss64, lb), within("cross_entropy backward", g, g64, gbound)]

    # (log_softmax(x) * w).sum(): n * v terms w_j log p_ij; gradient
    # w_j - p_ij sum_k w_k (sum_k w_k a sum of v terms)
    p, logp, logp_err, p_relerr = softmax_error(x64, 1, f32)
    loss, g = _grads(lambda a: (F.log_softmax(a, 1) * w).sum(), x)
    loss64, g64 = _grads(lambda a: (torch.log_softmax(a, 1) * w64).sum(), x64)
    terms = (w64 * logp).abs()
    lb = (w64 * logp_err).sum() + sum_error(f32, n * v, terms.sum())
    sw = w64.sum()
    gbound = p * sw * (p_relerr + sum_error(f32, v, 1.0)) + sum_error(f32, 1, w64 + p * sw, 0.0)
    problems += [within("log_softmax forward", loss, loss64, lb), within("log_softmax backward", g, g64, gbound)]

    # (softmax(x, 0) * w).sum(): exactly sum_j w_j (each column of p sums to 1),
    # the gradient p_ij (w_j - sum_k p_kj w_j) exactly 0; what is computed
    # differs by the error of the column sums of p (n terms)
    p0, _, _, p0_relerr = softmax_error(x64, 0, f32)
    colsum_err = (p0 * p0_relerr).sum(0) + sum_error(f32, n, 1.0)
    loss, g = _grads(lambda a: (F.softmax(a, 0) * w).sum(), x)
    loss64, g64 = _grads(lambda a: (torch.softmax(a, 0) * w64).sum(), x64)
    lb = (w64 * colsum_err).sum() + sum_error(f32, n * v, (p0 * w64).sum())
    gbound = p0 * w64 * (colsum_err + p0_relerr + eps(f32) * 4)
    problems += [within("softmax forward", loss, loss64, lb), within("softmax backward", g, g64, gbound)]

    # mse_loss: a mean of n * v squared differences; gradient 2 (a - b) / (n v)
    loss, g = _grads(lambda a: F.mse_loss(a, a.detach().flip(0)), x)
    loss64, g64 = _grads(lambda a: TF.mse_loss(a, a.detach().flip(0)), x64)
    d = x64 - x64.flip(0)
    problems += [within("mse_loss forward", loss, loss64, sum_error(f32, n * v, (d * d).sum()) / (n * v)),
                 within("mse_loss backward", g, g64, sum_error(f32, 1, g64.abs()))]
    return "; ".join(m for m in problems if m) or None


def _lm_head_case(s: Setup) -> Optional[str]:
    # a few rows of a large, odd vocabulary (on CUDA each row is split over
    # blocks): the reduction is long even in quick mode
    f32 = torch.float32
    v = s.size(131075, 65539)
    x = s.randn(4, v)
    t = torch.tensor([0, v - 1, -100, 77], device=s.device)
    loss, g = _grads(lambda a: F.cross_entropy(a, t, label_smoothing=0.1), x)
    loss64, g64 = _grads(lambda a: torch.nn.functional.cross_entropy(a, t, label_smoothing=0.1), x.double())
    lb, gbound = cross_entropy_error(x.double(), t, f32, label_smoothing=0.1)
    msg = _first(within("cross_entropy large vocab forward", loss, loss64, lb),
                 within("cross_entropy large vocab backward", g, g64, gbound))
    if msg:
        return msg

    # the fused linear cross-entropy against float64 matmul + cross_entropy
    n, hdim, v = s.size(40, 24), 32, 1000
    h = s.randn(n, hdim)
    w = s.randn(v, hdim, scale=1 / 6)
    t = s.randint(v, n)
    loss, gh, gw = _grads(lambda a, b: F.linear_cross_entropy(a, b, t, chunk_size=16), h, w)
    h64, w64 = h.double(), w.double()
    loss64, gh64, gw64 = _grads(lambda a, b: torch.nn.functional.cross_entropy(a @ b.t(), t), h64, w64)
    # logits: dot products of hdim terms; their gradient G (n, v) then
    # enters grad hidden = G w (v terms) and grad weight = G^T h (n terms)
    z64 = h64 @ w64.t()
    z_err = sum_error(f32, hdim, h64.abs() @ w64.abs().t())
    lb, g_err = cross_entropy_error(z64, t, f32, logit_err=z_err)
    G = torch.autograd.grad(torch.nn.functional.cross_entropy(z64.requires_grad_(True), t), z64)[0].abs()
    gh_bound = g_err @ w64.abs() + sum_error(f32, v, G @ w64.abs())
    gw_bound = g_err.t() @ h64.abs() + sum_error(f32, n, G.t() @ h64.abs())
    return _first(within("linear_cross_entropy forward", loss, loss64, lb),
                  within("linear_cross_entropy grad hidden", gh, gh64, gh_bound),
                  within("linear_cross_entropy grad weight", gw, gw64, gw_bound))


def cases() -> Iterator[tuple[str, Case]]:
    for name in ACTIVATIONS:
        for params in R.params(name):
            yield f"{name}{list(params) if params else ''}", _activation_case(name, params)
    yield "prelu", _prelu_case
    yield "swish(beta tensor)", _swish_beta_case
    for name in GLUS:
        for params in R.glu_params(name):
            yield f"{name}{list(params) if params else ''}", _glu_case(name, params)
    for params in R.glu_params("clamped_swiglu"):  # the one whose API takes interleaved=True
        yield f"clamped_swiglu{list(params)} interleaved", _glu_case("clamped_swiglu", params, True)
    yield "glu", _glu_case_torch
    yield "dropout family", _dropout_case
    yield "losses", _losses_case
    yield "lm head", _lm_head_case


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


_available = devices


def run(verbose: bool = True, seed: int = DEFAULT_SEED, quick: bool = False,
        devices: Optional[list[str]] = None) -> list[str]:
    """Runs every case on every device (or on ``devices``); returns the
    failures. ``seed`` picks the inputs (each case draws from its own
    generator, seeded from ``seed`` and the case's name); ``quick`` runs the
    same cases and comparisons at smaller sizes."""
    import fastact

    failures = []
    if torch.cuda.is_available() and not fastact.cuda_compiled():
        failures.append("a CUDA device is present but fastact was built without CUDA kernels")
    for device in devices if devices is not None else _available():
        start = time.perf_counter()
        count = 0
        for label, case in cases():
            # (the CPU generator keeps only the low 32 bits of its seed)
            gen = torch.Generator().manual_seed((seed + zlib.crc32(label.encode())) % 2**32)
            try:
                msg = case(Setup(device, seed, quick, gen))
            except Exception as e:  # a crash of one op is a failure, not the end of the check
                msg = f"{label}: {type(e).__name__}: {e}"
            count += 1
            if msg:
                failures.append(f"[{device}, seed {seed}] {msg}")
                if verbose:
                    print(f"  FAIL [{device}, seed {seed}] {msg}")
        if verbose:
            print(f"{device}: {count} ops checked in {time.perf_counter() - start:.1f} s (seed {seed})")
    return failures
