"""Calibrate staged early exit for a tree ensemble: choose stages, tune thresholds, prove.

1. split the calibration rows into tune and holdout (seeded, copies of one input in one part and
   counted once, as for feature cascades: :func:`willow.cascades.splits.cut_distinct`);
2. on the tune rows, record every row's partial raw scores at every candidate stop;
3. for each candidate schedule of stops, pick per-stage margin thresholds ``lambda * sigma[s]``
   (``sigma[s]``: the spread of what the remaining trees add to the margin on the tune rows) with
   the smallest ``lambda`` whose tune agreement bound reaches the target and is likely to pass the
   holdout proof (the same criteria as :func:`willow.cascades.threshold.tune_threshold`);
   ``accuracy_target=1.0`` uses exact exits only;
4. keep the schedule that measured fastest on the tune rows, and prove it once on the holdout
   rows with the one-sided Clopper-Pearson bound (:mod:`willow.cascades.bounds`). A plan that
   misses the target falls back to exact exits, whose outputs are checked to be identical.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import binom

from willow.cascades.bounds import clopper_pearson_lower
from willow.cascades.duplicates import row_groups
from willow.cascades.splits import cut_distinct
from willow.cascades.threshold import allowed_disagreements
from willow.cascades.tolerance import ToleranceError, ToleranceSpec, check_tolerance, describe_tolerance
from willow.compiler.lowering.trees import SMALL_BATCH_ROWS
from willow.compiler.profiling import interleaved_seconds
from willow.early_exit.plan import EarlyExitPlan
from willow.early_exit.staged import StagedTreeModel, decisions, margins, stage_tree_model
from willow.errors import CalibrationError
from willow.rows import n_rows, take_rows

__all__ = [
    "ModelCascade",
    "calibrate_early_exit",
    "DEFAULT_SCHEDULES",
    "agreeing_rows",
    "EarlyExitToleranceError",
]

#: Candidate schedules, as fractions of the trees after which rows may leave (snapped to kernel
#: groups; every schedule ends with all trees). Late stops suit exact exits, early ones margins.
DEFAULT_SCHEDULES: tuple[tuple[float, ...], ...] = (
    (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2),
    (1 / 16, 1 / 8, 1 / 4),
    (1 / 20, 1 / 5),
    (1 / 10,),
    (1 / 4, 1 / 2, 3 / 4, 7 / 8),
    (1 / 2, 5 / 8, 3 / 4, 13 / 16, 7 / 8, 15 / 16),
)
#: Regressors' candidate schedules: the classifiers' and finer ones through the middle of the
#: ensemble, where a regressor's rows typically come within a tolerance (a regressor's score
#: keeps moving for every row, so its exits come later than a classifier's settled decisions).
REGRESSION_SCHEDULES: tuple[tuple[float, ...], ...] = DEFAULT_SCHEDULES + (
    (1 / 8, 1 / 4, 3 / 8, 1 / 2, 5 / 8, 3 / 4),
    (3 / 16, 1 / 4, 5 / 16, 3 / 8, 1 / 2, 5 / 8),
    (1 / 6, 1 / 3, 1 / 2),
)
#: Margin thresholds tried, in units of each stage's spread ``sigma`` (smallest first).
LAMBDAS = np.geomspace(0.05, 60.0, 120)
#: Threshold profiles across stages: ``sigma[s] * (stop_s / n_trees) ** beta`` (beta < 0 asks
#: early stages for larger margins than ``sigma`` alone, beta > 0 for smaller ones).
PROFILES = (-0.5, 0.0, 0.5, 1.0)
#: How a regressor's exit estimate adds what the remaining trees will (each schedule is tuned with
#: each; the cheapest on the tune rows wins): ``"linear"`` (``offset + slope * moved``, least
#: squares on the tune rows), ``"median"`` (the tune rows' median of what the rest added) or
#: ``"center"`` (the rest's leaf-bound midpoint). Only ``"linear"`` by default: it measured best on
#: price and make_regression (see :mod:`willow.early_exit.staged`), and each extra candidate
#: raises the Bonferroni level every candidate is tuned at.
CORRECTIONS = ("linear",)
#: What reaching one more stage costs a row (gathering it into the next batch, testing its exit),
#: in trees of the ensemble: how schedules with more stages are charged when choosing one.
STAGE_COST_TREES = 2.0


# stops, thresholds, offsets, slopes (the last two empty for classifiers)
_Choice = tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...], tuple[float, ...]]


class EarlyExitToleranceError(ToleranceError):
    """``tolerance=`` does not fit the model's early exit: given for a classifier, missing for a
    regressor, or a callable where exact exits need a number."""


class ModelCascade:
    """A calibrated tree ensemble with staged early exit: ``cascade(X)`` returns what
    ``model.method(X)`` returns, from fewer trees for the rows whose decision is settled early.
    ``plan`` (:class:`EarlyExitPlan`) says how; ``run(X)`` also returns each row's exit stage.

    ``full``: the compiled full ensemble (a :class:`~willow.compiler.lowering.trees.
    CompiledTreeOperator`), which answers batches of up to ``SMALL_BATCH_ROWS`` rows: its
    bitvector kernel is what makes single rows fast, and it runs every tree (exact outputs).
    """

    def __init__(self, staged: StagedTreeModel, plan: EarlyExitPlan, full: Any = None) -> None:
        # a copy: calibration shares one staged model (and its kernels) between plans
        self.staged = copy.copy(staged)
        if plan.regression:
            self.staged.with_regression(plan.tolerance)
        self.staged.with_stages(plan.stops, plan.thresholds, plan.offsets or None, plan.slopes or None)
        self.staged.with_cut(plan.cut, None if plan.decision is None else plan.decision[0])
        self.plan = plan
        self.full = full
        self.name = f"{staged.name}, staged early exit"
        self.source = staged.source

    @classmethod
    def from_plan(
        cls, model: Any, method: str, plan: EarlyExitPlan, full: Any = None, **options: Any
    ) -> ModelCascade:
        """Rebuild serving for a saved ``plan`` around ``model`` (kernels come from the cache)."""
        staged = stage_tree_model(model, method, **options)
        if staged.n_trees != plan.n_trees or staged.snap(plan.stops) != plan.stops:
            raise CalibrationError(
                f"The early-exit plan was calibrated on {plan.model} with {plan.n_trees} trees and "
                f"stops {plan.stops}; this model has {staged.n_trees} trees (stops "
                f"{staged.snap(plan.stops)}). Calibrate again with this model."
            )
        return cls(staged, plan, full)

    def __repr__(self) -> str:
        return f"ModelCascade({self.plan.model!r}, stops={self.plan.stops}, exact={self.plan.exact})"

    @property
    def reads_threshold(self) -> bool:
        """Whether its exits keep a thresholded output's side (``plan.decision``): they hold for
        that threshold only, so the serving function guards it (the original runs when a
        threshold read from a name changes)."""
        return self.plan.decision is not None

    def __call__(self, X: Any) -> np.ndarray:
        if self.full is not None and n_rows(X) <= SMALL_BATCH_ROWS:
            return self.full(X)
        return self.staged(X)

    def run(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(output, exit stage per row)``, always through the stages."""
        return self.staged.run(X)


