"""The Python package's layering, read from the source (no import runs):

- no import circle among fastact's modules. Every import counts, also one
  inside a function; importing ``a.b.c`` also runs the packages ``a.b`` and
  ``a`` that the importer is not itself inside of (their ``__init__``);
- no module imports another module's private name (``from m import _x``, or
  ``m._x`` on a module ``m`` it imported), in the package nor in tests/,
  benchmarks/, tools/ and examples/. Private *modules* (``_dtensor``,
  ``_torch_check``, the ``_C`` extension) may be imported; what they offer
  is their public names;
- the layers import only downwards: ``fastact.ops`` (fake kernels and
  autograd) <- ``fastact.losses`` <- ``fastact.distributed`` (DTensor) <-
  ``fastact.functional`` <- ``fastact.nn`` <- ``fastact.transformers``; the
  helpers outside them (reference, accuracy, errors, _dtensor, ...) only by
  the no-circle rule;
- the op and loss layers know nothing of DTensor: neither imports
  ``torch.distributed.tensor``; ``fastact.losses`` not even
  ``fastact._dtensor``, which ``fastact.ops`` uses only to place a DTensor
  gradient as the forward's output (dropout's and rrelu's backward
  regenerate their random numbers from the forward's shard). The face
  (``fastact.functional``) routes DTensor inputs to ``fastact.distributed``,
  which calls the plain ops and losses.
"""
from __future__ import annotations

import ast
import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# the package's source, found without importing it (no extension needed)
PKG = pathlib.Path(importlib.util.find_spec("fastact").origin).parent
# compiled modules of the package (setup.py builds them; absent from a checkout)
EXTENSIONS = {"fastact._C", "fastact._C_emu"}


def _package_modules() -> dict[str, pathlib.Path]:
    mods = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


MODULES = _package_modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, pathlib.Path()).name == "__init__.py"


def _is_module(name: str) -> bool:
    return name in MODULES or name in EXTENSIONS


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


class Import:
    """One imported thing: ``module`` (a fastact module, or any other
    module's dotted name), and ``name`` when a name of that module is
    imported rather than a submodule."""

    def __init__(self, module: str, name: str | None, line: int):
        self.module, self.name, self.line = module, name, line


def _imports(importer: str | None, tree: ast.AST):
    """Every import of ``tree`` (importer: its module name, for relative imports)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, None, node.lineno), alias, node
        elif isinstance(node, ast.ImportFrom):
            if node.level and importer is None:
                continue
            if node.level:
                package = importer if _is_package(importer) else importer.rsplit(".", 1)[0]
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if _is_module(sub):
                    yield Import(sub, None, node.lineno), alias, node
                else:
                    yield Import(base, alias.name, node.lineno), alias, node


def _trees(paths):
    for path in paths:
        yield path, ast.parse(path.read_text(), str(path))


def _graph() -> dict[str, dict[str, int]]:
    """importer -> {imported fastact module: line}, with the packages each
    import runs (the target's ancestors that are not the importer's)."""
    graph = {}
    for name, path in MODULES.items():
        edges = graph.setdefault(name, {})
        own = set(_ancestors(name)) | ({name} if _is_package(name) else set())
        for imp, _, _ in _imports(name, ast.parse(path.read_text(), str(path))):
            if imp.module not in MODULES:
                continue
            for target in [*_ancestors(imp.module), imp.module]:
                if target in MODULES and target not in own and target != name:
                    edges.setdefault(target, imp.line)
    return graph


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_circle():
    assert _cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b": 1}, "b": {}}) == []


def test_the_package_is_read():
    # the layers this test speaks of exist (a rename must update it)
    for name in ("fastact", "fastact.functional", "fastact.nn", "fastact.ops", "fastact.losses",
                 "fastact.distributed", "fastact.transformers"):
        assert name in MODULES, name
    graph = _graph()
    assert "fastact.distributed" in graph["fastact.functional"]
    assert "fastact.losses.linear_ce" in graph["fastact.losses.posttrain"]
    # importing fastact.ops.cross_entropy runs fastact/ops/__init__.py too
    assert "fastact.ops" in graph["fastact.losses.linear_ce"]


def test_no_import_circle():
    graph = _graph()
    found = []
    for comp in _cycles(graph):
        members = set(comp)
        edges = [f"{a} -> {b} (line {line})" for a in comp for b, line in graph[a].items() if b in members]
        found.append("\n    ".join(edges))
    assert not found, "import circles:\n  " + "\n  ".join(found)


def _private_imports(path: pathlib.Path, importer: str | None, tree: ast.AST):
    bound = {}  # local name -> the fastact module it names
    for imp, alias, node in _imports(importer, tree):
        if imp.module.split(".")[0] != "fastact":
            continue
        if imp.name is not None:
            if _private(imp.name):
                yield f"{path}:{imp.line}: from {imp.module} import {imp.name}"
        elif isinstance(node, ast.ImportFrom) or alias.asname:
            bound[alias.asname or alias.name] = imp.module
        else:  # import fastact.x.y binds fastact
            bound[alias.name.split(".")[0]] = alias.name.split(".")[0]
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                and _private(node.attr) and not _is_module(f"{bound[node.value.id]}.{node.attr}")):
            yield f"{path}:{node.lineno}: {bound[node.value.id]}.{node.attr}"


def test_no_private_names_across_modules():
    found = []
    for name, path in MODULES.items():
        found += _private_imports(path.relative_to(PKG.parent), name, ast.parse(path.read_text(), str(path)))
    for folder in ("tests", "benchmarks", "tools", "examples"):
        for path, tree in _trees(sorted((ROOT / folder).rglob("*.py"))):
            found += _private_imports(path.relative_to(ROOT), None, tree)
    assert not found, "private names imported from another module:\n  " + "\n  ".join(found)


# The layers, lowest first: a module imports nothing of a layer above its own.
LAYERS = ("fastact.ops", "fastact.losses", "fastact.distributed", "fastact.functional", "fastact.nn",
          "fastact.transformers")


def _layer(name: str):
    for i, layer in enumerate(LAYERS):
        if name == layer or name.startswith(layer + "."):
            return i
    return None


def test_layers_import_downwards():
    found = []
    for name, path in MODULES.items():
        mine = _layer(name)
        if mine is None:
            continue
        for imp, _, _ in _imports(name, ast.parse(path.read_text(), str(path))):
            theirs = _layer(imp.module)
            if theirs is not None and theirs > mine:
                found.append(f"{name}:{imp.line}: imports {imp.module} (a layer above {LAYERS[mine]})")
    assert not found, "imports upwards:\n  " + "\n  ".join(found)


# DTensor: fastact.ops only through fastact._dtensor (placing a gradient),
# fastact.losses not at all
NO_DTENSOR = {
    "fastact.ops": ("torch.distributed.tensor",),
    "fastact.losses": ("torch.distributed.tensor", "fastact._dtensor"),
}


@pytest.mark.parametrize("layer", sorted(NO_DTENSOR))
def test_ops_and_losses_know_nothing_of_dtensor(layer):
    found = []
    for name, path in MODULES.items():
        if name != layer and not name.startswith(layer + "."):
            continue
        for imp, _, _ in _imports(name, ast.parse(path.read_text(), str(path))):
            for bad in NO_DTENSOR[layer]:
                if imp.module == bad or imp.module.startswith(bad + "."):
                    found.append(f"{name}:{imp.line}: imports {imp.module}")
    assert not found, f"{layer} must not import:\n  " + "\n  ".join(found)
