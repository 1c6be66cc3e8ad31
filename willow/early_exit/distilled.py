"""Cheap model first (an "I don't know" cascade): a distilled small model answers the rows it is
sure of, the full tree ensemble the rest (issue 16, item 3).

The cheap model sees every feature the full model sees (the full model's own prepared input) and
is trained to imitate the full model's labels, never the ground truth:

* ``"logistic"``: a standardized ``LogisticRegression``, served as one matrix product with the
  scaling folded into its weights (rows with a missing value always go to the full model);
* ``"lightgbm"``: a small LightGBM (:data:`LIGHTGBM_SIZE`), served by willow's compiled tree
  kernels (its raw scores): for two classes an ``LGBMRegressor`` fitted to the full model's raw
  score (soft targets: it learns how sure the full model is, not only its label), otherwise an
  ``LGBMClassifier`` fitted to its labels.

A row's margin is ``|score|`` (binary) or the gap between the two largest scores (multiclass,
:func:`~willow.early_exit.staged.margins`); rows at or above the tuned threshold take the cheap
model's label, the others ("I don't know") the compiled full ensemble's.

:func:`calibrate_distilled` splits the calibration rows as staged early exit does (tune and
holdout, :func:`willow.cascades.splits.cut_distinct`), cuts the tune rows again into a part the
cheap models are fitted on and a part their thresholds are tuned on
(:func:`willow.cascades.threshold.tune_threshold`, Bonferroni-adjusted across the kinds tried),
keeps the kind with the lowest expected cost on the tune rows (its scoring time plus the full
ensemble's on the rows it leaves), and proves that one plan once on the
holdout rows with the one-sided Clopper-Pearson bound. Only labels (``predict``) are served: an
answered row's probabilities would be the cheap model's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from willow.cascades.bounds import clopper_pearson_lower
from willow.cascades.duplicates import row_groups
from willow.cascades.splits import cut_distinct
from willow.cascades.threshold import tune_threshold
from willow.compiler.lowering.base import NotLowerable
from willow.compiler.lowering.trees import SMALL_BATCH_ROWS, lower_tree_model
from willow.compiler.profiling import interleaved_seconds
from willow.early_exit.plan import EarlyExitPlan
from willow.early_exit.staged import decisions, margins
from willow.errors import CalibrationError
from willow.rows import n_rows, take_rows

__all__ = ["DistilledPlan", "DistilledCascade", "calibrate_distilled", "KINDS", "LIGHTGBM_SIZE"]

KINDS = ("logistic", "lightgbm")
#: The small LightGBM's size: trees, leaves per tree, learning rate.
LIGHTGBM_SIZE = {"n_estimators": 40, "num_leaves": 15, "learning_rate": 0.2}
#: Fewest rows the cheap model is fitted on.
MIN_FIT_ROWS = 20
#: Synthetic variants of each fit row the full model labels for the cheap one (:func:`augmented`).
AUGMENT = 8


@dataclass(frozen=True, eq=False)
class DistilledPlan:
    """A calibrated cheap-model-first cascade in front of a tree ensemble.

    ``kind`` says which cheap model: ``"logistic"`` (``weights`` (features, outputs) and
    ``intercept`` applied to the full model's prepared input) or ``"lightgbm"`` (``cheap``, a
    fitted ``LGBMClassifier`` on the same input). A row whose cheap margin is at least
    ``threshold`` takes ``labels[decision]`` (``decision``: ``score > 0`` for one output, the
    arg-max otherwise); the others run the full ensemble. ``exit_fraction``, ``agreement`` and
    ``lower_bound`` (one-sided Clopper-Pearson at ``confidence``) were measured on holdout rows
    that played no part in fitting or tuning.
    """

    model: str
    kind: str
    labels: np.ndarray
    threshold: float
    accuracy_target: float
    confidence: float
    exit_fraction: float
    agreement: float
    lower_bound: float
    fit_rows: int
    tune_rows: int
    holdout_rows: int
    weights: np.ndarray | None = None
    intercept: np.ndarray | None = None
    cheap: Any = field(default=None, repr=False)
    seconds_per_row: float | None = None
    full_seconds_per_row: float | None = None
    reason: str = ""

    #: never exact: the cheap model's answers are proven at the target, not identical
    exact = False

    #: full ensemble over the cascade's seconds per row, measured on the tune rows
    expected_speedup = EarlyExitPlan.expected_speedup

    def describe_cheap(self) -> str:
        if self.kind == "logistic":
            return f"logistic regression on {0 if self.weights is None else self.weights.shape[0]} features"
        size = LIGHTGBM_SIZE if self.cheap is None else self.cheap.get_params()
        return f"LightGBM {size['n_estimators']} trees x {size['num_leaves']} leaves"

    def table(self) -> str:
        """The plan as text: the two stages, the threshold, exit fractions and the guarantee."""
        lines = [f"Cheap model first in front of {self.model} (an I-don't-know cascade)."]
        if self.reason:
            lines.append(self.reason)
        lines.append(f"  {'stage':>5} {'model':<40} {'threshold':>10} {'exits':>8}")
        lines.append(
            f"  {1:>5} {self.describe_cheap():<40} {self.threshold:>10.4g} {self.exit_fraction:>8.2%}"
        )
        lines.append(f"  {2:>5} {self.model[:40]:<40} {'all rows':>10} {1 - self.exit_fraction:>8.2%}")
        lines.append(f"  fitted on {self.fit_rows} rows, threshold tuned on {self.tune_rows - self.fit_rows}")
        if self.expected_speedup is not None:
            lines.append(
                f"  cascade {self.seconds_per_row * 1e6:.2f} us/row vs full ensemble "
                f"{self.full_seconds_per_row * 1e6:.2f} us/row on {self.tune_rows} tune rows "
                f"({self.expected_speedup:.2f}x)"
            )
        lines.append(
            f"  agreement with the full ensemble {self.agreement:.4f} on {self.holdout_rows} holdout "
            f"rows; lower {self.confidence:.0%} bound {self.lower_bound:.4f} (target {self.accuracy_target})"
        )
        return "\n".join(lines)


def _prepare_of(model: Any, method: str) -> Any:
    """The compiled operator's input conversion for ``model.method`` (no kernels compiled)."""
    return lower_tree_model(model, method, builder=lambda name, ensemble, prepare, finish: prepare)


