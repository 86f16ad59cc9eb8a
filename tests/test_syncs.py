"""No host sync in any op's device path, checked without a GPU.

A training step on CUDA must never wait for the device: reading a tensor's
value on the host (``.item()``, ``float(t)``, ``bool(t)``, ``.tolist()``), an
op whose output shape depends on the data (``nonzero``, boolean indexing), or
a copy between host and device (``torch.tensor(python data, device=...)``,
``new_tensor``, a CPU tensor handed to a device kernel) each block the host
until the GPU has caught up, and CUDA graph capture rejects them.

``SyncRecorder`` (a TorchDispatchMode) sees every ATen and fastact call
below autograd and records such calls with the fastact line that made them.
Every op of the public API runs forward and backward under it:
- on the CPU (the CPU's own Python path);
- on the ``meta`` device, whose Python path is the CUDA one (every branch on
  ``device.type == "cpu"`` goes the device way), with a CPU tensor standing
  for host memory: there a copy between CPU and meta is a host-device copy,
  and a CPU tensor reaching a fastact op on meta one its CUDA kernel would copy.
The CUDA twins (``-m cuda``) run the same cases under
``torch.cuda.set_sync_debug_mode("error")`` and capture dropout, rrelu, the
GLUs, cross_entropy and linear_cross_entropy in CUDA graphs.

The op lists are the other tests' (test_activations, test_glu) and the op
tables of fastact.ops; a fastact operator no case reaches fails
``test_every_op_is_covered``.
"""
from __future__ import annotations

import os
import traceback
from typing import Callable

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastact
import fastact.functional as F
from conftest import requires_cuda
from test_activations import CASES as ACTIVATION_CASES, INPLACE_CASES
from test_glu import CASES as GLU_CASES
from test_glu import call as glu_call

aten = torch.ops.aten
FASTACT_DIR = os.path.dirname(os.path.abspath(fastact.__file__))

# Reads a tensor's value on the host: .item(), float(), int(), bool().
SCALAR_READS = {aten._local_scalar_dense.default}
# A tensor made from Python data (torch.tensor, Tensor.new_tensor): on CUDA a
# host-to-device copy. (aten.scalar_tensor, a fill on the device, is fine.)
FROM_PYTHON_DATA = {aten.lift_fresh.default, aten.lift_fresh_copy.default}
# Output shape depends on the data: the host waits for the device to know it.
DATA_DEPENDENT = {aten.nonzero.default, aten.masked_select.default, aten.is_nonzero.default,
                  aten.equal.default, aten.allclose.default, aten._unique2.default,
                  aten.unique_consecutive.default, aten.unique_dim.default,
                  aten.repeat_interleave.Tensor}
# fastact operators that are not ops of the API (op lists, build information)
NOT_OPS = ("fastact::_activation_ops", "fastact::_glu_ops", "fastact::_build_info", "fastact::_cuda_",
           "fastact::_cpu_cache", "fastact::_emu", "fastact::_half", "fastact::_selfcheck")


def _caller() -> str:
    """The innermost fastact line on the stack (where the call was made)."""
    for frame in reversed(traceback.extract_stack()[:-3]):
        if frame.filename.startswith(FASTACT_DIR):
            return f"{os.path.relpath(frame.filename, os.path.dirname(FASTACT_DIR))}:{frame.lineno}"
    return "outside fastact"


