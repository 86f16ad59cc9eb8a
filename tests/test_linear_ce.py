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
    assert err <= 2 * err_torch + 1e-3, (err, err_torch)


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


def _vocab_parallel_worker(rank, world, init_file, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    n, v = 13, 8 * world
    full = torch.randn(n, v, dtype=torch.float64)
    target = torch.randint(0, v, (n,))
    target[2] = -100
    out = {}
    for case, kw in {"plain": {}, "smooth": dict(label_smoothing=0.2), "zloss": dict(z_loss=1e-2),
                     "sum": dict(reduction="sum"), "none": dict(reduction="none")}.items():
        sl = full[:, rank * 8:(rank + 1) * 8].clone().requires_grad_(True)
        loss = F.vocab_parallel_cross_entropy(sl, target, **kw)
        g = torch.linspace(0.5, 1.5, loss.numel(), dtype=torch.float64).view(loss.shape) if loss.dim() else None
        loss.backward(g)
        ref_in = full.clone().requires_grad_(True)
        ref = unfused(ref_in, torch.eye(v, dtype=torch.float64), target, **kw)
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
