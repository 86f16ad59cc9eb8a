"""linear_cross_entropy against the unfused matmul + cross_entropy, its saved
memory, and vocab_parallel_cross_entropy over real gloo process groups."""
from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fastact.functional as F
import fastact.nn as fnn
from fastact.accuracy import cross_entropy_error, sum_error, ulp, within

TF = torch.nn.functional


def unfused(h, w, t, b=None, z_loss=0.0, softcap=None, **kw):
    z = h @ w.t() + (b if b is not None else 0)
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    red = kw.pop("reduction", "mean")
    loss = TF.cross_entropy(z.reshape(-1, z.shape[-1]), t.reshape(-1), reduction="none", **kw)
    counted = (t.reshape(-1) != kw.get("ignore_index", -100)).to(loss.dtype)
    loss = loss + z_loss * torch.logsumexp(z.reshape(-1, z.shape[-1]), -1) ** 2 * counted
    if red == "none":
        return loss.view(t.shape)
    return loss.sum() if red == "sum" else loss.sum() / counted.sum()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", [dict(), dict(label_smoothing=0.2), dict(z_loss=1e-3, softcap=5.0),
                                  dict(ignore_index=3)], ids=["plain", "smooth", "zloss-softcap", "ignore3"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk", [None, 7, 64])
def test_matches_unfused(reduction, opts, bias, chunk, device):
    torch.manual_seed(0)
    h = torch.randn(2, 19, 24, device=device, requires_grad=True)
    w = (torch.randn(53, 24, device=device) / 5).requires_grad_(True)
    b = torch.randn(53, device=device, requires_grad=True) if bias else None
    t = torch.randint(0, 53, (2, 19), device=device)
    t[0, :3] = opts.get("ignore_index", -100)
    ours = F.linear_cross_entropy(h, w, t, b, reduction=reduction, chunk_size=chunk, **opts)
    ref = unfused(h, w, t, b, reduction=reduction, **opts)
    torch.testing.assert_close(ours, ref)
    g = torch.randn_like(ref)
    inputs = (h, w) + ((b,) if bias else ())
    for go, gr in zip(torch.autograd.grad(ours, inputs, g), torch.autograd.grad(ref, inputs, g)):
        torch.testing.assert_close(go, gr)


def test_bf16_error_against_float64():
    torch.manual_seed(1)
    h = torch.randn(64, 32).bfloat16()
    w = (torch.randn(500, 32) / 4).bfloat16()
    t = torch.randint(0, 500, (64,))
    ref = unfused(h.double(), w.double(), t)
    err = (F.linear_cross_entropy(h, w, t).double() - ref).abs().item()
    err_torch = (unfused(h, w, t).double() - ref).abs().item()
    # the bf16 loss: ours may round to the bf16 neighbour of torch's
    assert err <= 2 * err_torch + ulp(ref, torch.bfloat16).item(), (err, err_torch)


def _bf16_weight_grad_errors(chunk, accum_dtype):
    """Relative error vs float64 of grad_weight: fastact's and torch's unfused."""
    torch.manual_seed(2)
    h = torch.randn(512, 64).bfloat16()
    w = (torch.randn(700, 64) / 4).bfloat16()
    t = torch.randint(0, 700, (512,))
    w64 = w.double().requires_grad_(True)
    unfused(h.double(), w64, t).backward()

    def err(g):
        return ((g.double() - w64.grad).norm() / w64.grad.norm()).item()
    wt = w.clone().requires_grad_(True)
    unfused(h, wt, t).backward()
    wf = w.clone().requires_grad_(True)
    F.linear_cross_entropy(h, wf, t, chunk_size=chunk, accum_dtype=accum_dtype).backward()
    assert wf.grad.dtype == torch.bfloat16
    return err(wf.grad), err(wt.grad)


@pytest.mark.parametrize("chunk", [512, 32])
def test_bf16_weight_grad_float32_accumulation(chunk):
    # accum_dtype=float32: as precise as the unfused matmul + cross_entropy
    ours, theirs = _bf16_weight_grad_errors(chunk, torch.float32)
    assert ours <= 2 * theirs, (ours, theirs)


def test_bf16_weight_grad_default_accumulation():
    # default: accumulated in bf16, one rounding per chunk. One chunk is the
    # unfused computation. k = 16 chunks add k independent roundings of the
    # running sum, each uniform within half a bf16 ulp (rms 2^-8 / sqrt(12)
    # relative): sqrt(k) of those (with a 1.5 margin) on top of torch's error.
    one, theirs = _bf16_weight_grad_errors(512, None)
    assert one <= 2 * theirs, (one, theirs)
    many, theirs = _bf16_weight_grad_errors(32, None)
    assert many <= theirs + 1.5 * 16 ** 0.5 * 2.0 ** -8 / 12 ** 0.5, (many, theirs)


def test_autocast_and_dtypes():
    h = torch.randn(40, 16, requires_grad=True)
    w = (torch.randn(90, 16) / 4).requires_grad_(True)
    t = torch.randint(0, 90, (40,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = F.linear_cross_entropy(h, w, t, chunk_size=16)
        ref = TF.cross_entropy(TF.linear(h, w), t)
    assert ours.dtype == ref.dtype == torch.float32
    gh, gw = torch.autograd.grad(ours, (h, w))
    assert gh.dtype == gw.dtype == torch.float32
    # Against float64, elementwise. Under autocast each matmul rounds its
    # inputs and its output to bf16 (u = 2^-8 each): logits z = h w^T off by
    # 3 u |h| |w|^T; the float32 softmax adds cross_entropy_error's part; the
    # gradients G w and G^T h (G the logits' gradient) carry G's error and
    # three more bf16 roundings, plus their float32 sums over V and N terms.
    h64, w64 = h.detach().double().requires_grad_(True), w.detach().double().requires_grad_(True)
    z64 = TF.linear(h64, w64)
    ref64 = TF.cross_entropy(z64, t)
    gh64, gw64, G = torch.autograd.grad(ref64, (h64, w64, z64))
    u = 2.0 ** -8
    habs, wabs, G = h64.detach().abs(), w64.detach().abs(), G.abs()
    loss_bound, g_err = cross_entropy_error(z64.detach(), t, torch.float32, logit_err=3 * u * habs @ wabs.t())
    assert within("loss", ours, ref64, loss_bound) is None
    assert within("grad hidden", gh, gh64, (g_err + 3 * u * G) @ wabs + sum_error(torch.float32, 90, G @ wabs)) is None
    assert within("grad weight", gw, gw64, (g_err + 3 * u * G).t() @ habs + sum_error(torch.float32, 40, G.t() @ habs)) is None
    with pytest.raises(ValueError, match="one dtype"):
        F.linear_cross_entropy(h, w.double(), t)
    with pytest.raises(ValueError, match="accum_dtype"):
        F.linear_cross_entropy(h, w, t, accum_dtype=torch.int32)


def test_gradcheck_and_module():
    h = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 6, -100, 2, 2])
    assert torch.autograd.gradcheck(lambda a, b: F.linear_cross_entropy(a, b, t, chunk_size=2, label_smoothing=0.1), (h, w))
    m = fnn.LinearCrossEntropyLoss(label_smoothing=0.1, chunk_size=3)
    torch.testing.assert_close(m(h, w, t), unfused(h, w, t, label_smoothing=0.1))


def test_saves_no_logits():
    n, hdim, v = 512, 64, 4000
    h = torch.randn(n, hdim, requires_grad=True)
    w = torch.randn(v, hdim, requires_grad=True)
    t = torch.randint(0, v, (n,))
    saved = []

    def pack(x):
        saved.append(x.numel() * x.element_size())
        return x
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        F.linear_cross_entropy(h, w, t)
    logits_bytes = n * v * 4
    extra = sum(saved) - h.numel() * 4 - w.numel() * 4 - t.numel() * 8
    assert extra < 0.01 * logits_bytes, (extra, logits_bytes)


def test_bad_input():
    with pytest.raises(ValueError, match="fastact.linear_cross_entropy"):
        F.linear_cross_entropy(torch.randn(4, 3), torch.randn(5, 4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="reduction"):
        F.linear_cross_entropy(torch.randn(4, 3), torch.randn(5, 3), torch.zeros(4, dtype=torch.long), reduction="x")


def _vocab_parallel_worker(rank, world, init_file, result_file, backend="gloo"):
    device = "cpu"
    if backend == "nccl":
        device = f"cuda:{rank}"
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    n, v = 13, 8 * world
    full = torch.randn(n, v, dtype=torch.float64).to(device)
    target = torch.randint(0, v, (n,)).to(device)
    target[2] = -100
    out = {}
    for case, kw in {"plain": {}, "smooth": dict(label_smoothing=0.2), "zloss": dict(z_loss=1e-2),
                     "sum": dict(reduction="sum"), "none": dict(reduction="none")}.items():
        sl = full[:, rank * 8:(rank + 1) * 8].clone().requires_grad_(True)
        loss = F.vocab_parallel_cross_entropy(sl, target, **kw)
        g = torch.linspace(0.5, 1.5, loss.numel(), dtype=torch.float64, device=device).view(loss.shape) \
            if loss.dim() else None
        loss.backward(g)
        ref_in = full.clone().requires_grad_(True)
        ref = unfused(ref_in, torch.eye(v, dtype=torch.float64, device=device), target, **kw)
        ref.backward(g)
        out[case] = (torch.allclose(loss, ref), torch.allclose(sl.grad, ref_in.grad[:, rank * 8:(rank + 1) * 8]))
    torch.save(out, f"{result_file}.{rank}")
    dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_vocab_parallel_matches_cross_entropy(world):
    with tempfile.TemporaryDirectory() as tmp:
        init_file, result = os.path.join(tmp, "init"), os.path.join(tmp, "result")
        mp.spawn(_vocab_parallel_worker, args=(world, init_file, result), nprocs=world, join=True)
        for rank in range(world):
            res = torch.load(f"{result}.{rank}")
            for case, (loss_ok, grad_ok) in res.items():
                assert loss_ok and grad_ok, (rank, case, loss_ok, grad_ok)


@pytest.mark.skipif(not (torch.cuda.is_available() and dist.is_nccl_available()), reason="no CUDA device / NCCL")
def test_vocab_parallel_nccl():
    # one rank per GPU (NCCL does not share a device between ranks): on a
    # single-GPU machine this checks the CUDA path of the all-reduces
    world = min(2, torch.cuda.device_count())
    with tempfile.TemporaryDirectory() as tmp:
        init_file, result = os.path.join(tmp, "init"), os.path.join(tmp, "result")
        mp.spawn(_vocab_parallel_worker, args=(world, init_file, result, "nccl"), nprocs=world, join=True)
        for rank in range(world):
            res = torch.load(f"{result}.{rank}")
            for case, (loss_ok, grad_ok) in res.items():
                assert loss_ok and grad_ok, (rank, case, loss_ok, grad_ok)
