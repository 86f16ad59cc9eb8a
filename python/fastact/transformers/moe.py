"""Mixture-of-experts feed-forward blocks on the fused GLU kernels.

Two forms exist:

- one MLP module per expert (transformers 4.x Mixtral's
  ``MixtralBlockSparseTop2MLP``, Qwen2/3-MoE's per-expert MLPs): these are
  GLU blocks like any other and :mod:`.mlp` fuses them;
- transformers 5's fused experts modules: 3-D ``gate_up_proj`` /
  ``down_proj`` parameters, the expert GEMMs run by the model's experts
  implementation (``grouped_mm``, ``batched_mm``), which calls the module's
  ``_apply_gate(gate_up)`` on the packed projection. Here the fused class
  overrides ``_apply_gate`` with the packed GLU kernel (halves, or gpt-oss's
  interleaved clamped SwiGLU), so no split copy is made. The router and the
  expert GEMMs stay torch's.

Each experts class is proven before it is swapped: on a probe ``gate_up``
tensor the fused gate must agree with the module's own ``_apply_gate``
(:func:`fastact.accuracy.mismatch`, against float64).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import functional as F
from ..accuracy import mismatch
from .mlp import gated_op
from .twin import twin_class

__all__ = ["experts_gate", "patch_experts"]


def _default_gate():
    try:
        from transformers.integrations.moe import _default_apply_gate
    except ImportError:  # transformers 4.x: no fused experts modules
        return None
    return _default_apply_gate


def _candidates(module: nn.Module) -> list:
    """The fused gates that may compute ``module._apply_gate``: the packed
    GLU of its activation (the default gate: chunk in halves, ``act(gate) *
    up``) and gpt-oss's interleaved clamped SwiGLU (``alpha``, ``limit``)."""
    out = []
    act = getattr(module, "act_fn", None)
    op = gated_op(act) if isinstance(act, nn.Module) else None
    if op is not None:
        out.append((op[0], dict(op[1])))
    alpha, limit = getattr(module, "alpha", None), getattr(module, "limit", None)
    if hasattr(F, "clamped_swiglu") and isinstance(alpha, (int, float)) and isinstance(limit, (int, float)):
        out.append(("clamped_swiglu", {"alpha": float(alpha), "limit": float(limit), "interleaved": True}))
    return out


def experts_gate(module: nn.Module) -> Optional[tuple]:
    """(fastact GLU op, kwargs) proven to compute ``module._apply_gate``, or None."""
    base = getattr(type(module), "fastact_base_class", type(module))
    gate = getattr(base, "_apply_gate", None)
    weight = getattr(module, "gate_up_proj", None)
    if gate is None or not isinstance(weight, torch.Tensor) or weight.dim() != 3:
        return None
    # gate_up_proj is (experts, 2 I, H) or, transposed, (experts, H, 2 I):
    # the gate's input is (tokens, 2 I); probe both widths that can be it
    widths = {n for n in (weight.shape[1], weight.shape[2]) if n % 2 == 0}
    g = torch.Generator().manual_seed(0)
    for op, kwargs in _candidates(module):
        ok = bool(widths)
        for width in widths:
            x64 = torch.randn(16, width, generator=g, dtype=torch.float64) * 4
            x64[0, :4] = torch.tensor([0.0, 7.0, -7.0, 12.0], dtype=torch.float64)
            x = x64.to(weight.dtype)
            with torch.no_grad():
                try:
                    theirs = gate(module, x)
                    exact = gate(module, x.double())
                except Exception:
                    ok = False
                    break
                ours = getattr(F, op)(x, **kwargs)
            if not isinstance(theirs, torch.Tensor) or mismatch(ours, theirs, exact) is not None:
                ok = False
                break
        if ok:
            return op, kwargs
    return None


def _fused_gate(self, gate_up):
    op, kwargs = self.fastact_gate
    return getattr(F, op)(gate_up, **kwargs)


def _fused_class(cls):
    return twin_class(cls, {"_apply_gate": _fused_gate},
                      f"{cls.__name__} whose expert gate runs on fastact's packed GLU kernel.")


def patch_experts(model: nn.Module) -> tuple:
    """Swap every fused experts module whose gate :func:`experts_gate`
    proves. Returns ({class name: (count, op)}, {class name: why not})."""
    done: dict = {}
    skipped: dict = {}
    for module in model.modules():
        cls = type(module)
        if hasattr(cls, "fastact_base_class") or not hasattr(cls, "_apply_gate"):
            continue
        found = experts_gate(module)
        if found is None:
            skipped[cls.__name__] = "its _apply_gate is not a GLU the kernels compute (probe)"
            continue
        module.fastact_gate = found
        module.__class__ = _fused_class(cls)
        op, kwargs = found
        label = op + (" (interleaved)" if kwargs.get("interleaved") else " (packed)")
        count = done.get(cls.__name__, (0, label))[0]
        done[cls.__name__] = (count + 1, label)
        implementation = getattr(getattr(module, "config", None), "_experts_implementation", None)
        if implementation == "eager":
            skipped[cls.__name__] = ("experts_implementation='eager' computes the gate inline in its loop; "
                                     "the fused gate runs with 'grouped_mm' or 'batched_mm'")
    return done, skipped
