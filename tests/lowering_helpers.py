"""Compile one expression with the array-expression lowering, outside any pipeline (for tests)."""

from __future__ import annotations

import ast
from typing import Any

from willow.compiler.compile_pass import _resolve_fitted
from willow.compiler.lowering.arithmetic_codegen import lower_expression


def _evaluator(namespace: dict[str, Any]):
    def evaluate(node: ast.expr) -> Any:
        return eval(compile(ast.Expression(body=node), "<test>", "eval"), namespace)

    return evaluate


def compile_expression(source: str, namespace: dict[str, Any], row_names: tuple[str, ...] = ("rows",)):
    """``(run, operator)``: ``run(namespace)`` evaluates ``source`` through the compiled kernel
    (its operands evaluated in ``namespace``), as the rewritten statement would."""
    node = ast.parse(source, mode="eval").body
    evaluate = _evaluator(namespace)
    operator, arguments, _ = lower_expression(
        node, evaluate, lambda e: _resolve_fitted(e, set(row_names), evaluate), dict(namespace)
    )

    def run(values: dict[str, Any]) -> Any:
        scope = {**namespace, **values}
        return operator(*[_evaluator(scope)(a) for a in arguments])

    return run, operator


def original(source: str, namespace: dict[str, Any], values: dict[str, Any]) -> Any:
    return eval(source, {**namespace, **values})
