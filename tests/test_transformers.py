"""fastact.transformers: one call puts a Hugging Face causal LM on the fused
kernels. Tiny configs built here (no download): for every family the loss and
every parameter gradient equal the unpatched model's (float32 with the
project's tight rule; bfloat16 by the float64 rule), generate() is unchanged,
the Trainer with gradient accumulation trains the same, torch.compile works,
and the LM-head memory goes down."""
from __future__ import annotations

import copy
import inspect

import pytest
import torch

transformers = pytest.importorskip("transformers")

import fastact.functional as F  # noqa: E402
import fastact.transformers as ft  # noqa: E402
from conftest import assert_matches, requires_cuda  # noqa: E402
from fastact.accuracy import cross_entropy_error, mismatch, sum_error  # noqa: E402
from fastact.errors import FastactTypeError  # noqa: E402
from peak_memory import PeakTensorMemory  # noqa: E402

COMMON = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2,
              attn_implementation="eager")
# family -> (config class, causal-LM class, overrides). initializer_range 0.2
# gives logits of order 1 (the loss and softcap are then far from their
# small-logit linearisation); Gemma2's soft-cap 2.0 bends them visibly.
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 8}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"tie_word_embeddings": True}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 8}),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {"head_dim": 8, "hidden_act": "gelu_pytorch_tanh"}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 8, "final_logit_softcapping": 2.0,
                                                     "query_pre_attn_scalar": 8, "sliding_window": 8,
                                                     "hidden_activation": "gelu_pytorch_tanh"}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"pad_token_id": 0, "resid_pdrop": 0.0, "embd_pdrop": 0.0}),
}
GLU_OP = {"llama": "swiglu", "mistral": "swiglu", "qwen2": "swiglu", "qwen3": "swiglu", "gemma": "geglu[tanh]",
          "gemma2": "geglu[tanh]", "phi3": "swiglu (packed)"}


def make(family: str, dtype=torch.float32, seed: int = 0, **overrides):
    config_cls, model_cls, extra = FAMILIES[family]
    config = getattr(transformers, config_cls)(**{**COMMON, **extra, **overrides})
    torch.manual_seed(seed)
    return getattr(transformers, model_cls)(config).to(dtype)


def batch(vocab=128, b=2, s=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (b, s), generator=g)
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


@pytest.mark.parametrize("family", list(FAMILIES))
def test_loss_and_grads_float32(family):
    model = make(family)
    fused, changed = patched(model)
    assert changed["family"] == family and changed["loss"] == FAMILIES[family][1]
    mlp = next(iter(changed["glu"].values()))
    assert mlp == (COMMON["num_hidden_layers"], GLU_OP[family]), changed
    ids, labels = batch()
    ref, grads = loss_and_grads(model, ids, labels)
    out, fused_grads = loss_and_grads(fused, ids, labels)
    assert out.logits is None  # training with labels: the logits are never formed
    assert_matches(out.loss, ref.loss)
    assert grads.keys() == fused_grads.keys()
    for name, g in grads.items():
        assert fused_grads[name] is not None, name
        msg = mismatch(fused_grads[name], g)
        assert msg is None, f"{name}: {msg}"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_loss_and_grads_bfloat16(family):
    """bf16 model: every parameter gradient against the same weights in
    float64, at most twice torch's (the unpatched model's) error (the max over
    each tensor). The loss is checked at the head, on the same final hidden
    states (test_head_loss_bfloat16): a scalar at the end of a network of bf16
    roundings is a chaotic sample of them, not a comparable error."""
    model = make(family, torch.bfloat16)
    reference = copy.deepcopy(model).double()
    fused, _ = patched(model)
    ids, labels = batch()
    ref, grads = loss_and_grads(model, ids, labels)
    out, fused_grads = loss_and_grads(fused, ids, labels)
    _, grads64 = loss_and_grads(reference, ids, labels)
    # transformers upcasts the logits: a float32 loss; fastact's is float32 too
    assert out.loss.dtype == ref.loss.dtype == torch.float32
    for name, g in grads.items():
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


@pytest.mark.parametrize("family", list(FAMILIES))
def test_generate_unchanged(family):
    model = make(family)
    fused, _ = patched(model)
    ids, _ = batch(b=2, s=6)
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
    assert changed["dropout"] == {"Dropout": 2 * COMMON["num_hidden_layers"]}
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


def test_unknown_model_is_a_clear_error():
    config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=32)
    gpt2 = transformers.GPT2LMHeadModel(config)
    with pytest.raises(FastactTypeError, match=r"does not know GPT2LMHeadModel.*Supported: llama"):
        ft.apply(gpt2)
    with pytest.raises(FastactTypeError, match="expected a torch.nn.Module"):
        ft.apply("llama")


def test_unsupported_version_is_a_clear_error(monkeypatch):
    model = make("llama")
    for version in ("5.0.0", "4.50.3"):
        monkeypatch.setattr(transformers, "__version__", version)
        with pytest.raises(RuntimeError, match=rf"transformers>=4.51,<5, found transformers {version}"):
            ft.apply(model)
    assert ft.apply(model, check_version=False)["loss"] == "LlamaForCausalLM"


def test_installed_version_is_supported():
    assert ft.versions.supported(transformers.__version__), transformers.__version__


# --- what the patch relies on beyond transformers' public API ------------------------------

@pytest.mark.parametrize("family", list(FAMILIES))
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
