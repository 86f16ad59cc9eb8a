"""fastact.transformers under torch.distributed (CPU, gloo, world 2).

One spawned process group runs every scenario (spawning costs more than the
scenarios), each for a tiny LLaMA and a tiny Gemma2 (soft-capped logits) in
float64, patched and unpatched from the same weights:

- (a) ``apply`` before ``fully_shard`` (FSDP2 on each decoder layer and the
  root): the proof ran on plain tensors; in forward FSDP2 gathers the head's
  weight (the root's unit) and the fused loss sees a plain tensor.
- (b) ``apply`` after ``fully_shard``: the proof runs through the model's call
  (FSDP2's hooks gather the weights) on every rank, which decide alike; the
  parameters are sharded again afterwards (an optimizer made then sees the
  shards).
- a head that is an FSDP2 unit of its own: ``apply`` after sharding refuses
  with the reason; ``apply`` before sharding falls back, with one warning, to
  the model's own loss (never to a loss over the wrong rows). A proof that
  passes on one rank only is refused on all.
- (c) tensor parallel head (``ColwiseParallel(output_layouts=Shard(-1),
  use_local_output=False)``, torch's loss-parallel recipe): the fused loss is
  fastact's vocabulary-parallel linear cross-entropy, proven against the
  model's own loss under ``loss_parallel()``; no rank forms a (tokens,
  vocab) tensor, nor (with chunks smaller than the batch) its own (tokens,
  vocab / world) slice of the logits.
- FSDP2 + TP on a (1, 2) mesh (the 2-D placements at the smallest world).

How they are compared, as in test_distributed.py: the loss curves (3 SGD
steps; data parallel: the mean of the ranks' losses) within ``RTOL64 =
1e-12`` relative of the unpatched model's under the same parallelism (and,
for TP, of the unpatched single-process run): float64's unit roundoff times
~9000, a budget of a few ulps per op through forward, backward and the
steps; a wrong head slice, a missing all-reduce or a loss over one rank's
rows only moves the loss by far more. Every parameter's first-step gradient
(each rank's shard) within ``RTOL64`` of the largest of the unpatched one's.
"""
from __future__ import annotations

import math
import os
import sys
import warnings

import pytest
import torch

pytest.importorskip("transformers")

sys.path.insert(0, os.path.dirname(__file__))
from conftest import EMULATION  # noqa: E402
from dist_util import spawn  # noqa: E402

# (as test_distributed.py: multi-process runs are the regular lane's)
pytestmark = pytest.mark.skipif(EMULATION, reason="multi-process runs: regular lane only")

WORLD = 2
RTOL64 = 1e-12
# transformers' own loss upcasts the logits with logits.float(), which rounds
# a float64 model's logits to float32 (2**-24 relative each) and computes
# the loss in float32: two runs of it on logits that differ in float64's last
# bits agree to a few float32 roundings, far within 2**-20
RTOL32 = 2.0 ** -20
FAMILIES = ("llama", "gemma2")
# vocabulary 256: its shard (128) is no other dim of the tiny models (hidden
# 32, MLP 64, heads x head_dim 32), so a (tokens, vocab / world) tensor is
# the logits' slice and nothing else
VOCAB, BATCH, SEQ, STEPS, LR, CHUNK = 256, 4, 24, 3, 0.1, 32


# --- in the spawned ranks ---------------------------------------------------------------------

def make(family, **overrides):
    import hf_zoo

    return hf_zoo.make(family, torch.float64, vocab_size=VOCAB, **overrides)


def batch(step):
    g = torch.Generator().manual_seed(100 + step)
    ids = torch.randint(3, VOCAB, (BATCH, SEQ), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100  # a prompt that is not trained on
    return ids, labels


def local(t):
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def value(loss):
    return float(local(loss.full_tensor() if hasattr(loss, "full_tensor") else loss).detach())


def mean_over(x, group=None):
    import torch.distributed as dist

    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t, group=group)
    return float(t) / dist.get_world_size(group)


def loss64(model, ids, labels):
    """The unpatched model's loss in float64: transformers' ForCausalLMLoss
    (shift by one, mean over the counted tokens) of its logits, without the
    ``logits.float()`` upcast that rounds a float64 model's logits to float32."""
    logits = model(input_ids=ids).logits
    target = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100), None


