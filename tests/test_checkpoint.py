"""Activation checkpointing of fused dropout: the recomputation redraws the
same (seed, offset) because torch.utils.checkpoint restores the RNG state
before it (as for torch's own dropout), so the mask -- a pure function of
(seed, offset, index) -- and every gradient are bitwise those of the run
without checkpointing; also under torch.compile."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper
from torch.utils.checkpoint import checkpoint

import fastact.functional as F
import fastact.nn as fnn


class Block(nn.Module):
    """Every fastact random op, and the fused SwiGLU."""

    def __init__(self, dim=12, hidden=24):
        super().__init__()
        self.mlp = fnn.SwiGLU(dim, hidden)
        self.bias = nn.Parameter(torch.randn(dim))
        self.act = fnn.GELU(approximate="tanh")

    def forward(self, x):
        h = F.dropout(self.act(x), 0.3)
        h = F.dropout_add(self.mlp(h), x, 0.2)
        h = F.bias_dropout_add(h, self.bias, x, 0.25)
        h = F.bias_act_dropout(h, self.bias, "silu", 0.4)
        return F.rrelu(h, training=True) + torch.nn.functional.dropout(h, 0.1)  # torch's own alongside


def run(fn, model, x, seed=0):
    torch.manual_seed(seed)
    xx = x.clone().requires_grad_(True)
    out = fn(xx)
    out.square().sum().backward()
    grads = [xx.grad] + [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    return out.detach(), grads


def same(a, b):
    return all(torch.equal(u, v) for u, v in zip(a[1], b[1])) and torch.equal(a[0], b[0])


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = Block().double()
    return model, torch.randn(3, 5, 12, dtype=torch.float64)


def test_checkpoint_recomputes_the_mask(setup):
    model, x = setup
    plain = run(model, model, x)
    ckpt = run(lambda t: checkpoint(model, t, use_reentrant=False), model, x)
    assert same(plain, ckpt)
    # the test can tell: without restoring the RNG the recomputation draws other masks
    other = run(lambda t: checkpoint(model, t, use_reentrant=False, preserve_rng_state=False), model, x)
    assert torch.equal(other[0], plain[0]) and not all(torch.equal(u, v) for u, v in zip(other[1], plain[1]))


def test_checkpoint_wrapper(setup):
    model, x = setup
    plain = run(model, model, x)
    for impl in (CheckpointImpl.NO_REENTRANT, CheckpointImpl.REENTRANT):
        wrapped = checkpoint_wrapper(model, checkpoint_impl=impl)
        assert same(plain, run(wrapped, model, x)), impl


def test_checkpoint_under_compile(setup):
    model, x = setup
    torch._dynamo.reset()
    plain = run(model, model, x)
    compiled = torch.compile(lambda t: checkpoint(model, t, use_reentrant=False), backend="aot_eager")
    ckpt = run(compiled, model, x)
    # aot_eager runs the same kernels: the same masks and bitwise the same gradients
    assert same(plain, ckpt)
