"""fastact: fused CUDA/C++ kernels for training, registered as PyTorch operators."""
import torch

from . import _torch_check

# _C, or _C_emu in the emulation lane (test infrastructure, `make test-emu`)
_EXTENSION = _torch_check.extension()
# Before loading it: was the extension built for this torch? (a clear
# ImportError naming both versions and the fix, never an undefined symbol)
_torch_check.check(_EXTENSION)
try:
    if _EXTENSION == "_C_emu":
        from . import _C_emu as _C  # noqa: F401
    else:
        from . import _C  # noqa: F401  (loads the library; its initializers register the ops)
except ImportError as _err:
    _plain = _torch_check.load_error(_EXTENSION, _err)
    if _plain is _err:
        raise
    raise _plain from None
from . import ops as _ops  # noqa: F401  (fake kernels and autograd)
from . import functional, nn  # noqa: F401

if torch.distributed.is_available():
    from . import distributed  # noqa: F401  (DTensor sharding rules of every op)

__version__ = "0.1.0"

# The torch releases the extension is built and tested with: the Makefile's
# pin (TORCH_SPEC, the newest release) and those of its TORCH_MATRIX (make
# test-torch-matrix: CPU-only build, the quick tests), of which the oldest
# supported (pyproject's torch>=).
TESTED_TORCH = ("2.11.0", "2.15.0")

__all__ = ["functional", "nn", "cuda_compiled", "build_info", "empty_cpu_cache", "cpu_cache_stats", "__version__"]


def cuda_compiled() -> bool:
    """True when the extension holds CUDA kernels."""
    return build_info()["cuda_compiled"]


def empty_cpu_cache() -> int:
    """Frees the CPU output cache's buffers (large outputs freed by tensors
    and kept to be reused without page faults, at most FASTACT_CPU_CACHE_MB
    MiB; see csrc/include/fastact/alloc.h); returns the bytes freed. Like
    torch.cuda.empty_cache, it frees nothing that a tensor still uses."""
    return torch.ops.fastact._cpu_cache(True)[3]


def cpu_cache_stats() -> dict:
    """The CPU output cache: bytes cached (free, kept for reuse), bytes live
    (in tensors now) and the limit on the cached bytes."""
    cached, live, limit, _ = torch.ops.fastact._cpu_cache(False)
    return {"cached_bytes": cached, "live_bytes": live, "limit_bytes": limit}


def build_info() -> dict:
    """What the extension was built with, and what it runs on now."""
    raw = torch.ops.fastact._build_info()
    info = dict(line.split("=", 1) for line in raw.strip().splitlines())
    info["cuda_compiled"] = info.get("cuda_compiled") == "1"
    info["openmp"] = info.get("openmp") == "1"
    info["cuda_emulation"] = info.get("cuda_emulation") == "1"
    info["cuda_archs"] = [a for a in info.get("cuda_archs", "").replace(" ", ";").split(";") if a]
    # the torch of the build, as setup.py recorded it (with its local label,
    # e.g. 2.14.1+cu130; torch_compiled_with is the release from its headers)
    record = _torch_check.record(_EXTENSION) or {}
    info["torch_built_with"] = record.get("torch_version")
    info["torch_built_with_cuda"] = record.get("torch_cuda")
    info["torch_version"] = torch.__version__
    info["torch_cuda_version"] = torch.version.cuda
    info["cuda_available"] = torch.cuda.is_available()
    info["devices"] = ["cpu"] + [
        torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
    ]
    info["fastact_version"] = __version__
    info["tested_torch"] = list(TESTED_TORCH)
    return info
