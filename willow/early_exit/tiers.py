"""Model cascades per accuracy tier: each tier may serve its own model cascade at its own target.

``accuracy_target=(0.99, 0.95)`` calibrates one result per tier (:mod:`willow.cascades.tiers`),
all sharing one compiled pipeline. :func:`consider_model_cascades` asks the planner
(:func:`~willow.early_exit.planner.consider_model_cascade`) about each tier at that tier's own
target; a tier that gets a model cascade gets its own copy of the compilation with its model
operator swapped (:func:`~willow.early_exit.wiring.with_model_operator` copies the operators and
nodes, never changes them), so one tier's swap leaves every other tier's operator as it was. One
staged model (the kernels of the staged ensemble) is shared by every tier's calibration.

Tiers whose question is the same (the same feature cascade, or none, at the same model-cascade
target: with ``early_exit="exact"`` every tier's model cascade is exact, target 1.0) are planned
once, for the strictest of them; the looser ones serve that plan, as
:mod:`willow.cascades.tiers` lets a looser tier serve a stricter tier's proven cascade. Its
proof reaches the stricter target, hence theirs; and they serve one plan, so the serving scaler
groups them (:func:`plan_keys`).

:func:`saved_state` and :func:`compilations` save and rebuild the looser tiers' model cascades
(plan files and pickles); :func:`explain_lines` shows each tier's. With ``compile=False`` there is
no compiled model call to replace: with ``early_exit=True`` a staged model takes the library call's
place (:mod:`willow.early_exit.uncompiled`), otherwise the plan's reason says why none serves.
"""

from __future__ import annotations

import ast
from dataclasses import replace
from typing import Any

from willow.early_exit import planner
from willow.early_exit.plan import EarlyExitPlan
from willow.early_exit.uncompiled import consider_uncompiled
from willow.early_exit.wiring import model_node, with_model_operator

__all__ = [
    "consider_model_cascades",
    "uncompiled_model",
    "served_plans",
    "plan_keys",
    "saved_state",
    "compilations",
    "explain_lines",
]


def consider_model_cascades(
    results: list[Any], fn: Any, arguments: dict[str, Any], options: Any, graph: Any = None
) -> list[Any]:
    """A calibration's results (one per accuracy tier, strictest first), each considered for a
    model cascade at its own target (see the module docstring); one result per tier. ``graph``
    (the calibrated :class:`~willow.compiler.graph.PipelineGraph`): with ``compile=False``, see
    :func:`uncompiled_model` and :mod:`willow.early_exit.uncompiled`."""
    model = uncompiled_model(results[0], fn, arguments, options, graph) if results else None
    staged: dict[str, Any] = {}  # one staged model for every tier's calibrations
    served: list[Any] = []
    planned: dict[Any, int] = {}  # question -> the tier that planned it
    for result in results:
        target = result.plan.accuracy_target
        key = _question(result, target, options)
        if key in planned:
            stricter = planned[key]
            served.append(_as_stricter(result, served[stricter], results[stricter].plan.reason))
            continue
        planned[key] = len(served)
        tier_options = replace(options, accuracy_target=target)
        if model is None:
            served.append(planner.consider_model_cascade(result, fn, arguments, tier_options, staged))
        elif (
            getattr(options, "early_exit", "exact") is True
            and not result.plan.cascade
            and not results[0].plan.cascade
        ):
            served.append(consider_uncompiled(result, fn, arguments, tier_options, graph, model, staged))
        else:
            why = _uncompiled_note(
                model, options, result.plan.cascade, results[0].plan.cascade, graph.model_call.method
            )
            served.append(planner._noted(result, why))
    return served


def uncompiled_model(result: Any, fn: Any, arguments: dict[str, Any], options: Any, graph: Any) -> Any:
    """With ``compile=False``, the model of a pipeline that a model cascade could serve compiled
    (a tree-ensemble classifier's ``predict`` labels are the output, a thresholded output
    (:func:`~willow.early_exit.planner.thresholded_decision`), or with ``tolerance=`` a
    tree-ensemble regressor's ``predict`` returned as it is); ``None`` otherwise."""
    thresholded = planner.thresholded_decision(result.output) is not None
    classifier = result.output.decision == "model" and result.output.classes is not None
    regressor = (
        result.output.decision == "numbers"
        and result.output.classes is None
        and getattr(options, "tolerance", None) is not None
        and graph is not None
        and graph.post is None
    )
    if (
        options.compile
        or graph is None
        or not options.cascade
        or getattr(options, "early_exit", "exact") is False
        or not (classifier or regressor or thresholded)
        or (graph.model_call.method != "predict" and not thresholded)
    ):
        return None
    from willow.compiler.execution import StatementRunner
    from willow.compiler.lowering.trees import TREE_LOWERINGS

    try:
        namespace = StatementRunner(graph, fn).namespace(arguments)
        model = eval(compile(ast.Expression(body=graph.model_call.model), "<willow>", "eval"), namespace)
    except Exception:  # noqa: BLE001 - no model found: nothing to say about it
        return None
    return model if type(model) in TREE_LOWERINGS else None


def _uncompiled_note(
    model: Any, options: Any, feature_cascade: bool, strictest_cascade: bool, method: str = "predict"
) -> str:
    """Why no model cascade serves an uncompiled pipeline, and what to do. A looser tier gets
    none either when the strictest tier serves a feature cascade: a saved plan rebuilds the tiers
    from the strictest tier's compiled operators, of which an uncompiled feature cascade has none.
    ``method``: the model method the pipeline calls."""
    name = f"{type(model).__name__}.{method}"
    if feature_cascade:
        why = f"the feature cascade's uncertain rows call {name} in Python"
    elif strictest_cascade:
        why = f"the strictest tier serves an uncompiled feature cascade, so {name} stays a Python call"
    else:
        why = f"the model call stays {name} in Python (early_exit=True puts a staged model in its place)"
    return (
        f"No model cascade (early_exit={getattr(options, 'early_exit', 'exact')!r}, compile=False): {why}, and a model "
        "cascade takes the place of the compiled model call. Optimize with compile=True to have one "
        "considered."
    )


