"""DTensor sharding rules for every fastact op, registered on import.

Sharding rules (``register_sharding``, one mesh dimension at a time; DTensor
expands them over the mesh and redistributes inputs that match none, as for
torch's own ops):

- activations, their backward and in-place forms: the output follows the
  input (``Shard(d)`` on any dim, ``Replicate``); a ``Partial`` input is
  reduced first (activations are not linear), but backward takes a
  ``Partial`` gradient (it is linear in the gradient). ``prelu`` and
  ``swish(beta=tensor)`` shard the channel (last) dim with their per-channel
  parameter sharded alike; their parameter's gradient is ``Partial`` when the
  other dims are sharded.
- GLU family, two-tensor form: ``gate`` and ``up`` sharded alike on any dim
  (the hidden dim of a column-parallel ``w1``/``w3``); ``Partial`` ``up``
  with a replicated ``gate`` (linear in ``up``). Packed form (and ``glu``):
  any dim but the split one; the split (hidden) dim itself when the input is
  ``_StridedShard(dim, split_factor=2)``, i.e. each rank holds
  ``[gate_r | up_r]`` -- the output is then ``Shard(dim)``. A packed input
  plainly ``Shard``-ed on the split dim is replicated first (its halves would
  not pair up); so is an interleaved one (a shard of odd size would split a
  (gate, up) pair).
- dropout family: the output follows the input, ``Partial`` included where
  the op is linear (``dropout``, ``dropout_add``, ``bias_dropout_add``); a
  bias over the last dim is sharded with it. See
  :func:`fastact.distributed.dropout.dtensor_seed` for the masks.
- ``cross_entropy_rows`` and ``softmax_rows``: rows sharded or replicated
  (the class dim of the raw op is gathered if sharded). The functional
  :func:`fastact.functional.cross_entropy` and
  :func:`~fastact.functional.linear_cross_entropy` never gather a vocabulary-
  sharded input: they run the collectives of ``vocab_parallel_cross_entropy``
  (:mod:`fastact.distributed.losses`).
- ``mse_loss`` ops: elementwise; the summed form gives a ``Partial`` sum.

As for every rule registered through ``register_sharding``, DTensor offers a
``Shard`` strategy only where the dim divides evenly over the mesh; an
unevenly sharded input is replicated first (correct, but gathered; an
in-place op on it raises, as DTensor does for torch's in-place ops).
"""
from __future__ import annotations

import math

import torch
from torch.distributed.tensor import Partial, Replicate, Shard
from torch.distributed.tensor._dtensor_spec import DTensorSpec
from torch.distributed.tensor.experimental import register_sharding
from torch.distributed.tensor.placement_types import _StridedShard

from ..ops import ACTIVATIONS, GLUS

__all__: list[str] = []

_ops = torch.ops.fastact
R = Replicate


# --- rule builders ---------------------------------------------------------------------

def _inputs(args, placement, by_index=None):
    """One input placement per argument: ``placement`` for every tensor
    argument, None for the others, ``by_index`` overriding (index -> placement)."""
    by_index = by_index or {}
    out = []
    for i, a in enumerate(args):
        if i in by_index:
            out.append(by_index[i] if isinstance(a, DTensorSpec) else None)
        else:
            out.append(placement if isinstance(a, DTensorSpec) else None)
    return out


def _dims(spec: DTensorSpec, skip=()):
    return [d for d in range(spec.ndim) if d not in skip]


def _follow(args, spec, *, partial=False, n_out=1, skip=()):
    """Output(s) and every tensor input share one placement: Replicate, Shard(d)
    for every dim d of ``spec`` not in ``skip``, and Partial when the op is
    linear in all its tensor inputs jointly."""
    choices = [R()] + [Shard(d) for d in _dims(spec, skip)] + ([Partial()] if partial else [])
    return [([p] * n_out, _inputs(args, p)) for p in choices]


def _unary(x, *params):
    return _follow((x, *params), x)


def _inplace(x, *params):
    return [([], _inputs((x, *params), p)) for p in [R()] + [Shard(d) for d in _dims(x)]]


def _unary_backward(grad, x, *params):
    # dx = grad * f'(x): linear in grad
    return _follow((grad, x, *params), x) + [([Partial()], _inputs((grad, x, *params), R(), {0: Partial()}))]


def _register(ops, rule):
    register_sharding([getattr(_ops, op).default for op in ops])(rule)


for _name in ACTIVATIONS:
    _register([_name], _unary)
    _register([_name + "_"], _inplace)
    _register([_name + "_backward"], _unary_backward)


