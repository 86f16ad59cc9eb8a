"""Post-training heads (linear_logprobs, linear_distill_loss) against the same
losses written with torch ops: values and every gradient in float64, float32
and bfloat16, gradcheck, edge cases (temperatures, extreme logits, ignored
tokens, empty batches, several chunks), no (tokens, vocab) tensor, and a
GRPO step on a tiny model."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import fastact.functional as F
import fastact.nn as fnn
from conftest import DEVICES, EMULATION
from fastact.accuracy import HALF_DTYPES, mismatch, ulp
from fastact.errors import FastactTypeError, FastactValueError
from peak_memory import PeakTensorMemory

TF = torch.nn.functional


# --- references: torch ops ------------------------------------------------------------------

def ref_logprobs(x, w, t, b=None, temperature=1.0, ignore_index=-100):
    """(logprobs, entropy) with the full logits, in x's dtype."""
    z = TF.linear(x, w, b) / temperature
    logp = z.log_softmax(-1)
    counted = t != ignore_index
    picked = logp.gather(-1, torch.where(counted, t, 0)[..., None]).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    zero = torch.zeros((), dtype=logp.dtype)
    return torch.where(counted, picked, zero), torch.where(counted, entropy, zero)


def ref_distill(xs, ws, xt, wt, t=None, kind="kl", beta=0.5, temperature=1.0, ignore_index=-100,
                reduction="batchmean", hard_label_weight=0.0, bs=None, bt=None):
    zs, zt = TF.linear(xs, ws, bs), TF.linear(xt, wt, bt).detach()
    log_q, log_p = (zs / temperature).log_softmax(-1), (zt / temperature).log_softmax(-1)

    def kl(log_a, log_b):  # KL(A || B) per token
        return TF.kl_div(log_b, log_a, reduction="none", log_target=True).sum(-1)
    if kind == "kl":
        div = kl(log_p, log_q)
    elif kind == "reverse_kl":
        div = kl(log_q, log_p)
    else:
        log_m = torch.log(beta * log_p.exp() + (1 - beta) * log_q.exp())
        div = beta * kl(log_p, log_m) + (1 - beta) * kl(log_q, log_m)
    counted = torch.ones(div.shape, dtype=torch.bool) if t is None else t != ignore_index
    rows = (1 - hard_label_weight) * div
    if hard_label_weight:
        ce = TF.cross_entropy(zs.reshape(-1, zs.shape[-1]), t.reshape(-1), reduction="none",
                              ignore_index=ignore_index).view(t.shape)
        rows = rows + hard_label_weight * ce
    rows = torch.where(counted, rows, torch.zeros((), dtype=rows.dtype))
    if reduction == "none":
        return rows
    return rows.sum() if reduction == "sum" else rows.sum() / counted.sum()


def check(name, ours, theirs, ref64):
    """float32/float64: ``mismatch``'s rule (torch's result or the float64
    answer rounded, within assert_close's tolerances). A half-precision
    computation (ours returns float32 log-probs and losses, half gradients):
    max error against float64 at most twice torch's own in the half type,
    plus one ulp of the half type (a once-rounded gradient may land on the
    other neighbour of the exact value)."""
    assert ours.shape == theirs.shape == ref64.shape, (name, ours.shape, theirs.shape, ref64.shape)
    if theirs.dtype in HALF_DTYPES:
        if not ref64.numel():
            return
        ref = ref64.detach().double().cpu()
        err = (ours.detach().double().cpu() - ref).abs().max().item()
        err_torch = (theirs.detach().double().cpu() - ref).abs().max().item()
        slack = ulp(ref.abs().max(), theirs.dtype).item()
        assert err <= 2 * err_torch + slack, f"{name}: error {err:g} > 2 x torch's {err_torch:g} + {slack:g}"
    else:
        msg = mismatch(ours.detach().to(theirs.dtype), theirs.detach(), ref64.detach().to(theirs.dtype))
        assert msg is None, f"{name}: {msg}"


def leaves(*tensors, dtype=None):
    """Fresh leaf copies (optionally cast) that require grad."""
    return [None if t is None else t.detach().to(dtype or t.dtype).clone().requires_grad_(True) for t in tensors]


def head(n, h, v, *, scale=0.3, device="cpu", seed=0, ignored=(1, 5)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, generator=g, dtype=torch.float64)
    w = torch.randn(v, h, generator=g, dtype=torch.float64) * scale
    b = torch.randn(v, generator=g, dtype=torch.float64) * scale
    t = torch.randint(0, v, (n,), generator=g)
    for i in ignored:
        if i < n:
            t[i] = -100
    return x.to(device), w.to(device), b.to(device), t.to(device)


# --- the row kernels: logprob_rows (one online pass) and its backward ----------------------

_ops = torch.ops.fastact


def ref_rows(z, t, temperature, ignore_index=-100):
    """(lse, log p(target), entropy) of the rows z / T in float64 with torch
    ops (p log p = 0 where p = 0)."""
    z = z.double() / temperature
    logp = z.log_softmax(1)
    counted = t != ignore_index
    picked = logp.gather(1, torch.where(counted, t, 0)[:, None]).squeeze(1)
    p = logp.exp()
    entropy = -torch.where(p > 0, p * logp, torch.zeros((), dtype=p.dtype)).sum(1)
    return torch.logsumexp(z, 1), torch.where(counted, picked, torch.zeros((), dtype=p.dtype)), entropy


