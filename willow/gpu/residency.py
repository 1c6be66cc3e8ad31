"""Device-resident values between device operators of one generated serving function.

A compiled ``device="cuda"`` pipeline calls its operators as ``_willow.ops.<name>(...)``. Each
device operator copies its inputs host -> device and its output back, so two in a row (an
elementwise feature kernel feeding a tree or linear kernel) would send the features back to the
host only to copy them over again. :func:`resident_operators` reads the generated function and
finds the variables that only ever travel from one device operator to another::

    features = _willow.ops.features_expr(X)        # an elementwise CUDA kernel
    return _willow.ops.model_predict(features)     # a CUDA tree kernel

Here ``features`` is assigned only from device operators' calls and read only as a positional
argument of device operators that take device rows (``device_inputs``), so its producer is served
by :class:`KeepOnDevice` (its ``output_device``: the result is left on the device) and the
consumer finds its rows there (no upload). One call then moves ``X`` over once and the model's
output back once. Anything else reading the variable (a host statement, ``return``, the cascade's
row narrowing, a lambda) keeps the producer as it is: host code always gets host arrays.

The analysis is on the final generated function, not the traced graph, because cascades and top-K
add their own reads (``take_rows``...) of the same variables. Calibration runs the operators
unwrapped (host arrays everywhere); only the serving function's ``ops`` are replaced.
"""

from __future__ import annotations

import ast
from typing import Any

__all__ = ["KeepOnDevice", "resident_variables", "resident_operators"]

RUNTIME = "_willow"


class KeepOnDevice:
    """A device operator whose calls return their output on the device (``output_device``).

    The rest of the operator's contract (``name``, ``source``, ``device``...) is the wrapped
    operator's."""

    def __init__(self, operator: Any) -> None:
        self.operator = operator

    def __call__(self, *args: Any) -> Any:
        return self.operator.output_device(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.operator, name)

    def __repr__(self) -> str:
        return f"KeepOnDevice({self.operator!r})"


def _ops_attribute(node: ast.AST) -> str | None:
    """``name`` for a call ``_willow.ops.name(...)``, else ``None``."""
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    if (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Attribute)
        and func.value.attr == "ops"
        and isinstance(func.value.value, ast.Name)
        and func.value.value.id == RUNTIME
    ):
        return func.attr
    return None


def _on_device(operator: Any) -> bool:
    return getattr(operator, "device", "cpu") == "cuda"


def resident_variables(function: ast.AST, operators: dict[str, Any]) -> dict[str, set[str]]:
    """Variable -> the operators assigning it, for every variable of ``function`` that may stay
    on the device: each assignment is ``v = _willow.ops.a(...)`` with ``a`` a device operator that
    has ``output_device``, and each read is a positional argument of ``_willow.ops.b(...)`` with
    ``b`` a device operator that takes device rows (``device_inputs``)."""
    producers: dict[str, set[str]] = {}
    refused: set[str] = set()
    parents = {child: parent for parent in ast.walk(function) for child in ast.iter_child_nodes(parent)}
    for node in ast.walk(function):
        if isinstance(node, (ast.Global, ast.Nonlocal)):
            refused.update(node.names)
        elif isinstance(node, ast.arg):
            refused.add(node.arg)  # a parameter is the caller's (host) object
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            parent = parents.get(node)
            if isinstance(parent, ast.Assign) and parent.targets == [node]:
                attribute = _ops_attribute(parent.value)
                operator = operators.get(attribute) if attribute else None
                if _on_device(operator) and hasattr(operator, "output_device"):
                    producers.setdefault(node.id, set()).add(attribute)
                    continue
            refused.add(node.id)  # another assignment (tuples, loops, augmented, walrus...)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            parent = parents.get(node)
            attribute = _ops_attribute(parent) if parent is not None else None
            operator = operators.get(attribute) if attribute else None
            if not (
                isinstance(parent, ast.Call)
                and node in parent.args
                and _on_device(operator)
                and getattr(operator, "device_inputs", False)
            ):
                refused.add(node.id)
    return {name: found for name, found in producers.items() if name not in refused}


def resident_operators(function: ast.AST, operators: Any) -> Any:
    """``operators`` (an :class:`~willow.compiler.compile_pass.Operators`) for serving
    ``function``: the producers of :func:`resident_variables` wrapped in :class:`KeepOnDevice`,
    or ``operators`` itself when no value can stay on the device (every ``device="cpu"`` plan)."""
    from willow.compiler.compile_pass import Operators

    if operators is None:
        return None
    table = dict(operators.__dict__)
    variables = resident_variables(function, table)
    keep = set().union(*variables.values())
    # an operator called anywhere else (another variable, an argument, a return) must keep
    # returning host arrays there, so it is not wrapped at all
    assigned = {
        id(node.value)
        for node in ast.walk(function)
        if isinstance(node, ast.Assign)
        and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id in variables
    }
    for node in ast.walk(function):
        attribute = _ops_attribute(node)
        if attribute in keep and id(node) not in assigned:
            keep.discard(attribute)
    if not keep:
        return operators
    return Operators({name: KeepOnDevice(op) if name in keep else op for name, op in table.items()})
