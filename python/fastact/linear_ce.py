"""Fused linear cross-entropy (never holds the (N, V) logits) and
vocabulary-parallel cross-entropy over torch.distributed."""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from ._dtensor import is_dtensor
from .cross_entropy import prob_target_grad

_ops = torch.ops.fastact

__all__ = ["linear_cross_entropy", "vocab_parallel_cross_entropy"]


# The fewest tokens per chunk on the CPU (see chunk_rows).
CPU_MIN_ROWS = 128
# CUDA chunks (see chunk_rows): a multiple of the GEMM's row tile, at least
# GPU_MIN_ROWS where that buffer stays within GPU_MIN_ROWS_BYTES.
GPU_ROW_TILE = 128
GPU_MIN_ROWS = 256
GPU_MIN_ROWS_BYTES = 256 << 20


def chunk_rows(n: int, v: int, h: int, itemsize: int, chunk_size: Optional[int], device_type: str,
               widened: bool = False, op: str = "fastact.linear_cross_entropy") -> int:
    """Tokens per chunk. One (rows x V) buffer lives at a time (the chunk's
    logits, overwritten by their gradient). Shared with the post-training
    heads (posttrain.py) and the vocabulary-parallel head (distributed.py);
    ``op`` names the caller in the error message.

    CPU: torch's own rule (LinearCrossEntropyOptions' "aspect_ratio"), a
    buffer about the size of the input: rows = next_pow2(ceil(N / ceil(V /
    H))), but at least 128 rows. Every chunk streams the weight and its
    gradient once more and the CPU matmuls run far below their speed with
    fewer rows: on the 2-core benchmark machine, N=2048, H=512, V=32000
    fp32 takes 2.3 s with torch's 64 rows (torch's own path too, eager 1.8
    s) and 1.5-1.7 s with 128, and the 1024-token LLaMA step of
    benchmarks/bench_transformers.py (V=128256, H=256: torch's rule gives 4
    rows) 15.9 s instead of eager's 2.9 s. The peak memory is the gradients
    plus this buffer: at that fp32 size 128 rows peak ~5 MB above torch's
    chunked path (96 vs 91 MB), 64 rows 3 MB below it. bfloat16/float16
    inputs run in float32 on the CPU (`widened`), as torch's "accurate"
    policy does there, and torch then holds float32 scratch buffers that
    fastact does not: 4x torch's rows stay far below its peak (bf16, N=8192,
    H=256, V=128256: 128 rows 13.4 s / 340 MB, torch 52 s / 601 MB).

    CUDA: 4 % of the full logits, at least 32 MB, so that the matmuls get
    enough rows to fill the GPU, rounded down to a multiple of 128 rows and
    raised to at least 256 rows while those take at most 256 MB. The
    cuBLAS/CUTLASS kernels of the chunk's two matmuls tile the rows by 128
    (or 256): 327 rows would run three tiles of 128 and a fourth of which 71
    rows are work, and each chunk's matmul against the whole (V x H) weight
    has to give every SM tiles, which 256 rows of a large vocabulary do
    (84 MB budget, 327 -> 256 rows at N=8192, V=128256 bf16: 64 MB)."""
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"{op}: chunk_size must be positive, got {chunk_size}")
        return int(chunk_size)
    if device_type == "cpu":
        per_row = -(-max(1, v) // max(1, h))
        target = max(1, -(-n // per_row))
        rows = (1 << (target - 1).bit_length()) * (4 if widened else 1)
        return max(1, min(n, max(rows, CPU_MIN_ROWS)))
    row_bytes = max(1, v * itemsize)
    budget = max(32 << 20, (n * row_bytes) // 25)
    rows = budget // row_bytes
    if rows >= GPU_ROW_TILE:
        rows -= rows % GPU_ROW_TILE
    if GPU_MIN_ROWS * row_bytes <= GPU_MIN_ROWS_BYTES:
        rows = max(rows, GPU_MIN_ROWS)
    return max(1, min(n, rows))


def cpu_float32(hidden, weight, bias):
    """(hidden, weight, bias, widened): bfloat16/float16 operands on the CPU
    as float32. CPU matmuls in half types are emulated (many times slower
    than in float32) and would round the chunk's logits and gradients, and
    the upstream gradient's scaling once more: on the CPU the chunk loop runs
    in float32 (torch's "accurate" policy there), the casts outside it, so
    autograd rounds each gradient once."""
    widened = hidden.device.type == "cpu" and hidden.dtype in (torch.float16, torch.bfloat16)
    if widened:
        hidden, weight = hidden.float(), weight.float()
        bias = bias.float() if bias is not None else None
    return hidden, weight, bias, widened


class _Chunks:
    """The chunk loop: yields (start, end, logits) per chunk of tokens, the
    logits computed into one reused (chunk x D*C) buffer that the caller may
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


class _Options(NamedTuple):
    classes: int        # C: the logits of a token are D rows of C classes
    per_token: int      # D = prod(out_features)
    ignore_index: int
    smoothing: float
    z_loss: float
    softcap: float      # 0: none
    chunk: int
    accum_dtype: Optional[torch.dtype]

    def row_options(self):
        return (self.ignore_index, self.smoothing, self.z_loss, self.softcap)


class _LinearCrossEntropy(torch.autograd.Function):
    """Per-row losses of hidden @ weight.T + bias (weight [D*C, H]: each token
    gives D rows of C classes), chunk by chunk of tokens. With a scalar
    upstream gradient known in advance (`row_grad`: the mean's or sum's
    per-row factor) the gradients are folded in during forward while each
    chunk's logits exist, and backward only scales them; otherwise
    (reduction='none', or a probability target that requires grad) backward
    recomputes each chunk's logits."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, class_weight, row_grad, o: _Options):
        n, d = hidden.shape[0], o.per_token
        acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        loss = hidden.new_empty((n * d,), dtype=acc)
        lse = hidden.new_empty((n * d,), dtype=torch.float64)
        eager_grads = row_grad is not None and any(ctx.needs_input_grad[:3]) and not ctx.needs_input_grad[3]
        grads = ChunkGrads(hidden, weight, bias, ctx.needs_input_grad, o.accum_dtype) if eager_grads else None
        options = o.row_options()
        for s, e, z in _Chunks(hidden, weight, bias, o.chunk):
            rows, tgt = z.view(-1, o.classes), target[s * d:e * d]
            loss[s * d:e * d], lse[s * d:e * d] = _ops.cross_entropy_rows(rows, tgt, class_weight, *options)
            if grads is not None:
                _ops.cross_entropy_rows_backward_(row_grad.expand(rows.shape[0]), rows, tgt, class_weight,
                                                  lse[s * d:e * d], *options)
                grads.add(s, e, z, hidden, weight)
        ctx.eager, ctx.row_grad, ctx.o = grads, row_grad, o
        # (inputs: saving them costs nothing; a second backward through a
        # retained graph recomputes, since the first one hands the folded
        # gradients to autograd without keeping a reference)
        ctx.save_for_backward(hidden, weight, bias, target, class_weight, lse)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.eager is not None:
            # every row receives grad_output * row_grad (the reduction below);
            # row_grad is already in the gradients, grad_output is not.
            # Scaled in place and released: autograd can keep the buffers as
            # .grad without a copy.
            # (a mean over no counted row: row_grad = 1/0 = inf and every
            # row's gradient is 0, as in torch; keep it 0, not inf/inf)
            row_grad = ctx.row_grad
            # (no tokens: no row received a gradient, all are 0)
            first = grad_loss[:1] if grad_loss.numel() else torch.zeros_like(row_grad)
            scale = torch.where(torch.isfinite(row_grad), first / row_grad, torch.zeros_like(row_grad))
            grads, ctx.eager = ctx.eager.result(scale), None
            return grads + (None,) * 4
        hidden, weight, bias, target, class_weight, lse = ctx.saved_tensors
        o, d = ctx.o, ctx.o.per_token
        grads = ChunkGrads(hidden, weight, bias, ctx.needs_input_grad, o.accum_dtype)
        grad_target = torch.empty_like(target) if ctx.needs_input_grad[3] else None
        for s, e, z in _Chunks(hidden, weight, bias, o.chunk):
            rows, g = z.view(-1, o.classes), grad_loss[s * d:e * d]
            if grad_target is not None:  # before the logits are overwritten
                grad_target[s * d:e * d] = prob_target_grad(g, rows, class_weight, o.smoothing, o.softcap,
                                                            target.dtype)
            if any(ctx.needs_input_grad[:3]):
                _ops.cross_entropy_rows_backward_(g, rows, target[s * d:e * d], class_weight, lse[s * d:e * d],
                                                  *o.row_options())
                grads.add(s, e, z, hidden, weight)
        return grads.result(None) + (grad_target, None, None, None)


class ChunkGrads:
    """grad_hidden (written chunk by chunk), grad_weight and grad_bias
    (accumulated over chunks); shared with posttrain.py. grad_weight accumulates in `accum_dtype` (None:
    the weight's dtype, directly in the returned gradient; with bf16/fp16
    weights each chunk's contribution is then rounded once, like Liger-Kernel
    does -- float32 keeps torch's precision at the cost of a float32 copy of
    the weight's size). grad_bias always accumulates in float32/64."""

    def __init__(self, hidden, weight, bias, needs, accum_dtype):
        acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
        self.hidden = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device) if needs[0] else None
        # (written by the first chunk's matmul, accumulated by the others:
        # no zero fill, one pass less over the weight's size)
        self.weight = torch.empty_like(weight, dtype=accum_dtype or weight.dtype) if needs[1] else None
        self.weight_written = False
        self.bias = torch.zeros_like(bias, dtype=acc) if (bias is not None and needs[2]) else None
        self.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)

    def add(self, s, e, dz, hidden, weight):
        if self.hidden is not None:
            torch.mm(dz, weight, out=self.hidden[s:e])
        if self.weight is not None:
            # (.to is a no-op when the accumulator has the chunk's dtype)
            a, b = dz.t().to(self.weight.dtype), hidden[s:e].to(self.weight.dtype)
            if self.weight_written:
                self.weight.addmm_(a, b)
            else:
                torch.mm(a, b, out=self.weight)
                self.weight_written = True
        if self.bias is not None:
            self.bias += dz.sum(0, dtype=self.bias.dtype)

    def result(self, scale):
        if self.weight is not None and not self.weight_written:  # no chunk (no tokens)
            self.weight.zero_()
        out = []
        for g, dtype in zip((self.hidden, self.weight, self.bias), self.dtypes):
            if g is not None and scale is not None:
                g.mul_(scale.to(g.dtype))
            out.append(None if g is None else g.to(dtype))
        self.hidden = self.weight = self.bias = None
        return tuple(out)


def _options_chunk(options) -> Optional[int]:
    """The rows per chunk a torch LinearCrossEntropyOptions asks for, if any."""
    size = getattr(options, "batch_chunk_size", None)
    return int(size) if isinstance(size, int) and size > 0 else None


@torch._dynamo.disable
def linear_cross_entropy(input: Tensor, linear_weight: Tensor, target: Tensor, *,
                         linear_bias: Optional[Tensor] = None, weight: Optional[Tensor] = None,
                         reduction: str = "mean", ignore_index: Optional[int] = None,
                         label_smoothing: float = 0.0, options=None, z_loss: float = 0.0,
                         softcap: Optional[float] = None, chunk_size: Optional[int] = None,
                         accum_dtype: Optional[torch.dtype] = None) -> Tensor:
    """torch 2.14's ``torch.nn.functional.linear_cross_entropy``, i.e.
    ``cross_entropy(linear(input, linear_weight, linear_bias), target,
    weight=weight, ...)`` with the logits reshaped to ``(N, C, d1, ...)`` for
    a ``(C, d1, ..., H)`` linear weight, without the full logits: tokens go
    through in chunks (matmul into one reused buffer, then the fused
    cross-entropy row kernels, which overwrite it with the logits' gradient);
    each chunk's gradient is folded into the input, linear weight and bias
    gradients at once (in forward for 'mean' and 'sum'; for 'none', or a
    probability target that requires grad, backward recomputes each chunk).

    As in torch: ``input`` is ``(H,)`` or ``(N, H)``; ``weight`` is the
    *class* weight ``(C,)``; ``ignore_index=None`` means -100 and may not be
    given with a probability target (target of the logits' shape), which gets
    its gradient when it requires grad; ``options`` (a
    ``LinearCrossEntropyOptions``) is accepted, and its ``batch_chunk_size``
    is used when ``chunk_size`` is not given.

    fastact's keyword extras: ``z_loss``, ``softcap`` (as in
    :func:`fastact.functional.cross_entropy`); ``chunk_size`` (tokens per
    chunk; default: on the CPU torch's own rule, a chunk buffer about the
    size of the input, but at least 128 tokens; on CUDA a buffer of 4 % of
    the full logits, at least 32 MB, in multiples of 128 rows, at least 256);
    ``accum_dtype``, the dtype grad of the linear weight accumulates in over
    the chunks: None (default) accumulates in the weight's own dtype (no
    extra memory; for bf16/fp16 weights one rounding per chunk, as
    Liger-Kernel does); ``torch.float32`` matches the unfused precision at the
    cost of a float32 buffer of the weight's size. On the CPU, bf16/fp16
    inputs are computed in float32 (half-type matmuls are emulated there),
    each gradient rounded once. Under torch.compile this function is a graph
    break (it runs eagerly)."""
    op = "fastact.linear_cross_entropy"
    if input.dim() < 1 or input.dim() > 2:
        raise ValueError(f"{op}: expected input with dimensionality 1 or 2, got {input.dim()}")
    if linear_weight.dim() < 2:
        raise ValueError(f"{op}: expected linear_weight with dimensionality at least 2, got {linear_weight.dim()}")
    in_features = input.shape[-1]
    if in_features != linear_weight.shape[-1]:
        raise ValueError(f"{op}: expected equal input and linear_weight last dimensions (in_features), got "
                         f"{in_features} and {linear_weight.shape[-1]}, respectively")
    classes, out_features = linear_weight.shape[0], tuple(linear_weight.shape[1:-1])
    if linear_bias is not None and tuple(linear_bias.shape) != (classes, *out_features):
        raise ValueError(f"{op}: expected linear_bias shape {(classes, *out_features)}, got "
                         f"{tuple(linear_bias.shape)}")
    batched = input.dim() == 2
    if out_features and not batched:
        raise ValueError(f"{op}: K-dimensional loss defined by linear_weight shape {tuple(linear_weight.shape)} "
                         f"requires batched input, (N, {in_features}), got unbatched input with shape "
                         f"{tuple(input.shape)}")
    logits_shape = (*input.shape[:-1], classes, *out_features)
    if tuple(target.shape) == logits_shape and ignore_index is not None:
        raise ValueError(f"{op}: ignore_index cannot be specified when target contains probabilities")
    ignore_index = -100 if ignore_index is None else int(ignore_index)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{op}: {reduction!r} is not a valid value for reduction ('mean', 'sum' or 'none')")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{op}: label_smoothing must be between 0.0 and 1.0, got {label_smoothing}")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"{op}: softcap must be positive, got {softcap}")
    prob = target.is_floating_point()
    n = input.shape[0] if batched else 1
    d = math.prod(out_features)
    expected = logits_shape if prob else (*input.shape[:-1], *out_features)
    if tuple(target.shape) != tuple(expected):
        raise ValueError(f"{op}: target must have shape {tuple(expected)} (class "
                         f"{'probabilities' if prob else 'indices'}) for logits of shape {logits_shape}, got "
                         f"{tuple(target.shape)}")
    if weight is not None and tuple(weight.shape) != (classes,):
        raise ValueError(f"{op}: expected weight shape to be {(classes,)}, got {tuple(weight.shape)}")
    if accum_dtype is not None and accum_dtype not in (torch.float32, torch.float64, linear_weight.dtype):
        raise ValueError(f"{op}: accum_dtype must be None, float32, float64 or the weight's dtype, got "
                         f"{accum_dtype}")

    if is_dtensor(linear_weight):
        # a column-parallel LM head (weight sharded on the vocabulary)
        if weight is not None or prob or out_features or not batched:
            raise NotImplementedError(f"{op}: with a DTensor linear_weight, class weights, probability targets, "
                                      f"out_features and unbatched input are not supported")
        from .distributed import linear_cross_entropy_vocab_parallel

        if chunk_size is None:
            chunk_size = _options_chunk(options)
        return linear_cross_entropy_vocab_parallel(input, linear_weight, target, linear_bias, reduction,
                                                   ignore_index, label_smoothing, z_loss, chunk_size, softcap)
    if is_dtensor(input):
        raise NotImplementedError(f"{op}: a DTensor input needs a DTensor linear_weight (sharded on the "
                                  f"vocabulary)")
    hidden, lin_w, lin_b = input.reshape(n, in_features), linear_weight, linear_bias
    device_type = hidden.device.type
    out_dtype = hidden.dtype
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        # as nn.Linear under autocast: the matmuls run in the autocast dtype
        # (casts outside the chunk loop, so autograd casts the grads back)
        # and the loss in float32, as autocast runs cross_entropy
        dtype, out_dtype = torch.get_autocast_dtype(device_type), torch.float32
        hidden, lin_w = hidden.to(dtype), lin_w.to(dtype)
        lin_b = lin_b.to(dtype) if lin_b is not None else None
    if lin_w.dtype != hidden.dtype or (lin_b is not None and lin_b.dtype != hidden.dtype):
        raise ValueError(f"{op}: input ({hidden.dtype}), linear_weight ({lin_w.dtype}) and linear_bias "
                         f"must have one dtype")
    hidden, lin_w, lin_b, widened = cpu_float32(hidden, lin_w, lin_b)
    if out_features:
        # token n's logits as D rows of C classes: row (n, j) = input[n] @ W[:, j, :].T
        lin_w = lin_w.movedim(0, -2).reshape(d * classes, in_features)
        lin_b = lin_b.movedim(0, -1).reshape(d * classes) if lin_b is not None else None
    if prob:
        # target rows [N*D, C], as the logits' rows
        rows_t = (target.movedim(1, -1) if out_features else target).reshape(n * d, classes)
        if rows_t.dtype != hidden.dtype:
            rows_t = rows_t.to(hidden.dtype)
    else:
        rows_t = target.reshape(n * d)

    if chunk_size is None:
        chunk_size = _options_chunk(options)
    chunk = chunk_rows(n, d * classes, in_features, hidden.element_size(), chunk_size, hidden.device.type,
                       widened)
    o = _Options(classes, d, ignore_index, float(label_smoothing), float(z_loss),
                 float(softcap) if softcap else 0.0, chunk, accum_dtype)
    loss_shape = (*input.shape[:-1], *out_features)
    if reduction == "none":
        loss = _LinearCrossEntropy.apply(hidden, lin_w, lin_b, rows_t, weight, None, o)
        return loss.view(loss_shape).to(out_dtype)
    acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    # d(reduced loss)/d(row loss): 1 for sum, 1/count for mean (on the device)
    row_grad = torch.ones(1, dtype=acc, device=hidden.device)
    if reduction == "mean":
        if prob:
            count = float(n * d)
        else:
            counted = rows_t != ignore_index
            if weight is not None:
                count = (weight.to(acc)[rows_t.clamp(0, classes - 1)] * counted).sum()
            else:
                count = counted.sum()
        row_grad = row_grad / count
    loss = _LinearCrossEntropy.apply(hidden, lin_w, lin_b, rows_t, weight, row_grad, o)
    # the reduction, written so that its gradient reaching each row is
    # grad_output * row_grad (what the forward folded in); a mean over no
    # counted row (no tokens, or all ignored) is 0 * inf = NaN, as in torch
    total = loss.sum() * row_grad[0]
    return total.to(out_dtype)


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


class _VocabParallelCrossEntropy(torch.autograd.Function):
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
    loss = _VocabParallelCrossEntropy.apply(logits.reshape(-1, v_local), target.reshape(-1), group, start, v,
                                            int(ignore_index), float(label_smoothing), float(z_loss))
    if reduction == "none":
        return loss.view(lead).to(logits.dtype)
    if reduction == "sum":
        return loss.sum().to(logits.dtype)
    return (loss.sum() / (target != ignore_index).sum()).to(logits.dtype)
