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

Under torch.distributed the loss runs where the head's weight is when the
forward reads it (:func:`head_layout`, found by the proof and checked in
every fused forward):

- FSDP2 with the head in an enclosing unit (``fully_shard`` on the decoder
  layers and the root, as accelerate's transformer-based wrap does), ``apply``
  before or after ``fully_shard``: the root's unit gathers the weight before
  the forward, so the fused loss sees a plain tensor and each rank's loss is
  that of its own rows; the gradient goes back through FSDP2's
  reduce-scatter. Applied after ``fully_shard``, the probe runs through the
  model's call (FSDP2's hooks gather, and the parameters are sharded again
  afterwards) on every rank.
- a tensor-parallel head (``ColwiseParallel`` on it: the weight a DTensor
  sharded on the vocabulary): the fused loss is ``linear_cross_entropy``'s
  vocabulary-parallel form (the logits never gathered, nor formed whole on
  any rank), proven against the model's own loss under ``loss_parallel()``.
  FSDP2 over TP (a 2-D mesh) alike.
- a head that is an FSDP2 unit of its own (``fully_shard`` on it): its
  weight is gathered only in its own forward, which the fused loss does not
  call: the proof refuses it.

Every rank of the model's meshes takes the same decision (:func:`agree`). A
forward that finds the weight otherwise than proven (the head sharded after
``apply``) runs the model's own loss and warns once: call ``apply`` again.
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import inspect
import math
import textwrap
import warnings
from typing import Optional

import torch
from torch import Tensor, nn

from .. import functional as F
from .._dtensor import is_dtensor
from ..accuracy import TERM_EPS, cross_entropy_error, eps, sum_error
from .twin import twin_class

__all__ = ["causal_lm_loss", "fused_lm_class", "is_fused_lm", "find_head", "logit_transform", "prove",
           "LossPlan", "head_layout", "is_fsdp_unit", "agree"]


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
    # how the head's weight is laid out where the fused loss reads it (head_layout): the proof's
    # finding; a forward that finds another runs the model's own loss
    head_layout: object = None
    warned: bool = False


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


# --- where the head's weight lives: FSDP2, tensor parallel ----------------------------------

_PROBING = object()  # LossPlan.head_layout while the proof runs: any layout, recorded by the proof


def head_layout(weight: Tensor):
    """None for a plain tensor; (mesh, placements, shape) for a DTensor."""
    if not is_dtensor(weight):
        return None
    return weight.device_mesh, tuple(weight.placements), tuple(weight.shape)


def _describe(layout) -> str:
    if layout is None:
        return "a plain tensor"
    mesh, placements, _ = layout
    return f"a DTensor placed {placements} over a mesh of shape {tuple(mesh.shape)}"


def _warn_layout(plan: LossPlan, weight: Tensor):
    if plan.warned:
        return
    plan.warned = True
    warnings.warn(f"fastact.transformers: the LM head's weight is {_describe(head_layout(weight))} in this "
                  f"forward, but the fused loss was proven with {_describe(plan.head_layout)}; forwards like this "
                  f"one compute the model's own loss. (The head was sharded after apply, by fully_shard on the "
                  f"head itself or parallelize_module: call fastact.transformers.apply(model) again after "
                  f"sharding, which proves the fused loss on the sharded model or says why not.)", stacklevel=4)


