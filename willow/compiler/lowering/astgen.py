"""Building generated kernel modules as Python ASTs.

Kernels are written once as ordinary Python *templates* (functions whose UPPER_CASE free names are
compile-time options: an analyzer kind, an n-gram range, a norm). :func:`specialize` parses a
template, replaces those names by constants, drops the branches the constants rule out, and
renames the function, so the rendered kernel contains only the code its operator needs.
:func:`kernel_module` assembles imports, specialised templates and hand-built functions into one
``ast.Module`` with Numba decorators; :func:`compile_module` renders it with astor and imports it
through :func:`willow.compiler.backend.load_generated_module` so Numba's on-disk cache applies.
"""

from __future__ import annotations

import ast
import copy
import functools
import hashlib
import inspect
import textwrap
import warnings
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

from willow.compiler.backend import load_generated_module, render_module

__all__ = [
    "runtime_digest",
    "specialize",
    "njit_decorator",
    "kernel_module",
    "compile_module",
    "name",
    "call",
    "const",
]

_FOLDABLE = (ast.Constant, ast.Compare, ast.BoolOp, ast.UnaryOp, ast.cmpop, ast.boolop, ast.unaryop)


@functools.cache
def _template_ast(function: Callable[..., Any]) -> ast.FunctionDef:
    source = textwrap.dedent(inspect.getsource(function))
    node = ast.parse(source).body[0]
    assert isinstance(node, ast.FunctionDef)
    node.decorator_list = []
    return node


class _Substitute(ast.NodeTransformer):
    def __init__(self, constants: Mapping[str, Any]):
        self.constants = constants

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if isinstance(node.ctx, ast.Load) and node.id in self.constants:
            return ast.copy_location(const(self.constants[node.id]), node)
        return node


class _FoldBranches(ast.NodeTransformer):
    """Replace ``if <constant expression>:`` by the branch it selects."""

    def visit_If(self, node: ast.If) -> Any:
        self.generic_visit(node)
        if all(isinstance(n, _FOLDABLE) for n in ast.walk(node.test)):
            return node.body if _evaluate(node.test) else node.orelse
        return node

    def visit_IfExp(self, node: ast.IfExp) -> Any:
        self.generic_visit(node)
        if all(isinstance(n, _FOLDABLE) for n in ast.walk(node.test)):
            return node.body if _evaluate(node.test) else node.orelse
        return node


class _FillEmptyBodies(ast.NodeVisitor):
    """Folding can empty a block; an empty block gets a ``pass``."""

    def generic_visit(self, node: ast.AST) -> None:
        for attribute in ("body", "orelse", "finalbody"):
            block = getattr(node, attribute, None)
            if attribute == "body" and isinstance(block, list) and not block:
                node.body = [ast.Pass()]
        super().generic_visit(node)


def _evaluate(test: ast.expr) -> Any:
    expression = ast.fix_missing_locations(ast.Expression(body=copy.deepcopy(test)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)  # "x is not None" on literals is intended here
        code = compile(expression, "<willow-fold>", "eval")
    return eval(code, {"__builtins__": {}})  # constants only: checked by the caller


def const(value: Any) -> ast.expr:
    """An AST literal (tuples of literals included)."""
    if isinstance(value, tuple):
        return ast.Tuple(elts=[const(v) for v in value], ctx=ast.Load())
    if isinstance(value, float) and value != value:
        raise ValueError("NaN cannot be a kernel constant")
    return ast.Constant(value=value)


def name(identifier: str, store: bool = False) -> ast.Name:
    return ast.Name(id=identifier, ctx=ast.Store() if store else ast.Load())


def call(function: str, *args: ast.expr, **keywords: ast.expr) -> ast.Call:
    """``function(*args, **keywords)``; ``function`` may be dotted (``np.empty``)."""
    parts = function.split(".")
    target: ast.expr = name(parts[0])
    for attribute in parts[1:]:
        target = ast.Attribute(value=target, attr=attribute, ctx=ast.Load())
    return ast.Call(
        func=target, args=list(args), keywords=[ast.keyword(arg=k, value=v) for k, v in keywords.items()]
    )


def specialize(
    template: Callable[..., Any],
    new_name: str,
    constants: Mapping[str, Any],
    placeholders: Sequence[str] = (),
) -> ast.FunctionDef:
    """``template`` as a new function ``new_name`` with ``constants`` inlined and dead branches removed.

    ``placeholders`` are UPPER_CASE names the caller replaces itself (statement slots).
    """
    node = copy.deepcopy(_template_ast(template))
    node.name = new_name
    node = _Substitute(constants).visit(node)
    node = _FoldBranches().visit(node)
    _FillEmptyBodies().visit(node)
    missing = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and n.id.isupper() and len(n.id) > 1}
    missing -= set(placeholders)
    if missing:
        raise AssertionError(f"template {template.__name__} has unbound options {sorted(missing)}")
    return node


def njit_decorator(parallel: bool = False) -> ast.expr:
    """``@numba.njit(cache=True, nogil=True[, parallel=True])``."""
    keywords = {"cache": const(True), "nogil": const(True)}
    if parallel:
        keywords["parallel"] = const(True)
    return call("numba.njit", **keywords)


@functools.cache
def runtime_digest(*modules: ModuleType) -> str:
    """Short digest of the source of the modules a generated kernel calls into.

    Numba's on-disk cache checks only the generated file, not the functions it calls (and
    inlines) from other modules; putting this digest in the generated source gives every runtime
    version its own file, so a changed runtime is never served from a stale cache.
    """
    digest = hashlib.sha256()
    for module in modules:
        digest.update(inspect.getsource(module).encode("utf-8"))
    return digest.hexdigest()[:16]


def kernel_module(
    docstring: str,
    imports: Sequence[tuple[str, Sequence[str]]],
    functions: Sequence[tuple[ast.FunctionDef, bool | None]],
) -> ast.Module:
    """A module: docstring, ``import numba``/``numpy``, ``from module import names``, functions.

    Each function comes with ``parallel`` (``True``/``False`` adds an ``@numba.njit`` decorator,
    ``None`` leaves it a plain Python function).
    """
    body: list[ast.stmt] = [
        ast.Expr(value=ast.Constant(value=docstring)),
        ast.Import(names=[ast.alias(name="numba")]),
        ast.Import(names=[ast.alias(name="numpy", asname="np")]),
    ]
    for module, names in imports:
        body.append(ast.ImportFrom(module=module, names=[ast.alias(name=n) for n in names], level=0))
    for function, parallel in functions:
        function = copy.deepcopy(function)
        function.decorator_list = [] if parallel is None else [njit_decorator(parallel)]
        body.append(function)
    return ast.fix_missing_locations(ast.Module(body=body, type_ignores=[]))


def compile_module(module: ast.Module, name_hint: str) -> tuple[ModuleType, str]:
    """Render ``module`` with astor and import it from willow's kernel cache."""
    source = render_module(module)
    return load_generated_module(source, name_hint), source
