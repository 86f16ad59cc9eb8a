"""fastact ops with the signatures of ``torch.nn.functional``: the face of
the package.

Every function here calls a registered ``torch.ops.fastact`` operator (fake
kernels and autograd: fastact.ops) or a loss of fastact.losses; the
arguments, defaults and semantics are torch's (see shared/API.md). DTensor
inputs go to fastact.distributed (a dropout stream per shard, the
vocabulary-parallel losses), which calls the same ops and losses; the ops and
losses themselves know nothing of it.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from ._dtensor import is_dtensor
from .errors import torch_errors as _torch_errors
from .losses import cross_entropy as _cross_entropy
from .losses import linear_ce as _linear_ce
from .losses import posttrain as _posttrain
from .losses.mse import mse_loss
from .losses.softmax import log_softmax, softmax
from .losses.vocab_parallel import vocab_parallel_cross_entropy

if torch.distributed.is_available():
    from . import distributed as _distributed

__all__ = [
    "relu", "relu6", "leaky_relu", "prelu", "rrelu", "elu", "selu", "celu", "gelu", "silu",
    "mish", "sigmoid", "tanh", "logsigmoid", "hardswish", "hardsigmoid", "hardtanh",
    "softplus", "softshrink", "hardshrink", "tanhshrink", "softsign", "threshold",
    "swish", "quick_gelu", "squared_relu",
    "glu", "swiglu", "geglu", "reglu", "clamped_swiglu",
]

_ops = torch.ops.fastact


def _activation(name: str, input: Tensor, inplace: bool, *params) -> Tensor:
    if not inplace:
        return getattr(_ops, name)(input, *params)
    if torch.is_grad_enabled() and input.requires_grad:
        # The derivative reads the input that the in-place op overwrites, so
        # autograd keeps a copy of it, as torch does for in-place activations
        # (and a leaf that requires grad raises, as in torch).
        return input.copy_(getattr(_ops, name)(input.clone(), *params))
    getattr(_ops, name + "_")(input, *params)
    return input


def relu(input: Tensor, inplace: bool = False) -> Tensor:
    return _activation("relu", input, inplace)


def relu6(input: Tensor, inplace: bool = False) -> Tensor:
    return _activation("relu6", input, inplace)


def leaky_relu(input: Tensor, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
    return _activation("leaky_relu", input, inplace, float(negative_slope))


def prelu(input: Tensor, weight: Tensor) -> Tensor:
    return _ops.prelu(input, weight)


def _rrelu_seed(input: Tensor) -> Tensor:
    # [seed, offset] of the Philox stream of the slopes, drawn as dropout's
    # from the default generator of the input's device into a tensor on that
    # device (torch.manual_seed / torch.cuda.manual_seed make rrelu
    # reproducible; a captured CUDA graph draws fresh slopes on each replay);
    # on a DTensor one stream per shard (fastact.distributed.dropout.dtensor_seed).
    if is_dtensor(input):
        return _distributed.dropout.dtensor_seed(input)
    return _ops._philox_seed(input)


def rrelu(input: Tensor, lower: float = 1.0 / 8, upper: float = 1.0 / 3, training: bool = False,
          inplace: bool = False) -> Tensor:
    if not lower <= upper:  # torch checks this in eval mode too
        raise ValueError(f"fastact.rrelu: lower bound ({lower}) must be less than or equal to the upper "
                         f"bound ({upper})")
    if not training:
        return leaky_relu(input, (lower + upper) / 2, inplace)
    if not inplace:
        return _ops.rrelu_train(input, float(lower), float(upper), _rrelu_seed(input))
    source = input.clone() if torch.is_grad_enabled() and input.requires_grad else input
    return input.copy_(_ops.rrelu_train(source, float(lower), float(upper), _rrelu_seed(input)))


def elu(input: Tensor, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    return _activation("elu", input, inplace, float(alpha))


def selu(input: Tensor, inplace: bool = False) -> Tensor:
    return _activation("selu", input, inplace)


def celu(input: Tensor, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    return _activation("celu", input, inplace, float(alpha))


def gelu(input: Tensor, approximate: str = "none") -> Tensor:
    return _ops.gelu(input, approximate)


def silu(input: Tensor, inplace: bool = False) -> Tensor:
    return _activation("silu", input, inplace)


def mish(input: Tensor, inplace: bool = False) -> Tensor:
    return _activation("mish", input, inplace)


def sigmoid(input: Tensor) -> Tensor:
    return _ops.sigmoid(input)


def tanh(input: Tensor) -> Tensor:
    return _ops.tanh(input)


def logsigmoid(input: Tensor) -> Tensor:
    return _ops.logsigmoid(input)


def hardswish(input: Tensor, inplace: bool = False) -> Tensor:
    return _activation("hardswish", input, inplace)


def hardsigmoid(input: Tensor, inplace: bool = False) -> Tensor:
    return _activation("hardsigmoid", input, inplace)


def hardtanh(input: Tensor, min_val: float = -1.0, max_val: float = 1.0,
             inplace: bool = False) -> Tensor:
    return _activation("hardtanh", input, inplace, float(min_val), float(max_val))


def softplus(input: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    return _ops.softplus(input, float(beta), float(threshold))


def softshrink(input: Tensor, lambd: float = 0.5) -> Tensor:
    if input.is_floating_point() and lambd > torch.finfo(input.dtype).max:
        raise ValueError(f"fastact.softshrink: lambd must be in [0, {torch.finfo(input.dtype).max:g}] for "
                         f"{input.dtype}, got {lambd}")
    return _ops.softshrink(input, float(lambd))


def hardshrink(input: Tensor, lambd: float = 0.5) -> Tensor:
    return _ops.hardshrink(input, float(lambd))


def tanhshrink(input: Tensor) -> Tensor:
    return _ops.tanhshrink(input)


def softsign(input: Tensor) -> Tensor:
    return _ops.softsign(input)


def threshold(input: Tensor, threshold: float, value: float, inplace: bool = False) -> Tensor:
    return _activation("threshold", input, inplace, float(threshold), float(value))


def swish(input: Tensor, beta: Union[float, Tensor] = 1.0) -> Tensor:
    """``input * sigmoid(beta * input)``; a tensor ``beta`` (one value, or one per
    last-dim feature) gets its gradient."""
    if isinstance(beta, Tensor):
        if _host_scalar(beta, input):
            # a CPU scalar beta for a device input: passed by value, read on
            # the host (not a device sync), instead of a blocking
            # host-to-device copy of beta on every call (which CUDA graph
            # capture also rejects)
            return _ops.swish(input, beta.item())
        return _ops.swish_beta(input, beta)
    return _ops.swish(input, float(beta))


def _host_scalar(beta: Tensor, input: Tensor) -> bool:
    """Whether ``beta`` is a floating-point 0-dim CPU tensor that needs no
    gradient, for an input on another device (e.g. CUDA). Under
    torch.compile, or for a beta that requires grad, the tensor op runs."""
    return (beta.dim() == 0 and beta.device.type == "cpu" and input.device.type != "cpu"
            and beta.is_floating_point() and not (beta.requires_grad and torch.is_grad_enabled())
            and not is_dtensor(input) and not torch.compiler.is_compiling())


def quick_gelu(input: Tensor) -> Tensor:
    """``input * sigmoid(1.702 * input)``."""
    return _ops.quick_gelu(input)


def squared_relu(input: Tensor) -> Tensor:
    """``relu(input) ** 2``."""
    return _ops.squared_relu(input)


# --- gated linear units -------------------------------------------------------------


def glu(input: Tensor, dim: int = -1) -> Tensor:
    """Exactly ``torch.nn.functional.glu``: first half times sigmoid of the second."""
    return _ops.glu(input, dim)


def _gated(name: str, gate: Tensor, up: Optional[Tensor], dim: int, *params,
           interleaved: bool = False) -> Tensor:
    if up is None:
        return getattr(_ops, name + "_packed")(gate, dim, *params, interleaved)
    if interleaved:
        raise ValueError(f"fastact.{name}: interleaved=True describes a packed input; it takes up=None")
    return getattr(_ops, name)(gate, up, *params)


def swiglu(gate: Tensor, up: Optional[Tensor] = None, dim: int = -1) -> Tensor:
    """``silu(gate) * up``; with ``up=None``, ``gate`` holds both halves along
    ``dim`` (first half gate, second half up), as with LLaMA's stacked w1/w3."""
    return _gated("swiglu", gate, up, dim)


