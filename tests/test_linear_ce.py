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
    ours = F.linear_cross_entropy(h.flatten(0, 1), w, t.flatten(), linear_bias=b, reduction=reduction,
                                  chunk_size=chunk, **opts)
    ref = unfused(h, w, t, b, reduction=reduction, **opts)
    if reduction == "none":
        ref = ref.flatten()
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
    m = fnn.LinearCrossEntropyLoss(4, 7, label_smoothing=0.1, chunk_size=3, dtype=torch.float64)
    with torch.no_grad():
        m.linear.weight.copy_(w)
    torch.testing.assert_close(m(h, t), unfused(h, w, t, label_smoothing=0.1))


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


HAS_TORCH_LCE = hasattr(TF, "linear_cross_entropy")


def reference_lce(input, linear_weight, target, *, linear_bias=None, weight=None, ignore_index=None, **kw):
    """torch 2.14's definition: cross_entropy(linear(...)) on logits (N, C, d1, ...)."""
    classes, out = linear_weight.shape[0], linear_weight.shape[1:-1]
    z = TF.linear(input, linear_weight.reshape(-1, input.shape[-1]),
                  linear_bias.reshape(-1) if linear_bias is not None else None)
    z = z.reshape(*input.shape[:-1], classes, *out)
    return TF.cross_entropy(z, target, weight=weight, ignore_index=-100 if ignore_index is None else ignore_index,
                            **kw)


LCE_CASES = {
    "plain": dict(), "sum": dict(reduction="sum"), "none": dict(reduction="none"),
    "class-weight": dict(weight=True), "class-weight-none": dict(weight=True, reduction="none"),
    "ignore1-weight": dict(ignore_index=1, weight=True), "bias": dict(bias=True),
    "bias-weight-smooth-sum": dict(bias=True, weight=True, label_smoothing=0.2, reduction="sum"),
}


@pytest.mark.parametrize("case,prob", [(c, p) for c in sorted(LCE_CASES) for p in (False, True)
                                       if not (p and "ignore_index" in LCE_CASES[c])])  # (torch rejects those)
@pytest.mark.parametrize("layout", ["NH", "H", "K-dim"])
@pytest.mark.parametrize("chunk", [None, 2])
def test_matches_torch_linear_cross_entropy(case, prob, layout, chunk):
    # torch 2.14's signature and semantics: positional (input, linear_weight,
    # target), weight= the class weight, (C, d1, ..., H) linear weights,
    # probability targets (with their gradient)
    opts = dict(LCE_CASES[case])
    torch.manual_seed(3)
    classes, hdim = 6, 5
    out = (3,) if layout == "K-dim" else ()
    x = torch.randn(*(() if layout == "H" else (7,)), hdim, dtype=torch.float64)
    w = torch.randn(classes, *out, hdim, dtype=torch.float64)
    logits_shape = (*x.shape[:-1], classes, *out)
    if prob:
        t = torch.softmax(torch.randn(logits_shape, dtype=torch.float64), x.dim() - 1)
    else:
        t = torch.randint(0, classes, (*x.shape[:-1], *out))
    kw = {k: v for k, v in opts.items() if k not in ("weight", "bias")}
    tensors = dict(input=x, linear_weight=w, target=t)
    if opts.get("bias"):
        tensors["linear_bias"] = torch.randn(classes, *out, dtype=torch.float64)
    if opts.get("weight"):
        kw["weight"] = torch.rand(classes, dtype=torch.float64) + 0.5
    a_in = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in tensors.items()}
    b_in = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in tensors.items()}
    ours = F.linear_cross_entropy(a_in.pop("input"), a_in.pop("linear_weight"), a_in.pop("target"), **a_in, **kw,
                                  chunk_size=chunk)
    ref_fn = TF.linear_cross_entropy if HAS_TORCH_LCE else reference_lce
    ref = ref_fn(b_in.pop("input"), b_in.pop("linear_weight"), b_in.pop("target"), **b_in, **kw)
    torch.testing.assert_close(ours, ref, equal_nan=True)  # (NaN: mean over an ignored unbatched target)
    g = torch.rand_like(ref) + 0.5
    leaves_a = [v for v in _leaves(ours)]
    leaves_b = [v for v in _leaves(ref)]
    for go, gr in zip(torch.autograd.grad(ours, leaves_a, g), torch.autograd.grad(ref, leaves_b, g)):
        torch.testing.assert_close(go, gr, equal_nan=True)


def _leaves(out):
    """The leaf tensors that require grad behind `out`, in creation order."""
    seen, stack, leaves = set(), [out.grad_fn], []
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, "variable"):
            leaves.append(fn.variable)
        stack.extend(f for f, _ in fn.next_functions)
    return sorted(leaves, key=lambda t: tuple(t.shape))


def test_probability_target_gradcheck():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y = torch.softmax(torch.randn(4, 5, dtype=torch.float64), 1).requires_grad_(True)
    cw = torch.rand(5, dtype=torch.float64) + 0.5
    for kw in (dict(), dict(weight=cw, label_smoothing=0.1, chunk_size=3), dict(reduction="none", chunk_size=1)):
        assert torch.autograd.gradcheck(lambda a, b, c: F.linear_cross_entropy(a, b, c, **kw), (x, w, y))


