"""What every front-end pass shares: name resolution, new bindings and refusals.

A pass is a function ``(tree, ctx) -> tree`` over the decorated function's ``ast.FunctionDef``.
It may resolve an expression to the object it denotes at calibration time (``ctx.resolve``),
introduce a new name bound to an object (``ctx.bind``), record a note for ``explain()``, or
refuse with a message naming the line (``ctx.fail``). Statement nodes a pass creates should carry
the line number of the user statement they came from (``ast.copy_location``), so tracebacks and
refusals keep pointing at the user's code.
"""

from __future__ import annotations

import ast
import builtins
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from willow.errors import UnsupportedPipelineError

__all__ = ["FrontEndContext", "FrontEndPass", "ObjectGuard", "TypeGuard", "Unresolved", "UNRESOLVED"]


class Unresolved:
    """The value of :meth:`FrontEndContext.resolve` for an expression it cannot evaluate safely."""

    _instance: Unresolved | None = None

    def __new__(cls) -> Unresolved:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNRESOLVED"

    def __bool__(self) -> bool:
        return False


UNRESOLVED = Unresolved()


@dataclass(frozen=True)
class ObjectGuard:
    """An object the normalized function uses in place of what a call passes.

    ``path`` is an expression over the function's parameters (``"word_vect"``,
    ``"self.model"``, ``"models['spam']"``) that evaluates, at call time, to the object the
    plan was calibrated with (``name`` is the binding the normalized function reads). When the
    call's object is a different one with a different fingerprint, the pipeline runs the
    original function with a warning.
    """

    name: str
    path: str
    lineno: int


@dataclass(frozen=True)
class TypeGuard:
    """A parameter's type (and, for a DataFrame, its column labels) that a front-end rewrite
    rests on: a type test folded, a comprehension over ``df.columns`` evaluated at calibration
    (:mod:`willow.frontend.statics`). A call whose ``parameter`` has another type (or other
    columns) runs the original function. ``reason`` is the expression that was decided."""

    parameter: str
    type: type
    columns: tuple[Any, ...] | None
    lineno: int
    reason: str


FrontEndPass = Callable[[ast.FunctionDef, "FrontEndContext"], ast.FunctionDef]

_SAFE_NAME = re.compile(r"[^0-9A-Za-z_]+")


@dataclass
class FrontEndContext:
    """Calibration-time knowledge the passes share.

    ``constants`` maps names the function may read to their objects: the function's globals,
    its closure values, builtins, and the arguments that are not row inputs (fitted objects,
    models, tables, numbers). Names the function body assigns are *not* constants (a local
    shadows a global), so passes must check :meth:`is_local` before trusting a resolution of a
    bare name. ``row_parameters`` are the parameters holding one entry per row; ``arguments``
    is the whole calibration call (rows included), for a pass that must look at real outputs
    (e.g. whether a FeatureUnion branch returns a sparse matrix) -- run things on a few rows only.
    """

    filename: str
    constants: dict[str, Any]
    row_parameters: tuple[str, ...]
    parameters: tuple[str, ...]
    arguments: dict[str, Any] = field(default_factory=dict)
    locals_: set[str] = field(default_factory=set)
    bindings: dict[str, Any] = field(default_factory=dict)
    guards: list[ObjectGuard] = field(default_factory=list)
    type_guards: list[TypeGuard] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    taken: set[str] = field(default_factory=set)
    # parameters whose every read a pass replaced by guarded parts (willow.frontend.elements):
    # guarding the whole object too would only cost a fingerprint when a new container is passed
    covered: set[str] = field(default_factory=set)

    # ------------------------------------------------------------------ names

    def is_local(self, name: str) -> bool:
        """Whether ``name`` is assigned in the function body (so it is not a constant)."""
        return name in self.locals_

    def fresh_name(self, hint: str) -> str:
        """A name not used anywhere in the function, derived from ``hint``."""
        base = _SAFE_NAME.sub("_", hint).strip("_") or "value"
        if base[0].isdigit():
            base = "_" + base
        candidate, n = base, 1
        while candidate in self.taken or candidate in self.constants or hasattr(builtins, candidate):
            n += 1
            candidate = f"{base}_{n}"
        self.taken.add(candidate)
        return candidate

    def bind(self, obj: Any, hint: str) -> ast.Name:
        """Introduce a new name bound to ``obj`` (a closure cell of the normalized function) and
        return a load of it. The same object bound twice gets the same name."""
        for name, value in self.bindings.items():
            if value is obj:
                return ast.Name(id=name, ctx=ast.Load())
        name = self.fresh_name(hint)
        self.bindings[name] = obj
        return ast.Name(id=name, ctx=ast.Load())

    # ------------------------------------------------------------------ resolution

    def resolve(self, expr: ast.expr) -> Any:
        """The calibration-time object ``expr`` denotes, or :data:`UNRESOLVED`.

        Only side-effect-free chains are evaluated: a constant name (not a local, not a row
        input), then attribute reads and subscripts with constant keys (``pipe.named_steps["tfidf"]``,
        ``self.models[0]``). Anything else (calls, row inputs, locals) is unresolved.
        """
        if isinstance(expr, ast.Name):
            if self.is_local(expr.id) or expr.id in self.row_parameters:
                return UNRESOLVED
            if expr.id in self.bindings:
                return self.bindings[expr.id]
            if expr.id in self.constants:
                return self.constants[expr.id]
            if hasattr(builtins, expr.id):
                return getattr(builtins, expr.id)
            return UNRESOLVED
        if isinstance(expr, ast.Attribute):
            base = self.resolve(expr.value)
            if base is UNRESOLVED:
                return UNRESOLVED
            try:
                # getattr on an instance may run a property; fitted estimators' attributes are
                # plain data, and a property that raises just leaves the expression unresolved.
                return getattr(base, expr.attr)
            except Exception:  # noqa: BLE001
                return UNRESOLVED
        if isinstance(expr, ast.Subscript):
            base = self.resolve(expr.value)
            key = self._constant_key(expr.slice)
            if base is UNRESOLVED or key is UNRESOLVED:
                return UNRESOLVED
            if not isinstance(base, (dict, list, tuple)) and type(base).__name__ not in (
                "Pipeline",
                "FeatureUnion",
            ):
                return UNRESOLVED
            try:
                return base[key]
            except Exception:  # noqa: BLE001
                return UNRESOLVED
        return UNRESOLVED

    def _constant_key(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if (
            isinstance(node, ast.UnaryOp)
            and isinstance(node.op, ast.USub)
            and isinstance(node.operand, ast.Constant)
        ):
            return -node.operand.value
        if isinstance(node, ast.Tuple):
            parts = [self._constant_key(e) for e in node.elts]
            return UNRESOLVED if any(p is UNRESOLVED for p in parts) else tuple(parts)
        return UNRESOLVED

    # ------------------------------------------------------------------ reporting

    def note(self, text: str) -> None:
        """A line for ``explain()``: what a pass rewrote and why."""
        self.notes.append(text)

    def fail(self, message: str, lineno: int | None) -> UnsupportedPipelineError:
        """An :class:`~willow.UnsupportedPipelineError` naming ``filename:lineno`` (raise it)."""
        where = f"{self.filename}:{lineno}: " if lineno is not None else f"{self.filename}: "
        return UnsupportedPipelineError(
            f"{where}{message} Pass strict=False to willow.optimize to run this function unoptimized "
            "(with a warning)."
        )
