"""How close is close enough: the accuracy rules the self-check and the tests
share, so a comparison never passes or fails by the luck of a random input.

Two kinds of rule:

- ``mismatch``: elementwise results (an activation, a GLU, dropout) against
  torch on the same input and against torch's float64 answer. float32/float64:
  each element equal to torch's or to the float64 answer rounded, within
  ``torch.testing``'s default tolerances of the dtype. float16/bfloat16 (which
  compute in float32 and round once): the max error against float64 at most
  twice torch's own.

- ``within``: anything that reduces (a sum, a mean, a softmax row, a matmul)
  against float64, elementwise within a bound derived from the dtype, the
  length of the reduction and the magnitudes of what is added (``sum_error``,
  ``softmax_error``, ``cross_entropy_error``). A fixed absolute tolerance is
  either far too loose for small values or fails by chance on large
  reductions (the self-check's old ``atol=1e-7`` on a 131075-long softmax).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

HALF_DTYPES = (torch.float16, torch.bfloat16)

#: Safety factor on the random-walk growth of rounding errors in a sum, in
#: units of eps (= 2 u, u the unit roundoff). A float sum of n terms makes at
#: most n roundings delta_k * S_k with |delta_k| <= u and |S_k| <= sum|terms|
#: = A. The worst case, (n - 1) u A, is reached only by adversarial inputs; for
#: independent rounding errors Hoeffding's inequality gives
#: P(|error| > lam u sqrt(n) A) <= 2 exp(-lam^2 / 2): lam = 8 (= 4 eps) puts
#: the chance of a false failure below 1e-13. Blocked and pairwise sums (what
#: torch and fastact do) grow like log n, well inside this.
SUM_EPS = 4.0

#: Rounding errors of one term before it is added (a product, an exp, a
#: subtraction: a few roundings of at most half an ulp each), in eps units of
#: the term's magnitude.
TERM_EPS = 4.0


def eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def ulp(x, dtype: torch.dtype):
    """The spacing of ``dtype``'s numbers at |x| (x a float or float64
    tensor): one rounding of a result to ``dtype`` moves it by at most half
    of this, two roundings that differ by one of this."""
    x = torch.as_tensor(x, dtype=torch.float64).abs()
    tiny = torch.finfo(dtype).tiny
    return eps(dtype) * torch.exp2(torch.floor(torch.log2(x.clamp_min(tiny))))


def sum_error(dtype: torch.dtype, n: int, magnitude, term_eps: float = TERM_EPS):
    """Bound on |computed - exact| of a sum of ``n`` terms computed in ``dtype``
    (each with a few roundings of its own), where ``magnitude`` (a float or a
    float64 tensor) is the sum of the terms' absolute values. ``n`` may be
    a tensor of lengths."""
    root = n.clamp_min(1).double().sqrt() if isinstance(n, torch.Tensor) else math.sqrt(max(n, 1))
    return eps(dtype) * (SUM_EPS * root + term_eps) * magnitude


def within(name: str, ours: torch.Tensor, ref64: torch.Tensor, bound) -> Optional[str]:
    """None when ``ours`` is elementwise within ``bound`` (float or float64
    tensor broadcasting against ``ref64``) of the float64 reference, with NaN
    and infinities in the same places; else a message."""
    if ours.shape != ref64.shape:
        return f"{name}: got shape {tuple(ours.shape)}, want {tuple(ref64.shape)}"
    a, r = ours.detach().double().cpu(), ref64.detach().double().cpu()
    bound = bound.cpu() if isinstance(bound, torch.Tensor) else torch.tensor(bound, dtype=torch.float64)
    bound = bound.expand_as(r)
    finite = torch.isfinite(r)
    same_special = (a[~finite] == r[~finite]) | (a[~finite].isnan() & r[~finite].isnan())
    if not same_special.all():
        return f"{name}: non-finite results differ: got {a[~finite][~same_special][:4].tolist()}"
    err = (a - r).abs()
    bad = finite & ~(err <= bound)  # a NaN where the reference is finite fails too
    if bad.any():
        worst = torch.where(bad, err / bound.clamp_min(1e-300), torch.zeros_like(err)).nan_to_num(math.inf).argmax()
        i = tuple(int(v) for v in torch.unravel_index(worst, r.shape)) if r.dim() else ()
        return (f"{name}: {int(bad.sum())} of {r.numel()} elements off, e.g. at {list(i)} got "
                f"{a[i].item():.9g}, float64 {r[i].item():.9g}: error {err[i].item():.3g} > bound "
                f"{bound[i].item():.3g}")
    return None


def mismatch(ours: torch.Tensor, theirs: torch.Tensor, reference64: Optional[torch.Tensor] = None,
             ulps: float = 0.0) -> Optional[str]:
    """The rule for elementwise ops (None when it holds, else a message).

    fp32/fp64: equal to torch within assert_close's default tolerances of the
    dtype. fp16/bf16: max error against the float64 reference at most twice
    torch's own error on the same input (non-finite positions must agree
    exactly), plus ``ulps`` ulps of the dtype at the largest reference value:
    where the result is a sum of terms already rounded to the half type (a
    bias gradient), ours may land on the other neighbour of the exact answer
    while torch's rounding happens to be close."""
    if ours.shape != theirs.shape:
        return f"shape {tuple(ours.shape)} != torch's {tuple(theirs.shape)}"
    if ours.dtype != theirs.dtype:
        return f"dtype {ours.dtype} != torch's {theirs.dtype}"
    if ours.device != theirs.device:
        return f"device {ours.device} != torch's {theirs.device}"
    if ours.dtype not in HALF_DTYPES:
        if reference64 is None:
            try:
                torch.testing.assert_close(ours, theirs, equal_nan=True)
            except AssertionError as e:
                return str(e)
            return None
        # Each element must match torch in this dtype or torch's float64
        # answer rounded to it (torch's float32 CPU kernels differ from its own
        # float64 ones at a few special values, e.g. gelu(inf) is NaN).
        rounded = reference64.to(ours.dtype)
        tol = dict(rtol=1.3e-6, atol=1e-5) if ours.dtype == torch.float32 else dict(rtol=1e-7, atol=1e-7)
        ok = torch.isclose(ours, theirs, equal_nan=True, **tol) | \
            torch.isclose(ours, rounded, equal_nan=True, **tol)
        if not ok.all():
            return (f"{(~ok).sum().item()} mismatches, e.g. ours {ours[~ok][:4].tolist()} "
                    f"torch {theirs[~ok][:4].tolist()} float64 {rounded[~ok][:4].tolist()}")
        return None
    if reference64 is None:
        return "a half-precision result needs a float64 reference"
    ours64, theirs64 = ours.double().cpu(), theirs.double().cpu()
    ref = reference64.double().cpu()
    finite = torch.isfinite(ref) & torch.isfinite(theirs64)
    rounded = reference64.to(ours.dtype).double().cpu()
    special = ~finite
    same = torch.isclose(ours64[special], theirs64[special], equal_nan=True, rtol=0, atol=0) | \
        torch.isclose(ours64[special], rounded[special], equal_nan=True, rtol=0, atol=0)
    if not same.all():
        return f"non-finite results differ: ours {ours64[special][~same][:4].tolist()}"
    if finite.any():
        err_ours = (ours64[finite] - ref[finite]).abs().max().item()
        err_torch = (theirs64[finite] - ref[finite]).abs().max().item()
        slack = ulps * ulp(ref[finite].abs().max(), ours.dtype).item() if ulps else 0.0
        if not err_ours <= 2 * err_torch + slack:
            return f"error {err_ours:g} > 2 x torch's {err_torch:g}" + (f" + {slack:g}" if slack else "")
    return None


