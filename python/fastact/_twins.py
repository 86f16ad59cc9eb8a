"""torch.nn class -> its fastact.nn twin: what ``fastact.nn.patch`` and
``fastact.transformers.apply`` swap a module's class for."""
from __future__ import annotations

import torch

__all__ = ["nn_twins"]


def nn_twins(module) -> dict:
    """torch.nn class -> fastact twin, for every class defined in ``module``
    (fastact.nn) that subclasses the torch.nn class of its name."""
    twins = {}
    for obj in vars(module).values():
        if isinstance(obj, type) and issubclass(obj, torch.nn.Module) and obj.__module__ == module.__name__:
            base = obj.__bases__[-1]
            if base.__name__ == obj.__name__ and base.__module__.startswith("torch.nn"):
                twins[base] = obj
    return twins
