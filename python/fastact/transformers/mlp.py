"""GLU feed-forward blocks of transformers models on the fused GLU kernels.

A block qualifies when it computes ``down(act(gate(x)) * up(x))`` with
``gate``/``up``/``down`` ``nn.Linear`` modules and a known activation
(LLaMA, Mistral, Qwen2/3, Gemma, Gemma2 and any block written the same way),
or the packed form ``down(act(g) * u)`` with ``g, u = gate_up(x).chunk(2)``
(Phi3). The block's class is swapped for a subclass of the same name whose
forward calls ``swiglu``/``geglu``/``reglu`` on the two projections (or on
the packed one), so parameters, hooks and state dicts are untouched.

Detection is structural and checked against the source: the block's
``forward`` must be exactly the expression above (read with ``ast``), so a
block that adds a scale, a bias term or a clamp is left alone.
"""
from __future__ import annotations

import ast
import copy
import inspect
import textwrap
from typing import Optional

from torch import nn

from .. import functional as F
from .twin import twin_class

__all__ = ["gated_op", "find_glu", "patch_mlp", "fused_class", "is_fused"]

# transformers' activation classes, by name (some were renamed between
# releases: PytorchGELUTanh became GELUTanh in 4.56)
_SILU = {"SiLUActivation", "SiLU"}
_GELU_TANH = {"GELUTanh", "PytorchGELUTanh", "NewGELUActivation"}


def gated_op(act: nn.Module) -> Optional[tuple]:
    """(fastact GLU op name, its keyword arguments) computing ``act(gate) * up``
    exactly, or None when ``act`` is not one the kernels implement."""
    name = type(act).__name__
    if isinstance(act, nn.SiLU) or name in _SILU:
        return "swiglu", {}
    if isinstance(act, nn.ReLU):
        return "reglu", {}
    if isinstance(act, nn.GELU):
        return "geglu", {"approximate": act.approximate}
    if name in _GELU_TANH:
        return "geglu", {"approximate": "tanh"}
    if name == "GELUActivation":  # erf GELU (torch's, or the same formula in Python)
        return "geglu", {"approximate": "none"}
    return None


# --- the two forms, read from the forward's source ----------------------------------------

def _self_attr(node) -> Optional[str]:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return node.attr
    return None


def _call_of_self(node, arg=None) -> Optional[tuple]:
    """``self.<name>(<one argument>)`` -> (name, argument node)."""
    if isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords:
        name = _self_attr(node.func)
        if name is not None:
            return name, node.args[0]
    return None


def _forward_ast(cls) -> Optional[ast.FunctionDef]:
    try:
        src = textwrap.dedent(inspect.getsource(cls.forward))
    except (OSError, TypeError):
        return None
    tree = ast.parse(src)
    fn = tree.body[0] if tree.body else None
    return fn if isinstance(fn, ast.FunctionDef) else None


class _Inline(ast.NodeTransformer):
    def __init__(self, env: dict):
        self.env = env

    def visit_Name(self, node):
        if isinstance(node.ctx, ast.Load) and node.id in self.env:
            return copy.deepcopy(self.env[node.id])
        return node


def _returned_expr(fn: ast.FunctionDef) -> Optional[ast.expr]:
    """The returned expression of a straight-line body of single-name
    assignments and a ``return`` (docstring allowed), with every assigned
    name replaced by its value: ``y = a(x) * b(x); y = c(y); return y``
    (Mixtral's per-expert MLP) gives ``c(a(x) * b(x))``."""
    body = [s for s in fn.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    if not body or not isinstance(body[-1], ast.Return) or body[-1].value is None:
        return None
    env: dict = {}
    for stmt in body[:-1]:
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)):
            return None
        env[stmt.targets[0].id] = _Inline(env).visit(copy.deepcopy(stmt.value))
    return _Inline(env).visit(copy.deepcopy(body[-1].value))


def _separate_form(cls) -> Optional[tuple]:
    """(gate, up, down, act) attribute names when ``cls.forward`` is
    ``return self.down(self.act(self.gate(x)) * self.up(x))``."""
    fn = _forward_ast(cls)
    if fn is None or len(fn.args.args) != 2:
        return None
    x = fn.args.args[1].arg
    expr = _returned_expr(fn)
    outer = _call_of_self(expr) if expr is not None else None
    if outer is None or not isinstance(outer[1], ast.BinOp) or not isinstance(outer[1].op, ast.Mult):
        return None
    down, prod = outer[0], outer[1]

    def is_x(node):
        return isinstance(node, ast.Name) and node.id == x

    for a, b in ((prod.left, prod.right), (prod.right, prod.left)):
        act, up = _call_of_self(a), _call_of_self(b)
        if act is None or up is None or not is_x(up[1]):
            continue
        gate = _call_of_self(act[1])
        if gate is not None and is_x(gate[1]):
            return gate[0], up[0], down, act[0]
    return None


