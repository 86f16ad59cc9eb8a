"""The transformers releases the patch is written against and tested with.

What the patch relies on beyond transformers' public API (the attribute
names of the MLPs and causal-LM heads, the forward signatures, the
loss-function semantics, how the Trainer passes ``num_items_in_batch``) is
pinned by tests/test_transformers.py::test_private_surface_*; a release
outside this range gets a clear error from ``apply`` instead of a silent
mis-patch (``check_version=False`` overrides it at your own risk).
"""
from __future__ import annotations

import re

#: The supported range, as pinned in pyproject.toml's ``transformers`` extra.
#: 4.51 is the first release with Qwen3; 5.0 reorganised the modeling code.
MIN_VERSION = (4, 51, 0)
MAX_VERSION_EXCLUSIVE = (5, 0, 0)
SPEC = ">=4.51,<5"


def parse(version: str) -> tuple:
    """(major, minor, patch) of a version string ("4.57.6", "4.58.0.dev0")."""
    parts = [int(p) for p in re.findall(r"\d+", version.split("+")[0])[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


def supported(version: str) -> bool:
    return MIN_VERSION <= parse(version) < MAX_VERSION_EXCLUSIVE


def check(version: str) -> None:
    if not supported(version):
        raise RuntimeError(
            f"fastact.transformers supports transformers{SPEC}, found transformers {version}. Install a "
            f"supported release (pip install 'fastact[transformers]'), or pass check_version=False to "
            f"fastact.transformers.apply to try anyway (the forward and MLP patches assume the "
            f"{SPEC} modeling code).")