def agreeing_rows(
    output: np.ndarray, reference: np.ndarray, method: str, decision: tuple[int | None, float] | None = None
) -> np.ndarray:
    """Per row, whether two outputs of ``method`` agree on the decision: equal labels for
    ``predict``; otherwise equal arg-max (probabilities, multiclass scores) or equal sign (one
    raw score or binary ``decision_function``); with ``decision = (column, t)`` the same side of
    ``output[:, column] > t`` (``column`` ``None``: a 1-D output)."""
    output, reference = np.asarray(output), np.asarray(reference)
    if decision is not None:
        return thresholded(output, decision) == thresholded(reference, decision)
    if method == "predict":
        return output == reference
    if output.ndim == 2 and output.shape[1] > 1:
        return np.argmax(output, axis=1) == np.argmax(reference, axis=1)
    return (output.reshape(len(output), -1)[:, 0] > 0) == (reference.reshape(len(reference), -1)[:, 0] > 0)


def thresholded(output: np.ndarray, decision: tuple[int | None, float]) -> np.ndarray:
    """``output[:, column] > t`` (``output > t`` for ``column`` ``None``), the decision a function
    returning a thresholded model output makes; ``decision = (column, t)``."""
    column, threshold = decision
    values = np.asarray(output)
    return (values.reshape(len(values)) if column is None else values[:, column]) > threshold


