"""Post-training heads on a linear LM head: per-token log-probabilities and
entropies (RL losses: GRPO, PPO, ...) and teacher-student divergences
(distillation), chunked over tokens so that the (tokens, vocab) logits never
exist beyond one chunk, in forward or in backward.

Both follow linear_ce.py's plan: the tokens go through in chunks of
``chunk_rows`` rows (the same rule as ``linear_cross_entropy``); each chunk's
logits are computed, reduced to per-row statistics and dropped. Backward
recomputes each chunk's logits from the saved input, weight and bias (and a
few per-row numbers), turns them into the logits' gradient and folds it into
the input, weight and bias gradients (``ChunkGrads``).

Precision: the row math runs in float32 (float64 for float64 inputs). On the
CPU, bfloat16/float16 operands are widened to float32 outside the chunk loop
(as ``linear_cross_entropy`` does; half-type CPU matmuls are emulated); on
CUDA the half-type matmul writes float32 logits directly (its float32
accumulator, never rounded to the half type). The per-token outputs come back
in float32 (float64 for float64 inputs) whatever the input dtype: log-probs
feed ratios ``exp(logp - old_logp)`` in RL losses, where a bfloat16 rounding
(2^-8 relative, ~0.03 absolute at logp = -8) would swamp the difference.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .linear_ce import ChunkGrads, chunk_rows, cpu_float32

_ops = torch.ops.fastact

__all__ = ["linear_logprobs", "linear_distill_loss", "vocab_parallel_linear_logprobs"]

_HALF = (torch.float16, torch.bfloat16)
_KINDS = ("kl", "reverse_kl", "jsd")
_REDUCTIONS = ("batchmean", "sum", "none")


def _row_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the chunk's logits and of the per-row math."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunk_logits(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], s: int, e: int,
                  dtype: torch.dtype) -> Tensor:
    """hidden[s:e] @ weight.T + bias in ``dtype`` (a fresh (e - s, V) tensor)."""
    h = hidden[s:e]
    if hidden.dtype == dtype:
        return torch.mm(h, weight.t()) if bias is None else torch.addmm(bias, h, weight.t())
    if hidden.device.type == "cuda":
        # half operands, float32 result straight from the matmul's accumulator
        z = torch.mm(h, weight.t(), out_dtype=dtype)
    else:
        z = torch.mm(h, weight.t()).to(dtype)
    return z if bias is None else z.add_(bias)


def _spans(n: int, chunk: int):
    for s in range(0, n, chunk):
        yield s, min(n, s + chunk)


def _grad_accumulator(hidden, weight, bias, needs):
    # grad_weight in float32 for half weights (on the CPU they arrive widened
    # already): one rounding at the end, as torch's unfused matmul
    accum = torch.float32 if weight.dtype in _HALF else None
    return ChunkGrads(hidden, weight, bias, needs, accum)


def _fold(grads: ChunkGrads, s: int, e: int, dz: Tensor, hidden: Tensor, weight: Tensor) -> None:
    """Adds the chunk's logit gradient ``dz`` to the input/weight/bias gradients."""
    grads.add(s, e, dz.to(hidden.dtype), hidden, weight)


