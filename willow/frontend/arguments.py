"""Arguments at calibration: which hold rows, and how the others become constants.

A call of an inference function mixes two kinds of arguments: *row containers* (one entry per
row: texts, a feature frame, an array) and everything else (fitted vectorizers, the model, a
dict of models, a lookup table, a threshold). willow cascades and compiles over rows, so it must
know which is which; it looks at the real calibration objects (:func:`classify_arguments`).

The non-row arguments are then read by the normalized function as constants, exactly like
globals (:func:`bind_argument_reads`): each read of ``word_vect`` becomes a read of a closure
binding holding the calibration object, so the compile pass sees (and compiles) a fitted
vectorizer passed as an argument just as it sees a global one. Every such binding gets an
:class:`~willow.frontend.context.ObjectGuard` whose path (``"word_vect"``, ``"self.words"``)
says where a later call passes the object; :mod:`willow.frontend.guards` checks it at each call.
"""

from __future__ import annotations

import ast
import inspect
import sys
from collections.abc import Callable, Sequence
from typing import Any

from willow.errors import UnsupportedPipelineError
from willow.frontend.context import FrontEndContext, ObjectGuard
from willow.rows import supports_rows

__all__ = [
    "MODEL_METHODS",
    "ROW_CONTAINERS",
    "is_row_container",
    "classify_arguments",
    "bind_argument_reads",
]

ROW_CONTAINERS = (
    "a list, tuple, numpy array, scipy.sparse matrix, pandas DataFrame, Series, Index or "
    "ExtensionArray, or a pyarrow Array/ChunkedArray"
)
# A parameter read only as ``p.<method>(...)`` with one of these is the model: it stays a live
# parameter, checked by the cascade's own model guard (its fingerprint) at every call.
MODEL_METHODS = frozenset({"predict", "predict_proba", "decision_function", "predict_log_proba"})
_FALLBACK = "Pass strict=False to willow.optimize to run this function unoptimized (with a warning)."


def _is_fitted_object(obj: Any) -> bool:
    return any(callable(getattr(obj, m, None)) for m in ("fit", "predict", "transform"))


def is_row_container(obj: Any) -> bool:
    """Whether ``obj`` holds one entry per row (see :data:`ROW_CONTAINERS`).

    A list or tuple whose entries are all fitted objects (estimators, transformers) is a
    collection of models, not rows.
    """
    if isinstance(obj, (list, tuple)):
        return not (len(obj) > 0 and all(_is_fitted_object(x) for x in obj))
    return supports_rows(obj)


def _row_count(obj: Any) -> int:
    shape = getattr(obj, "shape", None)
    if shape is not None and len(shape) >= 1:
        return int(shape[0])
    return len(obj)


def _found(obj: Any) -> str:
    name = type(obj).__name__
    if isinstance(obj, (str, bytes, int, float, bool)) or obj is None:
        text = repr(obj)
        return f"{name} {text[:40]}{'...' if len(text) > 40 else ''}"
    try:
        return f"{name} of {_row_count(obj)} rows" if is_row_container(obj) else name
    except TypeError:
        return name


