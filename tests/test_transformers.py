"""fastact.transformers: one call puts a Hugging Face model on the fused
kernels. Tiny configs built here (tests/hf_zoo.py: dense, MoE and
vision-language model types, no download): for every type the report says
what was fused and proven, the loss and every parameter gradient equal the
unpatched model's (float32 with the project's tight rule; bfloat16 by the
float64 rule), generate() is unchanged, no (tokens, vocab) tensor is formed in
a training step, the proof refuses a model whose logits it does not know,
the Trainer with gradient accumulation trains the same, torch.compile works,
and the LM-head memory goes down."""
from __future__ import annotations

import copy
import inspect
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

import fastact.functional as F  # noqa: E402
import fastact.transformers as ft  # noqa: E402
import hf_zoo  # noqa: E402
from conftest import EMULATION, assert_matches, requires_cuda  # noqa: E402
from fastact.accuracy import cross_entropy_error, mismatch, sum_error  # noqa: E402
from fastact.errors import FastactTypeError  # noqa: E402
from peak_memory import PeakTensorMemory  # noqa: E402

TF5 = ft.versions.parse(transformers.__version__) >= (5, 0, 0)
# The emulation lane runs the CUDA kernels on the SIMT emulator under
# AddressSanitizer: there the kernels matter, not the breadth of models, so it
# takes one model type per group (and the soft-capped one); make test runs all.
ZOO = ["llama", "gemma2", "qwen3_moe", "qwen2_5_vl"] if EMULATION else list(hf_zoo.ZOO)
GROUPS = {group: [t for t, entry in hf_zoo.ZOO.items() if entry[0] == group] for group in ("dense", "moe", "vlm")}


def make(model_type: str, dtype=torch.float32, seed: int = 0, **overrides):
    try:
        return hf_zoo.make(model_type, dtype, seed, **overrides)
    except hf_zoo.Missing as e:
        pytest.skip(str(e))


def batch(vocab=128, b=2, s=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (b, s), generator=g)  # (0, 1, 2: pad, bos, eos)
    labels = ids.clone()
    labels[0, :5] = -100  # a prompt that is not trained on
    labels[1, -3:] = -100
    return ids, labels


def patched(model, **kw):
    p = copy.deepcopy(model)
    changed = ft.apply(p, **kw)
    return p, changed


def loss_and_grads(model, ids, labels, **kw):
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=labels, **kw)
    out.loss.backward()
    return out, {n: p.grad for n, p in model.named_parameters()}


#: the GLU op each of these types' MLP blocks must get (the others: any)
GLU_OP = {"llama": "swiglu", "mistral": "swiglu", "qwen2": "swiglu", "qwen3": "swiglu", "gemma": "geglu[tanh]",
          "gemma2": "geglu[tanh]", "phi3": "swiglu (packed)", "cohere": "swiglu", "granite": "swiglu"}
#: activation modules that must be on fastact in these types (non-GLU MLPs)
ACTIVATION = {"gpt2": "NewGELUActivation",
              "starcoder2": "GELUTanh" if ft.versions.parse(transformers.__version__) >= (4, 56, 0) else "PytorchGELUTanh",
              "gpt_neox": "GELUActivation", "phi": "NewGELUActivation", "nemotron": "ReLUSquaredActivation",
              "opt": "ReLU"}
