"""Vocabulary-parallel cross-entropy over a torch.distributed process group:
each rank holds a slice of the vocabulary (of the logits, or of a
column-parallel LM head's weight) and the row statistics -- max, sum of
exponentials, target logit, logit sum -- are all-reduced over the group
(four (N,) vectors), never the logits. Plain tensors and process groups:
fastact.distributed.losses maps DTensors sharded on the vocabulary onto the
autograd functions here."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["vocab_parallel_cross_entropy", "VocabParallelCrossEntropy", "VocabParallelLinearCrossEntropy"]


def _vp_rows_forward(logits, target, group, start, v, ignore_index, smoothing, z_loss):
    """Per-row losses of the vocabulary slice ``logits`` [n, v_local] holding
    global columns [start, start + v_local) of [n, v], in float32 (float64 for
    float64 logits), every term relative to the global row max m (shift
    invariance, as the row kernels): log s - (z_t - m), with s the all-reduced
    sum of exp(z - m). Four all-reduces of (n,) vectors over ``group``; the
    target's logit is gathered with a mask, never with nonzero(), so nothing
    syncs with the host. Returns (loss, m, log s)."""
    import torch.distributed as dist

    n, v_local = logits.shape
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    m = logits.max(1).values.to(acc) if v_local else logits.new_full((n,), float("-inf"), dtype=acc)
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    x = logits.to(acc) - m_safe[:, None]  # transient: backward recomputes from the logits
    sum_exp = torch.exp(x).sum(1)
    dist.all_reduce(sum_exp, group=group)
    log_s = torch.log(sum_exp)
    idx, mine = _vp_local_target(target, start, v_local, ignore_index)
    picked = x.gather(1, idx[:, None]).squeeze(1) if v_local else m.new_zeros(n)
    z_t = torch.where(mine, picked, torch.zeros_like(picked))  # z_t - m
    dist.all_reduce(z_t, group=group)
    sum_z = x.sum(1)  # sum_c (z_c - m)
    del x
    dist.all_reduce(sum_z, group=group)
    lse = m_safe + log_s
    loss = (1 - smoothing) * (log_s - z_t) + smoothing * (log_s - sum_z / v) + z_loss * lse * lse
    loss = torch.where(target != ignore_index, loss, torch.zeros_like(loss))
    return loss, m_safe, log_s


def _vp_local_target(target, start, v_local, ignore_index):
    """(column of the target in this slice, clamped; whether the slice holds it)."""
    local_t = target - start
    mine = (local_t >= 0) & (local_t < v_local) & (target != ignore_index)
    return torch.where(mine, local_t, torch.zeros_like(local_t)), mine


def _vp_rows_grad(logits, target, m, log_s, grad_rows, start, v, ignore_index, smoothing, z_loss):
    """d(sum_r grad_rows[r] * loss[r]) / d(logits slice), in m's dtype; local (no collective)."""
    idx, mine = _vp_local_target(target, start, logits.shape[1], ignore_index)
    p = torch.exp((logits.to(m.dtype) - m[:, None]) - log_s[:, None])
    d = p * (1 + 2 * z_loss * (m + log_s)[:, None]) - smoothing / v
    if d.shape[1]:
        d.scatter_add_(1, idx[:, None], (-(1 - smoothing) * mine.to(d.dtype))[:, None])
    return d * (grad_rows.to(d.dtype) * (target != ignore_index))[:, None]


class VocabParallelCrossEntropy(torch.autograd.Function):
    """Per-row losses of vocabulary-sliced logits (:func:`_vp_rows_forward`).
    Saves the slice itself (no float32 copy), m and log s. ``start`` is the
    slice's first global column, ``v`` the global vocabulary."""

    @staticmethod
    def forward(ctx, logits, target, group, start, v, ignore_index, smoothing, z_loss):
        loss, m, log_s = _vp_rows_forward(logits, target, group, start, v, ignore_index, smoothing, z_loss)
        ctx.save_for_backward(logits, target, m, log_s)
        ctx.options = (start, v, ignore_index, smoothing, z_loss)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        logits, target, m, log_s = ctx.saved_tensors
        d = _vp_rows_grad(logits, target, m, log_s, grad_loss, *ctx.options)
        return (d.to(logits.dtype),) + (None,) * 7


