"""One call puts a Hugging Face ``transformers`` model on fastact's kernels.

    import fastact.transformers
    model = AutoModelForCausalLM.from_pretrained(...)
    report = fastact.transformers.apply(model)   # in place; says what it fused and why not

Any causal LM, MoE or vision-language model; nothing is chosen by a class
name. What ``apply`` changes (each part has a keyword switch), each part
proven on the model before it is enabled:

- ``glu``: every feed-forward block ``down(act(gate(x)) * up(x))`` (or a
  packed ``gate_up_proj``, or a per-expert MLP of a MoE) runs act-times-up as
  one fused ``swiglu`` / ``geglu`` / ``reglu`` kernel, detected from the
  block's source (:mod:`.mlp`); transformers 5's fused experts modules run
  their gate on the packed kernel (:mod:`.moe`: gpt-oss's interleaved clamped
  SwiGLU included), proven on a probe tensor.
- ``loss``: the training forward with ``labels`` computes the causal-LM loss
  with ``linear_cross_entropy`` from the final hidden states and the LM-head
  weight, with the model's logit transform (soft-cap, logit scale) and never
  materialises the logits: it returns ``logits=None``. The plan is found by
  structure and proven on a probe batch (:mod:`.causal_lm`); a model that
  fails the proof keeps its own loss and the report says why. Without
  labels, or in eval mode, the forward is the original one (``generate()``
  and evaluation metrics are unchanged). ``z_loss``, ``chunk_size`` and
  ``accum_dtype`` are passed to ``linear_cross_entropy``. Under
  torch.distributed: FSDP2 with the head in an enclosing unit (the layers
  and the root sharded; ``apply`` before or after ``fully_shard``) fuses the
  loss on the weight FSDP2 gathers; a tensor-parallel head (``ColwiseParallel``,
  weight sharded on the vocabulary) runs the vocabulary-parallel loss; a
  head that is an FSDP2 unit of its own is refused; all ranks decide alike
  (:mod:`.causal_lm`).
- ``dropout``: ``nn.Dropout`` modules become fastact's fused, mask-free
  dropout. Attention-probability dropout inside the attention function is not
  a module and is left to torch.
- ``activations``: transformers' activation modules (``GELUActivation``,
  ``NewGELUActivation``, ``QuickGELUActivation``, ...; :mod:`.activations`)
  and torch's (``nn.GELU``, ``nn.SiLU``, ...) on their fastact twins.

The core ``fastact`` never imports transformers; this module needs it
(``pip install 'fastact[transformers]'``).
"""
from __future__ import annotations

try:
    import transformers as _transformers
except ImportError as e:  # pragma: no cover - exercised without the extra
    raise ImportError("fastact.transformers needs the transformers package: "
                      "pip install 'fastact[transformers]'") from e

from collections import Counter
from typing import Optional

import torch
from torch import nn

from .. import nn as _fnn
from .._twins import nn_twins
from ..errors import FastactTypeError
from . import versions
from .activations import patch_activations
from .causal_lm import LossPlan, causal_lm_loss, find_head, fused_lm_class, logit_transform, prove
from .mlp import find_glu, gated_op, patch_mlp
from .moe import patch_experts
from .twin import is_twin

__all__ = ["apply", "causal_lm_loss", "versions", "find_glu", "gated_op"]


def _swap_twins(model: nn.Module, which) -> dict:
    twins = {base: twin for base, twin in nn_twins(_fnn).items() if which(base)}
    counts: Counter = Counter()
    for module in model.modules():
        twin = twins.get(type(module))
        if twin is not None:
            module.__class__ = twin
            counts[twin.__name__] += 1
    return dict(counts)


def _is_dropout(cls) -> bool:
    return issubclass(cls, nn.modules.dropout._DropoutNd)


def _is_activation(cls) -> bool:
    return not _is_dropout(cls) and not issubclass(cls, nn.modules.loss._Loss)


