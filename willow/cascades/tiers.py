"""Accuracy tiers: several proven plans from one calibration, picked per call.

``willow.optimize(accuracy_target=(0.999, 0.99, 0.95))`` declares tiers, strictest first. One
calibration measures costs and importances and fits the candidates' approximate models once
(:func:`~willow.cascades.calibration.calibrate_targets`); each tier then gets its own thresholds,
its own cheapest feasible candidate and its own holdout proof, the same one-sided Clopper-Pearson
proof a single target gets. Every tier's bound is proven on its own at ``confidence`` (the bounds
are not simultaneous: each claim holds at that level, as each would alone).

A looser tier whose own cascade was not served for a reason other than its holdout agreement
(it measured slower than the pipeline without a cascade, or none was planned) serves the plan of
the nearest stricter tier that was proven instead: that plan's lower bound already reaches the
stricter target, hence this one, and its failure was not decided by the agreement on the holdout
rows, so the choice adds no multiple testing. A looser tier whose own cascade missed its bound on
the holdout rows runs without a cascade, exactly as a single target would: serving another plan
after seeing that miss would be a second look at the same holdout rows (its error could add up to
twice ``1 - confidence``).

The pipeline installs the strictest tier as its plan (``plan_``, the plain call); this module
keeps the looser ones (:class:`ServedTier`), reports every tier (:class:`TierResult`,
``pipeline.tiers_``), answers ``pipeline.tier(target)`` and saves and restores the looser tiers'
plans beside the strictest's.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from numbers import Real
from typing import Any

import numpy as np

from willow.cascades.approximate import ApproximateModel
from willow.cascades.calibration import (
    CalibrationResult,
    CascadeOptions,
    build_cascade,
    calibrate_targets,
)
from willow.cascades.plan import CascadePlan
from willow.cascades.runtime import ModelGuard
from willow.compiler.codegen import layout_cascade
from willow.compiler.compile_pass import CompilationResult
from willow.compiler.graph import PipelineGraph
from willow.errors import CalibrationError, UnknownTierError

__all__ = [
    "TierResult",
    "ServedTier",
    "declares_tiers",
    "check_targets",
    "targets_of",
    "strictest",
    "calibrate",
    "serve_tiers",
    "tier_results",
    "tier_index",
    "tier_callable",
    "saved_state",
    "restore",
    "table",
]

_SAME_AS_STRICTEST = -1
"""In a saved tier state: this tier's approximate model is the strictest tier's (saved once)."""


@dataclass(frozen=True)
class TierResult:
    """One accuracy tier as calibrated: what ``pipeline.tiers_`` lists, strictest first.

    ``lower_bound`` is the proven one-sided Clopper-Pearson bound of the served plan's agreement
    with the original on the holdout rows (without a feature cascade: the bound of an approximate
    model cascade serving the model call, else 0: the tier is exact); ``measured_speedup`` the served plan's speed over the original on those rows
    (``None`` when not measured: the original serves); ``early_fraction`` the fraction of
    holdout rows its approximate model answered.
    """

    target: float
    lower_bound: float
    measured_speedup: float | None
    early_fraction: float
    plan: CascadePlan

    @classmethod
    def of(cls, target: float, plan: CascadePlan, model_bound: float | None = None) -> TierResult:
        """``model_bound``: the proven bound of an approximate model cascade serving the tier's
        model call (:mod:`willow.early_exit`), where no feature cascade serves."""
        return cls(
            target=target,
            lower_bound=plan.lower_bound if plan.cascade else (model_bound or 0.0),
            measured_speedup=plan.measured_speedup,
            early_fraction=plan.confident_fraction if plan.cascade else 0.0,
            plan=plan,
        )


@dataclass
class ServedTier:
    """A looser tier as the pipeline serves it (the strictest is the pipeline's own plan)."""

    target: float
    plan: CascadePlan
    approximate: ApproximateModel | None
    function: Callable | None
    source: str | None
    serving: Callable | None  # ``function``, behind a monitor with ``monitor=``; None: the original
    # the tier's own compiled pipeline (its model operator may be its own model cascade:
    # willow.early_exit.tiers); None: the pipeline's
    compilation: CompilationResult | None = None


# ---------------------------------------------------------------------------------------- targets


def declares_tiers(value: Any) -> bool:
    """Whether ``accuracy_target`` is a sequence of targets (tiers) rather than one number."""
    return isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, (str, bytes))