def _first_reads(tree: ast.FunctionDef, names: Sequence[str]) -> list[str]:
    """``names`` in the order the function body first reads them (unread ones last)."""
    position: dict[str, tuple[int, int]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in names:
            key = (node.lineno, node.col_offset)
            if node.id not in position or key < position[node.id]:
                position[node.id] = key
    far = (sys.maxsize, 0)
    return sorted(names, key=lambda n: position.get(n, far))


def classify_arguments(
    fn: Callable,
    tree: ast.FunctionDef,
    arguments: dict[str, Any],
    row_args: Sequence[str] | None = None,
) -> tuple[str, ...]:
    """The parameters of ``fn`` whose calibration ``arguments`` hold rows, in signature order.

    Row containers are those of :func:`is_row_container`; when several of them have different
    lengths, the rows are those of the first one the function body reads and the others are
    constants (a lookup table passed as an argument). ``row_args`` overrides the choice (each
    named argument must still be a row container). Raises
    :class:`~willow.UnsupportedPipelineError` naming the argument, what was expected and what was
    found.
    """
    signature = inspect.signature(fn)
    variadic = {
        name
        for name, p in signature.parameters.items()
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    }
    named = [n for n in signature.parameters if n not in variadic and n in arguments]
    qualname = getattr(fn, "__qualname__", "the function")
    if row_args is not None:
        unknown = [a for a in row_args if a not in signature.parameters or a in variadic]
        if unknown or not row_args:
            raise ValueError(
                f"row_args must name parameters of {qualname}{tuple(named)}, got {tuple(row_args)!r}."
            )
        for name in row_args:
            if not is_row_container(arguments.get(name)):
                raise UnsupportedPipelineError(
                    f"Argument {name!r} of {qualname}: row_args names it as a row input, so willow "
                    f"expected rows ({ROW_CONTAINERS}), but calibrate() got {_found(arguments.get(name))}. "
                    f"Pass the rows there, or leave {name!r} out of row_args. {_FALLBACK}"
                )
        chosen = set(row_args)
        counts = {n: _row_count(arguments[n]) for n in named if n in chosen}
        if len(set(counts.values())) > 1:
            found = ", ".join(f"{k}: {v} rows" for k, v in counts.items())
            raise UnsupportedPipelineError(
                f"The row_args of {qualname} hold different numbers of rows ({found}); every row "
                f"input must describe the same rows. Name only those in row_args. {_FALLBACK}"
            )
        return tuple(n for n in named if n in chosen)
    candidates = [n for n in named if is_row_container(arguments[n])]
    if not candidates:
        found = ", ".join(f"{n}={_found(arguments[n])}" for n in named) or "no arguments"
        raise UnsupportedPipelineError(
            f"None of the arguments of {qualname} holds rows (found {found}); willow expected at "
            f"least one argument with one entry per row ({ROW_CONTAINERS}). Convert the rows to one "
            "of these types, or name the row arguments with willow.optimize(..., row_args=[...]). "
            f"{_FALLBACK}"
        )
    first = _first_reads(tree, candidates)[0]
    rows = _row_count(arguments[first])
    return tuple(n for n in candidates if _row_count(arguments[n]) == rows)


# --------------------------------------------------------------------------- binding the constants


def _parents(tree: ast.AST) -> dict[int, ast.AST]:
    parents: dict[int, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[id(child)] = node
    return parents


def _loads(tree: ast.AST, name: str) -> list[ast.Name]:
    return [
        n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Load)
    ]


def _is_model_use(node: ast.Name, parents: dict[int, ast.AST]) -> bool:
    attribute = parents.get(id(node))
    call = parents.get(id(attribute)) if attribute is not None else None
    return (
        isinstance(attribute, ast.Attribute)
        and attribute.attr in MODEL_METHODS
        and isinstance(call, ast.Call)
        and call.func is attribute
    )


def _instance_attribute(obj: Any, attr: str) -> bool:
    """Whether ``obj.attr`` is plain instance data (not a method or a computed property)."""
    try:
        return attr in vars(obj)
    except TypeError:
        return False


class _Replace(ast.NodeTransformer):
    def __init__(self, replace: dict[int, ast.expr]) -> None:
        self.replace = replace

    def visit(self, node: ast.AST) -> Any:
        if id(node) in self.replace:
            return ast.copy_location(self.replace[id(node)], node)
        return super().visit(node)


def bind_argument_reads(
    tree: ast.FunctionDef, ctx: FrontEndContext, original: ast.FunctionDef
) -> ast.FunctionDef:
    """Make the normalized function read its non-row arguments as constants (see the module doc).

    For each parameter that is neither a row input nor variadic: reads of ``p.attr`` where
    ``attr`` is instance data of the calibration object bind that attribute (guard path
    ``"p.attr"``); other reads bind the object itself (guard path ``"p"``). A parameter read only
    as ``p.predict(...)`` (and the other model methods) stays a parameter: it is the model, which
    the cascade checks by its own fingerprint. A parameter the body assigns gets a first
    statement ``p = <binding>``. A parameter the original read but the passes no longer read (a
    composite expanded into its steps) is still guarded, since the bindings derived from it are.
    """
    tree = ast.fix_missing_locations(tree)
    parents = _parents(tree)
    replace: dict[int, ast.expr] = {}
    prelude: list[ast.stmt] = []
    seen_paths = {g.path for g in ctx.guards}

    def guard(name: str, path: str, lineno: int) -> None:
        if path not in seen_paths:
            seen_paths.add(path)
            ctx.guards.append(ObjectGuard(name, path, lineno))

    for p in ctx.parameters:
        if p in ctx.row_parameters or p not in ctx.arguments:
            continue
        obj = ctx.arguments[p]
        loads = _loads(tree, p)
        assigned = ctx.is_local(p)
        if assigned:
            binding = ctx.bind(obj, p)
            first = tree.body[0] if tree.body else tree
            prelude.append(
                ast.copy_location(ast.Assign(targets=[ast.Name(id=p, ctx=ast.Store())], value=binding), first)
            )
            guard(binding.id, p, tree.lineno)
            ctx.note(f"argument `{p}` ({type(obj).__name__}) is read as a constant (guarded at every call)")
            continue
        if not loads:
            if _loads(original, p) and p not in ctx.covered:
                guard(ctx.bind(obj, p).id, p, tree.lineno)
            continue
        if all(_is_model_use(n, parents) for n in loads):
            continue
        whole = False
        for node in loads:
            parent = parents.get(id(node))
            lineno = getattr(node, "lineno", tree.lineno)
            if (
                isinstance(parent, ast.Attribute)
                and isinstance(parent.ctx, ast.Load)
                and _instance_attribute(obj, parent.attr)
            ):
                value = getattr(obj, parent.attr)
                binding = ctx.bind(value, parent.attr if p == "self" else f"{p}_{parent.attr}")
                replace[id(parent)] = binding
                guard(binding.id, f"{p}.{parent.attr}", lineno)
            else:
                binding = ctx.bind(obj, p)
                replace[id(node)] = binding
                guard(binding.id, p, lineno)
                whole = True
        what = "is" if whole else "has its attributes"
        ctx.note(
            f"argument `{p}` ({type(obj).__name__}) {what} read as a constant, like a global "
            "(compiled where possible, guarded at every call)"
        )
    if replace:
        tree = _Replace(replace).visit(tree)
    if prelude:
        body = list(tree.body)
        docstring = (
            1
            if body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
            else 0
        )
        tree.body = body[:docstring] + prelude + body[docstring:]
    return ast.fix_missing_locations(tree)
