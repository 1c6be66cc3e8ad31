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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import binom

from willow.cascades.bounds import clopper_pearson_lower
from willow.cascades.duplicates import row_groups
from willow.cascades.splits import cut_distinct
from willow.cascades.threshold import allowed_disagreements
from willow.compiler.lowering.base import NotLowerable
from willow.compiler.lowering.trees import SMALL_BATCH_ROWS
from willow.compiler.profiling import interleaved_seconds
from willow.early_exit.plan import EarlyExitPlan
from willow.early_exit.staged import StagedTreeModel, decisions, margins, stage_tree_model
from willow.errors import CalibrationError
from willow.rows import n_rows, take_rows

__all__ = ["ModelCascade", "calibrate_early_exit", "DEFAULT_SCHEDULES", "agreeing_rows"]

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
#: Margin thresholds tried, in units of each stage's spread ``sigma`` (smallest first).
LAMBDAS = np.geomspace(0.05, 60.0, 120)
#: Threshold profiles across stages: ``sigma[s] * (stop_s / n_trees) ** beta`` (beta < 0 asks
#: early stages for larger margins than ``sigma`` alone, beta > 0 for smaller ones).
PROFILES = (-0.5, 0.0, 0.5, 1.0)
#: What reaching one more stage costs a row (gathering it into the next batch, testing its exit),
#: in trees of the ensemble: how schedules with more stages are charged when choosing one.
STAGE_COST_TREES = 2.0


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
        self.staged = copy.copy(staged).with_stages(plan.stops, plan.thresholds)
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

    def __call__(self, X: Any) -> np.ndarray:
        if self.full is not None and n_rows(X) <= SMALL_BATCH_ROWS:
            return self.full(X)
        return self.staged(X)

    def run(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(output, exit stage per row)``, always through the stages."""
        return self.staged.run(X)


def agreeing_rows(output: np.ndarray, reference: np.ndarray, method: str) -> np.ndarray:
    """Per row, whether two outputs of ``method`` agree on the decision: equal labels for
    ``predict``; otherwise equal arg-max (probabilities, multiclass scores) or equal sign (one
    raw score or binary ``decision_function``)."""
    output, reference = np.asarray(output), np.asarray(reference)
    if method == "predict":
        return output == reference
    if output.ndim == 2 and output.shape[1] > 1:
        return np.argmax(output, axis=1) == np.argmax(reference, axis=1)
    return (output.reshape(len(output), -1)[:, 0] > 0) == (reference.reshape(len(reference), -1)[:, 0] > 0)


@dataclass(frozen=True)
class _Stages:
    """What one schedule's exits depend on, per exit stage ``s`` and tune row."""

    stops: tuple[int, ...]
    margins: np.ndarray  # (S - 1, n)
    exact: np.ndarray  # (S - 1, n) bool
    decisions: np.ndarray  # (S, n): the decision if the row left after stage s (last: full)
    sigma: np.ndarray  # (S - 1,)


def _stages(staged: StagedTreeModel, stops: tuple[int, ...], partial: dict[int, np.ndarray]) -> _Stages:
    final = partial[staged.n_trees]
    margin_rows, exact_rows, decision_rows, sigma = [], [], [], []
    for stop in stops[:-1]:
        estimate = partial[stop] + staged.center(stop)
        margin_rows.append(margins(estimate))
        exact_rows.append(staged.exact_exits(partial[stop], stop))
        decision_rows.append(decisions(estimate))
        # how much the rest of the trees moves the margin-relevant scores, typically
        change = final - estimate
        spread = float(np.sqrt(np.mean(np.var(change, axis=0)) * (1 if final.shape[1] == 1 else 2)))
        sigma.append(spread if spread > 0 else 1e-12)
    decision_rows.append(decisions(final))
    n = final.shape[0]
    shape = (len(stops) - 1, n)
    return _Stages(
        stops,
        np.asarray(margin_rows).reshape(shape),
        np.asarray(exact_rows, dtype=bool).reshape(shape),
        np.asarray(decision_rows).reshape((len(stops), n)),
        np.asarray(sigma),
    )


def _exits(stages: _Stages, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's exit stage and whether its decision there equals the full ensemble's."""
    leave = stages.exact | (stages.margins > thresholds[:, None])
    leave = np.vstack([leave, np.ones((1, leave.shape[1]), dtype=bool)])
    first = np.argmax(leave, axis=0)
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
    the one that looks best there is the one whose tune rows flattered it most."""
    none = np.full(len(stages.sigma), np.inf)
    if accuracy_target >= 1.0 or not len(stages.sigma):
        return none
    n = stages.decisions.shape[1]
    allowed = allowed_disagreements(holdout_rows, accuracy_target, confidence)
    stops = np.asarray(stages.stops, dtype=float)
    best, best_trees = none, float(stops[-1])
    for beta in PROFILES:
        scale = stages.sigma * (stops[:-1] / stops[-1]) ** beta
        for lam in LAMBDAS:
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
    schedules: Sequence[Sequence[float]] = DEFAULT_SCHEDULES,
    pass_probability: float = 0.8,
    repeats: int = 3,
    staged: StagedTreeModel | None = None,
    **options: Any,
) -> ModelCascade:
    """Calibrate staged early exit for ``getattr(model, method)`` on the rows of ``X``.

    ``accuracy_target=1.0`` exits only where the remaining trees' leaf-value bounds prove the
    decision (outputs identical to the library's decisions); below it, per-stage margin thresholds
    are tuned on ``tune_fraction`` of the distinct rows and the plan is proven on the rest.
    ``options`` go to :func:`~willow.early_exit.staged.stage_tree_model` (unless ``staged`` is
    given). Raises :class:`~willow.errors.CalibrationError` when the holdout part is too small
    to prove the target, :class:`~willow.compiler.lowering.base.NotLowerable` (a ``TypeError``)
    for a model without ``classes_`` or one the tree lowering does not support.
    """
    if not 0.0 < accuracy_target <= 1.0:
        raise ValueError(f"accuracy_target must be in (0, 1], got {accuracy_target!r}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence!r}.")
    if getattr(model, "classes_", None) is None:
        raise NotLowerable(
            f"Early exit decides classes: expected a fitted classifier with classes_, got "
            f"{type(model).__name__}. Regression ensembles (and bare Boosters) run every tree."
        )
    if staged is None:
        staged = stage_tree_model(model, method, **options)
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
    candidates = [staged.snap([max(1, round(f * staged.n_trees)) for f in s]) for s in schedules]
    candidates = list(dict.fromkeys(c for c in candidates if len(c) > 1)) or [(staged.n_trees,)]
    all_stops = sorted({stop for c in candidates for stop in c})
    partial = dict(zip(all_stops, staged.partial_scores(X_tune, all_stops)))
    # tune_threshold's 90% level, split among every (schedule, profile) compared on the tune rows
    rate_level = 1.0 - 0.1 / (len(candidates) * len(PROFILES))
    tuned, costs = [], []
    for stops in candidates:
        stages = _stages(staged, stops, partial)
        thresholds = _tune(stages, accuracy_target, confidence, len(holdout), pass_probability, rate_level)
        tuned.append((stops, tuple(float(t) for t in thresholds)))
        costs.append(_cost(stages, thresholds))
    best = tuned[int(np.argmin(costs))]
    full_seconds, seconds = _measure(staged, X_tune, best, repeats)
    reason = ""
    if accuracy_target < 1.0 and all(math.isinf(t) for t in best[1]):
        reason = (
            f"No margin thresholds met accuracy_target={accuracy_target} on the {len(tune)} tune rows "
            f"with a likely holdout proof on {len(holdout)} rows, so only exact exits are used "
            "(more calibration rows may allow margins)."
        )
    plan = _prove(
        staged, model, method, X_holdout, best, accuracy_target, confidence, len(tune), seconds, full_seconds,
        reason,
    )  # fmt: skip
    if plan is None:  # the approximate plan missed its proof: exact exits always hold
        exact = []
        for stops in candidates:
            thresholds = np.full(len(stops) - 1, np.inf)
            choice = (stops, (math.inf,) * len(thresholds))
            exact.append((choice, _cost(_stages(staged, stops, partial), thresholds)))
        best = min(exact, key=lambda pair: pair[1])[0]
        full_seconds, seconds = _measure(staged, X_tune, best, repeats)
        reason = "The tuned margin thresholds missed the holdout proof, so only exact exits are used."
        plan = _prove(
            staged,
            model,
            method,
            X_holdout,
            best,
            accuracy_target,
            confidence,
            len(tune),
            seconds,
            full_seconds,
            reason,
        )
        assert plan is not None
    return ModelCascade(staged, plan)


def _cost(stages: _Stages, thresholds: np.ndarray) -> float:
    """Expected cost per tune row, in trees: the trees a row runs, plus
    :data:`STAGE_COST_TREES` per stage it reaches (gathering it, testing its exit)."""
    first, _ = _exits(stages, thresholds)
    return float(np.asarray(stages.stops)[first].mean() + STAGE_COST_TREES * (first + 1).mean())


def _measure(
    staged: StagedTreeModel, X: Any, plan: tuple[tuple[int, ...], tuple[float, ...]], repeats: int
) -> tuple[float, float]:
    """Seconds per row of the full ensemble and of ``plan = (stops, thresholds)`` on the rows of
    ``X`` (fastest of ``repeats`` interleaved runs)."""
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
    choice: tuple[tuple[int, ...], tuple[float, ...]],
    accuracy_target: float,
    confidence: float,
    tune_rows: int,
    seconds_per_row: float,
    full_seconds_per_row: float,
    reason: str = "",
) -> EarlyExitPlan | None:
    """The plan for ``choice`` with its holdout figures, or ``None`` when it misses the target.

    An exact plan must reproduce the library's decisions on every holdout row (anything else is
    a bug in the bounds and raises ``AssertionError``)."""
    stops, thresholds = choice
    exact = all(math.isinf(t) for t in thresholds)
    output, exit_stage = staged.with_stages(stops, thresholds).run(X_holdout)
    reference = getattr(model, method)(X_holdout)
    agrees = agreeing_rows(output, reference, method)
    n = len(agrees)
    agreement = float(agrees.mean()) if n else 1.0
    fractions, trees = _summary(stops, exit_stage)
    if exact:
        assert agrees.all(), f"exact early exit changed {int((~agrees).sum())} of {n} holdout decisions"
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
    )