def check_targets(value: Any) -> tuple[float, ...]:
    """Validate accuracy tiers: a sequence of numbers in (0, 1], strictly decreasing (strictest
    first); returned as a tuple of floats."""
    items = list(np.asarray(value, dtype=object).ravel()) if isinstance(value, np.ndarray) else list(value)
    if not items:
        raise CalibrationError(
            "accuracy_target must be a number in (0, 1] or a sequence of tiers such as "
            "(0.999, 0.99, 0.95), got an empty sequence. Pass at least one target."
        )
    targets = tuple(_fraction(f"accuracy_target[{i}]", v) for i, v in enumerate(items))
    for i in range(1, len(targets)):
        if targets[i] >= targets[i - 1]:
            what = "repeats" if targets[i] == targets[i - 1] else "is stricter than"
            fix = tuple(sorted(set(targets), reverse=True))
            raise CalibrationError(
                f"accuracy_target tiers must be distinct and listed strictest first (strictly "
                f"decreasing), got {targets}: accuracy_target[{i}]={targets[i]} {what} "
                f"accuracy_target[{i - 1}]={targets[i - 1]}. Pass accuracy_target={fix}."
            )
    return targets


def _fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (Real, np.integer, np.floating)):
        raise CalibrationError(
            f"{name} must be a number in (0, 1], got {type(value).__name__} {value!r}. Pass e.g. "
            "accuracy_target=0.99 or tiers accuracy_target=(0.999, 0.99, 0.95)."
        )
    number = float(value)
    if not 0.0 < number <= 1.0:
        raise CalibrationError(
            f"{name} must be in (0, 1] (the fraction of rows that must agree with the original), "
            f"got {value!r}. Pass e.g. 0.99."
        )
    return number


def targets_of(accuracy_target: float | tuple[float, ...]) -> tuple[float, ...]:
    """The declared tiers, strictest first (one for a single target)."""
    return accuracy_target if isinstance(accuracy_target, tuple) else (float(accuracy_target),)


def strictest(accuracy_target: float | tuple[float, ...]) -> float:
    """The strictest declared target: what the plain call serves and the split is sized for."""
    return targets_of(accuracy_target)[0]


# ------------------------------------------------------------------------------------ calibration


def calibrate(
    graph: PipelineGraph,
    fn: Callable,
    arguments: dict[str, Any],
    y: Any,
    options: CascadeOptions,
    accuracy_target: float | tuple[float, ...],
) -> list[CalibrationResult]:
    """Calibrate every declared tier in one calibration; one result per tier, strictest first."""
    targets = targets_of(accuracy_target)
    options = replace(options, accuracy_target=targets[0])
    return _inherit_stricter(calibrate_targets(graph, fn, arguments, y, options, targets))


def _inherit_stricter(results: list[CalibrationResult]) -> list[CalibrationResult]:
    """A looser tier without a cascade of its own, unless its holdout agreement decided that,
    serves the nearest stricter tier's proven cascade (its bound reaches the stricter target, so
    this one too); see the module doc."""
    served = list(results)
    for i in range(1, len(served)):
        own = served[i].plan
        if own.cascade or _missed_its_bound(own):
            continue
        donor = next((r for r in reversed(served[:i]) if r.plan.cascade), None)
        if donor is None:
            continue
        borrowed = donor.plan
        reason = (
            f"serves the {borrowed.accuracy_target} tier's cascade, proven at lower bound "
            f"{borrowed.lower_bound:.4f} >= {own.accuracy_target}; this tier's own plan: "
            f"{own.reason.rstrip('.')}, judged on {borrowed.reason.split(', judged on ', 1)[-1]}"
        )
        served[i] = replace(donor, plan=replace(borrowed, accuracy_target=own.accuracy_target, reason=reason))
    return served


def _missed_its_bound(plan: CascadePlan) -> bool:
    """Whether ``plan``'s cascade was rejected by its agreement on the holdout rows."""
    return plan.rejected_lower_bound is not None and plan.rejected_lower_bound < plan.accuracy_target


