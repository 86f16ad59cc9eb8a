"""``is_dtensor`` without importing torch.distributed where it is unavailable."""
import torch

try:
    if not torch.distributed.is_available():
        raise ImportError
    from torch.distributed.tensor import DTensor
except ImportError:  # a torch build without distributed
    DTensor = ()


def is_dtensor(t) -> bool:
    return isinstance(t, DTensor)
