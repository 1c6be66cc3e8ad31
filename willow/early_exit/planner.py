"""The planner's side of model cascades: staged early exit alone, or behind a feature cascade.

When calibration ends with a compiled pipeline whose model call is a compiled tree-ensemble
classifier and whose output is the model's labels (``OutputSpec.decision == "model"``,
``predict``) or a decision made by one comparison of its probability or score (or a model
without classes' prediction) with a threshold (:func:`thresholded_decision`:
``predict_proba(X)[:, 1] > t``; model cascades exit on the threshold's side, and cheap model
first, whose cheap model answers labels, is not a candidate), or a compiled tree-ensemble
regressor's ``predict`` returned as it is with ``tolerance=`` (:func:`_consider_regression`:
model cascades within the tolerance; alone, or compared with the feature cascade as below,
without cheap model first, the combined plan only for a float tolerance:
:func:`_regression_behind` says why its proof holds), the model itself may be the cost left to
cut:

* no feature cascade serves: :func:`consider_model_cascade` records the model's input on the
  calibration rows (through the compiled pipeline itself), calibrates early exit on it
  (:func:`~willow.early_exit.calibrate.calibrate_early_exit`: its own tune/holdout split,
  Clopper-Pearson proof, exact mode at ``accuracy_target=1.0``) and, when it measured at least
  :data:`MIN_SPEEDUP` times as fast as the full ensemble (or ``require_faster=False``), serves
  the compiled pipeline with the model's operator swapped for the
  :class:`~willow.early_exit.calibrate.ModelCascade`. Below a target of 1.0 with margin exits
  (``early_exit=True``), *cheap model first* is calibrated too
  (:func:`~willow.early_exit.distilled.calibrate_distilled`: a distilled logistic regression or
  small LightGBM on every feature, its "I don't know" rows to the full ensemble; its own
  tune/holdout split and proof) and, when both qualify, the one whose pipeline measured fastest
  on the calibration call serves;
* a feature cascade serves: three plans (four with cheap model first, below 1.0) are compared
  on the calibration rows, measured side by side (:func:`choose_plan`): the feature cascade as
  calibrated, the *combined* plan (the same feature cascade, whose uncertain rows go to a model
  cascade with exact exits only, calibrated on the rows that reach the full model: its outputs
  are the feature cascade's, so the feature cascade's holdout proof still holds, and this is
  checked on the calibration rows), the model cascade alone (calibrated on every row at the
  target, as above), cheap model first alone (likewise; below a target of 1.0 only) and, below
  1.0 too, the feature cascade with cheap model first on its uncertain rows
  (:mod:`willow.early_exit.behind`: fitted and tuned on the feature cascade's tune rows, the
  served pipeline as a whole proven on its holdout rows, Bonferroni over the two plans proven
  there). All are proven at the target; the one with the smallest median time serves if it ran
  faster than the feature cascade beyond the timing noise (the compiled pipeline's sign test on
  interleaved pairs, 5% margin); ``require_faster=False`` serves the combined plan. With
  ``require_faster``, a candidate is not built when the cost estimates say it could not clear
  :data:`MIN_GAIN` even skipping every tree (:func:`_could_pay_off`), nor kept when its model
  cascade measured under :data:`MIN_SPEEDUP` times the full ensemble on its own tune rows
  (:func:`_fast_enough`).

:func:`saved_state`, :func:`restore` and :func:`explain_lines` are what ``willow.api`` calls to
save, reload (plan files and pickles) and explain that choice.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from willow.cascades.bounds import clopper_pearson_lower
from willow.compiler.lowering.base import NotLowerable
from willow.compiler.speed_gate import GATE_MARGIN, GATE_REPEATS, faster_beyond_noise, interleaved_samples
from willow.early_exit import behind as cheap_behind
from willow.early_exit.calibrate import EarlyExitToleranceError, ModelCascade, calibrate_early_exit
from willow.early_exit.distilled import DistilledCascade, DistilledPlan, calibrate_distilled
from willow.early_exit.plan import EarlyExitPlan
from willow.early_exit.staged import stage_tree_model
from willow.early_exit.wiring import model_node, recorded, with_cascade, with_model_operator
from willow.errors import CalibrationError
from willow.rows import n_rows

__all__ = [
    "choose_plan",
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
#: A plan behind or instead of the feature cascade is built only if, by the cost estimates, it
#: could be this much faster than the feature cascade skipping every tree: the 5% margin of the
#: sign test that chooses between them (:func:`choose_plan`).
MIN_GAIN = 1.0 / (1.0 - GATE_MARGIN)
#: Fewest calibration rows reaching the full model behind a feature cascade for a combined plan.
MIN_COMBINED_ROWS = 20
#: The candidate name of cheap model first (:mod:`willow.early_exit.distilled`).
CHEAP = "cheap model first"


def choose_plan(samples: dict[str, list[float]], incumbent: str) -> str:
    """The plan to serve of those timed (``samples``: seconds per call of each, taken side by
    side, the ``k``-th of every plan in one turn): the one with the smallest median, when it ran
    faster than ``incumbent`` (the plan calibration chose) beyond the timing noise (the compiled
    pipeline's speed gate: :func:`~willow.compiler.speed_gate.faster_beyond_noise`, at least
    5% faster in so many pairs that a sign test rejects "not faster"); otherwise ``incumbent``.

    Every candidate is proven at the same target, so any real gain may serve; a median of paired
    runs and a sign test, rather than the best of a few runs each, keep one lucky run on a loaded
    machine from choosing the plan."""
    cheapest = min(samples, key=lambda name: float(np.median(samples[name])))
    if cheapest == incumbent or not faster_beyond_noise(samples[incumbent], samples[cheapest]).faster:
        return incumbent
    return cheapest


def _comparison(samples: dict[str, list[float]], incumbent: str, chosen: str) -> tuple[str, bool]:
    """What the sign test of ``chosen`` (or, when ``incumbent`` stayed, the cheapest other plan)
    against ``incumbent`` found, for the plan's reason, and whether ``chosen`` (not ``incumbent``)
    ran faster than it beyond the timing noise."""
    others = [name for name in samples if name != incumbent]
    if not others:
        return "", False
    challenger = chosen if chosen != incumbent else min(others, key=lambda n: float(np.median(samples[n])))
    verdict = faster_beyond_noise(samples[incumbent], samples[challenger])
    note = (
        f"{challenger} ran at least {verdict.margin:.0%} faster than the {incumbent} beside it in "
        f"{verdict.wins} of {verdict.pairs} interleaved pairs (median ratio {verdict.ratio_median:.3f}, "
        f"{verdict.speedup:.2f}x); the sign test needs {verdict.needed}"
    )
    return note, chosen != incumbent and verdict.faster


def consider_model_cascade(
    result: Any, fn: Any, arguments: dict[str, Any], options: Any, staged: dict[str, Any] | None = None
) -> Any:
    """``result`` (a :class:`~willow.cascades.calibration.CalibrationResult`), serving a model
    cascade inside the tree ensemble (alone, or behind the feature cascade) when one applies and
    proves faster; otherwise unchanged (with a note in the plan's reason when one was tried).
    ``arguments``: the calibration call's arguments by name; ``options``: the
    :class:`~willow.cascades.calibration.CascadeOptions`; ``staged``: a dict keeping the staged
    model between calls, so that several calibrations of one model (tiers) share its kernels."""
    staged = {} if staged is None else staged
    compilation = result.compilation
    node = model_node(compilation)
    mode = getattr(options, "early_exit", "exact")
    tolerance = getattr(options, "tolerance", None)
    regression = (
        result.output.classes is None and result.output.decision == "numbers" and tolerance is not None
    )
    if not options.cascade or mode is False or result.function is None or node is None:
        return result
    ensemble = hasattr(getattr(compilation.operators, node.attribute), "ensemble")
    decision = thresholded_decision(result.output)
    if result.output.decision != "model" and not regression and decision is None:
        return _noted(result, _not_labels(result.output.decision)) if mode is True and ensemble else result
    if result.output.classes is None and not regression and decision is None:
        return result
    if regression:
        return _consider_regression(result, fn, arguments, options, mode, tolerance, staged)
    # a feature cascade's uncertain rows must reach the model's own operator (not a fused kernel)
    if result.plan.cascade and (result.layout is None or result.approximate is None or compilation.fused):
        return result
    model, method = node.recipe
    # only labels: an exited row keeps its proven class but its probabilities or scores are
    # estimates, so a function returning predict_proba / decision_function would change
    if not ensemble:
        return result
    if method != "predict" and decision is None:
        return _noted(result, _not_labels(method)) if mode is True else result
    # "exact": exits the remaining trees cannot overturn only, so outputs stay identical
    target = options.accuracy_target if mode is True else 1.0
    if result.plan.cascade:
        return _consider_combined(result, fn, arguments, options, target, staged, decision=decision)
    inputs = recorded(result, fn, arguments, model, cascade=False)
    if len(inputs) != 1:
        return result
    served: dict[str, Any] = {}
    notes = []
    try:
        cascade = _calibrate(model, method, inputs[0], target, options, staged, decision=decision)
        plan = cascade.plan
        if options.require_faster and not (plan.expected_speedup or 0.0) >= MIN_SPEEDUP:
            notes.append(
                f"A model cascade (staged early exit) was calibrated but measured "
                f"{plan.expected_speedup:.2f}x the full ensemble's speed ({plan.seconds_per_row * 1e6:.2f} vs "
                f"{plan.full_seconds_per_row * 1e6:.2f} us/row), under the {MIN_SPEEDUP}x it must show, "
                "so the compiled pipeline serves (require_faster=False serves it anyway)."
            )
        else:
            served["model cascade"] = cascade
    except (CalibrationError, NotLowerable) as exc:
        notes.append(f"No model cascade either: {exc}")
    if target < 1.0 and decision is not None:
        notes.append(f"No cheap model first: {_CHEAP_LABELS}.")
    elif target < 1.0:  # cheap answers are proven at the target, never identical
        full = getattr(compilation.operators, node.attribute)
        try:
            served[CHEAP] = _fast_enough(
                _calibrate_cheap(model, method, inputs[0], target, options, full), options
            )
        except (CalibrationError, NotLowerable) as exc:
            notes.append(f"No cheap model first: {str(exc).rstrip('.')}.")
    if not served:
        return _noted(result, " ".join(notes))
    chosen = next(iter(served))
    if len(served) > 1:
        chosen, compared = _cheapest(
            {name: with_cascade(result, fn, c, feature_cascade=False) for name, c in served.items()},
            arguments,
            options,
        )
        notes.append(compared)
    plan = served[chosen].plan
    if chosen == CHEAP:
        note = f"Instead, {plan.describe_cheap()} answers first in front of {plan.model} (see below)."
    else:
        note = (
            f"Instead, a model cascade inside {plan.model} serves: staged early exit after "
            f"{', '.join(map(str, plan.stops[:-1]))} of {plan.n_trees} trees (see below)."
        )
    # the plan's figures become the model cascade's own (holdout agreement and bound)
    alone = _without_feature_cascade(result, served[chosen])
    return with_cascade(_noted(alone, " ".join([*notes, note])), fn, served[chosen], feature_cascade=False)


def thresholded_decision(output: Any) -> tuple[int | None, float] | None:
    """``(column, t)`` when the function returns a decision made by thresholding once a
    classifier's probabilities or score (``predict_proba(X)[:, c] > t``,
    ``np.where(decision_function(X) > t, ...)``) or the numbers a model without classes predicts
    (``regressor.predict(X) > t``, a LightGBM ``Booster``'s probabilities): the comparison
    :attr:`~willow.cascades.outputs.OutputSpec.margin_threshold` describes. A model cascade keeps
    such a decision by exiting on its side of ``t`` wherever one raw score decides it (binary
    boosting, a forest's class votes; :meth:`~willow.early_exit.staged.StagedTreeModel.cut_for`
    refuses the rest). The model's output is used in that one comparison only
    (:func:`~willow.cascades.outputs.find_margin`), so the returned value depends on the model
    through it alone, and a threshold read from a name is guarded at serving time (the original
    runs when it changes). ``None`` for any other output."""
    if output.decision != "post" or output.margin_threshold is None:
        return None
    if output.classes is not None and output.method in ("predict_proba", "decision_function"):
        return output.margin_column, float(output.margin_threshold)
    if output.classes is None and output.method == "predict" and output.margin_column is None:
        return None, float(output.margin_threshold)  # a regressor's or a Booster's numbers
    return None


#: Why cheap model first is not a candidate for a thresholded output.
_CHEAP_LABELS = (
    "its cheap model answers labels, not the probabilities or scores a thresholded output "
    "compares (only staged early exit keeps them on the threshold's side)"
)


def _not_labels(returned: str) -> str:
    """Why a model cascade was asked for (``early_exit=True``) but none was tried: what the
    function returns (``returned``: the output's decision kind or the model method it returns)
    is not what model cascades keep, a classifier's ``predict`` labels, its probability or score
    compared once with a threshold, or a regressor's ``predict`` within
    ``tolerance=`` (an exited row keeps its class, not its probabilities)."""
    what = {
        "post": (
            "a value derived from the model's output other than one comparison of a "
            "classifier's probability or score with a threshold"
        ),
        "numbers": "numbers (probabilities or scores)",
        "predict_proba": "the model's probabilities (predict_proba)",
        "decision_function": "the model's scores (decision_function)",
    }.get(returned, f"the model's {returned} output")
    return (
        f"No model cascade: the function returns {what}, and model cascades keep a classifier's "
        "predict labels, its predict_proba(X)[:, c] > t (or decision_function(X) > t), "
        "or a regressor's predict within tolerance=. Return one of those to let one serve (a "
        "regressor's numbers: pass tolerance=)."
    )


def _consider_regression(
    result: Any,
    fn: Any,
    arguments: dict[str, Any],
    options: Any,
    mode: Any,
    tolerance: Any,
    staged: dict[str, Any],
) -> Any:
    """A regressor's pipeline with ``tolerance=``: a model cascade within the tolerance (exact
    exits from the leaf bounds with ``early_exit="exact"``, settled-score exits proven at the
    target with ``early_exit=True``) when the function returns the model's ``predict`` itself (a
    tolerance on anything computed from it says nothing about the model's output) of a compiled
    tree ensemble. When a feature cascade serves, the plans are compared as a classifier's
    (:func:`_consider_combined`, see :func:`_regression_behind` for what may stand behind it).
    Otherwise ``result``, with a note when a model cascade could not apply. ``staged``: as
    :func:`consider_model_cascade`'s (tiers share one staged model)."""
    compilation = result.compilation
    node = model_node(compilation)
    model, method = node.recipe
    if method != "predict" or not hasattr(getattr(compilation.operators, node.attribute), "ensemble"):
        return result
    if compilation.graph.post is not None:
        return _noted(
            result,
            "No model cascade: the function computes its return value from the model's predictions, so "
            "tolerance= on the returned value bounds nothing about the model's own output.",
        )
    target = options.accuracy_target if mode is True else 1.0
    if result.plan.cascade:
        # the feature cascade's uncertain rows must reach the model's own operator (not a fused kernel)
        if result.layout is None or result.approximate is None or compilation.fused:
            return _noted(result, "No model cascade: the feature cascade does not call the model's operator.")
        return _consider_combined(result, fn, arguments, options, target, staged, tolerance)
    if target >= 1.0 and callable(tolerance):
        return _noted(
            result,
            'No model cascade: exact exits (early_exit="exact") need a float tolerance; with a callable '
            "tolerance pass early_exit=True (settled-score exits proven at accuracy_target).",
        )
    inputs = recorded(result, fn, arguments, model, cascade=False)
    if len(inputs) != 1:
        return result
    try:
        cascade = _fast_enough(
            _calibrate(model, method, inputs[0], target, options, staged, tolerance=tolerance), options
        )
    except (CalibrationError, NotLowerable, EarlyExitToleranceError) as exc:
        return _noted(result, f"No model cascade: {str(exc).rstrip('.')}.")
    plan = cascade.plan
    note = (
        f"Instead, a model cascade inside {plan.model} serves: staged early exit {plan.within} after "
        f"{', '.join(map(str, plan.stops[:-1]))} of {plan.n_trees} trees (see below)."
    )
    return with_cascade(
        _noted(_without_feature_cascade(result, cascade), note), fn, cascade, feature_cascade=False
    )


def _regression_behind(tolerance: Any) -> None:
    """Whether a regressor's exact model cascade may stand behind its feature cascade (the
    combined plan): raises :class:`CalibrationError` saying why not.

    Why the feature cascade's holdout proof still holds with a float tolerance ``t``: a row agrees
    when ``|served - original| <= t``. A row the feature cascade answers is served as before. A row
    it passes on was served the full ensemble's prediction (it agreed: ``0 <= t``); behind it, the
    model cascade's exits are exact within ``t`` (the remaining trees' leaf bounds prove
    ``|estimate - full| <= t``, rounding guarded: :mod:`willow.early_exit.staged`), so it agrees
    still. Every row that agreed agrees, so the combined plan's agreement is at least the feature
    cascade's on any rows, and the feature cascade's Clopper-Pearson bound bounds it too (checked on
    the calibration rows besides: :func:`_consider_combined`). A callable tolerance implies no such
    thing (``f(original, approx)`` for an ``approx`` near ``original`` may be False), and exact exits
    need a number, so there is no combined plan. Settled-score (approximate) exits behind the feature
    cascade would need a joint proof of the two plans' errors on the holdout rows; not built."""
    if callable(tolerance):
        raise CalibrationError(
            "a callable tolerance: being near the full model's prediction does not imply agreeing "
            "under it, so the feature cascade's proof would not cover the model cascade's exits, and "
            "exact exits need a float tolerance"
        )


def _cheapest(candidates: dict[str, Any], arguments: dict[str, Any], options: Any) -> tuple[str, str]:
    """The candidate results whose serving function measured fastest on the calibration call
    (side by side), and a note with the measured costs."""
    samples, _, costs = _timed(candidates, arguments, options)
    return min(samples, key=lambda name: float(np.median(samples[name]))), f"Compared (us/row): {costs}."


def _timed(
    candidates: dict[str, Any], arguments: dict[str, Any], options: Any
) -> tuple[dict[str, list[float]], int, str]:
    """Seconds per call of each candidate result's serving function on the calibration call
    ``arguments``: every timed run, taken side by side in rotating order
    (:func:`~willow.compiler.speed_gate.interleaved_samples`, at least
    :data:`~willow.compiler.speed_gate.GATE_REPEATS` runs each); that call's rows; and the median
    cost per row of each as a note."""
    from willow.cascades.calibration import call_with, count_row_inputs

    names = list(candidates)
    measured = interleaved_samples(
        [lambda c=candidates[name]: call_with(c.function.__wrapped__, arguments) for name in names],
        max(GATE_REPEATS, options.cost_repeats),
    )
    samples = dict(zip(names, measured))
    rows = max(count_row_inputs(next(iter(candidates.values())).compilation.graph, arguments), 1)
    costs = ", ".join(f"{name} {float(np.median(samples[name])) / rows * 1e6:.2f}" for name in names)
    return samples, rows, costs


def _calibrate_cheap(
    model: Any, method: str, X: Any, target: float, options: Any, full: Any
) -> DistilledCascade:
    """Cheap model first (:mod:`willow.early_exit.distilled`) for ``model.method`` calibrated on
    ``X``, its uncertain rows answered by ``full`` (the compiled full ensemble)."""
    return calibrate_distilled(
        model,
        X,
        method=method,
        accuracy_target=target,
        confidence=options.confidence,
        random_state=options.random_state,
        full=full,
    )


def _calibrate(
    model: Any,
    method: str,
    X: Any,
    target: float,
    options: Any,
    staged: dict[str, Any] | None = None,
    tolerance: Any = None,
    decision: tuple[int | None, float] | None = None,
) -> ModelCascade:
    """Early exit for ``model.method`` calibrated on ``X`` (a regressor's within ``tolerance``;
    a thresholded output's on the side of ``decision``, see :func:`thresholded_decision`);
    ``staged`` (a dict) keeps the staged model between calls, so several calibrations of one
    model share its kernels."""
    staged = {} if staged is None else staged
    if "model" not in staged:
        staged["model"] = stage_tree_model(model, method)
    return calibrate_early_exit(
        model,
        X,
        method=method,
        accuracy_target=target,
        confidence=options.confidence,
        random_state=options.random_state,
        staged=staged["model"],
        tolerance=tolerance,
        decision=decision,
    )


def _without_feature_cascade(result: Any, cascade: Any) -> Any:
    """``result`` whose feature cascade is dropped for the model cascade alone (the plan now says
    "no cascade" and carries the model cascade's holdout figures)."""
    early = cascade.plan
    plan = replace(
        result.plan,
        cascade=False,
        selected=(),
        threshold=float("inf"),
        confident_fraction=0.0,
        agreement=early.agreement,
        lower_bound=float(
            clopper_pearson_lower(early.holdout_rows, early.holdout_rows, early.confidence)
            if early.exact
            else early.lower_bound or 0.0
        ),
        holdout_rows=early.holdout_rows,
    )
    return replace(result, plan=plan, approximate=None, layout=None)


def _fast_enough(cascade: Any, options: Any) -> Any:
    """``cascade`` (a :class:`ModelCascade` or :class:`DistilledCascade`), if it measured :data:`MIN_SPEEDUP` times as fast as the full ensemble on its
    tune rows (or ``require_faster=False``): a plan containing it can only be that much faster
    than the plan without it if it is. Raises :class:`CalibrationError` otherwise."""
    plan = cascade.plan
    if options.require_faster and not (plan.expected_speedup or 0.0) >= MIN_SPEEDUP:
        how = (
            f"{plan.exit_fraction:.0%} of rows answered by the cheap model"
            if isinstance(plan, DistilledPlan)
            else f"{plan.trees_per_row:.0f} of {plan.n_trees} trees per row"
        )
        raise CalibrationError(
            f"{'it' if isinstance(plan, DistilledPlan) else 'its staged early exit'} measured "
            f"{plan.expected_speedup or 0.0:.2f}x the full ensemble ({how})"
        )
    return cascade


def _could_pay_off(plan: Any, costs: Any) -> tuple[bool, bool]:
    """Whether, by the calibration's cost estimates (per row), the combined plan and the model
    cascade alone could be :data:`MIN_GAIN` times as fast as the feature cascade even if their
    model cascade skipped every tree: ``(combined, alone)``."""
    model = costs.model_seconds_per_row
    feature = plan.expected_seconds_per_row
    combined = feature - (1.0 - plan.confident_fraction) * model
    alone = costs.total_seconds_per_row - model
    return feature >= MIN_GAIN * combined, feature >= MIN_GAIN * alone


def _consider_combined(
    result: Any,
    fn: Any,
    arguments: dict[str, Any],
    options: Any,
    target: float,
    shared: dict[str, Any],
    tolerance: Any = None,
    decision: tuple[int | None, float] | None = None,
) -> Any:
    """Compare the feature cascade, the combined plan and the model cascade alone (see the
    module docstring) and return the result serving the one chosen, its reason saying why.
    ``tolerance``: a regressor's (``tolerance=``): its model cascades exit within it, the
    combined plan's outputs must agree within it with the feature cascade's
    (:func:`_regression_behind` says why its proof then holds) and cheap model first (labels
    only) is not a candidate. ``decision``: a thresholded output's (:func:`thresholded_decision`):
    model cascades exit on its side, and cheap model first is not a candidate either."""
    from willow.cascades.calibration import call_with

    node = model_node(result.compilation)
    model, method = node.recipe
    full = getattr(result.compilation.operators, node.attribute)  # the compiled full ensemble
    candidates: dict[str, Any] = {"feature cascade": result}
    notes = []
    could_combine, could_alone = _could_pay_off(result.plan, result.costs)
    could_combine |= not options.require_faster
    could_alone |= not options.require_faster
    if not (could_combine or could_alone):
        return _noted(
            result,
            f"No model cascade: the model costs {result.costs.model_seconds_per_row * 1e6:.2f} of the "
            f"feature cascade's {result.plan.expected_seconds_per_row * 1e6:.2f} us/row, so skipping "
            f"trees could not make it {MIN_GAIN:.2f}x faster",
        )
    hard = recorded(result, fn, arguments, model, cascade=True) if could_combine else []
    try:
        if not could_combine:
            raise CalibrationError(f"it could not be {MIN_GAIN:.2f}x as fast, by the cost estimates")
        if len(hard) != 1 or n_rows(hard[0]) < MIN_COMBINED_ROWS:
            raise CalibrationError(
                f"{sum(n_rows(X) for X in hard)} calibration rows reached the full model behind the "
                f"feature cascade, fewer than the {MIN_COMBINED_ROWS} a model cascade is tuned on"
            )
        if tolerance is not None:
            _regression_behind(tolerance)
        # exact exits only: the outputs stay the feature cascade's (a regressor's: within the
        # tolerance of them), whose proof then holds as is
        behind = _fast_enough(
            _calibrate(model, method, hard[0], 1.0, options, shared, tolerance=tolerance, decision=decision),
            options,
        )
        combined = with_cascade(result, fn, behind, True)
        expected = call_with(result.function.__wrapped__, arguments)
        if not _agrees(
            result.output, call_with(combined.function.__wrapped__, arguments), expected, tolerance
        ):
            raise CalibrationError(
                "the combined plan did not reproduce the feature cascade's outputs"
                + ("" if tolerance is None else " within the tolerance")
            )
        candidates["combined"] = combined
    except (CalibrationError, NotLowerable, EarlyExitToleranceError) as exc:
        notes.append(f"no combined plan ({str(exc).rstrip('.')})")
    every = recorded(result, fn, arguments, model, cascade=False) if could_alone else []
    try:
        if not could_alone:
            raise CalibrationError(f"it could not be {MIN_GAIN:.2f}x as fast, by the cost estimates")
        if len(every) != 1:
            raise CalibrationError("the compiled pipeline did not call the model once")
        alone = _fast_enough(
            _calibrate(
                model, method, every[0], target, options, shared, tolerance=tolerance, decision=decision
            ),
            options,
        )
        candidates["model cascade"] = with_cascade(_without_feature_cascade(result, alone), fn, alone, False)
    except (CalibrationError, NotLowerable, EarlyExitToleranceError) as exc:
        notes.append(f"no model cascade alone ({str(exc).rstrip('.')})")
    if target < 1.0 and decision is not None:
        notes.append(f"no cheap model first ({_CHEAP_LABELS})")
    elif target < 1.0 and tolerance is None:  # cheap model first on every row, instead of the feature cascade
        try:
            if not could_alone:
                raise CalibrationError(f"it could not be {MIN_GAIN:.2f}x as fast, by the cost estimates")
            if len(every) != 1:
                raise CalibrationError("the compiled pipeline did not call the model once")
            cheap = _fast_enough(_calibrate_cheap(model, method, every[0], target, options, full), options)
            candidates[CHEAP] = with_cascade(_without_feature_cascade(result, cheap), fn, cheap, False)
        except (CalibrationError, NotLowerable) as exc:
            notes.append(f"no cheap model first ({str(exc).rstrip('.')})")
        try:  # cheap model first on the rows the feature cascade passes on, proven as a whole
            if not could_combine:
                raise CalibrationError(f"it could not be {MIN_GAIN:.2f}x as fast, by the cost estimates")
            both, cheap = cheap_behind.calibrate_behind(result, fn, arguments, options, target, full)
            _fast_enough(cheap, options)
            candidates[cheap_behind.NAME] = both
        except (CalibrationError, NotLowerable) as exc:
            notes.append(f"no {cheap_behind.NAME} ({str(exc).rstrip('.')})")
    if len(candidates) == 1:
        return _noted(result, f"Model cascades considered: {'; '.join(notes)}.")
    samples, rows, costs = _timed(candidates, arguments, options)
    if options.require_faster:
        chosen = choose_plan(samples, "feature cascade")
        compared, beat = _comparison(samples, "feature cascade", chosen)
    else:  # the model cascade behind the feature cascade, where built, whatever the timing
        chosen = "combined" if "combined" in candidates else "feature cascade"
        compared, beat = "", False
    note = (
        f"Plans compared on the {rows} calibration rows (median us/row): {costs}"
        f"{'; ' + '; '.join(notes) if notes else ''}{'; ' + compared if compared else ''}. Serving: {chosen}"
        f"{' (faster beyond the timing noise)' if beat else ''}"
    )
    served = candidates[chosen]
    if chosen in (
        "model cascade",
        CHEAP,
        cheap_behind.NAME,
    ):  # its cost, as measured here, replaces the feature cascade's
        per_row = float(np.median(samples[chosen])) / rows
        served = replace(
            served,
            plan=replace(
                served.plan,
                expected_seconds_per_row=per_row,
                expected_speedup=served.plan.original_seconds_per_row / per_row,
                measured_speedup=None,
            ),
        )
    return _noted(served, note)


def _agrees(output: Any, served: Any, expected: Any, tolerance: Any) -> bool:
    """Whether the function output ``served`` is ``expected`` (the feature cascade's): the same
    (:func:`~willow.cascades.outputs.same_output`), or with a regressor's ``tolerance`` of the
    same type and index and within the tolerance on every row (``output``: the result's
    :class:`~willow.cascades.tolerance.ToleranceSpec`)."""
    from willow.cascades.outputs import same_output

    if tolerance is None:
        return same_output(served, expected)
    index = getattr(expected, "index", None)
    return (
        type(served) is type(expected)
        and (index is None or index.equals(served.index))
        and bool(output.agreement(served, expected).all())
    )


def _noted(result: Any, note: str) -> Any:
    return replace(result, plan=replace(result.plan, reason=f"{result.plan.reason} {note}".strip()))


def _cascade_of(compilation: Any) -> ModelCascade | DistilledCascade | None:
    node = model_node(compilation)
    operator = None if node is None else getattr(compilation.operators, node.attribute, None)
    return operator if isinstance(operator, (ModelCascade, DistilledCascade)) else None


def saved_state(compilation: Any) -> dict[str, Any]:
    """What a saved plan keeps of a serving model cascade: ``{"early_exit": plan}`` (an
    :class:`EarlyExitPlan` or a :class:`DistilledPlan`) or nothing."""
    cascade = _cascade_of(compilation)
    return {} if cascade is None else {"early_exit": cascade.plan}


def restore(compilation: Any, state: dict[str, Any]) -> Any:
    """``compilation`` (rebuilt from saved recipes) with the saved model cascade swapped in."""
    plan: EarlyExitPlan | DistilledPlan | None = state.get("early_exit")
    node = model_node(compilation)
    if plan is None or node is None:
        return compilation
    model, method = node.recipe
    full = getattr(compilation.operators, node.attribute)
    rebuild = DistilledCascade if isinstance(plan, DistilledPlan) else ModelCascade
    return with_model_operator(compilation, rebuild.from_plan(model, method, plan, full=full))


def explain_lines(compilation: Any) -> list[str]:
    """The serving model cascade's table for ``explain()`` (empty when none serves)."""
    cascade = _cascade_of(compilation)
    return [] if cascade is None else ["", cascade.plan.table()]