def own_loss(model, ids, labels):
    out = model(input_ids=ids, labels=labels)
    return out.loss, out.logits


def train(model, shard=None, parallel_loss=False, record=None, loss=own_loss):
    """STEPS of SGD: the loss curve, each parameter's first-step gradient
    (this rank's shard) and whether the first step returned no logits.
    ``shard`` picks this rank's rows (data parallel); ``parallel_loss``:
    forward and backward under loss_parallel() (the unpatched model's loss on
    vocabulary-sharded logits); ``record``: a dispatch mode active in the
    steps; ``loss``: the model's own (``own_loss``, the patched one's when
    fused) or ``loss64``."""
    import contextlib

    from torch.distributed.tensor.parallel import loss_parallel

    opt = torch.optim.SGD(model.parameters(), lr=LR)
    model.train()
    torch.manual_seed(1234)
    losses, grads = [], None
    for step in range(STEPS):
        ids, labels = batch(step)
        if shard is not None:
            ids, labels = shard(ids), shard(labels)
        with loss_parallel() if parallel_loss else contextlib.nullcontext(), record or contextlib.nullcontext():
            value_, logits = loss(model, ids, labels)
            value_.backward()
        if grads is None:
            grads = {n: None if p.grad is None else local(p.grad).clone() for n, p in model.named_parameters()}
            logits_none = logits is None
        opt.step()
        opt.zero_grad()
        losses.append(value(value_))
    return {"losses": losses, "grads": grads, "logits_none": logits_none}


def fsdp(model, mesh=None, head_unit=False, mixed=False):
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kw = {"mesh": mesh} if mesh is not None else {}
    if mixed:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, **kw)
    if head_unit:
        fully_shard(model.lm_head, **kw)
    fully_shard(model, **kw)
    return model


def all_sharded(model):
    from torch.distributed.tensor import DTensor

    return all(isinstance(p, DTensor) for p in model.parameters())


def report(changed):
    return {"loss": changed["loss"], "skipped": changed["skipped"].get("loss"), "glu": changed["glu"]}


def data_parallel(rank, world, fn):
    """(curve of the ranks' mean loss, first-step gradients) of ``fn``'s run."""
    res = fn(lambda t: t.chunk(world)[rank])
    res["losses"] = [mean_over(v) for v in res["losses"]]
    return res


def scenario_fsdp(rank, world):
    import fastact.transformers as ft

    out = {}
    for family in FAMILIES:
        r = out[family] = {}
        r["ref"] = data_parallel(rank, world, lambda shard: train(fsdp(make(family)), shard, loss=loss64))
        # (a) apply, then fully_shard
        model = make(family)
        r["before"] = report(ft.apply(model))
        r["before"].update(data_parallel(rank, world, lambda shard: train(fsdp(model), shard)))
        # (b) fully_shard, then apply
        model = fsdp(make(family))
        r["after"] = report(ft.apply(model))
        r["after"]["sharded"] = all_sharded(model)  # the probe resharded what it gathered
        r["after"].update(data_parallel(rank, world, lambda shard: train(model, shard)))
    # mixed precision (bf16 parameters in forward, float32 reduce), apply after fully_shard: the proof
    # runs on the bf16 weight FSDP2 gathers
    r = out["llama"]
    r["mixed ref"] = data_parallel(rank, world, lambda shard: train(fsdp(make("llama"), mixed=True), shard))
    model = fsdp(make("llama"), mixed=True)
    r["mixed"] = report(ft.apply(model))
    r["mixed"].update(data_parallel(rank, world, lambda shard: train(model, shard)))
    return out


def scenario_fsdp_head_unit(rank, world):
    """The LM head an FSDP2 unit of its own: refused after sharding; after
    apply-then-shard, the model's own loss, with a warning."""
    import fastact.transformers as ft

    out = {}
    out["ref"] = data_parallel(rank, world, lambda shard: train(fsdp(make("llama"), head_unit=True), shard))
    model = fsdp(make("llama"), head_unit=True)
    out["after"] = report(ft.apply(model))
    # a decision that differs between ranks becomes the refusal on all of them
    from fastact.transformers.causal_lm import agree

    out["agree"] = agree(model, None if rank == 0 else "refused on rank 1"), agree(make("llama"), None)
    model = make("llama")
    out["before"] = report(ft.apply(model))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out["before"].update(data_parallel(rank, world, lambda shard: train(fsdp(model, head_unit=True), shard)))
    out["before"]["warnings"] = [str(w.message) for w in caught if "fastact.transformers" in str(w.message)]
    return out