class VocabParallelLinearCrossEntropy(torch.autograd.Function):
    """Per-row losses of ``hidden @ weight.T (+ bias)`` (soft-capped to
    ``softcap * tanh(z / softcap)`` when ``softcap``) with ``weight`` the
    [V_local, H] slice of the vocabulary that starts at global row ``start``
    (a column-parallel LM head), chunk by chunk of tokens: each chunk's logit
    slice is formed, its row max, sum of exponentials, target logit and logit
    sum all-reduced over ``group`` (the collectives of
    ``vocab_parallel_cross_entropy``); only (N,) vectors are saved and
    backward recomputes each chunk's slice. The hidden gradient is
    all-reduced (each rank's slice contributes to it)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, group, start, v, chunk, options, softcap=0.0):
        n = hidden.shape[0]
        acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        loss, m, log_s = (hidden.new_empty((n,), dtype=acc) for _ in range(3))
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            z = _capped(_chunk_logits(hidden[s:e], weight, bias), softcap, acc)
            loss[s:e], m[s:e], log_s[s:e] = _vp_rows_forward(z, target[s:e], group, start, v, *options)
        ctx.save_for_backward(hidden, weight, bias, target, m, log_s)
        ctx.args = (group, start, v, chunk, options, softcap)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        import torch.distributed as dist

        hidden, weight, bias, target, m, log_s = ctx.saved_tensors
        group, start, v, chunk, options, softcap = ctx.args
        needs = ctx.needs_input_grad
        acc = m.dtype
        gh = torch.zeros_like(hidden) if needs[0] else None
        gw = torch.zeros_like(weight, dtype=acc) if needs[1] else None
        gb = torch.zeros_like(bias, dtype=acc) if bias is not None and needs[2] else None
        n = hidden.shape[0]
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            z = _capped(_chunk_logits(hidden[s:e], weight, bias), softcap, acc)
            d = _vp_rows_grad(z, target[s:e], m[s:e], log_s[s:e], grad_loss[s:e], start, v, *options)
            if softcap:
                # d(c tanh(z / c))/dz = 1 - tanh(z / c)**2
                d = d * (1 - (z / softcap) ** 2)
            if gh is not None:
                gh[s:e] = d.to(hidden.dtype) @ weight
            if gw is not None:
                gw.addmm_(d.t(), hidden[s:e].to(acc))
            if gb is not None:
                gb += d.sum(0)
        if gh is not None:
            dist.all_reduce(gh, group=group)
        return (gh, None if gw is None else gw.to(weight.dtype), None if gb is None else gb.to(bias.dtype),
                None, None, None, None, None, None, None)


def _chunk_logits(hidden, weight, bias):
    z = hidden @ weight.t()
    if bias is not None:
        z += bias
    return z


def _capped(z, softcap, acc):
    """``softcap * tanh(z / softcap)`` in ``acc`` (the row kernels' soft-cap), or ``z``."""
    return softcap * torch.tanh(z.to(acc) / softcap) if softcap else z


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
    import torch.distributed as dist

    lead, v_local = logits.shape[:-1], logits.shape[-1]
    start, v = dist.get_rank(group) * v_local, v_local * dist.get_world_size(group)
    loss = VocabParallelCrossEntropy.apply(logits.reshape(-1, v_local), target.reshape(-1), group, start, v,
                                            int(ignore_index), float(label_smoothing), float(z_loss))
    if reduction == "none":
        return loss.view(lead).to(logits.dtype)
    if reduction == "sum":
        return loss.sum().to(logits.dtype)
    return (loss.sum() / (target != ignore_index).sum()).to(logits.dtype)
