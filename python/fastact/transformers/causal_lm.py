"""The causal-LM loss from the final hidden states and the LM-head weight,
with fastact's chunked ``linear_cross_entropy``: the ``(tokens, vocab)``
logits and their float32 upcast are never materialised.

Any transformers model with a causal-LM head qualifies, found by structure,
not by name (:func:`find_head`): its output embeddings are an ``nn.Linear``
(tied or not), its ``forward`` takes ``labels``, and it calls an inner
module (``self.model``, ``self.transformer``, a vision-language model's
``self.model``, ...) whose first output is the last hidden state. The logit
transform (Gemma2/3's final soft-cap, Cohere's ``logit_scale``, Granite's
``logits_scaling``, ...) is read from the config (:func:`logit_transform`).

:func:`prove` then checks the plan on the model itself before it is
enabled: on a probe batch built from the model's config, with the RNG state
fixed and restored, the logits of the plan (in float64, from the inner
module's hidden states) must equal the model's own logits, and the fused loss
its own loss, within bounds derived from the dtype. A class whose forward
does something the plan does not know (a subclass that rescales its logits,
a custom loss) fails the proof and keeps its own forward.

``fused_lm_class(cls)`` is a subclass of the model's class with the same name
and signature whose forward, in training mode with ``labels``, runs the inner
module, then :func:`causal_lm_loss`, and returns ``logits=None``. Otherwise
(no labels, eval mode, ``logits_to_keep`` set, or an argument the inner
module does not take) it is the original forward, so ``generate()`` and
evaluation with logits are unchanged. Unknown keyword arguments pass through
to the inner module.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import math
import textwrap
from typing import Optional

import torch
from torch import Tensor, nn

from .. import functional as F
from .._dtensor import is_dtensor
from ..accuracy import TERM_EPS, cross_entropy_error, eps, sum_error
from .twin import twin_class

__all__ = ["causal_lm_loss", "fused_lm_class", "is_fused_lm", "find_head", "logit_transform", "prove",
           "LossPlan"]


def causal_lm_loss(hidden_states: Tensor, lm_head_weight: Tensor, labels: Optional[Tensor] = None, *,
                   lm_head_bias: Optional[Tensor] = None, shift_labels: Optional[Tensor] = None,
                   num_items_in_batch=None, ignore_index: int = -100, softcap: Optional[float] = None,
                   logit_scale: float = 1.0, z_loss: float = 0.0, chunk_size: Optional[int] = None,
                   accum_dtype: Optional[torch.dtype] = None) -> Tensor:
    """transformers' ``ForCausalLMLoss`` of ``lm_head(hidden_states)``
    (optionally multiplied by ``logit_scale``, then soft-capped,
    ``softcap * tanh(logits / softcap)``) without the logits.

    As transformers: token t predicts label t+1 (``labels`` padded with
    ``ignore_index`` and shifted, or ``shift_labels`` as given); with
    ``num_items_in_batch`` (the Trainer's count of target tokens over the
    gradient-accumulation steps) the summed loss is divided by it, else the
    mean over the counted tokens is returned. The loss is float32 for
    half-precision hidden states, as transformers upcasts the logits before
    its loss; the matmuls run in the hidden states' dtype. ``logit_scale``
    multiplies the hidden states (and bias), which scales the logits exactly
    up to one rounding of each hidden value."""
    if shift_labels is None:
        shift_labels = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
    if logit_scale != 1.0:
        hidden = hidden * logit_scale
        lm_head_bias = None if lm_head_bias is None else lm_head_bias * logit_scale
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


# --- structure: the head, the inner module, the logit transform --------------------------------

@dataclasses.dataclass
class LossPlan:
    """How the fused forward computes the loss of one model."""
    inner: str                      # attribute name of the module that returns the last hidden state
    head: str                       # attribute name of the LM head (an nn.Linear)
    softcap: Optional[float] = None
    logit_scale: float = 1.0
    z_loss: float = 0.0
    chunk_size: Optional[int] = None
    accum_dtype: Optional[torch.dtype] = None
    output_class: Optional[type] = None   # the model's own output dataclass (read by the proof)


def _signature(fn) -> inspect.Signature:
    return inspect.signature(inspect.unwrap(fn))


def _self_calls(cls) -> list:
    """Names X of the ``self.X(...)`` calls in ``cls.forward``, in source order."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(cls.forward))))
    except (OSError, TypeError, SyntaxError):
        return []
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and isinstance(node.func.value, ast.Name) and node.func.value.id == "self"]
    calls.sort(key=lambda node: (node.lineno, node.col_offset))
    return [node.func.attr for node in calls]