def tp_head(model, mesh):
    # (parallelize_module gives the head a parameter of its own: a head tied
    # to the embedding is untied, so the TP scenarios use untied models)
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module

    return parallelize_module(model, mesh, {"lm_head": ColwiseParallel(output_layouts=Shard(-1),
                                                                       use_local_output=False)})


class LogitsRecorder(torch.utils._python_dispatch.TorchDispatchMode):
    """The shapes of op outputs with a token row each and a vocabulary (or a
    vocabulary slice) as the last dim."""

    def __init__(self, tokens, vocabs):
        super().__init__()
        self.tokens, self.vocabs, self.seen = tokens, vocabs, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] in self.vocabs \
                    and t.numel() // t.shape[-1] >= self.tokens:
                self.seen.add(tuple(t.shape))
        return out


def scenario_tp(rank, world):
    import fastact.transformers as ft
    from torch.distributed.device_mesh import init_device_mesh

    from fastact.transformers.causal_lm import head_layout

    mesh = init_device_mesh("cpu", (world,))
    vocabs = (VOCAB, VOCAB // world)
    out = {}
    for family in FAMILIES:
        r = out[family] = {}
        r["single"] = train(make(family, tie_word_embeddings=False), loss=loss64)
        ref_logits = LogitsRecorder(BATCH * SEQ, vocabs)
        r["ref"] = train(tp_head(make(family, tie_word_embeddings=False), mesh), parallel_loss=True,
                         record=ref_logits, loss=loss64)
        r["ref"]["logits"] = sorted(ref_logits.seen)
        model = tp_head(make(family, tie_word_embeddings=False), mesh)
        r["fused"] = report(ft.apply(model, chunk_size=CHUNK))
        layout = model.fastact_loss_plan.head_layout if hasattr(model, "fastact_loss_plan") else None
        r["fused"]["layout"] = None if layout is None else str(layout[1])
        recorder = LogitsRecorder(BATCH * SEQ, vocabs)
        r["fused"].update(train(model, record=recorder))
        r["fused"]["logits"] = sorted(recorder.seen)
        r["fused"]["weight_is_dtensor"] = head_layout(model.lm_head.weight) is not None
    return out


def scenario_fsdp_tp(rank, world):
    """FSDP2 over a mesh dim of size 1 and TP over the other: the sharded
    head's placements are 2-D, the one the fused loss computes with is the
    tensor-parallel shard."""
    import fastact.transformers as ft
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (1, world), mesh_dim_names=("dp", "tp"))
    out = {}
    out["ref"] = train(fsdp(tp_head(make("llama"), mesh["tp"]), mesh["dp"]), parallel_loss=True, loss=loss64)
    model = fsdp(tp_head(make("llama"), mesh["tp"]), mesh["dp"])
    out["fused"] = report(ft.apply(model))
    out["fused"]["layout"] = str(model.fastact_loss_plan.head_layout[1]) if hasattr(model, "fastact_loss_plan") \
        else None
    out["fused"].update(train(model))
    return out


SCENARIOS = {"fsdp": scenario_fsdp, "fsdp_head_unit": scenario_fsdp_head_unit, "tp": scenario_tp,
             "fsdp_tp": scenario_fsdp_tp}


def _worker(rank, world, scenarios):
    torch.set_num_threads(1)
    out = {}
    for name in scenarios:
        torch.manual_seed(0)
        out[name] = SCENARIOS[name](rank, world)
    return out


# --- checks (in the test process) -------------------------------------------------------------

def close64(a, b, rtol=RTOL64):
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=rtol, abs_tol=0) for x, y in zip(a, b))


def grads_match(ours, ref, rtol=RTOL64):
    """None, or the first parameter whose gradient differs by more than
    ``rtol`` of the reference's largest element."""
    assert ours.keys() == ref.keys()
    for name, g in ref.items():
        if g is None or ours[name] is None:
            if (g is None) != (ours[name] is None):
                return f"{name}: gradient only on one side"
            continue
        scale = g.abs().max().item()
        err = (ours[name] - g).abs().max().item()
        if not err <= rtol * scale:
            return f"{name}: max error {err:.3g} > {rtol:g} x {scale:.3g}"
    return None