def is_fsdp_unit(module: nn.Module) -> bool:
    """Whether ``fully_shard`` (FSDP2) was applied to ``module`` itself."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def _full(t):
    return t.full_tensor() if is_dtensor(t) else t


def agree(model: nn.Module, reason: Optional[str]) -> Optional[str]:
    """The decision of every rank that holds a shard of ``model``: None (proven)
    only where the proof passed on all ranks of every device mesh its DTensor
    parameters live on (an all-reduce per mesh dimension), so that all of them
    run the same loss and the same collectives. A model without DTensor
    parameters decides alone."""
    meshes = []
    for p in model.parameters():
        if is_dtensor(p) and all(p.device_mesh != mesh for mesh in meshes):
            meshes.append(p.device_mesh)
    if not meshes:
        return reason
    import torch.distributed as dist

    ok = reason is None
    for mesh in meshes:
        flag = torch.tensor([int(ok)], device=mesh.device_type)
        for dim in range(mesh.ndim):
            dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=mesh.get_group(dim))
        ok = bool(flag.item())
    if reason is None and not ok:
        return "the proof failed on another rank of the device mesh (all ranks keep the model's own loss)"
    return reason


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
    plan: LossPlan = self.fastact_loss_plan
    head = getattr(self, plan.head)
    if plan.head_layout is not _PROBING and head_layout(head.weight) != plan.head_layout:
        _warn_layout(plan, head.weight)
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


def _is_fused_class(cls) -> bool:
    forward = getattr(cls, "forward", None)
    return any(forward is f for f in _FORWARDS.values())


def fused_lm_class(cls):
    """A subclass of the causal-LM class ``cls``, same name, fused loss forward
    (``cls`` itself when its forward already is)."""
    if _is_fused_class(cls):
        return cls
    if cls not in _FORWARDS:
        _FORWARDS[cls] = _fused_forward(cls)
    members = {"forward": _FORWARDS[cls]}
    index = getattr(cls, "_orig_cls_mro_index", None)
    if isinstance(index, int):
        # FSDP2's FSDP<Orig> classes rebuild the original class from this
        # index of the MRO in __new__ (deepcopy, container slicing): the twin
        # adds one class in front
        members["_orig_cls_mro_index"] = index + 1
    return twin_class(cls, members,
                      f"{cls.__name__} whose training loss runs fastact's linear_cross_entropy "
                      f"(logits=None when labels are given in training mode).")


def is_fused_lm(model) -> bool:
    return _is_fused_class(type(model)) and hasattr(model, "fastact_loss_plan")


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


def _head_products(hidden: Tensor, weight: Tensor, bias) -> tuple:
    """The head's float64 products on the probe batch: ``hidden @ W.T + b``,
    ``|hidden| @ |W|.T`` and ``|b|`` (or 0), as plain (tokens, vocab) tensors.
    A DTensor weight (a vocabulary-sharded head) multiplies its own shard
    (the probe's hidden states replicated over its mesh) and the probe-sized
    products are gathered; the weight never is."""
    h = _full(hidden)
    h = h.reshape(-1, h.shape[-1]).double()
    if is_dtensor(weight):
        from torch.distributed.tensor import DTensor, Replicate

        mesh = weight.device_mesh
        h = DTensor.from_local(h, mesh, [Replicate()] * mesh.ndim, run_check=False)
    w = weight.double()
    z, magnitude, bias_abs = h @ w.t(), h.abs() @ w.abs().t(), 0.0
    if bias is not None:
        z = z + bias.double()
        bias_abs = _full(bias.double().abs())
    return _full(z), _full(magnitude), bias_abs


def _logits_bound(magnitude: Tensor, k: int, z_head64: Tensor, z64: Tensor, dtype, scale: float,
                  reduced_precision: bool) -> Tensor:
    """Bound on |logits computed in ``dtype`` - exact|: the head's matmul
    (``k`` terms of absolute sum ``magnitude``, accumulated in float32 for
    half types, in the dtype itself when the device may reduce in it), its
    rounding to ``dtype``, and a few roundings of each transform step (scale,
    soft-cap: Lipschitz 1)."""
    acc = dtype if (dtype not in (torch.float16, torch.bfloat16) or reduced_precision) else torch.float32
    head_err = sum_error(acc, k, magnitude) + eps(dtype) * z_head64.abs()
    return abs(scale) * head_err + TERM_EPS * eps(dtype) * (abs(scale) * z_head64.abs() + z64.abs())


def _apply_transform(z: Tensor, scale: float, softcap: Optional[float]) -> Tensor:
    z = z * scale
    return softcap * torch.tanh(z / softcap) if softcap else z


def _loss_parallel(layout):
    """The context the model's own loss needs: torch's ``loss_parallel()``
    for a vocabulary-sharded head (its logits are a DTensor sharded on the
    vocabulary), else none."""
    if layout is None:
        return contextlib.nullcontext()
    from torch.distributed.tensor.parallel import loss_parallel

    return loss_parallel()


def prove(model: nn.Module, plan: LossPlan) -> Optional[str]:
    """None when the fused loss is proven on ``model`` (see the module
    docstring), else the reason it is not. Runs the fused forward and the
    model's own on a tiny batch without gradients, through the model's call
    (its hooks run: FSDP2 gathers the parameters as in training); the model's
    class, training mode and the RNG states are restored.

    Where the fused forward finds the head's weight decides the path, and is
    recorded in ``plan.head_layout``: a plain tensor (a plain model, or FSDP2
    with the head in an enclosing unit, which gathers it before the forward)
    runs ``linear_cross_entropy``; a DTensor sharded on the vocabulary (a
    tensor-parallel ``ColwiseParallel`` head) runs its vocabulary-parallel
    form, proven against the model's own loss under ``loss_parallel()``. A
    head that is an FSDP2 unit of its own is refused (its weight is gathered
    only in its own forward). Under torch.distributed every rank of the
    model's meshes decides alike (:func:`agree`)."""
    head = getattr(model, plan.head)
    if is_fsdp_unit(head):
        reason = ("the LM head is an FSDP2 unit of its own (fully_shard on it): its weight is gathered only in its "
                  "own forward, which the fused loss does not call; left to the model's own loss (shard the head "
                  "with an enclosing module, e.g. the root)")
    else:
        reason = _prove(model, plan)
    return agree(model, reason)


def _prove(model: nn.Module, plan: LossPlan) -> Optional[str]:
    head, inner = getattr(model, plan.head), getattr(model, plan.inner)
    device = head.weight.device
    batch = probe_batch(model, head.out_features, device)
    cls, saved = type(model), model.__dict__.get("fastact_loss_plan")
    found: dict = {}

    def capture(module, args, output):
        # inside the model's forward: the head's weight as the forward computes with it
        if found.pop("armed", False):
            hidden, weight = output[0], head.weight
            found.update(k=hidden.shape[-1], layout=head_layout(weight), dtype=weight.dtype,
                         device=weight.device, products=_head_products(hidden, weight, head.bias))

    was_training = model.training
    # (the CUDA generator too where the weights are offloaded to the CPU)
    devices = [device] if device.type == "cuda" else [torch.cuda.current_device()] if torch.cuda.is_initialized() \
        else []
    handle = inner.register_forward_hook(capture)
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            model.train()
            model.__class__ = fused_lm_class(cls)
            model.fastact_loss_plan = dataclasses.replace(plan, head_layout=_PROBING)
            found["armed"] = True
            torch.manual_seed(PROBE_SEED)
            fused = model(**batch, return_dict=True)
            del model.fastact_loss_plan  # the fused class without a plan runs the original forward
            torch.manual_seed(PROBE_SEED)
            with _loss_parallel(found.get("layout")):
                ref = model(**batch, return_dict=True)
    except Exception as e:  # a model the plan cannot drive keeps its own forward
        return f"the probe forward failed: {type(e).__name__}: {e}"
    finally:
        handle.remove()
        model.__class__ = cls
        model.__dict__.pop("fastact_loss_plan", None)
        if saved is not None:
            model.fastact_loss_plan = saved
        model.train(was_training)
        for module in model.modules():
            if is_fsdp_unit(module):
                # as before the probe: sharded parameters (an optimizer made
                # after apply must see those, not the gathered ones)
                module.reshard()
    if "products" not in found or getattr(fused, "logits", None) is not None:
        return "the fused path did not run on the probe batch"
    if getattr(ref, "logits", None) is None or getattr(ref, "loss", None) is None:
        return "the model's own forward returned no logits or no loss"
    loss, ref_loss = _full(fused.loss), _full(ref.loss)
    plan.output_class = type(ref)
    z_head64, magnitude_hw, bias_abs = found["products"]
    z64 = _apply_transform(z_head64, plan.logit_scale, plan.softcap)
    logits = _full(ref.logits)
    theirs = logits.reshape(-1, logits.shape[-1]).double()
    if theirs.shape != z64.shape:
        return f"the model's logits have shape {tuple(logits.shape)}, the plan's {tuple(z64.shape)}"
    # (the weight's dtype and device in the forward: FSDP2's mixed precision
    # gathers it in its param_dtype, with CPU offload onto the GPU)
    dtype, reduced = found["dtype"], found["device"].type == "cuda"
    z_bound = _logits_bound(magnitude_hw + bias_abs, found["k"], z_head64, z64, dtype, plan.logit_scale, reduced)
    err = (theirs - z64).abs()
    if not bool((err <= z_bound).all()):
        ratio = (err / z_bound.clamp_min(1e-300)).max().item()
        return (f"the model's logits are not the plan's (logit scale {plan.logit_scale:g}, soft-cap "
                f"{plan.softcap}): max error {err.max().item():.3g}, {ratio:.3g}x the {dtype} bound")
    # The losses: each computation's logits err by at most z_bound (ours runs
    # the same matmul, plus one rounding of the scaled hidden states).
    target = torch.nn.functional.pad(batch["labels"], (0, 1), value=-100)[..., 1:].reshape(-1)
    ours_err = z_bound + (eps(dtype) * abs(plan.logit_scale) * magnitude_hw if plan.logit_scale != 1.0 else 0.0)
    bound_ref, _ = cross_entropy_error(z64, target.to(z64.device), torch.float32, logit_err=z_bound)
    bound_ours, _ = cross_entropy_error(z64, target.to(z64.device), torch.float32, logit_err=ours_err)
    diff = abs(loss.double().item() - ref_loss.double().item())
    bound = (bound_ref + bound_ours).item()
    if not (math.isfinite(diff) and diff <= bound):
        return (f"the fused loss {loss.item():.6g} is not the model's {ref_loss.item():.6g} "
                f"(difference {diff:.3g} > bound {bound:.3g})")
    plan.head_layout = found["layout"]
    return None