def _check_head(op: str, name: str, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> None:
    for what, t in ((f"{name}input", input), (f"{name}weight", weight), (f"{name}bias", bias)):
        if t is not None and not isinstance(t, Tensor):
            raise TypeError(f"{op}: {what} must be a Tensor, got {type(t).__name__}")
        if t is not None and not t.is_floating_point():
            raise TypeError(f"{op}: {what} must be a floating-point tensor, got {t.dtype}")
    if input.dim() < 1:
        raise ValueError(f"{op}: expected {name}input with at least 1 dimension (..., hidden), got a 0-dim tensor")
    if weight.dim() != 2:
        raise ValueError(f"{op}: expected {name}weight of shape (vocab, hidden), got {tuple(weight.shape)}")
    if input.shape[-1] != weight.shape[1]:
        raise ValueError(f"{op}: {name}input's last dimension ({input.shape[-1]}) must equal {name}weight's "
                         f"hidden size ({weight.shape[1]})")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{op}: expected {name}bias of shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if weight.dtype != input.dtype or (bias is not None and bias.dtype != input.dtype):
        raise ValueError(f"{op}: {name}input ({input.dtype}), {name}weight ({weight.dtype}) and {name}bias must "
                         f"have one dtype")
    for what, t in ((f"{name}weight", weight), (f"{name}bias", bias)):
        if t is not None and t.device != input.device:
            raise ValueError(f"{op}: {what} is on {t.device}, {name}input on {input.device}")


def _check_target(op: str, target: Tensor, lead: tuple, device) -> None:
    if not isinstance(target, Tensor):
        raise TypeError(f"{op}: target must be a Tensor of class indices, got {type(target).__name__}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"{op}: target must hold class indices (an integer tensor), got {target.dtype}")
    if tuple(target.shape) != lead:
        raise ValueError(f"{op}: target must have the input's leading shape {lead}, got {tuple(target.shape)}")
    if target.device != device:
        raise ValueError(f"{op}: target is on {target.device}, input on {device}")


def _check_temperature(op: str, temperature: float) -> float:
    t = float(temperature)
    if not (t > 0 and math.isfinite(t)):
        raise ValueError(f"{op}: temperature must be positive and finite, got {temperature}")
    return t


def _prepare(input: Tensor, weight: Tensor, bias: Optional[Tensor]):
    """(hidden [N, H], weight, bias, widened): under autocast, the matmul
    operands in the autocast dtype (as nn.Linear); on the CPU, half types
    widened to float32 (cpu_float32). The casts stay outside the chunk loop,
    so autograd rounds each gradient back once."""
    hidden = input.reshape(-1, input.shape[-1])
    device_type = hidden.device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    return cpu_float32(hidden, weight, bias)


def _chunk(op, n, v, h, dtype, device_type, chunk_size, widened) -> int:
    # the chunk buffers hold float32 (float64) logits whatever the operands
    return chunk_rows(n, v, h, _row_dtype(dtype).itemsize, chunk_size, device_type, widened, op)


# --- log-probabilities and entropy -------------------------------------------------------


class _LogprobOptions(NamedTuple):
    temperature: float
    ignore_index: int
    chunk: int
    entropy: bool


class _VocabSlice(NamedTuple):
    """A column-parallel head: this rank's weight rows are the global classes
    [start, start + V_local) of ``vocab``, the others live on the ranks of ``group``."""
    group: object
    start: int
    vocab: int


def _logprob_rows(z: Tensor, target: Tensor, o: _LogprobOptions, ignore_index: int):
    """(float64 logsumexp, log p(target), entropy or None) of the rows of
    logits ``z`` divided by the temperature: one online pass over each row
    (the ``logprob_rows`` kernel: running max, sum of exponentials and, for
    the entropy, sum of exp(z) z, rescaled as the max grows). log p is 0 on
    rows whose target is ``ignore_index``."""
    lse, logp, entropy = _ops.logprob_rows(z, target, o.temperature, ignore_index, o.entropy)
    return lse, logp, (entropy if o.entropy else None)


def _logprob_grad_rows(z: Tensor, target: Tensor, lse: Tensor, entropy: Optional[Tensor], g_lse: Optional[Tensor],
                       g_logp: Optional[Tensor], g_ent: Optional[Tensor], o: _LogprobOptions,
                       ignore_index: int) -> Tensor:
    """d(sum g_lse * lse + g_logp * log p(target) + g_ent * H) / d(logits),
    written over the (contiguous) logits ``z``, which are returned
    (``logprob_rows_backward_``, one pass: dz = (p (g_lse - g_logp - g_ent
    (log p + H)) + onehot_t g_logp) / T, with the rows' lse and H, which may
    be those of the whole vocabulary when ``z`` is a slice of it; g_logp
    counts only on rows whose target is not ``ignore_index``). Rows whose
    gradients are all 0 (the ignored ones) get 0."""
    _ops.logprob_rows_backward_(z, target, lse, entropy, g_lse, g_logp, g_ent, o.temperature, ignore_index)
    return z


def _local_target(target: Tensor, v: _VocabSlice, v_local: int, ignore_index: int) -> Tensor:
    """The target's column in this rank's slice, -1 (the row kernels'
    ignore_index here) where another rank holds it or the token is ignored."""
    local = target - v.start
    mine = (local >= 0) & (local < v_local) & (target != ignore_index)
    return torch.where(mine, local, torch.full_like(local, -1))


def _combine_slices(lse_r: Tensor, logp_r: Tensor, entropy_r: Optional[Tensor], mine: Tensor, group):
    """The whole vocabulary's (lse, log p(target), entropy) of rows from each
    rank's slice statistics (lse_r, log p_r of the target where ``mine``,
    H_r), with two collectives of (rows,) vectors: M = max_r lse_r, then the
    sums over ranks of e_r = exp(lse_r - M), of z_t - M = log p_r + lse_r - M
    (held by one rank) and of e_r (H_r + M - lse_r). With S = sum e_r:
    lse = M + log S, log p = (z_t - M) - log S and, since the slice's
    probabilities are e_r / S times its own, H = sum_r (e_r / S) (H_r + lse -
    lse_r) = sum e_r (H_r + M - lse_r) / S + log S: sums of non-negative
    terms, no cancellation. float64 throughout."""
    import torch.distributed as dist

    m = lse_r.clone()
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    # (a row of -inf everywhere: relative to 0, its lse stays -inf)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    rel = lse_r - m  # <= 0
    e = torch.exp(rel)
    zero = torch.zeros_like(e)
    sums = [e, torch.where(mine, logp_r.double() + rel, zero)]
    if entropy_r is not None:  # (a slice of -inf logits: e = 0 and H_r NaN, adds 0)
        sums.append(torch.where(e > 0, e * (entropy_r.double() - rel), zero))
    sums = torch.stack(sums)
    dist.all_reduce(sums, group=group)
    log_s = torch.log(sums[0])
    entropy = sums[2] / sums[0] + log_s if entropy_r is not None else None
    return m + log_s, sums[1] - log_s, entropy


class _LinearLogprobs(torch.autograd.Function):
    """Per-token log p(target) and entropy of softmax(hidden @ weight.T + bias) / T,
    chunk by chunk. Saves the operands, the target and two (N,) vectors (the
    tempered logsumexp, in float64 so that backward forms z / T - lse exactly
    for rows far from 0, and the entropy).

    With ``vocab`` (a :class:`_VocabSlice`), weight and bias hold one rank's
    slice of a column-parallel head: each chunk's logit slice goes through
    the row kernel with the targets this rank holds, and
    :func:`_combine_slices` turns the slices' statistics into the whole
    vocabulary's; backward is local to the slice (its rows of the softmax,
    from the global lse and entropy), the weight's gradient stays a slice and
    the input's is all-reduced."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, o: _LogprobOptions, vocab: Optional[_VocabSlice]):
        n, dtype = hidden.shape[0], _row_dtype(hidden.dtype)
        counted = target != o.ignore_index
        # the row kernels' targets: global, or this slice's columns (-1 elsewhere)
        rows_target, rows_ignore = target, o.ignore_index
        if vocab is not None:
            rows_target, rows_ignore = _local_target(target, vocab, weight.shape[0], o.ignore_index), -1
        logp = hidden.new_empty((n,), dtype=dtype)
        lse = hidden.new_empty((n,), dtype=torch.float64)
        entropy = hidden.new_empty((n,), dtype=dtype) if o.entropy else None
        for s, e in _spans(n, o.chunk):
            # (the logits passed as a temporary: freed when the chunk's rows are done)
            rows = _logprob_rows(_chunk_logits(hidden, weight, bias, s, e, dtype), rows_target[s:e], o, rows_ignore)
            if vocab is not None:
                rows = _combine_slices(*rows, rows_target[s:e] >= 0, vocab.group)
            lse[s:e], logp[s:e] = rows[:2]
            if entropy is not None:
                entropy[s:e] = rows[2]
        zero = torch.zeros((), dtype=dtype, device=hidden.device)
        logp = torch.where(counted, logp, zero)
        if entropy is not None:
            entropy = torch.where(counted, entropy, zero)
        ctx.set_materialize_grads(False)
        ctx.o, ctx.vocab, ctx.rows_ignore = o, vocab, rows_ignore
        ctx.save_for_backward(hidden, weight, bias, target, lse, entropy)
        return (logp, entropy) if entropy is not None else logp

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logp, grad_entropy=None):
        import torch.distributed as dist

        hidden, weight, bias, target, lse, entropy = ctx.saved_tensors
        o, needs = ctx.o, ctx.needs_input_grad
        none = (None, None, None)  # target, options, vocabulary slice
        if not any(needs[:3]) or (grad_logp is None and grad_entropy is None):
            return (None, None, None) + none
        dtype = _row_dtype(hidden.dtype)
        zero = torch.zeros((), dtype=dtype, device=hidden.device)
        counted, rows_target = target != o.ignore_index, target
        if ctx.vocab is not None:
            rows_target = _local_target(target, ctx.vocab, weight.shape[0], o.ignore_index)
        # ignored tokens: no gradient (where, not a product: an inf/NaN
        # upstream gradient on an ignored token stays out)
        g_logp = torch.where(counted, grad_logp.to(dtype), zero) if grad_logp is not None else None
        g_ent = torch.where(counted, grad_entropy.to(dtype), zero) if grad_entropy is not None else None
        g_lse = None
        if ctx.vocab is not None and g_logp is not None:
            # a slice without the target: d log p = -d lse there (the row
            # kernel leaves the g_logp of its "ignored" rows out)
            g_lse = torch.where(rows_target >= 0, zero, -g_logp)
        grads = _grad_accumulator(hidden, weight, bias, needs)
        for s, e in _spans(hidden.shape[0], o.chunk):
            dz = _logprob_grad_rows(_chunk_logits(hidden, weight, bias, s, e, dtype), rows_target[s:e], lse[s:e],
                                    entropy[s:e] if entropy is not None else None,
                                    g_lse[s:e] if g_lse is not None else None,
                                    g_logp[s:e] if g_logp is not None else None,
                                    g_ent[s:e] if g_ent is not None else None, o, ctx.rows_ignore)
            _fold(grads, s, e, dz, hidden, weight)
            del dz  # (before the next chunk's logits exist)
        grad_hidden, grad_weight, grad_bias = grads.result(None)
        if grad_hidden is not None and ctx.vocab is not None:  # every slice's share of it
            dist.all_reduce(grad_hidden, group=ctx.vocab.group)
        return (grad_hidden, grad_weight, grad_bias) + none


def _logprobs(op: str, input: Tensor, linear_weight: Tensor, target: Tensor, linear_bias: Optional[Tensor],
              temperature: float, return_entropy: bool, ignore_index: int, chunk_size: Optional[int],
              vocab: Optional[_VocabSlice]):
    _check_head(op, "", input, linear_weight, linear_bias)
    lead = tuple(input.shape[:-1])
    _check_target(op, target, lead, input.device)
    temperature = _check_temperature(op, temperature)
    hidden, weight, bias, widened = _prepare(input, linear_weight, linear_bias)
    n, (v, h) = hidden.shape[0], weight.shape
    chunk = _chunk(op, n, v, h, hidden.dtype, hidden.device.type, chunk_size, widened)
    o = _LogprobOptions(temperature, int(ignore_index), chunk, bool(return_entropy))
    target = target.reshape(-1).long()
    if vocab is not None:
        # (the slices' kernels see only their own columns: the global range
        # is checked here, without a host sync on CUDA)
        torch._assert_async(((target == o.ignore_index) | ((target >= 0) & (target < vocab.vocab))).all(),
                            f"{op}: target out of bounds for {vocab.vocab} classes")
    out = _LinearLogprobs.apply(hidden, weight, bias, target, o, vocab)
    if return_entropy:
        return out[0].view(lead), out[1].view(lead)
    return out.view(lead)


@torch._dynamo.disable
def linear_logprobs(input: Tensor, linear_weight: Tensor, target: Tensor, *, linear_bias: Optional[Tensor] = None,
                    temperature: float = 1.0, return_entropy: bool = False, ignore_index: int = -100,
                    chunk_size: Optional[int] = None):
    """:func:`fastact.functional.linear_logprobs` (the API and its documentation) on
    plain tensors. Runs eagerly under torch.compile."""
    return _logprobs("fastact.linear_logprobs", input, linear_weight, target, linear_bias, temperature,
                     return_entropy, ignore_index, chunk_size, None)


@torch._dynamo.disable
def vocab_parallel_linear_logprobs(input: Tensor, linear_weight: Tensor, target: Tensor, group, start: int,
                                   vocab: int, *, linear_bias: Optional[Tensor] = None, temperature: float = 1.0,
                                   return_entropy: bool = False, ignore_index: int = -100,
                                   chunk_size: Optional[int] = None):
    """``linear_logprobs`` of a column-parallel LM head over the ranks of
    ``group``: ``linear_weight`` (and ``linear_bias``) are this rank's
    [V_local, H] slice, global classes [start, start + V_local) of ``vocab``;
    ``input`` and ``target`` (global class indices) are the same on every
    rank, and so are the results. Per chunk of tokens two all-reduces of
    (tokens,) vectors (the max of the slices' logsumexps, then the sums
    that carry the sum of exponentials, the target's logit and the entropy
    terms); the logits are never gathered. The input's gradient is
    all-reduced, the weight's and bias's are this rank's slices."""
    return _logprobs("fastact.linear_logprobs", input, linear_weight, target, linear_bias, temperature,
                     return_entropy, ignore_index, chunk_size, _VocabSlice(group, int(start), int(vocab)))


# --- distillation ---------------------------------------------------------------------------


class _DistillOptions(NamedTuple):
    kind: str
    beta: float
    temperature: float
    ignore_index: int
    hard_label_weight: float
    has_target: bool
    chunk: int


def _distill_rows(zs: Tensor, zt: Tensor, index: Tensor, o: _DistillOptions, grad_rows: Optional[Tensor] = None):
    """The rows' losses ``(1 - a) * divergence + a * cross_entropy`` of student
    logits ``zs`` and teacher logits ``zt`` (untempered, float32/64, consumed),
    and with ``grad_rows`` (already 0 on ignored rows) the gradient of
    ``sum(grad_rows * loss)`` w.r.t. ``zs`` (else None).

    With log q, log p the tempered log-softmaxes (student, teacher) and T the
    temperature, d/dzs of: KL(P||Q) is (q - p) / T; KL(Q||P) = sum q (log q -
    log p) is q (log q - log p - KL) / T; the JSD, with log m = logaddexp(log
    beta + log p, log(1 - beta) + log q), has d/dq_c = (1 - beta) (log q_c -
    log m_c), i.e. q (g - sum q g) / T with that g. The cross-entropy (T = 1):
    softmax(zs) - onehot."""
    a, T = o.hard_label_weight, o.temperature
    loss = zs.new_zeros(zs.shape[0])
    dz = None
    if a:
        lse = torch.logsumexp(zs, 1)
        loss += a * (lse - zs.gather(1, index).squeeze(1))
        if grad_rows is not None:
            dz = torch.sub(zs, lse[:, None]).exp_().mul_(a * grad_rows[:, None])
            dz.scatter_add_(1, index, (-a * grad_rows)[:, None])
    if a == 1.0:
        return loss, dz
    # in place where the chunk's buffers allow: at most ~6 (rows, V) tensors live
    if T != 1.0:
        zs.div_(T)
        zt.div_(T)
    log_q = zs.sub_(torch.logsumexp(zs, 1, keepdim=True))
    log_p = zt.sub_(torch.logsumexp(zt, 1, keepdim=True))
    q = torch.exp(log_q)
    if o.kind == "kl":
        p = torch.exp(log_p)
        div = log_p.sub_(log_q).mul_(p).sum(1)  # sum p (log p - log q)
        g = q.sub_(p)
    elif o.kind == "reverse_kl":
        diff = log_q.sub_(log_p)
        div = (q * diff).sum(1)  # sum q (log q - log p)
        g = diff.sub_(div[:, None]).mul_(q)
    else:
        beta = o.beta
        # log m = logaddexp(log beta + log p, log(1 - beta) + log q), -inf terms for beta in {0, 1}
        log_m = log_p + (math.log(beta) if beta > 0 else -math.inf)
        scratch = log_q + (math.log1p(-beta) if beta < 1 else -math.inf)
        torch.logaddexp(log_m, scratch, out=log_m)
        div = zs.new_zeros(zs.shape[0])
        if beta > 0:
            p = torch.exp(log_p, out=scratch)
            div += beta * log_p.sub_(log_m).mul_(p).sum(1)  # beta sum p (log p - log m)
        gq = log_q.sub_(log_m).mul_(1 - beta)  # d/dq of (1 - beta) sum q (log q - log m), see above
        qgq = torch.mul(q, gq, out=scratch).sum(1)
        div += qgq
        g = gq.sub_(qgq[:, None]).mul_(q)
    loss += (1 - a) * div
    if grad_rows is not None:
        g.mul_(((1 - a) / T) * grad_rows[:, None])
        dz = g if dz is None else dz.add_(g)
    return loss, dz


class _LinearDistill(torch.autograd.Function):
    """Per-token distillation losses of two linear heads, chunk by chunk;
    gradients for the student only. Saves the operands and the target;
    backward recomputes both heads' logits."""

    @staticmethod
    def forward(ctx, s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, target, o: _DistillOptions):
        n, dtype = s_hidden.shape[0], _row_dtype(s_hidden.dtype)
        counted, index = _counted(target, o)
        loss = s_hidden.new_empty((n,), dtype=dtype)
        for s, e in _spans(n, o.chunk):
            # (the logits passed as temporaries: freed when the chunk's rows are done)
            loss[s:e] = _distill_rows(_chunk_logits(s_hidden, s_weight, s_bias, s, e, dtype),
                                      _chunk_logits(t_hidden, t_weight, t_bias, s, e, dtype), index[s:e], o)[0]
        loss = torch.where(counted, loss, torch.zeros((), dtype=dtype, device=loss.device))
        ctx.o = o
        ctx.save_for_backward(s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, target)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, target = ctx.saved_tensors
        o, needs = ctx.o, ctx.needs_input_grad
        none = (None,) * 5  # the teacher's three, target, options
        if not any(needs[:3]):
            return (None, None, None) + none
        dtype = _row_dtype(s_hidden.dtype)
        counted, index = _counted(target, o)
        g = torch.where(counted, grad_loss.to(dtype), torch.zeros((), dtype=dtype, device=grad_loss.device))
        grads = _grad_accumulator(s_hidden, s_weight, s_bias, needs)
        for s, e in _spans(s_hidden.shape[0], o.chunk):
            dz = _distill_rows(_chunk_logits(s_hidden, s_weight, s_bias, s, e, dtype),
                               _chunk_logits(t_hidden, t_weight, t_bias, s, e, dtype), index[s:e], o, g[s:e])[1]
            _fold(grads, s, e, dz, s_hidden, s_weight)
            del dz  # (before the next chunk's logits exist)
        return grads.result(None) + none


def _counted(target: Tensor, o: _DistillOptions):
    """(counted rows, target index with ignored rows at 0 as [N, 1])."""
    if not o.has_target:
        return torch.ones_like(target, dtype=torch.bool), target[:, None]
    counted = target != o.ignore_index
    return counted, torch.where(counted, target, torch.zeros_like(target))[:, None]


@torch._dynamo.disable
def linear_distill_loss(student_input: Tensor, student_weight: Tensor, teacher_input: Tensor, teacher_weight: Tensor,
                        target: Optional[Tensor] = None, *, kind: str = "kl", beta: float = 0.5,
                        temperature: float = 1.0, ignore_index: int = -100, reduction: str = "batchmean",
                        chunk_size: Optional[int] = None, hard_label_weight: float = 0.0,
                        student_bias: Optional[Tensor] = None, teacher_bias: Optional[Tensor] = None) -> Tensor:
    """:func:`fastact.functional.linear_distill_loss` (the API and its documentation) on
    plain tensors. Runs eagerly under torch.compile."""
    op = "fastact.linear_distill_loss"
    _check_head(op, "student_", student_input, student_weight, student_bias)
    _check_head(op, "teacher_", teacher_input, teacher_weight, teacher_bias)
    lead = tuple(student_input.shape[:-1])
    if tuple(teacher_input.shape[:-1]) != lead:
        raise ValueError(f"{op}: student_input {tuple(student_input.shape)} and teacher_input "
                         f"{tuple(teacher_input.shape)} must have the same leading (token) shape")
    if teacher_input.device != student_input.device:
        raise ValueError(f"{op}: teacher_input is on {teacher_input.device}, student_input on "
                         f"{student_input.device}")
    if student_weight.shape[0] != teacher_weight.shape[0]:
        raise ValueError(f"{op}: student and teacher vocabularies differ: student_weight has "
                         f"{student_weight.shape[0]} rows, teacher_weight {teacher_weight.shape[0]}")
    if kind not in _KINDS:
        raise ValueError(f"{op}: kind must be one of {', '.join(map(repr, _KINDS))}, got {kind!r}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: {reduction!r} is not a valid value for reduction "
                         f"({', '.join(map(repr, _REDUCTIONS))})")
    if not 0.0 <= float(beta) <= 1.0:
        raise ValueError(f"{op}: beta must be in [0, 1], got {beta}")
    if not 0.0 <= float(hard_label_weight) <= 1.0:
        raise ValueError(f"{op}: hard_label_weight must be in [0, 1], got {hard_label_weight}")
    temperature = _check_temperature(op, temperature)
    if target is not None:
        _check_target(op, target, lead, student_input.device)
    elif hard_label_weight:
        raise ValueError(f"{op}: hard_label_weight={hard_label_weight} needs a target")

    s_hidden, s_weight, s_bias, widened = _prepare(student_input, student_weight, student_bias)
    # the teacher never gets a gradient: detached before anything records it
    t_hidden, t_weight, t_bias, _ = _prepare(teacher_input.detach(), teacher_weight.detach(),
                                             teacher_bias.detach() if teacher_bias is not None else None)
    n, (v, h) = s_hidden.shape[0], s_weight.shape
    chunk = _chunk(op, n, v, max(h, t_weight.shape[1]), s_hidden.dtype, s_hidden.device.type, chunk_size, widened)
    rows_target = target.reshape(-1).long() if target is not None else \
        torch.zeros((n,), dtype=torch.long, device=s_hidden.device)
    o = _DistillOptions(kind, float(beta), temperature, int(ignore_index), float(hard_label_weight),
                        target is not None, chunk)
    loss = _LinearDistill.apply(s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, rows_target, o)
    if reduction == "none":
        return loss.view(lead)
    if reduction == "sum":
        return loss.sum()
    count = (rows_target != int(ignore_index)).sum() if target is not None else n
    return loss.sum() / count
