"""Fake (meta) kernels and autograd of every fastact operator, one module per
op family; the schemas and the CPU/CUDA kernels are C++ (csrc/). Importing
this package registers them all (``import fastact`` does, once).

A new family gets a module here (its ``register_fake`` and
``register_autograd`` calls), its DTensor sharding rule in
``fastact.distributed.rules`` and its Python API in ``fastact.functional``
(thin wrappers) or ``fastact.losses`` (losses with logic of their own).
"""
from . import activations, cross_entropy, dropout, glu, logprob, mse, softmax  # noqa: F401  (registrations)
from .activations import ACTIVATIONS
from .glu import GLUS

__all__ = ["ACTIVATIONS", "GLUS"]