# ---------------------------------------------------------------------------------------- serving


def serve_tiers(
    pipeline: Any,
    results: Sequence[
        tuple[CascadePlan, ApproximateModel | None, Callable | None, str | None, CompilationResult | None]
    ],
) -> tuple[ServedTier, ...]:
    """The looser tiers ``(plan, approximate, function, source, compilation)`` as served by
    ``pipeline`` (each cascade behind its own monitor when the pipeline has ``monitor=``;
    ``compilation``: the tier's compiled pipeline, ``None`` for the pipeline's)."""
    served = []
    for plan, approximate, function, source, compilation in results:
        serving = function
        if pipeline.monitor is not None and plan.cascade and function is not None:
            from willow import monitor

            serving = monitor.attach(
                pipeline,
                plan,
                pipeline._output,
                pipeline._fingerprint,
                function,
                compilation or pipeline._compilation,
            )
        served.append(
            ServedTier(plan.accuracy_target, plan, approximate, function, source, serving, compilation)
        )
    return tuple(served)


def tier_results(pipeline: Any) -> tuple[TierResult, ...]:
    """``pipeline.tiers_``: every declared tier's result, strictest first."""
    plan = pipeline.plan_  # NotCalibratedError before calibrate()
    if not isinstance(plan, CascadePlan):
        return ()  # top-K plans have no accuracy tiers
    strictest = pipeline.__dict__.get("_compilation") if pipeline.__dict__.get("_serving") else None
    first = TierResult.of(plan.accuracy_target, plan, _model_call_bound(strictest))
    looser = pipeline.__dict__.get("_tiers", ())
    return (first,) + tuple(
        TierResult.of(t.target, t.plan, _model_call_bound(t.compilation or strictest)) for t in looser
    )


def _model_call_bound(compilation: CompilationResult | None) -> float | None:
    """The proven lower bound of the operator serving ``compilation``'s model call when it is
    approximate (a model cascade with margin exits or a cheap model first carries its ``plan``);
    ``None`` when that call is exact."""
    node = None if compilation is None else next((n for n in compilation.nodes if n.statement is None), None)
    plan = getattr(getattr(node, "operator", None), "plan", None)
    return None if plan is None or getattr(plan, "exact", True) else plan.lower_bound


def tier_index(pipeline: Any, target: Any) -> int:
    """Position of ``target`` among the declared tiers (0: the strictest); raises
    :class:`~willow.errors.UnknownTierError` naming the declared tiers otherwise."""
    declared = targets_of(pipeline.accuracy_target)
    try:
        number = float(target)
    except (TypeError, ValueError):
        number = math.nan
    for i, t in enumerate(declared):
        if math.isclose(number, t, rel_tol=0.0, abs_tol=1e-12):
            return i
    raise UnknownTierError(
        f"tier({target!r}): {pipeline.__qualname__} declares the accuracy tiers "
        f"{', '.join(repr(t) for t in declared)} (accuracy_target={pipeline.accuracy_target!r}), not "
        f"{target!r}. Pass one of those, or declare it with willow.optimize(accuracy_target=(...)) "
        "and calibrate again."
    )


def tier_serving(pipeline: Any, index: int) -> Callable | None:
    """What serves tier ``index`` now (``None``: nothing is installed, the original runs)."""
    if index == 0:
        return pipeline._serving
    served = pipeline.__dict__.get("_tiers", ())
    return served[index - 1].serving if index - 1 < len(served) else None


def tier_callable(pipeline: Any, target: Any) -> Callable:
    """``pipeline.tier(target)``: a function with the original's signature that serves that tier
    (checked against the declared tiers now; what serves it is looked up at each call, so a
    later calibration, background compilation or loaded plan is picked up)."""
    index = tier_index(pipeline, target)

    @functools.wraps(pipeline.__wrapped__)
    def serve(*args: Any, **kwargs: Any) -> Any:
        return pipeline._serve(index, args, kwargs)

    serve.tier = targets_of(pipeline.accuracy_target)[index]  # type: ignore[attr-defined]
    return serve


# ------------------------------------------------------------------------------------ persistence


