"""fastact modules, named and constructed like ``torch.nn``.

Each module subclasses its ``torch.nn`` twin and only replaces ``forward``,
so constructor arguments, attributes, ``extra_repr`` and state dicts are the
twin's: a state dict loads both ways. ``patch(model)`` swaps twins in place.
"""
from __future__ import annotations

from collections import Counter

import torch
from torch import Tensor

from . import functional as F

__all__ = [
    "ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "SELU", "CELU", "GELU", "SiLU",
    "Mish", "Sigmoid", "Tanh", "LogSigmoid", "Hardswish", "Hardsigmoid", "Hardtanh",
    "Softplus", "Softshrink", "Hardshrink", "Tanhshrink", "Softsign", "Threshold",
    "Swish", "QuickGELU", "SquaredReLU", "GLU", "SwiGLU", "Dropout", "CrossEntropyLoss", "Softmax", "LogSoftmax", "MSELoss", "LinearCrossEntropyLoss", "patch",
]


class ReLU(torch.nn.ReLU):
    def forward(self, input: Tensor) -> Tensor:
        return F.relu(input, self.inplace)


class ReLU6(torch.nn.ReLU6):
    def forward(self, input: Tensor) -> Tensor:
        return F.relu6(input, self.inplace)


class LeakyReLU(torch.nn.LeakyReLU):
    def forward(self, input: Tensor) -> Tensor:
        return F.leaky_relu(input, self.negative_slope, self.inplace)


class PReLU(torch.nn.PReLU):
    def forward(self, input: Tensor) -> Tensor:
        return F.prelu(input, self.weight)


class RReLU(torch.nn.RReLU):
    def forward(self, input: Tensor) -> Tensor:
        return F.rrelu(input, self.lower, self.upper, self.training, self.inplace)


class ELU(torch.nn.ELU):
    def forward(self, input: Tensor) -> Tensor:
        return F.elu(input, self.alpha, self.inplace)


class SELU(torch.nn.SELU):
    def forward(self, input: Tensor) -> Tensor:
        return F.selu(input, self.inplace)


class CELU(torch.nn.CELU):
    def forward(self, input: Tensor) -> Tensor:
        return F.celu(input, self.alpha, self.inplace)


class GELU(torch.nn.GELU):
    def forward(self, input: Tensor) -> Tensor:
        return F.gelu(input, approximate=self.approximate)


class SiLU(torch.nn.SiLU):
    def forward(self, input: Tensor) -> Tensor:
        return F.silu(input, self.inplace)


class Mish(torch.nn.Mish):
    def forward(self, input: Tensor) -> Tensor:
        return F.mish(input, self.inplace)


class Sigmoid(torch.nn.Sigmoid):
    def forward(self, input: Tensor) -> Tensor:
        return F.sigmoid(input)


class Tanh(torch.nn.Tanh):
    def forward(self, input: Tensor) -> Tensor:
        return F.tanh(input)


class LogSigmoid(torch.nn.LogSigmoid):
    def forward(self, input: Tensor) -> Tensor:
        return F.logsigmoid(input)


class Hardswish(torch.nn.Hardswish):
    def forward(self, input: Tensor) -> Tensor:
        return F.hardswish(input, self.inplace)


class Hardsigmoid(torch.nn.Hardsigmoid):
    def forward(self, input: Tensor) -> Tensor:
        return F.hardsigmoid(input, self.inplace)


class Hardtanh(torch.nn.Hardtanh):
    def forward(self, input: Tensor) -> Tensor:
        return F.hardtanh(input, self.min_val, self.max_val, self.inplace)


class Softplus(torch.nn.Softplus):
    def forward(self, input: Tensor) -> Tensor:
        return F.softplus(input, self.beta, self.threshold)


class Softshrink(torch.nn.Softshrink):
    def forward(self, input: Tensor) -> Tensor:
        return F.softshrink(input, self.lambd)


class Hardshrink(torch.nn.Hardshrink):
    def forward(self, input: Tensor) -> Tensor:
        return F.hardshrink(input, self.lambd)


class Tanhshrink(torch.nn.Tanhshrink):
    def forward(self, input: Tensor) -> Tensor:
        return F.tanhshrink(input)


class Softsign(torch.nn.Softsign):
    def forward(self, input: Tensor) -> Tensor:
        return F.softsign(input)


class Threshold(torch.nn.Threshold):
    def forward(self, input: Tensor) -> Tensor:
        return F.threshold(input, self.threshold, self.value, self.inplace)