def composite_rows(z, t, temperature, ignore_index=-100):
    """The composite the kernels replaced (torch ops, several passes over
    the rows): max, shift, exp, sums, gather."""
    z = z / temperature
    m = z.amax(1) if z.shape[1] else z.new_zeros(z.shape[0])
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    z = z - m[:, None]
    e = torch.exp(z)
    s = e.sum(1)
    log_s = torch.log(s)
    counted = t != ignore_index
    picked = z.gather(1, torch.where(counted, t, 0)[:, None]).squeeze(1) - log_s
    return m + log_s, torch.where(counted, picked, torch.zeros_like(picked)), log_s - (e * z).sum(1) / s


def composite_grad_rows(z, t, lse, entropy, g_logp, g_ent, temperature, ignore_index=-100):
    """The composite backward: dz = (onehot g_logp - p (g_logp + g_ent (log p + H))) / T."""
    logp = z / temperature - lse[:, None]
    p = torch.exp(logp)
    dz = -p * (g_logp[:, None] + g_ent[:, None] * (logp + entropy[:, None]))
    counted = t != ignore_index
    dz.scatter_add_(1, torch.where(counted, t, 0)[:, None], torch.where(counted, g_logp, 0)[:, None])
    return dz / temperature


def special_rows(v, dtype, seed):
    """Rows [8, v] and targets: random, a row near +1e4 and one near -1e4
    (spread over ~60 at T = 1), -inf entries, all equal, a row whose max
    grows block after block, two ignored rows."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(8, v, generator=g, dtype=torch.float64) * 3
    z[1] = 1e4 + z[1] * 10
    z[2] = -1e4 + z[2] * 10
    z[3, ::3] = -float("inf")
    z[4] = 2.5
    z[5] = torch.linspace(-5, 40, v, dtype=torch.float64)  # the max moves to each new block
    t = torch.randint(0, v, (8,), generator=g)
    t[3] = 1  # a finite logit
    t[6], t[7] = -100, -100
    return z.to(dtype), t


def finite_rows(z):
    """The rows with -inf replaced by a float64 number so negative that its
    probability is exactly 0 (the limit torch's autograd reaches without
    0 * inf)."""
    return torch.where(torch.isinf(z) & (z < 0), -1e300, z.double())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("v", [37, 1100])  # one block of the CPU loop; three, the max moving
def test_logprob_rows_kernels(dtype, temperature, v):
    z, t = special_rows(v, dtype, seed=30 + v)
    lse, logp, ent = _ops.logprob_rows(z, t, temperature, -100, True)
    assert lse.dtype == torch.float64 and logp.dtype == ent.dtype == dtype
    r_lse, r_logp, r_ent = ref_rows(z, t, temperature)
    torch.testing.assert_close(lse, r_lse, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-9)
    torch.testing.assert_close(logp, r_logp.to(dtype))
    torch.testing.assert_close(ent, r_ent.to(dtype))
    assert not logp[6:].any()  # ignored rows: 0
    # the composite it replaced agrees (float64 rows)
    if dtype == torch.float64:
        c_lse, c_logp, c_ent = composite_rows(z, t, temperature)
        torch.testing.assert_close((lse, logp), (c_lse, c_logp))
        torch.testing.assert_close(ent[torch.arange(8) != 3], c_ent[torch.arange(8) != 3])
        assert torch.isnan(c_ent[3])  # (0 * -inf: why the kernel skips zero terms)
    # without the entropy: the same lse and log p, an empty entropy
    lse2, logp2, ent2 = _ops.logprob_rows(z, t, temperature, -100, False)
    assert torch.equal(lse2, lse) and torch.equal(logp2, logp) and ent2.shape == (0,)

    # backward against torch's autograd of the float64 reference
    g = torch.Generator().manual_seed(v)
    g_lse, g_logp, g_ent = (torch.randn(8, generator=g, dtype=torch.float64) for _ in range(3))
    g_logp[6:] = g_ent[6:] = 0  # (as the head passes them for ignored rows)
    zr = finite_rows(z).requires_grad_(True)
    want = torch.autograd.grad(sum((o * go).sum() for o, go in zip(ref_rows(zr, t, temperature),
                                                                    (g_lse, g_logp, g_ent))), zr)[0]
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-12)
    got = _ops.logprob_rows_backward(z, t, lse, ent, *(x.to(dtype) for x in (g_lse, g_logp, g_ent)), temperature,
                                     -100)
    torch.testing.assert_close(got, want.to(dtype), **tol)
    assert not got[3, ::3].any()  # -inf logits: no gradient, no NaN
    # the head's call: no grad_lse, in place over the logits
    want = torch.autograd.grad(sum((o * go).sum() for o, go in zip(ref_rows(zr, t, temperature)[1:],
                                                                    (g_logp, g_ent))), zr)[0]
    buf = z.clone()
    _ops.logprob_rows_backward_(buf, t, lse, ent, None, g_logp.to(dtype), g_ent.to(dtype), temperature, -100)
    torch.testing.assert_close(buf, want.to(dtype), **tol)
    if dtype == torch.float64:  # and the composite backward it replaced
        fin = finite_rows(z)
        torch.testing.assert_close(buf, composite_grad_rows(fin, t, lse, ent, g_logp, g_ent, temperature))
    # log p alone (no entropy gradient): d log p_t
    got = _ops.logprob_rows_backward(z, t, lse, None, None, g_logp.to(dtype), None, temperature, -100)
    want = torch.autograd.grad((ref_rows(zr, t, temperature)[1] * g_logp).sum(), zr)[0]
    torch.testing.assert_close(got, want.to(dtype), **tol)


@pytest.mark.parametrize("rows", [0, 3])
def test_logprob_rows_nothing_counted(rows):
    # empty, or every row ignored: log p 0, zero gradients
    z = torch.randn(rows, 5, generator=torch.Generator().manual_seed(31))
    t = torch.full((rows,), -7)
    lse, logp, ent = _ops.logprob_rows(z, t, 2.0, -7, True)
    assert lse.shape == logp.shape == ent.shape == (rows,) and not logp.any()
    torch.testing.assert_close(lse, torch.logsumexp(z.double() / 2, 1))
    zero = torch.zeros(rows)
    got = _ops.logprob_rows_backward(z, t, lse, ent, None, zero, zero, 2.0, -7)
    assert got.shape == z.shape and not got.any()


def test_logprob_rows_gradcheck_and_opcheck():
    z, t = special_rows(11, torch.float64, seed=32)
    z = z[[0, 2, 4, 5, 6]].requires_grad_(True)  # finite rows (gradcheck's finite differences)
    t = t[[0, 2, 4, 5, 6]]
    for temperature in (1.0, 0.5):
        assert torch.autograd.gradcheck(lambda z: _ops.logprob_rows(z, t, temperature, -100, True), (z,))
        assert torch.autograd.gradcheck(lambda z: _ops.logprob_rows(z, t, temperature, -100, False)[:2], (z,))
    lse, logp, ent = _ops.logprob_rows(z.detach(), t, 0.5, -100, True)
    g = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(33))
    torch.library.opcheck(_ops.logprob_rows.default, (z, t, 0.5, -100, True))
    torch.library.opcheck(_ops.logprob_rows.default, (z.float(), t, 2.0, -100, False))
    torch.library.opcheck(_ops.logprob_rows_backward.default, (z.detach(), t, lse, ent, g[0], g[1], g[2], 0.5, -100))
    torch.library.opcheck(_ops.logprob_rows_backward.default, (z.detach(), t, lse, None, None, g[1], None, 0.5, -100))
    torch.library.opcheck(_ops.logprob_rows_backward_.default,
                          (z.detach().clone(), t, lse, ent, None, g[1], g[2], 0.5, -100))


def test_logprob_rows_bad_arguments():
    z, t = torch.randn(4, 6), torch.tensor([0, 1, 2, 3])
    with pytest.raises(TypeError, match="fastact.logprob_rows: logits must be float32 or float64"):
        _ops.logprob_rows(z.bfloat16(), t, 1.0, -100, True)
    with pytest.raises(ValueError, match="fastact.logprob_rows: target must have shape"):
        _ops.logprob_rows(z, t[:3], 1.0, -100, True)
    with pytest.raises(ValueError, match="temperature"):
        _ops.logprob_rows(z, t, 0.0, -100, True)
    with pytest.raises(ValueError, match="grad_entropy needs the rows' entropy"):
        _ops.logprob_rows_backward(z, t, torch.zeros(4, dtype=torch.float64), None, None, None, torch.ones(4),
                                   1.0, -100)
    bad = torch.tensor([0, 6, 1, 2])
    if EMULATION:  # the CUDA kernel's device-side assert
        with pytest.raises(RuntimeError, match="device-side assert triggered.*target out of bounds"):
            _ops.logprob_rows(z, bad, 1.0, -100, True)
    else:
        with pytest.raises(IndexError, match="fastact.logprob_rows: target 6 is out of bounds"):
            _ops.logprob_rows(z, bad, 1.0, -100, True)


# --- linear_logprobs ------------------------------------------------------------------------

DTYPES = [torch.float32, torch.bfloat16, torch.float64]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk", [None, 5])
def test_logprobs_match_torch(device, dtype, temperature, bias, chunk):
    x, w, b, t = head(23, 16, 37, device=device, seed=1)
    b = b if bias else None
    g = torch.Generator().manual_seed(2)
    g_logp, g_ent = (torch.randn(23, generator=g, dtype=torch.float64).to(device) for _ in range(2))
    ours_in, torch_in, ref_in = leaves(x, w, b, dtype=dtype), leaves(x, w, b, dtype=dtype), leaves(x, w, b)
    logp, ent = F.linear_logprobs(ours_in[0], ours_in[1], t, linear_bias=ours_in[2], temperature=temperature,
                                  return_entropy=True, chunk_size=chunk)
    assert logp.dtype == ent.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    t_logp, t_ent = ref_logprobs(*torch_in[:2], t, torch_in[2], temperature)
    r_logp, r_ent = ref_logprobs(*ref_in[:2], t, ref_in[2], temperature)
    check("logprobs", logp, t_logp, r_logp)
    check("entropy", ent, t_ent, r_ent)
    assert not logp[1].item() and not ent[5].item()  # ignored tokens: 0

    def loss(lp, h):
        return (lp * g_logp.to(lp.dtype)).sum() + (h * g_ent.to(h.dtype)).sum()
    wrt = [i for i in range(3) if ours_in[i] is not None]
    grads = torch.autograd.grad(loss(logp, ent), [ours_in[i] for i in wrt])
    t_grads = torch.autograd.grad(loss(t_logp, t_ent), [torch_in[i] for i in wrt])
    r_grads = torch.autograd.grad(loss(r_logp, r_ent), [ref_in[i] for i in wrt])
    for i, ours_g, torch_g, ref_g in zip(wrt, grads, t_grads, r_grads):
        assert ours_g.dtype == dtype
        check(("grad input", "grad weight", "grad bias")[i], ours_g, torch_g, ref_g)


def test_logprobs_only_and_shapes():
    # without return_entropy: one tensor; leading shape of the target kept
    x, w, b, t = head(12, 8, 19, seed=3)
    x3, t3 = x.view(3, 4, 8), t.view(3, 4)
    logp = F.linear_logprobs(x3, w, t3, linear_bias=b, chunk_size=5)
    assert isinstance(logp, torch.Tensor) and logp.shape == (3, 4)
    torch.testing.assert_close(logp, ref_logprobs(x3, w, t3, b)[0])
    # int32 targets as well
    torch.testing.assert_close(F.linear_logprobs(x, w, t.int()), ref_logprobs(x, w, t)[0])


def test_logprobs_gradcheck():
    x, w, b, t = head(9, 5, 7, seed=4, ignored=(2,))
    x, w, b = leaves(x, w, b)
    # (the emulation lane: one temperature; its kernels are ~100x slower and
    # test_logprob_rows_gradcheck_and_opcheck covers the row op's others)
    for temperature in (0.5,) if EMULATION else (1.0, 0.5, 2.0):
        def both(x, w, b):
            return F.linear_logprobs(x, w, t, linear_bias=b, temperature=temperature, return_entropy=True,
                                     chunk_size=2)
        assert torch.autograd.gradcheck(both, (x, w, b))
        assert torch.autograd.gradcheck(lambda x, w, b: both(x, w, b)[1], (x, w, b))  # entropy alone
        assert torch.autograd.gradcheck(
            lambda x, w: F.linear_logprobs(x, w, t, temperature=temperature, chunk_size=4), (x, w))


def test_logprobs_extreme_logits():
    # logits of +-1e4 (float32): probabilities of exactly 0 and 1 in the rows;
    # everything finite and equal to float64's answer
    x, w, b, t = head(16, 8, 29, scale=1.0, seed=5)
    w = w * 3e3 / (x @ w.t()).abs().max()
    x32, w32 = leaves(x, w, dtype=torch.float32)
    x64, w64 = leaves(x32, w32, dtype=torch.float64)
    logp, ent = F.linear_logprobs(x32, w32, t, return_entropy=True, chunk_size=3, temperature=0.5)
    r_logp, r_ent = ref_logprobs(x64, w64, t, temperature=0.5)
    assert torch.isfinite(logp).all() and torch.isfinite(ent).all()
    assert (x64 @ w64.t() / 0.5).abs().max() > 5e3
    # log-probs of order 1e4: float32's relative precision of them
    torch.testing.assert_close(logp.double(), r_logp, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(ent.double(), r_ent, rtol=1e-6, atol=1e-5)
    gx, gw = torch.autograd.grad(logp.sum() + ent.sum(), (x32, w32))
    rx, rw = torch.autograd.grad(r_logp.sum() + r_ent.sum(), (x64, w64))
    assert torch.isfinite(gx).all() and torch.isfinite(gw).all()
    torch.testing.assert_close(gx.double(), rx, rtol=1e-5, atol=1e-5 * rx.abs().max().item())
    torch.testing.assert_close(gw.double(), rw, rtol=1e-5, atol=1e-5 * rw.abs().max().item())


@pytest.mark.parametrize("tokens", [0, 4])
def test_logprobs_nothing_counted(tokens):
    # empty batch, or every token ignored: zeros, zero gradients
    x, w, b, _ = head(tokens, 6, 11, seed=6)
    x, w, b = leaves(x, w, b)
    t = torch.full((tokens,), -7)
    logp, ent = F.linear_logprobs(x, w, t, linear_bias=b, return_entropy=True, ignore_index=-7)
    assert logp.shape == ent.shape == (tokens,)
    assert not logp.any() and not ent.any()
    gx, gw, gb = torch.autograd.grad(logp.sum() + 2 * ent.sum(), (x, w, b))
    assert gx.shape == x.shape and gw.shape == w.shape and gb.shape == b.shape
    assert not gx.any() and not gw.any() and not gb.any()


def test_logprobs_bf16_under_one_chunk_and_several():
    # the chunking adds no math: each chunk's outputs are exactly the row
    # kernel's on that chunk's logits (a bf16 head on the CPU: the float32
    # product of the widened operands). Across chunk sizes they agree to
    # float32 rounding, not bit for bit: the CPU matmul's rows themselves
    # differ in the last bit between a 40-row and a 3-row product.
    x, w, b, t = head(40, 16, 33, seed=7)
    x, w = x.bfloat16(), w.bfloat16()
    one = F.linear_logprobs(x, w, t, return_entropy=True, chunk_size=40)
    many = F.linear_logprobs(x, w, t, return_entropy=True, chunk_size=3)
    for chunk, (logp, ent) in ((40, one), (3, many)):
        for s in range(0, 40, chunk):
            rows = t[s:s + chunk]
            _, r_logp, r_ent = _ops.logprob_rows(torch.mm(x[s:s + chunk].float(), w.float().t()), rows, 1.0, -100,
                                                 True)
            assert torch.equal(logp[s:s + chunk], r_logp), (chunk, s)
            assert torch.equal(ent[s:s + chunk], torch.where(rows != -100, r_ent, torch.zeros(()))), (chunk, s)
    for a, c in zip(one, many):
        torch.testing.assert_close(a, c)


class LargestTensor(TorchDispatchMode):
    """The largest number of elements of any tensor an operator returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_tokens_by_vocab_tensor():
    n, h, v, chunk = 1024, 16, 3000, 32
    x, w, b, t = head(n, h, v, seed=8)
    x, w, b = leaves(x, w, b, dtype=torch.float32)
    xt, wt = torch.randn(n, 24), torch.randn(v, 24) / 5
    logits_bytes, chunk_bytes = n * v * 4, chunk * v * 4
    # (the inputs count too: the tracker sees them first inside the block)
    known_bytes = 2 * (x.numel() + w.numel() + b.numel()) * 4 + (xt.numel() + wt.numel()) * 4 + t.numel() * 9
    # (the emulation lane leaves the log-probs out: its emulated row kernels
    # take minutes at this size, and what they allocate, (rows,) outputs and
    # the gradient written over the chunk's logits, is the CPU kernels')
    for name, step in [
        *([] if EMULATION else [
            ("logprobs", lambda: sum(o.sum() for o in F.linear_logprobs(x, w, t, linear_bias=b, return_entropy=True,
                                                                        chunk_size=chunk)))]),
        *[(kind, lambda kind=kind: F.linear_distill_loss(x, w, xt, wt, t, kind=kind, chunk_size=chunk,
                                                         hard_label_weight=0.5, student_bias=b))
          for kind in ("kl", "reverse_kl", "jsd")]]:
        x.grad = w.grad = b.grad = None
        with LargestTensor() as big, PeakTensorMemory() as peak:
            step().backward()
        # nothing bigger than the weights or one chunk's logits
        assert big.largest <= max(v * 24, chunk * v), (name, big.largest)
        # inputs, gradients and a few chunk buffers (logprobs 2, distill at most 6), far below the logits
        assert peak.peak <= known_bytes + (2 if name == "logprobs" else 6) * chunk_bytes + 4 * n * 8, \
            (name, (peak.peak - known_bytes) / chunk_bytes)
        assert peak.peak - known_bytes < 0.25 * logits_bytes
    # while the unfused computation holds several (n, v) tensors
    with PeakTensorMemory() as unfused:
        r_logp, r_ent = ref_logprobs(x, w, t, b)
        (r_logp.sum() + r_ent.sum()).backward()
    assert unfused.peak > 2 * logits_bytes