def saved_state(pipeline: Any) -> dict[str, Any]:
    """The looser tiers' plans and approximate models, for the plan file and pickles (empty for
    a single target, so such files stay as they were). Approximate models are saved once each."""
    served = pipeline.__dict__.get("_tiers", ())
    if not served:
        return {}
    models: list[ApproximateModel] = []
    model_of = []
    for tier in served:
        if tier.approximate is None:
            model_of.append(None)
        elif tier.approximate is pipeline._approximate:
            model_of.append(_SAME_AS_STRICTEST)
        else:
            known = next((i for i, m in enumerate(models) if m is tier.approximate), None)
            if known is None:
                models.append(tier.approximate)
                known = len(models) - 1
            model_of.append(known)
    return {
        "tiers": {
            "plans": tuple(t.plan for t in served),
            "models": tuple(models),
            "model_of": tuple(model_of),
        }
    }


def restore(
    pipeline: Any,
    state: dict[str, Any],
    graph: PipelineGraph | None,
    original: Callable | None,
    compilation: CompilationResult | None,
    compilations: Sequence[CompilationResult | None] = (),
) -> None:
    """Install the looser tiers of a saved ``state`` on ``pipeline`` (after its strictest plan):
    generate each tier's serving function again on ``graph`` (with ``graph=None`` only the plans,
    for a plan whose serving is rebuilt at the first call). ``compilations``: per looser tier,
    its own compiled pipeline (a model cascade of its own, :mod:`willow.early_exit.tiers`), or
    ``None`` (or none given) for ``compilation``."""
    saved = state.get("tiers")
    if not saved:
        pipeline._tiers = ()
        return
    models = saved["models"]
    rebuilt = []
    for number, (plan, index) in enumerate(zip(saved["plans"], saved["model_of"])):
        own = compilations[number] if number < len(compilations) else None
        if index is None:
            approximate = None
        elif index == _SAME_AS_STRICTEST:
            approximate = state["approximate"]
        else:
            approximate = models[index]
        function = source = None
        if graph is not None and original is not None and (plan.cascade or compilation is not None):
            fuse = plan.cascade and compilation is not None and compilation.fused is not None
            if fuse and getattr(approximate, "fuse_on_load", False) and not approximate.fused:
                approximate.fuse([compilation.vectorizer(g) for g in plan.selected])
            function, source = build_cascade(
                graph,
                original,
                layout_cascade(graph, plan.selected) if plan.cascade else None,
                plan.threshold,
                approximate if plan.cascade else None,
                state["output"],
                ModelGuard(state["model_fingerprint"]),
                own or compilation,
            )
        rebuilt.append((plan, approximate, function, source, own))
    pipeline._tiers = serve_tiers(pipeline, rebuilt)


# -------------------------------------------------------------------------------------- reporting


def table(pipeline: Any) -> str:
    """The tier table of ``explain()``: target, proven bound, measured speedup, early fraction."""
    results = tier_results(pipeline)
    lines = [
        f"Accuracy tiers ({len(results)}; the plain call serves the strictest, "
        "pipeline.tier(target) any of them):",
        "",
        f"  {'target':>8} {'bound':>8} {'speedup':>9} {'early':>8}  plan",
    ]
    for r in results:
        speedup = f"{r.measured_speedup:.2f}x" if r.measured_speedup is not None else "-"
        if r.plan.cascade:
            what = f"cascade on {'+'.join(r.plan.selected)}, threshold {r.plan.threshold:.4g}"
            if r.plan.reason.startswith("serves the "):
                what += f" (the {r.plan.reason.split(' ', 3)[2]} tier's)"
        elif r.lower_bound > 0:  # no feature cascade; a model cascade proven at this bound
            what = "model cascade only (see its table): " + r.plan.reason
            what = what if len(what) <= 90 else what[:87] + "..."
        else:
            what = "no cascade: " + r.plan.reason
            what = what if len(what) <= 90 else what[:87] + "..."
        bound = f"{r.lower_bound:.4f}" if r.plan.cascade or r.lower_bound > 0 else "exact"
        lines.append(f"  {r.target:>8g} {bound:>8} {speedup:>9} {r.early_fraction:>8.2%}  {what}")
    return "\n".join(lines)
