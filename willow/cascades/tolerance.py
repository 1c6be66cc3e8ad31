"""Cascades for outputs that are numbers: agreement within a tolerance of the original.

A cascade of a pipeline that returns labels agrees with the original on a row when the labels are
equal. A pipeline that returns numbers (a regressor's predictions, ``predict_proba``'s
probabilities, scores) can only be cascaded with ``tolerance=``: a row agrees when what the
cascade returns is *within tolerance* of what the original returns,

* ``tolerance=t`` (a float > 0): ``|approx - original| <= t`` in every column of the row (two NaNs
  agree, a NaN and a number do not);
* ``tolerance=f`` (a callable): ``f(original, approx)`` returns one bool per row (``original`` and
  ``approx`` are the returned values as arrays, rows first).

The proof is unchanged: the threshold is tuned on the tune split so the Clopper-Pearson lower bound
of the within-tolerance agreement reaches ``accuracy_target``, and the plan is served only when the
bound measured on the holdout split reaches it too (:mod:`willow.cascades.calibration`).

Label outputs (a classifier's ``predict``, thresholded decisions) are refused with
``tolerance=``: a label is right or wrong, and silently ignoring the option would let a user
believe a tolerance applied.

**The regression approximate model and its confidence.** The approximate model is a clone of the
model (or of ``approximate_model=``) fitted on the cheap groups, on ``y`` when given, else on the
full model's outputs (distillation). Its confidence in a row comes from a second clone, the
*error model*, fitted on the same cheap features to predict ``|approx - full|``. The error model
learns from *out-of-fold* errors on the train split (``ERROR_FOLDS``-fold cross-fitting): the
approximate model's errors on its own training rows are optimistic (a tree ensemble nearly
memorises them), so they would teach the error model that every row is easy. Confidence is
``1 / (1 + predicted_error / scale)`` (``scale``: the tolerance, or for a callable tolerance the
median out-of-fold error), so 1 means "no error expected" and 0.5 "an error of one tolerance
expected". Why this signal: it is what the agreement depends on (the size of the error, not a
class margin), it costs one more cheap-model prediction per row (compiled like the approximate
model), and it needs no distributional assumption. Its quality only decides how many rows the
cascade can answer; the guarantee comes from the tune/holdout proof, which does not trust it.

For ``predict_proba`` and ``decision_function`` outputs the approximate model is the classifier
cascades already use (:mod:`willow.cascades.approximate`), and its confidence is its largest class
probability (or margin): a confident row is one whose probabilities are far from the decision
boundary, where a cheaper model's probabilities tend to be close to the full model's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import clone

from willow.cascades.approximate import fit_approximate_model, verified_kernel
from willow.cascades.outputs import OutputSpec, output_rows
from willow.errors import WillowError

__all__ = [
    "ERROR_FOLDS",
    "RegressionApproximateModel",
    "ToleranceError",
    "ToleranceSpec",
    "check_tolerance",
    "describe_tolerance",
    "fit_numeric_model",
    "numeric_spec",
    "with_tolerance",
]

ERROR_FOLDS = 3  # cross-fitting folds for the error model's training errors


class ToleranceError(WillowError, ValueError):
    """``tolerance=`` is invalid, does not apply to this pipeline's output, or (a callable)
    returned something other than one bool per row."""


def check_tolerance(value: Any, query: str = "predict") -> float | Callable | None:
    """Validate ``tolerance=`` (at decoration): ``None``, a finite float > 0, or a callable; only
    for ``query="predict"`` (a top-K query is judged on precision@K, not per-row agreement)."""
    if value is not None and query != "predict":
        raise ValueError(
            f'tolerance= applies to query="predict" cascades, but this pipeline has query={query!r}, '
            "whose guarantee is precision@K (precision_target=). Remove tolerance=."
        )
    if value is None or callable(value):
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(
            "tolerance must be a number > 0 (the largest absolute difference from the original that "
            "counts as agreement) or a callable (original, approx) -> one bool per row, got "
            f"{type(value).__name__} {value!r}."
        )
    number = float(value)
    if not (number > 0.0 and math.isfinite(number)):
        raise ValueError(
            f"tolerance must be a finite number > 0, got {value!r}. For exact agreement leave "
            "tolerance=None (numeric outputs are then served by the exact compiled pipeline)."
        )
    return number


def describe_tolerance(tolerance: float | Callable) -> str:
    """What agreement means under ``tolerance``, in words (for explain())."""
    if callable(tolerance):
        name = getattr(tolerance, "__qualname__", type(tolerance).__name__)
        return f"tolerance {name}(original, approx) is True for the row"
    return f"|approx - original| <= {tolerance:g} in every column of the row (absolute tolerance)"


@dataclass(frozen=True, eq=False)
class ToleranceSpec(OutputSpec):
    """An :class:`OutputSpec` whose rows agree when within ``tolerance`` of the original."""

    tolerance: Any = None

    def agreement(self, output: Any, reference: Any) -> np.ndarray:
        """Boolean per row: is the function output ``output`` within tolerance of ``reference``
        (the original's)?"""
        approx, original = output_rows(output), output_rows(reference)
        if len(approx) != len(original) or approx.shape != original.shape:
            return np.zeros(max(len(approx), len(original)), dtype=bool)
        if callable(self.tolerance):
            return _called(self.tolerance, original, approx)
        a = np.asarray(approx, dtype=np.float64).reshape(len(approx), -1)
        b = np.asarray(original, dtype=np.float64).reshape(len(original), -1)
        with np.errstate(invalid="ignore"):
            close = (np.abs(a - b) <= self.tolerance) | (np.isnan(a) & np.isnan(b))
        return close.all(axis=1)

    def output_change(self, output: Any, baseline: Any) -> float:
        """How far ``output`` moved from ``baseline`` (raw model outputs): the mean over rows of
        the largest absolute change in a column (what permutation importance ranks groups by)."""
        a = np.asarray(output, dtype=np.float64)
        b = np.asarray(baseline, dtype=np.float64)
        if len(a) == 0:
            return 0.0
        change = np.abs(a - b).reshape(len(a), -1)
        return float(np.nanmean(np.nanmax(np.where(np.isnan(change), 0.0, change), axis=1)))

    def describe(self) -> str:
        return "the returned numbers, within tolerance of the original's (see Tolerance)"


def _called(tolerance: Callable, original: np.ndarray, approx: np.ndarray) -> np.ndarray:
    result = np.asarray(tolerance(original, approx))
    n = len(original)
    if result.shape != (n,) or result.dtype.kind != "b":
        name = getattr(tolerance, "__qualname__", repr(tolerance))
        raise ToleranceError(
            f"The tolerance callable {name}(original, approx) returned an array of shape "
            f"{result.shape} and dtype {result.dtype} for {n} rows; it must return one bool per row "
            f"(shape ({n},), dtype bool), True where approx is close enough to original, e.g. "
            "np.abs(approx - original).max(axis=1) <= 0.05 for probabilities."
        )
    return result


def numeric_spec(output: OutputSpec, tolerance: float | Callable, returned: str) -> ToleranceSpec:
    """``output`` judged within ``tolerance``; refuses outputs that are labels.

    ``returned`` names the line the function returns from (for the message).
    """
    labels = output.decision == "post" or (
        output.decision == "model" and output.method == "predict" and output.classes is not None
    )
    if labels:
        what = "labels" if output.decision == "model" else "decisions that are not numbers"
        raise ToleranceError(
            f"tolerance= applies to pipelines that return numbers (regression values, "
            f"probabilities, scores), but this one returns {what} ({returned}), which agree only "
            "when equal. Remove tolerance= (label cascades are judged on equal labels)."
        )
    fields = {f: getattr(output, f) for f in OutputSpec.__dataclass_fields__}
    fields["decision"] = "numbers"
    return ToleranceSpec(**fields, tolerance=tolerance)


def fit_numeric_model(
    template: Any, X: Any, targets: np.ndarray, output: OutputSpec, random_state: Any = 0
) -> Any:
    """The approximate model of a numeric cascade: a :class:`RegressionApproximateModel` for a
    regressor's output, the classifier cascades' :class:`ApproximateModel` otherwise."""
    if output.classes is None:
        return RegressionApproximateModel.fit(template, X, targets, output, random_state)
    return fit_approximate_model(template, X, targets, output)


class RegressionApproximateModel:
    """A cheap regressor (``estimator_``) and an error model (``error_model_``) predicting its
    absolute error from the same features; confidence ``1 / (1 + predicted error / scale_)``."""

    def __init__(self, estimator: Any, error_model: Any, scale: float, output: OutputSpec) -> None:
        self.estimator_ = estimator
        self.error_model_ = error_model
        self.scale_ = float(scale)
        self.output_ = output
        self._kernels: dict[str, Any] = {}

    @classmethod
    def fit(
        cls, template: Any, X: Any, targets: np.ndarray, output: OutputSpec, random_state: Any = 0
    ) -> RegressionApproximateModel:
        """Fit the approximate model on ``X``, ``targets`` and the error model on its
        out-of-fold absolute errors (see the module doc)."""
        from sklearn.model_selection import KFold

        targets = np.asarray(targets, dtype=np.float64)
        n = len(targets)
        errors = np.zeros(n)
        folds = min(ERROR_FOLDS, n)
        if folds < 2:
            raise ValueError(f"the train split has {n} rows; the error model needs at least 2.")
        seed = random_state if isinstance(random_state, (int, np.integer)) else 0
        for fit_rows, held_rows in KFold(folds, shuffle=True, random_state=seed).split(np.arange(n)):
            fold_model = clone(template).fit(_rows(X, fit_rows), targets[fit_rows])
            predicted = np.asarray(fold_model.predict(_rows(X, held_rows)), dtype=np.float64)
            errors[held_rows] = np.abs(predicted.reshape(-1) - targets[held_rows])
        estimator = clone(template).fit(X, targets)
        error_model = clone(template).fit(X, errors)
        tolerance = getattr(output, "tolerance", None)
        if isinstance(tolerance, float):
            scale = tolerance
        else:
            positive = errors[errors > 0]
            scale = float(np.median(positive)) if len(positive) else 1.0
        return cls(estimator, error_model, scale, output)

    @property
    def score_method(self) -> str:
        return "predict"

    @property
    def compiled(self) -> bool:
        return bool(self._kernels)

    @property
    def fused(self) -> bool:
        return False

    def compile(self, lower: Any, X: Any | None = None, budget: Any = None) -> str:
        """Serve both models' ``predict`` with compiled kernels, each verified on ``X`` when
        given. Returns "" when both compiled, otherwise why one did not (it stays Python)."""
        from willow.compiler.compile_budget import budget_refusal

        reasons = []
        for name, estimator in (("approximate", self.estimator_), ("error", self.error_model_)):
            refusal = budget_refusal(estimator, budget)
            if refusal is None:
                refusal, kernel = verified_kernel(
                    lambda estimator=estimator: lower(estimator, "predict"), X, X, estimator, "predict"
                )
                if kernel is not None:
                    self._kernels[name] = kernel
            if refusal:
                reasons.append(f"{name} model: {refusal}")
        return "; ".join(reasons)

    def fuse(self, vectorizers: list[Any], texts: Any = None, X: Any = None) -> str:
        """Regression cascades are not fused with text vectorizers (the features are built, then
        both models run on them)."""
        return "regression cascades are not fused"

    @property
    def kernel_source(self) -> str | None:
        kernel = self._kernels.get("approximate")
        return None if kernel is None else kernel.source

    def predict_with_confidence(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """Approximate output rows (in the original's dtype) and a confidence per row."""
        predict = self._kernels.get("approximate") or self.estimator_.predict
        error = self._kernels.get("error") or self.error_model_.predict
        rows = np.asarray(predict(X)).astype(self.output_.dtype, copy=False)
        expected = np.maximum(np.asarray(error(X), dtype=np.float64).reshape(len(rows)), 0.0)
        confidence = 1.0 / (1.0 + expected / self.scale_)
        return rows, np.where(np.isnan(confidence), 0.0, confidence)

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k != "_kernels"}
        state["compiled_kernels"] = sorted(self._kernels)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        compiled = state.pop("compiled_kernels", [])
        self.__dict__.update(state)
        self._kernels = {}
        if compiled:
            from willow.compiler.lowering import lower

            self.compile(lower)

    def __repr__(self) -> str:
        return f"RegressionApproximateModel({self.estimator_!r}, {self.error_model_!r})"


def _rows(X: Any, rows: np.ndarray) -> Any:
    from willow.rows import take_rows

    return take_rows(X, rows)


def with_tolerance(output: OutputSpec, tolerance: Any, returned: str) -> OutputSpec:
    """``output`` as calibration judges it: unchanged without a tolerance."""
    if tolerance is None:
        return output
    return numeric_spec(output, tolerance, returned)
