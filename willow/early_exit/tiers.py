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
no compiled model call to replace: :func:`uncompiled_note` says so in the plan's reason.
"""

from __future__ import annotations

import ast
from dataclasses import replace
from typing import Any

from willow.early_exit import planner
from willow.early_exit.plan import EarlyExitPlan
from willow.early_exit.wiring import model_node, with_model_operator

__all__ = [
    "consider_model_cascades",
    "uncompiled_note",
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
    (the calibrated :class:`~willow.compiler.graph.PipelineGraph`): with ``compile=False``, a
    plan that a model cascade could have served says so (:func:`uncompiled_note`)."""
    note = uncompiled_note(results[0], fn, arguments, options, graph) if results else ""
    if note:
        return [planner._noted(result, note) for result in results]
    staged: dict[str, Any] = {}  # one staged model for every tier's calibrations
    served: list[Any] = []
    planned: dict[Any, int] = {}  # question -> the tier that planned it
    for result in results:
        target = result.plan.accuracy_target
        key = _question(result, target, options)
        if key in planned:
            served.append(_as_stricter(result, served[planned[key]]))
            continue
        planned[key] = len(served)
        tier_options = replace(options, accuracy_target=target)
        served.append(planner.consider_model_cascade(result, fn, arguments, tier_options, staged))
    return served


def uncompiled_note(result: Any, fn: Any, arguments: dict[str, Any], options: Any, graph: Any) -> str:
    """Why no model cascade serves a ``compile=False`` pipeline that one could serve compiled
    (a tree-ensemble classifier's ``predict`` labels as the output), and what to do; ``""``
    otherwise. A model cascade replaces the compiled model call's operator
    (:func:`~willow.early_exit.wiring.with_model_operator`); uncompiled, the model call stays the
    library's own Python call, so there is no operator to replace."""
    if (
        options.compile
        or graph is None
        or not options.cascade
        or getattr(options, "early_exit", "exact") is False
        or result.output.decision != "model"
        or result.output.classes is None
        or graph.model_call.method != "predict"
    ):
        return ""
    from willow.compiler.execution import StatementRunner
    from willow.compiler.lowering.trees import TREE_LOWERINGS

    try:
        namespace = StatementRunner(graph, fn).namespace(arguments)
        model = eval(compile(ast.Expression(body=graph.model_call.model), "<willow>", "eval"), namespace)
    except Exception:  # noqa: BLE001 - the model is found the same way at serving; no note then
        return ""
    if type(model) not in TREE_LOWERINGS:
        return ""
    return (
        f"No model cascade (early_exit={getattr(options, 'early_exit', 'exact')!r}): with compile=False "
        f"the model call stays {type(model).__name__}.predict in Python, and a model cascade (staged "
        "early exit inside the tree ensemble, or a cheap model first) takes the place of the compiled "
        "model call. Optimize with compile=True to have one considered."
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


def _as_stricter(result: Any, stricter: Any) -> Any:
    """``result`` (a looser tier) serving what ``stricter`` (a stricter tier asked the same
    question) serves: its model cascade and plan, at this tier's target; unchanged when no model
    cascade serves there."""
    if planner._cascade_of(stricter.compilation) is None:
        return result
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
