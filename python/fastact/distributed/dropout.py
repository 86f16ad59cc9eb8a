"""Dropout (and rrelu's slopes) on DTensors: which random stream each shard
draws from, and how the operands of the fused dropout ops are placed. The
functional API (fastact.functional) calls these for DTensor inputs; the ops
themselves run through their sharding rules (rules.py)."""
from __future__ import annotations

from typing import Optional

import torch
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.placement_types import _StridedShard

from .._dtensor import align, is_dtensor

__all__ = ["DROPOUT_KEY_STEP", "shard_linear_index", "dtensor_seed", "zero_seed", "place_operands"]

_ops = torch.ops.fastact
R = Replicate


#: Shard k of a DTensor draws its dropout mask with the Philox key
#: ``seed XOR (k * DROPOUT_KEY_STEP mod 2**64)`` (the golden-ratio constant).
DROPOUT_KEY_STEP = 0x9E3779B97F4A7C15


def shard_linear_index(t: DTensor) -> int:
    """The index of this rank's shard of ``t``, as torch's DTensor RNG tracker
    numbers shards (``torch.distributed.tensor._random``): per tensor dim, the
    shard index over the mesh dims that shard it (in mesh-dim order), then
    row-major over the tensor dims. Ranks holding the same shard (replicas,
    Partial dims) get the same index; a fully replicated tensor has index 0."""
    mesh, placements = t.device_mesh, t.placements
    coord = mesh.get_coordinate()
    idx, count = [0] * t.ndim, [1] * t.ndim
    for mesh_dim, p in enumerate(placements):
        if p.is_shard() or isinstance(p, _StridedShard):
            d = p.dim
            idx[d] = idx[d] * mesh.size(mesh_dim) + coord[mesh_dim]
            count[d] *= mesh.size(mesh_dim)
    linear, stride = 0, 1
    for i, c in zip(reversed(idx), reversed(count)):
        linear += i * stride
        stride *= c
    return linear


def dtensor_seed(input: DTensor, generator: Optional[torch.Generator] = None) -> DTensor:
    """The dropout stream of a DTensor: (seed, offset) drawn once from the
    device's generator (or ``generator``) exactly as for a plain tensor --
    every rank draws alike, since SPMD code keeps one generator state on all
    ranks (seed every rank with the same ``torch.manual_seed``, as DTensor
    requires) -- and the shard of linear index k (:func:`shard_linear_index`)
    uses the key ``seed XOR (k * DROPOUT_KEY_STEP)``. So: replicas of a shard
    apply one mask; distinct shards draw from distinct Philox keys (independent
    streams, as torch's tracker gives each shard its own offset); a replicated
    DTensor, and shard 0, get exactly the mask of the unsharded op for the
    same generator state; the generator advances as for one unsharded call."""
    seed = _ops._philox_seed(input, generator)
    k = shard_linear_index(input)
    if k == 0:
        return seed
    step = (k * DROPOUT_KEY_STEP) % (1 << 64)
    step = step - (1 << 64) if step >= (1 << 63) else step
    local = seed.to_local().clone()
    local[:1].bitwise_xor_(step)
    return DTensor.from_local(local, seed.device_mesh, seed.placements, run_check=False)


def _bias_placements(input: DTensor):
    last = input.ndim - 1
    return [Shard(0) if p.is_shard(last) else R() for p in input.placements]


def _reduce_partial(input: DTensor) -> DTensor:
    """A non-linear op's input: its Partial placements reduced (Replicate)."""
    return align(input, [R() if p.is_partial() else p for p in input.placements])


def zero_seed(input: DTensor) -> DTensor:
    """The (seed, offset) pair (0, 0), replicated on ``input``'s mesh: the
    stream of a call that drops nothing (p = 0 keeps every element whatever
    the stream), so no random numbers are drawn."""
    seed = torch.zeros(2, dtype=torch.int64, device=input.device)
    return DTensor.from_local(seed, input.device_mesh, [Replicate()] * input.device_mesh.ndim, run_check=False)


def place_operands(input: DTensor, residual=None, bias=None, linear: bool = True):
    """(input, residual, bias) placed so that the op runs on the input's own
    placement (its shard index chose the mask): the residual as the input,
    the bias sharded with the input's last dim; a non-linear op's Partial
    input reduced first."""
    if not linear:
        input = _reduce_partial(input)
    if is_dtensor(residual):
        residual = align(residual, input.placements)
    if is_dtensor(bias):
        bias = align(bias, _bias_placements(input))
    return input, residual, bias