def test_options_accepted():
    if not hasattr(torch.nn, "LinearCrossEntropyOptions"):
        pytest.skip("torch < 2.14: no LinearCrossEntropyOptions")
    x, w, t = torch.randn(9, 4), torch.randn(11, 4), torch.randint(0, 11, (9,))
    options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=2)
    torch.testing.assert_close(F.linear_cross_entropy(x, w, t, options=options), reference_lce(x, w, t))


@pytest.mark.parametrize("out_features,bias", [((), False), ((2,), True)])
def test_module_like_torch(out_features, bias):
    torch.manual_seed(4)
    cw = torch.rand(5) + 0.5
    ours = fnn.LinearCrossEntropyLoss(3, 5, out_features=out_features, bias=bias, weight=cw, label_smoothing=0.1,
                                      reduction="sum")
    x = torch.randn(6, 3)
    t = torch.randint(0, 5, (6, *out_features))
    w = ours.linear.weight.reshape(5, *out_features, 3)
    b = ours.linear.bias.reshape(5, *out_features) if bias else None
    ref = reference_lce(x, w, t, linear_bias=b, weight=cw, label_smoothing=0.1, reduction="sum")
    torch.testing.assert_close(ours(x, t), ref)
    twin = getattr(torch.nn, "LinearCrossEntropyLoss", None)
    if twin is not None:  # state dicts load both ways; same result
        theirs = twin(3, 5, out_features=out_features, bias=bias, weight=cw, label_smoothing=0.1, reduction="sum")
        theirs.load_state_dict(ours.state_dict())
        torch.testing.assert_close(theirs(x, t), ref)
        ours.load_state_dict(theirs.state_dict())
        assert fnn.patch(torch.nn.Sequential(theirs)).fastact_patched == {"LinearCrossEntropyLoss": 1}
        torch.testing.assert_close(theirs(x, t), ref)


def test_torch_errors():
    # what torch rejects, we reject, with an exception that is torch's type (RuntimeError)
    def arg(*shape):
        return torch.randn(*shape)
    cases = [((arg(2, 3, 3), arg(2, 3), arg(3, 2)), {}), ((arg(2, 3), arg(2), arg(2, 2)), {}),
             ((arg(2, 3), arg(2, 4), arg(2, 2)), {}), ((arg(2, 3), arg(2, 3), arg(2, 2)), dict(ignore_index=0)),
             ((arg(3), arg(2, 4, 3), arg(2, 4)), {}), ((arg(2, 3), arg(2, 3), arg(2)), dict(linear_bias=arg(3))),
             ((arg(2, 3), arg(2, 3), torch.zeros(2, dtype=torch.long)), dict(weight=arg(3)))]
    for args, kw in cases:
        with pytest.raises(RuntimeError, match="fastact.linear_cross_entropy"):
            F.linear_cross_entropy(*args, **kw)


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


