"""Checking, at every call, that the objects the front end bound are still the ones passed.

The normalized function reads fitted objects passed as arguments (``word_vect``, ``self.model``)
from closure bindings fixed at calibration. A later call may pass other objects: then the plan
does not apply and the original function must run. :class:`ArgumentGuards` evaluates each
:class:`~willow.frontend.context.ObjectGuard`'s path on the call's arguments: the same object is
accepted at once (identity); another object is accepted when its content fingerprint equals the
calibrated one's (an equal copy, e.g. unpickled), and remembered so the next call is an identity
check again; otherwise the call is refused with a :class:`~willow.ModelChangedWarning` naming the
argument.

:class:`~willow.frontend.context.TypeGuard` s are checked the same way: a row input (or other
argument) whose exact type, or, for a DataFrame, whose column labels, differ from the calibration
call's, on which a folded type test or an evaluated comprehension rested, runs the original.
"""

from __future__ import annotations

import ast
import inspect
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from willow import fingerprints
from willow.errors import ModelChangedWarning
from willow.frontend.context import ObjectGuard, TypeGuard

__all__ = ["ArgumentGuards", "fingerprint"]


def fingerprint(obj: Any) -> str | None:
    """The stable content fingerprint of ``obj`` (:func:`willow.fingerprints.fingerprint`), or
    ``None`` when it cannot be computed."""
    try:
        return fingerprints.fingerprint(obj)
    except Exception:  # noqa: BLE001 - an object that cannot be hashed is never "the same"
        return None


class _Path:
    def __init__(self, guard: ObjectGuard, expected: Any, fn: Callable | None = None) -> None:
        self.path = guard.path
        self.lineno = guard.lineno
        tree = ast.parse(guard.path, mode="eval").body
        # a bare name is a parameter read from the call's arguments; a bare global (a batch size,
        # willow.frontend.chunking) is read from the function's namespace like any other path
        parameters = inspect.signature(fn).parameters if fn is not None else None
        is_parameter = isinstance(tree, ast.Name) and (parameters is None or tree.id in parameters)
        self.root = tree.id if is_parameter else None
        self.code = None if self.root else compile(ast.Expression(body=tree), "<willow guard>", "eval")
        self.fingerprint = fingerprint(expected)
        self.verified = expected
        # A path rooted at a module global or closure variable (``MODELS['word']``, see
        # willow.frontend.elements) is read from the function's own namespace at each call.
        self.namespace: dict[str, Any] = {"__builtins__": {}}
        self.cells: dict[str, Any] = {}
        if fn is not None and self.root is None:
            self.namespace = fn.__globals__
            self.cells = dict(zip(fn.__code__.co_freevars, fn.__closure__ or ()))

    def value(self, arguments: dict[str, Any]) -> Any:
        if self.root is not None:
            return arguments[self.root]
        if self.cells:
            arguments = {**{k: c.cell_contents for k, c in self.cells.items()}, **arguments}
        return eval(self.code, self.namespace, arguments)  # noqa: S307 - a path we parsed


class ArgumentGuards:
    """The guards of one normalized function (see the module doc)."""

    def __init__(
        self,
        fn: Callable,
        guards: Sequence[ObjectGuard],
        bindings: dict[str, Any],
        type_guards: Sequence[TypeGuard] = (),
    ) -> None:
        self._signature = inspect.signature(fn)
        self._positional = [
            p.name
            for p in self._signature.parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        self._simple = all(
            p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            for p in self._signature.parameters.values()
        )
        self._paths = [_Path(g, bindings[g.name], fn) for g in guards]
        self._types = tuple(type_guards)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._paths) + len(self._types)

    @property
    def paths(self) -> tuple[str, ...]:
        """Each guarded object's path over the parameters, in guard order."""
        return tuple(p.path for p in self._paths)

    @property
    def fingerprints(self) -> tuple[str | None, ...]:
        """Each guarded calibration object's content fingerprint, in guard order."""
        return tuple(p.fingerprint for p in self._paths)

    def _arguments(self, args: tuple, kwargs: dict) -> dict[str, Any]:
        if self._simple and not kwargs and len(args) == len(self._positional):
            return dict(zip(self._positional, args))
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)

    def check(self, args: tuple, kwargs: dict, warn: bool = True) -> bool:
        """Whether every guarded object of this call is the calibrated one (or an equal copy);
        returns ``False`` (with a warning unless ``warn=False``) on the first that is not."""
        if not self._paths and not self._types:
            return True
        try:
            arguments = self._arguments(args, kwargs)
        except TypeError:
            return False  # the original raises the binding error itself
        for guard in self._types:
            value = arguments.get(guard.parameter)
            found = _type_difference(guard, value)
            if found is not None:
                if warn:
                    warnings.warn(
                        f"Argument `{guard.parameter}` is {found}; the plan was calibrated on "
                        f"{_type_name(guard.type)} (line {guard.lineno}: `{guard.reason}` was decided for it), "
                        "so the original function runs instead. Call calibrate() with such inputs to "
                        "optimize them.",
                        ModelChangedWarning,
                        stacklevel=3,
                    )
                return False
        for path in self._paths:
            try:
                value = path.value(arguments)
            except Exception as exc:  # noqa: BLE001
                if warn:
                    self._warn(path, f"evaluating it raised {type(exc).__name__}: {exc}")
                return False
            if value is path.verified:
                continue
            found = fingerprint(value)
            if found is not None and found == path.fingerprint:
                with self._lock:
                    path.verified = value
                continue
            if warn:
                self._warn(path, f"a {type(value).__name__} whose content differs")
            return False
        return True

    @staticmethod
    def _warn(path: _Path, found: str) -> None:
        warnings.warn(
            f"Argument `{path.path}` is not the object this pipeline was calibrated with (found "
            f"{found}); the plan compiled and cascaded the calibration object, so the original "
            "function runs instead. Call calibrate() with the new object to optimize it.",
            ModelChangedWarning,
            stacklevel=4,
        )


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _type_difference(guard: TypeGuard, value: Any) -> str | None:
    """How ``value`` differs from what ``guard`` expects (``None`` when it does not)."""
    if type(value) is not guard.type:
        return f"a {_type_name(type(value))}"
    if guard.columns is not None:
        try:
            columns = tuple(value.columns)
        except Exception:  # noqa: BLE001
            return "a frame whose columns cannot be read"
        if columns != guard.columns:
            return f"a frame with columns {list(columns)[:8]} (expected {list(guard.columns)[:8]})"
    return None
