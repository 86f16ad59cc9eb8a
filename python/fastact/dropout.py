"""Fused dropout: the functional API (fake kernels and autograd: ops/dropout.py)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from ._dtensor import is_dtensor

_ops = torch.ops.fastact

__all__ = ["dropout", "dropout_add", "bias_dropout_add", "bias_act_dropout", "dropout_mask"]


# --- functional API --------------------------------------------------------------------

def _check_p(p: float, op: str) -> None:
    if p < 0.0 or p > 1.0:
        raise ValueError(f"fastact.{op}: dropout probability has to be between 0 and 1, but got {p}")


def _seed(input: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    if is_dtensor(input):
        # one stream per shard (fastact.distributed.dtensor_seed)
        from .distributed import dtensor_seed

        return dtensor_seed(input, generator)
    return _ops._philox_seed(input, generator)


def _aligned(input: Tensor, residual: Optional[Tensor] = None, bias: Optional[Tensor] = None,
             linear: bool = True):
    """DTensor operands placed so that the op runs on the input's own
    placement (its shard index chose the mask): the residual as the input,
    the bias sharded with the input's last dim; a non-linear op's Partial
    input reduced first. Plain tensors pass through."""
    if not is_dtensor(input):
        return input, residual, bias
    from .distributed import align, bias_placements, reduce_partial

    if not linear:
        input = reduce_partial(input)
    if is_dtensor(residual):
        residual = align(residual, input.placements)
    if is_dtensor(bias):
        bias = align(bias, bias_placements(input))
    return input, residual, bias


def dropout(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, *,
            generator: Optional[torch.Generator] = None) -> Tensor:
    """``torch.nn.functional.dropout`` without a stored mask."""
    _check_p(p, "dropout")
    if not training or p == 0 or input.numel() == 0:
        return input
    seed = _seed(input, generator)
    if not inplace:
        return _ops.dropout(input, float(p), seed)
    if torch.is_grad_enabled() and input.requires_grad:
        # backward needs only the seed, so the input may be overwritten
        return input.copy_(_ops.dropout(input, float(p), seed))
    _ops.dropout_(input, float(p), seed)
    return input


def dropout_add(input: Tensor, residual: Tensor, p: float = 0.5, training: bool = True, *,
                generator: Optional[torch.Generator] = None) -> Tensor:
    """``residual + dropout(input)`` in one pass."""
    _check_p(p, "dropout_add")
    if not training or p == 0:
        return residual + input
    input, residual, _ = _aligned(input, residual)
    return _ops.dropout_add(input, residual, float(p), _seed(input, generator))


def bias_dropout_add(input: Tensor, bias: Tensor, residual: Tensor, p: float = 0.5,
                     training: bool = True, *, generator: Optional[torch.Generator] = None) -> Tensor:
    """``residual + dropout(input + bias)`` in one pass (``bias`` over the last dim)."""
    _check_p(p, "bias_dropout_add")
    if not training or p == 0:
        return residual + (input + bias)
    input, residual, bias = _aligned(input, residual, bias)
    return _ops.bias_dropout_add(input, bias, residual, float(p), _seed(input, generator))


def bias_act_dropout(input: Tensor, bias: Optional[Tensor] = None, activation: str = "gelu",
                     p: float = 0.5, training: bool = True, *,
                     generator: Optional[torch.Generator] = None) -> Tensor:
    """``dropout(act(input + bias))`` in one pass; ``activation`` names any
    fastact activation that takes only the input (e.g. 'gelu', 'silu', 'relu')."""
    _check_p(p, "bias_act_dropout")
    input, _, bias = _aligned(input, None, bias, linear=False)
    if not training or p == 0:
        # p = 0 keeps every element whatever the stream: no random numbers drawn
        seed = torch.zeros(2, dtype=torch.int64, device=input.device)
        if is_dtensor(input):
            from torch.distributed.tensor import DTensor, Replicate

            seed = DTensor.from_local(seed, input.device_mesh, [Replicate()] * input.device_mesh.ndim,
                                      run_check=False)
        return _ops.bias_act_dropout(input, bias, activation, 0.0, seed)
    return _ops.bias_act_dropout(input, bias, activation, float(p), _seed(input, generator))


def dropout_mask(shape: Sequence[int], p: float, seed: int, offset: int,
                 device: Optional[torch.device] = None) -> Tensor:
    """The boolean keep-mask the kernels use for stream (seed, offset): the
    same on CPU and CUDA, so a GPU run's mask can be reproduced anywhere."""
    _check_p(p, "dropout_mask")
    rng = torch.tensor([seed, offset], dtype=torch.int64, device=device)
    ones = torch.ones(tuple(shape), dtype=torch.float32, device=device)
    return _ops.dropout(ones, float(p), rng) != 0
