"""fastact under torch.distributed (CPU, gloo; NCCL when GPUs are present).

One spawned process group per world size runs every scenario of that size
(spawning costs more than the scenarios): the DTensor sharding rules of the
ops, then training of a tiny LLaMA-style model -- patched GELU, fused SwiGLU
MLP, fused dropout_add, linear cross-entropy head -- under (a) DDP, (b) FSDP2
(float64, and bf16 params / fp32 reduce), (c) tensor parallel (column/row-
parallel MLP, vocabulary-parallel head), (d) FSDP2 + TP on a 2x2 mesh.

How losses are compared ("equal"):
- every run but the mixed-precision one is float64. The same model without
  fastact (torch.nn modules, torch's cross-entropy, ``loss_parallel()`` under
  TP) draws the same dropout masks (``fastact.functional.dropout_mask`` of the
  same generator draw), so both compute the same function up to rounding.
  fastact's kernels are not bitwise torch's (e.g. gelu's tanh), so the loss
  curves must agree within ``RTOL64 = 1e-12`` relative: 2**-53 (float64's
  unit roundoff) times ~9000, a budget of rounding errors for a few ulps per
  op over a forward+backward of this model (a few hundred roundings deep)
  and 3 optimizer steps; a wrong mask, a missing or doubled all-reduce or a
  wrong scale moves the loss by >= 1e-4.
- bitwise where the arithmetic is the same: the first-step loss of each
  data-parallel rank equals the single-process loss of its micro-batch
  (same parameters, same ops; FSDP's all-gather copies them exactly).
- mixed precision (bf16 params, fp32 reduce): each loss within twice plain
  torch's own error against the float64 run, plus one bf16 ulp of the loss.
"""
from __future__ import annotations

import copy
import math
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as TF

import fastact.functional as F
import fastact.nn as fnn

sys.path.insert(0, os.path.dirname(__file__))
from dist_util import spawn  # noqa: E402
from conftest import EMULATION  # noqa: E402

# Spawned gloo process groups (world 2 and 4) test the Python-level sharding;
# in the emulation lane each process would run under AddressSanitizer on the
# emulator for many minutes. The ops they call run there in every other test.
pytestmark = pytest.mark.skipif(EMULATION, reason="multi-process runs: regular lane only")

RTOL64 = 1e-12
VOCAB, DIM, HIDDEN, HEADS, SEQ, BATCH, LAYERS, STEPS, P = 32, 16, 32, 2, 8, 8, 2, 3, 0.1


# --- the model --------------------------------------------------------------------------

def replay_dropout_add(y, residual, p, training):
    """``residual + dropout(y)`` in plain torch, with the mask fastact draws
    for the same generator state (one ``_philox_seed`` draw, then
    ``dropout_mask``), so both models drop the same elements."""
    if not training or p == 0:
        return residual + y
    seed, offset = torch.ops.fastact._philox_seed(y).tolist()
    keep = F.dropout_mask(y.shape, p, seed, offset, device=y.device)
    return residual + y * (keep.to(y.dtype) * (1.0 / (1 - p)))


