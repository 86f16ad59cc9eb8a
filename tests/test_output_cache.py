"""The CPU output cache (csrc/include/fastact/alloc.h): large CPU outputs come
from a bounded cache of freed buffers, so a training loop's repeated sizes
cost no page faults. These tests check that it reuses, accounts, bounds and
releases buffers, and that tensors on its buffers behave like any other."""
import os
import subprocess
import sys

import pytest
import torch

import fastact
import fastact.functional as F

BIG = 2 * 2**20  # float32 elements: 8 MiB, above the cache's 4 MiB floor


def _input(n=BIG, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g).to(dtype)


@pytest.fixture(autouse=True)
def _cache_enabled():
    if fastact.cpu_cache_stats()["limit_bytes"] == 0:
        pytest.skip("FASTACT_CPU_CACHE_MB=0 in this environment")


def test_a_freed_output_is_reused_for_the_same_size():
    x = _input()
    y = F.relu(x)
    ptr = y.data_ptr()
    del y
    y = F.relu(x)
    assert y.data_ptr() == ptr
    torch.testing.assert_close(y, torch.relu(x), rtol=0, atol=0)


def test_stats_count_live_and_cached_bytes_and_empty_frees_only_cached():
    fastact.empty_cpu_cache()
    x = _input()
    before = fastact.cpu_cache_stats()
    y = F.silu(x)
    alive = fastact.cpu_cache_stats()
    assert alive["live_bytes"] - before["live_bytes"] == y.nbytes  # 8 MiB: a multiple of 2 MiB
    assert alive["cached_bytes"] == before["cached_bytes"] == 0
    z = F.relu(x)
    del z
    cached = fastact.cpu_cache_stats()
    assert cached["cached_bytes"] == y.nbytes
    assert cached["live_bytes"] == alive["live_bytes"]
    assert fastact.empty_cpu_cache() == y.nbytes
    assert fastact.cpu_cache_stats()["cached_bytes"] == 0
    # a live tensor's buffer is untouched by empty_cpu_cache
    torch.testing.assert_close(y, torch.nn.functional.silu(x))


def test_output_keeps_the_input_strides_and_values():
    x = _input().reshape(1024, 2048).t()  # dense, non-contiguous
    y = F.gelu(x)
    assert y.stride() == torch.empty_like(x).stride()
    torch.testing.assert_close(y, torch.nn.functional.gelu(x))
    y.sum().item()  # readable through its strides


def test_cached_storage_resizes_and_shares():
    x = _input()
    y = F.relu(x)
    y.resize_(BIG + 3 * 2**20)  # grows through the same allocator; the old values stay
    torch.testing.assert_close(y[:BIG], torch.relu(x), rtol=0, atol=0)
    y.resize_(16)
    assert y.shape == (16,)
    z = F.relu(x).share_memory_()  # moves the data to shared memory, freeing the cached buffer
    assert z.is_shared()
    torch.testing.assert_close(z, torch.relu(x), rtol=0, atol=0)


def test_outputs_and_gradients_of_a_training_step_are_correct_when_reused():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(BIG, generator=g, requires_grad=True)
    for step in range(3):  # the same sizes every step: buffers come back from the cache
        x = _input(seed=step)
        y = F.silu(x * w)
        (dw,) = torch.autograd.grad((y * y).sum(), w)
        ref_w = w.detach().clone().requires_grad_(True)
        ref = torch.nn.functional.silu(x * ref_w)
        (ref_dw,) = torch.autograd.grad((ref * ref).sum(), ref_w)
        torch.testing.assert_close(y.detach(), ref.detach())
        torch.testing.assert_close(dw, ref_dw)


def _run(code: str, **env) -> str:
    full_env = {**os.environ, **env}
    out = subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


LIMIT_CODE = """
import torch, fastact, fastact.functional as F
x = torch.randn(2 * 2**20)  # 8 MiB outputs
ys = [F.relu(x) for _ in range(4)]
ptrs = [y.data_ptr() for y in ys]
for i in range(4):  # freed in order: with a 16 MiB limit the last two stay cached
    ys[i] = None
s = fastact.cpu_cache_stats()
assert s["limit_bytes"] == 16 * 2**20, s
assert s["cached_bytes"] == 16 * 2**20, s
a, b = F.relu(x), F.relu(x)  # the most recently freed first
assert {a.data_ptr(), b.data_ptr()} == set(ptrs[2:]), (a.data_ptr(), b.data_ptr(), ptrs)
assert torch.equal(a, torch.relu(x)) and torch.equal(b, torch.relu(x))
big = F.relu(torch.randn(5 * 2**20))  # 20 MiB: over the limit, never cached
del big
assert fastact.cpu_cache_stats()["cached_bytes"] == 0, fastact.cpu_cache_stats()
print("ok")
"""

OFF_CODE = """
import torch, fastact, fastact.functional as F
x = torch.randn(2 * 2**20)
y = F.relu(x)
s = fastact.cpu_cache_stats()
assert s == {"cached_bytes": 0, "live_bytes": 0, "limit_bytes": 0}, s
assert torch.equal(y, torch.relu(x))
del y
assert fastact.cpu_cache_stats()["cached_bytes"] == 0
print("ok")
"""


def test_the_limit_bounds_the_cached_bytes_evicting_the_least_recently_freed():
    assert _run(LIMIT_CODE, FASTACT_CPU_CACHE_MB="16").strip() == "ok"


def test_a_zero_limit_turns_the_cache_off():
    assert _run(OFF_CODE, FASTACT_CPU_CACHE_MB="0").strip() == "ok"


def test_a_forked_child_allocates_and_frees_through_the_cache():
    x = _input()
    kept = F.relu(x)  # a live buffer inherited by the child, and a cached one
    del kept
    pid = os.fork()
    if pid == 0:  # child: must not deadlock or crash on the inherited cache
        code = 1
        try:
            # (one thread: GNU OpenMP's pool does not survive a fork; torch's
            # own ops hang in such a child too, as DataLoader workers know)
            torch.set_num_threads(1)
            y = F.relu(x)
            ok = torch.equal(y, torch.relu(x))
            del y
            code = 0 if ok else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