def _child_name(model: nn.Module, module: nn.Module) -> Optional[str]:
    return next((name for name, child in model.named_children() if child is module), None)


def find_head(model: nn.Module):
    """(inner attribute, head attribute) of a causal-LM model, or a string
    saying why it does not qualify."""
    forward = getattr(type(model), "forward", None)
    if forward is None or "labels" not in _signature(forward).parameters:
        return f"{type(model).__name__}.forward takes no labels"
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if not isinstance(head, nn.Linear):
        return f"its output embeddings are {type(head).__name__}, not an nn.Linear"
    head_name = _child_name(model, head)
    if head_name is None:
        return "its LM head is not a direct child module"
    children = dict(model.named_children())
    # the first child module that forward calls, other than the head (the
    # decoder of a causal LM, the multimodal model of a VLM)
    inner = next((name for name in _self_calls(type(model))
                  if name != head_name and isinstance(children.get(name), nn.Module)), None)
    if inner is None:
        base = getattr(model, "base_model", None)
        inner = _child_name(model, base) if isinstance(base, nn.Module) and base is not model else None
    if inner is None:
        return "no inner module that returns the hidden states"
    return inner, head_name


def _configs(config):
    """The config, then its text config (vision-language models)."""
    out = [config]
    get_text = getattr(config, "get_text_config", None)
    text = get_text() if callable(get_text) else getattr(config, "text_config", None)
    if text is not None and text is not config:
        out.append(text)
    return out


def _setting(config, *names):
    for c in _configs(config):
        for name in names:
            value = getattr(c, name, None)
            if value is not None:
                return value
    return None


def logit_transform(model: nn.Module) -> dict:
    """The map from the head's output to the logits, read from the config:
    ``logit_scale`` (Cohere multiplies by it), ``logits_scaling`` (Granite
    divides by it), ``output_multiplier`` (a scale before the cap), then the
    final soft-cap ``final_logit_softcapping`` / ``logits_soft_cap``
    (Gemma2/3, ...). The proof checks the result on the model."""
    config = getattr(model, "config", None)
    scale = 1.0
    value = getattr(model, "logit_scale", None)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        value = _setting(config, "logit_scale")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        scale *= float(value)
    value = _setting(config, "logits_scaling")
    if isinstance(value, (int, float)) and value:
        scale /= float(value)
    value = _setting(config, "output_multiplier")
    if isinstance(value, (int, float)) and value:
        scale *= float(value)
    cap = _setting(config, "final_logit_softcapping", "logits_soft_cap")
    cap = float(cap) if isinstance(cap, (int, float)) and cap else None
    return {"logit_scale": scale, "softcap": cap}


# --- the fused forward ----------------------------------------------------------------------

def _inner_call(self, arguments: dict, extra: dict):
    """The inner module's outputs for the outer forward's arguments, or None
    when an argument given does not go to it (the original forward runs)."""
    plan: LossPlan = self.fastact_loss_plan
    inner = getattr(self, plan.inner)
    params = _signature(type(inner).forward).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    call = {}
    for name, value in arguments.items():
        if name in params or takes_any:
            call[name] = value
        elif value is not None and value is not False:
            return None
    return inner(**call, **extra)


def _split_arguments(signature, args, kwargs):
    bound = signature.bind(None, *args, **kwargs)
    arguments = dict(bound.arguments)
    arguments.pop(next(iter(signature.parameters)))  # self
    varkw = next((p.name for p in signature.parameters.values() if p.kind == p.VAR_KEYWORD), None)
    extra = dict(arguments.pop(varkw, {})) if varkw else {}
    return arguments, extra


def _fused_loss(self, args, kwargs, signature):
    """(loss, inner outputs) of the fused path, or None where the original
    forward must run."""
    arguments, extra = _split_arguments(signature, args, kwargs)
    labels = arguments.pop("labels", None)
    keep = arguments.pop("logits_to_keep", 0)
    if not (self.training and labels is not None and isinstance(keep, int) and keep == 0):
        return None
    # transformers' can_return_tuple: return_dict from the call, else the config
    return_dict = extra.pop("return_dict", arguments.pop("return_dict", None))
    if return_dict is None:
        return_dict = getattr(self.config, "return_dict", True)
    shift_labels = extra.pop("shift_labels", None)
    num_items_in_batch = extra.pop("num_items_in_batch", None)
    ignore_index = extra.pop("ignore_index", -100)
    outputs = _inner_call(self, arguments, extra)
    if outputs is None:
        return None
    hidden_states = outputs[0]
    plan: LossPlan = self.fastact_loss_plan
    head = getattr(self, plan.head)
    loss = causal_lm_loss(hidden_states, head.weight, labels, lm_head_bias=head.bias, shift_labels=shift_labels,
                          num_items_in_batch=num_items_in_batch, ignore_index=ignore_index, softcap=plan.softcap,
                          logit_scale=plan.logit_scale, z_loss=plan.z_loss, chunk_size=plan.chunk_size,
                          accum_dtype=plan.accum_dtype)
    return loss, outputs, return_dict