def _packed_form(cls) -> Optional[tuple]:
    """(gate_up, down, act) attribute names when ``cls.forward`` is Phi3's
    ``h = self.gate_up(x); gate, up = h.chunk(2, dim=-1); up = up * self.act(gate);
    return self.down(up)``."""
    fn = _forward_ast(cls)
    if fn is None or len(fn.args.args) != 2:
        return None
    x = fn.args.args[1].arg
    body = [s for s in fn.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    if len(body) != 4 or not all(isinstance(s, ast.Assign) and len(s.targets) == 1 for s in body[:3]) \
            or not isinstance(body[3], ast.Return):
        return None
    s1, s2, s3, ret = body
    proj = _call_of_self(s1.value)
    if proj is None or not isinstance(proj[1], ast.Name) or proj[1].id != x or not isinstance(s1.targets[0], ast.Name):
        return None
    h = s1.targets[0].id
    # gate, up = h.chunk(2, dim=-1)
    t = s2.targets[0]
    c = s2.value
    if not (isinstance(t, ast.Tuple) and len(t.elts) == 2 and all(isinstance(e, ast.Name) for e in t.elts)
            and isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute) and c.func.attr == "chunk"
            and isinstance(c.func.value, ast.Name) and c.func.value.id == h
            and [ast.literal_eval(a) for a in c.args] == [2]
            and all(k.arg == "dim" and ast.literal_eval(k.value) == -1 for k in c.keywords)):
        return None
    gate, up = t.elts[0].id, t.elts[1].id
    # y = up * self.act(gate) (either order)
    m = s3.value
    if not (isinstance(s3.targets[0], ast.Name) and isinstance(m, ast.BinOp) and isinstance(m.op, ast.Mult)):
        return None
    y = s3.targets[0].id
    act = None
    for a, b in ((m.left, m.right), (m.right, m.left)):
        call = _call_of_self(a)
        if call is not None and isinstance(call[1], ast.Name) and call[1].id == gate \
                and isinstance(b, ast.Name) and b.id == up:
            act = call[0]
    out = _call_of_self(ret.value)
    if act is None or out is None or not isinstance(out[1], ast.Name) or out[1].id != y:
        return None
    return proj[0], out[0], act


_FORMS: dict = {}  # class -> ("separate", names) | ("packed", names) | None


def _form(cls):
    if cls not in _FORMS:
        names = _separate_form(cls)
        _FORMS[cls] = ("separate", names) if names else (("packed", _packed_form(cls))
                                                         if _packed_form(cls) else None)
    return _FORMS[cls]


def find_glu(module: nn.Module) -> Optional[tuple]:
    """(form, attribute names, (op, kwargs)) when ``module`` is a GLU block the
    fused kernels can run, else None."""
    form = _form(type(module))
    if form is None:
        return None
    kind, names = form
    *linears, act = names
    if not all(isinstance(getattr(module, n, None), nn.Linear) for n in linears):
        return None
    op = gated_op(getattr(module, act, None)) if isinstance(getattr(module, act, None), nn.Module) else None
    if op is None:
        return None
    if kind == "packed" and getattr(module, linears[0]).out_features % 2:
        return None
    return kind, tuple(linears), op


# --- the fused blocks ---------------------------------------------------------------------

def _separate_forward(self, x):
    gate, up, down = self.fastact_glu_names
    op, kwargs = self.fastact_glu_op
    return getattr(self, down)(getattr(F, op)(getattr(self, gate)(x), getattr(self, up)(x), **kwargs))


def _packed_forward(self, x):
    gate_up, down = self.fastact_glu_names
    op, kwargs = self.fastact_glu_op
    # packed: first half gate, second half up, as chunk(2, dim=-1) splits it
    return getattr(self, down)(getattr(F, op)(getattr(self, gate_up)(x), **kwargs))


def fused_class(cls, kind: str):
    """A subclass of ``cls`` with the same name whose forward runs the fused GLU."""
    forward = _separate_forward if kind == "separate" else _packed_forward
    return twin_class(cls, {"forward": forward}, f"{cls.__name__} with act(gate) * up on fastact's fused GLU kernel.")


def patch_mlp(model: nn.Module) -> dict:
    """Swap every qualifying GLU block of ``model`` for its fused twin.
    Returns {block class name: (count, 'swiglu' | 'geglu[tanh]' | ...)}."""
    done: dict = {}
    for module in model.modules():
        if hasattr(type(module), "fastact_base_class"):
            continue  # already fused
        found = find_glu(module)
        if found is None:
            continue
        kind, names, (op, kwargs) = found
        module.fastact_glu_names = names
        module.fastact_glu_op = (op, kwargs)
        name = type(module).__name__
        module.__class__ = fused_class(type(module), kind)
        label = op + (f"[{kwargs['approximate']}]" if kwargs.get("approximate", "none") != "none" else "") + \
            (" (packed)" if kind == "packed" else "")
        count = done.get(name, (0, label))[0]
        done[name] = (count + 1, label)
    return done


def is_fused(module: nn.Module) -> bool:
    return hasattr(type(module), "fastact_base_class")

