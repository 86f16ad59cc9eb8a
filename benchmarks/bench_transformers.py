"""A training step (forward with labels + backward) of small Hugging Face
models with a 128k vocabulary, one per family group (dense: LLaMA; MoE:
Qwen3-MoE; vision-language: Qwen2.5-VL, a text batch), unpatched vs
``fastact.transformers.apply``: median time and peak memory. The LM head
dominates at this vocabulary: the unpatched step holds the (tokens, V)
logits, their float32 log-softmax and their gradient; the patched one a chunk
of them.

Peak memory: on CUDA ``max_memory_allocated`` beyond what the weights and
gradients hold; on the CPU the bytes of the tensors alive at once
(tests/peak_memory.py, exact and deterministic) and the peak RSS of a fresh
process running one step (what the OS saw, allocator included).

    python benchmarks/bench_transformers.py --tokens 1024      # standalone
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

import torch

from harness import RSS_PEAK_PRELUDE, Row

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

VOCAB = 128256
# LLaMA-3's vocabulary on a small body (2 layers, hidden 256): the head is what
# differs between the two; GPU: a 1B-like width
CPU_CONFIG = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2)
GPU_CONFIG = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=2, num_attention_heads=32,
                  num_key_value_heads=8)
CPU_TOKENS = (2, 512)
GPU_TOKENS = (4, 2048)
#: (model type of tests/hf_zoo.py, family group)
GROUPS = (("llama", "dense"), ("qwen3_moe", "moe"), ("qwen2_5_vl", "vlm"))


def available() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def make_model(device, dtype, config_kwargs, vocab=VOCAB, patched=False, seed=0, model_type="llama"):
    import hf_zoo

    # (MoE: the experts' width and count scale with the body)
    head_dim = config_kwargs["hidden_size"] // config_kwargs["num_attention_heads"]
    sizes = dict(config_kwargs, moe_intermediate_size=config_kwargs["intermediate_size"] // 2, num_experts=8,
                 num_experts_per_tok=2, head_dim=head_dim)
    if model_type == "qwen2_5_vl":  # the multimodal rotary sections cover head_dim / 2 (Qwen's 2:1:1 split)
        section = [head_dim // 4, head_dim // 8, head_dim // 8]
        sizes.update(rope_scaling={"type": "mrope", "rope_type": "default", "mrope_section": section},
                     rope_parameters={"rope_type": "default", "mrope_section": section, "rope_theta": 10000.0})
    model = hf_zoo.make(model_type, dtype, seed, vocab_size=vocab, max_position_embeddings=4096,
                        initializer_range=0.02, **sizes)
    model = model.to(device=device).train()
    if patched:
        import fastact.transformers

        fastact.transformers.apply(model)
    return model


def make_batch(device, vocab, batch, seq, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    return ids.to(device), ids.clone().to(device)


def train_step(model, ids, labels):
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=labels).loss.backward()


_RSS_SCRIPT = """
import sys, torch
sys.path[:0] = [{bench!r}, {python!r}, {tests!r}]
import bench_transformers as b
model = b.make_model("cpu", getattr(torch, {dtype!r}), {config!r}, patched={patched!r}, model_type={model_type!r})
ids, labels = b.make_batch("cpu", b.VOCAB, *{tokens!r})
b.train_step(model, ids, labels)  # gradients allocated once, as in a training loop
{rss_prelude}
b.train_step(model, ids, labels)
print(status("VmHWM") - before)
"""


def cpu_rss_peak(patched, dtype, config, tokens, model_type="llama"):
    code = _RSS_SCRIPT.format(bench=os.path.dirname(os.path.abspath(__file__)), python=os.path.join(ROOT, "python"),
                              dtype=str(dtype).replace("torch.", ""), config=config, patched=patched,
                              tokens=tuple(tokens), rss_prelude=RSS_PEAK_PRELUDE, model_type=model_type,
                              tests=os.path.join(ROOT, "tests"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def tensor_peak_mb(model, ids, labels):
    from peak_memory import PeakTensorMemory

    model.zero_grad(set_to_none=True)
    with PeakTensorMemory() as m:
        model(input_ids=ids, labels=labels).loss.backward()
    return m.peak / 2**20


def cuda_peak_mb(model, ids, labels):
    train_step(model, ids, labels)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    train_step(model, ids, labels)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def run(device, timer, copy_gbps, full=False, with_compile=True, dtypes=(torch.float32,), progress=None,
        tokens=None, config=None):
    if not available():
        return []
    config = config or (GPU_CONFIG if device == "cuda" else CPU_CONFIG)
    batch, seq = tokens or (GPU_TOKENS if device == "cuda" else CPU_TOKENS)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if device != "cuda":  # seconds per step on CPU: few repeats
        from harness import Timer
        timer = Timer(device, warmup=1, repeats=3)
    ids, labels = make_batch(device, VOCAB, batch, seq)
    logits_mb = ids.numel() * VOCAB * 4 / 2**20  # the float32 logits (upcast) of the unpatched loss
    rows = []
    for model_type, group in GROUPS:
        op = f"{group} train step[{model_type},V={VOCAB},H={config['hidden_size']},L={config['num_hidden_layers']}]"
        pair = []
        for impl in ("eager", "fastact"):
            model = make_model(device, dtype, config, patched=impl == "fastact", model_type=model_type)
            ms = timer(lambda: train_step(model, ids, labels))
            extra = {"logits_fp32_mb": logits_mb}
            if device == "cuda":
                peak = cuda_peak_mb(model, ids, labels)
            else:
                peak = tensor_peak_mb(model, ids, labels)
                extra["rss_peak_mb"] = cpu_rss_peak(impl == "fastact", dtype, config, (batch, seq), model_type)
            pair.append(Row(op=op, case="fwd+bwd", impl=impl, dtype=str(dtype).replace("torch.", ""),
                            shape=f"({batch}, {seq}) tokens", ms=ms, gbps=0.0, pct_copy=0.0, peak_mb=peak,
                            extra=extra))
            del model
            if progress:
                progress()
        for r in pair:
            r.speedup_vs_eager = pair[0].ms / r.ms
        rows += pair
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tokens", type=int, default=None, help="tokens per step (batch 2)")
    args = ap.parse_args()
    from harness import Timer, context

    tokens = (2, args.tokens // 2) if args.tokens else None
    timer = Timer(args.device)
    ctx = context(args.device)
    rows = run(args.device, timer, 0.0, tokens=tokens)
    print(f"{ctx['device_name']}, torch {ctx['torch']}, fastact @ {ctx['commit']}")
    print("| step | impl | shape | step ms | peak MiB (tensors / CUDA) | peak RSS MiB | fp32 logits MiB |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        rss = r.extra.get("rss_peak_mb")
        print(f"| {r.op} | {r.impl} | {r.shape} | {r.ms:.1f} | {r.peak_mb:.0f} | {'' if rss is None else f'{rss:.0f}'} | "
              f"{r.extra['logits_fp32_mb']:.0f} |")


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(ROOT, "python"))
    main()
