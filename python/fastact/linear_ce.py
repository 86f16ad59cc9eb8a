"""Fused linear cross-entropy (never holds the (N, V) logits) and
vocabulary-parallel cross-entropy over torch.distributed."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

_ops = torch.ops.fastact

__all__ = ["linear_cross_entropy", "vocab_parallel_cross_entropy"]


def _chunk_rows(n: int, v: int, itemsize: int, chunk_size: Optional[int]) -> int:
    # One (rows x V) buffer lives at a time (the chunk's logits, overwritten
    # by their gradient): 4 % of the full logits, at least 32 MB (so CPU and GPU
    # matmuls still get enough rows to run efficiently) -- 84 MB, 327 rows at
    # N=8192, V=128256 in bf16.
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"fastact.linear_cross_entropy: chunk_size must be positive, got {chunk_size}")
        return int(chunk_size)
    row_bytes = max(1, v * itemsize)
    budget = max(32 << 20, (n * row_bytes) // 25)
    return max(1, min(n, budget // row_bytes))


class _Chunks:
    """The chunk loop: yields (start, end, logits) per chunk of tokens, the
    logits computed into one reused (chunk x V) buffer that the caller may
    overwrite (with their gradient) before the next chunk."""

    def __init__(self, hidden, weight, bias, chunk):
        self.hidden, self.weight, self.bias, self.chunk = hidden, weight, bias, chunk
        rows = min(chunk, hidden.shape[0])
        self.buffer = hidden.new_empty((rows, weight.shape[0]))

    def __iter__(self):
        n = self.hidden.shape[0]
        for s in range(0, n, self.chunk):
            e = min(n, s + self.chunk)
            z = self.buffer[: e - s]
            if self.bias is not None:
                torch.addmm(self.bias, self.hidden[s:e], self.weight.t(), out=z)
            else:
                torch.mm(self.hidden[s:e], self.weight.t(), out=z)
            yield s, e, z


class _LinearCrossEntropy(torch.autograd.Function):
    """Per-row losses of hidden @ weight.T + bias, chunk by chunk. With a
    scalar upstream gradient known in advance (`row_grad`: the mean's or
    sum's per-row factor) the gradients are folded in during forward while each
    chunk's logits exist, and backward only scales them; otherwise
    (reduction='none') backward recomputes each chunk's logits."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, row_grad, ignore_index, smoothing, z_loss, softcap, chunk,
                accum_dtype):
        n = hidden.shape[0]
        acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        options = (ignore_index, smoothing, z_loss, softcap)
        loss = hidden.new_empty((n,), dtype=acc)
        lse = hidden.new_empty((n,), dtype=acc)
        eager_grads = row_grad is not None and any(ctx.needs_input_grad[:3])
        grads = _Grads(hidden, weight, bias, ctx.needs_input_grad, accum_dtype) if eager_grads else None
        for s, e, z in _Chunks(hidden, weight, bias, chunk):
            loss[s:e], lse[s:e] = _ops.cross_entropy_rows(z, target[s:e], None, *options)
            if grads is not None:
                _ops.cross_entropy_rows_backward_(row_grad.expand(e - s), z, target[s:e], None, lse[s:e], *options)
                grads.add(s, e, z, hidden, weight)
        ctx.eager, ctx.row_grad = grads, row_grad
        ctx.options, ctx.chunk, ctx.accum_dtype = options, chunk, accum_dtype
        # (inputs: saving them costs nothing; a second backward through a
        # retained graph recomputes, since the first one hands the folded
        # gradients to autograd without keeping a reference)
        ctx.save_for_backward(hidden, weight, bias, target, lse)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.eager is not None:
            # every row receives grad_output * row_grad (the reduction below);
            # row_grad is already in the gradients, grad_output is not.
            # Scaled in place and released: autograd can keep the buffers as
            # .grad without a copy.
            scale = grad_loss[:1] / ctx.row_grad
            grads, ctx.eager = ctx.eager.result(scale), None
            return grads + (None,) * 8
        hidden, weight, bias, target, lse = ctx.saved_tensors
        grads = _Grads(hidden, weight, bias, ctx.needs_input_grad, ctx.accum_dtype)
        for s, e, z in _Chunks(hidden, weight, bias, ctx.chunk):
            _ops.cross_entropy_rows_backward_(grad_loss[s:e], z, target[s:e], None, lse[s:e], *ctx.options)
            grads.add(s, e, z, hidden, weight)
        return grads.result(None) + (None,) * 8