class SyncRecorder(TorchDispatchMode):
    """Records the calls that would block the host on a device. ``device``
    is where the op's data lives ("cpu", "meta" or "cuda"); on another
    device than the CPU, CPU tensors are host values."""

    def __init__(self, device: str):
        super().__init__()
        self.device = torch.device(device).type
        self.calls: list[str] = []
        self.fastact_ops: set[str] = set()
        self._tolist = None

    def __enter__(self):
        # Tensor.tolist / numpy read the data without a dispatch
        self._tolist, self._numpy = torch.Tensor.tolist, torch.Tensor.numpy
        recorder = self

        def tolist(t, *args, **kwargs):
            if t.device.type == recorder.device:
                recorder._record(f"Tensor.tolist() of a {t.device.type} tensor")
            return recorder._tolist(t, *args, **kwargs)

        def numpy(t, *args, **kwargs):
            if t.device.type == recorder.device:
                recorder._record(f"Tensor.numpy() of a {t.device.type} tensor")
            return recorder._numpy(t, *args, **kwargs)

        torch.Tensor.tolist, torch.Tensor.numpy = tolist, numpy
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist, torch.Tensor.numpy = self._tolist, self._numpy
        return super().__exit__(*exc)

    def _record(self, what: str) -> None:
        self.calls.append(f"{what} at {_caller()}")

    def _on_device(self, t) -> bool:
        return isinstance(t, torch.Tensor) and t.device.type == self.device

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if name.startswith("fastact::"):
            self.fastact_ops.add(name)
            if self.device != "cpu":
                for a in (*args, *kwargs.values()):
                    if isinstance(a, torch.Tensor) and a.device.type == "cpu":
                        self._record(f"{func} got a CPU tensor {tuple(a.shape)} for {self.device} data "
                                     f"(its kernel copies it to the device)")
        elif func in SCALAR_READS:
            if self._on_device(args[0]):
                self._record(f"{func} (.item()/float()/bool() of a {self.device} tensor)")
        elif func in FROM_PYTHON_DATA:
            self._record(f"{func} (a tensor made from Python data: torch.tensor / new_tensor)")
        elif func in DATA_DEPENDENT:
            self._record(f"{func} (output shape depends on the data)")
        elif func is aten.index.Tensor and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                               for i in args[1]):
            self._record(f"{func} with a boolean mask (output shape depends on the data)")
        elif func in (aten._to_copy.default, aten.copy_.default):
            src = args[1] if func is aten.copy_.default else args[0]
            dst = args[0].device if func is aten.copy_.default else kwargs.get("device", src.device)
            dst = torch.device(dst).type
            if dst != src.device.type and "cpu" in (dst, src.device.type):
                self._record(f"{func} from {src.device.type} to {dst} (a host-device copy)")
        return func(*args, **kwargs)


# --- the cases: every op of fastact.functional, forward and backward --------------------

# A case: (label, make) where make(device, dtype) returns (run, leaves):
# run() -> output(s), leaves the tensors whose gradient backward computes.
# Inputs are made outside the recorder.

def _x(*shape, device, dtype, scale=3.0):
    x = torch.randn(shape, dtype=torch.float64) * scale
    return x.to(dtype).to(device).requires_grad_(True)


def _activation(name, params, inplace=False):
    def make(device, dtype):
        x = _x(4, 6, device=device, dtype=dtype)
        if inplace:  # on a tensor that needs no gradient: the in-place kernel itself
            y = x.detach().clone()
            if (name, params) in INPLACE_CASES:
                return (lambda: getattr(F, name)(y, *params, inplace=True)), []
            # (no in-place form in torch.nn.functional: the operator itself)
            return (lambda: getattr(torch.ops.fastact, name + "_")(y, *params)), []
        return (lambda: getattr(F, name)(x, *params)), [x]
    return make


def _glu(name, params, packed):
    def make(device, dtype):
        x = _x(4, 12, device=device, dtype=dtype)
        if packed:
            return (lambda: glu_call(name, x, None, -1, params)), [x]
        up = _x(4, 12, device=device, dtype=dtype)
        return (lambda: glu_call(name, x, up, -1, params)), [x, up]
    return make


def _simple(fn, *shapes):
    """fn(*inputs) for inputs of `shapes` (all requiring grad)."""
    def make(device, dtype):
        xs = [_x(*s, device=device, dtype=dtype) for s in shapes]
        return (lambda: fn(*xs)), xs
    return make


def _swish_beta(beta_kind):
    def make(device, dtype):
        x = _x(4, 6, device=device, dtype=dtype)
        if beta_kind == "host scalar":  # a CPU 0-dim beta that needs no gradient
            beta = torch.tensor(0.7, dtype=dtype)
            return (lambda: F.swish(x, beta)), [x]
        shape = () if beta_kind == "scalar" else (6,)
        beta = (torch.rand(shape, dtype=torch.float64) + 0.5).to(dtype).to(device).requires_grad_(True)
        return (lambda: F.swish(x, beta)), [x, beta]
    return make


def _prelu(device, dtype):
    x = _x(4, 3, 5, device=device, dtype=dtype)
    w = torch.full((3,), 0.25, dtype=dtype, device=device).requires_grad_(True)
    return (lambda: F.prelu(x, w)), [x, w]


