"""The training demo: eager and fastact runs of the same model agree."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))

import train_llama  # noqa: E402


import pytest  # noqa: E402


@pytest.mark.parametrize("use_transformers", [
    False, pytest.param(True, marks=pytest.mark.skipif(not train_llama.transformers_available(),
                                                         reason="transformers not installed"))])
def test_train_llama_losses_agree(use_transformers):
    res = train_llama.main(steps=4, batch=2, seq=16, vocab=128, dim=32, layers=1, device="cpu", verbose=False,
                           use_transformers=use_transformers)
    eager, fused = res["eager"][0], res["fastact"][0]
    assert len(eager) == len(fused) == 4
    for a, b in zip(eager, fused):
        assert abs(a - b) <= 1e-4 * abs(a), (eager, fused)
    assert fused[-1] < fused[0]  # it learns
