"""transformers' own activation modules (``transformers.activations``, the
``ACT2FN`` entries) on fastact's kernels.

Each module is matched by its class name to the fastact op that computes the
same function (``NewGELUActivation`` and ``FastGELUActivation`` are the tanh
GELU written out in Python, ``QuickGELUActivation`` is ``x * sigmoid(1.702
x)``, ...), then proven: on a probe tensor (a spread of values, the
extremes included) the fastact op must agree with the module's own forward
within float32's rule (:func:`fastact.accuracy.mismatch`). A module that
fails keeps its forward. The swap changes the class to a subclass of the same
name, so ``isinstance`` checks, ``repr`` and state dicts are unchanged.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import functional as F
from ..accuracy import mismatch
from .twin import twin_class

__all__ = ["ACTIVATIONS", "activation_op", "patch_activations"]

_TANH_GELU = (F.gelu, {"approximate": "tanh"})

#: transformers activation class name -> (fastact function, keyword arguments)
ACTIVATIONS = {
    "GELUActivation": (F.gelu, {}),
    "GELUTanh": _TANH_GELU,
    "PytorchGELUTanh": _TANH_GELU,
    "NewGELUActivation": _TANH_GELU,
    "FastGELUActivation": _TANH_GELU,
    "AccurateGELUActivation": _TANH_GELU,
    "QuickGELUActivation": (F.quick_gelu, {}),
    "SiLUActivation": (F.silu, {}),
    "ReLUSquaredActivation": (F.squared_relu, {}),
    "MishActivation": (F.mish, {}),
}


def _probe() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(4096, generator=g, dtype=torch.float64) * 4
    edges = torch.tensor([0.0, -0.0, 1e-6, -1e-6, 30.0, -30.0, 1e4, -1e4], dtype=torch.float64)
    return torch.cat([spread, edges])


def activation_op(module: nn.Module) -> Optional[tuple]:
    """(fastact function, kwargs) proven to compute ``module``'s activation,
    or None."""
    entry = ACTIVATIONS.get(getattr(type(module), "fastact_base_class", type(module)).__name__)
    if entry is None:
        return None
    fn, kwargs = entry
    x64 = _probe()
    x = x64.float()
    with torch.no_grad():
        try:
            theirs = module(x)
        except Exception:  # e.g. a module with state the probe does not give
            return None
        ours = fn(x, **kwargs)
        exact = fn(x64, **kwargs)
    if not isinstance(theirs, torch.Tensor) or mismatch(ours, theirs, exact) is not None:
        return None
    return entry


def _forward(self, input):
    fn, kwargs = self.fastact_activation
    return fn(input, **kwargs)


def _fused_class(cls):
    return twin_class(cls, {"forward": _forward}, f"{cls.__name__} on fastact's kernel.")


def patch_activations(model: nn.Module) -> tuple:
    """Swap every transformers activation module of ``model`` that
    :func:`activation_op` proves for its fastact twin. Returns ({class name:
    count}, {class name: why it was left alone})."""
    done: dict = {}
    skipped: dict = {}
    for module in model.modules():
        cls = type(module)
        if hasattr(cls, "fastact_base_class") or cls.__name__ not in ACTIVATIONS:
            continue
        # the proof runs per instance: the same class may hold other settings
        op = activation_op(module)
        if op is None:
            skipped[cls.__name__] = "its output is not fastact's op on the probe"
            continue
        module.fastact_activation = op
        module.__class__ = _fused_class(cls)
        done[cls.__name__] = done.get(cls.__name__, 0) + 1
    return done, skipped
