"""The cascade's approximate model: a cheap classifier on the selected feature groups.

By default it is ``sklearn.base.clone`` of the user's model, fitted on the selected groups only;
``approximate_model=`` replaces it. It is trained on labels when the user gives ``y`` and on the
full model's own predictions otherwise (distillation). Its *confidence* in a row is the largest
class probability (or, for models without ``predict_proba``, the decision-function margin); when
the function thresholds the output (``proba[:, c] > t``, ``margin > t``), it is the distance
from that threshold, ``|p_c - t|``, since that is what decides the returned value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import clone

from willow.cascades.outputs import OutputSpec

__all__ = ["ApproximateModel", "fit_approximate_model", "verified_kernel"]


class ApproximateModel:
    """A fitted approximate estimator plus the mapping of its classes onto the full model's.

    ``predict_with_confidence`` returns rows in the original pipeline's output format (labels in
    its dtype, or probabilities in the full model's class order) and a confidence per row.
    """

    def __init__(self, estimator: Any, output: OutputSpec) -> None:
        self.estimator_ = estimator
        self.output_ = output
        self.classes_ = np.asarray(estimator.classes_)
        self._has_proba = hasattr(estimator, "predict_proba")
        self._scores: Any = None  # a compiled predict_proba / decision_function, when there is one
        self._column_map: np.ndarray | None = None
        if output.method == "decision_function":
            if not hasattr(estimator, "decision_function"):
                raise ValueError(
                    "The pipeline returns decision_function(), but the approximate model "
                    f"{type(estimator).__name__} has none; pass an approximate_model= that has one."
                )
            if output.classes is not None and not np.array_equal(self.classes_, output.classes):
                raise ValueError(
                    f"The approximate model learned classes {self.classes_.tolist()}, not the full "
                    f"model's {output.classes.tolist()}, so its decision_function() columns differ."
                )
        if output.method == "predict_proba":
            assert output.classes is not None
            position = {c: i for i, c in enumerate(output.classes.tolist())}
            missing = [c for c in self.classes_.tolist() if c not in position]
            if missing:
                raise ValueError(
                    f"The approximate model predicts classes {missing} that the full model does "
                    f"not have (full model classes: {output.classes.tolist()})."
                )
            self._column_map = np.array([position[c] for c in self.classes_.tolist()], dtype=np.intp)
            if not self._has_proba:
                raise ValueError(
                    "The pipeline returns predict_proba(), but the approximate model "
                    f"{type(estimator).__name__} has no predict_proba(); pass an "
                    "approximate_model= that does."
                )

    @property
    def score_method(self) -> str:
        """The estimator method confidences come from."""
        if self.output_.method == "decision_function":
            return "decision_function"
        return "predict_proba" if self._has_proba else "decision_function"

    @property
    def compiled(self) -> bool:
        return self._scores is not None

    def compile(self, lower: Any, X: Any | None = None, budget: Any = None) -> str:
        """Use a compiled kernel for the estimator's scores; verified on ``X`` when given.

        Returns "" on success, otherwise why the estimator keeps running as Python.
        """
        from willow.compiler.compile_budget import budget_refusal

        refusal = budget_refusal(self.estimator_, budget)  # a CompileBudget; None: no limit
        if refusal is not None:
            return refusal
        method = self.score_method
        reason, operator = verified_kernel(
            lambda: lower(self.estimator_, method), X, X, self.estimator_, method
        )
        if operator is not None:
            self._scores = operator
        return reason

    @property
    def kernel_source(self) -> str | None:
        return None if self._scores is None else self._scores.source

    def fuse(self, vectorizers: list[Any], texts: Any = None, X: Any = None) -> str:
        """Score raw texts with one fused kernel (the selected vectorizers + this estimator).

        Verified against the estimator on ``X`` (the stacked features of ``texts``) when given.
        Returns "" on success, otherwise why the approximate model stays unfused.
        """
        from willow.compiler.lowering.fused import fuse_text_linear

        method = self.score_method
        build = lambda: fuse_text_linear(vectorizers, self.estimator_, method)  # noqa: E731
        reason, operator = verified_kernel(build, texts, X, self.estimator_, method)
        if operator is not None:
            self._fused = operator
        return reason

    @property
    def fused(self) -> bool:
        return getattr(self, "_fused", None) is not None

    def predict_with_confidence_text(self, texts: Any) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`predict_with_confidence`, from raw texts through the fused kernel."""
        return self._rows_and_confidence(np.asarray(self._fused(texts)))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_compiled_method"] = state.pop("_scores") is not None
        state["_scores"] = None
        state["_was_fused"] = state.pop("_fused", None) is not None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        compiled = state.pop("_compiled_method", False)
        was_fused = state.pop("_was_fused", False)
        self.__dict__.update(state)
        self._fused = None
        self.fuse_on_load = was_fused  # willow.load fuses again with the live vectorizers
        if compiled:
            from willow.compiler.lowering import lower

            self.compile(lower)

    def predict_with_confidence(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """Approximate output rows (in the original's format) and a confidence per row."""
        method = self._scores or getattr(self.estimator_, self.score_method)
        return self._rows_and_confidence(np.asarray(method(X)))

    def _rows_and_confidence(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows, confidence = self._default_rows_and_confidence(scores)
        threshold = getattr(self.output_, "margin_threshold", None)
        if threshold is not None:
            column = self.output_.margin_column
            values = np.asarray(rows if column is None else rows[:, column], dtype=np.float64)
            confidence = np.abs(values - threshold)
        return rows, confidence

    def _default_rows_and_confidence(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.output_.method == "decision_function":
            decision = scores.astype(self.output_.dtype, copy=False)
            if decision.ndim == 1:
                return decision, np.abs(decision)
            top2 = np.sort(decision, axis=1)[:, -2:]
            return decision, top2[:, 1] - top2[:, 0]
        if self._has_proba:
            proba = scores
            best = np.argmax(proba, axis=1)
            confidence = proba[np.arange(len(proba)), best]
            if self._column_map is not None:
                assert self.output_.n_columns is not None
                rows = np.zeros((len(proba), self.output_.n_columns), dtype=self.output_.dtype)
                rows[:, self._column_map] = proba
                return rows, confidence
            labels = self.classes_[best]
        else:
            decision = scores
            if decision.ndim == 1:
                labels = self.classes_[(decision > 0).astype(np.intp)]
                confidence = np.abs(decision)
            else:
                top2 = np.sort(decision, axis=1)[:, -2:]
                labels = self.classes_[np.argmax(decision, axis=1)]
                confidence = top2[:, 1] - top2[:, 0]
        return labels.astype(self.output_.dtype, copy=False), confidence

    def __repr__(self) -> str:
        return f"ApproximateModel({self.estimator_!r})"


def verified_kernel(build: Any, kernel_input: Any, X: Any, estimator: Any, method: str) -> tuple[str, Any]:
    """Build a kernel and, when ``kernel_input`` is given, check it against ``estimator.method(X)``.

    Returns ``("", kernel)`` or ``(reason, None)``: a lowering bug never breaks serving.
    """
    from willow.compiler.lowering.base import NotLowerable
    from willow.compiler.verify import reproduces

    try:
        operator = build()
        if kernel_input is not None and not reproduces(operator(kernel_input), getattr(estimator, method)(X)):
            return "the kernel did not reproduce the approximate model on calibration rows", None
    except NotLowerable as exc:
        return str(exc), None
    except Exception as exc:  # noqa: BLE001 - any kernel failure leaves the estimator in Python
        return f"compilation failed: {type(exc).__name__}: {exc}", None
    return "", operator


def fit_approximate_model(template: Any, X: Any, labels: np.ndarray, output: OutputSpec) -> ApproximateModel:
    """Clone ``template`` (never mutating the user's object), fit it on ``X``, ``labels``."""
    estimator = clone(template)
    estimator.fit(X, labels)
    return ApproximateModel(estimator, output)