def _channel_rules(args, x, param_index, n_out, channel):
    """prelu / swish_beta: a parameter of one value, or one per channel
    (channel dim: 1 for prelu, last for swish). Shard(c) of the input goes
    with Shard(0) of the parameter; other dims with a replicated parameter,
    whose gradient (when an output) is then Partial."""
    if math.prod(args[param_index].shape) == 1:
        channel = None  # one value: any dim, the parameter replicated
    rules = [([R()] * n_out, _inputs(args, R()))]
    for d in _dims(x):
        if d == channel:
            outs = [Shard(d)] + [Shard(0)] * (n_out - 1)
            rules.append((outs, _inputs(args, Shard(d), {param_index: Shard(0)})))
        else:
            outs = [Shard(d)] + [Partial()] * (n_out - 1)
            rules.append((outs, _inputs(args, Shard(d), {param_index: R()})))
    return rules


@register_sharding(_ops.prelu.default)
def _prelu_rule(x, weight):
    return _channel_rules([x, weight], x, 1, 1, 1 if x.ndim >= 2 else 0)


@register_sharding(_ops.prelu_backward.default)
def _prelu_backward_rule(grad, x, weight):
    return _channel_rules([grad, x, weight], x, 2, 2, 1 if x.ndim >= 2 else 0)


@register_sharding(_ops.swish_beta.default)
def _swish_beta_rule(x, beta):
    return _channel_rules([x, beta], x, 1, 1, x.ndim - 1)


@register_sharding(_ops.swish_beta_backward.default)
def _swish_beta_backward_rule(grad, x, beta):
    return _channel_rules([grad, x, beta], x, 2, 2, x.ndim - 1)


@register_sharding(_ops.rrelu_train.default)
def _rrelu_rule(x, lower, upper, seed):
    return [([p], [p, None, None, R()]) for p in [R()] + [Shard(d) for d in _dims(x)]]


@register_sharding(_ops.rrelu_train_backward.default)
def _rrelu_backward_rule(grad, x, lower, upper, seed):
    rules = [([p], [p, p, None, None, R()]) for p in [R()] + [Shard(d) for d in _dims(x)]]
    return rules + [([Partial()], [Partial(), R(), None, None, R()])]


# --- the GLU family ------------------------------------------------------------------------

def _glu_rule(gate, up, *params):
    # silu(gate) * up: linear in up
    args = (gate, up, *params)
    return _follow(args, gate) + [([Partial()], _inputs(args, R(), {1: Partial()}))]


def _glu_backward_rule(grad, gate, up, *params):
    # (grad * up * f'(gate), grad * f(gate)): linear in grad
    args = (grad, gate, up, *params)
    return _follow(args, gate, n_out=2) + [([Partial()] * 2, _inputs(args, R(), {0: Partial()}))]


def _split_dim(x, dim):
    return dim + x.ndim if dim < 0 else dim


def _interleaved(params) -> bool:
    # the packed GLU ops' last argument (glu has none)
    return bool(params) and params[-1] is True


def _packed_rule(x, dim=-1, *params):
    args = (x, dim, *params)
    d = _split_dim(x, dim)
    rules = _follow(args, x, skip=(d,))
    if not _interleaved(params):
        rules.append(([Shard(d)], _inputs(args, _StridedShard(d, split_factor=2))))
    return rules


def _packed_backward_rule(grad, x, dim=-1, *params):
    args = (grad, x, dim, *params)
    d = _split_dim(x, dim)
    rules = _follow(args, x, skip=(d,))
    if not _interleaved(params):
        rules.append(([_StridedShard(d, split_factor=2)],
                      _inputs(args, _StridedShard(d, split_factor=2), {0: Shard(d)})))
    return rules + [([Partial()], _inputs(args, R(), {0: Partial()}))]


for _name in GLUS:
    _register([_name], _glu_rule)
    _register([_name + "_backward"], _glu_backward_rule)
    _register([_name + "_packed"], _packed_rule)
    _register([_name + "_packed_backward"], _packed_backward_rule)
_register(["glu"], _packed_rule)
_register(["glu_backward"], _packed_backward_rule)


# --- dropout ---------------------------------------------------------------------------

@register_sharding(_ops._philox_seed.default)
def _philox_seed_rule(like, generator=None):
    # the (seed, offset) pair is drawn alike on every rank (SPMD: one generator
    # state everywhere): a replicated output whatever the placement of `like`
    return [([R()], [p, None]) for p in [R(), Partial()] + [Shard(d) for d in _dims(like)]]


