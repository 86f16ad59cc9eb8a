"""Cross-entropy with torch's semantics, on the fused row kernels.

The C++ op computes, per row of logits, the float32 loss and log-sum-exp
(``cross_entropy_rows``; fake kernel and autograd in ops/cross_entropy.py);
mean, sum and none are torch ops on that [N] vector, so every reduction
divides on the device (no host sync) and autograd hands the backward kernel
one gradient value per row.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._dtensor import is_dtensor

_ops = torch.ops.fastact

__all__ = ["cross_entropy"]


def _as_rows(input: Tensor, target: Tensor):
    """(logits [rows, C], target [rows] or [rows, C], shape of the per-row loss)."""
    prob = target.is_floating_point()
    if input.dim() == 1:
        return input.unsqueeze(0), target.unsqueeze(0), ()
    if input.dim() == 2:
        return input, target, (input.shape[0],)
    c = input.shape[1]
    rows = input.movedim(1, -1).reshape(-1, c)
    tgt = target.movedim(1, -1).reshape(-1, c) if prob else target.reshape(-1)
    return rows, tgt, tuple(target.shape[:1]) + tuple(target.shape[2 if prob else 1:])


def cross_entropy(input: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                  ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0, *,
                  z_loss: float = 0.0, softcap: Optional[float] = None) -> Tensor:
    """``torch.nn.functional.cross_entropy`` (class-index or class-probability
    targets, weight, ignore_index, label smoothing, every reduction), plus
    ``z_loss * logsumexp(logits)**2`` per counted row (added to that row's loss,
    not scaled by the class weight, reduced like it) and ``softcap=c``, which
    first maps logits to ``c * tanh(logits / c)``. Loss math in float32; the
    loss comes back in the input's dtype, as in torch.

    A class-probability target that requires grad gets torch's gradient,
    ``-g * w_c * (1 - label_smoothing) * log_softmax(z)_c`` per row (g the row's
    upstream gradient); with ``softcap``, z are the capped logits; ``z_loss``
    adds nothing to it (logsumexp does not depend on the target)."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"fastact.cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"fastact.cross_entropy: label_smoothing must be between 0 and 1, got {label_smoothing}")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"fastact.cross_entropy: softcap must be positive, got {softcap}")
    if input.dim() == 0:
        raise ValueError("fastact.cross_entropy: input must have a class dimension")
    prob = target.is_floating_point()
    if not prob and target.shape == input.shape and input.dim() >= 1:
        raise ValueError(f"fastact.cross_entropy: a target of the input's shape {tuple(input.shape)} holds class "
                         f"probabilities and must be floating point, got {target.dtype}")
    if prob and ignore_index != -100:
        raise ValueError(f"fastact.cross_entropy: ignore_index ({ignore_index}) is not supported for a "
                         f"class-probability (floating point) target")
    if prob and target.shape != input.shape:
        raise ValueError(f"fastact.cross_entropy: class-probability target must have the input's shape "
                         f"{tuple(input.shape)}, got {tuple(target.shape)}")
    if not prob:
        expected = input.shape[:1] + input.shape[2:] if input.dim() >= 2 else ()
        if tuple(target.shape) != tuple(expected):
            raise ValueError(f"fastact.cross_entropy: target must have shape {tuple(expected)} for input "
                             f"{tuple(input.shape)}, got {tuple(target.shape)}")
    rows, tgt, loss_shape = _as_rows(input, target)
    loss = None
    if is_dtensor(rows):
        # logits sharded on the class dim: the vocabulary-parallel loss (the
        # role of torch's loss_parallel()), never gathering the logits
        from ..distributed import cross_entropy_vocab_parallel

        out = cross_entropy_vocab_parallel(rows, tgt, weight, prob, ignore_index, label_smoothing, z_loss,
                                           softcap)
        if out is not None:
            loss, tgt = out
    if loss is None:
        loss, _ = _ops.cross_entropy_rows(rows, tgt, weight, int(ignore_index), float(label_smoothing),
                                          float(z_loss), float(softcap) if softcap is not None else 0.0)
    if reduction == "none":
        return loss.view(loss_shape).to(input.dtype)
    if reduction == "sum":
        return loss.sum().to(input.dtype)
    if prob:
        # torch divides by input.numel() / classes (NaN when there are no
        # classes): a Python number, so nothing is copied to the device (a
        # tensor made from it would be a blocking host-to-device copy per call
        # and break CUDA graph capture)
        return (loss.sum() / (loss.numel() if rows.shape[1] else float("nan"))).to(input.dtype)
    counted = tgt != ignore_index
    if weight is not None:
        count = (weight.to(loss.dtype)[tgt.clamp(0, rows.shape[1] - 1)] * counted).sum()
    else:
        count = counted.sum().to(loss.dtype)
    return (loss.sum() / count).to(input.dtype)
