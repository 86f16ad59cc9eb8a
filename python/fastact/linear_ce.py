"""Fused linear cross-entropy (never holds the (N, V) logits) and
vocabulary-parallel cross-entropy over torch.distributed."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

_ops = torch.ops.fastact

__all__ = ["linear_cross_entropy", "vocab_parallel_cross_entropy"]


def _chunk_rows(n: int, chunk_size: Optional[int]) -> int:
    # Two chunk-sized (rows x V) buffers (logits and their gradient) live at a
    # time: 1/50 of the rows keeps them under 4 % of the full logits.
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"fastact.linear_cross_entropy: chunk_size must be positive, got {chunk_size}")
        return int(chunk_size)
    return max(1, min(n, max(n // 50, 64)))


def _logits(h: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    return torch.addmm(bias, h, weight.t()) if bias is not None else h @ weight.t()


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, target, ignore_index, smoothing, z_loss, softcap, chunk):
        n = hidden.shape[0]
        acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        loss = hidden.new_empty((n,), dtype=acc)
        lse = hidden.new_empty((n,), dtype=acc)
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            z = _logits(hidden[s:e], weight, bias)
            loss[s:e], lse[s:e] = _ops.cross_entropy_rows(z, target[s:e], None, ignore_index, smoothing, z_loss, softcap)
        ctx.save_for_backward(hidden, weight, bias, target, lse)
        ctx.options = (ignore_index, smoothing, z_loss, softcap)
        ctx.chunk = chunk
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        hidden, weight, bias, target, lse = ctx.saved_tensors
        n = hidden.shape[0]
        want_h, want_w, want_b = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if want_h else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32 if weight.dtype != torch.float64 else weight.dtype) if want_w else None
        grad_bias = torch.zeros_like(bias, dtype=grad_weight.dtype if grad_weight is not None else torch.float32) \
            if (want_b and bias is not None) else None
        for s in range(0, n, ctx.chunk):
            e = min(n, s + ctx.chunk)
            z = _logits(hidden[s:e], weight, bias)
            dz = _ops.cross_entropy_rows_backward(grad_loss[s:e], z, target[s:e], None, lse[s:e], *ctx.options)
            del z
            if want_h:
                grad_hidden[s:e] = dz @ weight
            if want_w:
                grad_weight.addmm_(dz.t().to(grad_weight.dtype), hidden[s:e].to(grad_weight.dtype))
            if grad_bias is not None:
                grad_bias += dz.sum(0, dtype=grad_bias.dtype)
        return (grad_hidden,
                grad_weight.to(weight.dtype) if grad_weight is not None else None,
                grad_bias.to(bias.dtype) if grad_bias is not None else None,
                None, None, None, None, None, None)


@torch._dynamo.disable
def linear_cross_entropy(hidden: Tensor, weight: Tensor, target: Tensor, bias: Optional[Tensor] = None,
                         ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0, *,
                         z_loss: float = 0.0, softcap: Optional[float] = None,
                         chunk_size: Optional[int] = None) -> Tensor:
    """``cross_entropy(hidden @ weight.T + bias, target, ...)`` without the
    full logits: tokens go through in chunks (matmul, then the fused
    cross-entropy row kernels); backward recomputes each chunk's logits and
    folds their gradient into grad_hidden, grad_weight and grad_bias at once.
    Extra memory: two (chunk x V) buffers plus a float32 weight gradient.
    Under torch.compile this function is a graph break (it runs eagerly)."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"fastact.linear_cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"fastact.linear_cross_entropy: label_smoothing must be between 0 and 1, got {label_smoothing}")
    if hidden.shape[-1] != weight.shape[-1] or weight.dim() != 2:
        raise ValueError(f"fastact.linear_cross_entropy: hidden (..., {hidden.shape[-1]}) and weight "
                         f"{tuple(weight.shape)} do not match: weight must be (V, H)")
    lead = hidden.shape[:-1]
    h = hidden.reshape(-1, hidden.shape[-1])
    t = target.reshape(-1)
    if t.shape[0] != h.shape[0]:
        raise ValueError(f"fastact.linear_cross_entropy: target has {t.shape[0]} rows but hidden has {h.shape[0]}")
    loss = _LinearCrossEntropy.apply(h, weight, bias, t, int(ignore_index), float(label_smoothing),
                                     float(z_loss), float(softcap) if softcap else 0.0,
                                     _chunk_rows(h.shape[0], chunk_size))
    if reduction == "none":
        return loss.view(lead).to(hidden.dtype)
    if reduction == "sum":
        return loss.sum().to(hidden.dtype)
    return (loss.sum() / (t != ignore_index).sum()).to(hidden.dtype)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, group, ignore_index, smoothing, z_loss):
        import torch.distributed as dist

        rank, world = dist.get_rank(group), dist.get_world_size(group)
        n, v_local = logits.shape
        v = v_local * world
        x = logits.float()
        m = x.max(1).values
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
        sum_exp = torch.exp(x - m[:, None]).sum(1)
        dist.all_reduce(sum_exp, group=group)
        lse = m + torch.log(sum_exp)
        lo = rank * v_local
        local_t = target - lo
        mine = (local_t >= 0) & (local_t < v_local) & (target != ignore_index)
        z_t = torch.zeros(n, device=x.device)
        z_t[mine] = x[mine.nonzero().squeeze(1), local_t[mine]]
        dist.all_reduce(z_t, group=group)
        sum_z = x.sum(1)
        dist.all_reduce(sum_z, group=group)
        counted = target != ignore_index
        loss = (1 - smoothing) * (lse - z_t) + smoothing * (lse - sum_z / v) + z_loss * lse * lse
        loss = torch.where(counted, loss, torch.zeros_like(loss))
        ctx.save_for_backward(x, lse, local_t, mine, counted)
        ctx.options = (v, smoothing, z_loss, logits.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        x, lse, local_t, mine, counted = ctx.saved_tensors
        v, smoothing, z_loss, dtype = ctx.options
        p = torch.exp(x - lse[:, None])
        d = p * (1 + 2 * z_loss * lse[:, None]) - smoothing / v
        rows = mine.nonzero().squeeze(1)
        d[rows, local_t[mine]] -= 1 - smoothing
        d = d * (grad_loss * counted)[:, None]
        return d.to(dtype), None, None, None, None, None


def vocab_parallel_cross_entropy(logits: Tensor, target: Tensor, group=None, ignore_index: int = -100,
                                 reduction: str = "mean", label_smoothing: float = 0.0, *,
                                 z_loss: float = 0.0) -> Tensor:
    """Cross-entropy of logits whose vocabulary is split over the ranks of
    ``group``: rank r holds columns [r*V/world, (r+1)*V/world) of (N, V), and
    ``target`` holds global class indices. The row max, sum of exponentials,
    target logit and logit sum are all-reduced (four (N,) vectors, never the
    logits); loss and each slice's gradient equal those of ``cross_entropy`` on
    the gathered logits."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"fastact.vocab_parallel_cross_entropy: bad reduction {reduction!r}")
    lead = logits.shape[:-1]
    loss = _VocabParallelCrossEntropy.apply(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), group,
                                            int(ignore_index), float(label_smoothing), float(z_loss))
    if reduction == "none":
        return loss.view(lead).to(logits.dtype)
    if reduction == "sum":
        return loss.sum().to(logits.dtype)
    return (loss.sum() / (target != ignore_index).sum()).to(logits.dtype)
