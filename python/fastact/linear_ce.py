"""Fused linear cross-entropy (never holds the (N, V) logits) and
vocabulary-parallel cross-entropy over torch.distributed."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

_ops = torch.ops.fastact

__all__ = ["linear_cross_entropy", "vocab_parallel_cross_entropy"]


def _chunk_rows(n: int, v: int, itemsize: int, chunk_size: Optional[int]) -> int:
    # Two (rows x V) buffers (logits and their gradient) live at a time: 48 MB
    # each keeps them under 5 % of the logits at N=8192, V=128256 in bf16,
    # while CPU and GPU matmuls still get enough rows to run efficiently.
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"fastact.linear_cross_entropy: chunk_size must be positive, got {chunk_size}")
        return int(chunk_size)
    return max(1, min(n, (48 << 20) // max(1, v * itemsize)))


def _logits(h: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    return torch.addmm(bias, h, weight.t()) if bias is not None else h @ weight.t()


class _LinearCrossEntropy(torch.autograd.Function):
    """Per-row losses of hidden @ weight.T + bias, chunk by chunk. With a
    scalar upstream gradient known in advance (`row_grad`: the mean's or
    sum's per-row factor) the gradients are folded in during forward while each
    chunk's logits exist, and backward only scales them; otherwise
    (reduction='none') backward recomputes each chunk's logits."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, row_grad, ignore_index, smoothing, z_loss, softcap, chunk):
        n = hidden.shape[0]
        acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        options = (ignore_index, smoothing, z_loss, softcap)
        loss = hidden.new_empty((n,), dtype=acc)
        lse = hidden.new_empty((n,), dtype=acc)
        eager_grads = row_grad is not None and any(ctx.needs_input_grad[:3])
        grads = _Grads(hidden, weight, bias, ctx.needs_input_grad) if eager_grads else None
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            z = _logits(hidden[s:e], weight, bias)
            loss[s:e], lse[s:e] = _ops.cross_entropy_rows(z, target[s:e], None, *options)
            if grads is not None:
                dz = _ops.cross_entropy_rows_backward(row_grad.expand(e - s), z, target[s:e], None,
                                                      lse[s:e], *options)
                grads.add(s, e, dz, hidden, weight)
        ctx.eager, ctx.row_grad = grads, row_grad
        ctx.options, ctx.chunk = options, chunk
        if grads is None:
            ctx.save_for_backward(hidden, weight, bias, target, lse)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.eager is not None:
            # every row receives grad_output * row_grad (the reduction below);
            # row_grad is already in the gradients, grad_output is not
            scale = grad_loss[:1] / ctx.row_grad
            return ctx.eager.result(scale) + (None,) * 7
        hidden, weight, bias, target, lse = ctx.saved_tensors
        grads = _Grads(hidden, weight, bias, ctx.needs_input_grad)
        for s in range(0, hidden.shape[0], ctx.chunk):
            e = min(hidden.shape[0], s + ctx.chunk)
            z = _logits(hidden[s:e], weight, bias)
            dz = _ops.cross_entropy_rows_backward(grad_loss[s:e], z, target[s:e], None, lse[s:e], *ctx.options)
            del z
            grads.add(s, e, dz, hidden, weight)
        return grads.result(None) + (None,) * 7


class _Grads:
    """grad_hidden, grad_weight and grad_bias accumulated chunk by chunk
    (weight and bias gradients in float32 for half types)."""

    def __init__(self, hidden, weight, bias, needs):
        acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
        self.hidden = torch.empty_like(hidden) if needs[0] else None
        self.weight = torch.zeros_like(weight, dtype=acc) if needs[1] else None
        self.bias = torch.zeros_like(bias, dtype=acc) if (bias is not None and needs[2]) else None
        self.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)

    def add(self, s, e, dz, hidden, weight):
        if self.hidden is not None:
            self.hidden[s:e] = dz @ weight
        if self.weight is not None:
            self.weight.addmm_(dz.t().to(self.weight.dtype), hidden[s:e].to(self.weight.dtype))
        if self.bias is not None:
            self.bias += dz.sum(0, dtype=self.bias.dtype)

    def result(self, scale):
        out = []
        for g, dtype in zip((self.hidden, self.weight, self.bias), self.dtypes):
            if g is None:
                out.append(None)
            else:
                out.append((g * scale.to(g.dtype) if scale is not None else g).to(dtype))
        return tuple(out)


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
    chunk = _chunk_rows(h.shape[0], weight.shape[0], h.element_size(), chunk_size)
    options = (int(ignore_index), float(label_smoothing), float(z_loss), float(softcap) if softcap else 0.0, chunk)
    if reduction == "none":
        return _LinearCrossEntropy.apply(h, weight, bias, t, None, *options).view(lead).to(hidden.dtype)
    acc = torch.float64 if h.dtype == torch.float64 else torch.float32
    # d(reduced loss)/d(row loss): 1 for sum, 1/count for mean (on the device)
    row_grad = torch.ones(1, dtype=acc, device=h.device)
    if reduction == "mean":
        row_grad = row_grad / (t != ignore_index).sum()
    loss = _LinearCrossEntropy.apply(h, weight, bias, t, row_grad, *options)
    # the reduction, written so that its gradient reaching each row is
    # grad_output * row_grad (what the forward folded in)
    total = (loss * row_grad).sum()
    return total.to(hidden.dtype)


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
