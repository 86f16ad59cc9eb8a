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

_ops = torch.ops.fastact

__all__ = ["cross_entropy", "check_arguments", "as_rows", "row_losses", "reduce_rows"]


def as_rows(input: Tensor, target: Tensor):
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


def check_arguments(input: Tensor, target: Tensor, ignore_index: int, reduction: str, label_smoothing: float,
                    softcap: Optional[float]) -> bool:
    """torch's argument checks of cross_entropy (and fastact's of its extras);
    returns whether the target holds class probabilities."""
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
    return prob


def row_losses(rows: Tensor, target: Tensor, weight: Optional[Tensor], ignore_index: int, label_smoothing: float,
               z_loss: float, softcap: Optional[float]) -> Tensor:
    """The loss of each row of logits [rows, C] (float32; float64 for float64 logits)."""
    loss, _ = _ops.cross_entropy_rows(rows, target, weight, int(ignore_index), float(label_smoothing),
                                      float(z_loss), float(softcap) if softcap is not None else 0.0)
    return loss


def reduce_rows(loss: Tensor, rows: Tensor, target: Tensor, weight: Optional[Tensor], ignore_index: int, reduction: str,
           prob: bool, loss_shape: tuple, dtype: torch.dtype) -> Tensor:
    """torch's reduction of the row losses ``loss`` of ``rows`` (their
    ``target``), in ``dtype``: 'none' shaped ``loss_shape``, 'sum', or 'mean'
    (over the counted rows, weighted by their class weight)."""
    if reduction == "none":
        return loss.view(loss_shape).to(dtype)
    if reduction == "sum":
        return loss.sum().to(dtype)
    if prob:
        # torch divides by input.numel() / classes (NaN when there are no
        # classes): a Python number, so nothing is copied to the device (a
        # tensor made from it would be a blocking host-to-device copy per call
        # and break CUDA graph capture)
        return (loss.sum() / (loss.numel() if rows.shape[1] else float("nan"))).to(dtype)
    counted = target != ignore_index
    if weight is not None:
        count = (weight.to(loss.dtype)[target.clamp(0, rows.shape[1] - 1)] * counted).sum()
    else:
        count = counted.sum().to(loss.dtype)
    return (loss.sum() / count).to(dtype)


def cross_entropy(input: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                  ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0, *,
                  z_loss: float = 0.0, softcap: Optional[float] = None) -> Tensor:
    """:func:`fastact.functional.cross_entropy` (the API and its
    documentation) on plain tensors."""
    prob = check_arguments(input, target, ignore_index, reduction, label_smoothing, softcap)
    rows, tgt, loss_shape = as_rows(input, target)
    loss = row_losses(rows, tgt, weight, ignore_index, label_smoothing, z_loss, softcap)
    return reduce_rows(loss, rows, tgt, weight, ignore_index, reduction, prob, loss_shape, input.dtype)
