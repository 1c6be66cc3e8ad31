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

    def predict_with_confidence_on_device(self, X: Any) -> tuple[np.ndarray, Any]:
        """:meth:`predict_with_confidence` for serving a ``device="cuda"`` cascade: when the compiled
        scores run on the device, the probabilities or margins stay there (``output_device``),
        the confidence is computed there in the device's array module, and only the output rows
        come back to the host (the confidence is left on the device for
        :func:`willow.gpu.selection.rows_below`). When the kernel's output head ran on the host (a
        linear classifier's probabilities), or without a device kernel, this is
        :meth:`predict_with_confidence`: the scores are on the host already, and sending them
        back over to compute a confidence would cost a transfer to save none."""
        kernel = self._scores
        if getattr(kernel, "device", "cpu") != "cuda":
            return self.predict_with_confidence(X)
        from willow.gpu import runtime

        scores = kernel.output_device(X)
        if not runtime.is_device_array(scores):  # the head ran on the host: so does the rest
            return self._rows_and_confidence(np.asarray(scores))
        rows, confidence = self._rows_and_confidence(scores, runtime.array_module(), runtime.to_host)
        return rows, runtime.computed(confidence)

    def _rows_and_confidence(self, scores: Any, xp: Any = np, to_host: Any = None) -> tuple[np.ndarray, Any]:
        """Output rows (on the host) and confidence (in ``xp``, the module of ``scores``) from the
        estimator's scores; ``to_host(array, what)`` brings ``xp`` arrays back (``None``: NumPy)."""
        rows, labels, confidence = self._default_rows_and_confidence(scores, xp)
        if labels is not None:  # the classes are a host array: the label positions come back
            positions = labels if to_host is None else to_host(labels, "approximate label positions")
            rows = self.classes_[positions].astype(self.output_.dtype, copy=False)
        threshold = getattr(self.output_, "margin_threshold", None)
        if threshold is not None:
            on = np if labels is not None else xp
            column = self.output_.margin_column
            values = on.asarray(rows if column is None else rows[:, column], dtype=on.float64)
            confidence = on.abs(values - threshold)
        if labels is None and to_host is not None:
            rows = to_host(rows, "approximate rows")
        return rows, confidence

    def _default_rows_and_confidence(self, scores: Any, xp: Any) -> tuple[Any, Any, Any]:
        """``(rows, None, confidence)``, or ``(None, label positions, confidence)`` when the rows
        are labels (``classes_[positions]``), all in ``xp``."""
        if self.output_.method == "decision_function":
            decision = scores.astype(self.output_.dtype, copy=False)
            if decision.ndim == 1:
                return decision, None, xp.abs(decision)
            top2 = xp.sort(decision, axis=1)[:, -2:]
            return decision, None, top2[:, 1] - top2[:, 0]
        if self._has_proba:
            proba = scores
            best = xp.argmax(proba, axis=1)
            confidence = proba[xp.arange(proba.shape[0]), best]
            if self._column_map is not None:
                assert self.output_.n_columns is not None
                rows = xp.zeros((proba.shape[0], self.output_.n_columns), dtype=self.output_.dtype)
                rows[:, xp.asarray(self._column_map)] = proba
                return rows, None, confidence
            return None, best, confidence
        decision = scores
        if decision.ndim == 1:
            return None, (decision > 0).astype(xp.intp), xp.abs(decision)
        top2 = xp.sort(decision, axis=1)[:, -2:]
        return None, xp.argmax(decision, axis=1), top2[:, 1] - top2[:, 0]

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
