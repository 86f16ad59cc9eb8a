"""The little of DTensor that code outside ``fastact.distributed`` may need,
without importing torch.distributed where it is unavailable: whether a tensor
is a DTensor, and the placement a backward formula pins its gradient to
(dropout and rrelu regenerate their random numbers from the shard the
forward ran on, so their gradient must arrive placed as their output)."""
import torch

try:
    if not torch.distributed.is_available():
        raise ImportError
    from torch.distributed.tensor import DTensor
except ImportError:  # a torch build without distributed
    DTensor = ()

__all__ = ["DTensor", "is_dtensor", "placements", "align"]


def is_dtensor(t) -> bool:
    return isinstance(t, DTensor)


def placements(t):
    """A DTensor's placements; None for anything else."""
    return tuple(t.placements) if is_dtensor(t) else None


def align(t, placements):
    """``t`` redistributed to ``placements`` (no-op when it already is, or
    when ``t`` is not a DTensor)."""
    if not is_dtensor(t) or tuple(t.placements) == tuple(placements):
        return t
    return t.redistribute(t.device_mesh, placements)
