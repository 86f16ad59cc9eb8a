"""Is the compiled extension built for the torch running now? Checked before
it is loaded.

A C++ extension of torch links against torch's C++ symbols, which change
between releases: loaded under another torch it fails with an "undefined
symbol" error, or worse. Every build writes beside the module a record of
the torch it was built against (``_C.build.json``, by setup.py), and
``import fastact`` compares it with the running torch first:

- the release (``2.14.1``, and any pre-release or dev part of it) must be
  the same: torch's C++ ABI is only kept within a release;
- a build with CUDA kernels links torch's CUDA libraries and the CUDA
  runtime of its toolkit: the running torch must have CUDA of the same major
  version (``+cu130`` under ``+cu132`` is fine, under ``+cu126`` or ``+cpu``
  it is not);
- a CPU-only build (and the emulation build) runs under any variant of the
  same release (``+cpu``, ``+cu126``, ``+cu130``...): they share the C++ ABI
  of the CPU libraries it links.

FASTACT_SKIP_TORCH_CHECK=1 skips the comparison (for developers who know
better); a failure to load the extension is still reported plainly.
"""
from __future__ import annotations

import json
import os
from typing import Optional

SKIP_ENV = "FASTACT_SKIP_TORCH_CHECK"
EMULATION_ENV = "FASTACT_CUDA_EMULATION"
_HERE = os.path.dirname(os.path.abspath(__file__))


def extension() -> str:
    """The extension ``import fastact`` loads: ``_C``, or in the emulation
    lane (FASTACT_CUDA_EMULATION=1, test infrastructure) ``_C_emu``, the CUDA
    kernels of csrc/cuda/ compiled for the CPU against a SIMT emulator and
    registered for CPU tensors, in place of the CPU kernels."""
    return "_C_emu" if os.environ.get(EMULATION_ENV, "0") not in ("", "0") else "_C"


def record(module: str = "_C") -> Optional[dict]:
    """The build record of ``fastact.<module>``, or None when there is none
    (a build by an older setup.py)."""
    try:
        with open(os.path.join(_HERE, f"{module}.build.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def release(version: str) -> str:
    """``2.14.1`` of ``2.14.1+cu130``: the version without its local label."""
    return version.split("+", 1)[0]


def _cuda_major(version: Optional[str]) -> Optional[str]:
    return version.split(".", 1)[0] if version else None


def mismatch(rec: dict, torch_version: str, torch_cuda: Optional[str]) -> Optional[str]:
    """Why the build of ``rec`` cannot run under this torch, or None."""
    built = rec.get("torch_version", "")
    if release(built) != release(torch_version):
        return f"it was built for torch {built} and this is torch {torch_version}"
    if rec.get("cuda_compiled"):
        built_cuda = rec.get("torch_cuda")
        if torch_cuda is None:
            return (f"it was built with CUDA kernels for torch {built} (CUDA {built_cuda}) and this is "
                    f"torch {torch_version}, without CUDA")
        if _cuda_major(built_cuda) != _cuda_major(torch_cuda):
            return (f"it was built for torch {built} (CUDA {built_cuda}) and this is torch "
                    f"{torch_version} (CUDA {torch_cuda})")
    return None


def _fix(module: str, torch_version: str) -> str:
    if module == "_C_emu":
        return "rebuild the emulation lane against this torch: make build-emu (or unset FASTACT_CUDA_EMULATION)"
    return (f"install the fastact wheel built for torch {release(torch_version)} (its version reads "
            f"+torch{release(torch_version)}...), or rebuild fastact against this torch from its source "
            f"tree or sdist: pip install --no-build-isolation .  (make build for a development tree)")


def check(module: str = "_C") -> None:
    """Raises ImportError when ``fastact.<module>``'s record says it was built
    for another torch."""
    if os.environ.get(SKIP_ENV, "0") not in ("", "0"):
        return
    rec = record(module)
    if rec is None:
        return
    import torch

    why = mismatch(rec, torch.__version__, torch.version.cuda)
    if why:
        raise ImportError(
            f"fastact's compiled extension (fastact.{module}) does not match the installed torch: {why}. "
            f"A torch C++ extension runs only under the torch release it was built against. "
            f"Fix: {_fix(module, torch.__version__)}. "
            f"({SKIP_ENV}=1 skips this check.)")


def load_error(module: str, err: ImportError) -> ImportError:
    """A plain ImportError in place of the loader's error when the extension
    cannot be loaded under this torch (an undefined symbol, a missing torch
    library) or was never built; otherwise ``err`` itself."""
    import torch

    text = str(err)
    rec = record(module)
    built = f"torch {rec['torch_version']}" if rec else "another torch (it has no build record)"
    if "undefined symbol" in text or "cannot open shared object file" in text or "version `" in text:
        return ImportError(
            f"fastact's compiled extension (fastact.{module}) cannot be loaded under torch "
            f"{torch.__version__}: it was built for {built}, and a symbol or library of that torch is "
            f"missing here. Fix: {_fix(module, torch.__version__)}.")
    if f"cannot import name '{module}'" in text or f"No module named 'fastact.{module}'" in text:
        how = ("make build-emu" if module == "_C_emu" else
               "pip install --no-build-isolation .  (make build for a development tree)")
        return ImportError(f"fastact's compiled extension (fastact.{module}) is not built: {how}.")
    return err
