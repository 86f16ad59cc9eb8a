"""fastact modules, named and constructed like ``torch.nn``.

Each module subclasses its ``torch.nn`` twin and only replaces ``forward``,
so constructor arguments, attributes, ``extra_repr`` and state dicts are the
twin's: a state dict loads both ways. ``patch(model)`` swaps twins in place.
"""
from __future__ import annotations

import math
import sys
from collections import Counter

import torch
from torch import Tensor

from . import functional as F
from ._twins import nn_twins
from .errors import FastactValueError

__all__ = [
    "ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "SELU", "CELU", "GELU", "SiLU",
    "Mish", "Sigmoid", "Tanh", "LogSigmoid", "Hardswish", "Hardsigmoid", "Hardtanh",
    "Softplus", "Softshrink", "Hardshrink", "Tanhshrink", "Softsign", "Threshold",
    "Swish", "QuickGELU", "SquaredReLU", "GLU", "SwiGLU", "Dropout", "CrossEntropyLoss", "Softmax", "LogSoftmax", "MSELoss", "LinearCrossEntropyLoss", "LinearLogprobs", "LinearDistillLoss", "patch",
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


_TorchLinearCrossEntropyLoss = getattr(torch.nn, "LinearCrossEntropyLoss", None)  # torch >= 2.14


class _LinearCrossEntropyForward:
    """forward and the fastact extras of LinearCrossEntropyLoss, on top of
    torch's module (torch >= 2.14) or of its twin below (older torch)."""

    def _set_extras(self, z_loss, softcap, chunk_size, accum_dtype):
        self.z_loss, self.softcap, self.chunk_size, self.accum_dtype = z_loss, softcap, chunk_size, accum_dtype

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        linear_weight = self.linear.weight.reshape((self.num_classes, *self.out_features, self.linear.in_features))
        linear_bias = (self.linear.bias.reshape((self.num_classes, *self.out_features))
                       if self.linear.bias is not None else None)
        return F.linear_cross_entropy(
            input, linear_weight, target, linear_bias=linear_bias, weight=self.weight, reduction=self.reduction,
            ignore_index=self.ignore_index, label_smoothing=self.label_smoothing, options=self.options,
            z_loss=getattr(self, "z_loss", 0.0), softcap=getattr(self, "softcap", None),
            chunk_size=getattr(self, "chunk_size", None), accum_dtype=getattr(self, "accum_dtype", None))


if _TorchLinearCrossEntropyLoss is not None:

    class LinearCrossEntropyLoss(_LinearCrossEntropyForward, _TorchLinearCrossEntropyLoss):
        """torch.nn.LinearCrossEntropyLoss (it owns ``linear``, a ``Linear(in_features,
        num_classes * prod(out_features))``) on the fused chunked kernel, with the
        extras of fastact.functional.linear_cross_entropy."""

        def __init__(self, in_features: int, num_classes: int, *, out_features: tuple = (), bias: bool = False,
                     device=None, dtype=None, reduction: str = "mean", weight=None, ignore_index=None,
                     label_smoothing: float = 0.0, options=None, z_loss: float = 0.0, softcap=None,
                     chunk_size=None, accum_dtype=None) -> None:
            super().__init__(in_features, num_classes, out_features=tuple(out_features), bias=bias, device=device,
                             dtype=dtype, reduction=reduction, weight=weight, ignore_index=ignore_index,
                             label_smoothing=label_smoothing, options=options)
            self._set_extras(z_loss, softcap, chunk_size, accum_dtype)

else:

    class LinearCrossEntropyLoss(_LinearCrossEntropyForward, torch.nn.modules.loss._WeightedLoss):
        """torch 2.14's nn.LinearCrossEntropyLoss for older torch: constructed,
        named (``linear``, ``weight``) and computed the same way."""

        def __init__(self, in_features: int, num_classes: int, *, out_features: tuple = (), bias: bool = False,
                     device=None, dtype=None, reduction: str = "mean", weight=None, ignore_index=None,
                     label_smoothing: float = 0.0, options=None, z_loss: float = 0.0, softcap=None,
                     chunk_size=None, accum_dtype=None) -> None:
            if weight is not None and tuple(weight.shape) != (num_classes,):
                raise FastactValueError(f"fastact.nn.LinearCrossEntropyLoss: expected weight shape to be "
                                        f"{(num_classes,)}, got {tuple(weight.shape)}")
            if not 0.0 <= label_smoothing <= 1.0:
                raise FastactValueError(f"fastact.nn.LinearCrossEntropyLoss: expected label_smoothing to be in "
                                        f"range [0, 1], got {label_smoothing}")
            super().__init__(weight=weight, size_average=None, reduce=None, reduction=reduction)
            self.num_classes = num_classes
            self.out_features = tuple(out_features)
            self.ignore_index = ignore_index
            self.label_smoothing = label_smoothing
            # stored flat, as torch does: forward reshapes it to (C, *out_features, in_features)
            self.linear = torch.nn.Linear(in_features, math.prod(self.out_features) * num_classes, bias=bias,
                                          device=device, dtype=dtype)
            self.options = options
            self._set_extras(z_loss, softcap, chunk_size, accum_dtype)

        def extra_repr(self) -> str:
            return (f"in_features={self.linear.in_features}, num_classes={self.num_classes}, "
                    f"out_features={self.out_features}, bias={self.linear.bias is not None}, "
                    f"reduction={self.reduction}, ignore_index={self.ignore_index}, "
                    f"label_smoothing={self.label_smoothing}, options={self.options}")


class LinearLogprobs(torch.nn.Module):
    """:func:`fastact.functional.linear_logprobs` as a module: the options at
    construction, the head's weights at each call
    (``forward(input, linear_weight, target, linear_bias=None)``)."""

    def __init__(self, *, temperature: float = 1.0, return_entropy: bool = False, ignore_index: int = -100,
                 chunk_size=None) -> None:
        super().__init__()
        self.temperature, self.return_entropy = temperature, return_entropy
        self.ignore_index, self.chunk_size = ignore_index, chunk_size

    def forward(self, input: Tensor, linear_weight: Tensor, target: Tensor, linear_bias=None):
        return F.linear_logprobs(input, linear_weight, target, linear_bias=linear_bias, temperature=self.temperature,
                                 return_entropy=self.return_entropy, ignore_index=self.ignore_index,
                                 chunk_size=self.chunk_size)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, return_entropy={self.return_entropy}, "
                f"ignore_index={self.ignore_index}, chunk_size={self.chunk_size}")


