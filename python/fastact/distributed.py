"""fastact under torch.distributed: DTensor sharding rules for every op, the
vocabulary-parallel losses on DTensors, and how dropout draws on DTensors.

Imported by ``import fastact`` when torch.distributed is available; nothing
here runs at op call time for plain tensors.

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
  bias over the last dim is sharded with it. See :func:`dtensor_seed` for
  the masks.
- ``cross_entropy_rows`` and ``softmax_rows``: rows sharded or replicated
  (the class dim of the raw op is gathered if sharded). The functional
  :func:`fastact.functional.cross_entropy` and
  :func:`~fastact.functional.linear_cross_entropy` never gather a vocabulary-
  sharded input: they run the collectives of ``vocab_parallel_cross_entropy``
  (:func:`cross_entropy_vocab_parallel`, :func:`linear_cross_entropy_vocab_parallel`).
- ``mse_loss`` ops: elementwise; the summed form gives a ``Partial`` sum.

As for every rule registered through ``register_sharding``, DTensor offers a
``Shard`` strategy only where the dim divides evenly over the mesh; an
unevenly sharded input is replicated first (correct, but gathered; an
in-place op on it raises, as DTensor does for torch's in-place ops).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
from torch.distributed.tensor._dtensor_spec import DTensorSpec
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
from torch.distributed.tensor.experimental import register_sharding
from torch.distributed.tensor.placement_types import _StridedShard

from .ops import ACTIVATIONS, GLUS

__all__ = ["is_dtensor", "dtensor_seed", "shard_linear_index", "cross_entropy_vocab_parallel",
           "linear_cross_entropy_vocab_parallel", "DROPOUT_KEY_STEP"]

_ops = torch.ops.fastact
R = Replicate


def is_dtensor(t) -> bool:
    return isinstance(t, DTensor)


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


#: Shard k of a DTensor draws its dropout mask with the Philox key
#: ``seed XOR (k * DROPOUT_KEY_STEP mod 2**64)`` (the golden-ratio constant).
DROPOUT_KEY_STEP = 0x9E3779B97F4A7C15


def shard_linear_index(t: DTensor) -> int:
    """The index of this rank's shard of ``t``, as torch's DTensor RNG tracker
    numbers shards (``torch.distributed.tensor._random``): per tensor dim, the
    shard index over the mesh dims that shard it (in mesh-dim order), then
    row-major over the tensor dims. Ranks holding the same shard (replicas,
    Partial dims) get the same index; a fully replicated tensor has index 0."""
    mesh, placements = t.device_mesh, t.placements
    coord = mesh.get_coordinate()
    idx, count = [0] * t.ndim, [1] * t.ndim
    for mesh_dim, p in enumerate(placements):
        if p.is_shard() or isinstance(p, _StridedShard):
            d = p.dim
            idx[d] = idx[d] * mesh.size(mesh_dim) + coord[mesh_dim]
            count[d] *= mesh.size(mesh_dim)
    linear, stride = 0, 1
    for i, c in zip(reversed(idx), reversed(count)):
        linear += i * stride
        stride *= c
    return linear


def dtensor_seed(input: DTensor, generator: Optional[torch.Generator] = None) -> DTensor:
    """The dropout stream of a DTensor: (seed, offset) drawn once from the
    device's generator (or ``generator``) exactly as for a plain tensor --
    every rank draws alike, since SPMD code keeps one generator state on all
    ranks (seed every rank with the same ``torch.manual_seed``, as DTensor
    requires) -- and the shard of linear index k (:func:`shard_linear_index`)
    uses the key ``seed XOR (k * DROPOUT_KEY_STEP)``. So: replicas of a shard
    apply one mask; distinct shards draw from distinct Philox keys (independent
    streams, as torch's tracker gives each shard its own offset); a replicated
    DTensor, and shard 0, get exactly the mask of the unsharded op for the
    same generator state; the generator advances as for one unsharded call."""
    seed = _ops._philox_seed(input, generator)
    k = shard_linear_index(input)
    if k == 0:
        return seed
    step = (k * DROPOUT_KEY_STEP) % (1 << 64)
    step = step - (1 << 64) if step >= (1 << 63) else step
    local = seed.to_local().clone()
    local[:1].bitwise_xor_(step)
    return DTensor.from_local(local, seed.device_mesh, seed.placements, run_check=False)


def align(t, placements):
    """``t`` redistributed to ``placements`` (no-op when it already is)."""
    return t if tuple(t.placements) == tuple(placements) else t.redistribute(t.device_mesh, placements)


def bias_placements(input: DTensor):
    last = input.ndim - 1
    return [Shard(0) if p.is_shard(last) else R() for p in input.placements]


def reduce_partial(input: DTensor) -> DTensor:
    """A non-linear op's input: its Partial placements reduced (Replicate)."""
    return align(input, [R() if p.is_partial() else p for p in input.placements])


# --- vocabulary-parallel losses on DTensors --------------------------------------------------

def _vocab_mesh_dim(placements, dim, op):
    dims = [i for i, p in enumerate(placements) if p.is_shard(dim)]
    if len(dims) > 1:
        raise NotImplementedError(f"{op}: the class dim is sharded on {len(dims)} mesh dims {tuple(placements)}; "
                                  f"one is supported")
    return dims[0] if dims else None


def _rows_placements(placements, vocab_dim):
    """Placements of the per-row tensors (target, loss) of (N, V) rows placed
    as ``placements``: Shard(0) stays, the vocabulary dim is Replicate."""
    return [Shard(0) if (i != vocab_dim and p.is_shard(0)) else R() for i, p in enumerate(placements)]


def _as_local_target(target, mesh, placements, op):
    if isinstance(target, DTensor):
        return align(target, placements).to_local()
    if any(not p.is_replicate() for p in placements):
        raise ValueError(f"{op}: the target must be a DTensor placed {tuple(placements)} (rows sharded), "
                         f"got a plain tensor")
    return target


def cross_entropy_vocab_parallel(rows: DTensor, target, weight, prob, ignore_index, label_smoothing, z_loss,
                                 softcap):
    """Per-row losses (a DTensor (N,): rows' Shard(0) kept, Replicate on the
    vocabulary mesh dim) of rows [N, V] sharded on the vocabulary (dim 1) over
    one mesh dim, with the four all-reduces of ``vocab_parallel_cross_entropy``
    over that mesh dim's group; the logits are never gathered. Returns None
    when the vocabulary is not sharded; with the target as a DTensor placed
    as the loss."""
    op = "fastact.cross_entropy"
    vdim = _vocab_mesh_dim(rows.placements, 1, op)
    if vdim is None:
        return None
    if weight is not None or prob:
        raise NotImplementedError(f"{op}: on logits sharded on the class dim, class weights and probability "
                                  f"targets are not supported")
    from .linear_ce import _VocabParallelCrossEntropy

    mesh = rows.device_mesh
    # other mesh dims: rows Shard(0) or Replicate (a Partial input is reduced)
    rows = align(rows, [p if (i == vdim or p.is_shard(0)) else R() for i, p in enumerate(rows.placements)])
    out_pl = _rows_placements(rows.placements, vdim)
    local_target = _as_local_target(target, mesh, out_pl, op)
    _, offset = compute_local_shape_and_global_offset(rows.shape, mesh, rows.placements)
    local = rows.to_local()
    if softcap:
        local = softcap * torch.tanh(local / softcap)
    loss = _VocabParallelCrossEntropy.apply(local, local_target, mesh.get_group(vdim), offset[1], rows.shape[1],
                                            int(ignore_index), float(label_smoothing), float(z_loss))
    loss = DTensor.from_local(loss, mesh, out_pl, run_check=False, shape=rows.shape[:1], stride=(1,))
    target = target if isinstance(target, DTensor) else DTensor.from_local(
        target, mesh, out_pl, run_check=False, shape=rows.shape[:1], stride=(1,))
    return loss, align(target, out_pl)


class _VocabParallelLinearCrossEntropy(torch.autograd.Function):
    """Per-row losses of ``hidden @ weight.T (+ bias)`` (soft-capped to
    ``softcap * tanh(z / softcap)`` when ``softcap``) with ``weight`` the
    [V_local, H] slice of the vocabulary that starts at global row ``start``
    (a column-parallel LM head), chunk by chunk of tokens: each chunk's logit
    slice is formed, its row max, sum of exponentials, target logit and logit
    sum all-reduced over ``group`` (the collectives of
    ``vocab_parallel_cross_entropy``); only (N,) vectors are saved and
    backward recomputes each chunk's slice. The hidden gradient is
    all-reduced (each rank's slice contributes to it)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, group, start, v, chunk, options, softcap=0.0):
        from .linear_ce import _vp_rows_forward

        n = hidden.shape[0]
        acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        loss, m, log_s = (hidden.new_empty((n,), dtype=acc) for _ in range(3))
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            z = _capped(_chunk_logits(hidden[s:e], weight, bias), softcap, acc)
            loss[s:e], m[s:e], log_s[s:e] = _vp_rows_forward(z, target[s:e], group, start, v, *options)
        ctx.save_for_backward(hidden, weight, bias, target, m, log_s)
        ctx.args = (group, start, v, chunk, options, softcap)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        import torch.distributed as dist
        from .linear_ce import _vp_rows_grad

        hidden, weight, bias, target, m, log_s = ctx.saved_tensors
        group, start, v, chunk, options, softcap = ctx.args
        needs = ctx.needs_input_grad
        acc = m.dtype
        gh = torch.zeros_like(hidden) if needs[0] else None
        gw = torch.zeros_like(weight, dtype=acc) if needs[1] else None
        gb = torch.zeros_like(bias, dtype=acc) if bias is not None and needs[2] else None
        n = hidden.shape[0]
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            z = _capped(_chunk_logits(hidden[s:e], weight, bias), softcap, acc)
            d = _vp_rows_grad(z, target[s:e], m[s:e], log_s[s:e], grad_loss[s:e], start, v, *options)
            if softcap:
                # d(c tanh(z / c))/dz = 1 - tanh(z / c)**2
                d = d * (1 - (z / softcap) ** 2)
            if gh is not None:
                gh[s:e] = d.to(hidden.dtype) @ weight
            if gw is not None:
                gw.addmm_(d.t(), hidden[s:e].to(acc))
            if gb is not None:
                gb += d.sum(0)
        if gh is not None:
            dist.all_reduce(gh, group=group)
        return (gh, None if gw is None else gw.to(weight.dtype), None if gb is None else gb.to(bias.dtype),
                None, None, None, None, None, None, None)


def _chunk_logits(hidden, weight, bias):
    z = hidden @ weight.t()
    if bias is not None:
        z += bias
    return z


def _capped(z, softcap, acc):
    """``softcap * tanh(z / softcap)`` in ``acc`` (the row kernels' soft-cap), or ``z``."""
    return softcap * torch.tanh(z.to(acc) / softcap) if softcap else z


def linear_cross_entropy_vocab_parallel(input, linear_weight: DTensor, target, linear_bias, reduction,
                                        ignore_index, label_smoothing, z_loss, chunk_size, softcap=None):
    """``linear_cross_entropy`` with a column-parallel LM head: ``linear_weight``
    a DTensor [V, H] sharded on the vocabulary (dim 0) over one mesh dim and
    replicated on the others (``linear_bias``, if any, sharded alike). The
    input [N, H] is a plain tensor (replicated over that mesh dim, as after a
    row-parallel layer) or a DTensor (rows sharded or replicated); the result
    has the input's kind. ``softcap`` caps each logit slice before the loss
    (Gemma 2), as the row kernels do."""
    from .linear_ce import chunk_rows, cpu_float32

    op = "fastact.linear_cross_entropy"
    vdim = _vocab_mesh_dim(linear_weight.placements, 0, op)
    if vdim is None or any(not p.is_replicate() for i, p in enumerate(linear_weight.placements) if i != vdim):
        raise NotImplementedError(f"{op}: a DTensor linear_weight must be sharded on the vocabulary (dim 0) over "
                                  f"one mesh dim and replicated on the others, got {linear_weight.placements}")
    mesh = linear_weight.device_mesh
    v, hdim = linear_weight.shape
    _, offset = compute_local_shape_and_global_offset(linear_weight.shape, mesh, linear_weight.placements)
    w = linear_weight.to_local()
    b = None
    if linear_bias is not None:
        b = align(linear_bias, linear_weight.placements).to_local()
    if isinstance(input, DTensor):
        pl = [p if p.is_shard(0) and i != vdim else R() for i, p in enumerate(input.placements)]
        input = align(input, pl)
        hidden = input.to_local()
    else:
        pl, hidden = None, input
    local_target = _as_local_target(target, mesh, pl, op) if pl is not None else (
        target.to_local() if isinstance(target, DTensor) else target)
    n = hidden.shape[0]
    dtype = hidden.dtype
    hidden, w, b, widened = cpu_float32(hidden, w, b)
    chunk = chunk_rows(n, w.shape[0], hidden.shape[-1], hidden.element_size(), chunk_size, hidden.device.type,
                       widened)
    options = (int(ignore_index), float(label_smoothing), float(z_loss))
    loss = _VocabParallelLinearCrossEntropy.apply(hidden, w, b, local_target, mesh.get_group(vdim), offset[0], v,
                                                  chunk, options, float(softcap) if softcap else 0.0)
    counted = local_target != ignore_index
    if pl is not None:
        loss = DTensor.from_local(loss, mesh, pl, run_check=False, shape=input.shape[:1], stride=(1,))
        counted = DTensor.from_local(counted, mesh, pl, run_check=False, shape=input.shape[:1], stride=(1,))
    if reduction == "none":
        return loss.to(dtype)
    if reduction == "sum":
        return loss.sum().to(dtype)
    return (loss.sum() / counted.sum()).to(dtype)
