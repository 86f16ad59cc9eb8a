"""fastact under torch.distributed: the DTensor sharding rules of every op
(rules.py, registered on import), how dropout draws on DTensors (dropout.py)
and the losses on DTensors, vocabulary-parallel where the class dim is
sharded (losses.py).

Imported by ``import fastact`` when torch.distributed is available.
fastact.functional hands DTensor inputs to dropout.py and losses.py, which
call the plain ops and losses; nothing here runs at op call time for plain
tensors, and nothing in fastact.ops or fastact.losses imports this package.
"""
from .._dtensor import is_dtensor
from . import dropout, losses, rules  # noqa: F401  (rules: the sharding rules, registered on import)
from .dropout import DROPOUT_KEY_STEP, dtensor_seed, shard_linear_index

__all__ = ["is_dtensor", "dtensor_seed", "shard_linear_index", "DROPOUT_KEY_STEP", "losses"]