def _cross_entropy(prob=False, dims=2, **options):
    def make(device, dtype):
        kw = dict(options)
        n, c = 6, 11
        shape = (n, c) if dims == 2 else (n, c, 3)
        x = _x(*shape, device=device, dtype=dtype)
        leaves = [x]
        if prob:
            t = torch.softmax(torch.randn(shape, dtype=torch.float64), 1).to(dtype).to(device)
            t.requires_grad_(True)
            leaves.append(t)
        else:
            t = torch.randint(0, c, (n,) + shape[2:])
            t.view(-1)[1] = -100
            t = t.to(device)
        if kw.get("weight"):
            kw["weight"] = (torch.rand(c, dtype=torch.float64) + 0.5).to(dtype).to(device)
        return (lambda: F.cross_entropy(x, t, **kw)), leaves
    return make


def _linear_ce(prob=False, bias=False, **options):
    def make(device, dtype):
        kw = dict(options)
        n, h, v = 10, 8, 13
        x = _x(n, h, device=device, dtype=dtype)
        w = _x(v, h, device=device, dtype=dtype, scale=0.3)
        leaves = [x, w]
        if bias:
            kw["linear_bias"] = _x(v, device=device, dtype=dtype, scale=0.1)
            leaves.append(kw["linear_bias"])
        if prob:
            t = torch.softmax(torch.randn(n, v, dtype=torch.float64), 1).to(dtype).to(device)
        else:
            t = torch.randint(0, v, (n,))
            t[2] = -100
            t = t.to(device)
        if kw.get("weight"):
            kw["weight"] = (torch.rand(v, dtype=torch.float64) + 0.5).to(dtype).to(device)
        # chunk_size=4: three chunks, the chunk loop runs
        return (lambda: F.linear_cross_entropy(x, w, t, chunk_size=4, **kw)), leaves
    return make


def _linear_logprobs(entropy=False, bias=False, temperature=1.0):
    def make(device, dtype):
        n, h, v = 10, 8, 13
        x = _x(n, h, device=device, dtype=dtype)
        w = _x(v, h, device=device, dtype=dtype, scale=0.3)
        leaves, kw = [x, w], dict(return_entropy=entropy, temperature=temperature)
        if bias:
            kw["linear_bias"] = _x(v, device=device, dtype=dtype, scale=0.1)
            leaves.append(kw["linear_bias"])
        t = torch.randint(0, v, (n,))
        t[2] = -100
        t = t.to(device)
        # chunk_size=4: three chunks, the chunk loop runs
        return (lambda: F.linear_logprobs(x, w, t, chunk_size=4, **kw)), leaves
    return make


def _logprob_rows(device, dtype):
    # the row op itself (float32 logits whatever the case's dtype), its
    # autograd formula's out-of-place backward
    z = _x(6, 11, device=device, dtype=torch.float32)
    t = torch.randint(0, 11, (6,))
    t[1] = -100
    t = t.to(device)
    return (lambda: torch.ops.fastact.logprob_rows(z, t, 0.7, -100, True)), [z]


def _dropout_family(name):
    def make(device, dtype):
        x = _x(32, 64, device=device, dtype=dtype)
        b = _x(64, device=device, dtype=dtype)
        r = _x(32, 64, device=device, dtype=dtype)
        calls = {
            "dropout": (lambda: F.dropout(x, 0.3), [x]),
            "dropout(inplace)": (lambda: F.dropout(r.detach(), 0.3, inplace=True), []),
            "dropout_add": (lambda: F.dropout_add(x, r, 0.3), [x, r]),
            "bias_dropout_add": (lambda: F.bias_dropout_add(x, b, r, 0.3), [x, b, r]),
            "bias_act_dropout": (lambda: F.bias_act_dropout(x, b, "gelu", 0.3), [x, b]),
            "bias_act_dropout(eval)": (lambda: F.bias_act_dropout(x, b, "silu", 0.3, training=False), [x, b]),
        }
        return calls[name]
    return make


def _mse(reduction):
    def make(device, dtype):
        x, t = _x(5, 7, device=device, dtype=dtype), _x(5, 7, device=device, dtype=dtype)
        return (lambda: F.mse_loss(x, t, reduction=reduction)), [x, t]
    return make


