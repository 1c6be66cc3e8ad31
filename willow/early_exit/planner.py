"""The planner's side of model cascades: consider staged early exit when no feature cascade wins.

When calibration ends without a feature cascade but with a compiled pipeline whose model call is
a compiled tree-ensemble classifier and whose output is judged on the model's labels
(``OutputSpec.decision == "model"``), the model itself is the cost left to cut.
:func:`consider_model_cascade` then records the model's input on the calibration rows (through the
compiled pipeline itself), calibrates early exit on it (:func:`~willow.early_exit.calibrate.
calibrate_early_exit`: its own tune/holdout split, Clopper-Pearson proof, exact mode at
``accuracy_target=1.0``) and, when it measured at least :data:`MIN_SPEEDUP` times as fast as
the full ensemble (or ``require_faster=False``), serves the compiled pipeline with the model's operator swapped for
the :class:`~willow.early_exit.calibrate.ModelCascade`.

:func:`saved_state`, :func:`restore` and :func:`explain_lines` are what ``willow.api`` calls to
save, reload (plan files and pickles) and explain that choice.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from willow.compiler.lowering.base import NotLowerable
from willow.early_exit.calibrate import ModelCascade, calibrate_early_exit
from willow.early_exit.plan import EarlyExitPlan
from willow.early_exit.staged import stage_tree_model
from willow.errors import CalibrationError

__all__ = [
    "consider_model_cascades",
    "consider_model_cascade",
    "saved_state",
    "restore",
    "explain_lines",
    "METHODS",
]

METHODS = ("predict", "predict_proba", "decision_function")
#: A model cascade replaces the exact compiled ensemble only when it measured at least this much
#: faster on the tune rows (one timing of a loaded machine is noisy; small gains are not worth a
#: plan that is no longer exact).
MIN_SPEEDUP = 1.2


class _Recorder:
    """Stands in for the model's operator once, keeping the input it is called with."""

    def __init__(self, operator: Any) -> None:
        self.operator = operator
        self.inputs: list[Any] = []

    def __call__(self, X: Any) -> Any:
        self.inputs.append(X)
        return self.operator(X)


def _model_node(compilation: Any) -> Any:
    """The compiled node of the model call (statement ``None``), or ``None``."""
    if compilation is None:
        return None
    return next((node for node in compilation.nodes if node.statement is None), None)


def _with_model_operator(compilation: Any, operator: Any) -> Any:
    """``compilation`` with the model call's operator replaced by ``operator``."""
    from willow.compiler.compile_pass import Operators

    node = _model_node(compilation)
    operators = Operators({**vars(compilation.operators), node.attribute: operator})
    nodes = tuple(replace(n, operator=operator) if n is node else n for n in compilation.nodes)
    return replace(compilation, operators=operators, nodes=nodes)


def _serving(result: Any, fn: Any, compilation: Any, model: Any) -> tuple[Any, str]:
    from willow.cascades.calibration import build_cascade
    from willow.cascades.runtime import ModelGuard

    guard = ModelGuard(result.model_fingerprint, model)
    return build_cascade(compilation.graph, fn, None, 0.0, None, result.output, guard, compilation)


def consider_model_cascades(
    results: list[Any], fn: Any, arguments: dict[str, Any], options: Any
) -> list[Any]:
    """A calibration's results (one per accuracy tier, strictest first) with a model cascade
    considered for a single target; several tiers share one compiled ensemble, whose model
    operator a model cascade replaces, so tiered pipelines keep their feature cascades only."""
    if len(results) != 1:
        return results
    return [consider_model_cascade(results[0], fn, arguments, options)]