MOE_EXPERTS = {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3"}


def _kernels(changed) -> int:
    """How many modules of the model now run fastact kernels."""
    glu = sum(n for n, _ in changed["glu"].values()) + sum(n for n, _ in changed["experts"].values())
    return glu + sum(changed["activations"].values()) + sum(changed["dropout"].values())


@pytest.mark.parametrize("model_type", ZOO)
def test_report_loss_and_grads_float32(model_type):
    """Every model type: the loss is fused and proven (the report names the
    class), some modules run fastact kernels, and the loss and every
    parameter gradient equal the unpatched model's."""
    model = make(model_type)
    fused, changed = patched(model)
    assert changed["family"] == model.config.model_type
    assert changed["loss"] == type(model).__name__, changed["skipped"]
    assert "loss" not in changed["skipped"]
    # (transformers 4.x's GptOssExperts computes its clamped gate inline in its
    # forward, with no _apply_gate to fuse: there only the loss is fastact's)
    assert _kernels(changed) > 0 or (model_type == "gpt_oss" and not TF5), changed
    if model_type in GLU_OP:
        assert changed["glu"] and all(op == GLU_OP[model_type] for _, op in changed["glu"].values()), changed
    if model_type in ACTIVATION:
        assert ACTIVATION[model_type] in changed["activations"], changed
    if model_type in MOE_EXPERTS:
        # 5.x: the fused experts module's gate; 4.x: one GLU MLP per expert
        assert changed["experts"] if TF5 else len(changed["glu"]) >= 1, changed
    if model_type == "gpt_oss" and TF5 and hasattr(F, "clamped_swiglu"):
        assert changed["experts"] == {"GptOssExperts": (2, "clamped_swiglu (interleaved)")}, changed
    ids, labels = batch(hf_zoo.vocab(model))
    ref, grads = loss_and_grads(model, ids, labels)
    out, fused_grads = loss_and_grads(fused, ids, labels)
    assert out.logits is None  # training with labels: the logits are never formed
    assert_matches(out.loss, ref.loss)
    assert grads.keys() == fused_grads.keys()
    for name, g in grads.items():
        if g is None:  # (a parameter the text-only step does not reach: the vision tower)
            assert fused_grads[name] is None, name
            continue
        assert fused_grads[name] is not None, name
        msg = mismatch(fused_grads[name], g)
        assert msg is None, f"{name}: {msg}"


# (qwen2_5_vl is not in this list: at seed 0 its layer-0 v_proj.bias gradient
# is 2.6x torch's error against float64 (0.0108 vs 0.0042) while its float32
# run matches exactly: the bf16 backward through the whole network amplifies
# the head's (more accurate, float32) gradient differently -- see the note
# of issue 22; the head itself is checked by test_head_loss_bfloat16.)
@pytest.mark.parametrize("model_type", ZOO[:2] if EMULATION else
                         GROUPS["dense"][:12] + ["mixtral", "qwen2_vl", "llava", "gemma3"])
def test_loss_and_grads_bfloat16(model_type):
    """bf16 model: every parameter gradient against the same weights in
    float64, at most twice torch's (the unpatched model's) error (the max over
    each tensor). The loss is checked at the head, on the same final hidden
    states (test_head_loss_bfloat16): a scalar at the end of a network of bf16
    roundings is a chaotic sample of them, not a comparable error."""
    model = make(model_type, torch.bfloat16)
    reference = copy.deepcopy(model).double()
    if TF5 and hasattr(reference, "set_experts_implementation"):
        reference.set_experts_implementation("eager")  # (grouped_mm takes no float64)
    fused, _ = patched(model)
    ids, labels = batch(hf_zoo.vocab(model))
    ref, grads = loss_and_grads(model, ids, labels)
    out, fused_grads = loss_and_grads(fused, ids, labels)
    _, grads64 = loss_and_grads(reference, ids, labels)
    # transformers upcasts the logits: a float32 loss; fastact's is float32 too
    assert out.loss.dtype == ref.loss.dtype == torch.float32
    for name, g in grads.items():
        if g is None:  # (the vision tower of a text-only step)
            assert fused_grads[name] is None, name
            continue
        msg = mismatch(fused_grads[name], g, grads64[name])
        assert msg is None, f"{name}: {msg}"


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2"])
def test_head_loss_bfloat16(family):
    """The loss head on the bf16 model's own final hidden states: fastact's
    error against float64 at most twice transformers' (bf16 logits, upcast),
    or within the bound of a float32 computation of it (what fastact does on
    the CPU: float32 logits from the bf16 operands), whichever is larger."""
    model = make(family, torch.bfloat16)
    ids, labels = batch()
    with torch.no_grad():
        h = model.model(input_ids=ids).last_hidden_state
        w = model.lm_head.weight
        cap = getattr(model.config, "final_logit_softcapping", None)

        def logits_of(h, w):
            z = h @ w.t()
            return cap * torch.tanh(z / cap) if cap else z

        theirs = model.loss_function(logits_of(h, w), labels, model.config.vocab_size)
        ours = ft.causal_lm_loss(h, w, labels, softcap=cap)
        z64 = logits_of(h.double(), w.double())
        exact = model.loss_function(z64, labels, model.config.vocab_size)
        # float32 logits from bf16 operands: a sum of H products
        z_err = sum_error(torch.float32, h.shape[-1], h.double().abs() @ w.double().abs().t())
        target = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:].reshape(-1)
        bound, _ = cross_entropy_error(z64.reshape(-1, z64.shape[-1]), target, torch.float32,
                                       logit_err=z_err.reshape(-1, z_err.shape[-1]))
    assert ours.dtype == theirs.dtype == torch.float32
    err, err_torch = abs(ours.double() - exact).item(), abs(theirs.double() - exact).item()
    assert err <= max(2 * err_torch, bound.item()), (err, err_torch, bound.item())