class _Cheap:
    """The cheap model's raw scores (n, outputs) on prepared rows."""

    def __init__(self, kind: str, weights: Any = None, intercept: Any = None, cheap: Any = None) -> None:
        self.kind = kind
        if kind == "logistic":
            self.weights = np.ascontiguousarray(weights, dtype=np.float64)
            self.intercept = np.asarray(intercept, dtype=np.float64)
        else:
            self.operator = lower_tree_model(cheap, "raw" if hasattr(cheap, "classes_") else "predict")

    def __call__(self, data: np.ndarray) -> np.ndarray:
        if self.kind == "logistic":
            return data @ self.weights + self.intercept
        raw = np.asarray(self.operator(data), dtype=np.float64)
        return raw.reshape(len(data), -1)


class DistilledCascade:
    """``cascade(X)`` returns ``model.predict(X)``'s labels: the cheap model's for the rows whose
    margin reaches the plan's threshold, the full ensemble's (``full``: its compiled operator)
    for the others. Batches of up to ``SMALL_BATCH_ROWS`` rows run ``full`` alone (exact), as
    :class:`~willow.early_exit.calibrate.ModelCascade` does; ``run(X)`` always cascades and also
    returns which rows the cheap model answered."""

    def __init__(self, plan: DistilledPlan, prepare: Any, full: Any, cheap: _Cheap | None = None) -> None:
        self.plan = plan
        self.full = full
        self._prepare = prepare
        self._cheap = (
            cheap if cheap is not None else _Cheap(plan.kind, plan.weights, plan.intercept, plan.cheap)
        )
        self.name = f"{plan.model}, cheap model first ({plan.kind})"
        self.source = getattr(full, "source", "")

    @classmethod
    def from_plan(cls, model: Any, method: str, plan: DistilledPlan, full: Any = None) -> DistilledCascade:
        """Rebuild serving for a saved ``plan`` around ``model`` (kernels come from the cache)."""
        if method != "predict":
            raise NotLowerable(f"cheap model first serves labels (predict) only, not {method}.")
        prepare = _prepare_of(model, method)
        full = full if full is not None else lower_tree_model(model, method)
        if not np.array_equal(np.asarray(model.classes_), plan.labels):
            raise CalibrationError(
                f"The cheap-model-first plan was calibrated for classes {list(plan.labels)}; this model "
                f"has {list(model.classes_)}. Calibrate again with this model."
            )
        return cls(plan, prepare, full)

    def __repr__(self) -> str:
        return f"DistilledCascade({self.plan.model!r}, kind={self.plan.kind!r}, threshold={self.plan.threshold:.4g})"

    def __call__(self, X: Any) -> np.ndarray:
        if n_rows(X) <= SMALL_BATCH_ROWS:
            return self.full(X)
        return self.run(X)[0]

    def answered(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(label index or -1, margin)`` per row: what the cheap model answers (``-1``: not
        sure, or a missing value the logistic model cannot read)."""
        data = self._prepare(X)
        if data.shape[0] == 0:
            return np.empty(0, dtype=np.int64), np.empty(0)
        scores = self._cheap(data)
        margin = margins(scores)
        sure = margin >= self.plan.threshold
        sure &= np.isfinite(margin)
        index = np.where(sure, decisions(np.nan_to_num(scores)), -1)
        return index, margin

    def run(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(labels, answered by the cheap model)`` per row."""
        index, _ = self.answered(X)
        labels = self.plan.labels
        out = labels[np.maximum(index, 0)] if len(index) else labels[:0].copy()
        unsure = np.flatnonzero(index < 0)
        if len(unsure):
            out[unsure] = np.asarray(self.full(take_rows(X, unsure)))
        return out, index >= 0


def _fit_logistic(
    data: np.ndarray, y: np.ndarray, n_labels: int, seed: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Weights (features, outputs) and intercept of a standardized logistic regression fitted to
    ``y`` (label indices) on the rows of ``data`` without missing values, scaling folded in;
    a label the rows never show gets a score of ``-inf``."""
    from sklearn.linear_model import LogisticRegression

    finite = np.isfinite(data).all(axis=1)
    data, y = data[finite], y[finite]
    present = np.unique(y)
    if len(data) < MIN_FIT_ROWS or len(present) < 2:
        raise CalibrationError(
            f"cheap model first: {len(data)} complete fit rows showing {len(present)} of the model's "
            f"labels; it needs {MIN_FIT_ROWS} rows and two labels"
        )
    mean = data.mean(axis=0)
    scale = data.std(axis=0)
    scale[scale == 0] = 1.0
    fitted = LogisticRegression(max_iter=300, C=1.0, random_state=seed).fit((data - mean) / scale, y)
    coef = fitted.coef_ / scale  # (outputs, features)
    intercept = fitted.intercept_ - coef @ mean
    if n_labels == 2:
        return coef.T.copy(), intercept
    weights = np.zeros((data.shape[1], n_labels))
    bias = np.full(n_labels, -np.inf)
    if len(present) == 2:  # a binary fit among more labels: score its two labels -/+ half
        weights[:, present[1]], bias[present[1]] = coef[0] / 2, intercept[0] / 2
        weights[:, present[0]], bias[present[0]] = -coef[0] / 2, -intercept[0] / 2
    else:
        weights[:, present], bias[present] = coef.T, intercept
    return weights, bias


def _teacher(model: Any) -> Any:
    """The full model's raw scores (n, outputs) on prepared rows, compiled: its decision is
    ``score > 0`` (one output) or the arg-max (probabilities, for a forest)."""
    for method in ("raw", "decision_function", "predict_proba"):
        try:
            operator = lower_tree_model(model, method)
        except NotLowerable:
            continue
        if method != "predict_proba":
            return lambda data, op=operator: np.asarray(op(data), dtype=np.float64).reshape(len(data), -1)

        def log_odds(data: np.ndarray, op: Any = operator) -> np.ndarray:
            p = np.clip(np.asarray(op(data), dtype=np.float64), 1e-9, 1 - 1e-9)
            return np.log(p[:, 1:] / p[:, :1]) if p.shape[1] == 2 else p

        return log_odds
    raise NotLowerable(f"cheap model first: no raw scores for {type(model).__name__}.")


def augmented(data: np.ndarray, copies: int, seed: int | None, swap: float = 0.3) -> np.ndarray:
    """``data`` and ``copies`` synthetic variants of it: each variant row takes, per feature with
    probability ``swap``, that feature's value from another random row (swap noise: every value
    stays one the data holds, so categories and missing values stay valid). The full model
    labels them, so the cheap model learns its boundary from more rows than were given."""
    rng = np.random.default_rng(seed)
    parts = [data]
    for _ in range(copies):
        other = data[rng.integers(0, len(data), len(data))]
        parts.append(np.where(rng.random(data.shape) < swap, other, data))
    return np.vstack(parts)


def _fit_lightgbm(
    data: np.ndarray,
    y: np.ndarray,
    n_labels: int,
    seed: int | None,
    raw: np.ndarray | None = None,
    size: dict[str, Any] | None = None,
) -> Any:
    """The small LightGBM: a regressor on ``raw`` (the full model's raw scores) for two labels,
    else a classifier on the label indices ``y``."""
    from lightgbm import LGBMClassifier, LGBMRegressor

    if n_labels == 2 and raw is not None and len(data) >= MIN_FIT_ROWS:
        return LGBMRegressor(
            **(size or LIGHTGBM_SIZE), min_child_samples=5, verbose=-1, random_state=seed or 0
        ).fit(data, raw)
    present = np.unique(y)
    if len(data) < MIN_FIT_ROWS or len(present) != n_labels:
        raise CalibrationError(
            f"cheap model first (lightgbm): the {len(data)} fit rows show {len(present)} of the "
            f"model's {n_labels} labels; it needs {MIN_FIT_ROWS} rows showing every label"
        )
    cheap = LGBMClassifier(**(size or LIGHTGBM_SIZE), min_child_samples=5, verbose=-1, random_state=seed or 0)
    return cheap.fit(data, y)


def fit_cheap_models(
    model: Any,
    data: np.ndarray,
    kinds: Sequence[str],
    random_state: int | None,
    lightgbm_size: dict[str, Any] | None = None,
) -> tuple[dict[str, tuple[_Cheap, Any, Any, Any]], list[str]]:
    """The cheap models of ``kinds`` fitted to imitate ``model`` on the prepared rows ``data``
    (and :data:`AUGMENT` swap-noise variants of each, labelled by the full model):
    ``({kind: (cheap, weights, intercept, fitted LightGBM)}, notes on the kinds not fitted)``."""
    teacher = _teacher(model)
    fit_data = augmented(data, AUGMENT, random_state) if len(data) else data
    fit_raw = teacher(fit_data) if len(data) else np.empty((0, 1))
    fit_target = decisions(fit_raw) if len(data) else np.empty(0, dtype=np.int64)
    n_labels = len(model.classes_)
    fits, notes = {}, []
    for kind in kinds:
        try:
            if kind == "logistic":
                weights, intercept = _fit_logistic(fit_data, fit_target, n_labels, random_state)
                fits[kind] = (_Cheap(kind, weights, intercept), weights, intercept, None)
            else:
                raw = fit_raw[:, 0] if fit_raw.shape[1] == 1 else None
                fitted = _fit_lightgbm(fit_data, fit_target, n_labels, random_state, raw, lightgbm_size)
                fits[kind] = (_Cheap(kind, cheap=fitted), None, None, fitted)
        except CalibrationError as exc:
            notes.append(str(exc))
    return fits, notes


def calibrate_distilled(
    model: Any,
    X: Any,
    *,
    method: str = "predict",
    accuracy_target: float = 0.99,
    confidence: float = 0.95,
    tune_fraction: float = 0.5,
    fit_fraction: float = 0.5,
    random_state: int | None = 0,
    kinds: Sequence[str] = KINDS,
    full: Any = None,
    pass_probability: float = 0.8,
    repeats: int = 3,
    lightgbm_size: dict[str, Any] | None = None,
) -> DistilledCascade:
    """Calibrate cheap model first for ``model.predict`` on the rows of ``X`` (see the module doc).

    ``fit_fraction`` of the tune rows fit the cheap models, the rest tune their thresholds;
    ``kinds`` (of :data:`KINDS`) are the cheap models tried (``lightgbm_size``: the small
    LightGBM's parameters, default :data:`LIGHTGBM_SIZE`); ``full``: the compiled full
    ensemble (compiled here when not given). Raises :class:`CalibrationError` when the target
    is 1.0 (cheap answers are never provably identical), the holdout part is too small to prove
    it, no kind has a threshold that qualifies, or the chosen plan misses its holdout proof;
    :class:`NotLowerable` for another method than ``predict`` or a model the tree lowering does
    not support.
    """
    if method != "predict":
        raise NotLowerable(f"cheap model first serves labels (predict) only, not {method}.")
    if not 0.0 < accuracy_target < 1.0:
        raise CalibrationError(
            f"cheap model first needs an accuracy_target below 1.0 (its answers are proven at the "
            f"target, never identical), got {accuracy_target!r}."
        )
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds must be some of {KINDS}, got {list(kinds)}.")
    labels = getattr(model, "classes_", None)
    if labels is None:
        raise NotLowerable(
            f"cheap model first decides classes: expected a fitted classifier, got {type(model).__name__}."
        )
    labels = np.asarray(labels)
    prepare = _prepare_of(model, method)
    full = full if full is not None else lower_tree_model(model, method)
    n = n_rows(X)
    _, tune, holdout, _ = cut_distinct(n, 0, int(round(n * tune_fraction)), random_state, row_groups([X], n))
    if clopper_pearson_lower(len(holdout), len(holdout), confidence) < accuracy_target:
        raise CalibrationError(
            f"Too few calibration rows to prove accuracy_target={accuracy_target} at "
            f"confidence={confidence}: {len(holdout)} distinct holdout rows of {n}."
        )
    X_tune, X_holdout = take_rows(X, tune), take_rows(X, holdout)
    data = np.asarray(prepare(X_tune), dtype=np.float64)
    target = np.searchsorted(labels, np.asarray(full(X_tune)))  # the full model's label indices
    order = np.random.default_rng(random_state).permutation(len(tune))
    cut = int(round(len(tune) * fit_fraction))
    fit, check = order[:cut], order[cut:]
    fits, notes = fit_cheap_models(model, data[fit], kinds, random_state, lightgbm_size)
    rate_level = 1.0 - 0.1 / len(kinds)
    built = {}
    for kind, (cheap, weights, intercept, fitted) in fits.items():
        scores = cheap(data[check])
        margin = np.nan_to_num(margins(scores), nan=-np.inf)
        agrees = decisions(np.nan_to_num(scores)) == target[check]
        choice = tune_threshold(
            margin, agrees, accuracy_target, confidence, len(holdout), pass_probability, rate_level
        )
        if math.isinf(choice.threshold):
            notes.append(f"{kind}: no threshold met the target on the {len(check)} tuning rows")
            continue
        plan = DistilledPlan(
            model=type(model).__name__, kind=kind, labels=labels, threshold=choice.threshold,
            accuracy_target=accuracy_target, confidence=confidence, exit_fraction=choice.confident_fraction,
            agreement=choice.agreement, lower_bound=choice.lower_bound, fit_rows=len(fit), tune_rows=len(tune),
            holdout_rows=len(holdout), weights=weights, intercept=intercept, cheap=fitted,
        )  # fmt: skip
        built[kind] = DistilledCascade(plan, prepare, full, cheap)
    if not built:
        raise CalibrationError(f"No cheap model qualified: {'; '.join(notes)}.")
    kinds_built = list(built)
    rows = max(len(tune), 1)
    if len(kinds_built) > 1:
        # expected seconds per row of each kind: its scores on every row plus the full ensemble on
        # the rows it leaves (the tuning rows' fraction); less noisy than timing each cascade whole
        # on a loaded machine, since the full ensemble's share is measured once for all kinds
        scoring = interleaved_seconds(
            [lambda: full(X_tune)] + [lambda c=built[k]: c._cheap(data) for k in kinds_built], repeats
        )
        expected = [
            scoring[i + 1] + (1.0 - built[k].plan.exit_fraction) * scoring[0]
            for i, k in enumerate(kinds_built)
        ]
        best = int(np.argmin(expected))
        expected_note = ", ".join(f"{k} {e / rows * 1e6:.2f}" for k, e in zip(kinds_built, expected))
    else:
        best, expected_note = 0, ""
    cascade = built[kinds_built[best]]
    measured = interleaved_seconds([lambda: full(X_tune), lambda: cascade.run(X_tune)], repeats)
    output, answered = cascade.run(X_holdout)
    agrees = np.asarray(output) == np.asarray(getattr(model, method)(X_holdout))
    lower = float(clopper_pearson_lower(int(agrees.sum()), len(agrees), confidence))
    if lower < accuracy_target:
        raise CalibrationError(
            f"cheap model first ({cascade.plan.kind}) missed its holdout proof: agreement "
            f"{agrees.mean():.4f}, lower bound {lower:.4f} under {accuracy_target}"
        )
    reason = (
        f"Cheap models compared by expected cost on the tune rows (us/row): {expected_note}."
        if expected_note
        else ""
    )
    if notes:
        reason = f"{reason} Not built: {'; '.join(notes)}.".strip()
    proven = replace(
        cascade.plan,
        exit_fraction=float(answered.mean()) if len(answered) else 0.0,
        agreement=float(agrees.mean()) if len(agrees) else 1.0,
        lower_bound=lower,
        seconds_per_row=measured[1] / rows,
        full_seconds_per_row=measured[0] / rows,
        reason=reason,
    )
    return DistilledCascade(proven, prepare, full, cascade._cheap)
