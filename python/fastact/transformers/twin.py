"""The one way the integration swaps a module's behaviour: its class becomes a
subclass of the same name (``repr``, ``save_pretrained``'s architectures,
``isinstance`` and state dicts are unchanged) that overrides a few members
and records the original class as ``fastact_base_class``."""
from __future__ import annotations

__all__ = ["twin_class", "is_twin"]

_TWINS: dict = {}  # (class, members) -> subclass


def twin_class(cls, members: dict, doc: str):
    """The same-name subclass of ``cls`` with ``members`` (functions), made once."""
    key = (cls, tuple(sorted(members.items())))
    if key not in _TWINS:
        _TWINS[key] = type(cls.__name__, (cls,), {
            **members, "__module__": cls.__module__, "__qualname__": cls.__qualname__,
            "fastact_base_class": cls, "__doc__": doc})
    return _TWINS[key]


def is_twin(module) -> bool:
    return getattr(type(module), "fastact_base_class", None) is not None
