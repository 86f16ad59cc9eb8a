"""Controls of the CUDA emulation lane (test infrastructure).

In the emulation build (``FASTACT_CUDA_EMULATION=1``, see csrc/emu/simt.h)
the CUDA kernels run on CPU tensors through a SIMT emulator. This module
reaches the emulator's C interface: the emulated device's multiprocessor
count and thread order, the launch log, and traces that count each kernel's
global-memory bytes per load/store site and per memory region, and the
32-byte sectors of every warp-wide access.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
from typing import Dict, Iterator, Optional

import torch

from . import build_info

ORDERS = {"mixed": 0, "forward": 1, "reverse": 2, "shuffled": 3}


def enabled() -> bool:
    """Whether the loaded fastact library is the emulation build."""
    return build_info()["cuda_emulation"]


def _lib() -> ctypes.CDLL:
    from . import _C

    lib = ctypes.CDLL(_C.__file__)
    lib.fastact_emu_report.restype = ctypes.c_char_p
    lib.fastact_emu_coverage.restype = ctypes.c_char_p
    lib.fastact_emu_launch_count.restype = ctypes.c_int64
    lib.fastact_emu_add_region.argtypes = [ctypes.c_char_p, ctypes.c_uint64, ctypes.c_uint64]
    lib.fastact_emu_configure.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_uint64]
    lib.fastact_emu_row_plan.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_int,
                                         ctypes.POINTER(ctypes.c_int64)]
    return lib


_LIB: Optional[ctypes.CDLL] = None


def lib() -> ctypes.CDLL:
    global _LIB
    if not enabled():
        raise RuntimeError("fastact: the CUDA emulator is only in the emulation build (FASTACT_CUDA_EMULATION=1)")
    if _LIB is None:
        _LIB = _lib()
    return _LIB


def configure(multiprocessors: int = 8, order: str = "mixed", seed: int = 0x5EED) -> None:
    """The emulated device's multiprocessor count (which sizes the grids the
    host code picks), and the order the threads of a block run in between
    barriers ('mixed' changes it from one barrier interval to the next)."""
    lib().fastact_emu_configure(multiprocessors, ORDERS[order], seed)


def multiprocessors() -> int:
    return lib().fastact_emu_multiprocessors()


def reset() -> None:
    """Clears the launch log and the counter."""
    lib().fastact_emu_reset()


def launch_count() -> int:
    return lib().fastact_emu_launch_count()


def report() -> dict:
    """The launches since the last reset or trace, with their sites and regions when traced."""
    return json.loads(lib().fastact_emu_report().decode())


def coverage() -> list:
    """[kernel as written at its launch, its parameter types, launches] for
    every kernel variant launched since the library was loaded."""
    return json.loads(lib().fastact_emu_coverage().decode())


def row_plan(rows: int, classes: int, dtype: torch.dtype, elementwise: bool = False) -> dict:
    """The launch the row kernels' host code picks for [rows, classes] of
    `dtype` on the emulated device (csrc/cuda/row_launch.cuh), at any shape,
    without running it: `lanes` threads per row (4 to 32 lanes of a warp, or
    256: a block), `splits` blocks per row of `span` columns, and the grid
    and block of the launch. `elementwise`: the plan of the class-index
    cross-entropy backward, which splits long rows into short spans always."""
    out = (ctypes.c_int64 * 5)()
    lib().fastact_emu_row_plan(int(elementwise), rows, classes, dtype.itemsize, out)
    lanes, span, splits, gx, gy = out
    return {"lanes": lanes, "span": span, "splits": splits, "grid": [gx, gy, 1], "block": [256, 1, 1]}


def launches() -> list:
    """Kernel names (as written at their launch) since the last reset."""
    return [l["kernel"] for l in report()["launches"]]


@contextlib.contextmanager
def trace(regions: Optional[Dict[str, torch.Tensor]] = None) -> Iterator[dict]:
    """Traces the launches inside the block; the yielded dict receives the
    report at exit. `regions` names tensors whose bytes are counted (how
    many times each byte was read and written)."""
    out: dict = {}
    lib().fastact_emu_trace_begin()
    try:
        for name, t in (regions or {}).items():
            nbytes = t.untyped_storage().nbytes() if t.numel() else 0
            lib().fastact_emu_add_region(name.encode(), t.untyped_storage().data_ptr(), nbytes)
        yield out
    finally:
        lib().fastact_emu_trace_end()
        out.update(report())