@dataclass(frozen=True)
class _Stages:
    """What one schedule's exits depend on, per exit stage ``s`` and tune row.

    Regression (``settle``): ``margins`` holds how far each row's score moved over stage ``s``'s
    last kernel group (a row leaves when it is at most the threshold), ``agrees[s]`` whether its
    estimate after stage ``s`` (``partial + offsets[s] + slopes[s] * moved``) is within
    tolerance of the full ensemble's output."""

    stops: tuple[int, ...]
    margins: np.ndarray  # (S - 1, n)
    exact: np.ndarray  # (S - 1, n) bool
    decisions: np.ndarray  # (S, n): the decision if the row left after stage s (last: full)
    sigma: np.ndarray  # (S - 1,)
    agrees: np.ndarray | None = None  # (S, n) bool, regression
    settle: bool = False
    offsets: tuple[float, ...] = ()
    slopes: tuple[float, ...] = ()


def _stages(staged: StagedTreeModel, stops: tuple[int, ...], partial: dict[int, np.ndarray]) -> _Stages:
    final = partial[staged.n_trees]
    margin_rows, exact_rows, decision_rows, sigma = [], [], [], []
    for stop in stops[:-1]:
        estimate = partial[stop] + staged.center(stop)
        margin_rows.append(margins(estimate, staged.cut, staged.guard, staged.cut_column))
        exact_rows.append(staged.exact_exits(partial[stop], stop))
        decision_rows.append(decisions(estimate, staged.cut, staged.cut_column))
        # how much the rest of the trees moves the margin-relevant scores, typically
        change = final - estimate
        spread = float(np.sqrt(np.mean(np.var(change, axis=0)) * (1 if final.shape[1] == 1 else 2)))
        sigma.append(spread if spread > 0 else 1e-12)
    decision_rows.append(decisions(final, staged.cut, staged.cut_column))
    n = final.shape[0]
    shape = (len(stops) - 1, n)
    return _Stages(
        stops,
        np.asarray(margin_rows).reshape(shape),
        np.asarray(exact_rows, dtype=bool).reshape(shape),
        np.asarray(decision_rows).reshape((len(stops), n)),
        np.asarray(sigma),
    )