class LinearDistillLoss(torch.nn.Module):
    """:func:`fastact.functional.linear_distill_loss` as a module: the options
    at construction, both heads' weights at each call."""

    def __init__(self, *, kind: str = "kl", beta: float = 0.5, temperature: float = 1.0, ignore_index: int = -100,
                 reduction: str = "batchmean", chunk_size=None, hard_label_weight: float = 0.0) -> None:
        super().__init__()
        self.kind, self.beta, self.temperature, self.ignore_index = kind, beta, temperature, ignore_index
        self.reduction, self.chunk_size, self.hard_label_weight = reduction, chunk_size, hard_label_weight

    def forward(self, student_input: Tensor, student_weight: Tensor, teacher_input: Tensor, teacher_weight: Tensor,
                target=None, student_bias=None, teacher_bias=None) -> Tensor:
        return F.linear_distill_loss(student_input, student_weight, teacher_input, teacher_weight, target,
                                     kind=self.kind, beta=self.beta, temperature=self.temperature,
                                     ignore_index=self.ignore_index, reduction=self.reduction,
                                     chunk_size=self.chunk_size, hard_label_weight=self.hard_label_weight,
                                     student_bias=student_bias, teacher_bias=teacher_bias)

    def extra_repr(self) -> str:
        return (f"kind={self.kind!r}, beta={self.beta}, temperature={self.temperature}, "
                f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, chunk_size={self.chunk_size}, "
                f"hard_label_weight={self.hard_label_weight}")


def patch(model: torch.nn.Module) -> torch.nn.Module:
    """Swap, in place, every ``torch.nn`` module of ``model`` that has a fastact
    twin for that twin, keeping its parameters, buffers, hooks and training
    mode; the count of swaps per type is added to ``model.fastact_patched``.
    Only exact types are swapped: a user subclass keeps its own forward."""
    twins = nn_twins(sys.modules[__name__])
    counts = Counter(getattr(model, "fastact_patched", {}))
    for module in model.modules():
        twin = twins.get(type(module))
        if twin is not None:
            module.__class__ = twin
            counts[twin.__name__] += 1
    model.fastact_patched = dict(counts)
    return model