def _vocab_parallel_precision_worker(rank, world, init_file, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    n, v = 6, 5 * world
    full = torch.randn(n, v, dtype=torch.float64)
    target = torch.randint(0, v, (n,))
    target[1] = -100
    out = {}
    # float64 stays float64: gradcheck of each rank's slice in turn (the
    # ranks call the forward, and its all-reduces, in lockstep; the rank not
    # checked holds its slice fixed and its output at 0, so the loss moves
    # with one slice only and only the checked rank compares)
    sl = full[:, rank * 5:(rank + 1) * 5].clone().requires_grad_(True)
    fixed = sl.detach().clone()  # (gradcheck perturbs sl in place)

    def checked_on(checked, **kw):
        if rank == checked:
            return lambda a: F.vocab_parallel_cross_entropy(a, target, **kw)
        return lambda a: 0 * F.vocab_parallel_cross_entropy(fixed + 0 * a, target, **kw)
    for case, kw in {"plain": {}, "smooth-zloss": dict(label_smoothing=0.2, z_loss=1e-2, reduction="sum")}.items():
        for checked in range(world):
            out[f"gradcheck-{case}-rank{checked}"] = torch.autograd.gradcheck(checked_on(checked, **kw), (sl,))
    # shift invariance in float32: rows offset by +-1e4 and +-1e6 against float64
    for offset in (1e4, -1e4, 1e6, -1e6):
        shifted = (full * 2 + offset).float().double()  # float32-representable logits
        x = shifted[:, rank * 5:(rank + 1) * 5].float().requires_grad_(True)
        loss = F.vocab_parallel_cross_entropy(x, target, reduction="none", label_smoothing=0.1)
        g = torch.linspace(0.5, 1.5, n)
        loss.backward(g)
        ref_in = shifted.clone().requires_grad_(True)
        ref = TF.cross_entropy(ref_in, target, reduction="none", label_smoothing=0.1)
        ref.backward(g.double())
        out[f"shift{offset:+g}"] = (
            torch.allclose(loss.double(), ref, rtol=2e-6, atol=2e-6)
            and torch.allclose(x.grad.double(), ref_in.grad[:, rank * 5:(rank + 1) * 5], rtol=2e-6, atol=1e-7))
    torch.save(out, f"{result_file}.{rank}")
    dist.destroy_process_group()


def test_vocab_parallel_float64_and_shift_invariance():
    world = 2
    with tempfile.TemporaryDirectory() as tmp:
        init_file, result = os.path.join(tmp, "init"), os.path.join(tmp, "result")
        mp.spawn(_vocab_parallel_precision_worker, args=(world, init_file, result), nprocs=world, join=True)
        for rank in range(world):
            res = torch.load(f"{result}.{rank}")
            assert all(res.values()), (rank, res)


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


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("tokens", [0, 3])
def test_no_counted_token(reduction, tokens):
    # no tokens, or every token ignored: torch's loss (NaN for a mean over
    # nothing, 0 for a sum) and zero gradients, without a crash in backward
    torch.manual_seed(0)
    x = torch.randn(tokens, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    t = torch.full((tokens,), -100)
    ours = F.linear_cross_entropy(x, w, t, reduction=reduction)
    theirs = unfused(x, w, t, reduction=reduction)
    torch.testing.assert_close(ours, theirs, equal_nan=True)
    gx, gw = torch.autograd.grad(ours.sum(), (x, w))
    assert gx.shape == x.shape and gw.shape == w.shape
    assert not gx.any() and not gw.any()


def test_cuda_default_chunk_is_gemm_friendly():
    # CUDA: 4 % of the logits (at least 32 MB) in multiples of the GEMM's
    # 128-row tile, and at least 256 rows while those take at most 256 MB
    from fastact.losses.linear_ce import GPU_MIN_ROWS, GPU_MIN_ROWS_BYTES, GPU_ROW_TILE, chunk_rows

    assert (GPU_ROW_TILE, GPU_MIN_ROWS, GPU_MIN_ROWS_BYTES) == (128, 256, 256 << 20)
    assert chunk_rows(8192, 128256, 4096, 2, None, "cuda") == 256  # 84 MB budget: 327 rows
    assert chunk_rows(65536, 128256, 4096, 2, None, "cuda") == 2560  # 2621 rows
    assert chunk_rows(2048, 32000, 512, 4, None, "cuda") == 256  # 32 MB: 262 rows
    assert chunk_rows(1000, 262144, 512, 4, None, "cuda") == 256  # 40 MB: 40 rows; 256 take 256 MB
    assert chunk_rows(1000, 1 << 20, 512, 4, None, "cuda") == 40  # 160 MB; 256 rows would take 1 GB
    assert chunk_rows(4096, 1 << 20, 512, 4, None, "cuda") == 128  # 163 rows
    assert chunk_rows(100, 32000, 512, 4, None, "cuda") == 100  # one chunk
    assert chunk_rows(2048, 32000, 512, 4, 7, "cuda") == 7
    for n in (1, 300, 1000, 5000, 70000):
        for v, size in ((1000, 4), (32000, 2), (128256, 2), (151936, 4), (500000, 2)):
            rows = chunk_rows(n, v, 1024, size, None, "cuda")
            assert 1 <= rows <= n
            assert rows == n or rows % GPU_ROW_TILE == 0 or rows < GPU_ROW_TILE
            assert rows == n or rows >= GPU_MIN_ROWS or GPU_MIN_ROWS * v * size > GPU_MIN_ROWS_BYTES


def test_cpu_default_chunk_follows_torch_rule():
    # the CPU chunk buffer is torch's "aspect_ratio" size (the peak-memory
    # contract with torch's chunked path), 4x for bf16/fp16 run in float32,
    # and never fewer than 128 tokens (the matmuls' speed)
    from fastact.losses.linear_ce import CPU_MIN_ROWS, chunk_rows

    assert CPU_MIN_ROWS == 128
    assert chunk_rows(2048, 32000, 512, 4, None, "cpu") == 128
    assert chunk_rows(65536, 32000, 512, 4, None, "cpu") == 2048
    assert chunk_rows(65536, 32000, 512, 4, None, "cpu", widened=True) == 4 * 2048
    assert chunk_rows(1024, 128256, 256, 4, None, "cpu") == 128
    assert chunk_rows(10, 100, 512, 4, None, "cpu") == 10
    assert chunk_rows(2048, 32000, 512, 4, 7, "cpu") == 7
    options = getattr(torch.nn, "LinearCrossEntropyOptions", None)
    if options is not None:
        for n, h, v in ((2048, 512, 32000), (8192, 256, 128256), (1024, 256, 16000), (37, 64, 1000),
                        (65536, 512, 32000), (100000, 4096, 32000)):
            theirs = options()._adjust(n, h, v, torch.float32, torch.device("cpu")).batch_chunk_size
            assert chunk_rows(n, v, h, 4, None, "cpu") == min(n, max(theirs, 128))
