"""Containers of fitted objects read by a constant key: ``models["word"]``, ``self.models[0]``.

Willump-style code keeps its fitted objects in a dict (or list) passed as an argument, held in a
module global or an attribute of ``self``, and reads them as ``models["word"].transform(texts)``.
The compile pass only lowers calls on names and attribute chains, so such a read stayed Python.
This pass resolves each read of a constant container by a literal key (any chain of attribute
reads and literal subscripts, ``cfg["models"][0].clf``, ending in a subscript of a ``dict``,
``list`` or ``tuple``) to the element object at calibration, binds the element as its own closure
constant (so it is compiled like a global) and records an
:class:`~willow.frontend.context.ObjectGuard` whose path is the user's expression: at every call
the element found there must be the calibrated one (identity, else content fingerprint), so a
swapped element or a dict changed in place runs the original function with a
:class:`~willow.ModelChangedWarning` (:mod:`willow.frontend.guards`).

A container the function itself may change is left alone: a root name that is assigned, a chain
stored into or deleted (``models["x"] = ...``), a method called on a container in the chain
(``models.pop(...)``), or a container root used bare (``helper(models)``, ``len(models)``).
Roots are the function's non-row parameters, its module globals and closure variables; a
parameter whose every read became an element read is not guarded as a whole (see
:attr:`FrontEndContext.covered <willow.frontend.context.FrontEndContext>`), so a new dict holding
the same objects is an identity check per element, not a fingerprint of the whole dict.
"""

from __future__ import annotations

import ast
from typing import Any

from willow.frontend.arguments import _parents, _Replace
from willow.frontend.context import UNRESOLVED, FrontEndContext, ObjectGuard

__all__ = ["bind_element_reads", "CONTAINERS"]

CONTAINERS = (dict, list, tuple)
"""The exact container types whose literal-key reads become constants (not subclasses: a
scikit-learn ``Bunch``/``named_steps`` is left to the composites pass)."""


def _chain(node: ast.expr) -> tuple[list[ast.expr], ast.Name | None]:
    """The attribute/subscript nodes of ``node``'s chain, outermost first, and its root name."""
    nodes: list[ast.expr] = []
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        nodes.append(node)
        node = node.value
    return nodes, node if isinstance(node, ast.Name) else None


def _unsafe_roots(tree: ast.FunctionDef, ctx: FrontEndContext, parents: dict[int, ast.AST]) -> set[str]:
    """Roots of containers the function may change (see the module doc): left as written."""
    unsafe: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Attribute, ast.Subscript)) and isinstance(node.ctx, (ast.Store, ast.Del)):
            _, root = _chain(node)
            if root is not None:
                unsafe.add(root.id)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            receiver = node.func.value
            if isinstance(receiver, (ast.Name, ast.Attribute, ast.Subscript)) and isinstance(
                ctx.resolve(receiver), (dict, list, set)
            ):
                _, root = _chain(receiver)
                if root is not None:
                    unsafe.add(root.id)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            parent = parents.get(id(node))
            chained = isinstance(parent, (ast.Attribute, ast.Subscript)) and parent.value is node
            if not chained and isinstance(ctx.resolve(node), CONTAINERS):
                unsafe.add(node.id)
    return unsafe


def _literal_keys(nodes: list[ast.expr], ctx: FrontEndContext) -> bool:
    return all(
        not isinstance(n, ast.Subscript) or ctx._constant_key(n.slice) is not UNRESOLVED for n in nodes
    )


def _hint(nodes: list[ast.expr], root: ast.Name) -> str:
    parts = [root.id]
    for n in reversed(nodes):
        if isinstance(n, ast.Attribute):
            parts.append(n.attr)
        else:
            parts.append(str(n.slice.value) if isinstance(n.slice, ast.Constant) else "item")
    return "_".join(parts)


def _element(node: ast.Subscript, ctx: FrontEndContext) -> Any:
    """The element ``node`` reads when its container is a plain dict/list/tuple, else UNRESOLVED."""
    container = ctx.resolve(node.value)
    if type(container) not in CONTAINERS:
        return UNRESOLVED
    return ctx.resolve(node)


def bind_element_reads(tree: ast.FunctionDef, ctx: FrontEndContext) -> ast.FunctionDef:
    """Bind every literal-key read of a constant container to its element (see the module doc)."""
    parents = _parents(tree)
    unsafe = _unsafe_roots(tree, ctx, parents)
    candidates: list[tuple[ast.Subscript, list[ast.expr], ast.Name]] = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load)):
            continue
        nodes, root = _chain(node)
        if root is None or root.id in unsafe or ctx.is_local(root.id) or root.id in ctx.row_parameters:
            continue
        if root.id not in ctx.parameters and root.id not in ctx.constants:
            continue  # a builtin, or a name the function never defines
        if _literal_keys(nodes, ctx) and _element(node, ctx) is not UNRESOLVED:
            candidates.append((node, nodes, root))
    inner = {id(n) for _, nodes, _ in candidates for n in nodes[1:]}
    replace: dict[int, ast.expr] = {}
    before = {p for p in ctx.parameters if any(r.id == p for _, _, r in candidates)}
    for node, nodes, root in candidates:
        if id(node) in inner:
            continue  # part of a longer chain, bound as a whole
        element = ctx.resolve(node)
        binding = ctx.bind(element, _hint(nodes, root))
        replace[id(node)] = binding
        path = ast.unparse(node)
        if all(g.path != path for g in ctx.guards):
            ctx.guards.append(ObjectGuard(binding.id, path, getattr(node, "lineno", tree.lineno)))
        ctx.note(
            f"line {getattr(node, 'lineno', '?')}: `{path}` ({type(element).__name__}) is read as a "
            "constant, like a global (compiled where possible; the element is checked at every call)"
        )
    if not replace:
        return tree
    tree = ast.fix_missing_locations(_Replace(replace).visit(tree))
    for p in before:
        if not any(isinstance(n, ast.Name) and n.id == p for n in ast.walk(tree)):
            ctx.covered.add(p)
    return tree