def _seed_last(rules, seed_index):
    return [(outs, [R() if i == seed_index else p for i, p in enumerate(ins)]) for outs, ins in rules]


def _bias_rules(args, x, bias_index, *, partial):
    """Ops with a bias over the last dim: Shard(last) takes the bias Shard(0)."""
    last = x.ndim - 1
    rules = [([R()], _inputs(args, R()))]
    for d in _dims(x):
        rules.append(([Shard(d)], _inputs(args, Shard(d), {bias_index: Shard(0) if d == last else R()})))
    if partial:
        rules.append(([Partial()], _inputs(args, Partial())))
    return rules


@register_sharding(_ops.dropout.default)
def _dropout_rule(x, p, seed):
    return _seed_last(_follow((x, p, seed), x, partial=True), 2)


@register_sharding(_ops.dropout_.default)
def _dropout_inplace_rule(x, p, seed):
    return [([], ins) for _, ins in _seed_last(_follow((x, p, seed), x, partial=True), 2)]


@register_sharding(_ops.dropout_add.default)
def _dropout_add_rule(x, residual, p, seed):
    return _seed_last(_follow((x, residual, p, seed), x, partial=True), 3)


@register_sharding(_ops.bias_dropout_add.default)
def _bias_dropout_add_rule(x, bias, residual, p, seed):
    return _seed_last(_bias_rules((x, bias, residual, p, seed), x, 1, partial=True), 4)


@register_sharding(_ops.bias_act_dropout.default)
def _bias_act_dropout_rule(x, bias, activation, p, seed):
    return _seed_last(_bias_rules((x, bias, activation, p, seed), x, 1, partial=False), 4)


@register_sharding(_ops.bias_act_dropout_backward.default)
def _bias_act_dropout_backward_rule(grad, x, bias, activation, p, seed):
    args = (grad, x, bias, activation, p, seed)
    rules = _bias_rules(args, x, 2, partial=False)
    rules.append(([Partial()], _inputs(args, R(), {0: Partial()})))
    return _seed_last(rules, 5)


# --- losses: rows sharded or replicated; elementwise mse ------------------------------------

@register_sharding(_ops.cross_entropy_rows.default)
def _ce_rows_rule(logits, target, weight, ignore_index, label_smoothing, z_loss, softcap):
    args = (logits, target, weight, ignore_index, label_smoothing, z_loss, softcap)
    return [([p, p], _inputs(args, p, {2: R()})) for p in (R(), Shard(0))]


def _ce_rows_backward_inputs(args, p):
    return _inputs(args, p, {3: R()})


@register_sharding(_ops.cross_entropy_rows_backward.default)
def _ce_rows_backward_rule(grad, logits, target, weight, lse, *options):
    args = (grad, logits, target, weight, lse, *options)
    return [([p], _ce_rows_backward_inputs(args, p)) for p in (R(), Shard(0))]


@register_sharding(_ops.cross_entropy_rows_backward_.default)
def _ce_rows_backward_inplace_rule(grad, logits, target, weight, lse, *options):
    args = (grad, logits, target, weight, lse, *options)
    return [([], _ce_rows_backward_inputs(args, p)) for p in (R(), Shard(0))]


@register_sharding(_ops.softmax_rows.default)
def _softmax_rows_rule(x, log):
    return [([p], [p, None]) for p in (R(), Shard(0))]


@register_sharding(_ops.softmax_rows_backward.default)
def _softmax_rows_backward_rule(grad, out, log):
    return [([p], [p, p, None]) for p in (R(), Shard(0))]


@register_sharding(_ops.squared_difference.default)
def _sqdiff_rule(x, t):
    return _follow((x, t), x)


@register_sharding(_ops.squared_difference_backward.default)
def _sqdiff_backward_rule(grad, x, t):
    args = (grad, x, t)
    return _follow(args, x, n_out=2) + [([Partial()] * 2, _inputs(args, R(), {0: Partial()}))]


@register_sharding(_ops.squared_difference_sum.default)
def _sqdiff_sum_rule(x, t):
    # a sum over the elements: shards give a Partial sum
    return [([R()], [R(), R()])] + [([Partial()], [Shard(d), Shard(d)]) for d in _dims(x)]


@register_sharding(_ops.squared_difference_sum_backward.default)
def _sqdiff_sum_backward_rule(grad, x, t):
    return [([p], [R(), p, p]) for p in [R()] + [Shard(d) for d in _dims(x)]]
