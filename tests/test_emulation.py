"""Tests of the CUDA emulation lane itself (`make test-emu`).

In the emulation build the CUDA kernels of csrc/cuda/ run on CPU tensors
through the SIMT emulator of csrc/emu/ (the rest of the suite then checks
them against torch). These tests check what only the emulator can see: that
planted bugs are caught, how many kernels each op launches, which kernel
paths the host code picks, and the global-memory traffic and coalescing of
every kernel. Skipped outside the emulation build.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import torch

import fastact.functional as F
from fastact import _emulation as emu
from fastact import reference as R
from fastact.ops import ACTIVATIONS, GLUS

pytestmark = pytest.mark.skipif(not emu.enabled(), reason="emulation build only (make test-emu)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPS = torch.ops.fastact


@pytest.fixture(autouse=True)
def _default_device():
    emu.configure()
    emu.reset()
    yield
    emu.configure()


# ---- planted bugs ------------------------------------------------------------------

PLANTED = {
    "block_sum": "correct",
    "vector_walk": "correct",
    "block_sum_missing_syncthreads": "bug",
    "warp_sum_wrong_shuffle_offset": "bug",
    "group_sum": "correct",
    "group_sum_crosses_groups": "bug",
    "vector_tail_off_by_one": "bug",
    "vector_head_ignores_misalignment": "bug",
    "divergent_syncthreads": "bug",
    "block_not_a_multiple_of_32": "bug",
    "over_launch_bounds": "bug",
    "over_1024_threads": "bug",
    "grid_y_over_65535": "bug",
    "empty_grid": "bug",
    "device_assert": "bug",
}


@pytest.fixture(scope="module")
def planted_bugs():
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    out = os.path.join(ROOT, "build", "emu-tests", "planted_bugs")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    subprocess.run([cxx, "-std=c++20", "-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer",
                    "-I", os.path.join(ROOT, "csrc"), os.path.join(ROOT, "tests/emu/planted_bugs.cpp"),
                    os.path.join(ROOT, "csrc/emu/simt.cpp"), "-o", out], check=True)
    return out


def _run_planted(path, *args):
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
    env.pop("LD_PRELOAD", None)
    return subprocess.run([path, *args], capture_output=True, text=True, env=env, timeout=300)


def test_planted_bugs_are_caught(planted_bugs, capsys):
    r = _run_planted(planted_bugs)
    assert r.returncode == 0, r.stderr[-2000:]
    cases = {m.group(1): (m.group(2), m.group(3), m.group(4))
             for m in re.finditer(r"^CASE (\S+) (correct|bug) (\S+) (.*)$", r.stdout, re.M)}
    with capsys.disabled():  # the CI log shows each case and how it was caught
        print("\nplanted bugs (tests/emu/planted_bugs.cpp):")
        for name, (kind, result, detail) in cases.items():
            print(f"  {name:36s} {kind:7s} {result:6s} {detail[:150]}")
    assert set(cases) == set(PLANTED), r.stdout
    for name, (kind, result, detail) in cases.items():
        assert kind == PLANTED[name]
        assert result == ("pass" if kind == "correct" else "caught"), f"{name}: {result} ({detail})"
    # the dropped barrier shows as a wrong answer in some thread order, not in all
    assert "row 0 sum" in cases["block_sum_missing_syncthreads"][2]


def test_vector_overrun_is_caught_by_asan(planted_bugs):
    r = _run_planted(planted_bugs, "overrun")
    assert r.returncode != 0 and "heap-buffer-overflow" in r.stderr, (r.stdout, r.stderr[-2000:])


# ---- launch counts --------------------------------------------------------------------

def _count(fn) -> list[str]:
    emu.reset()
    fn()
    return emu.launches()


def _fwd_bwd_launches(make, *shapes, grad_args=None):
    """Launches of forward and of backward of `make(*inputs)`."""
    inputs = [torch.randn(s, dtype=torch.float32).requires_grad_(True) for s in shapes]
    box = {}
    fwd = _count(lambda: box.setdefault("y", make(*inputs)))
    y = box["y"]
    g = torch.randn_like(y)
    bwd = _count(lambda: y.backward(g))
    return fwd, bwd


SIZES = [(0,), (1,), (7,), (4099,), (64, 333)]


@pytest.mark.parametrize("shape", SIZES, ids=str)
def test_every_elementwise_op_launches_one_kernel_each_way(shape):
    expected = 0 if 0 in shape else 1
    cases = []
    for name in ACTIVATIONS:
        for params in R.params(name):
            cases.append((f"{name}{params}", lambda x, n=name, p=params: getattr(OPS, n)(x, *p), [shape]))
    cases.append(("prelu", lambda x, w: F.prelu(x, w), [shape, (1,)]))
    cases.append(("swish(beta)", lambda x, b: F.swish(x, b), [shape, ()]))
    for label, make, shapes in cases:
        fwd, bwd = _fwd_bwd_launches(make, *shapes)
        assert len(fwd) == expected and len(bwd) == expected, (label, fwd, bwd)


@pytest.mark.parametrize("shape", [(3, 0), (1, 8), (5, 2 * 333), (64, 2 * 1024)], ids=str)
def test_glu_family_launches_one_kernel_each_way(shape):
    expected = 0 if 0 in shape else 1
    half = (shape[0], shape[1] // 2)
    for name in GLUS:
        for params in R.glu_params(name):
            fn = getattr(F, name)
            kw = dict(zip(GLUS[name], params))
            interleaved = getattr(OPS, name + "_packed")
            for label, make, shapes in ((f"{name} packed", lambda x: fn(x, **kw), [shape]),
                                        (f"{name} interleaved", lambda x: interleaved(x, -1, *params, True), [shape]),
                                        (f"{name} two", lambda g, u: fn(g, u, **kw), [half, half])):
                fwd, bwd = _fwd_bwd_launches(make, *shapes)
                assert len(fwd) == expected and len(bwd) == expected, (label, fwd, bwd)
    fwd, bwd = _fwd_bwd_launches(lambda x: F.glu(x), shape)
    assert len(fwd) == expected and len(bwd) == expected


@pytest.mark.parametrize("shape", [(1,), (4099,), (32, 96)], ids=str)
def test_dropout_family_launches(shape):
    # forward: the Philox seed kernel (one thread) + the fused kernel; backward: one kernel
    features = shape[-1]
    cases = [
        ("dropout", lambda x: F.dropout(x, 0.3), [shape]),
        ("dropout_add", lambda x, r: F.dropout_add(x, r, 0.3), [shape, shape]),
        ("bias_dropout_add", lambda x, b, r: F.bias_dropout_add(x, b, r, 0.3), [shape, (features,), shape]),
        ("bias_act_dropout", lambda x, b: F.bias_act_dropout(x, b, "gelu", 0.3), [shape, (features,)]),
    ]
    for label, make, shapes in cases:
        fwd, bwd = _fwd_bwd_launches(make, *shapes)
        assert [k.split("<")[0] for k in fwd] == ["unpack_philox_kernel", "elementwise_kernel"], (label, fwd)
        assert [k.split("<")[0] for k in bwd] == ["elementwise_kernel"], (label, bwd)


@pytest.mark.parametrize("rows,classes,split", [(64, 1000, False), (3, 50257, True), (4, 131075, True),
                                                (1, 7, False)])
def test_cross_entropy_launches(rows, classes, split):
    # forward: one kernel, plus the merge pass when rows are split over blocks; backward: one
    x = torch.randn(rows, classes, requires_grad=True)
    t = torch.randint(0, classes, (rows,))
    box = {}
    fwd = _count(lambda: box.setdefault("loss", F.cross_entropy(x, t)))
    bwd = _count(lambda: box["loss"].backward())
    names = [k.split("<")[0] for k in fwd]
    assert names == (["ce_forward_kernel", "ce_merge_kernel"] if split else ["ce_forward_kernel"]), fwd
    assert [k.split("<")[0] for k in bwd] == ["ce_backward_index_kernel"], bwd
    # class-probability targets: split rows take a first pass each way (the
    # forward's merge, the backward's partial target sums)
    y = torch.softmax(torch.randn(rows, classes), 1)
    box = {}
    fwd = _count(lambda: box.setdefault("loss", F.cross_entropy(x, y)))
    bwd = _count(lambda: box["loss"].backward())
    assert len(fwd) == (2 if split else 1)
    assert [k.split("<")[0] for k in bwd] == (["ce_backward_prob_partial_kernel"] if split else []) + \
        ["ce_backward_prob_kernel"], bwd


def test_linear_logprobs_launches():
    # one row kernel per chunk each way: the entropy is in the same pass as
    # the log-probs (no second kernel over the logits), and the backward
    # writes the gradient over the chunk's logits in one pass
    x, w = torch.randn(10, 8, requires_grad=True), torch.randn(300, 8, requires_grad=True)
    t = torch.randint(0, 300, (10,))
    box = {}
    fwd = _count(lambda: box.setdefault("out", F.linear_logprobs(x, w, t, return_entropy=True, chunk_size=4)))
    logp, ent = box["out"]
    bwd = _count(lambda: (logp.sum() + ent.sum()).backward())
    assert [k.split("<")[0] for k in fwd] == ["logprob_forward_kernel"] * 3, fwd
    assert [k.split("<")[0] for k in bwd] == ["logprob_backward_kernel"] * 3, bwd


def test_softmax_and_mse_launches():
    for fn in (F.softmax, F.log_softmax):
        fwd, bwd = _fwd_bwd_launches(lambda x: fn(x, -1), (33, 1001))
        assert len(fwd) == 1 and len(bwd) == 1
    fwd, bwd = _fwd_bwd_launches(lambda a, b: F.mse_loss(a, b, reduction="none"), (33, 101), (33, 101))
    assert len(fwd) == 1 and len(bwd) == 1
    # mean/sum: per-block partial sums and one block adding them (deterministic, no atomics)
    fwd, bwd = _fwd_bwd_launches(lambda a, b: F.mse_loss(a, b), (33, 101), (33, 101))
    assert [k.split("<")[0] for k in fwd] == ["sqdiff_partial_kernel", "sum_partials_kernel"]
    assert len(bwd) == 1


# ---- kernel paths -----------------------------------------------------------------------

def test_kernels_take_the_device_branch_of_math_h():
    """The emulated kernels call math.h's device branch (::expf), as nvcc's
    build does: logsigmoid's gradient at x = 88 is exp(-88) / (1 + exp(-88)),
    a float32 subnormal (about 6e-39), where the host branch (the CPU
    kernels' inline polynomial) flushes every result below FLT_MIN to 0."""
    x = torch.tensor([88.0, -88.0, 20.0], requires_grad=True)
    F.logsigmoid(x).sum().backward()
    z = torch.exp(-x.detach().double().abs())
    expected = torch.where(x.detach() < 0, 1.0, z) / (1 + z)
    assert 0 < x.grad[0] < torch.finfo(torch.float32).tiny
    # two ulps: of the normal results, and of the subnormal one (2^-149 apart)
    torch.testing.assert_close(x.grad, expected.float(), rtol=2 * torch.finfo(torch.float32).eps, atol=2 * 2.0 ** -149)


def test_vector_and_scalar_paths_are_both_taken():
    aligned = torch.randn(4099)
    misaligned = torch.randn(4100)[1:]
    assert "elementwise_kernel<kVec" in _count(lambda: F.gelu(aligned))[0]
    # a misaligned operand, or rows that are not whole vectors: the staged path
    assert "elementwise_staged_kernel<kVec" in _count(lambda: F.gelu(misaligned))[0]
    assert "elementwise_staged_kernel<kVec" in _count(lambda: OPS.swiglu_packed(torch.randn(8, 2 * 333), -1))[0]
    # paired operands (interleaved GLU along the last dim) and narrow rows: one element per step
    assert "elementwise_kernel<1" in _count(lambda: OPS.swiglu_packed(torch.randn(8, 2 * 333), -1, True))[0]
    assert "elementwise_kernel<1" in _count(lambda: OPS.swiglu_packed(torch.randn(8, 2 * 5), -1))[0]
    rows = torch.randn(8, 1001)  # rows that are not whole vectors: scalar heads and tails per row
    assert "softmax_kernel<kVec" in _count(lambda: F.softmax(rows, -1))[0]
    shifted = torch.randn(8 * 1001 + 1)[1:].view(8, 1001)  # contiguous, not 16-byte aligned
    assert "softmax_kernel<1" in _count(lambda: F.softmax(shifted, -1))[0]


def test_split_rows_follow_the_multiprocessor_count():
    # the grid the host code picks depends on the device: more SMs, more splits
    x = torch.randn(2, 65536)
    t = torch.randint(0, 65536, (2,))
    emu.configure(multiprocessors=2)
    _count(lambda: F.cross_entropy(x, t))
    grid_few = emu.report()["launches"][0]["grid"]
    emu.configure(multiprocessors=132)
    _count(lambda: F.cross_entropy(x, t))
    grid_h100 = emu.report()["launches"][0]["grid"]
    assert grid_few[1] < grid_h100[1], (grid_few, grid_h100)


def test_elementwise_grid_is_one_wave_from_occupancy():
    # blocks of 256 threads: the emulator's stand-in for the occupancy
    # calculator holds 2048 / 256 = 8 of them per multiprocessor
    emu.configure(multiprocessors=3)
    big = torch.randn(3 * 8 * 256 * 4 * 5)  # five waves' worth of float4 vectors
    _count(lambda: OPS.silu(big))
    assert emu.report()["launches"][0]["grid"][0] == 3 * 8
    _count(lambda: OPS.silu(big[1:]))  # staged: one chunk of 32 vectors per warp, 8 warps a block
    assert emu.report()["launches"][0]["grid"][0] == 3 * 8
    small = torch.randn(5 * 256 * 4)  # fewer vectors than a wave: one thread each
    _count(lambda: OPS.silu(small))
    assert emu.report()["launches"][0]["grid"][0] == 5
    _count(lambda: OPS.silu(small[1:]))
    assert emu.report()["launches"][0]["grid"][0] == 5  # 40 chunks of 128 floats, one per warp
    emu.configure(multiprocessors=132)
    _count(lambda: OPS.silu(big))
    assert emu.report()["launches"][0]["grid"][0] == 3 * 8 * 5


# ---- row kernel plans ---------------------------------------------------------------------
# The row kernels' host code picks a plan per shape (csrc/cuda/row_launch.cuh):
# lane groups of 4 to 32 lanes per short row, a block per row, or blocks over
# spans of rows too few to fill the GPU. emu.row_plan reads the plan of any
# shape; the tests below check it is what the kernels launch at shapes the
# emulator runs, then assert the plans of shapes too big to run.

def _team(params: str):
    """The threads per row of a row kernel variant (its RowTeam<LANES> parameter)."""
    m = re.search(r"RowTeam<(\d+)>", params)
    return int(m.group(1)) if m else None


def _launched(fn):
    """fn's launch records, and the row teams of the kernel variants it launched."""
    before = {(k, p): n for k, p, n in emu.coverage()}
    emu.reset()
    fn()
    teams = {_team(p) for k, p, n in emu.coverage() if n > before.get((k, p), 0)} - {None}
    return emu.report()["launches"], teams


def _row_kernel_calls(rows, classes, dtype):
    """label -> (call of the op, whether its plan is the elementwise one)."""
    x = torch.randn(rows, classes, dtype=dtype)
    t = torch.randint(0, classes, (rows,))
    p = torch.softmax(torch.randn(rows, classes), 1).to(dtype)
    g = torch.randn(rows, classes, dtype=dtype)
    y = torch.softmax(x.float(), 1).to(dtype)
    opts = (-100, 0.0, 0.0, 0.0)
    lse = OPS.cross_entropy_rows(x, t, None, *opts)[1]
    lse_p = OPS.cross_entropy_rows(x, p, None, *opts)[1]
    grad = torch.randn(rows)
    return {
        "softmax": (lambda: OPS.softmax_rows(x, False), False),
        "log_softmax": (lambda: OPS.softmax_rows(x, True), False),
        "softmax backward": (lambda: OPS.softmax_rows_backward(g, y, False), False),
        "log_softmax backward": (lambda: OPS.softmax_rows_backward(g, y.log(), True), False),
        "cross_entropy": (lambda: OPS.cross_entropy_rows(x, t, None, *opts), False),
        "cross_entropy prob": (lambda: OPS.cross_entropy_rows(x, p, None, *opts), False),
        "cross_entropy backward": (lambda: OPS.cross_entropy_rows_backward(grad, x, t, None, lse, *opts), True),
        "cross_entropy prob backward": (lambda: OPS.cross_entropy_rows_backward(grad, x, p, None, lse_p, *opts),
                                        False),
    }


# (rows, classes) -> float32 lanes per row and splits on the default 8
# emulated SMs: lane groups of 4, 8, 16, 32 (130 rows: a partly filled last
# block of 64 rows), a block per row, split rows (2 rows < 8 SMs)
PLAN_SHAPES = {(130, 13): (4, 1), (20, 27): (8, 1), (20, 61): (16, 1), (9, 1001): (32, 1), (3, 4500): (256, 1),
               (2, 20001): (256, 4)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", list(PLAN_SHAPES), ids=str)
def test_row_kernels_launch_their_plan(shape, dtype):
    rows, classes = shape
    if dtype == torch.float32:
        lanes, splits = PLAN_SHAPES[shape]
        p = emu.row_plan(rows, classes, dtype)
        assert (p["lanes"], p["splits"]) == (lanes, splits), p
    for label, (fn, elementwise) in _row_kernel_calls(rows, classes, dtype).items():
        plan = emu.row_plan(rows, classes, dtype, elementwise)
        launches, teams = _launched(fn)
        assert teams == {plan["lanes"]}, (label, plan, teams)
        names = [l["kernel"].split("<")[0] for l in launches]
        split = plan["splits"] > 1 and not elementwise
        if split and label in ("cross_entropy", "cross_entropy prob"):
            assert names[1:] == ["ce_merge_kernel"], (label, names)  # the forward's partials, merged
            launches = launches[:1]
        elif split:
            assert len(names) == 2 and names[0].endswith("_partial_kernel"), (label, names)
        else:
            assert len(names) == 1, (label, names)
        for l in launches:
            assert l["grid"] == plan["grid"] and l["block"] == plan["block"], (label, plan, l)


def test_row_plans_at_large_shapes():
    """The plans at the shapes of issue 23 on a device of 132 SMs (H100,
    H200), too big to emulate whole: the plan is what the kernels launch
    (test_row_kernels_launch_their_plan)."""
    sms = 132
    emu.configure(multiprocessors=sms)
    for dtype in (torch.float32, torch.bfloat16):
        vec = 16 // dtype.itemsize
        for elementwise in (False, True):
            # 16 classes: 4 lanes a row (one or two vectors each), 64 rows a block
            p = emu.row_plan(2**20, 16, dtype, elementwise)
            assert p["lanes"] == 4 and p["grid"] == [2**20 // 64, 1, 1], p
            # 512 classes: a warp a row, 8 rows a block
            p = emu.row_plan(65536, 512, dtype, elementwise)
            assert p["lanes"] == 32 and p["grid"] == [65536 // 8, 1, 1], p
        # 8192 rows fill the GPU (8 blocks per SM): a block per row, unsplit
        p = emu.row_plan(8192, 32000, dtype)
        assert p["lanes"] == 256 and p["splits"] == 1 and p["grid"] == [8192, 1, 1], p
        # the class-index backward: spans of 4 vector steps per thread
        span = 256 * vec * 4
        p = emu.row_plan(8192, 32000, dtype, elementwise=True)
        assert p["span"] == span and p["grid"] == [8192, -(-32000 // span), 1], p
        # 4 rows of 2^22: split into spans of whole vectors, enough to give
        # every SM 8 blocks
        for elementwise in (False, True):
            p = emu.row_plan(4, 2**22, dtype, elementwise)
            assert p["lanes"] == 256 and p["grid"] == [4, p["splits"], 1], p
            assert p["span"] % vec == 0 and (p["splits"] - 1) * p["span"] < 2**22 <= p["splits"] * p["span"], p
            assert 4 * p["splits"] >= 8 * sms and p["span"] >= 256 * vec * 4, p
        assert emu.row_plan(4, 2**22, dtype)["splits"] == 8 * sms // 4


# ---- memory traffic and coalescing ------------------------------------------------------

def _coalesced(rep, per_row_gathers=0):
    """Every warp-wide access of every site is coalesced: its lanes touch one
    contiguous run of addresses (two where the warp spans the end of a row)
    and no more 32-byte sectors than such runs need (ceil(bytes / 32) + 1
    per run: a run need not start on a sector). Sites of at most
    `per_row_gathers` accesses in all (one element per row, e.g. the target
    logit a merge thread reads for its row) are exempt from the run count."""
    for launch in rep["launches"]:
        for site in launch["sites"]:
            if site["accesses"] > per_row_gathers:
                assert site["max_runs"] <= 2, (launch["kernel"], site)
            assert site["uncoalesced"] == 0, (launch["kernel"], site)


def _traffic(fn, **regions):
    with emu.trace(regions) as rep:
        fn()
    return rep


def _once(rep, name, reads=1, writes=0):
    g = rep["regions"][name]
    assert g["min_reads"] == reads and g["max_reads"] == reads, (name, g)
    assert g["min_writes"] == writes and g["max_writes"] == writes, (name, g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_elementwise_traffic(dtype):
    x = torch.randn(3 * 1024 + 5, dtype=dtype)
    rep = _traffic(lambda: OPS.silu(x), x=x)
    _once(rep, "x")
    _coalesced(rep)
    dy = torch.randn_like(x)
    rep = _traffic(lambda: OPS.silu_backward(dy, x), x=x, dy=dy)
    _once(rep, "x")
    _once(rep, "dy")
    _coalesced(rep)
    # the outputs: written once, never read
    dx = torch.empty_like(x)
    rep = _traffic(lambda: OPS.silu_(dx.copy_(x)), dx=dx)
    _once(rep, "dx", reads=1, writes=1)


def test_glu_and_dropout_traffic():
    x = torch.randn(64, 2 * 333)
    rep = _traffic(lambda: OPS.swiglu_packed(x, -1), x=x)
    _once(rep, "x")
    _coalesced(rep)
    dy = torch.randn(64, 333)
    rep = _traffic(lambda: OPS.swiglu_packed_backward(dy, x, -1), x=x, dy=dy)
    _once(rep, "x")
    _once(rep, "dy")
    _coalesced(rep)
    seed = torch.tensor([1, 4])
    rep = _traffic(lambda: OPS.dropout(x, 0.3, seed), x=x)
    _once(rep, "x")
    _coalesced(rep)


def test_outputs_are_written_once():
    x = torch.randn(64, 2 * 333)
    box = {}

    def run():
        box["y"] = OPS.swiglu_packed(x, -1)

    with emu.trace() as rep:
        run()
    # the output is allocated inside the call: count its bytes from the sites
    stores = sum(s["bytes"] for l in rep["launches"] for s in l["sites"] if s["store"])
    assert stores == box["y"].numel() * box["y"].element_size()
    loads = sum(s["bytes"] for l in rep["launches"] for s in l["sites"] if not s["store"])
    assert loads == x.numel() * x.element_size()


@pytest.mark.parametrize("rows,classes", [(16, 1000), (3, 50257)])
def test_cross_entropy_traffic(rows, classes):
    x = torch.randn(rows, classes)
    t = torch.randint(0, classes, (rows,))
    rep = _traffic(lambda: OPS.cross_entropy_rows(x, t, None, -100, 0.0, 0.0, 0.0), x=x)
    g = rep["regions"]["x"]
    # every logit read once, the target logit of each row once more (an L2 hit
    # on the GPU: 4 bytes a row)
    assert g["min_reads"] == 1 and g["max_reads"] == 2 and g["max_writes"] == 0, g
    assert g["read_bytes"] == x.numel() * 4 + rows * 4, g
    _coalesced(rep, per_row_gathers=rows)
    loss, lse = OPS.cross_entropy_rows(x, t, None, -100, 0.0, 0.0, 0.0)
    grad = torch.ones(rows)
    rep = _traffic(lambda: OPS.cross_entropy_rows_backward(grad, x, t, None, lse, -100, 0.0, 0.0, 0.0), x=x)
    _once(rep, "x")
    _coalesced(rep)
    # in place: the logits read once and overwritten once
    z = x.clone()
    rep = _traffic(lambda: OPS.cross_entropy_rows_backward_(grad, z, t, None, lse, -100, 0.0, 0.0, 0.0), z=z)
    _once(rep, "z", reads=1, writes=1)
    torch.testing.assert_close(z, OPS.cross_entropy_rows_backward(grad, x, t, None, lse, -100, 0.0, 0.0, 0.0))


def _shifted(*shape):
    """A contiguous tensor whose data starts 4 bytes past a 16-byte boundary."""
    n = 1
    for s in shape:
        n *= s
    return torch.randn(n + 1)[1:].view(shape)


def _sector_efficiency(rep):
    sectors = sum(s["sectors"] for l in rep["launches"] for s in l["sites"])
    minimum = sum(s["min_sectors"] for l in rep["launches"] for s in l["sites"])
    return minimum / sectors


def _odd_cases():
    """Operands the vector path cannot take (x[1:] of a contiguous tensor,
    rows of 1001 and the packed GLU halves of an odd width, a bias broadcast
    over such rows), with the kernel each launches."""
    x = _shifted(37, 1001)
    dy = torch.randn(37, 1001)
    packed = torch.randn(37, 2 * 1001)
    b = torch.randn(1001)
    seed = torch.tensor([1, 4])
    return {
        "silu(x[1:])": (lambda: OPS.silu(x), dict(x=x)),
        "silu backward": (lambda: OPS.silu_backward(dy, x), dict(x=x, dy=dy)),
        "silu_(x[1:])": (lambda: OPS.silu_(_shifted(37, 1001)), {}),
        "dropout(x[1:])": (lambda: OPS.dropout(x, 0.3, seed), dict(x=x)),
        "dropout_add": (lambda: OPS.dropout_add(x, dy, 0.3, seed), dict(x=x, dy=dy)),
        "bias_dropout_add 37 x 1001": (lambda: OPS.bias_dropout_add(dy, b, x, 0.3, seed), dict(x=x, dy=dy)),
        "swiglu packed 37 x 2*1001": (lambda: OPS.swiglu_packed(packed, -1), dict(packed=packed)),
        "swiglu packed backward": (lambda: OPS.swiglu_packed_backward(dy, packed, -1), dict(packed=packed, dy=dy)),
        "swiglu two tensors x[1:]": (lambda: OPS.swiglu(x, dy), dict(x=x, dy=dy)),
    }


ODD_CASES = ["silu(x[1:])", "silu backward", "silu_(x[1:])", "dropout(x[1:])", "dropout_add",
             "bias_dropout_add 37 x 1001", "swiglu packed 37 x 2*1001", "swiglu packed backward",
             "swiglu two tensors x[1:]"]


@pytest.mark.parametrize("case", ODD_CASES)
def test_misaligned_and_odd_width_traffic(case):
    # every warp access touches only the sectors its bytes need, every input
    # byte is read once
    fn, regions = _odd_cases()[case]
    rep = _traffic(fn, **regions)
    assert [l["kernel"].split("<")[0] for l in rep["launches"]] == ["elementwise_staged_kernel"], rep["launches"]
    assert _sector_efficiency(rep) == 1.0, [(s["where"], s["sectors"], s["min_sectors"])
                                            for l in rep["launches"] for s in l["sites"]]
    _coalesced(rep)
    for name, t in regions.items():  # (a region is the whole storage: x[1:] leaves its first element)
        g = rep["regions"][name]
        assert g["max_reads"] == 1 and g["read_bytes"] == t.numel() * t.element_size(), (name, g)
        assert g["write_bytes"] == 0, (name, g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_staged_path_is_the_vector_path(dtype):
    # the same values, bit for bit, whichever path an element takes: the
    # staged path (misaligned, rows of 1001) against the vector path (an
    # aligned flat copy), for an op, its backward, dropout's draws and a GLU
    x = _shifted(37, 1001).to(dtype)
    dy = torch.randn(37, 1001, dtype=dtype)
    xa, seed = x.clone(), torch.tensor([7, 12])
    assert torch.equal(OPS.gelu(x, "tanh"), OPS.gelu(xa, "tanh"))
    assert torch.equal(OPS.gelu_backward(dy, x, "tanh"), OPS.gelu_backward(dy, xa, "tanh"))
    assert torch.equal(OPS.dropout(x, 0.3, seed), OPS.dropout(xa, 0.3, seed))
    ones = torch.ones(37, 1001, dtype=dtype)
    kept = OPS.dropout(ones.view(-1), 0.3, seed).view(37, 1001) != 0  # the flat vector path's mask
    b = torch.zeros(1001, dtype=dtype)
    assert torch.equal(OPS.bias_dropout_add(ones, b, torch.zeros_like(ones), 0.3, seed) != 0, kept)
    packed = torch.randn(37, 2 * 1001, dtype=dtype)
    gate, up = packed[:, :1001].contiguous(), packed[:, 1001:].contiguous()
    assert torch.equal(OPS.swiglu_packed(packed, -1), OPS.swiglu(gate, up))
    d_gate, d_up = OPS.swiglu_backward(dy, gate, up)
    assert torch.equal(OPS.swiglu_packed_backward(dy, packed, -1), torch.cat([d_gate, d_up], -1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_weighted_cross_entropy_traffic(dtype, smoothing):
    # class weights: one vector load per vector of logits (coalesced, every
    # sector used). Rows of whole 32-byte sectors: the row walk's vector steps
    # start on the row's 16-byte boundaries, so the logits of a row starting
    # 16 bytes past a sector touch one sector more per warp access.
    rows, classes = 16, 1000 if dtype == torch.float32 else 1008
    x = torch.randn(rows, classes, dtype=dtype)
    t = torch.randint(0, classes, (rows,))
    w = torch.rand(classes) + 0.5
    args = (w, -100, smoothing, 0.0, 0.0)
    rep = _traffic(lambda: OPS.cross_entropy_rows(x, t, *args), x=x, w=w)
    assert _sector_efficiency(rep) == 1.0
    _coalesced(rep, per_row_gathers=rows)
    loss, lse = OPS.cross_entropy_rows(x, t, *args)
    grad = torch.ones(rows)
    rep = _traffic(lambda: OPS.cross_entropy_rows_backward(grad, x, t, w, lse, *args[1:]), x=x, w=w)
    assert _sector_efficiency(rep) == 1.0
    _coalesced(rep)
    _once(rep, "x")
    # probability targets
    y = torch.softmax(torch.randn(rows, classes), 1).to(dtype)
    rep = _traffic(lambda: OPS.cross_entropy_rows(x, y, *args), x=x, w=w, y=y)
    assert _sector_efficiency(rep) == 1.0
    _coalesced(rep)
    loss, lse = OPS.cross_entropy_rows(x, y, *args)
    rep = _traffic(lambda: OPS.cross_entropy_rows_backward(grad, x, y, w, lse, *args[1:]), x=x, w=w)
    assert _sector_efficiency(rep) == 1.0
    _coalesced(rep)


@pytest.mark.parametrize("rows,classes", [(256, 16), (64, 64)], ids=str)
def test_lane_group_rows_traffic(rows, classes):
    # rows of whole vectors in lane groups (4 and 16 lanes): a warp's groups
    # take consecutive rows, so each warp access is one contiguous run
    x = torch.randn(rows, classes)
    t = torch.randint(0, classes, (rows,))
    rep = _traffic(lambda: OPS.softmax_rows(x, False), x=x)
    _once(rep, "x", reads=2)  # the row's (max, sum), then the output pass
    _coalesced(rep)
    rep = _traffic(lambda: OPS.cross_entropy_rows(x, t, None, -100, 0.0, 0.0, 0.0), x=x)
    assert rep["regions"]["x"]["read_bytes"] == x.numel() * 4 + rows * 4, rep["regions"]["x"]
    _coalesced(rep, per_row_gathers=rows)


def test_traffic_report_for_the_readme(capsys):
    """Prints each kernel's bytes and sector efficiency (the README quotes
    them): 100 %, also misaligned, at an odd width and with class weights."""
    x = torch.randn(64, 4096)
    t = torch.randint(0, 4096, (64,))
    shifted, odd, w = _shifted(64, 4096), torch.randn(64, 2 * 4095), torch.rand(4096)
    cases = {
        "silu forward": lambda: OPS.silu(x),
        "silu forward x[1:]": lambda: OPS.silu(shifted),
        "swiglu packed forward": lambda: OPS.swiglu_packed(x, -1),
        "swiglu packed 2*4095": lambda: OPS.swiglu_packed(odd, -1),
        "dropout": lambda: OPS.dropout(x, 0.1, torch.tensor([1, 4])),
        "dropout x[1:]": lambda: OPS.dropout(shifted, 0.1, torch.tensor([1, 4])),
        "cross_entropy forward": lambda: OPS.cross_entropy_rows(x, t, None, -100, 0.0, 0.0, 0.0),
        "CE weighted, smoothed": lambda: OPS.cross_entropy_rows(x, t, w, -100, 0.1, 0.0, 0.0),
        "softmax forward": lambda: OPS.softmax_rows(x, False),
        "mse sum": lambda: OPS.squared_difference_sum(x, x),
    }
    with capsys.disabled():
        print("\nkernel traffic (64 x 4096 float32): bytes read / written, sectors vs minimum")
        for label, fn in cases.items():
            rep = _traffic(fn)
            for l in rep["launches"]:
                rd = sum(s["bytes"] for s in l["sites"] if not s["store"])
                wr = sum(s["bytes"] for s in l["sites"] if s["store"])
                sec = sum(s["sectors"] for s in l["sites"])
                mn = sum(s["min_sectors"] for s in l["sites"])
                eff = mn / sec if sec else 1.0
                print(f"  {label:24s} {l['kernel'].split('<')[0]:24s} read {rd:>9d} B  write {wr:>9d} B  "
                      f"sectors {sec:>7d} (min {mn}, {eff:.1%})")
            _coalesced(rep)
            assert _sector_efficiency(rep) == 1.0, label


def test_launch_table_for_the_log(capsys):
    """Prints the kernels each op launches, forward and backward (the counts
    the tests above assert), at a size where cross-entropy splits rows."""
    x = torch.randn(4, 131075)
    t = torch.randint(0, 131075, (4,))
    cases = {
        "gelu": (lambda a: F.gelu(a), [(4099,)]),
        "swiglu (packed)": (lambda a: F.swiglu(a), [(64, 2 * 1024)]),
        "dropout": (lambda a: F.dropout(a, 0.1), [(4099,)]),
        "bias_act_dropout": (lambda a, b: F.bias_act_dropout(a, b, "gelu", 0.1), [(64, 96), (96,)]),
        "cross_entropy 64 x 1000": (lambda a: F.cross_entropy(a, torch.zeros(64, dtype=torch.long)), [(64, 1000)]),
        "softmax": (lambda a: F.softmax(a, -1), [(33, 1001)]),
        "mse_loss (mean)": (lambda a, b: F.mse_loss(a, b), [(33, 101), (33, 101)]),
    }
    with capsys.disabled():
        print("\nkernel launches per op (forward | backward):")
        for label, (make, shapes) in cases.items():
            fwd, bwd = _fwd_bwd_launches(make, *shapes)
            print(f"  {label:28s} {len(fwd)} {[k.split('<')[0] for k in fwd]} | {len(bwd)} "
                  f"{[k.split('<')[0] for k in bwd]}")
            assert 1 <= len(fwd) <= 2 and len(bwd) == 1
        xr = x.clone().requires_grad_(True)
        box = {}
        fwd = _count(lambda: box.setdefault("loss", F.cross_entropy(xr, t)))
        bwd = _count(lambda: box["loss"].backward())
        print(f"  {'cross_entropy 4 x 131075':28s} {len(fwd)} {[k.split('<')[0] for k in fwd]} | {len(bwd)} "
              f"{[k.split('<')[0] for k in bwd]}   (split rows: forward + merge)")
        assert len(fwd) == 2 and len(bwd) == 1


def test_scalar_paths_of_the_row_kernels():
    # misaligned rows take each row kernel's VEC = 1 instantiation: reached,
    # and right (the suite's other cases mostly run the vector paths)
    x = _shifted(5, 1001).requires_grad_(True)
    t = torch.randint(0, 1001, (5,))
    names = _count(lambda: F.cross_entropy(x, t).backward())
    # the forward walks each row from its own 16-byte boundary (one operand);
    # the backward writes a fresh, aligned gradient: another alignment, VEC = 1
    assert names[0].startswith("ce_forward_kernel<kVec"), names
    assert names[1].startswith("ce_backward_index_kernel<1"), names
    xr = x.detach().clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(xr, t).backward()
    torch.testing.assert_close(x.grad, xr.grad)

    g = _shifted(5, 1001)
    y = F.softmax(x.detach(), -1)
    shifted_y = _shifted(5, 1001)
    shifted_y.copy_(y)
    names = _count(lambda: OPS.softmax_rows_backward(g, shifted_y, False))
    assert names[0].startswith("softmax_backward_kernel<1"), names
    torch.testing.assert_close(OPS.softmax_rows_backward(g, shifted_y, False),
                               torch.ops.aten._softmax_backward_data(g, y, -1, torch.float32))

    a, b = _shifted(33, 101), torch.randn(33, 101)
    names = _count(lambda: OPS.squared_difference_sum(a, b))
    assert names[0].startswith("sqdiff_partial_kernel<1"), names
    torch.testing.assert_close(OPS.squared_difference_sum(a, b), ((a.double() - b.double()) ** 2).sum().float())