def _question(result: Any, target: float, options: Any) -> tuple[Any, ...]:
    """What the planner's answer for ``result`` depends on besides the shared calibration: the
    feature cascade it serves (its groups, threshold and approximate model) and the model
    cascade's target (1.0 unless ``early_exit=True``)."""
    exits = target if getattr(options, "early_exit", "exact") is True else 1.0
    plan = result.plan
    if not plan.cascade:
        return (exits, None)
    return (exits, tuple(plan.selected), plan.threshold, id(result.approximate))


def _as_stricter(result: Any, stricter: Any, asked: str) -> Any:
    """``result`` (a looser tier) serving what ``stricter`` (a stricter tier asked the same
    question; ``asked``: its reason before) serves: its model cascade and plan, at this tier's
    target; when no model cascade serves there, ``result`` with the same note."""
    if planner._cascade_of(stricter.compilation) is None:
        return planner._noted(result, stricter.plan.reason.removeprefix(asked).strip())
    own = result.plan
    borrowed = stricter.plan
    reason = (
        f"serves the {borrowed.accuracy_target} tier's plan (the same question for its model cascade, "
        f"proven at that stricter target): {borrowed.reason}"
    )
    return replace(stricter, plan=replace(borrowed, accuracy_target=own.accuracy_target, reason=reason))


def _tier_compilations(pipeline: Any) -> list[Any]:
    """Per declared tier (strictest first), the compiled pipeline serving it, or ``None``."""
    state = getattr(pipeline, "__dict__", {})
    strictest = state.get("_compilation") if state.get("_serving") else None
    looser = [t.compilation or strictest for t in state.get("_tiers", ())]
    return [strictest, *looser]


def served_plans(pipeline: Any) -> tuple[Any, ...]:
    """Per declared tier (strictest first): the plan of the model cascade serving it (an
    :class:`~willow.early_exit.plan.EarlyExitPlan` or a
    :class:`~willow.early_exit.distilled.DistilledPlan`), or ``None``."""
    return tuple(
        None if (cascade := planner._cascade_of(c)) is None else cascade.plan
        for c in _tier_compilations(pipeline)
    )


def plan_keys(pipeline: Any) -> tuple[Any, ...]:
    """Per declared tier, a key equal for tiers served by the same model cascade (its stages and
    thresholds, or its cheap model's kind, threshold and figures: plain values, so equal after
    save/load), ``None`` without one."""
    return tuple(None if plan is None else _plan_key(plan) for plan in served_plans(pipeline))


def _plan_key(plan: Any) -> tuple[Any, ...]:
    if isinstance(plan, EarlyExitPlan):
        return ("staged early exit", plan.model, plan.n_trees, plan.stops, plan.thresholds)
    return ("cheap model first", plan.model, plan.kind, plan.threshold, plan.exit_fraction, plan.fit_rows)


def saved_state(pipeline: Any) -> dict[str, Any]:
    """What a plan file keeps of the looser tiers' model cascades: ``{"tier_early_exit": (plan
    or None per looser tier)}``, or nothing for a single tier or when no tier serves one."""
    plans = served_plans(pipeline)
    return {"tier_early_exit": plans[1:]} if len(plans) > 1 and any(p is not None for p in plans) else {}


def compilations(state: dict[str, Any], compilation: Any) -> tuple[Any, ...]:
    """Per looser tier of a saved ``state``, its compiled pipeline rebuilt from ``compilation``
    (the strictest tier's, restored) with its own model cascade, or ``None`` (it serves
    ``compilation``). Tiers whose saved plans are equal share one rebuilt cascade."""
    plans = state.get("tier_early_exit") or ()
    node = model_node(compilation)
    if not plans or node is None:
        return ()
    strictest = planner._cascade_of(compilation)
    # the full compiled ensemble, under whatever serves the strictest tier
    base = compilation if strictest is None else with_model_operator(compilation, strictest.full)
    rebuilt: dict[Any, Any] = {} if strictest is None else {_same(strictest.plan): compilation}
    own = []
    for plan in plans:
        if plan is None:
            own.append(base if strictest is not None else None)
            continue
        key = _same(plan)
        if key not in rebuilt:
            rebuilt[key] = planner.restore(base, {"early_exit": plan})
        own.append(rebuilt[key])
    return tuple(own)


def _same(plan: Any) -> Any:
    """Equal for plans one rebuilt cascade serves: the staged plan itself (plain data), or the
    very cheap-model plan (its fitted model is not compared)."""
    return plan if isinstance(plan, EarlyExitPlan) else id(plan)


def explain_lines(pipeline: Any) -> list[str]:
    """``explain()``'s model-cascade tables: the strictest tier's, then each looser tier's that
    differs from every stricter tier's (named by its target)."""
    lines = planner.explain_lines(_tier_compilations(pipeline)[0])
    keys = plan_keys(pipeline)
    plans = served_plans(pipeline)
    targets = [t.target for t in pipeline.__dict__.get("_tiers", ())]
    for i in range(1, len(keys)):
        if keys[i] is not None and keys[i] not in keys[:i]:
            lines += ["", f"Tier {targets[i - 1]:g}: " + plans[i].table()]
    return lines
