"""fastact.nn: every twin is constructed like its torch.nn module, computes the
same thing, shares its state dict both ways, and patch() swaps them in place."""
from __future__ import annotations

import pytest
import torch

import fastact.nn as fnn

TWINS = [
    (torch.nn.ReLU, {}), (torch.nn.ReLU6, {}), (torch.nn.LeakyReLU, {"negative_slope": 0.2}),
    (torch.nn.PReLU, {"num_parameters": 6, "init": 0.1}), (torch.nn.RReLU, {"lower": 0.1, "upper": 0.3}),
    (torch.nn.ELU, {"alpha": 0.7}), (torch.nn.SELU, {}), (torch.nn.CELU, {"alpha": 1.5}),
    (torch.nn.GELU, {"approximate": "tanh"}), (torch.nn.SiLU, {}), (torch.nn.Mish, {}),
    (torch.nn.Sigmoid, {}), (torch.nn.Tanh, {}), (torch.nn.LogSigmoid, {}), (torch.nn.Hardswish, {}),
    (torch.nn.Hardsigmoid, {}), (torch.nn.Hardtanh, {"min_val": -2.0, "max_val": 3.0}),
    (torch.nn.Softplus, {"beta": 2.0, "threshold": 5.0}), (torch.nn.Softshrink, {"lambd": 0.3}),
    (torch.nn.Hardshrink, {"lambd": 0.3}), (torch.nn.Tanhshrink, {}), (torch.nn.Softsign, {}),
    (torch.nn.Threshold, {"threshold": 0.1, "value": -1.0}), (torch.nn.GLU, {"dim": 1}),
]


@pytest.mark.parametrize("torch_cls,kwargs", TWINS, ids=[c.__name__ for c, _ in TWINS])
def test_twin_matches_torch_module(torch_cls, kwargs, device):
    twin_cls = getattr(fnn, torch_cls.__name__)
    assert issubclass(twin_cls, torch_cls)
    ours, theirs = twin_cls(**kwargs).to(device), torch_cls(**kwargs).to(device)
    ours.eval(), theirs.eval()  # RReLU is deterministic in eval
    assert repr(ours) == repr(theirs)
    x = torch.randn(4, 6, 5, device=device)
    theirs.load_state_dict(ours.state_dict())
    ours.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(ours(x), theirs(x))
    if "inplace" in torch_cls.__init__.__code__.co_varnames:
        ip = twin_cls(**kwargs, inplace=True).to(device).eval()
        y = x.clone()
        assert ip(y) is y
        torch.testing.assert_close(y, theirs(x))


def test_prelu_state_dict_both_ways():
    ours = fnn.PReLU(3)
    theirs = torch.nn.PReLU(3)
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor([0.1, 0.2, 0.3]))
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 4, requires_grad=True)
    torch.testing.assert_close(ours(x), theirs(x))
    ours(x).sum().backward()
    g = ours.weight.grad.clone()
    theirs(x).sum().backward()
    torch.testing.assert_close(g, theirs.weight.grad)


def test_swish_quickgelu_squaredrelu_modules():
    x = torch.randn(5, 7)
    s = fnn.Swish(1.5)
    assert isinstance(s.beta, torch.nn.Parameter)
    y = s(x)
    torch.testing.assert_close(y, x * torch.sigmoid(1.5 * x))
    y.sum().backward()
    assert s.beta.grad is not None
    assert isinstance(fnn.Swish(2.0, learnable=False).beta, float)
    torch.testing.assert_close(fnn.QuickGELU()(x), x * torch.sigmoid(1.702 * x))
    torch.testing.assert_close(fnn.SquaredReLU()(x), torch.relu(x) ** 2)


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)
        self.act = torch.nn.GELU()
        self.drop = torch.nn.Dropout(0.1)
        self.seq = torch.nn.Sequential(torch.nn.SiLU(), torch.nn.Linear(8, 8), torch.nn.SiLU(),
                                       torch.nn.PReLU(8))

    def forward(self, x):
        return self.seq(self.drop(self.act(self.fc(x))))


class MySiLU(torch.nn.SiLU):
    pass


def test_patch_swaps_in_place():
    torch.manual_seed(0)
    model = Block()
    model.extra = MySiLU()  # a user subclass keeps its own class
    model.eval()
    x = torch.randn(3, 8)
    before = model(x)
    prelu_weight = model.seq[3].weight
    out = fnn.patch(model)
    assert out is model
    assert model.fastact_patched == {"GELU": 1, "Dropout": 1, "SiLU": 2, "PReLU": 1}
    assert type(model.act) is fnn.GELU and type(model.seq[0]) is fnn.SiLU
    assert type(model.fc) is torch.nn.Linear and type(model.extra) is MySiLU
    assert model.seq[3].weight is prelu_weight  # parameters kept
    assert not model.training and not model.act.training  # training mode kept
    torch.testing.assert_close(model(x), before)
    again = fnn.patch(model)
    assert again.fastact_patched == model.fastact_patched  # nothing left to swap