class _Grads:
    """grad_hidden (written chunk by chunk), grad_weight and grad_bias
    (accumulated over chunks). grad_weight accumulates in `accum_dtype` (None:
    the weight's dtype, directly in the returned gradient; with bf16/fp16
    weights each chunk's contribution is then rounded once, like Liger-Kernel
    does -- float32 keeps torch's precision at the cost of a float32 copy of
    the weight's size). grad_bias always accumulates in float32/64."""

    def __init__(self, hidden, weight, bias, needs, accum_dtype):
        acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
        self.hidden = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device) if needs[0] else None
        self.weight = torch.zeros_like(weight, dtype=accum_dtype or weight.dtype) if needs[1] else None
        self.bias = torch.zeros_like(bias, dtype=acc) if (bias is not None and needs[2]) else None
        self.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)

    def add(self, s, e, dz, hidden, weight):
        if self.hidden is not None:
            torch.mm(dz, weight, out=self.hidden[s:e])
        if self.weight is not None:
            # (.to is a no-op when the accumulator has the chunk's dtype)
            self.weight.addmm_(dz.t().to(self.weight.dtype), hidden[s:e].to(self.weight.dtype))
        if self.bias is not None:
            self.bias += dz.sum(0, dtype=self.bias.dtype)

    def result(self, scale):
        out = []
        for g, dtype in zip((self.hidden, self.weight, self.bias), self.dtypes):
            if g is not None and scale is not None:
                g.mul_(scale.to(g.dtype))
            out.append(None if g is None else g.to(dtype))
        self.hidden = self.weight = self.bias = None
        return tuple(out)