def geglu(gate: Tensor, up: Optional[Tensor] = None, dim: int = -1,
          approximate: str = "none") -> Tensor:
    """``gelu(gate, approximate) * up``; ``up=None`` as in :func:`swiglu`."""
    return _gated("geglu", gate, up, dim, approximate)


def reglu(gate: Tensor, up: Optional[Tensor] = None, dim: int = -1) -> Tensor:
    """``relu(gate) * up``; ``up=None`` as in :func:`swiglu`."""
    return _gated("reglu", gate, up, dim)


def clamped_swiglu(gate: Tensor, up: Optional[Tensor] = None, dim: int = -1, *, alpha: float = 1.702,
                   limit: float = 7.0, interleaved: bool = False) -> Tensor:
    """gpt-oss's gated unit: with ``g = gate.clamp(max=limit)`` and
    ``u = up.clamp(-limit, limit)``, ``g * sigmoid(alpha * g) * (u + 1)``.

    With ``up=None``, ``gate`` holds both parts along ``dim``: its two halves
    (first gate, then up), or with ``interleaved=True`` gate at the even and
    up at the odd positions (transformers' ``gate_up[..., ::2]`` and
    ``gate_up[..., 1::2]``), read in place either way. Gradients are those of
    the composite of the same ops with each clamp passing the gradient where
    its input lies within the bounds, ends included (at ``gate == limit`` and
    ``up == +-limit`` too; never at a NaN): torch 2.11's clamp. (torch 2.14
    and later pass it strictly inside the bounds only; fastact keeps the
    contract's rule on every torch release.)
    ``limit`` must be positive (``inf`` clamps nothing) and ``alpha`` finite;
    ``interleaved=True`` with an ``up`` tensor raises ``ValueError``."""
    return _gated("clamped_swiglu", gate, up, dim, float(alpha), float(limit), interleaved=interleaved)