def test_num_items_in_batch_shift_labels_and_return_dict():
    """The loss kwargs transformers passes: num_items_in_batch (sum / count),
    shift_labels (already shifted), ignore_index; return_dict=False."""
    model = make("llama")
    fused, _ = patched(model)
    ids, labels = batch()
    n = torch.tensor(40)
    ref, _ = loss_and_grads(model, ids, labels, num_items_in_batch=n)
    out, _ = loss_and_grads(fused, ids, labels, num_items_in_batch=n)
    assert_matches(out.loss, ref.loss)
    shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:].clone()
    shifted[:, ::3] = -100  # not labels shifted: shows that shift_labels is the one used
    ref, _ = loss_and_grads(model, ids, labels, shift_labels=shifted)
    out, _ = loss_and_grads(fused, ids, labels, shift_labels=shifted)
    assert out.logits is None
    assert_matches(out.loss, ref.loss)
    plain, _ = loss_and_grads(fused, ids, labels)
    assert not torch.allclose(plain.loss, out.loss)
    fused.train()
    as_tuple = fused(ids, labels=labels, return_dict=False)
    assert isinstance(as_tuple, tuple)
    assert_matches(as_tuple[0], fused(ids, labels=labels).loss)


def test_eval_and_no_labels_are_the_original_forward():
    model = make("gemma2")
    fused, _ = patched(model)
    ids, labels = batch()
    for m in (model, fused):
        m.eval()
    with torch.no_grad():
        a, b = model(ids, labels=labels), fused(ids, labels=labels)
        assert b.logits is not None
        assert_matches(b.logits, a.logits, a.logits.double())
        assert_matches(b.loss, a.loss)
        fused.train()
        model.train()
        a, b = model(ids), fused(ids)
        assert_matches(b.logits, a.logits, a.logits.double())


@pytest.mark.parametrize("model_type", ZOO)
def test_generate_unchanged(model_type):
    model = make(model_type)
    fused, _ = patched(model)
    ids, _ = batch(hf_zoo.vocab(model), b=2, s=6)
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(ids))
    for m in (model, fused):
        m.eval()
    assert torch.equal(fused.generate(ids, **kw), model.generate(ids, **kw))


def test_z_loss_switches_and_idempotence():
    model = make("llama")
    ids, labels = batch()
    plain, _ = patched(model)
    with_z, _ = patched(model, z_loss=1e-2)
    a, _ = loss_and_grads(plain, ids, labels)
    b, _ = loss_and_grads(with_z, ids, labels)
    assert b.loss > a.loss  # + z_loss * mean(lse^2)
    only_mlp, changed = patched(model, loss=False)
    assert changed["loss"] is None and changed["glu"]
    out, _ = loss_and_grads(only_mlp, ids, labels)
    assert out.logits is not None
    again = ft.apply(plain)
    assert again["glu"] == {} and again["loss"] == "LlamaForCausalLM"
    assert type(plain).__name__ == "LlamaForCausalLM"  # save_pretrained's architectures entry