def same_run(ours, ref, label):
    assert ours["logits_none"], label  # the fused loss ran: no logits returned
    assert close64(ours["losses"], ref["losses"]), (label, ours["losses"], ref["losses"])
    msg = grads_match(ours["grads"], ref["grads"])
    assert msg is None, (label, msg)


@pytest.fixture(scope="module")
def outs():
    return spawn(_worker, WORLD, list(SCENARIOS), timeout=300)


@pytest.mark.parametrize("family", FAMILIES)
def test_fsdp_apply_before_and_after_fully_shard(outs, family):
    for rank, out in enumerate(outs):
        r = out["fsdp"][family]
        for when in ("before", "after"):
            cls = "Gemma2ForCausalLM" if family == "gemma2" else "LlamaForCausalLM"
            # (after fully_shard the class is FSDP2's FSDP<class>)
            assert r[when]["loss"] == (cls if when == "before" else "FSDP" + cls), (when, r[when])
            assert r[when]["skipped"] is None, (when, r[when])
            assert r[when]["glu"], (when, r[when])  # the MLPs are fused too
            same_run(r[when], r["ref"], (family, when, rank))
        assert r["after"]["sharded"]
        if family == "llama":
            # mixed precision: within twice the unpatched run's error against float64, plus one bf16 ulp
            # (test_distributed.py's rule)
            mixed = r["mixed"]
            assert mixed["loss"] == "FSDPLlamaForCausalLM" and mixed["skipped"] is None, mixed
            assert mixed["logits_none"]
            for ours, theirs, exact in zip(mixed["losses"], r["mixed ref"]["losses"], r["ref"]["losses"]):
                assert abs(ours - exact) <= 2 * abs(theirs - exact) + abs(exact) * 2.0 ** -8, (ours, theirs, exact)


def test_fsdp_head_as_its_own_unit(outs):
    for rank, out in enumerate(outs):
        r = out["fsdp_head_unit"]
        assert r["after"]["loss"] is None and "FSDP2 unit of its own" in r["after"]["skipped"], r["after"]
        sharded, plain = r["agree"]
        assert sharded == ("refused on rank 1" if rank else
                           "the proof failed on another rank of the device mesh (all ranks keep the model's own loss)")
        assert plain is None  # (no DTensor parameter: no collective, the rank's own decision)
        before = r["before"]
        assert before["loss"] == "LlamaForCausalLM", before
        # in training the head is sharded: the model's own loss (logits returned), one warning
        assert not before["logits_none"]
        assert len(before["warnings"]) == 1 and "model's own loss" in before["warnings"][0], before["warnings"]
        # both the model's own loss, whose logits.float() rounds the logits to float32
        assert close64(before["losses"], r["ref"]["losses"], RTOL32), (before["losses"], r["ref"]["losses"])
        msg = grads_match(before["grads"], r["ref"]["grads"], RTOL32)
        assert msg is None, msg


@pytest.mark.parametrize("family", FAMILIES)
def test_tensor_parallel_head(outs, family):
    for rank, out in enumerate(outs):
        r = out["tp"][family]
        fused = r["fused"]
        cls = "Gemma2ForCausalLM" if family == "gemma2" else "LlamaForCausalLM"
        assert fused["loss"] == cls and fused["skipped"] is None, fused
        assert fused["layout"] == "(Shard(dim=0),)" and fused["weight_is_dtensor"], fused
        same_run(fused, r["ref"], (family, "tp", rank))
        assert close64(fused["losses"], r["single"]["losses"]), (fused["losses"], r["single"]["losses"])
        # the unpatched model forms the (tokens, vocab) logits (a DTensor); the fused one not even its slice
        assert r["ref"]["logits"], r["ref"]
        assert fused["logits"] == [], fused["logits"]


def test_fsdp_and_tensor_parallel_head(outs):
    for rank, out in enumerate(outs):
        r = out["fsdp_tp"]
        assert r["fused"]["loss"] == "FSDPLlamaForCausalLM" and r["fused"]["skipped"] is None, r["fused"]
        assert r["fused"]["layout"] == "(Shard(dim=0),)", r["fused"]
        same_run(r["fused"], r["ref"], ("fsdp_tp", rank))