def softmax_error(x: torch.Tensor, dim: int, dtype: torch.dtype, logit_err=0.0):
    """float64 softmax ``p`` and log-softmax ``logp`` of ``x`` along ``dim``,
    with bounds on a ``dtype`` computation of them: ``logp_err`` (absolute)
    and ``p_relerr`` (relative). ``logit_err``: a bound on the absolute error
    of x itself (e.g. from the matmul that made the logits).

    The log-sum-exp m + log(sum exp(x - m)) of n terms: each exp(x - m) has its
    own rounding plus that of its argument (eps |x - m| absolute, which exp
    turns into relative); the positive sum adds sum_error's relative
    SUM_EPS eps sqrt(n); log and + m round at |lse|. An online (rescaled) sum
    rescales at most as often as the max changes, by arguments that add up
    to at most max |x - m|. log p = x - lse inherits lse's error plus a
    rounding at |x - lse|; p = exp(log p) turns that into a relative error
    plus exp's own. Errors in x move lse by the p-weighted mean of them."""
    x = x.double()
    e, n = eps(dtype), x.shape[dim]
    finite = torch.where(torch.isfinite(x), x, torch.zeros_like(x))
    m = finite.amax(dim, keepdim=True) if n else finite.sum(dim, keepdim=True)
    lse = torch.logsumexp(x, dim, keepdim=True)
    p = torch.softmax(x, dim)
    logp = torch.log_softmax(x, dim)
    spread = (finite - m).abs().amax(dim, keepdim=True) if n else torch.zeros_like(m)
    dz = logit_err if isinstance(logit_err, torch.Tensor) else torch.full_like(x, float(logit_err))
    lse_err = e * (SUM_EPS * math.sqrt(max(n, 1)) + TERM_EPS + 2 * spread + lse.abs()) + (p * dz).sum(dim, keepdim=True)
    logp_err = lse_err + e * ((finite - lse).abs() + (finite - m).abs()) + dz
    p_relerr = logp_err + e * TERM_EPS
    return p, logp, logp_err, p_relerr


