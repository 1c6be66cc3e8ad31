"""Cheap model first behind a feature cascade: three stages, one proof (issue 16, item 3).

The feature cascade answers the rows its approximate model is sure of; the rows it passes on
go to a distilled cheap model (:mod:`willow.early_exit.distilled`), which answers the rows
*it* is sure of; the rest run the compiled full ensemble. Every served row is therefore the
feature cascade's answer, the cheap model's label or the full model's label.

Nothing here sees the feature cascade's holdout rows before the proof. The calibration split
is recomputed exactly as calibration cut it (:func:`willow.cascades.splits.split_rows`, the same
options and rows; checked against the plan's row counts); its train and tune rows (never its
holdout rows) serve two jobs:

* the *train* rows fit the cheap models (:func:`~willow.early_exit.distilled.fit_cheap_models`):
  the model inputs the feature cascade passes on there, or, when fewer than
  :data:`MIN_HARD_ROWS` are (the feature cascade's approximate model was fitted on these rows,
  so it passes few of them on), every train row's model input, said so in the plan. Fitting on
  the tune rows instead would leave too few rows to tune the threshold on (half of an already
  small part);
* the *tune* rows: the feature cascade's threshold and the cheap model's are tuned **together,
  for the whole pipeline**. The feature cascade was tuned to just meet the target alone, which
  leaves the cheap model no error budget, so its threshold as calibrated and higher ones
  (:data:`FEATURE_QUANTILES` of its confident rows' confidence: it answers fewer rows, with
  fewer errors) are tried; for each, the approximate model's answers on the rows it keeps count
  against the original's outputs as they are, the cheap model's answers on the rows passed on
  against the full model's labels, and the cheap threshold is tuned on those rows together
  (:func:`~willow.cascades.threshold.tune_threshold` at the proof's confidence, sized to pass
  the holdout proof, Bonferroni-adjusted across the cheap kinds). The pair (and kind) with the
  lowest expected cost per row (the calibration's remaining-feature and model costs, the cheap
  model's scoring time relative to the full ensemble's, measured on the tune rows) is kept.

The proof: the served pipeline as a whole (the cheap model always cascading, whatever the batch
size) runs on the feature cascade's holdout rows and its outputs are compared with the original
pipeline's; the one-sided Clopper-Pearson lower bound of the agreement
(:func:`willow.cascades.bounds.clopper_pearson_lower`) must reach the accuracy target at
confidence ``1 - (1 - confidence) / PROVEN_PLANS``: Bonferroni over the plans proven on those
holdout rows (the feature cascade itself, and this one). Batches small enough that the cheap
model defers to the full ensemble (``SMALL_BATCH_ROWS``) only turn cheap answers into the full
model's labels, which equal the original's, so the bound holds for them too.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from willow.cascades.bounds import clopper_pearson_lower
from willow.cascades.threshold import tune_threshold
from willow.compiler.profiling import interleaved_seconds
from willow.early_exit.distilled import (
    KINDS,
    DistilledCascade,
    DistilledPlan,
    _prepare_of,
    fit_cheap_models,
)
from willow.early_exit.staged import decisions, margins
from willow.early_exit.wiring import model_node, recorded, serving, with_cascade
from willow.errors import CalibrationError
from willow.rows import n_rows

__all__ = ["calibrate_behind", "NAME", "PROVEN_PLANS", "MIN_HARD_ROWS"]

#: The candidate's name in the planner's comparison.
NAME = "feature cascade + cheap model first"
#: Plans proven on the feature cascade's holdout rows: the feature cascade and this one.
PROVEN_PLANS = 2
#: Fewest train rows passed on by the feature cascade to fit the cheap model on them alone; with
#: fewer, it is fitted on every train row's model input.
MIN_HARD_ROWS = 100
#: Quantiles of the confidence of the rows the feature cascade answers tried as its raised
#: thresholds (the threshold as calibrated is always tried).
FEATURE_QUANTILES = (0.05, 0.1, 0.2, 0.3, 0.5)


class _Always:
    """The cheap-model-first operator cascading on every batch (the proof's path)."""

    def __init__(self, cascade: DistilledCascade) -> None:
        self.cascade = cascade
        self.full = cascade.full
        self.answered = 0
        self.rows = 0

    def __call__(self, X: Any) -> np.ndarray:
        self.cascade.full = self.full
        out, answered = self.cascade.run(X)
        self.answered += int(answered.sum())
        self.rows += len(answered)
        return out


def _split(result: Any, arguments: dict[str, Any], options: Any) -> tuple[Any, Any]:
    """The calibration's split (recomputed) and a function giving the arguments of some rows."""
    from willow.cascades.calibration import calibration_split

    split, rows_of = calibration_split(result.compilation.graph, arguments, options)
    plan = result.plan
    if (len(split.tune), len(split.holdout)) != (plan.tune_rows, plan.holdout_rows):
        raise CalibrationError(
            f"the recomputed split ({len(split.tune)} tune, {len(split.holdout)} holdout rows) is not "
            f"the feature cascade's ({plan.tune_rows}, {plan.holdout_rows})"
        )
    return split, rows_of


class _SpyApproximate:
    """The feature cascade's approximate model, keeping what it answers and how sure it is."""

    def __init__(self, approximate: Any) -> None:
        self._approximate = approximate
        self.calls: list[tuple[Any, np.ndarray]] = []

    def predict_with_confidence(self, features: Any) -> tuple[Any, np.ndarray]:
        output, confidence = self._approximate.predict_with_confidence(features)
        self.calls.append((output, np.asarray(confidence)))
        return output, confidence

    def __getattr__(self, name: str) -> Any:
        return getattr(self._approximate, name)


def _approximate_on(result: Any, fn: Any, arguments: dict[str, Any], model: Any) -> tuple[Any, np.ndarray]:
    """The feature cascade's approximate answers and confidence on every row of ``arguments``."""
    from willow.cascades.calibration import call_with

    spy = _SpyApproximate(result.approximate)
    function, _ = serving(replace(result, approximate=spy), fn, result.compilation, model, cascade=True)
    call_with(function.__wrapped__, arguments)
    if len(spy.calls) != 1:
        raise CalibrationError("the feature cascade did not call its approximate model once")
    return spy.calls[0]


def _recorded_once(result: Any, fn: Any, arguments: dict[str, Any], model: Any) -> Any:
    """The model's input on every row of ``arguments`` (through the compiled pipeline)."""
    every = recorded(result, fn, arguments, model, cascade=False)
    if len(every) != 1:
        raise CalibrationError("the compiled pipeline did not call the model once")
    return every[0]


def _feature_thresholds(confidence: np.ndarray, threshold: float) -> list[float]:
    """The feature cascade's threshold as calibrated and higher ones (quantiles of the
    confidence of the rows it answers): answering fewer rows leaves the cheap model more of
    the error budget."""
    kept = confidence[confidence >= threshold]
    higher = np.quantile(kept, FEATURE_QUANTILES) if len(kept) else np.empty(0)
    return sorted({float(threshold), *(float(t) for t in higher if t > threshold)})


def calibrate_behind(
    result: Any, fn: Any, arguments: dict[str, Any], options: Any, target: float, full: Any
) -> tuple[Any, DistilledCascade]:
    """``result`` (serving a feature cascade) served with cheap model first behind it, proven
    as a whole on the feature cascade's holdout rows (see the module doc), and its cascade.

    ``fn``: the original pipeline; ``arguments``: the calibration call's; ``full``: the compiled
    full ensemble. Raises :class:`CalibrationError` when the target is 1.0, no cheap model can be
    fitted, no threshold lets it answer a row, or the proof fails."""
    from willow.cascades.calibration import call_with

    if not 0.0 < target < 1.0:
        raise CalibrationError(f"cheap answers are proven at a target below 1.0, not {target}")
    level = 1.0 - (1.0 - options.confidence) / PROVEN_PLANS
    split, rows_of = _split(result, arguments, options)
    model, method = model_node(result.compilation).recipe
    labels = np.asarray(model.classes_)
    prepare = _prepare_of(model, method)
    fit_rows, check_rows = np.asarray(split.train), np.asarray(split.tune)

    hard = recorded(result, fn, rows_of(fit_rows), model, cascade=True)
    passed = sum(n_rows(X) for X in hard)
    if passed >= MIN_HARD_ROWS and len(hard) == 1:
        X_fit, fitted_on = hard[0], f"the {passed} train rows the feature cascade passed on"
    else:
        X_fit = _recorded_once(result, fn, rows_of(fit_rows), model)
        fitted_on = (
            f"all {n_rows(X_fit)} train rows (the feature cascade passed on {passed}, under {MIN_HARD_ROWS})"
        )
    fits, notes = fit_cheap_models(
        model, np.asarray(prepare(X_fit), dtype=np.float64), KINDS, options.random_state
    )
    if not fits:
        raise CalibrationError(f"no cheap model could be fitted: {'; '.join(notes)}")

    check = rows_of(check_rows)
    original = call_with(fn, check)
    approx_out, fc_confidence = _approximate_on(result, fn, check, model)
    X_check = _recorded_once(result, fn, check, model)
    data = np.asarray(prepare(X_check), dtype=np.float64)
    if len(fc_confidence) != len(data):
        raise CalibrationError("the approximate model did not see every tune row once")
    approx_agrees = np.asarray(result.output.agreement(approx_out, original), dtype=bool)
    full_index = np.searchsorted(labels, np.asarray(full(X_check)))
    kinds = list(fits)
    scoring = interleaved_seconds([lambda: full(X_check)] + [lambda c=fits[k][0]: c(data) for k in kinds], 3)
    costs = result.costs
    model_cost = costs.model_seconds_per_row
    rest_cost = costs.remaining_cost(result.plan.selected) + costs.stack_seconds_per_row
    rate_level = 1.0 - 0.1 / len(fits)
    best: tuple[float, float, str, Any] | None = None  # (expected seconds per row, t1, kind, choice)
    scored = {k: fits[k][0](data) for k in kinds}  # every tune row's cheap scores, per kind
    for t1 in _feature_thresholds(fc_confidence, result.plan.threshold):
        kept = fc_confidence >= t1
        for i, kind in enumerate(kinds):
            scores = scored[kind][~kept]
            margin = np.nan_to_num(margins(scores), nan=-np.inf)
            choice = tune_threshold(
                np.concatenate([np.full(int(kept.sum()), np.inf), margin]),
                np.concatenate([approx_agrees[kept], decisions(np.nan_to_num(scores)) == full_index[~kept]]),
                target,
                level,
                len(split.holdout),
                options.pass_probability,
                rate_level,
            )
            if math.isinf(choice.threshold):
                continue
            answered = float((margin >= choice.threshold).mean()) if len(margin) else 0.0
            cheap_cost = model_cost * scoring[i + 1] / max(scoring[0], 1e-12)
            expected = (1.0 - float(kept.mean())) * (rest_cost + cheap_cost + (1.0 - answered) * model_cost)
            if best is None or expected < best[0]:
                best = (expected, t1, kind, (choice, answered))
    if best is None:
        raise CalibrationError(
            f"no cheap model qualified behind the feature cascade: no pair of thresholds met the "
            f"target on the {len(check_rows)} tune rows{'; ' + '; '.join(notes) if notes else ''}"
        )
    _, t1, kind, (choice, answered) = best
    cheap, weights, intercept, fitted = fits[kind]
    n_passed = int((fc_confidence < t1).sum())
    plan = DistilledPlan(
        model=type(model).__name__, kind=kind, labels=labels, threshold=choice.threshold,
        accuracy_target=target, confidence=level, exit_fraction=answered,
        agreement=choice.agreement, lower_bound=choice.lower_bound, fit_rows=n_rows(X_fit),
        tune_rows=n_rows(X_fit) + len(check_rows), holdout_rows=0, weights=weights,
        intercept=intercept, cheap=fitted,
    )  # fmt: skip
    cascade = DistilledCascade(plan, prepare, full, cheap)
    hard = data[fc_confidence < t1]
    measured = interleaved_seconds([lambda: full(hard), lambda: cascade.run(hard)], 3)
    moved = t1 != result.plan.threshold
    result = replace(result, plan=replace(result.plan, threshold=t1))

    # the proof: the whole served pipeline against the original, on the untouched holdout rows
    holdout = rows_of(split.holdout)
    always, spy = _Always(cascade), _SpyApproximate(result.approximate)
    proving = with_cascade(replace(result, approximate=spy), fn, always, True)  # type: ignore[arg-type]
    agree = np.asarray(
        result.output.agreement(call_with(proving.function.__wrapped__, holdout), call_with(fn, holdout)),
        dtype=bool,
    )
    n_holdout = len(agree)
    lower = float(clopper_pearson_lower(int(agree.sum()), n_holdout, level))
    if lower < target:
        raise CalibrationError(
            f"the pipeline with cheap model first ({cascade.plan.kind}) behind the feature cascade "
            f"missed its holdout proof: agreement {agree.mean():.4f} on {n_holdout} rows, lower "
            f"{level:.1%} bound {lower:.4f} under {target}"
        )
    reason = (
        f"Behind the feature cascade: fitted on {fitted_on} (train split); thresholds tuned together "
        f"on the {len(check_rows)} tune rows: the feature cascade's "
        f"{'raised to ' if moved else 'kept at '}{t1:.4g}, passing on {n_passed}, the cheap model's "
        f"{choice.threshold:.4g}. The served pipeline as a whole (feature cascade, "
        f"cheap model, full ensemble) agreed with the original on {int(agree.sum())}/{n_holdout} "
        f"holdout rows: lower {level:.1%} bound {lower:.4f} (confidence {options.confidence} "
        f"Bonferroni-adjusted over {PROVEN_PLANS} plans proven on these rows), target {target}."
    )
    if notes:
        reason += f" Not built: {'; '.join(notes)}."
    rows = max(n_passed, 1)
    proven = replace(
        cascade.plan,
        exit_fraction=always.answered / max(always.rows, 1),
        agreement=float(agree.mean()),
        lower_bound=lower,
        holdout_rows=n_holdout,
        seconds_per_row=measured[1] / rows,
        full_seconds_per_row=measured[0] / rows,
        reason=reason,
    )
    served_cascade = DistilledCascade(proven, prepare, full, cascade._cheap)
    combined = with_cascade(result, fn, served_cascade, True)  # type: ignore[arg-type]
    plan = replace(
        combined.plan,
        agreement=float(agree.mean()),
        lower_bound=lower,
        holdout_rows=n_holdout,
        confident_fraction=float(np.mean(spy.calls[0][1] >= t1)) if spy.calls else 0.0,
    )
    return replace(combined, plan=plan), served_cascade
