"""Train a small LLaMA twice from the same initial weights on the same
synthetic data: unpatched, and on fastact's kernels. Prints both loss curves
(they agree), step time and peak memory.

With transformers installed (pip install 'fastact[transformers]') the model is
transformers' LlamaForCausalLM from a tiny config (no download), and the
fastact copy is one call, ``fastact.transformers.apply(model)``: fused SwiGLU
MLPs and a linear_cross_entropy loss that never holds the logits. Without it
(or with --self-contained) the model is the self-contained decoder below, put
on fastact by hand (nn.patch, fastact.nn.SwiGLU, linear_cross_entropy).

    python examples/train_llama.py --steps 200
    python examples/train_llama.py --steps 200 --dropout 0.1   # self-contained: curves differ by the dropout draws
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import fastact  # noqa: E402
import fastact.functional as F  # noqa: E402
import fastact.nn as fnn  # noqa: E402


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class TorchSwiGLU(nn.Module):
    """The LLaMA FFN in plain torch: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.w2(self.act(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = RMSNorm(dim), RMSNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.ffn = TorchSwiGLU(dim, hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, s, 3, self.heads, d // self.heads).unbind(2)
        a = nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                       is_causal=True)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, s, d)))
        return x + self.drop(self.ffn(self.norm2(x)))


class TinyLlama(nn.Module):
    def __init__(self, vocab=512, dim=64, layers=2, heads=4, hidden=172, dropout=0.0):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, hidden, dropout) for _ in range(layers))
        self.norm = RMSNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.loss = nn.CrossEntropyLoss()
        self.fused_head = False

    def forward(self, tokens, targets):
        h = self.embed(tokens)
        for blk in self.blocks:
            h = blk(h)
        h = self.norm(h)
        if self.fused_head:
            return F.linear_cross_entropy(h.flatten(0, 1), self.head.weight, targets.flatten())
        return self.loss(self.head(h).flatten(0, 1), targets.flatten())


def fastact_version(model: TinyLlama) -> TinyLlama:
    """The same model and weights on fastact kernels."""
    model = copy.deepcopy(model)
    fnn.patch(model)  # Dropout, SiLU, CrossEntropyLoss -> fastact twins
    for blk in model.blocks:  # the FFN as one fused SwiGLU (same parameter names w1, w2, w3)
        fused = fnn.SwiGLU(blk.ffn.w1.in_features, blk.ffn.w1.out_features)
        fused.load_state_dict(blk.ffn.state_dict())
        blk.ffn = fused.to(next(model.parameters()).device)
    model.fused_head = True
    return model


def transformers_available() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


class HFCausalLM(nn.Module):
    """transformers' LlamaForCausalLM behind this script's (tokens, targets)
    interface: the labels are the tokens, shifted inside the model."""

    def __init__(self, vocab, dim, layers, heads, hidden, dropout):
        super().__init__()
        import transformers

        config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=dim, intermediate_size=hidden,
                                          num_hidden_layers=layers, num_attention_heads=heads,
                                          num_key_value_heads=heads, max_position_embeddings=1024,
                                          attention_dropout=dropout, attn_implementation="sdpa")
        self.lm = transformers.LlamaForCausalLM(config)
        self.fastact_patched = {}

    def forward(self, tokens, targets):
        full = torch.cat([tokens, targets[:, -1:]], 1)
        return self.lm(input_ids=full, labels=full).loss


def hf_fastact_version(model: HFCausalLM) -> HFCausalLM:
    """The same model and weights, with fastact.transformers.apply."""
    import fastact.transformers

    model = copy.deepcopy(model)
    fastact.transformers.apply(model.lm)
    model.fastact_patched = model.lm.fastact_patched
    return model


def synthetic_batches(steps, batch, seq, vocab, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    # a learnable pattern: each next token is a fixed function of the previous one
    table = torch.randperm(vocab, generator=g)
    for _ in range(steps):
        start = torch.randint(0, vocab, (batch, 1), generator=g)
        seqs = [start]
        for _ in range(seq):
            seqs.append(table[seqs[-1]])
        toks = torch.cat(seqs, 1).to(device)
        yield toks[:, :-1], toks[:, 1:]


def train(model, steps, batch, seq, vocab, device, lr=3e-3):
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses, times = [], []
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for x, y in synthetic_batches(steps, batch, seq, vocab, device):
        t0 = time.perf_counter()
        loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return losses, times, peak


def main(steps=200, batch=8, seq=64, vocab=512, dim=64, layers=2, dropout=0.0, device=None, verbose=True,
         use_transformers=None):
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if use_transformers is None:
        use_transformers = transformers_available()
    torch.manual_seed(0)
    if use_transformers:
        eager = HFCausalLM(vocab, dim, layers, 4, int(dim * 8 / 3), dropout).to(device)
        fused = hf_fastact_version(eager)
    else:
        eager = TinyLlama(vocab, dim, layers, hidden=int(dim * 8 / 3), dropout=dropout).to(device)
        fused = fastact_version(eager)
    results = {}
    for name, model in (("eager", eager), ("fastact", fused)):
        torch.manual_seed(1)
        results[name] = train(model, steps, batch, seq, vocab, device)
    if verbose:
        kind = "transformers LlamaForCausalLM" if use_transformers else "self-contained decoder"
        print(f"{kind}, device {device}, fastact {fastact.__version__}, patched: {fused.fastact_patched}")
        print(f"{'step':>5} {'eager loss':>12} {'fastact loss':>13}")
        for i in range(0, steps, max(1, steps // 10)):
            print(f"{i:5d} {results['eager'][0][i]:12.5f} {results['fastact'][0][i]:13.5f}")
        for name, (losses, times, peak) in results.items():
            med = sorted(times[1:] or times)[len(times[1:] or times) // 2] * 1e3
            mem = f", peak {peak:.0f} MiB" if peak is not None else ""
            print(f"{name:8s} final loss {losses[-1]:.5f}, median step {med:.2f} ms{mem}")
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--self-contained", action="store_true", help="the decoder defined here, not transformers'")
    a = ap.parse_args()
    main(a.steps, a.batch, a.seq, a.vocab, a.dim, a.layers, a.dropout,
         use_transformers=False if a.self_contained else None)
