"""The losses of fastact.functional on DTensors. Logits sharded on the class
dim (cross_entropy) and a column-parallel LM head, its weight sharded on the
vocabulary (linear_cross_entropy), run the vocabulary-parallel loss of
fastact.losses.vocab_parallel over the vocabulary mesh dim's process group,
never gathering the logits (the role of torch's ``loss_parallel()``); other
placements run the plain ops through their sharding rules (rules.py). The
post-training heads: ``linear_logprobs`` of a column-parallel head runs the
vocabulary-parallel form of fastact.losses.posttrain; otherwise a DTensor
head is gathered (``full_tensor()``) for the plain loss."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from .._dtensor import align, is_dtensor
from ..losses import cross_entropy as _ce
from ..losses import linear_ce as _linear_ce
from ..losses import posttrain as _posttrain
from ..losses.vocab_parallel import VocabParallelCrossEntropy, VocabParallelLinearCrossEntropy

__all__ = ["cross_entropy", "linear_cross_entropy", "linear_logprobs", "linear_distill_loss"]

R = Replicate


def _vocab_mesh_dim(placements, dim, op):
    dims = [i for i, p in enumerate(placements) if p.is_shard(dim)]
    if len(dims) > 1:
        raise NotImplementedError(f"{op}: the class dim is sharded on {len(dims)} mesh dims {tuple(placements)}; "
                                  f"one is supported")
    return dims[0] if dims else None


def _rows_placements(placements, vocab_dim):
    """Placements of the per-row tensors (target, loss) of (N, V) rows placed
    as ``placements``: Shard(0) stays, the vocabulary dim is Replicate."""
    return [Shard(0) if (i != vocab_dim and p.is_shard(0)) else R() for i, p in enumerate(placements)]


def _as_local_target(target, mesh, placements, op):
    if isinstance(target, DTensor):
        return align(target, placements).to_local()
    if any(not p.is_replicate() for p in placements):
        raise ValueError(f"{op}: the target must be a DTensor placed {tuple(placements)} (rows sharded), "
                         f"got a plain tensor")
    return target


def _vocab_parallel_rows(rows: DTensor, target, weight, prob, ignore_index, label_smoothing, z_loss, softcap):
    """Per-row losses (a DTensor (N,): rows' Shard(0) kept, Replicate on the
    vocabulary mesh dim) of rows [N, V] sharded on the vocabulary (dim 1) over
    one mesh dim, with the four all-reduces of ``vocab_parallel_cross_entropy``
    over that mesh dim's group; the logits are never gathered. Returns None
    when the vocabulary is not sharded; with the target as a DTensor placed
    as the loss."""
    op = "fastact.cross_entropy"
    vdim = _vocab_mesh_dim(rows.placements, 1, op)
    if vdim is None:
        return None
    if weight is not None or prob:
        raise NotImplementedError(f"{op}: on logits sharded on the class dim, class weights and probability "
                                  f"targets are not supported")
    mesh = rows.device_mesh
    # other mesh dims: rows Shard(0) or Replicate (a Partial input is reduced)
    rows = align(rows, [p if (i == vdim or p.is_shard(0)) else R() for i, p in enumerate(rows.placements)])
    out_pl = _rows_placements(rows.placements, vdim)
    local_target = _as_local_target(target, mesh, out_pl, op)
    _, offset = compute_local_shape_and_global_offset(rows.shape, mesh, rows.placements)
    local = rows.to_local()
    if softcap:
        local = softcap * torch.tanh(local / softcap)
    loss = VocabParallelCrossEntropy.apply(local, local_target, mesh.get_group(vdim), offset[1], rows.shape[1],
                                           int(ignore_index), float(label_smoothing), float(z_loss))
    loss = DTensor.from_local(loss, mesh, out_pl, run_check=False, shape=rows.shape[:1], stride=(1,))
    target = target if isinstance(target, DTensor) else DTensor.from_local(
        target, mesh, out_pl, run_check=False, shape=rows.shape[:1], stride=(1,))
    return loss, align(target, out_pl)




def cross_entropy(input: Tensor, target: Tensor, weight: Optional[Tensor] = None, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float = 0.0, *, z_loss: float = 0.0,
                  softcap: Optional[float] = None) -> Tensor:
    """:func:`fastact.functional.cross_entropy` of a DTensor ``input``: logits
    sharded on the class dim get the vocabulary-parallel loss; rows sharded
    or replicated run the row op through its sharding rule."""
    prob = _ce.check_arguments(input, target, ignore_index, reduction, label_smoothing, softcap)
    rows, tgt, loss_shape = _ce.as_rows(input, target)
    out = _vocab_parallel_rows(rows, tgt, weight, prob, ignore_index, label_smoothing, z_loss, softcap)
    if out is None:
        loss = _ce.row_losses(rows, tgt, weight, ignore_index, label_smoothing, z_loss, softcap)
    else:
        loss, tgt = out
    return _ce.reduce_rows(loss, rows, tgt, weight, ignore_index, reduction, prob, loss_shape, input.dtype)


@torch._dynamo.disable
def linear_cross_entropy(input: Tensor, linear_weight: Tensor, target: Tensor, *,
                         linear_bias: Optional[Tensor] = None, weight: Optional[Tensor] = None,
                         reduction: str = "mean", ignore_index: Optional[int] = None,
                         label_smoothing: float = 0.0, options=None, z_loss: float = 0.0,
                         softcap: Optional[float] = None, chunk_size: Optional[int] = None,
                         accum_dtype: Optional[torch.dtype] = None) -> Tensor:
    """:func:`fastact.functional.linear_cross_entropy` with a column-parallel
    LM head: ``linear_weight`` a DTensor [V, H] sharded on the vocabulary (dim
    0) over one mesh dim and replicated on the others (``linear_bias``, if
    any, sharded alike). The input [N, H] is a plain tensor (replicated over
    that mesh dim, as after a row-parallel layer) or a DTensor (rows sharded
    or replicated); the result has the input's kind. Each chunk of tokens
    runs the all-reduces of ``vocab_parallel_cross_entropy``; ``softcap``
    caps each logit slice before the loss (Gemma 2), as the row kernels do."""
    op = "fastact.linear_cross_entropy"
    layout = _linear_ce.check_arguments(input, linear_weight, target, linear_bias, weight, reduction, ignore_index,
                                        label_smoothing, softcap, accum_dtype)
    if not is_dtensor(linear_weight):
        raise NotImplementedError(f"{op}: a DTensor input needs a DTensor linear_weight (sharded on the "
                                  f"vocabulary)")
    if weight is not None or layout.prob or layout.out_features or not layout.batched:
        raise NotImplementedError(f"{op}: with a DTensor linear_weight, class weights, probability targets, "
                                  f"out_features and unbatched input are not supported")
    ignore_index = layout.ignore_index
    if chunk_size is None:
        chunk_size = _linear_ce.options_chunk(options)
    vdim = _vocab_mesh_dim(linear_weight.placements, 0, op)
    if vdim is None or any(not p.is_replicate() for i, p in enumerate(linear_weight.placements) if i != vdim):
        raise NotImplementedError(f"{op}: a DTensor linear_weight must be sharded on the vocabulary (dim 0) over "
                                  f"one mesh dim and replicated on the others, got {linear_weight.placements}")
    mesh = linear_weight.device_mesh
    v, hdim = linear_weight.shape
    _, offset = compute_local_shape_and_global_offset(linear_weight.shape, mesh, linear_weight.placements)
    w = linear_weight.to_local()
    b = None
    if linear_bias is not None:
        b = align(linear_bias, linear_weight.placements).to_local()
    if isinstance(input, DTensor):
        pl = [p if p.is_shard(0) and i != vdim else R() for i, p in enumerate(input.placements)]
        input = align(input, pl)
        hidden = input.to_local()
    else:
        pl, hidden = None, input
    local_target = _as_local_target(target, mesh, pl, op) if pl is not None else (
        target.to_local() if isinstance(target, DTensor) else target)
    n = hidden.shape[0]
    dtype = hidden.dtype
    hidden, w, b, widened = _linear_ce.cpu_float32(hidden, w, b)
    chunk = _linear_ce.chunk_rows(n, w.shape[0], hidden.shape[-1], hidden.element_size(), chunk_size,
                                  hidden.device.type, widened)
    row_options = (int(ignore_index), float(label_smoothing), float(z_loss))
    loss = VocabParallelLinearCrossEntropy.apply(hidden, w, b, local_target, mesh.get_group(vdim), offset[0], v,
                                                 chunk, row_options, float(softcap) if softcap else 0.0)
    counted = local_target != ignore_index
    if pl is not None:
        loss = DTensor.from_local(loss, mesh, pl, run_check=False, shape=input.shape[:1], stride=(1,))
        counted = DTensor.from_local(counted, mesh, pl, run_check=False, shape=input.shape[:1], stride=(1,))
    if reduction == "none":
        return loss.to(dtype)
    if reduction == "sum":
        return loss.sum().to(dtype)
    return (loss.sum() / counted.sum()).to(dtype)


def _gather_head(op: str, name: str, input: Tensor, weight: Tensor, bias: Optional[Tensor]):
    """(weight, bias) as plain tensors. A DTensor head (e.g. a column-parallel
    LM head sharded on the vocabulary) is gathered with ``full_tensor()``,
    which autograd differentiates (each rank's shard receives its slice of
    the gradient): correct, but it holds the full weight on every rank for
    the duration of the call, unlike linear_cross_entropy's
    vocabulary-parallel path, which all-reduces row statistics instead. The
    input (and target) must be plain tensors, the same on every rank."""
    if is_dtensor(input):
        raise NotImplementedError(f"{op}: a DTensor {name}input is not supported; pass its local (replicated) "
                                  f"tensor")
    weight = weight.full_tensor() if is_dtensor(weight) else weight
    bias = bias.full_tensor() if is_dtensor(bias) else bias
    return weight, bias


def _plain_target(op: str, target) -> None:
    if is_dtensor(target):
        raise NotImplementedError(f"{op}: a DTensor target is not supported; pass its local (replicated) tensor")


def _vocab_slice(op: str, weight: DTensor, bias: Optional[Tensor]):
    """(local weight, local bias, process group, first global class) of a
    column-parallel head -- a DTensor weight sharded on the vocabulary (dim 0)
    over one mesh dim and replicated on the others, the bias (if any) a
    DTensor, placed alike for the call -- or None for other heads (a plain
    bias: its gradient would be one slice per rank)."""
    vdim = _vocab_mesh_dim(weight.placements, 0, op)
    if vdim is None or any(not p.is_replicate() for i, p in enumerate(weight.placements) if i != vdim):
        return None
    if bias is not None and not is_dtensor(bias):
        return None
    mesh = weight.device_mesh
    _, offset = compute_local_shape_and_global_offset(weight.shape, mesh, weight.placements)
    if bias is not None:
        bias = align(bias, weight.placements).to_local()
    return weight.to_local(), bias, mesh.get_group(vdim), offset[0]


@torch._dynamo.disable
def linear_logprobs(input: Tensor, linear_weight: Tensor, target: Tensor, *, linear_bias: Optional[Tensor] = None,
                    temperature: float = 1.0, return_entropy: bool = False, ignore_index: int = -100,
                    chunk_size: Optional[int] = None):
    """:func:`fastact.functional.linear_logprobs` with DTensor operands. A
    column-parallel head (``linear_weight`` sharded on the vocabulary over one
    mesh dim, replicated on the others) runs the vocabulary-parallel form
    (:func:`fastact.losses.posttrain.vocab_parallel_linear_logprobs`: row
    statistics all-reduced, the logits never gathered, the weight's gradient
    a shard); another DTensor head is gathered (:func:`_gather_head`). Input
    and target must be plain tensors, the same on every rank."""
    op = "fastact.linear_logprobs"
    _plain_target(op, target)
    if is_dtensor(linear_weight) and not is_dtensor(input):
        local = _vocab_slice(op, linear_weight, linear_bias)
        if local is not None:
            w, b, group, start = local
            return _posttrain.vocab_parallel_linear_logprobs(
                input, w, target, group, start, linear_weight.shape[0], linear_bias=b, temperature=temperature,
                return_entropy=return_entropy, ignore_index=ignore_index, chunk_size=chunk_size)
    linear_weight, linear_bias = _gather_head(op, "", input, linear_weight, linear_bias)
    return _posttrain.linear_logprobs(input, linear_weight, target, linear_bias=linear_bias, temperature=temperature,
                                      return_entropy=return_entropy, ignore_index=ignore_index,
                                      chunk_size=chunk_size)


@torch._dynamo.disable
def linear_distill_loss(student_input: Tensor, student_weight: Tensor, teacher_input: Tensor, teacher_weight: Tensor,
                        target: Optional[Tensor] = None, *, kind: str = "kl", beta: float = 0.5,
                        temperature: float = 1.0, ignore_index: int = -100, reduction: str = "batchmean",
                        chunk_size: Optional[int] = None, hard_label_weight: float = 0.0,
                        student_bias: Optional[Tensor] = None, teacher_bias: Optional[Tensor] = None) -> Tensor:
    """:func:`fastact.functional.linear_distill_loss` with DTensor operands:
    DTensor heads are gathered (:func:`_gather_head`; the teacher's without
    autograd); inputs and target must be plain tensors."""
    op = "fastact.linear_distill_loss"
    student_weight, student_bias = _gather_head(op, "student_", student_input, student_weight, student_bias)
    with torch.no_grad():
        teacher_weight, teacher_bias = _gather_head(op, "teacher_", teacher_input, teacher_weight, teacher_bias)
    _plain_target(op, target)
    return _posttrain.linear_distill_loss(student_input, student_weight, teacher_input, teacher_weight, target,
                                          kind=kind, beta=beta, temperature=temperature, ignore_index=ignore_index,
                                          reduction=reduction, chunk_size=chunk_size,
                                          hard_label_weight=hard_label_weight, student_bias=student_bias,
                                          teacher_bias=teacher_bias)
