"""fastact ops with the signatures of ``torch.nn.functional``.

Every function here calls a registered ``torch.ops.fastact`` operator; the
arguments, defaults and semantics are torch's (see shared/API.md).
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from ._dtensor import is_dtensor

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
    # on a DTensor one stream per shard (fastact.distributed.dtensor_seed).
    if is_dtensor(input):
        from .distributed import dtensor_seed

        return dtensor_seed(input)
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


# --- fused dropout (dropout.py) -----------------------------------------------------------
from .dropout import bias_act_dropout, bias_dropout_add, dropout, dropout_add, dropout_mask  # noqa: E402

__all__ += ["dropout", "dropout_add", "bias_dropout_add", "bias_act_dropout", "dropout_mask"]


# --- losses (cross_entropy.py) ------------------------------------------------------------
from .cross_entropy import cross_entropy  # noqa: E402
from .mse import mse_loss  # noqa: E402
from .softmax import log_softmax, softmax  # noqa: E402

from .linear_ce import linear_cross_entropy, vocab_parallel_cross_entropy  # noqa: E402

__all__ += ["cross_entropy", "softmax", "log_softmax", "mse_loss", "linear_cross_entropy",
            "vocab_parallel_cross_entropy"]


# --- post-training heads (posttrain.py) -----------------------------------------------------
from .posttrain import linear_distill_loss, linear_logprobs  # noqa: E402

__all__ += ["linear_logprobs", "linear_distill_loss"]


# Errors: every ValueError / TypeError leaving these functions is also a
# RuntimeError (errors.py), as torch raises RuntimeError for most bad arguments.
from .errors import torch_errors as _torch_errors  # noqa: E402

for _name in __all__:
    globals()[_name] = _torch_errors(globals()[_name])
del _name