def _regression_stages(
    staged: StagedTreeModel,
    stops: tuple[int, ...],
    partial: dict[int, np.ndarray],
    within: Callable[[np.ndarray, np.ndarray], np.ndarray],
    correction: str,
) -> _Stages:
    """:class:`_Stages` of a regressor's schedule: per stage, each tune row's movement over the
    stage's last kernel group (:meth:`~willow.early_exit.staged.StagedTreeModel.lookback`; its
    partial scores must be in ``partial``) and whether its estimate is within tolerance (``within(original, approx)``) of the
    full ensemble's output. ``correction``: how the estimate adds what the remaining trees will,
    ``"linear"`` (``offset + slope * moved``, least squares on the tune rows: a row still moving
    keeps moving the same way), ``"median"`` (the tune rows' median of what they added) or
    ``"center"`` (their leaf-bound midpoint; always at stages where the bounds settle every row,
    so the proof there holds)."""
    final = partial[staged.n_trees]
    divisor = staged.ensemble.divisor
    reference = np.asarray(staged._finish(final / divisor), dtype=np.float64)
    movement, exact, agrees, sigma, offsets, slopes = [], [], [], [], [], []
    for stop in stops[:-1]:
        back = staged.lookback(stop)
        previous = partial[back] if back else np.full(final.shape, staged._base[0])
        signed = (partial[stop] - previous)[:, 0]
        moved = np.abs(signed)
        settled = staged.settled_stop(stop)
        rest = final[:, 0] - partial[stop][:, 0]
        offset, slope = float(staged.center(stop)[0]), 0.0
        if correction == "median" and not settled and len(rest):
            offset = float(np.median(rest))
        elif correction == "linear" and not settled and len(rest) > 1:
            design = np.column_stack([np.ones(len(rest)), signed])
            offset, slope = (float(v) for v in np.linalg.lstsq(design, rest, rcond=None)[0])
        estimate = np.asarray(
            staged._finish((partial[stop][:, 0] + offset + slope * signed)[:, None] / divisor),
            dtype=np.float64,
        )
        movement.append(moved)
        exact.append(np.full(len(moved), settled))
        agrees.append(within(reference, estimate))
        typical = float(np.median(moved)) if len(moved) else 0.0
        sigma.append(typical if typical > 0 else 1e-12)
        offsets.append(offset)
        slopes.append(slope)
    n = final.shape[0]
    shape = (len(stops) - 1, n)
    return _Stages(
        stops,
        np.asarray(movement).reshape(shape),
        np.asarray(exact, dtype=bool).reshape(shape),
        np.zeros((len(stops), n), dtype=np.int64),
        np.asarray(sigma),
        agrees=np.vstack([np.asarray(agrees, dtype=bool).reshape(shape), np.ones((1, n), dtype=bool)]),
        settle=True,
        offsets=tuple(offsets),
        slopes=tuple(slopes),
    )


