"""The transformers releases the patch is tested with.

Correctness does not come from a version number: every loss patch is proven
on the model itself before it is enabled (:func:`.causal_lm.prove`), every
activation and experts gate on a probe tensor. The range says what CI runs:
the oldest supported release, 4.57.6 and the newest tested 5.x. Older
releases than :data:`MIN_VERSION` are refused (their modeling code predates
the keyword arguments the patch passes through); a release newer than the
newest tested one is tried, with one warning.
"""
from __future__ import annotations

import re
import warnings

#: The oldest supported release (pyproject.toml's ``transformers`` extra).
MIN_VERSION = (4, 52, 0)
#: The newest release CI tests (the Makefile's TRANSFORMERS_SPEC).
NEWEST_TESTED = (5, 24, 0)
SPEC = ">=4.52"

_warned: set = set()


def parse(version: str) -> tuple:
    """(major, minor, patch) of a version string ("4.57.6", "4.58.0.dev0")."""
    parts = [int(p) for p in re.findall(r"\d+", version.split("+")[0])[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


def supported(version: str) -> bool:
    return parse(version) >= MIN_VERSION


def check(version: str) -> None:
    """Raise for a release older than :data:`MIN_VERSION`; warn once for one
    newer than :data:`NEWEST_TESTED`."""
    if not supported(version):
        raise RuntimeError(
            f"fastact.transformers supports transformers{SPEC}, found transformers {version}. Upgrade "
            f"(pip install -U 'fastact[transformers]'), or pass check_version=False to "
            f"fastact.transformers.apply to try anyway (each patch is still proven on the model).")
    if parse(version)[:2] > NEWEST_TESTED[:2] and version not in _warned:
        _warned.add(version)
        newest = ".".join(map(str, NEWEST_TESTED))
        warnings.warn(f"fastact.transformers is tested up to transformers {newest}; found {version}. Each patch "
                      f"is proven on the model before it is enabled, and one that fails the proof is left out "
                      f"(see the report apply returns).", stacklevel=3)