def test_logprobs_saves_no_logits():
    n, h, v = 256, 16, 2000
    x, w, _, t = head(n, h, v, seed=9)
    x, w = leaves(x, w, dtype=torch.float32)
    saved = []

    def pack(s):
        saved.append(s.numel() * s.element_size())
        return s
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda s: s):
        F.linear_logprobs(x, w, t, return_entropy=True)
    extra = sum(saved) - x.numel() * 4 - w.numel() * 4 - t.numel() * 8
    assert extra <= n * 8 + n * 4, extra  # the (n,) float64 logsumexp and the float32 entropy


def test_grpo_step_matches_torch():
    """A GRPO step (clipped ratio to the old policy's log-probs, advantages
    per sequence, an entropy bonus, prompt tokens masked) on a tiny LM: the
    loss and every parameter gradient equal those of the same loss on the
    full logits."""
    torch.manual_seed(10)
    vocab, hidden, batch, length = 41, 12, 3, 9

    def model():
        torch.manual_seed(11)
        return torch.nn.ModuleDict(dict(emb=torch.nn.Embedding(vocab, hidden), proj=torch.nn.Linear(hidden, hidden),
                                        lm_head=torch.nn.Linear(hidden, vocab, bias=False)))
    ours_m, ref_m = model(), model()
    tokens = torch.randint(0, vocab, (batch, length + 1))
    targets = tokens[:, 1:].clone()
    targets[:, :3] = -100  # the prompt
    advantages = torch.randn(batch, 1)
    old_logp = torch.randn(batch, length) * 0.1 - 3

    def grpo(logp, entropy, counted):
        ratio = torch.exp(logp - old_logp)
        per_token = -torch.minimum(ratio * advantages, ratio.clamp(0.8, 1.2) * advantages) - 0.01 * entropy
        return (per_token * counted).sum() / counted.sum()

    def hidden_states(m):
        return torch.tanh(m["proj"](m["emb"](tokens[:, :-1])))
    counted = targets != -100
    h = hidden_states(ours_m)
    logp, ent = F.linear_logprobs(h, ours_m["lm_head"].weight, targets, return_entropy=True, chunk_size=4)
    loss = grpo(logp, ent, counted)
    loss.backward()
    r_logp, r_ent = ref_logprobs(hidden_states(ref_m), ref_m["lm_head"].weight, targets)
    r_loss = grpo(r_logp, r_ent, counted)
    r_loss.backward()
    torch.testing.assert_close(loss, r_loss)
    for (name, p), q in zip(ours_m.named_parameters(), ref_m.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    assert ours_m["lm_head"].weight.grad.abs().sum() > 0


# --- linear_distill_loss --------------------------------------------------------------------

def distill_inputs(n=19, hs=10, ht=14, v=31, seed=12, device="cpu"):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)
    xs, ws = randn(n, hs), randn(v, hs) / 3
    xt, wt = randn(n, ht), randn(v, ht) / 3
    bs, bt = randn(v) / 3, randn(v) / 3
    t = torch.randint(0, v, (n,), generator=g)
    t[[i for i in (2, 7) if i < n]] = -100
    return [a.to(device) for a in (xs, ws, bs, xt, wt, bt, t)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
@pytest.mark.parametrize("opts", [dict(), dict(temperature=2.0, hard_label_weight=0.25, bias=True),
                                  dict(temperature=0.5, beta=0.2, chunk_size=4)],
                         ids=["plain", "T2-hard-bias", "T05-chunk"])
def test_distill_matches_torch(device, dtype, kind, reduction, opts):
    opts = dict(opts)
    bias = opts.pop("bias", False)
    chunk = opts.pop("chunk_size", None)
    xs, ws, bs, xt, wt, bt, t = distill_inputs(device=device)
    if not bias:
        bs = bt = None
    o_in, t_in, r_in = leaves(xs, ws, bs, dtype=dtype), leaves(xs, ws, bs, dtype=dtype), leaves(xs, ws, bs)
    teacher = [None if a is None else a.to(dtype) for a in (xt, wt, bt)]
    ours = F.linear_distill_loss(o_in[0], o_in[1], teacher[0], teacher[1], t, kind=kind, reduction=reduction,
                                 chunk_size=chunk, student_bias=o_in[2], teacher_bias=teacher[2], **opts)
    theirs = ref_distill(t_in[0], t_in[1], teacher[0], teacher[1], t, kind=kind, reduction=reduction, bs=t_in[2],
                         bt=teacher[2], **opts)
    ref = ref_distill(r_in[0], r_in[1], xt, wt, t, kind=kind, reduction=reduction, bs=r_in[2], bt=bt, **opts)
    assert ours.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    check("loss", ours, theirs, ref)
    go = torch.linspace(0.5, 1.5, ours.numel(), dtype=torch.float64, device=device).view(ours.shape)
    wrt = [i for i in range(3) if o_in[i] is not None]
    grads = torch.autograd.grad(ours, [o_in[i] for i in wrt], go.to(ours.dtype))
    t_grads = torch.autograd.grad(theirs, [t_in[i] for i in wrt], go.to(theirs.dtype))
    r_grads = torch.autograd.grad(ref, [r_in[i] for i in wrt], go)
    for i, a, b, c in zip(wrt, grads, t_grads, r_grads):
        assert a.dtype == dtype
        check(("grad student_input", "grad student_weight", "grad student_bias")[i], a, b, c)


def test_distill_gradcheck_and_teacher_gets_no_grad():
    xs, ws, bs, xt, wt, bt, t = distill_inputs(n=7, hs=4, ht=6, v=9, seed=13)
    xs, ws, bs, xt, wt = leaves(xs, ws, bs, xt, wt)
    for kind in ("kl", "reverse_kl", "jsd"):
        for kw in (dict(chunk_size=2), dict(temperature=0.5, hard_label_weight=0.3, reduction="sum", beta=0.7),
                   dict(temperature=2.0, reduction="none", chunk_size=3)):
            def loss(a, b, c):
                return F.linear_distill_loss(a, b, xt, wt, t, kind=kind, student_bias=c, **kw)
            assert torch.autograd.gradcheck(loss, (xs, ws, bs)), (kind, kw)
        out = F.linear_distill_loss(xs, ws, xt, wt, t, kind=kind)
        gxt, gwt = torch.autograd.grad(out, (xt, wt), allow_unused=True)
        assert gxt is None and gwt is None  # the teacher is not in the graph


def test_distill_properties():
    # KL(P||P) = 0; JSD with beta in {0, 1} is 0; target=None counts every
    # token; hard_label_weight=1 is the cross-entropy
    xs, ws, bs, xt, wt, bt, t = distill_inputs(seed=14)
    zero = torch.zeros((), dtype=torch.float64)
    for kind in ("kl", "reverse_kl", "jsd"):
        torch.testing.assert_close(F.linear_distill_loss(xs, ws, xs, ws, t, kind=kind), zero)
    for beta in (0.0, 1.0):
        torch.testing.assert_close(F.linear_distill_loss(xs, ws, xt, wt, t, kind="jsd", beta=beta), zero)
    all_tokens = F.linear_distill_loss(xs, ws, xt, wt, kind="jsd", reduction="none")
    torch.testing.assert_close(all_tokens, ref_distill(xs, ws, xt, wt, kind="jsd", reduction="none"))
    assert (all_tokens > 0).all()
    torch.testing.assert_close(F.linear_distill_loss(xs, ws, xt, wt, t, hard_label_weight=1.0),
                               TF.cross_entropy(xs @ ws.t(), t))


@pytest.mark.parametrize("tokens", [0, 5])
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
def test_distill_nothing_counted(tokens, reduction):
    xs, ws, bs, xt, wt, bt, _ = distill_inputs(n=tokens, seed=15)
    xs, ws = leaves(xs, ws)
    t = torch.full((tokens,), -100)
    out = F.linear_distill_loss(xs, ws, xt, wt, t, reduction=reduction, hard_label_weight=0.5)
    if reduction == "batchmean":
        assert out.isnan()  # a mean over no token, as torch's cross_entropy
    else:
        assert out.shape == ((tokens,) if reduction == "none" else ()) and not out.any()
    gx, gw = torch.autograd.grad(out.sum(), (xs, ws))
    assert gx.shape == xs.shape and not gx.any() and not gw.any()


def test_bad_arguments():
    xs, ws, bs, xt, wt, bt, t = distill_inputs(seed=16)
    cases = [
        (dict(kind="forward_kl"), "kind"), (dict(reduction="mean"), "reduction"), (dict(beta=1.5), "beta"),
        (dict(temperature=0.0), "temperature"), (dict(hard_label_weight=2.0), "hard_label_weight"),
        (dict(chunk_size=0), "chunk_size"),
    ]
    for kw, what in cases:
        with pytest.raises(FastactValueError, match=f"fastact.linear_distill_loss.*{what}"):
            F.linear_distill_loss(xs, ws, xt, wt, t, **kw)
    with pytest.raises(ValueError, match="vocabularies differ"):
        F.linear_distill_loss(xs, ws, xt, wt[:-1], t)
    with pytest.raises(ValueError, match="leading"):
        F.linear_distill_loss(xs, ws, xt[:-1], wt, t)
    with pytest.raises(ValueError, match="hidden size"):
        F.linear_distill_loss(xs, ws[:, :-1], xt, wt, t)
    with pytest.raises(ValueError, match="needs a target"):
        F.linear_distill_loss(xs, ws, xt, wt, hard_label_weight=0.5)
    with pytest.raises(RuntimeError, match="target must have"):  # (also a RuntimeError, as torch's)
        F.linear_distill_loss(xs, ws, xt, wt, t[:-1])
    x, w, b, t = head(6, 4, 9)
    for args, kw, what in [((x, w[:, :-1], t), {}, "hidden size"), ((x, w, t[:-1]), {}, "target"),
                           ((x, w, t), dict(linear_bias=b[:-1]), "bias"), ((x, w.float(), t), {}, "one dtype"),
                           ((x, w, t), dict(temperature=-1.0), "temperature"),
                           ((x, w, t), dict(chunk_size=-2), "chunk_size")]:
        with pytest.raises(FastactValueError, match=f"fastact.linear_logprobs.*{what}"):
            F.linear_logprobs(*args, **kw)
    with pytest.raises(FastactTypeError, match="class indices"):
        F.linear_logprobs(x, w, t.double())
    with pytest.raises(FastactTypeError, match="floating-point"):
        F.linear_logprobs(x.long(), w.long(), t)


def test_modules():
    x, w, b, t = head(10, 6, 13, seed=17)
    m = fnn.LinearLogprobs(temperature=0.7, return_entropy=True, chunk_size=3)
    for a, c in zip(m(x, w, t, b), ref_logprobs(x, w, t, b, 0.7)):
        torch.testing.assert_close(a, c)
    assert "temperature=0.7" in repr(m)
    xs, ws, bs, xt, wt, bt, t = distill_inputs(seed=18)
    d = fnn.LinearDistillLoss(kind="jsd", beta=0.3, temperature=1.5, reduction="sum", chunk_size=4,
                              hard_label_weight=0.2)
    torch.testing.assert_close(d(xs, ws, xt, wt, t, bs, bt),
                               ref_distill(xs, ws, xt, wt, t, kind="jsd", beta=0.3, temperature=1.5,
                                           reduction="sum", hard_label_weight=0.2, bs=bs, bt=bt))


def test_signatures_follow_api():
    # shared/API.md: names, order, keyword-only options and defaults
    import inspect

    def sig(fn):
        return [(p.name, p.kind == p.KEYWORD_ONLY, p.default) for p in inspect.signature(fn).parameters.values()]
    e = inspect.Parameter.empty
    assert sig(F.linear_logprobs) == [
        ("input", False, e), ("linear_weight", False, e), ("target", False, e), ("linear_bias", True, None),
        ("temperature", True, 1.0), ("return_entropy", True, False), ("ignore_index", True, -100),
        ("chunk_size", True, None)]
    assert sig(F.linear_distill_loss) == [
        ("student_input", False, e), ("student_weight", False, e), ("teacher_input", False, e),
        ("teacher_weight", False, e), ("target", False, None), ("kind", True, "kl"), ("beta", True, 0.5),
        ("temperature", True, 1.0), ("ignore_index", True, -100), ("reduction", True, "batchmean"),
        ("chunk_size", True, None), ("hard_label_weight", True, 0.0), ("student_bias", True, None),
        ("teacher_bias", True, None)]
    assert {"linear_logprobs", "linear_distill_loss"} <= set(F.__all__)
    assert {"LinearLogprobs", "LinearDistillLoss"} <= set(fnn.__all__)
    assert [n for n, *_ in sig(fnn.LinearLogprobs.forward)] == ["self", "input", "linear_weight", "target",
                                                                 "linear_bias"]
    assert [n for n, *_ in sig(fnn.LinearDistillLoss.forward)] == [
        "self", "student_input", "student_weight", "teacher_input", "teacher_weight", "target", "student_bias",
        "teacher_bias"]


def _sharded_head_worker(rank, world):
    """In a spawned gloo rank: linear_logprobs of a head sharded on the
    vocabulary (the vocabulary-parallel form) and of the plain head, values
    and gradients, float64 and float32, two temperatures; the distillation
    loss (a gathered head); returns (name, ours, reference) triples."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    out = []
    for dtype in (torch.float64, torch.float32):
        x, w, b, t = head(9, 6, 11, scale=1.0, seed=19)  # 11 classes: uneven shards; tokens 1 and 5 ignored
        x, w, b = (a.to(dtype) for a in (x, w, b))
        g = torch.Generator().manual_seed(20)
        g_logp, g_ent = (torch.randn(9, generator=g, dtype=dtype) for _ in range(2))
        for temperature, entropy in ((1.0, True), (0.5, True), (2.0, False)):
            label = f"{dtype} T={temperature}"

            def run(x, w, b):
                res = F.linear_logprobs(x, w, t, linear_bias=b, temperature=temperature, return_entropy=entropy,
                                        chunk_size=4)
                logp, ent = res if entropy else (res, torch.zeros(()))
                return logp, ent, (logp * g_logp).sum() + (ent * g_ent).sum()
            a = leaves(x, w, b)
            logp, ent, loss = run(*a)
            ref = torch.autograd.grad(loss, a)
            xd = x.clone().requires_grad_(True)
            wd, bd = (distribute_tensor(u, mesh, [Shard(0)]).requires_grad_(True) for u in (w, b))
            logp_d, ent_d, loss_d = run(xd, wd, bd)
            got = torch.autograd.grad(loss_d, (xd, wd, bd))
            # the weight's and bias's gradients stay shards of the head
            assert all(isinstance(u, DTensor) and u.placements == (Shard(0),) for u in got[1:]), label
            out += [(f"{label} logprobs", logp_d, logp), (f"{label} entropy", ent_d, ent),
                    (f"{label} grad input", got[0], ref[0]), (f"{label} grad weight", got[1].full_tensor(), ref[1]),
                    (f"{label} grad bias", got[2].full_tensor(), ref[2])]
    # linear_distill_loss gathers a sharded head
    xs, ws, bs, xt, wt, bt, t = distill_inputs(n=9, v=11, seed=19)
    a = leaves(xs, ws, bs)
    loss = F.linear_distill_loss(a[0], a[1], xt, wt, t, kind="jsd", student_bias=a[2], teacher_bias=bt)
    ref = torch.autograd.grad(loss, a)
    x = xs.clone().requires_grad_(True)
    wd, bd = (distribute_tensor(u, mesh, [Shard(0)]).requires_grad_(True) for u in (ws, bs))
    loss_d = F.linear_distill_loss(x, wd, xt, distribute_tensor(wt, mesh, [Shard(0)]), t, kind="jsd",
                                   student_bias=bd, teacher_bias=distribute_tensor(bt, mesh, [Shard(0)]))
    got = torch.autograd.grad(loss_d, (x, wd, bd))
    out += [("distill", loss_d, loss), ("distill grad input", got[0], ref[0]),
            ("distill grad weight", got[1].full_tensor(), ref[1]), ("distill grad bias", got[2].full_tensor(), ref[2])]
    try:
        F.linear_logprobs(distribute_tensor(xs, mesh, [Shard(0)]), wd, t)
        refused = False
    except NotImplementedError as e:
        refused = "fastact.linear_logprobs" in str(e)
    return out, refused


@pytest.mark.skipif(EMULATION, reason="multi-process runs: regular lane only")
@pytest.mark.parametrize("world", [2, 4])
def test_vocabulary_sharded_dtensor_head(world):
    # a DTensor weight sharded on the vocabulary (gloo ranks): linear_logprobs
    # runs vocabulary-parallel and gives the plain head's values and
    # gradients (the weight's as shards); linear_distill_loss (gathered) too
    import torch.distributed as dist
    if not dist.is_available():
        pytest.skip("no torch.distributed")
    from dist_util import spawn
    for rank, (checks, refused) in enumerate(spawn(_sharded_head_worker, world, timeout=240)):
        assert refused, rank  # a DTensor input is refused
        for name, ours, ref in checks:
            torch.testing.assert_close(ours, ref, msg=lambda m, name=name: f"rank {rank}, {name}: {m}")