def _exits(stages: _Stages, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's exit stage and whether its decision there equals the full ensemble's (for
    regression: whether its estimate there is within tolerance of the full ensemble's output)."""
    if stages.settle:  # inf: exact exits only
        limits = np.where(np.isfinite(thresholds), thresholds, -1.0)[:, None]
        leave = stages.exact | (stages.margins <= limits)
    else:
        leave = stages.exact | (stages.margins > thresholds[:, None])
    leave = np.vstack([leave, np.ones((1, leave.shape[1]), dtype=bool)])
    first = np.argmax(leave, axis=0)
    if stages.agrees is not None:
        return first, stages.agrees[first, np.arange(leave.shape[1])]
    chosen = stages.decisions[first, np.arange(leave.shape[1])]
    return first, chosen == stages.decisions[-1]


def _tune(
    stages: _Stages,
    accuracy_target: float,
    confidence: float,
    holdout_rows: int,
    pass_probability: float,
    rate_level: float,
) -> np.ndarray:
    """Per-stage thresholds: for each profile of :data:`PROFILES`, the smallest ``lambda`` of
    :data:`LAMBDAS` whose thresholds meet the target on the tune rows and are likely to pass the
    holdout proof; the profile needing the fewest trees per row wins. All ``inf`` (exact exits
    only) when none qualifies.

    "Likely to pass", as in :func:`~willow.cascades.threshold.tune_threshold`: taking the
    disagreement rate as its upper ``rate_level`` Clopper-Pearson bound on the tune rows, the
    holdout bound reaches the target with probability ``pass_probability``. The caller raises
    ``rate_level`` with the number of candidates compared on the same tune rows (Bonferroni):
    the one that looks best there is the one whose tune rows flattered it most.

    Regression (``stages.settle``): rows leave when their movement is *at most* the threshold, so
    the scan goes from the largest ``lambda`` (most exits) down."""
    none = np.full(len(stages.sigma), np.inf)
    if accuracy_target >= 1.0 or not len(stages.sigma):
        return none
    n = stages.decisions.shape[1]
    allowed = allowed_disagreements(holdout_rows, accuracy_target, confidence)
    stops = np.asarray(stages.stops, dtype=float)
    best, best_trees = none, float(stops[-1])
    for beta in PROFILES:
        scale = stages.sigma * (stops[:-1] / stops[-1]) ** beta
        for lam in LAMBDAS[::-1] if stages.settle else LAMBDAS:
            thresholds = lam * scale
            first, agrees = _exits(stages, thresholds)
            agreements = int(agrees.sum())
            if clopper_pearson_lower(agreements, n, confidence) < accuracy_target:
                continue
            rate = 1.0 - float(clopper_pearson_lower(agreements, n, rate_level))
            if allowed >= 0 and binom.cdf(allowed, holdout_rows, rate) >= pass_probability:
                trees = float(stops[first].mean())
                if trees < best_trees:
                    best, best_trees = thresholds, trees
                break
    return best


def _summary(stops: Sequence[int], exit_stage: np.ndarray) -> tuple[tuple[float, ...], float]:
    counts = np.bincount(exit_stage, minlength=len(stops))
    fractions = counts / max(len(exit_stage), 1)
    return tuple(float(f) for f in fractions), float(np.dot(fractions, stops))


def calibrate_early_exit(
    model: Any,
    X: Any,
    *,
    method: str = "predict",
    accuracy_target: float = 0.99,
    confidence: float = 0.95,
    tune_fraction: float = 0.5,
    random_state: int | None = 0,
    schedules: Sequence[Sequence[float]] | None = None,
    pass_probability: float = 0.8,
    repeats: int = 3,
    staged: StagedTreeModel | None = None,
    tolerance: float | Callable | None = None,
    corrections: Sequence[str] = CORRECTIONS,
    decision: tuple[int | None, float] | None = None,
    **options: Any,
) -> ModelCascade:
    """Calibrate staged early exit for ``getattr(model, method)`` on the rows of ``X``.

    Classifiers: ``accuracy_target=1.0`` exits only where the remaining trees' leaf-value bounds
    prove the decision (outputs identical to the library's decisions); below it, per-stage margin
    thresholds are tuned on ``tune_fraction`` of the distinct rows and the plan is proven on the
    rest. Regressors (``predict``, no ``classes_``) need ``tolerance=`` (as
    :mod:`willow.cascades.tolerance`: a float ``t`` for ``|approx - original| <= t``, or a
    callable ``(original, approx) -> bool per row``): ``accuracy_target=1.0`` (a float
    tolerance) exits every row once the bounds prove its output within ``t``; below it, rows whose
    score settled (moved little over the stage's last trees) leave with an estimate per
    ``corrections`` (:data:`CORRECTIONS`: by default ``partial + offset + slope * moved``, fitted
    on the tune rows), and the plan is proven on "within tolerance" agreement. ``options`` go to
    :func:`~willow.early_exit.staged.stage_tree_model` (unless ``staged`` is given).

    ``decision = (column, t)``: the caller decides by ``model.method(X)[:, column] > t``
    (``column`` ``None``: a 1-D output), as a function returning ``predict_proba(X)[:, 1] > t``
    does (for a model without classes: ``method="predict"``, column ``None``); exits then keep
    that decision (the raw-score cut of one raw column, see
    :meth:`~willow.early_exit.staged.StagedTreeModel.cut_for`) and plans are proven on it.
    Raises
    :class:`~willow.errors.CalibrationError` when the holdout part is too small to prove the
    target, :class:`EarlyExitToleranceError` (a ``ValueError``) for ``tolerance=`` given for a
    classifier, missing for a regressor or a callable at ``accuracy_target=1.0``,
    :class:`~willow.compiler.lowering.base.NotLowerable` (a ``TypeError``) for a model the tree
    lowering does not support.
    """
    if not 0.0 < accuracy_target <= 1.0:
        raise ValueError(f"accuracy_target must be in (0, 1], got {accuracy_target!r}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence!r}.")
    if decision is not None and tolerance is not None:
        raise EarlyExitToleranceError(
            "tolerance= applies to a regressor's predict returned as numbers; decision= judges a "
            "thresholded output on its side of the threshold. Pass one or the other."
        )
    # a thresholded output is judged on its decisions: a regressor's needs no tolerance then
    within = None if decision is not None else _check_tolerance(model, method, tolerance, accuracy_target)
    if within is not None:
        tolerance = check_tolerance(tolerance)  # a number as a float
    if staged is None:
        staged = stage_tree_model(model, method, **options)
    if within is not None:
        staged.with_regression(tolerance if isinstance(tolerance, float) else None)
        if accuracy_target >= 1.0 and not staged.linear_output:
            raise EarlyExitToleranceError(
                f"Exact early exit within tolerance= bounds the raw score, but {staged.name}'s output is "
                "a non-linear conversion of it (e.g. exp for Poisson/gamma/tweedie objectives). Use "
                "accuracy_target < 1.0 (settled-score exits, proven on holdout rows)."
            )
    else:
        staged.regression = False
    if decision is None:
        staged.with_cut(0.0)
    else:
        staged.with_cut(_decision_cut(staged, model, method, decision), decision[0])
    n = n_rows(X)
    _, tune, holdout, _ = cut_distinct(n, 0, int(round(n * tune_fraction)), random_state, row_groups([X], n))
    if (
        accuracy_target < 1.0
        and clopper_pearson_lower(len(holdout), len(holdout), confidence) < accuracy_target
    ):
        raise CalibrationError(
            f"Too few calibration rows to prove accuracy_target={accuracy_target} at "
            f"confidence={confidence}: {len(holdout)} distinct holdout rows of {n}. Calibrate on more "
            "rows, or lower accuracy_target."
        )
    X_tune, X_holdout = take_rows(X, tune), take_rows(X, holdout)
    if schedules is None:
        schedules = DEFAULT_SCHEDULES if within is None else REGRESSION_SCHEDULES
    schedules_stops = [staged.snap([max(1, round(f * staged.n_trees)) for f in s]) for s in schedules]
    if within is not None:  # one stop where the bounds settle every row: exact mode's best plan
        settled = next((stop for stop in staged.group_ends if staged.settled_stop(stop)), staged.n_trees)
        schedules_stops.append(staged.snap([settled]))
    schedules_stops = list(dict.fromkeys(c for c in schedules_stops if len(c) > 1)) or [(staged.n_trees,)]
    all_stops = {stop for c in schedules_stops for stop in c}
    if within is not None:  # and where each stop's movement is measured from
        all_stops |= {staged.lookback(stop) for stop in all_stops} - {0}
    all_stops = sorted(all_stops)
    partial = dict(zip(all_stops, staged.partial_scores(X_tune, all_stops)))
    if within is None:
        candidates = [_stages(staged, stops, partial) for stops in schedules_stops]
    else:
        kinds = tuple(corrections) if accuracy_target < 1.0 else ("center",)
        candidates = [
            _regression_stages(staged, stops, partial, within, kind)
            for stops in schedules_stops
            for kind in kinds
        ]
    # tune_threshold's 90% level, split among every (schedule, profile) compared on the tune rows
    rate_level = 1.0 - 0.1 / (len(candidates) * len(PROFILES))
    tuned, costs = [], []
    for stages in candidates:
        thresholds = _tune(stages, accuracy_target, confidence, len(holdout), pass_probability, rate_level)
        tuned.append((stages.stops, tuple(float(t) for t in thresholds), stages.offsets, stages.slopes))
        costs.append(_cost(stages, thresholds))
    best = tuned[int(np.argmin(costs))]
    full_seconds, seconds = _measure(staged, X_tune, best, repeats)
    reason = ""
    if accuracy_target < 1.0 and all(math.isinf(t) for t in best[1]):
        reason = (
            f"No {'settled-score' if within is not None else 'margin'} thresholds met "
            f"accuracy_target={accuracy_target} on the {len(tune)} tune rows with a likely holdout proof "
            f"on {len(holdout)} rows, so only exact exits are used (more calibration rows may allow them)."
        )
    prove = dict(
        staged=staged, model=model, method=method, X_holdout=X_holdout, accuracy_target=accuracy_target,
        confidence=confidence, tune_rows=len(tune), tolerance=tolerance, within=within, decision=decision,
    )  # fmt: skip
    plan = _prove(
        choice=best, seconds_per_row=seconds, full_seconds_per_row=full_seconds, reason=reason, **prove
    )
    if plan is None:  # the approximate plan missed its proof: exact exits always hold
        exact = []
        for stages in candidates:
            thresholds = np.full(len(stages.stops) - 1, np.inf)
            offsets = (
                tuple(float(staged.center(stop)[0]) for stop in stages.stops[:-1]) if stages.settle else ()
            )
            choice = (stages.stops, (math.inf,) * len(thresholds), offsets, (0.0,) * len(offsets))
            exact.append((choice, _cost(stages, thresholds)))
        best = min(exact, key=lambda pair: pair[1])[0]
        full_seconds, seconds = _measure(staged, X_tune, best, repeats)
        reason = (
            f"The tuned {'settled-score' if within is not None else 'margin'} thresholds missed the holdout "
            "proof, so only exact exits are used."
        )
        plan = _prove(
            choice=best, seconds_per_row=seconds, full_seconds_per_row=full_seconds, reason=reason, **prove
        )
        assert plan is not None
    return ModelCascade(staged, plan)


def _decision_cut(
    staged: StagedTreeModel, model: Any, method: str, decision: tuple[int | None, float]
) -> float:
    """The raw-score cut of ``decision = (column, t)`` on ``model.method``'s output, checked to
    be a classifier's probabilities or scores, or the numbers a model without classes predicts
    (a regressor, a LightGBM Booster's probabilities) (:meth:`StagedTreeModel.cut_for` checks
    that one raw column decides it)."""
    where = "willow/early_exit/calibrate.py:calibrate_early_exit"
    classifier = getattr(model, "classes_", None) is not None
    allowed = ("predict_proba", "decision_function") if classifier else ("predict",)
    if method not in allowed:
        raise ValueError(
            f"decision= thresholds {'a classifier' if classifier else 'a model'}'s "
            f"{' or '.join(allowed)} output, got method={method!r} of {type(model).__name__} ({where}). "
            + ("Pass decision=None for its labels." if classifier else f"Use method={allowed[0]!r}.")
        )
    column, threshold = decision
    if not math.isfinite(float(threshold)):
        raise ValueError(f"decision= needs a finite threshold, got {threshold!r} ({where}).")
    return staged.cut_for(column, float(threshold))


def _check_tolerance(
    model: Any, method: str, tolerance: Any, accuracy_target: float
) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
    """``tolerance=`` checked against the model: ``None`` for a classifier (labels: no
    tolerance), else the per-row "within tolerance" test for a regressor's ``predict``."""
    where = "willow/early_exit/calibrate.py:calibrate_early_exit"
    is_classifier = getattr(model, "classes_", None) is not None
    if is_classifier:
        if tolerance is not None:
            raise EarlyExitToleranceError(
                f"tolerance= applies to regressors' early exit (numbers), but {type(model).__name__} is a "
                f"classifier whose exits keep its decisions ({where}). Remove tolerance=: classifier plans "
                "are judged on equal decisions."
            )
        return None
    if method != "predict":
        raise EarlyExitToleranceError(
            f"Regression early exit serves predict, got method={method!r} for {type(model).__name__} "
            f"({where}). Use method='predict'."
        )
    if tolerance is None:
        raise EarlyExitToleranceError(
            f"{type(model).__name__} has no classes_ (a regressor): an early exit changes its predictions, "
            f"so it needs tolerance= ({where}). Pass tolerance=t (|approx - original| <= t) or a callable "
            "(original, approx) -> one bool per row."
        )
    tolerance = check_tolerance(tolerance)
    if callable(tolerance) and accuracy_target >= 1.0:
        raise EarlyExitToleranceError(
            f"Exact early exit (accuracy_target=1.0) proves |approx - original| <= t from leaf-value bounds, "
            f"which needs a float tolerance, got the callable {getattr(tolerance, '__qualname__', tolerance)!r} "
            f"({where}). Pass a float tolerance, or accuracy_target < 1.0 (proven on holdout rows)."
        )
    spec = ToleranceSpec("predict", np.dtype(np.float64), None, None, decision="numbers", tolerance=tolerance)
    return lambda original, approx: spec.agreement(approx, original)


def _cost(stages: _Stages, thresholds: np.ndarray) -> float:
    """Expected cost per tune row, in trees: the trees a row runs, plus
    :data:`STAGE_COST_TREES` per stage it reaches (gathering it, testing its exit)."""
    first, _ = _exits(stages, thresholds)
    return float(np.asarray(stages.stops)[first].mean() + STAGE_COST_TREES * (first + 1).mean())


def _measure(staged: StagedTreeModel, X: Any, plan: _Choice, repeats: int) -> tuple[float, float]:
    """Seconds per row of the full ensemble and of ``plan = (stops, thresholds, offsets, slopes)`` on the
    rows of ``X`` (fastest of ``repeats`` interleaved runs)."""
    rows = max(n_rows(X), 1)
    full, staged_seconds = interleaved_seconds(
        [lambda: staged.with_stages((staged.n_trees,))(X), lambda: staged.with_stages(*plan)(X)], repeats
    )
    return full / rows, staged_seconds / rows


def _prove(
    staged: StagedTreeModel,
    model: Any,
    method: str,
    X_holdout: Any,
    choice: _Choice,
    accuracy_target: float,
    confidence: float,
    tune_rows: int,
    seconds_per_row: float,
    full_seconds_per_row: float,
    reason: str = "",
    tolerance: Any = None,
    within: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    decision: tuple[int | None, float] | None = None,
) -> EarlyExitPlan | None:
    """The plan for ``choice`` with its holdout figures, or ``None`` when it misses the target.

    An exact plan must reproduce the library's decisions on every holdout row (for regression:
    be within tolerance of the library's output on every row); anything else is a bug in the
    bounds and raises ``AssertionError``."""
    stops, thresholds, offsets, slopes = choice
    exact = all(math.isinf(t) for t in thresholds)
    output, exit_stage = staged.with_stages(stops, thresholds, offsets, slopes).run(X_holdout)
    reference = getattr(model, method)(X_holdout)
    if within is None:
        agrees = agreeing_rows(output, reference, method, decision)
    else:
        agrees = within(np.asarray(reference, dtype=np.float64), np.asarray(output, dtype=np.float64))
    n = len(agrees)
    agreement = float(agrees.mean()) if n else 1.0
    fractions, trees = _summary(stops, exit_stage)
    if exact:
        assert agrees.all(), f"exact early exit changed {int((~agrees).sum())} of {n} holdout outputs"
        lower = None
    else:
        lower = float(clopper_pearson_lower(int(agrees.sum()), n, confidence))
        if lower < accuracy_target:
            return None
    return EarlyExitPlan(
        model=staged.name,
        n_trees=staged.n_trees,
        stops=stops,
        thresholds=thresholds,
        exact=exact,
        accuracy_target=accuracy_target,
        confidence=confidence,
        exit_fractions=fractions,
        trees_per_row=trees,
        agreement=agreement,
        lower_bound=lower,
        tune_rows=tune_rows,
        holdout_rows=n,
        seconds_per_row=seconds_per_row,
        full_seconds_per_row=full_seconds_per_row,
        reason=reason,
        regression=within is not None,
        tolerance=tolerance if isinstance(tolerance, float) else None,
        tolerance_text="" if within is None else describe_tolerance(tolerance),
        offsets=offsets,
        slopes=slopes,
        cut=staged.cut,
        decision=decision,
        method=method,
    )