@torch._dynamo.disable
def linear_cross_entropy(hidden: Tensor, weight: Tensor, target: Tensor, bias: Optional[Tensor] = None,
                         ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0, *,
                         z_loss: float = 0.0, softcap: Optional[float] = None,
                         chunk_size: Optional[int] = None, accum_dtype: Optional[torch.dtype] = None) -> Tensor:
    """``cross_entropy(hidden @ weight.T + bias, target, ...)`` without the
    full logits: tokens go through in chunks (matmul into one reused buffer,
    then the fused cross-entropy row kernels, which overwrite it with the
    logits' gradient); each chunk's gradient is folded into grad_hidden,
    grad_weight and grad_bias at once (in forward for 'mean' and 'sum'; for
    'none' backward recomputes each chunk).

    Extra memory: one (chunk_size x V) buffer (by default 4 % of the full
    logits, at least 32 MB). ``accum_dtype`` is the dtype grad_weight
    accumulates in over the chunks: None (default) accumulates in the weight's
    own dtype (no extra memory; for bf16/fp16 weights one rounding per chunk,
    as Liger-Kernel does); ``torch.float32`` matches the unfused precision at
    the cost of a float32 buffer of the weight's size. Under torch.compile
    this function is a graph break (it runs eagerly)."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"fastact.linear_cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"fastact.linear_cross_entropy: label_smoothing must be between 0 and 1, got {label_smoothing}")
    if hidden.shape[-1] != weight.shape[-1] or weight.dim() != 2:
        raise ValueError(f"fastact.linear_cross_entropy: hidden (..., {hidden.shape[-1]}) and weight "
                         f"{tuple(weight.shape)} do not match: weight must be (V, H)")
    device_type = hidden.device.type
    out_dtype = hidden.dtype
    if torch.is_autocast_enabled(device_type):
        # as nn.Linear under autocast: the matmuls run in the autocast dtype
        # (casts outside the chunk loop, so autograd casts the grads back)
        # and the loss in float32, as autocast runs cross_entropy
        dtype, out_dtype = torch.get_autocast_dtype(device_type), torch.float32
        hidden, weight = hidden.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    if weight.dtype != hidden.dtype or (bias is not None and bias.dtype != hidden.dtype):
        raise ValueError(f"fastact.linear_cross_entropy: hidden ({hidden.dtype}), weight ({weight.dtype}) and bias "
                         f"must have one dtype")
    lead = hidden.shape[:-1]
    h = hidden.reshape(-1, hidden.shape[-1])
    t = target.reshape(-1)
    if t.shape[0] != h.shape[0]:
        raise ValueError(f"fastact.linear_cross_entropy: target has {t.shape[0]} rows but hidden has {h.shape[0]}")
    chunk = _chunk_rows(h.shape[0], weight.shape[0], h.element_size(), chunk_size)
    if accum_dtype is not None and accum_dtype not in (torch.float32, torch.float64, weight.dtype):
        raise ValueError(f"fastact.linear_cross_entropy: accum_dtype must be None, float32, float64 or the "
                         f"weight's dtype, got {accum_dtype}")
    options = (int(ignore_index), float(label_smoothing), float(z_loss), float(softcap) if softcap else 0.0, chunk,
               accum_dtype)
    if reduction == "none":
        return _LinearCrossEntropy.apply(h, weight, bias, t, None, *options).view(lead).to(out_dtype)
    acc = torch.float64 if h.dtype == torch.float64 else torch.float32
    # d(reduced loss)/d(row loss): 1 for sum, 1/count for mean (on the device)
    row_grad = torch.ones(1, dtype=acc, device=h.device)
    if reduction == "mean":
        row_grad = row_grad / (t != ignore_index).sum()
    loss = _LinearCrossEntropy.apply(h, weight, bias, t, row_grad, *options)
    # the reduction, written so that its gradient reaching each row is
    # grad_output * row_grad (what the forward folded in)
    total = (loss * row_grad).sum()
    return total.to(out_dtype)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Per-row losses of vocabulary-sliced logits. Saves the slice itself (no
    float32 copy) and the (N,) lse; the target's logit is gathered with a
    mask, never with nonzero(), so nothing syncs with the host."""

    @staticmethod
    def forward(ctx, logits, target, group, ignore_index, smoothing, z_loss):
        import torch.distributed as dist

        rank, world = dist.get_rank(group), dist.get_world_size(group)
        n, v_local = logits.shape
        v = v_local * world
        m = logits.max(1).values.float() if v_local else logits.new_full((n,), float("-inf"), dtype=torch.float32)
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
        m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        x = logits.float()  # transient: backward recomputes from the saved logits
        sum_exp = torch.exp(x - m_safe[:, None]).sum(1)
        dist.all_reduce(sum_exp, group=group)
        lse = m_safe + torch.log(sum_exp)
        local_t = target - rank * v_local
        mine = (local_t >= 0) & (local_t < v_local) & (target != ignore_index)
        idx = torch.where(mine, local_t, torch.zeros_like(local_t))
        picked = logits.gather(1, idx[:, None]).squeeze(1).float() if v_local else m.new_zeros(n)
        z_t = torch.where(mine, picked, torch.zeros_like(picked))
        dist.all_reduce(z_t, group=group)
        sum_z = x.sum(1)
        del x
        dist.all_reduce(sum_z, group=group)
        counted = target != ignore_index
        loss = (1 - smoothing) * (lse - z_t) + smoothing * (lse - sum_z / v) + z_loss * lse * lse
        loss = torch.where(counted, loss, torch.zeros_like(loss))
        ctx.save_for_backward(logits, lse, idx, mine, counted)
        ctx.options = (v, smoothing, z_loss)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        logits, lse, idx, mine, counted = ctx.saved_tensors
        v, smoothing, z_loss = ctx.options
        p = torch.exp(logits.float() - lse[:, None])
        d = p * (1 + 2 * z_loss * lse[:, None]) - smoothing / v
        if d.shape[1]:
            d.scatter_add_(1, idx[:, None], (-(1 - smoothing) * mine.to(d.dtype))[:, None])
        d = d * (grad_loss * counted)[:, None]
        return d.to(logits.dtype), None, None, None, None, None


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