class Swish(torch.nn.Module):
    """``x * sigmoid(beta * x)``; with ``learnable=True`` beta is a parameter."""

    def __init__(self, beta: float = 1.0, learnable: bool = True) -> None:
        super().__init__()
        if learnable:
            self.beta = torch.nn.Parameter(torch.tensor(float(beta)))
        else:
            self.beta = float(beta)

    def forward(self, input: Tensor) -> Tensor:
        return F.swish(input, self.beta)

    def extra_repr(self) -> str:
        beta = self.beta.item() if isinstance(self.beta, Tensor) else self.beta
        return f"beta={beta}, learnable={isinstance(self.beta, Tensor)}"


class QuickGELU(torch.nn.Module):
    """``x * sigmoid(1.702 * x)`` (CLIP's GELU approximation)."""

    def forward(self, input: Tensor) -> Tensor:
        return F.quick_gelu(input)


class SquaredReLU(torch.nn.Module):
    """``relu(x) ** 2`` (Primer)."""

    def forward(self, input: Tensor) -> Tensor:
        return F.squared_relu(input)


class GLU(torch.nn.GLU):
    def forward(self, input: Tensor) -> Tensor:
        return F.glu(input, self.dim)


class SwiGLU(torch.nn.Module):
    """The LLaMA feed-forward block: ``w2(silu(w1 x) * w3 x)``, with the
    activation and product fused (one kernel forward, one backward)."""

    def __init__(self, dim: int, hidden_dim: int, bias: bool = False, device=None, dtype=None) -> None:
        super().__init__()
        kw = dict(bias=bias, device=device, dtype=dtype)
        self.w1 = torch.nn.Linear(dim, hidden_dim, **kw)
        self.w2 = torch.nn.Linear(hidden_dim, dim, **kw)
        self.w3 = torch.nn.Linear(dim, hidden_dim, **kw)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.swiglu(self.w1(x), self.w3(x)))


class Dropout(torch.nn.Dropout):
    """torch.nn.Dropout with the fused, mask-free kernel."""

    def forward(self, input: Tensor) -> Tensor:
        return F.dropout(input, self.p, self.training, self.inplace)


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """torch.nn.CrossEntropyLoss on the fused kernel, with the extras of
    fastact.functional.cross_entropy: ``z_loss`` and ``softcap``."""

    def __init__(self, weight=None, size_average=None, ignore_index: int = -100, reduce=None,
                 reduction: str = "mean", label_smoothing: float = 0.0, *, z_loss: float = 0.0,
                 softcap=None) -> None:
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        self.z_loss = z_loss
        self.softcap = softcap

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing,
                               z_loss=getattr(self, "z_loss", 0.0), softcap=getattr(self, "softcap", None))


class Softmax(torch.nn.Softmax):
    def forward(self, input: Tensor) -> Tensor:
        return F.softmax(input, self.dim)


class LogSoftmax(torch.nn.LogSoftmax):
    def forward(self, input: Tensor) -> Tensor:
        return F.log_softmax(input, self.dim)


class MSELoss(torch.nn.MSELoss):
    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(input, target, reduction=self.reduction)


class LinearCrossEntropyLoss(torch.nn.Module):
    """``linear_cross_entropy`` as a module: ``forward(hidden, weight, target, bias=None)``."""

    def __init__(self, ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0, *,
                 z_loss: float = 0.0, softcap=None, chunk_size=None, accum_dtype=None) -> None:
        super().__init__()
        self.ignore_index, self.reduction, self.label_smoothing = ignore_index, reduction, label_smoothing
        self.z_loss, self.softcap, self.chunk_size, self.accum_dtype = z_loss, softcap, chunk_size, accum_dtype

    def forward(self, hidden: Tensor, weight: Tensor, target: Tensor, bias=None) -> Tensor:
        return F.linear_cross_entropy(hidden, weight, target, bias, self.ignore_index, self.reduction,
                                      self.label_smoothing, z_loss=self.z_loss, softcap=self.softcap,
                                      chunk_size=self.chunk_size, accum_dtype=self.accum_dtype)


def _twins() -> dict:
    """torch.nn class -> fastact twin, for every module here that subclasses one."""
    twins = {}
    for obj in globals().values():
        if isinstance(obj, type) and issubclass(obj, torch.nn.Module) and obj.__module__ == __name__:
            base = obj.__bases__[0]
            if base is not torch.nn.Module and base.__module__.startswith("torch.nn"):
                twins[base] = obj
    return twins


def patch(model: torch.nn.Module) -> torch.nn.Module:
    """Swap, in place, every ``torch.nn`` module of ``model`` that has a fastact
    twin for that twin, keeping its parameters, buffers, hooks and training
    mode; the count of swaps per type is added to ``model.fastact_patched``.
    Only exact types are swapped: a user subclass keeps its own forward."""
    twins = _twins()
    counts = Counter(getattr(model, "fastact_patched", {}))
    for module in model.modules():
        twin = twins.get(type(module))
        if twin is not None:
            module.__class__ = twin
            counts[twin.__name__] += 1
    model.fastact_patched = dict(counts)
    return model