# --- fused dropout (fake kernels and autograd: ops/dropout.py) -------------------------------

def _check_p(p: float, op: str) -> None:
    if p < 0.0 or p > 1.0:
        raise ValueError(f"fastact.{op}: dropout probability has to be between 0 and 1, but got {p}")


def _seed(input: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    if is_dtensor(input):
        # one stream per shard (fastact.distributed.dropout.dtensor_seed)
        return _distributed.dropout.dtensor_seed(input, generator)
    return _ops._philox_seed(input, generator)


def _aligned(input: Tensor, residual: Optional[Tensor] = None, bias: Optional[Tensor] = None,
             linear: bool = True):
    """DTensor operands placed so that the op runs on the input's own
    placement (its shard index chose the mask): the residual as the input,
    the bias sharded with the input's last dim; a non-linear op's Partial
    input reduced first. Plain tensors pass through."""
    if not is_dtensor(input):
        return input, residual, bias
    return _distributed.dropout.place_operands(input, residual, bias, linear)


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
        if is_dtensor(input):
            seed = _distributed.dropout.zero_seed(input)
        else:
            seed = torch.zeros(2, dtype=torch.int64, device=input.device)
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


__all__ += ["dropout", "dropout_add", "bias_dropout_add", "bias_act_dropout", "dropout_mask"]


# --- losses (fastact.losses; on DTensors fastact.distributed.losses) -----------------------

def cross_entropy(input: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                  ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0, *,
                  z_loss: float = 0.0, softcap: Optional[float] = None) -> Tensor:
    """``torch.nn.functional.cross_entropy`` (class-index or class-probability
    targets, weight, ignore_index, label smoothing, every reduction), plus
    ``z_loss * logsumexp(logits)**2`` per counted row (added to that row's loss,
    not scaled by the class weight, reduced like it) and ``softcap=c``, which
    first maps logits to ``c * tanh(logits / c)``. Loss math in float32; the
    loss comes back in the input's dtype, as in torch.

    A class-probability target that requires grad gets torch's gradient,
    ``-g * w_c * (1 - label_smoothing) * log_softmax(z)_c`` per row (g the row's
    upstream gradient); with ``softcap``, z are the capped logits; ``z_loss``
    adds nothing to it (logsumexp does not depend on the target).

    On DTensor logits sharded on the class dim, the vocabulary-parallel loss
    (the all-reduces of :func:`vocab_parallel_cross_entropy`), never
    gathering the logits."""
    impl = _distributed.losses.cross_entropy if is_dtensor(input) else _cross_entropy.cross_entropy
    return impl(input, target, weight, ignore_index, reduction, label_smoothing, z_loss=z_loss, softcap=softcap)


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
    break (it runs eagerly).

    A column-parallel LM head (``linear_weight`` a DTensor sharded on the
    vocabulary) runs the vocabulary-parallel loss chunk by chunk
    (:func:`fastact.distributed.losses.linear_cross_entropy`)."""
    dtensors = is_dtensor(linear_weight) or is_dtensor(input)
    impl = _distributed.losses.linear_cross_entropy if dtensors else _linear_ce.linear_cross_entropy
    return impl(input, linear_weight, target, linear_bias=linear_bias, weight=weight, reduction=reduction,
                ignore_index=ignore_index, label_smoothing=label_smoothing, options=options, z_loss=z_loss,
                softcap=softcap, chunk_size=chunk_size, accum_dtype=accum_dtype)


__all__ += ["cross_entropy", "softmax", "log_softmax", "mse_loss", "linear_cross_entropy",
            "vocab_parallel_cross_entropy"]


# --- post-training heads (fastact.losses.posttrain) ---------------------------------------------

def linear_logprobs(input: Tensor, linear_weight: Tensor, target: Tensor, *, linear_bias: Optional[Tensor] = None,
                    temperature: float = 1.0, return_entropy: bool = False, ignore_index: int = -100,
                    chunk_size: Optional[int] = None):
    """Per-token ``log_softmax(linear(input, linear_weight, linear_bias) /
    temperature).gather(-1, target)``, shaped like ``target`` (``input`` is
    ``(..., H)``, ``target`` ``(...)``, ``linear_weight`` ``(V, H)``), without
    the ``(tokens, V)`` logits: chunked over tokens like
    :func:`linear_cross_entropy` (``chunk_size`` tokens per chunk; default its
    rule). With ``return_entropy=True``, a tuple ``(logprobs, entropy)``, the
    entropy of the same tempered distribution per token, computed in the same
    pass. Tokens whose target is ``ignore_index`` give 0 for both and no
    gradient. Both outputs are differentiable w.r.t. input, weight and bias
    (one backward serves a loss that uses both; double backward is not
    supported).

    The outputs are float32 (float64 for float64 inputs) for every input
    dtype: bf16/fp16 logits are computed and reduced in float32 (see
    fastact.losses.posttrain). Under torch.compile this function is a graph break
    (it runs eagerly).

    A column-parallel head (``linear_weight`` a DTensor sharded on the
    vocabulary) runs vocabulary-parallel, as ``linear_cross_entropy``: per
    chunk of tokens the slices' row statistics (max, sum of exponentials,
    target logit, entropy terms) are all-reduced, the logits never gathered,
    and the weight's gradient stays sharded. Another DTensor head is
    gathered for the call. Input and target must be plain tensors."""
    dtensors = any(is_dtensor(t) for t in (input, linear_weight, linear_bias, target))
    impl = _distributed.losses.linear_logprobs if dtensors else _posttrain.linear_logprobs
    return impl(input, linear_weight, target, linear_bias=linear_bias, temperature=temperature,
                return_entropy=return_entropy, ignore_index=ignore_index, chunk_size=chunk_size)


def linear_distill_loss(student_input: Tensor, student_weight: Tensor, teacher_input: Tensor, teacher_weight: Tensor,
                        target: Optional[Tensor] = None, *, kind: str = "kl", beta: float = 0.5,
                        temperature: float = 1.0, ignore_index: int = -100, reduction: str = "batchmean",
                        chunk_size: Optional[int] = None, hard_label_weight: float = 0.0,
                        student_bias: Optional[Tensor] = None, teacher_bias: Optional[Tensor] = None) -> Tensor:
    """Divergence between the tempered softmaxes P (teacher:
    ``linear(teacher_input, teacher_weight, teacher_bias) / temperature``) and
    Q (student, likewise), per token, without either ``(tokens, V)`` logits
    beyond one chunk: ``kind='kl'`` KL(P||Q), ``'reverse_kl'`` KL(Q||P),
    ``'jsd'`` ``beta*KL(P||M) + (1-beta)*KL(Q||M)`` with ``M = beta*P +
    (1-beta)*Q`` (no ``T**2`` factor). Tokens whose ``target`` is
    ``ignore_index`` are left out (``target=None``: all count).
    ``reduction``: ``'batchmean'`` (summed divergence / counted tokens; NaN
    when none counts, with zero gradients, as a mean over nothing in torch),
    ``'sum'``, ``'none'`` (per token, 0 where ignored). Result:
    ``(1 - hard_label_weight) * divergence + hard_label_weight *
    cross_entropy(student_logits, target)`` (untempered, same reduction; needs
    a target). Student and teacher may differ in hidden size and dtype, not in
    vocabulary. The teacher gets no gradient. The loss is float32 (float64
    for a float64 student), computed in float32 for half types.

    DTensor heads are gathered for the call; inputs and target must be
    plain tensors. Under torch.compile this function is a graph break (it
    runs eagerly)."""
    operands = (student_input, student_weight, teacher_input, teacher_weight, target, student_bias, teacher_bias)
    impl = _distributed.losses.linear_distill_loss if any(map(is_dtensor, operands)) else \
        _posttrain.linear_distill_loss
    return impl(student_input, student_weight, teacher_input, teacher_weight, target, kind=kind, beta=beta,
                temperature=temperature, ignore_index=ignore_index, reduction=reduction, chunk_size=chunk_size,
                hard_label_weight=hard_label_weight, student_bias=student_bias, teacher_bias=teacher_bias)


__all__ += ["linear_logprobs", "linear_distill_loss"]


# Errors: every ValueError / TypeError leaving these functions is also a
# RuntimeError (errors.py), as torch raises RuntimeError for most bad arguments.
for _name in __all__:
    globals()[_name] = _torch_errors(globals()[_name])
del _name