def test_dropout_modules_are_fused():
    """Phi3's residual dropout modules become fastact's; training stays
    reproducible under a seed (the mask is regenerated in backward)."""
    model = make("phi3", resid_pdrop=0.1)
    fused, changed = patched(model)
    assert changed["dropout"] == {"Dropout": 2 * hf_zoo.SMALL["num_hidden_layers"]}
    assert changed["loss"] == "Phi3ForCausalLM"  # proven with the dropout on (the RNG fixed)
    ids, labels = batch()
    torch.manual_seed(5)
    a, ga = loss_and_grads(fused, ids, labels)
    torch.manual_seed(5)
    b, gb = loss_and_grads(fused, ids, labels)
    assert torch.equal(a.loss, b.loss)
    assert all(torch.equal(ga[n], gb[n]) for n in ga)


class _ScaledMLP(torch.nn.Module):
    """Not a plain GLU (a scale): must be left alone."""

    def __init__(self, d, h):
        super().__init__()
        self.gate_proj, self.up_proj = torch.nn.Linear(d, h), torch.nn.Linear(d, h)
        self.down_proj, self.act_fn = torch.nn.Linear(h, d), torch.nn.SiLU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x) * 0.5)


class _MyGLU(torch.nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.w_in, self.w_gate = torch.nn.Linear(d, h), torch.nn.Linear(d, h)
        self.w_out, self.act = torch.nn.Linear(h, d), torch.nn.GELU(approximate="tanh")

    def forward(self, hidden):
        out = self.w_out(self.w_in(hidden) * self.act(self.w_gate(hidden)))
        return out


def test_structural_glu_detection():
    model = torch.nn.Sequential(_MyGLU(8, 16), _ScaledMLP(8, 16))
    x = torch.randn(3, 8)
    expected = model(x)
    changed = ft.apply(model)
    assert changed["family"] is None and changed["loss"] is None
    assert changed["glu"] == {"_MyGLU": (1, "geglu[tanh]")}
    assert type(model[1]).forward is _ScaledMLP.forward
    assert_matches(model(x), expected)


def test_nothing_to_patch_is_a_clear_error():
    with pytest.raises(FastactTypeError, match=r"nothing to patch in Sequential"):
        ft.apply(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    with pytest.raises(FastactTypeError, match="expected a torch.nn.Module"):
        ft.apply("llama")


def test_versions(monkeypatch):
    """Older than 4.52: refused; a release newer than the newest tested one:
    tried, with one warning."""
    model = make("llama")
    monkeypatch.setattr(transformers, "__version__", "4.51.3")
    with pytest.raises(RuntimeError, match=r"transformers>=4.52, found transformers 4.51.3"):
        ft.apply(copy.deepcopy(model))
    assert ft.apply(copy.deepcopy(model), check_version=False)["loss"] == "LlamaForCausalLM"
    monkeypatch.setattr(transformers, "__version__", "7.3.0")
    monkeypatch.setattr(ft.versions, "_warned", set())
    with pytest.warns(UserWarning, match=r"tested up to transformers 5\.\d+\.\d+; found 7\.3\.0"):
        assert ft.apply(copy.deepcopy(model))["loss"] == "LlamaForCausalLM"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        ft.apply(copy.deepcopy(model))


def test_installed_version_is_supported():
    assert ft.versions.supported(transformers.__version__), transformers.__version__


# --- the proof ------------------------------------------------------------------------------

def _scaled_llama():
    """Research code: a subclass under the same name whose forward rescales
    the logits (what a class-name check would fuse into a wrong loss)."""
    base = transformers.LlamaForCausalLM

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        out = base.forward(self, input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        out.logits = out.logits * 1.5
        if labels is not None:
            out.loss = self.loss_function(out.logits, labels, self.config.vocab_size)
        return out

    cls = type("LlamaForCausalLM", (base,), {"forward": forward})
    torch.manual_seed(0)
    return cls(hf_zoo.config("llama"))


def test_proof_refuses_a_subclass_that_rescales_logits():
    model = _scaled_llama()
    fused, changed = patched(model)
    assert changed["loss"] is None
    assert "logits are not the plan's" in changed["skipped"]["loss"], changed["skipped"]
    assert changed["glu"]  # the other parts still apply
    ids, labels = batch()
    ref, _ = loss_and_grads(model, ids, labels)
    out, _ = loss_and_grads(fused, ids, labels)
    assert out.logits is not None  # the model's own forward and loss
    assert_matches(out.loss, ref.loss)


@pytest.mark.parametrize("model_type", ["llama", "gemma2", "cohere", "granite"])
def test_proof_refuses_a_broken_transform(model_type, monkeypatch):
    """A logit transform read wrongly from the config (here: the scale off
    by 1 %, or a soft-cap the model does not apply) fails the proof."""
    import fastact.transformers.causal_lm as causal_lm

    model = make(model_type)
    right = causal_lm.logit_transform(model)
    wrong = {"logit_scale": right["logit_scale"] * 1.01, "softcap": right["softcap"]} if model_type != "llama" \
        else {"logit_scale": 1.0, "softcap": 3.0}
    monkeypatch.setattr(ft, "logit_transform", lambda m: wrong)
    _, changed = patched(model)
    assert changed["loss"] is None and "logits are not the plan's" in changed["skipped"]["loss"], changed
    monkeypatch.setattr(ft, "logit_transform", lambda m: right)
    assert patched(model)[1]["loss"] == type(model).__name__


def test_proof_keeps_the_rng_state_and_mode():
    model = make("phi3", resid_pdrop=0.1)
    model.eval()
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    ft.apply(model)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert not model.training


# --- the other parts ------------------------------------------------------------------------

def test_transformers_activations():
    """Every transformers activation class fastact maps computes the
    module's own function (float64), and is swapped in a model."""
    from transformers import activations as acts

    for name in ft.activations.ACTIVATIONS:
        cls = getattr(acts, name, None)
        if cls is None:
            continue  # (renamed in this release)
        module = cls()
        assert ft.activations.activation_op(module) is not None, name
        x = torch.linspace(-8, 8, 1001, dtype=torch.float64)
        fn, kwargs = ft.activations.ACTIVATIONS[name]
        torch.testing.assert_close(fn(x, **kwargs), module(x), rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(not TF5, reason="fused experts modules are transformers 5's")
@pytest.mark.parametrize("implementation", ["grouped_mm", "batched_mm"])
def test_moe_experts_implementations(implementation):
    """transformers 5's experts modules call the fused gate under both
    implementations; loss and gradients as the unpatched model's."""
    model = make("qwen3_moe")
    model.set_experts_implementation(implementation)
    fused, changed = patched(model)
    assert changed["experts"] == {"Qwen3MoeExperts": (2, "swiglu (packed)")}, changed
    calls = []
    gate = type(fused.model.layers[0].mlp.experts)._apply_gate
    type(fused.model.layers[0].mlp.experts)._apply_gate = lambda self, x: calls.append(1) or gate(self, x)
    try:
        ids, labels = batch()
        ref, grads = loss_and_grads(model, ids, labels)
        out, fused_grads = loss_and_grads(fused, ids, labels)
    finally:
        type(fused.model.layers[0].mlp.experts)._apply_gate = gate
    assert calls
    assert_matches(out.loss, ref.loss)
    for name, g in grads.items():
        msg = mismatch(fused_grads[name], g)
        assert msg is None, f"{name}: {msg}"


def test_no_vocab_sized_tensor_in_a_training_step():
    """A dispatch mode records the largest tensor any op returns in a patched
    training step: it stays below one (tokens, vocab) float32 tensor (the
    chunk of linear_cross_entropy is a fraction of it), for a dense, a MoE
    and a vision-language model."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in torch.utils._pytree.tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    Largest.largest = max(Largest.largest, t.numel())
            return out

    vocab = 4096
    for model_type in ("llama", "gemma2", "qwen3_moe", "qwen2_5_vl"):
        model = make(model_type, vocab_size=vocab, initializer_range=0.02)
        ft.apply(model)
        ids, labels = batch(vocab, b=4, s=256)
        model.train()
        Largest.largest = 0
        with Largest():
            model(input_ids=ids, labels=labels).loss.backward()
        assert Largest.largest < ids.numel() * vocab // 2, (model_type, Largest.largest, ids.numel() * vocab)


# --- what the patch relies on beyond transformers' public API ------------------------------

@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3"])
def test_private_surface_causal_lm(family):
    """The causal-LM forward takes labels, logits_to_keep and **kwargs (the
    loss kwargs), owns `model` and `lm_head`, and its loss is ForCausalLMLoss
    (shift by one, ignore_index, num_items_in_batch)."""
    model = make(family)
    params = inspect.signature(inspect.unwrap(type(model).forward)).parameters
    assert {"input_ids", "labels", "logits_to_keep"} <= params.keys()
    assert any(p.kind == p.VAR_KEYWORD for p in params.values())
    assert isinstance(model.lm_head, torch.nn.Linear) and model.model is model.get_decoder()
    assert model.loss_function.__name__ == "ForCausalLMLoss"
    if family == "gemma2":
        assert model.config.final_logit_softcapping == 2.0
    fused, _ = patched(model)
    # the Trainer reads the signature (column pruning, loss kwargs)
    assert inspect.signature(fused.forward) == inspect.signature(model.forward)


def test_private_surface_loss_and_activations():
    from transformers.activations import ACT2FN
    from transformers.loss.loss_utils import ForCausalLMLoss

    params = inspect.signature(ForCausalLMLoss).parameters
    assert {"logits", "labels", "vocab_size", "num_items_in_batch", "ignore_index", "shift_labels"} <= params.keys()
    assert ft.gated_op(ACT2FN["silu"]) == ("swiglu", {})
    assert ft.gated_op(ACT2FN["gelu_pytorch_tanh"]) == ("geglu", {"approximate": "tanh"})
    assert ft.gated_op(ACT2FN["gelu"]) == ("geglu", {"approximate": "none"})
    assert ft.gated_op(ACT2FN["relu"]) == ("reglu", {})
    for name in ("silu", "gelu_pytorch_tanh", "gelu", "relu"):  # each formula, not just the name
        x = torch.randn(64, dtype=torch.float64)
        op, kw = ft.gated_op(ACT2FN[name])
        up = torch.randn(64, dtype=torch.float64)
        torch.testing.assert_close(getattr(F, op)(x, up, **kw), ACT2FN[name](x) * up)


# --- training loops -----------------------------------------------------------------------

class _RecordingTrainer(transformers.Trainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch=num_items_in_batch)
        self.recorded.append((loss.detach().clone(), num_items_in_batch))
        return loss


def _train(model, tmp_path):
    g = torch.Generator().manual_seed(3)
    data = []
    for i in range(8):
        ids = torch.randint(0, 128, (12,), generator=g)
        labels = ids.clone()
        labels[: 1 + i % 5] = -100  # a different number of target tokens per example
        data.append({"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)})
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=2,
        learning_rate=0.1, optim="sgd", lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
        report_to=[], use_cpu=True, seed=0, data_seed=0, dataloader_num_workers=0, disable_tqdm=True)
    trainer = _RecordingTrainer(model=model, args=args, train_dataset=data)
    trainer.recorded = []
    trainer.train()
    return trainer


def test_trainer_gradient_accumulation(tmp_path):
    model = make("llama")
    fused, _ = patched(model)
    plain = _train(model, tmp_path / "plain")
    ours = _train(fused, tmp_path / "fastact")
    assert ours.model_accepts_loss_kwargs
    assert len(ours.recorded) == len(plain.recorded) == 4
    for (a, na), (b, nb) in zip(ours.recorded, plain.recorded):
        assert na is not None and int(na) == int(nb)  # the count over the accumulated batches
        assert_matches(a, b)
    for (name, p), q in zip(model.named_parameters(), fused.parameters()):
        msg = mismatch(q.detach(), p.detach())
        assert msg is None, f"{name}: {msg}"


def test_torch_compile():
    model = make("llama")
    fused, _ = patched(model)
    eager, grads = loss_and_grads(fused, *batch())
    compiled = torch.compile(fused, backend="aot_eager")
    out, compiled_grads = loss_and_grads(compiled, *batch())
    assert out.logits is None
    assert_matches(out.loss, eager.loss)
    for name, g in grads.items():
        assert_matches(compiled_grads[name.replace("_orig_mod.", "")] if name in compiled_grads
                       else compiled_grads["_orig_mod." + name], g)


# --- memory -------------------------------------------------------------------------------

def _step_peak(model, ids, labels):
    model.train()
    model.zero_grad(set_to_none=True)
    with PeakTensorMemory() as m:
        model(input_ids=ids, labels=labels).loss.backward()
    return m.peak


def test_peak_memory_large_vocabulary():
    """V = 128k, 256 tokens: the unpatched step holds the (256, V) float32
    logits, their log-softmax and gradient (3 x 128 MiB); the patched one
    one 32 MiB chunk buffer. Tensor bytes counted exactly (deterministic)."""
    vocab = 131072
    model = make("llama", vocab_size=vocab, initializer_range=0.02)
    fused, _ = patched(model)
    ids, labels = batch(vocab, b=4, s=64)
    logits_bytes = ids.numel() * vocab * 4
    plain, ours = _step_peak(model, ids, labels), _step_peak(fused, ids, labels)
    assert plain - ours >= 2 * logits_bytes, (plain / 2**20, ours / 2**20)
    assert ours < 0.5 * plain, (plain / 2**20, ours / 2**20)


@requires_cuda
def test_peak_memory_cuda():
    vocab = 131072
    model = make("llama", torch.bfloat16, vocab_size=vocab, initializer_range=0.02).cuda()
    fused, _ = patched(model)
    ids, labels = (t.cuda() for t in batch(vocab, b=8, s=256))
    peaks = []
    for m in (model, fused):
        m.train()
        m(input_ids=ids, labels=labels).loss.backward()  # warm-up: grads allocated
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        m(input_ids=ids, labels=labels).loss.backward()
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated() - base)
    logits_bytes = ids.numel() * vocab * 2
    assert peaks[0] - peaks[1] >= 2 * logits_bytes, [p / 2**20 for p in peaks]


# --- TRL ----------------------------------------------------------------------------------

def _word_tokenizer(vocab: int):
    """A tokenizer made here (no download): one word per id."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {"<pad>": 0, "<bos>": 1, "<eos>": 2, **{f"w{i}": i for i in range(3, vocab)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>",
                                                eos_token="<eos>")


def _sft(model, tmp_path):
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    g = torch.Generator().manual_seed(4)
    rows = [{"input_ids": torch.randint(3, 128, (6 + i % 5,), generator=g).tolist()} for i in range(8)]
    args = trl.SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                         max_steps=2, learning_rate=0.1, optim="sgd", lr_scheduler_type="constant",
                         logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0, data_seed=0,
                         dataloader_num_workers=0, disable_tqdm=True,
                         bf16=False)  # (TRL's default is bf16 autocast; float32 compares tightly)
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                             processing_class=_word_tokenizer(128))
    trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_trl_sft_trainer(tmp_path):
    """TRL's SFTTrainer on the patched model (TRL adds its own fused LM head
    for the loss; fastact's GLU and activation kernels run under it) trains
    as on the unpatched one."""
    if not TF5:
        pytest.skip("TRL is tested with the newest transformers (make test); the older lanes run without it")
    try:
        import trl  # noqa: F401
    except Exception as e:  # not installed, or not for this transformers release
        pytest.skip(f"trl does not import here: {type(e).__name__}: {e}")
    model = make("llama")
    fused, _ = patched(model)
    plain = _sft(model, tmp_path / "plain")
    ours = _sft(fused, tmp_path / "fastact")
    assert len(ours) == len(plain) == 2
    for a, b in zip(ours, plain):
        assert abs(a - b) <= 1e-5 * max(1.0, abs(b)), (ours, plain)  # the Trainer logs float32 losses rounded
    for (name, p), q in zip(model.named_parameters(), fused.parameters()):
        msg = mismatch(q.detach(), p.detach())
        assert msg is None, f"{name}: {msg}"
