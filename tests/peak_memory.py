"""Peak tensor memory of a computation, deterministic on any device.

On CUDA, ``torch.cuda.max_memory_allocated`` is exact. On the CPU there is no
allocator statistic and the process's peak RSS depends on the C allocator;
:class:`PeakTensorMemory` counts instead the bytes of every storage that an
operator returns (each storage once, released when it is freed), which is
what a caching allocator would hold. Scratch memory that a kernel allocates
and frees inside one operator is not seen (the same for the compared
computations when they share operators).
"""
from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakTensorMemory(TorchDispatchMode):
    """``with PeakTensorMemory() as m: ...`` then ``m.peak`` (bytes) is the
    largest total of storages created inside the block and alive at once."""

    def __init__(self):
        super().__init__()
        self.live: dict = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key in self.live or storage.nbytes() == 0:
                continue  # a view, an in-place result, or nothing
            self.live[key] = storage.nbytes()
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._free, key)
        return out

    def _free(self, key):
        self.current -= self.live.pop(key, 0)