def _output(plan: LossPlan, loss, outputs):
    """The model's own output class with ``loss``, ``logits=None`` and the
    inner outputs' other fields of the same names."""
    cls = plan.output_class
    if cls is None:
        from transformers.modeling_outputs import CausalLMOutputWithPast as cls
    values = {}
    for field in dataclasses.fields(cls):
        if field.name == "loss":
            values["loss"] = loss
        elif field.name != "logits":
            value = getattr(outputs, field.name, None)
            if value is not None:
                values[field.name] = value
    return cls(**values)


def _fused_forward(base):
    original = base.forward
    signature = _signature(original)

    @functools.wraps(original)  # same signature for the Trainer (column pruning, loss kwargs)
    def forward(self, *args, **kwargs):
        fused = _fused_loss(self, args, kwargs, signature) if hasattr(self, "fastact_loss_plan") else None
        if fused is None:
            return original(self, *args, **kwargs)
        loss, outputs, return_dict = fused
        result = _output(self.fastact_loss_plan, loss, outputs)
        return result if return_dict else result.to_tuple()

    return forward


_FORWARDS: dict = {}  # class -> its fused forward (made once: the twin is cached by it)


def fused_lm_class(cls):
    """A subclass of the causal-LM class ``cls``, same name, fused loss forward."""
    if cls not in _FORWARDS:
        _FORWARDS[cls] = _fused_forward(cls)
    return twin_class(cls, {"forward": _FORWARDS[cls]},
                      f"{cls.__name__} whose training loss runs fastact's linear_cross_entropy "
                      f"(logits=None when labels are given in training mode).")


def is_fused_lm(model) -> bool:
    return getattr(type(model), "fastact_base_class", None) is not None and hasattr(model, "fastact_loss_plan")


# --- the proof ------------------------------------------------------------------------------

PROBE_BATCH, PROBE_LENGTH, PROBE_SEED = 2, 12, 1234


def _special_ids(config) -> set:
    """Token ids the config names (image/video/audio placeholders, BOS,
    pad, ...): the probe avoids them, so a vision-language model sees text."""
    ids = set()
    for c in _configs(config):
        for name, value in vars(c).items():
            if ("token" in name and ("id" in name or "index" in name)):
                for v in (value if isinstance(value, (list, tuple)) else [value]):
                    if isinstance(v, int) and not isinstance(v, bool):
                        ids.add(v)
    return ids


def probe_batch(model: nn.Module, vocab: int, device) -> dict:
    """A tiny batch from the model's config: token ids that no special token
    uses, labels with an ignored prompt, an all-ones attention mask."""
    g = torch.Generator().manual_seed(PROBE_SEED)
    special = _special_ids(getattr(model, "config", None))
    allowed = torch.tensor([i for i in range(min(vocab, 4096)) if i not in special] or [0])
    ids = allowed[torch.randint(0, allowed.numel(), (PROBE_BATCH, PROBE_LENGTH), generator=g)]
    labels = ids.clone()
    labels[0, :3] = -100
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    params = _signature(type(model).forward).parameters
    if "token_type_ids" in params and getattr(model.config, "model_type", "") in ("gemma3", "paligemma"):
        batch["token_type_ids"] = torch.zeros_like(ids)  # required by those in training (text tokens)
    return {k: v.to(device) for k, v in batch.items()}


def _logits_bound(hidden: Tensor, weight: Tensor, bias, z_head64: Tensor, z64: Tensor, dtype, scale: float,
                  reduced_precision: bool) -> Tensor:
    """Bound on |logits computed in ``dtype`` - exact|: the head's matmul
    (accumulated in float32 for half types, in the dtype itself when the
    device may reduce in it), its rounding to ``dtype``, and a few roundings
    of each transform step (scale, soft-cap: Lipschitz 1)."""
    acc = dtype if (dtype not in (torch.float16, torch.bfloat16) or reduced_precision) else torch.float32
    magnitude = hidden.double().abs() @ weight.double().abs().t()
    if bias is not None:
        magnitude = magnitude + bias.double().abs()
    head_err = sum_error(acc, hidden.shape[-1], magnitude) + eps(dtype) * z_head64.abs()
    return abs(scale) * head_err + TERM_EPS * eps(dtype) * (abs(scale) * z_head64.abs() + z64.abs())