def consider_model_cascade(result: Any, fn: Any, arguments: dict[str, Any], options: Any) -> Any:
    """``result`` (a :class:`~willow.cascades.calibration.CalibrationResult`), serving a model
    cascade inside the tree ensemble when one applies and proves faster; otherwise unchanged
    (with a note in the plan's reason when one was tried). ``arguments``: the calibration call's
    arguments by name; ``options``: the :class:`~willow.cascades.calibration.CascadeOptions`."""
    from willow.cascades.calibration import call_with

    compilation = result.compilation
    node = _model_node(compilation)
    mode = getattr(options, "early_exit", "exact")
    if (
        not options.cascade
        or mode is False
        or result.plan.cascade
        or result.function is None
        or node is None
        or result.output.decision != "model"
        or result.output.classes is None
    ):
        return result
    model, method = node.recipe
    # only labels: an exited row keeps its proven class but its probabilities or scores are
    # estimates, so a function returning predict_proba / decision_function would change
    if method != "predict" or not hasattr(getattr(compilation.operators, node.attribute), "ensemble"):
        return result
    full = getattr(compilation.operators, node.attribute)
    recorder = _Recorder(full)
    recording, _ = _serving(result, fn, _with_model_operator(compilation, recorder), model)
    call_with(recording.__wrapped__, arguments)
    if len(recorder.inputs) != 1:
        return result
    try:
        staged = stage_tree_model(model, method)
        cascade = calibrate_early_exit(
            model,
            recorder.inputs[0],
            method=method,
            # "exact": exits the remaining trees cannot overturn only, so outputs stay identical
            accuracy_target=options.accuracy_target if mode is True else 1.0,
            confidence=options.confidence,
            random_state=options.random_state,
            staged=staged,
        )
    except (CalibrationError, NotLowerable) as exc:
        return _noted(result, f"No model cascade either: {exc}")
    plan = cascade.plan
    if options.require_faster and not (plan.expected_speedup or 0.0) >= MIN_SPEEDUP:
        return _noted(
            result,
            f"A model cascade (staged early exit) was calibrated but measured {plan.expected_speedup:.2f}x "
            f"the full ensemble's speed ({plan.seconds_per_row * 1e6:.2f} vs "
            f"{plan.full_seconds_per_row * 1e6:.2f} us/row), under the {MIN_SPEEDUP}x it must show, "
            "so the compiled pipeline serves (require_faster=False serves it anyway).",
        )
    cascade.full = full
    swapped = _with_model_operator(compilation, cascade)
    function, source = _serving(result, fn, swapped, model)
    note = (
        f"Instead, a model cascade inside {plan.model} serves: staged early exit after "
        f"{', '.join(map(str, plan.stops[:-1]))} of {plan.n_trees} trees (see below)."
    )
    return replace(_noted(result, note), function=function, source=source, compilation=swapped)


def _noted(result: Any, note: str) -> Any:
    return replace(result, plan=replace(result.plan, reason=f"{result.plan.reason} {note}".strip()))


def _cascade_of(compilation: Any) -> ModelCascade | None:
    node = _model_node(compilation)
    operator = None if node is None else getattr(compilation.operators, node.attribute, None)
    return operator if isinstance(operator, ModelCascade) else None


def saved_state(compilation: Any) -> dict[str, Any]:
    """What a saved plan keeps of a serving model cascade: ``{"early_exit": plan}`` or nothing."""
    cascade = _cascade_of(compilation)
    return {} if cascade is None else {"early_exit": cascade.plan}


def restore(compilation: Any, state: dict[str, Any]) -> Any:
    """``compilation`` (rebuilt from saved recipes) with the saved model cascade swapped in."""
    plan: EarlyExitPlan | None = state.get("early_exit")
    node = _model_node(compilation)
    if plan is None or node is None:
        return compilation
    model, method = node.recipe
    full = getattr(compilation.operators, node.attribute)
    return _with_model_operator(compilation, ModelCascade.from_plan(model, method, plan, full=full))


def explain_lines(compilation: Any) -> list[str]:
    """The serving model cascade's table for ``explain()`` (empty when none serves)."""
    cascade = _cascade_of(compilation)
    return [] if cascade is None else ["", cascade.plan.table()]
