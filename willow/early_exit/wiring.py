"""Wiring a model cascade into a calibrated pipeline: the compiled model call's node, the
pipeline served with another operator in its place, and the inputs that operator receives.

Shared by the planner (:mod:`willow.early_exit.planner`) and the plans it compares
(:mod:`willow.early_exit.behind`), below both so that neither imports the other.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

__all__ = ["model_node", "with_model_operator", "serving", "recorded", "with_cascade"]


class _Recorder:
    """Stands in for the model's operator once, keeping the input it is called with."""

    def __init__(self, operator: Any) -> None:
        self.operator = operator
        self.inputs: list[Any] = []

    def __call__(self, X: Any) -> Any:
        self.inputs.append(X)
        return self.operator(X)


def model_node(compilation: Any) -> Any:
    """The compiled node of the model call (statement ``None``), or ``None``."""
    if compilation is None:
        return None
    return next((node for node in compilation.nodes if node.statement is None), None)


def with_model_operator(compilation: Any, operator: Any) -> Any:
    """``compilation`` with the model call's operator replaced by ``operator``."""
    from willow.compiler.compile_pass import Operators

    node = model_node(compilation)
    operators = Operators({**vars(compilation.operators), node.attribute: operator})
    nodes = tuple(replace(n, operator=operator) if n is node else n for n in compilation.nodes)
    return replace(compilation, operators=operators, nodes=nodes)


def serving(result: Any, fn: Any, compilation: Any, model: Any, cascade: bool = False) -> tuple[Any, str]:
    """The serving function of ``compilation``: the compiled pipeline, or with ``cascade`` the
    result's feature cascade (whose uncertain rows call the compilation's model operator)."""
    from willow.cascades.calibration import build_cascade
    from willow.cascades.runtime import ModelGuard

    guard = ModelGuard(result.model_fingerprint, model)
    if cascade:
        return build_cascade(
            compilation.graph, fn, result.layout, result.plan.threshold, result.approximate, result.output,
            guard, compilation,
        )  # fmt: skip
    return build_cascade(compilation.graph, fn, None, 0.0, None, result.output, guard, compilation)


def recorded(result: Any, fn: Any, arguments: dict[str, Any], model: Any, cascade: bool) -> list[Any]:
    """The inputs the model's operator receives when the serving function (the feature cascade
    with ``cascade``, else the compiled pipeline) runs on the calibration call ``arguments``."""
    from willow.cascades.calibration import call_with

    compilation = result.compilation
    recorder = _Recorder(getattr(compilation.operators, model_node(compilation).attribute))
    recording, _ = serving(result, fn, with_model_operator(compilation, recorder), model, cascade)
    call_with(recording.__wrapped__, arguments)
    return recorder.inputs


def with_cascade(result: Any, fn: Any, cascade: Any, feature_cascade: bool) -> Any:
    """``result`` served with ``cascade`` as its model operator (behind its feature cascade with
    ``feature_cascade``, else in the compiled pipeline alone)."""
    compilation = result.compilation
    cascade.full = getattr(compilation.operators, model_node(compilation).attribute)
    swapped = with_model_operator(compilation, cascade)
    model = model_node(compilation).recipe[0]
    function, source = serving(result, fn, swapped, model, cascade=feature_cascade)
    return replace(result, function=function, source=source, compilation=swapped)