def _apply_transform(z: Tensor, scale: float, softcap: Optional[float]) -> Tensor:
    z = z * scale
    return softcap * torch.tanh(z / softcap) if softcap else z


def prove(model: nn.Module, plan: LossPlan) -> Optional[str]:
    """None when the fused loss is proven on ``model`` (see the module
    docstring), else the reason it is not. Runs two forwards and one inner
    forward of a tiny batch without gradients; the model's training mode and
    the RNG states are restored."""
    head = getattr(model, plan.head)
    weight = head.weight
    if is_dtensor(weight):
        # (FSDP2 / tensor parallel: the head is not gathered outside its own
        # forward; the vocabulary-parallel loss is not proven here yet)
        return "the LM head's weight is a DTensor (sharded head): left to the model's own loss"
    dtype, device = weight.dtype, weight.device
    batch = probe_batch(model, head.out_features, device)
    base_forward = getattr(type(model), "fastact_base_class", type(model)).forward
    signature = _signature(base_forward)
    was_training = model.training
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            model.train()
            torch.manual_seed(PROBE_SEED)
            ref = base_forward(model, **batch, return_dict=True)
            torch.manual_seed(PROBE_SEED)
            arguments, extra = _split_arguments(signature, (), {k: v for k, v in batch.items() if k != "labels"})
            arguments.pop("logits_to_keep", None)
            arguments.pop("return_dict", None)
            saved = getattr(model, "fastact_loss_plan", None)
            model.fastact_loss_plan = plan
            try:
                outputs = _inner_call(model, arguments, extra)
                if outputs is None:
                    return "the probe batch has an argument the inner module does not take"
                torch.manual_seed(PROBE_SEED)
                fused = _fused_loss(model, (), {**batch, "return_dict": True}, signature)
            finally:
                if saved is None:
                    del model.fastact_loss_plan
                else:
                    model.fastact_loss_plan = saved
    except Exception as e:  # a model the plan cannot drive keeps its own forward
        return f"the probe forward failed: {type(e).__name__}: {e}"
    finally:
        model.train(was_training)
    if fused is None:
        return "the fused path did not run on the probe batch"
    loss = fused[0]
    if getattr(ref, "logits", None) is None or getattr(ref, "loss", None) is None:
        return "the model's own forward returned no logits or no loss"
    plan.output_class = type(ref)
    hidden = outputs[0].reshape(-1, outputs[0].shape[-1])
    z_head64 = hidden.double() @ weight.double().t()
    if head.bias is not None:
        z_head64 = z_head64 + head.bias.double()
    z64 = _apply_transform(z_head64, plan.logit_scale, plan.softcap)
    theirs = ref.logits.reshape(-1, ref.logits.shape[-1]).double()
    if theirs.shape != z64.shape:
        return f"the model's logits have shape {tuple(ref.logits.shape)}, the plan's {tuple(z64.shape)}"
    reduced = device.type == "cuda"
    z_bound = _logits_bound(hidden, weight, head.bias, z_head64, z64, dtype, plan.logit_scale, reduced)
    err = (theirs - z64).abs()
    if not bool((err <= z_bound).all()):
        ratio = (err / z_bound.clamp_min(1e-300)).max().item()
        return (f"the model's logits are not the plan's (logit scale {plan.logit_scale:g}, soft-cap "
                f"{plan.softcap}): max error {err.max().item():.3g}, {ratio:.3g}x the {dtype} bound")
    # The losses: each computation's logits err by at most z_bound (ours runs
    # the same matmul, plus one rounding of the scaled hidden states).
    target = torch.nn.functional.pad(batch["labels"], (0, 1), value=-100)[..., 1:].reshape(-1)
    ours_err = z_bound + (eps(dtype) * abs(plan.logit_scale) * (hidden.double().abs() @ weight.double().abs().t())
                          if plan.logit_scale != 1.0 else 0.0)
    bound_ref, _ = cross_entropy_error(z64, target.to(z64.device), torch.float32, logit_err=z_bound)
    bound_ours, _ = cross_entropy_error(z64, target.to(z64.device), torch.float32, logit_err=ours_err)
    diff = abs(loss.double().item() - ref.loss.double().item())
    bound = (bound_ref + bound_ours).item()
    if not (math.isfinite(diff) and diff <= bound):
        return (f"the fused loss {loss.item():.6g} is not the model's {ref.loss.item():.6g} "
                f"(difference {diff:.3g} > bound {bound:.3g})")
    return None
