"""One call puts a Hugging Face ``transformers`` causal LM on fastact's kernels.

    import fastact.transformers
    model = AutoModelForCausalLM.from_pretrained(...)
    fastact.transformers.apply(model)     # in place; returns what it changed

What ``apply`` changes (each part has a keyword switch):

- ``glu``: every feed-forward block ``down(act(gate(x)) * up(x))`` (or Phi3's
  packed ``gate_up_proj``) runs act-times-up as one fused ``swiglu`` /
  ``geglu`` / ``reglu`` kernel (the packed kernel where the projection is
  packed); detected structurally, in any model.
- ``loss``: for the supported families, the training forward with ``labels``
  computes the causal-LM loss with ``linear_cross_entropy`` from the final
  hidden states and the LM-head weight (shift, ``ignore_index=-100``, the
  Trainer's ``num_items_in_batch``, Gemma2's final-logit soft-cap, tied
  embeddings) and never materialises the logits: it returns ``logits=None``
  (as Liger-Kernel does). Without labels, or in eval mode, the forward is the
  original one (``generate()`` and evaluation metrics are unchanged).
  ``z_loss``, ``chunk_size`` and ``accum_dtype`` are passed to
  ``linear_cross_entropy``.
- ``dropout``: the model's ``nn.Dropout`` modules (Phi3's residual and
  embedding dropout, ...) become fastact's fused, mask-free dropout.
  Attention-probability dropout inside the attention function is not a module
  and is left to torch.
- ``activations``: other activation modules via :func:`fastact.nn.patch`'s
  twins (nn.GELU, nn.SiLU, ...).

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
from ..errors import FastactTypeError
from . import versions
from .causal_lm import causal_lm_loss, fused_lm_class, is_fused_lm
from .mlp import find_glu, gated_op, patch_mlp

__all__ = ["apply", "causal_lm_loss", "SUPPORTED", "versions", "find_glu", "gated_op"]

#: model_type -> (causal-LM class name, config attribute of a final-logit softcap or None)
SUPPORTED = {
    "llama": ("LlamaForCausalLM", None),
    "mistral": ("MistralForCausalLM", None),
    "qwen2": ("Qwen2ForCausalLM", None),
    "qwen3": ("Qwen3ForCausalLM", None),
    "gemma": ("GemmaForCausalLM", None),
    "gemma2": ("Gemma2ForCausalLM", "final_logit_softcapping"),
    "phi3": ("Phi3ForCausalLM", None),
}


def _supported_text() -> str:
    return (", ".join(f"{name} ({cls})" for name, (cls, _) in SUPPORTED.items()) +
            ", and any model whose MLP is down(act(gate(x)) * up(x)) with a SiLU/GELU/ReLU activation "
            "(the GLU part only)")


def _family(model: nn.Module) -> Optional[str]:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    # (a patched model's class keeps its name)
    if model_type in SUPPORTED and type(model).__name__ == SUPPORTED[model_type][0]:
        return model_type
    return None


def _swap_twins(model: nn.Module, which) -> dict:
    twins = {base: twin for base, twin in _fnn._twins().items() if which(base)}
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


def apply(model: nn.Module, *, glu: bool = True, loss: bool = True, dropout: bool = True,
          activations: bool = True, z_loss: float = 0.0, chunk_size: Optional[int] = None,
          accum_dtype: Optional[torch.dtype] = None, check_version: bool = True) -> dict:
    """Patch the instantiated transformers ``model`` in place for fastact's
    kernels; returns what changed::

        {"family": "llama", "glu": {"LlamaMLP": (2, "swiglu")},
         "loss": "LlamaForCausalLM", "dropout": {}, "activations": {"SiLU": 2}}

    ``glu``: fused GLU feed-forward blocks. ``loss``: the fused causal-LM loss
    (supported families' ``...ForCausalLM``; the training forward with
    labels returns ``logits=None``); ``z_loss`` adds ``z_loss * lse**2`` per
    token to it, ``chunk_size``/``accum_dtype`` go to ``linear_cross_entropy``.
    ``dropout``: ``nn.Dropout`` modules on the fused kernel. ``activations``:
    activation modules on their fastact twins. Raises for a model it does not
    know (nothing to patch, or ``loss=True`` on an unsupported causal LM
    without any GLU block) naming what it supports, and for a transformers
    release outside :data:`versions.SPEC` unless ``check_version=False``.
    Calling it again on a patched model changes nothing more."""
    if check_version:
        versions.check(_transformers.__version__)
    if not isinstance(model, nn.Module):
        raise FastactTypeError(f"fastact.transformers.apply: expected a torch.nn.Module (a transformers model), "
                               f"got {type(model).__name__}")
    family = _family(model)
    changed = {"family": family, "glu": {}, "loss": None, "dropout": {}, "activations": {}}
    if glu:
        changed["glu"] = patch_mlp(model)
    if loss and family is not None:
        if not is_fused_lm(model):
            model.__class__ = fused_lm_class(type(model))
        model.fastact_loss_options = {"softcap_attr": SUPPORTED[family][1], "z_loss": float(z_loss),
                                      "chunk_size": chunk_size, "accum_dtype": accum_dtype}
        changed["loss"] = type(model).__name__
    if dropout:
        changed["dropout"] = _swap_twins(model, _is_dropout)
    if activations:
        changed["activations"] = _swap_twins(model, _is_activation)
    already = any(_fnn_fused(m) for m in model.modules())
    if family is None and not changed["glu"] and not already:
        raise FastactTypeError(
            f"fastact.transformers.apply: does not know {type(model).__name__} "
            f"(model_type {getattr(getattr(model, 'config', None), 'model_type', None)!r}): no GLU block and "
            f"not a supported causal LM. Supported: {_supported_text()}.")
    previous = getattr(model, "fastact_patched", {})
    model.fastact_patched = {**previous, **{k: v for k, v in changed.items() if v}}
    return changed


def _fnn_fused(module) -> bool:
    return getattr(type(module), "fastact_base_class", None) is not None