CASES: list[tuple[str, Callable]] = (
    [(f"{n}{list(p) if p else ''}", _activation(n, p)) for n, p in ACTIVATION_CASES]
    + [(f"{n}{list(p) if p else ''}(inplace)", _activation(n, p, inplace=True)) for n, p in ACTIVATION_CASES]
    + [("prelu", _prelu)]
    + [(f"swish(beta {k})", _swish_beta(k)) for k in ("host scalar", "scalar", "per feature")]
    + [("rrelu(training)", _simple(lambda x: F.rrelu(x, training=True), (4, 6))),
       ("rrelu(eval)", _simple(lambda x: F.rrelu(x), (4, 6)))]
    + [(f"{n}{list(p) if p else ''}({'packed' if packed else 'two-tensor'})", _glu(n, p, packed))
       for n, p in GLU_CASES for packed in (True, False)]
    + [("glu", _simple(lambda x: F.glu(x, 0), (6, 5)))]
    + [(n, _dropout_family(n)) for n in ("dropout", "dropout(inplace)", "dropout_add", "bias_dropout_add",
                                         "bias_act_dropout", "bias_act_dropout(eval)")]
    + [(f"cross_entropy({label})", _cross_entropy(**kw)) for label, kw in [
        ("mean", {}), ("sum", dict(reduction="sum")), ("none", dict(reduction="none")),
        ("weight, smoothing", dict(weight=True, label_smoothing=0.1)),
        ("z_loss, softcap", dict(z_loss=1e-3, softcap=5.0)), ("(N, C, d)", dict(dims=3)),
        ("probabilities, mean", dict(prob=True)), ("probabilities, sum", dict(prob=True, reduction="sum")),
        ("probabilities, weight, smoothing", dict(prob=True, weight=True, label_smoothing=0.2)),
        ("probabilities, (N, C, d)", dict(prob=True, dims=3))]]
    + [("softmax", _simple(lambda x: F.softmax(x, -1), (5, 9))),
       ("log_softmax", _simple(lambda x: F.log_softmax(x, 0), (5, 9)))]
    + [(f"mse_loss({r})", _mse(r)) for r in ("mean", "sum", "none")]
    + [(f"linear_cross_entropy({label})", _linear_ce(**kw)) for label, kw in [
        ("mean", {}), ("sum", dict(reduction="sum")), ("none", dict(reduction="none")),
        ("weight, smoothing, bias", dict(weight=True, label_smoothing=0.1, bias=True)),
        ("z_loss, softcap", dict(z_loss=1e-3, softcap=5.0)),
        ("probabilities", dict(prob=True))]]
    + [(f"linear_logprobs({label})", _linear_logprobs(**kw)) for label, kw in [
        ("logp", {}), ("entropy, temperature, bias", dict(entropy=True, temperature=0.7, bias=True))]]
    + [("logprob_rows", _logprob_rows)]
)
CASE_IDS = [label for label, _ in CASES]
DTYPES = [torch.float32, torch.bfloat16]


def _forward_backward(run, leaves):
    out = run()
    outs = [o for o in (out if isinstance(out, tuple) else (out,)) if o is not None and o.requires_grad]
    if not leaves:
        return out, ()
    grads = torch.autograd.grad(outs, leaves, [torch.ones_like(o) for o in outs], allow_unused=True)
    return out, grads


def _check(device: str, dtype: torch.dtype, cases=CASES) -> tuple[list[str], set[str]]:
    """Runs each case forward and backward under a SyncRecorder; returns the
    problems (op and offending call) and the fastact operators reached."""
    problems, reached = [], set()
    for label, make in cases:
        run, leaves = make(device, dtype)
        recorder = SyncRecorder(device)
        try:
            with recorder:
                _forward_backward(run, leaves)
        except Exception as e:  # e.g. .item() of a meta tensor
            problems.append(f"{label} [{dtype}]: raised {type(e).__name__}: {str(e).splitlines()[0]}")
        problems += [f"{label} [{dtype}]: {call}" for call in dict.fromkeys(recorder.calls)]
        reached |= recorder.fastact_ops
    return problems, reached


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_no_host_sync(device, dtype):
    problems, _ = _check(device, dtype)
    assert not problems, "host syncs in the ops:\n" + "\n".join(problems)