class TorchSwiGLU(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x):
        return self.w2(TF.silu(self.w1(x)) * self.w3(x))


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(dim, dim, bias=False) for _ in range(4))

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = (w(x).view(b, s, self.heads, -1).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        o = TF.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(o.transpose(1, 2).reshape(b, s, d))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1, self.norm2 = nn.RMSNorm(DIM), nn.RMSNorm(DIM)
        self.attn = Attention(DIM, HEADS)
        self.mlp = TorchSwiGLU(DIM, HIDDEN)
        self.fused = False

    def drop_add(self, y, x):
        if self.fused:
            return F.dropout_add(y, x, P, self.training)
        return replay_dropout_add(y, x, P, self.training)

    def forward(self, x):
        x = self.drop_add(self.attn(self.norm1(x)), x)
        return self.drop_add(self.mlp(self.norm2(x)), x)


class TinyLlama(nn.Module):
    """head: 'torch' (torch's cross-entropy; under TP within loss_parallel()),
    'linear_ce' (fastact's linear_cross_entropy on the head weight) or 'ce'
    (fastact's cross_entropy on the head's logits)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.proj = nn.Linear(DIM, DIM)
        self.act = nn.GELU(approximate="tanh")
        self.layers = nn.ModuleList(Block() for _ in range(LAYERS))
        self.norm = nn.RMSNorm(DIM)
        self.head = nn.Linear(DIM, VOCAB, bias=False)
        self.loss_kind = "torch"

    def forward(self, tokens, target):
        h = self.act(self.proj(self.embed(tokens)))
        for layer in self.layers:
            h = layer(h)
        h = self.norm(h)
        if self.loss_kind == "linear_ce":
            return F.linear_cross_entropy(h.flatten(0, 1), self.head.weight, target.flatten())
        logits = self.head(h).flatten(0, 1)
        if self.loss_kind == "ce":
            return F.cross_entropy(logits, target.flatten())
        if isinstance(logits, torch.distributed.tensor.DTensor):
            from torch.distributed.tensor.parallel import loss_parallel

            with loss_parallel():
                return TF.cross_entropy(logits, target.flatten())
        return TF.cross_entropy(logits, target.flatten())


DEVICE = "cpu"  # set per process by _worker ("cuda:<rank>" under NCCL)


def make_model(dtype=torch.float64, loss_kind="torch"):
    torch.manual_seed(0)
    model = TinyLlama().to(dtype).to(DEVICE)
    return fastactify(model, loss_kind) if loss_kind != "torch" else model


def fastactify(model, loss_kind="linear_ce"):
    """The fastact twin of a model: nn.GELU patched, fused SwiGLU (same
    parameters), fused dropout_add, a fastact loss head."""
    model = copy.deepcopy(model)
    for block in model.layers:
        mlp = fnn.SwiGLU(DIM, HIDDEN).to(block.mlp.w1.weight.dtype)
        mlp.load_state_dict(block.mlp.state_dict())
        block.mlp, block.fused = mlp, True
    fnn.patch(model)
    assert model.fastact_patched.get("GELU") == 1, model.fastact_patched
    model.loss_kind = loss_kind
    return model


def batch(step):
    g = torch.Generator().manual_seed(100 + step)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=g).to(DEVICE)
    return tokens[:, :-1], tokens[:, 1:]


def scalar(loss):
    if isinstance(loss, torch.distributed.tensor.DTensor):
        loss = loss.full_tensor()
    return float(loss.detach().double())


def train(model, shard=None):
    """STEPS of SGD; the loss of each step. ``shard(x)`` picks this rank's
    micro-batch (data parallel); the RNG is seeded alike on every rank."""
    from torch.distributed.tensor.parallel import loss_parallel

    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    torch.manual_seed(1234)
    losses, first = [], None
    for step in range(STEPS):
        x, y = batch(step)
        if shard is not None:
            x, y = shard(x), shard(y)
        loss = model(x, y)
        with loss_parallel():  # (torch's TP cross-entropy needs its backward inside; no-op otherwise)
            loss.backward()
        opt.step()
        opt.zero_grad()
        if first is None:
            first = scalar(loss)
        losses.append(scalar(loss))
    return losses, first


def train_single_dp(model, dp):
    """Single-process reference of data parallelism over ``dp`` ranks: the
    loss is the mean of the ``dp`` micro-batch losses (each drawn from the
    same generator state, as every rank draws alike), so the gradient is the
    ranks' averaged gradient. Returns the curve and the step-0 micro-batch losses."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    torch.manual_seed(1234)
    losses, micro0 = [], None
    for step in range(STEPS):
        x, y = batch(step)
        state = torch.get_rng_state(), (torch.cuda.get_rng_state() if DEVICE != "cpu" else None)
        micro = []
        for r in range(dp):
            torch.set_rng_state(state[0])
            if state[1] is not None:
                torch.cuda.set_rng_state(state[1])
            micro.append(model(x.chunk(dp)[r], y.chunk(dp)[r]))
        loss = sum(micro) / dp
        loss.backward()
        opt.step()
        opt.zero_grad()
        micro0 = micro0 or [scalar(m) for m in micro]
        losses.append(scalar(loss))
    return losses, micro0


def mean_over(value, group=None):
    t = torch.tensor([value], dtype=torch.float64, device=DEVICE)
    dist.all_reduce(t, group=group)
    return float(t) / dist.get_world_size(group)


# --- scenarios (run inside the spawned ranks) -----------------------------------------------

def scenario_ddp(rank, world):
    from torch.nn.parallel import DistributedDataParallel as DDP

    out = {}
    shard = lambda t: t.chunk(world)[rank]  # noqa: E731
    for kind in ("torch", "linear_ce"):
        model = DDP(make_model(loss_kind=kind))
        losses, first = train(model, shard)
        out[kind] = ([mean_over(v) for v in losses], first)
    out["single"] = train_single_dp(make_model(loss_kind="linear_ce"), world)
    return out


def scenario_fsdp(rank, world, mixed=False):
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    out = {}
    shard = lambda t: t.chunk(world)[rank]  # noqa: E731
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed else None
    for kind in ("torch", "linear_ce"):
        model = make_model(loss_kind=kind)
        for block in model.layers:
            fully_shard(block, **({"mp_policy": mp} if mp else {}))
        fully_shard(model, **({"mp_policy": mp} if mp else {}))
        losses, first = train(model, shard)
        out[kind] = ([mean_over(v) for v in losses], first)
    if not mixed:
        out["single"] = train_single_dp(make_model(loss_kind="linear_ce"), world)
    return out


def tp_plan():
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    # w1/w3 keep DTensor outputs, so the fused SwiGLU runs on DTensors sharded
    # on the hidden dim; the head's logits stay vocabulary-sharded DTensors
    plan = {"head": ColwiseParallel(use_local_output=False)}
    for i in range(LAYERS):
        plan[f"layers.{i}.mlp.w1"] = ColwiseParallel(use_local_output=False)
        plan[f"layers.{i}.mlp.w3"] = ColwiseParallel(use_local_output=False)
        plan[f"layers.{i}.mlp.w2"] = RowwiseParallel(input_layouts=Shard(-1))
    return plan


def scenario_tp(rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import parallelize_module

    mesh = init_device_mesh(torch.device(DEVICE).type, (world,))
    out = {}
    for kind in ("torch", "linear_ce", "ce"):
        model = parallelize_module(make_model(loss_kind=kind), mesh, tp_plan())
        out[kind] = train(model)
    out["single"] = train(make_model(loss_kind="linear_ce"))
    return out


def scenario_fsdp_tp(rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import parallelize_module

    mesh = init_device_mesh(torch.device(DEVICE).type, (2, world // 2), mesh_dim_names=("dp", "tp"))
    dp_rank = mesh["dp"].get_local_rank()
    shard = lambda t: t.chunk(2)[dp_rank]  # noqa: E731
    out = {}
    for kind in ("torch", "linear_ce", "ce"):
        model = parallelize_module(make_model(loss_kind=kind), mesh["tp"], tp_plan())
        for block in model.layers:
            fully_shard(block, mesh=mesh["dp"])
        fully_shard(model, mesh=mesh["dp"])
        losses, first = train(model, shard)
        out[kind] = ([mean_over(v, mesh["dp"].get_group()) for v in losses], first)
    out["single"] = train_single_dp(make_model(loss_kind="linear_ce"), 2)
    return out


def scenario_ops(rank, world):
    """The DTensor rules of the ops against the same ops on the full tensors."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
    from torch.distributed.tensor.placement_types import _StridedShard

    from fastact.distributed import shard_linear_index

    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(0)
    res = {}
    x = torch.randn(4, 2 * world, world, dtype=torch.float64)  # (even shards: see fastact.distributed)
    for pl in (Shard(0), Shard(1), Shard(2), Replicate()):
        for name, fn in (("gelu", lambda t: F.gelu(t, approximate="tanh")), ("silu", F.silu),
                         ("softplus", lambda t: F.softplus(t, 2.0)), ("relu_", lambda t: F.relu(t.clone(), True))):
            xd = distribute_tensor(x, mesh, [pl]).requires_grad_(True)
            xf = x.clone().requires_grad_(True)
            y, yf = fn(xd), fn(xf)
            g = torch.randn_like(yf)
            y.backward(distribute_tensor(g, mesh, y.placements))
            yf.backward(g)
            res[f"{name} {pl}"] = (y.placements == (pl,) and torch.equal(y.full_tensor(), yf)
                                   and torch.equal(xd.grad.full_tensor(), xf.grad))
    # Partial: reduced before a non-linear op; dropout keeps it (linear)
    part = DTensor.from_local(x * (rank + 1), mesh, [Partial()])
    full = x * (world * (world + 1) / 2)
    res["gelu partial"] = torch.allclose(F.gelu(part).full_tensor(), F.gelu(full))
    torch.manual_seed(7)
    dp_ = F.dropout(part, 0.5)
    torch.manual_seed(7)
    res["dropout partial"] = dp_.placements == (Partial(),) and torch.allclose(dp_.full_tensor(), F.dropout(full, 0.5))

    # GLU: two tensors on the hidden dim (and others), packed as [gate_r | up_r]
    g, u = (torch.randn(world, 4, 2 * world, dtype=torch.float64) for _ in range(2))
    for pl in (Shard(2), Shard(0), Replicate()):
        gd, ud = (distribute_tensor(t, mesh, [pl]).requires_grad_(True) for t in (g, u))
        gf, uf = g.clone().requires_grad_(True), u.clone().requires_grad_(True)
        y, yf = F.swiglu(gd, ud), F.swiglu(gf, uf)
        y.sum().backward()
        yf.sum().backward()
        res[f"swiglu {pl}"] = (y.placements == (pl,) and torch.equal(y.full_tensor(), yf)
                               and torch.equal(gd.grad.full_tensor(), gf.grad)
                               and torch.equal(ud.grad.full_tensor(), uf.grad))
    packed = torch.cat([g, u], -1)
    pd = distribute_tensor(packed, mesh, [_StridedShard(2, split_factor=2)]).requires_grad_(True)
    pf = packed.clone().requires_grad_(True)
    y, yf = F.geglu(pd), F.geglu(pf)
    y.sum().backward()
    yf.sum().backward()
    # (the packed kernel and the two-tensor one may differ in the last ulp)
    # The gradient keeps the input's _StridedShard; each rank checks its shard
    # (torch 2.11 cannot full_tensor() a lone _StridedShard placement).
    res["geglu packed strided"] = (y.placements == (Shard(2),) and torch.allclose(y.full_tensor(), yf, 1e-14, 1e-15)
                                   and pd.grad.placements == pd.placements
                                   and torch.allclose(pd.grad.to_local(),
                                                      distribute_tensor(pf.grad, mesh, pd.placements).to_local(),
                                                      1e-14, 1e-15))

    # dropout on DTensors: shard k draws key seed ^ k*STEP; replicated = unsharded
    xs = torch.randn(2 * world, 5, dtype=torch.float64)
    torch.manual_seed(3)
    ref = F.dropout(xs, 0.3)
    torch.manual_seed(3)
    seed, offset = torch.ops.fastact._philox_seed(xs).tolist()
    torch.manual_seed(3)
    rep = F.dropout(distribute_tensor(xs, mesh, [Replicate()]), 0.3)
    res["dropout replicate = unsharded"] = torch.equal(rep.to_local(), ref)
    for pl in (Shard(0), Shard(1)):
        xd = distribute_tensor(xs, mesh, [pl]).requires_grad_(True)
        torch.manual_seed(3)
        y = F.dropout(xd, 0.3)
        key = shard_key(seed, shard_linear_index(xd))
        keep = F.dropout_mask(y.to_local().shape, 0.3, key, offset)
        y.sum().backward()
        scale = keep.to(xs.dtype) * (1 / 0.7)
        res[f"dropout {pl} key"] = (torch.equal(y.to_local(), xd.to_local() * scale)
                                    and torch.equal(xd.grad.to_local(), scale))
    # bias_dropout_add / bias_act_dropout, the bias sharded with the last dim
    def shard_keep(t, seed_state, p):
        torch.manual_seed(seed_state)
        seed, offset = torch.ops.fastact._philox_seed(t.to_local()).tolist()
        key = shard_key(seed, shard_linear_index(t))
        return F.dropout_mask(t.to_local().shape, p, key, offset).to(t.dtype) * (1 / (1 - p))

    xin, bias = torch.randn(4, 2 * world, dtype=torch.float64), torch.randn(2 * world, dtype=torch.float64)
    for pl in (Shard(0), Shard(1)):
        xd, rd = distribute_tensor(xin, mesh, [pl]), distribute_tensor(2 * xin, mesh, [pl])
        bd = distribute_tensor(bias, mesh, [Replicate()])
        b_local = bias.chunk(world)[rank] if pl == Shard(1) else bias
        keep = shard_keep(xd, 5, 0.3)
        torch.manual_seed(5)
        y = F.bias_dropout_add(xd, bd, rd, 0.3)
        res[f"bias_dropout_add {pl}"] = y.placements == (pl,) and torch.allclose(
            y.to_local(), rd.to_local() + (xd.to_local() + b_local) * keep, 1e-15, 1e-15)
        torch.manual_seed(5)
        y = F.bias_act_dropout(xd, bd, "gelu", 0.3)
        res[f"bias_act_dropout {pl}"] = y.placements == (pl,) and torch.allclose(
            y.to_local(), TF.gelu(xd.to_local() + b_local) * keep, 1e-14, 1e-15)

    # cross_entropy on vocabulary-sharded logits (and on row-sharded ones)
    n, v = 7, 5 * world
    logits, target = torch.randn(n, v, dtype=torch.float64), torch.randint(0, v, (n,))
    target[2] = -100
    for pl in (Shard(1), Shard(0)):
        for kw in ({}, dict(label_smoothing=0.2, z_loss=1e-2), dict(reduction="sum", softcap=3.0),
                   dict(reduction="none")):
            ld = distribute_tensor(logits, mesh, [pl]).requires_grad_(True)
            lf = logits.clone().requires_grad_(True)
            tgt = distribute_tensor(target, mesh, [pl if pl == Shard(0) else Replicate()])
            loss, ref = F.cross_entropy(ld, tgt, **kw), F.cross_entropy(lf, target, **kw)
            loss.sum().backward()
            ref.sum().backward()
            res[f"cross_entropy {pl} {kw}"] = (torch.allclose(loss.full_tensor(), ref, 1e-13, 1e-15)
                                               and torch.allclose(ld.grad.full_tensor(), lf.grad, 1e-13, 1e-15))
    # linear_cross_entropy with a column-parallel head (vocab sharded)
    hidden, weight = torch.randn(n, 6, dtype=torch.float64), torch.randn(v, 6, dtype=torch.float64)
    for kw in ({}, dict(label_smoothing=0.1, reduction="sum", chunk_size=3), dict(softcap=2.0, z_loss=1e-2)):
        hf, wf = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        hp = hidden.clone().requires_grad_(True)
        wd = distribute_tensor(weight, mesh, [Shard(0)]).requires_grad_(True)
        loss, ref = F.linear_cross_entropy(hp, wd, target, **kw), F.linear_cross_entropy(hf, wf, target, **kw)
        loss.backward()
        ref.backward()
        res[f"linear_cross_entropy {kw}"] = (torch.allclose(loss, ref, 1e-13, 1e-15)
                                             and torch.allclose(hp.grad, hf.grad, 1e-13, 1e-15)
                                             and torch.allclose(wd.grad.full_tensor(), wf.grad, 1e-13, 1e-15))
    return res


def shard_key(seed, k):
    """The Philox key of shard k (fastact.distributed.dtensor_seed), as a signed int64."""
    from fastact.distributed import DROPOUT_KEY_STEP

    key = (seed % (1 << 64)) ^ ((k * DROPOUT_KEY_STEP) % (1 << 64))
    return key - (1 << 64) if key >= (1 << 63) else key


def _worker(rank, world, scenarios, device="cpu"):
    global DEVICE
    if device == "cuda":
        torch.cuda.set_device(rank)
        DEVICE = f"cuda:{rank}"
    out = {}
    for name in scenarios:
        torch.manual_seed(0)
        out[name] = SCENARIOS[name](rank, world)
    return out


SCENARIOS = {"ops": scenario_ops, "ddp": scenario_ddp, "fsdp": scenario_fsdp,
             "fsdp_mp": lambda r, w: scenario_fsdp(r, w, mixed=True), "tp": scenario_tp,
             "fsdp_tp": scenario_fsdp_tp}


# --- checks (in the test process) ---------------------------------------------------------

def close64(a, b):
    return all(math.isclose(x, y, rel_tol=RTOL64, abs_tol=0) for x, y in zip(a, b)) and len(a) == len(b)


def check_dp(res, world, label):
    torch_curve, _ = res[0]["torch"]
    fa_curve, _ = res[0]["linear_ce"]
    single, micro0 = res[0]["single"]
    assert close64(fa_curve, torch_curve), (label, fa_curve, torch_curve)
    assert close64(fa_curve, single), (label, fa_curve, single)
    for rank in range(world):
        # step 0: each rank's loss is bitwise the single-process loss of its micro-batch
        assert res[rank]["linear_ce"][1] == micro0[rank], (label, rank, res[rank]["linear_ce"][1], micro0)


def check_all(outs, world):
    for rank, out in enumerate(outs):
        bad = {k: v for k, v in out["ops"].items() if not v}
        assert not bad, (rank, bad)
    per_rank = lambda name: [o[name] for o in outs]  # noqa: E731
    check_dp(per_rank("ddp"), world, "ddp")
    fsdp = per_rank("fsdp")
    check_dp(fsdp, world, "fsdp")
    # mixed precision: within twice torch's own error against float64, plus one bf16 ulp
    mp = outs[0]["fsdp_mp"]
    ref64 = fsdp[0]["torch"][0]
    for fa, th, r in zip(mp["linear_ce"][0], mp["torch"][0], ref64):
        assert abs(fa - r) <= 2 * abs(th - r) + abs(r) * 2.0 ** -8, (fa, th, r)
    for rank in range(world):
        tp = outs[rank]["tp"]
        for kind in ("linear_ce", "ce"):
            assert close64(tp[kind][0], tp["torch"][0]), (rank, kind, tp[kind][0], tp["torch"][0])
            assert close64(tp[kind][0], tp["single"][0]), (rank, kind, tp[kind][0], tp["single"][0])
    if "fsdp_tp" in outs[0]:
        ft = outs[0]["fsdp_tp"]
        single = ft["single"][0]
        for kind in ("torch", "linear_ce", "ce"):
            assert close64(ft[kind][0], single), (kind, ft[kind][0], single)


@pytest.mark.parametrize("world", [2, 4])
def test_gloo(world):
    scenarios = ["ops", "ddp", "fsdp", "fsdp_mp", "tp"] + (["fsdp_tp"] if world == 4 else [])
    outs = spawn(_worker, world, scenarios, timeout=240)
    check_all(outs, world)


def check_nccl(outs, world):
    per_rank = lambda name: [o[name] for o in outs]  # noqa: E731
    check_dp(per_rank("ddp"), world, "ddp")
    check_dp(per_rank("fsdp"), world, "fsdp")
    for rank in range(world):
        tp = outs[rank]["tp"]
        for kind in ("linear_ce", "ce"):
            assert close64(tp[kind][0], tp["torch"][0]), (rank, kind, tp[kind][0], tp["torch"][0])
            assert close64(tp[kind][0], tp["single"][0]), (rank, kind, tp[kind][0], tp["single"][0])


@pytest.mark.cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and dist.is_nccl_available()), reason="no CUDA device / NCCL")
def test_nccl():
    # one rank per GPU (NCCL does not share a device between ranks)
    world = min(2, torch.cuda.device_count())
    outs = spawn(_worker, world, ["ddp", "fsdp", "tp"], "cuda", backend="nccl", timeout=240)
    check_nccl(outs, world)
