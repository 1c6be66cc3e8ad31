"""What the original pipeline returns, so the cascade can return exactly the same thing.

A :class:`OutputSpec` records the model method (``predict`` or ``predict_proba``), the output's
dtype and shape, and the full model's classes. It builds empty results for 0-row batches, turns
outputs into comparable labels, and measures agreement between two outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from willow.errors import UnsupportedPipelineError

__all__ = ["OutputSpec"]


@dataclass(frozen=True, eq=False)
class OutputSpec:
    """The shape of the original pipeline's output."""

    method: str
    dtype: np.dtype
    n_columns: int | None
    classes: np.ndarray | None

    @classmethod
    def from_output(cls, method: str, output: Any, model: Any) -> OutputSpec:
        """Describe ``output``, which ``model.<method>`` returned on calibration rows."""
        if not isinstance(output, np.ndarray):
            raise UnsupportedPipelineError(
                f"The model's {method}() returned a {type(output).__name__}; willow cascades "
                "models whose output is a numpy array (as scikit-learn and LightGBM return). "
                "Pass strict=False to willow.optimize to run this function unoptimized."
            )
        classes = getattr(model, "classes_", None)
        classes = None if classes is None else np.asarray(classes)
        if method == "predict":
            if output.ndim != 1:
                raise UnsupportedPipelineError(
                    f"The model's predict() returned an array of shape {output.shape}; willow "
                    "cascades classifiers whose predict() returns one label per row. Pass "
                    "strict=False to willow.optimize to run this function unoptimized."
                )
            return cls(method, output.dtype, None, classes)
        if output.ndim != 2 or classes is None or output.shape[1] != len(classes):
            raise UnsupportedPipelineError(
                f"The model's predict_proba() returned an array of shape {output.shape}; willow "
                "cascades classifiers with a `classes_` attribute whose predict_proba() returns "
                "one column per class. Pass strict=False to willow.optimize to run this function "
                "unoptimized."
            )
        return cls(method, output.dtype, output.shape[1], classes)

    def empty(self) -> np.ndarray:
        """The result of the original pipeline on a batch of zero rows."""
        shape = (0,) if self.n_columns is None else (0, self.n_columns)
        return np.empty(shape, dtype=self.dtype)

    def labels(self, output: np.ndarray) -> np.ndarray:
        """Per-row predictions to compare: labels as they are, probabilities as the top class."""
        if self.method == "predict":
            return np.asarray(output)
        assert self.classes is not None
        return self.classes[np.argmax(output, axis=1)]

    def agreement(self, output: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """Boolean per row: does ``output`` make the same prediction as ``reference``?"""
        return self.labels(output) == self.labels(reference)