def _patch_loss(model: nn.Module, options: dict):
    """(fused class name, None) or (None, why the loss stays the model's)."""
    found = find_head(model)
    if isinstance(found, str):
        return None, found
    inner, head = found
    plan = LossPlan(inner=inner, head=head, **logit_transform(model))
    reason = prove(model, plan)  # with z_loss 0: the model's own loss
    if reason is not None:
        return None, reason
    for name, value in options.items():
        setattr(plan, name, value)
    model.__class__ = fused_lm_class(type(model))  # (the class itself when already fused)
    model.fastact_loss_plan = plan
    return type(model).__name__, None


def apply(model: nn.Module, *, glu: bool = True, loss: bool = True, dropout: bool = True,
          activations: bool = True, z_loss: float = 0.0, chunk_size: Optional[int] = None,
          accum_dtype: Optional[torch.dtype] = None, check_version: bool = True) -> dict:
    """Patch the instantiated transformers ``model`` in place for fastact's
    kernels; returns what changed and, for what it left alone, why::

        {"family": "llama", "glu": {"LlamaMLP": (2, "swiglu")}, "experts": {},
         "loss": "LlamaForCausalLM", "dropout": {}, "activations": {"SiLUActivation": 2},
         "skipped": {}}

    ``glu``: fused GLU feed-forward blocks and MoE expert gates. ``loss``: the
    fused causal-LM loss, proven on the model first (the training forward
    with labels returns ``logits=None``); ``z_loss`` adds ``z_loss * lse**2``
    per token to it, ``chunk_size``/``accum_dtype`` go to
    ``linear_cross_entropy``. ``dropout``: ``nn.Dropout`` modules on the fused
    kernel. ``activations``: activation modules on their fastact twins.
    ``skipped`` maps each part or class left alone to the reason. Raises for a
    model with nothing to patch, and for a transformers release older than
    :data:`versions.MIN_VERSION` unless ``check_version=False``; a release
    newer than the newest tested one gets one warning. Calling it again on a
    patched model changes nothing more (the loss options are updated; the
    loss is proven again, e.g. on a model sharded since).

    Under torch.distributed call it on every rank (the proof of a sharded
    model runs its collectives; all ranks take the same decision): before or
    after FSDP2's ``fully_shard`` of the layers and the root, after
    ``parallelize_module`` for a tensor-parallel head (see
    :mod:`fastact.transformers.causal_lm`)."""
    if check_version:
        versions.check(_transformers.__version__)
    if not isinstance(model, nn.Module):
        raise FastactTypeError(f"fastact.transformers.apply: expected a torch.nn.Module (a transformers model), "
                               f"got {type(model).__name__}")
    config = getattr(model, "config", None)
    changed = {"family": getattr(config, "model_type", None), "glu": {}, "experts": {}, "loss": None,
               "dropout": {}, "activations": {}, "skipped": {}}
    if glu:
        changed["glu"] = patch_mlp(model)
        changed["experts"], skipped = patch_experts(model)
        changed["skipped"].update(skipped)
    if activations:
        changed["activations"], skipped = patch_activations(model)
        changed["skipped"].update(skipped)
        changed["activations"].update(_swap_twins(model, _is_activation))
    if dropout:
        changed["dropout"] = _swap_twins(model, _is_dropout)
    if loss:
        options = {"z_loss": float(z_loss), "chunk_size": chunk_size, "accum_dtype": accum_dtype}
        changed["loss"], reason = _patch_loss(model, options)
        if reason is not None:
            changed["skipped"]["loss"] = reason
    already = any(is_twin(m) for m in model.modules())
    if not already and not any(changed[k] for k in ("glu", "experts", "loss", "dropout", "activations")):
        raise FastactTypeError(
            f"fastact.transformers.apply: nothing to patch in {type(model).__name__} "
            f"(model_type {changed['family']!r}): no GLU block, experts gate, activation or dropout module "
            f"fastact computes, and no causal-LM loss it can prove ({changed['skipped'].get('loss', 'loss=False')}).")
    previous = getattr(model, "fastact_patched", {})
    model.fastact_patched = {**previous, **{k: v for k, v in changed.items() if v}}
    return changed