def _api_ops() -> set[str]:
    names = {n.split(".")[0] for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastact::")}
    return {n for n in names if not n.startswith(NOT_OPS)}


def test_every_op_is_covered():
    """Every fastact operator (forward and backward) is reached by a case, so
    a new op cannot slip past the sync check."""
    _, reached = _check("meta", torch.float32)
    missing = sorted(_api_ops() - reached)
    assert not missing, f"fastact operators no case of test_syncs.py runs: {missing}"


def test_recorder_catches_syncs():
    """The recorder itself: each kind of sync is seen, on CPU and on meta."""
    x = torch.randn(4)
    for device, sync, expected in [
        ("cpu", lambda t: float(t.sum()), "_local_scalar_dense"),
        ("cpu", lambda t: t.new_tensor(2.0) * t, "lift_fresh"),
        ("cpu", lambda t: t[t > 0], "boolean mask"),
        ("cpu", lambda t: t.nonzero(), "nonzero"),
        ("cpu", lambda t: t.tolist(), "tolist"),
        ("meta", lambda t: t + torch.ones(4).to(t.device), "host-device copy"),
        ("meta", lambda t: torch.ops.fastact.swish_beta(t, torch.tensor(1.0)), "got a CPU tensor"),
    ]:
        recorder, xd = SyncRecorder(device), x.to(device)
        with recorder:
            sync(xd)
        assert any(expected in c for c in recorder.calls), (device, expected, recorder.calls)
    recorder = SyncRecorder("meta")
    x, host = x.to("meta"), torch.ones(())
    with recorder:  # a CPU value read on the host is no device sync
        float(host)
        F.relu(x)
    assert not recorder.calls, recorder.calls


# --- CUDA: the same cases under the sync debug mode, and CUDA graph capture -------------


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_no_sync_on_cuda(dtype):
    problems = []
    for label, make in CASES:
        run, leaves = make("cuda", dtype)
        _forward_backward(run, leaves)  # first calls (lazy initialisation) outside the check
        torch.cuda.synchronize()
        recorder = SyncRecorder("cuda")
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            with recorder:
                _forward_backward(run, leaves)
        except Exception as e:
            problems.append(f"{label} [{dtype}]: {type(e).__name__}: {str(e).splitlines()[0]}")
        finally:
            torch.cuda.set_sync_debug_mode(previous)
        problems += [f"{label} [{dtype}]: {call}" for call in dict.fromkeys(recorder.calls)]
    torch.cuda.synchronize()
    assert not problems, "host syncs on CUDA:\n" + "\n".join(problems)


GRAPH_CASES = (
    [(n, _dropout_family(n)) for n in ("dropout", "dropout_add", "bias_dropout_add", "bias_act_dropout")]
    + [("rrelu(training)", _simple(lambda x: F.rrelu(x, training=True), (64, 64)))]
    + [(label, make) for label, make in CASES
       if label.startswith(("cross_entropy(mean)", "cross_entropy(weight", "cross_entropy(probabilities",
                            "linear_cross_entropy(mean)", "linear_cross_entropy(weight",
                            "linear_cross_entropy(probabilities", "glu"))
       or any(label.startswith(n) for n, _ in GLU_CASES)]
)
RANDOM = ("dropout", "dropout_add", "bias_dropout_add", "bias_act_dropout", "rrelu(training)")


def _capture(fn):
    """(graph, static outputs) of fn, warmed up on a side stream first."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = fn()
    return graph, outs


def _consistent(label, outs, leaves):
    """The random ops: the replay's gradient used the replay's own mask or
    slopes (gradient 1 from a sum, so grad input is the per-element factor)."""
    y, gx = outs[0], outs[1]
    x = leaves[0].detach()
    if label == "rrelu(training)":  # y = x * slope where x < 0, and the gradient is that slope
        torch.testing.assert_close(y, x * gx)
        return
    if label == "bias_act_dropout":  # gelu(x + b) * keep / (1 - p)
        kept = y != 0
    else:
        inner = x + leaves[1].detach() if label == "bias_dropout_add" else x
        residual = leaves[-1].detach() if label != "dropout" else 0
        torch.testing.assert_close(y, residual + inner * gx)
        kept = gx != 0
    assert 0.55 < kept.float().mean().item() < 0.85, kept.float().mean().item()


@requires_cuda
@pytest.mark.parametrize("label,make", GRAPH_CASES, ids=[label for label, _ in GRAPH_CASES])
def test_cuda_graph_capture_and_replay(label, make):
    """Forward and backward captured in one CUDA graph and replayed twice:
    the deterministic ops give eager's results on every replay; dropout
    draws a fresh mask per replay, and every random op's gradient matches
    its forward; rrelu, whose slope stream comes from the CUDA generator as
    dropout's mask, draws fresh slopes per replay."""
    run, leaves = make("cuda", torch.float32)

    def step():
        out, grads = _forward_backward(run, leaves)
        return (out.detach(), *(g for g in grads if g is not None))

    expected = step()
    graph, static = _capture(step)
    replays = []
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        replays.append([t.clone() for t in static])
    for outs in replays:
        assert len(outs) == len(expected)
        if label in RANDOM:
            _consistent(label, outs, leaves)
        else:
            for got, want in zip(outs, expected):
                torch.testing.assert_close(got, want, equal_nan=True)
    if label in RANDOM:
        assert not torch.equal(replays[0][0], replays[1][0]), "each replay must draw a fresh mask or slopes"
