"""The causal-LM loss from the final hidden states and the LM-head weight,
with fastact's chunked ``linear_cross_entropy``: the ``(tokens, vocab)``
logits and their float32 upcast are never materialised.

``fused_lm_class(cls)`` is a subclass of a ``...ForCausalLM`` class with the
same name and signature whose forward, in training mode with ``labels``,
runs the base model, then :func:`causal_lm_loss`, and
returns ``logits=None`` (``shift_labels``, when given with ``labels``, is used
as transformers does); otherwise (no labels, eval mode, ``logits_to_keep``
set) it is the original forward, so ``generate()`` and evaluation with
logits are unchanged.
"""
from __future__ import annotations

import functools
import inspect
from typing import Optional

import torch
from torch import Tensor

from .. import functional as F

__all__ = ["causal_lm_loss", "fused_lm_class", "is_fused_lm"]


def causal_lm_loss(hidden_states: Tensor, lm_head_weight: Tensor, labels: Optional[Tensor] = None, *,
                   lm_head_bias: Optional[Tensor] = None, shift_labels: Optional[Tensor] = None,
                   num_items_in_batch=None, ignore_index: int = -100, softcap: Optional[float] = None,
                   z_loss: float = 0.0, chunk_size: Optional[int] = None,
                   accum_dtype: Optional[torch.dtype] = None) -> Tensor:
    """transformers' ``ForCausalLMLoss`` of ``lm_head(hidden_states)``
    (optionally soft-capped, ``softcap * tanh(logits / softcap)`` as Gemma2's
    final-logit soft-capping) without the logits.

    As transformers: token t predicts label t+1 (``labels`` padded with
    ``ignore_index`` and shifted, or ``shift_labels`` as given); with
    ``num_items_in_batch`` (the Trainer's count of target tokens over the
    gradient-accumulation steps) the summed loss is divided by it, else the
    mean over the counted tokens is returned. The loss is float32 for
    half-precision hidden states, as transformers upcasts the logits before
    its loss; the matmuls run in the hidden states' dtype."""
    if shift_labels is None:
        shift_labels = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
    target = shift_labels.reshape(-1).to(hidden.device)
    reduction = "mean" if num_items_in_batch is None else "sum"
    kwargs = dict(linear_bias=lm_head_bias, reduction=reduction, ignore_index=ignore_index, z_loss=z_loss,
                  softcap=softcap, chunk_size=chunk_size, accum_dtype=accum_dtype)
    device_type = hidden.device.type
    if hidden.dtype in (torch.float16, torch.bfloat16) and not torch.is_autocast_enabled(device_type):
        # linear_cross_entropy under autocast to the inputs' own dtype: the
        # matmuls stay in it (the casts are no-ops) and the loss comes back in
        # float32, unrounded -- what transformers' float32 upcast gives.
        with torch.autocast(device_type, dtype=hidden.dtype):
            loss = F.linear_cross_entropy(hidden, lm_head_weight, target, **kwargs)
    else:
        loss = F.linear_cross_entropy(hidden, lm_head_weight, target, **kwargs)
    if num_items_in_batch is not None:
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss


def _wrapped_signature(fn) -> inspect.Signature:
    return inspect.signature(inspect.unwrap(fn))


def _fused_forward(base):
    original = base.forward
    signature = _wrapped_signature(original)
    varkw = next((p.name for p in signature.parameters.values() if p.kind == p.VAR_KEYWORD), None)

    @functools.wraps(original)  # same signature for the Trainer (column pruning, loss kwargs)
    def forward(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        arguments = dict(bound.arguments)
        extra = dict(arguments.pop(varkw, {})) if varkw else {}
        labels = arguments.get("labels")
        shift_labels = extra.get("shift_labels")
        keep = arguments.get("logits_to_keep", 0)
        if not (self.training and labels is not None and isinstance(keep, int) and keep == 0):
            return original(self, *args, **kwargs)
        arguments.pop("self")
        arguments.pop("labels", None)
        arguments.pop("logits_to_keep", None)
        # transformers' can_return_tuple: return_dict from the call, else the config
        return_dict = extra.pop("return_dict", None)
        if return_dict is None:
            return_dict = getattr(self.config, "return_dict", True)
        extra.pop("shift_labels", None)
        num_items_in_batch = extra.pop("num_items_in_batch", None)
        ignore_index = extra.pop("ignore_index", -100)
        outputs = self.model(**arguments, **extra)
        hidden_states = outputs[0]
        options = self.fastact_loss_options
        softcap = getattr(self.config, options["softcap_attr"], None) if options["softcap_attr"] else None
        loss = causal_lm_loss(hidden_states, self.lm_head.weight, labels, lm_head_bias=self.lm_head.bias,
                              shift_labels=shift_labels, num_items_in_batch=num_items_in_batch,
                              ignore_index=ignore_index, softcap=softcap, z_loss=options["z_loss"],
                              chunk_size=options["chunk_size"], accum_dtype=options["accum_dtype"])
        from transformers.modeling_outputs import CausalLMOutputWithPast

        result = CausalLMOutputWithPast(loss=loss, logits=None,
                                        past_key_values=getattr(outputs, "past_key_values", None),
                                        hidden_states=getattr(outputs, "hidden_states", None),
                                        attentions=getattr(outputs, "attentions", None))
        return result if return_dict else result.to_tuple()

    return forward


_FUSED: dict = {}


def fused_lm_class(cls):
    """A subclass of the causal-LM class ``cls``, same name, fused loss forward."""
    if cls not in _FUSED:
        _FUSED[cls] = type(cls.__name__, (cls,), {
            "forward": _fused_forward(cls), "__module__": cls.__module__, "__qualname__": cls.__qualname__,
            "fastact_base_class": cls,
            "__doc__": f"{cls.__name__} whose training loss runs fastact's linear_cross_entropy "
                       f"(logits=None when labels are given in training mode)."})
    return _FUSED[cls]


def is_fused_lm(model) -> bool:
    return getattr(type(model), "fastact_base_class", None) is not None and hasattr(model, "fastact_loss_options")
