"""The public surface of shared/API.md: every name exists, and functions that
mirror torch.nn.functional take the same arguments with the same defaults."""
from __future__ import annotations

import ast
import inspect
import os
import re
import subprocess
import sys

import pytest
import torch

import fastact
import fastact.functional as F
import fastact.nn as fnn

MIRRORED = ["relu", "relu6", "leaky_relu", "prelu", "rrelu", "elu", "selu", "celu", "gelu", "silu",
            "mish", "logsigmoid", "hardswish", "hardsigmoid", "hardtanh", "softplus", "softshrink",
            "hardshrink", "tanhshrink", "softsign", "threshold", "glu", "softmax", "log_softmax",
            "mse_loss"]
EXTRA = {
    "swish": ["input", "beta"], "quick_gelu": ["input"], "squared_relu": ["input"],
    "swiglu": ["gate", "up", "dim"], "geglu": ["gate", "up", "dim", "approximate"],
    "reglu": ["gate", "up", "dim"], "clamped_swiglu": ["gate", "up", "dim", "alpha", "limit", "interleaved"],
    "dropout": ["input", "p", "training", "inplace", "generator"],
    "dropout_add": ["input", "residual", "p", "training", "generator"],
    "bias_dropout_add": ["input", "bias", "residual", "p", "training", "generator"],
    "bias_act_dropout": ["input", "bias", "activation", "p", "training", "generator"],
    "dropout_mask": ["shape", "p", "seed", "offset", "device"],
    "cross_entropy": ["input", "target", "weight", "ignore_index", "reduction", "label_smoothing",
                      "z_loss", "softcap"],
}
MODULES = ["ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "SELU", "CELU", "GELU", "SiLU",
           "Mish", "Sigmoid", "Tanh", "LogSigmoid", "Hardswish", "Hardsigmoid", "Hardtanh",
           "Softplus", "Softshrink", "Hardshrink", "Tanhshrink", "Softsign", "Threshold", "GLU",
           "Dropout", "Swish", "QuickGELU", "SquaredReLU", "SwiGLU", "CrossEntropyLoss", "MSELoss",
           "Softmax", "LogSoftmax", "LinearCrossEntropyLoss"]


def params(fn):
    """[(name, default)] of a function; for torch builtins without a Python
    signature, parsed from the "name(args) -> Tensor" line of the docstring."""
    try:
        return [(p.name, p.default) for p in inspect.signature(fn).parameters.values()]
    except ValueError:
        line = next(l for l in fn.__doc__.strip().splitlines() if "->" in l)
        tree = ast.parse(f"def f({line[line.index('(') + 1:line.rindex(')')]}): pass")
        args = tree.body[0].args
        defaults = [inspect.Parameter.empty] * (len(args.args) - len(args.defaults)) + \
            [ast.literal_eval(d) for d in args.defaults]
        return [(a.arg, d) for a, d in zip(args.args, defaults)]


@pytest.mark.parametrize("name", MIRRORED)
def test_signature_mirrors_torch(name):
    ours = params(getattr(F, name))
    theirs = params(getattr(torch.nn.functional, name))
    assert ours == theirs


@pytest.mark.parametrize("name", sorted(EXTRA))
def test_extra_functions(name):
    assert [p for p, _ in params(getattr(F, name))] == EXTRA[name]


def test_defaults_of_extras():
    assert inspect.signature(F.swish).parameters["beta"].default == 1.0
    d = inspect.signature(F.dropout).parameters
    assert d["p"].default == 0.5 and d["training"].default is True and d["inplace"].default is False
    assert d["generator"].kind is inspect.Parameter.KEYWORD_ONLY
    b = inspect.signature(F.bias_act_dropout).parameters
    assert b["bias"].default is None and b["activation"].default == "gelu"
    assert inspect.signature(F.geglu).parameters["approximate"].default == "none"
    c = inspect.signature(F.clamped_swiglu).parameters
    assert c["up"].default is None and c["dim"].default == -1
    assert (c["alpha"].default, c["limit"].default, c["interleaved"].default) == (1.702, 7.0, False)
    assert all(c[k].kind is inspect.Parameter.KEYWORD_ONLY for k in ("alpha", "limit", "interleaved"))
    ce = inspect.signature(F.cross_entropy).parameters
    assert ce["ignore_index"].default == -100 and ce["reduction"].default == "mean"
    assert ce["z_loss"].kind is inspect.Parameter.KEYWORD_ONLY and ce["softcap"].default is None


@pytest.mark.parametrize("name", MODULES)
def test_modules_exist(name):
    cls = getattr(fnn, name)
    assert issubclass(cls, torch.nn.Module)
    twin = getattr(torch.nn, name, None)
    if twin is not None:
        assert issubclass(cls, twin)


def test_package_surface():
    assert isinstance(fastact.__version__, str)
    assert isinstance(fastact.cuda_compiled(), bool)
    info = fastact.build_info()
    for key in ("torch_version", "cuda_version", "cuda_archs", "compiler", "cuda_compiled", "tested_torch"):
        assert key in info
    assert callable(fnn.patch)