def cross_entropy_error(x: torch.Tensor, target: torch.Tensor, dtype: torch.dtype, weight=None,
                        label_smoothing: float = 0.0, ignore_index: int = -100, logit_err=0.0,
                        reduction: str = "mean", grad_out=1.0):
    """Bounds on the error of a ``dtype`` computation of the cross-entropy of
    logits ``x`` (N, V) with class-index (N,) or probability (N, V) targets,
    and of its gradient for the loss gradient ``grad_out`` (a float, or (N,)
    for reduction "none"): (loss_bound, grad_bound (N, V)), both float64.

    With y the (smoothed) target distribution of row i and w the class
    weights (ones when None), the row loss is sum_j w_j y_ij (-log p_ij) and
    its gradient p_ij a_i - w_j y_ij, a_i = sum_k w_k y_ik. "mean" divides by
    W = sum of the targets' weights over counted rows (index targets) or by
    N (probabilities). The bounds carry softmax_error's errors of p and
    log p through these formulas, add sum_error for the sums over j (V
    terms) and over rows (N terms, also in W), and a few roundings of each
    result."""
    x = x.double()
    n_rows, v = x.shape
    e = eps(dtype)
    w = torch.ones(v, dtype=torch.float64, device=x.device) if weight is None else weight.double()
    p, logp, logp_err, p_relerr = softmax_error(x, 1, dtype, logit_err)
    s = label_smoothing
    if target.dim() == 2:  # probabilities
        counted = torch.ones(n_rows, dtype=torch.bool, device=x.device)
        y = (1 - s) * target.double() + s / v
        W = torch.tensor(float(n_rows), dtype=torch.float64)
    else:
        counted = target != ignore_index
        t = torch.where(counted, target, torch.zeros_like(target))
        y = torch.full_like(x, s / v)
        y[torch.arange(n_rows, device=x.device), t] += 1 - s
        y = y * counted[:, None]
        W = (w[t] * counted).sum()
    finite_logp = torch.where(torch.isfinite(logp), logp, torch.zeros_like(logp))
    wy = w * y
    terms = wy * finite_logp.abs()
    row_mag = terms.sum(1)
    # the sum over classes: for index targets (1 - s) w_t (-log p_it) is one
    # term added to the smoothing sum (s / V) sum_j w_j (-log p_ij), as torch
    # and fastact compute it; probability targets sum all V terms
    summed = terms if target.dim() == 2 else (s / v) * w * finite_logp.abs() * counted[:, None]
    row_err = (wy * logp_err).sum(1) + sum_error(dtype, (summed != 0).sum(1), summed.sum(1)) + \
        e * TERM_EPS * row_mag
    if reduction == "none":
        g = torch.as_tensor(grad_out, dtype=torch.float64, device=x.device).expand(n_rows)
        loss_bound = row_err
        scale, w_err = g.abs(), 0.0
    else:
        total = row_err.sum() + sum_error(dtype, n_rows, row_mag.sum())
        scale = torch.full((n_rows,), abs(float(grad_out)), dtype=torch.float64, device=x.device)
        w_err = 0.0
        if reduction == "mean":
            w_err = e * SUM_EPS * math.sqrt(n_rows)  # relative error of W, a sum of N positive terms
            total = total / W + w_err * row_mag.sum() / W
            scale = scale / W
        loss_bound = total
    a = wy.sum(1, keepdim=True)
    # a_i: 1 - s + s = 1 for index targets without weights; else a sum of V terms
    a_relerr = 0.0 if weight is None and target.dim() == 1 else sum_error(dtype, v, 1.0, 0.0)
    grad_mag = p * a + wy
    grad_bound = a * p * (p_relerr + a_relerr) + e * TERM_EPS * grad_mag
    grad_bound = (grad_bound + w_err * grad_mag) * scale[:, None] * counted[:, None]
    return loss_bound, grad_bound