def test_tested_torch_releases_agree():
    """build_info()'s tested_torch is the Makefile's pin and matrix, and the
    README's "Tested torch releases" line (checked where the repository is)."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
    if not os.path.exists(os.path.join(root, "Makefile")):
        pytest.skip("not in the source tree")
    make = open(os.path.join(root, "Makefile")).read()
    pin = re.search(r"^TORCH_SPEC \?= torch==(\S+)$", make, re.M).group(1)
    matrix = re.search(r"^TORCH_MATRIX \?= (.+)$", make, re.M).group(1).split()
    tested = fastact.build_info()["tested_torch"]
    assert sorted(tested, key=lambda v: tuple(map(int, v.split(".")))) == tested
    assert set(tested) == {pin, *matrix}
    readme = open(os.path.join(root, "README.md")).read()
    line = re.search(r"^Tested torch releases: (.+)$", readme, re.M).group(1)
    assert re.findall(r"\d+\.\d+\.\d+", line) == tested


def test_every_op_is_a_torch_operator():
    for name in ("relu", "gelu", "swiglu", "swiglu_packed", "glu", "dropout", "prelu"):
        assert isinstance(getattr(torch.ops.fastact, name), torch._ops.OpOverloadPacket)


def test_python_m_fastact_selfcheck():
    r = subprocess.run([sys.executable, "-m", "fastact"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "self-check passed" in r.stdout and "cuda_compiled" in r.stdout


# linear_cross_entropy: torch 2.14's signature, then fastact's keyword extras
LINEAR_CE = ["input", "linear_weight", "target", "linear_bias", "weight", "reduction", "ignore_index",
             "label_smoothing", "options", "z_loss", "softcap", "chunk_size", "accum_dtype"]


def test_linear_cross_entropy_signature():
    sig = inspect.signature(F.linear_cross_entropy).parameters
    assert list(sig) == LINEAR_CE
    assert [p.kind for p in sig.values()][:3] == [inspect.Parameter.POSITIONAL_OR_KEYWORD] * 3
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in list(sig.values())[3:])
    assert sig["ignore_index"].default is None and sig["weight"].default is None
    torch_fn = getattr(torch.nn.functional, "linear_cross_entropy", None)
    if torch_fn is not None:  # torch >= 2.14: its arguments are our first ones, same defaults
        theirs = inspect.signature(torch_fn).parameters
        assert [(n, p.kind, p.default) for n, p in theirs.items()] == \
            [(n, sig[n].kind, sig[n].default) for n in list(sig)[:len(theirs)]]


def test_linear_cross_entropy_module_constructor():
    m = fnn.LinearCrossEntropyLoss(6, 5, out_features=(2,), bias=True, label_smoothing=0.1, z_loss=1e-4,
                                   chunk_size=3)
    assert m.linear.weight.shape == (10, 6) and m.linear.bias.shape == (10,)
    twin = getattr(torch.nn, "LinearCrossEntropyLoss", None)
    if twin is not None:
        assert isinstance(m, twin)
        theirs = inspect.signature(twin.__init__).parameters
        ours = inspect.signature(fnn.LinearCrossEntropyLoss.__init__).parameters
        assert [(n, p.kind, p.default) for n, p in theirs.items()] == \
            [(n, ours[n].kind, ours[n].default) for n in list(ours)[:len(theirs)]]


@pytest.mark.parametrize("call,torch_call", [
    (lambda: F.rrelu(torch.randn(3), 0.5, 0.1), lambda: torch.nn.functional.rrelu(torch.randn(3), 0.5, 0.1)),
    (lambda: F.gelu(torch.randn(3), approximate="x"),
     lambda: torch.nn.functional.gelu(torch.randn(3), approximate="x")),
    (lambda: F.softshrink(torch.randn(3), -0.5), lambda: torch.nn.functional.softshrink(torch.randn(3), -0.5)),
    (lambda: F.prelu(torch.randn(2, 3), torch.rand(2)),
     lambda: torch.nn.functional.prelu(torch.randn(2, 3), torch.rand(2))),
    (lambda: F.gelu(torch.ones(3, dtype=torch.long)),
     lambda: torch.nn.functional.gelu(torch.ones(3, dtype=torch.long))),
    (lambda: F.hardtanh(torch.randn(3), 1.0, -1.0), lambda: torch.nn.functional.hardtanh(torch.randn(3), 1.0, -1.0)),
    (lambda: F.dropout(torch.randn(3), 1.5), lambda: torch.nn.functional.dropout(torch.randn(3), 1.5)),
], ids=["rrelu-bounds", "gelu-approximate", "softshrink-lambd", "prelu-shape", "gelu-long", "hardtanh-bounds",
        "dropout-p"])
def test_errors_are_torch_exception_types(call, torch_call):
    with pytest.raises(Exception) as theirs:
        torch_call()
    with pytest.raises(type(theirs.value)) as ours:
        call()
    assert str(ours.value).startswith("fastact."), str(ours.value)
    assert isinstance(ours.value, (ValueError, TypeError))  # what fastact's own tests and users catch
