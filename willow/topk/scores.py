"""What a top-K query ranks by: the score of each row, and the default approximate model.

The score is computed from the pipeline's own model and feature matrix, whatever the pipeline
returns: for a model with ``predict_proba`` (a classifier) it is the probability of the positive
class (``classes_[1]`` of a binary model) or of the class named by ``score=``, or ``score(proba)``
for a callable; for a regressor it is ``predict(X)`` (or ``score(predict(X))``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import clone, is_regressor

from willow.errors import UnsupportedPipelineError

__all__ = ["ScoreSpec", "default_approximate_model", "training_target"]


@dataclass(frozen=True, eq=False)
class ScoreSpec:
    """How to turn ``model`` and a feature matrix into one float score per row."""

    method: str  # "predict_proba" or "predict"
    column: int | None
    function: Callable[[Any], Any] | None
    description: str

    @property
    def is_probability(self) -> bool:
        """Scores are probabilities of one class (so a logit is a better regression target)."""
        return self.method == "predict_proba" and self.function is None

    @classmethod
    def for_model(cls, model: Any, score: Any = None) -> ScoreSpec:
        """Decide how to score rows with ``model`` given the user's ``score=`` argument.

        Raises ``ValueError`` for a multiclass classifier without ``score=``, or a class label the
        model does not have; :class:`~willow.UnsupportedPipelineError` for a model that neither has
        ``predict_proba`` nor is a regressor.
        """
        name = type(model).__name__
        classes = getattr(model, "classes_", None)
        if hasattr(model, "predict_proba") and classes is not None:
            classes = list(np.asarray(classes).tolist())
            if callable(score):
                label = getattr(score, "__name__", repr(score))
                return cls("predict_proba", None, score, f"{label}({name}.predict_proba(X))")
            if score is None:
                if len(classes) != 2:
                    raise ValueError(
                        f"{name} has {len(classes)} classes {classes[:10]}, so which probability to "
                        "rank by is ambiguous: pass score=<class label> (rank by that class's "
                        "probability) or score=<callable on the predict_proba output>."
                    )
                return cls("predict_proba", 1, None, f"P({classes[1]!r}) from {name}.predict_proba(X)")
            if score not in classes:
                raise ValueError(
                    f"score={score!r} is not one of {name}'s classes {classes[:20]}; pass one of them "
                    "or a callable on the predict_proba output."
                )
            return cls(
                "predict_proba", classes.index(score), None, f"P({score!r}) from {name}.predict_proba(X)"
            )
        if is_regressor(model) or (hasattr(model, "predict") and classes is None):
            if score is not None and not callable(score):
                raise ValueError(
                    f"score={score!r} names a class, but {name} is a regressor (no predict_proba); "
                    "leave score=None to rank by its prediction, or pass a callable on it."
                )
            if callable(score):
                label = getattr(score, "__name__", repr(score))
                return cls("predict", None, score, f"{label}({name}.predict(X))")
            return cls("predict", None, None, f"{name}.predict(X)")
        raise UnsupportedPipelineError(
            f"Top-K queries rank rows by a score, but {name} has neither predict_proba() with "
            "classes_ (a classifier) nor is it a regressor. Use a probabilistic classifier or a "
            "regressor."
        )

    def __call__(self, model: Any, X: Any) -> np.ndarray:
        """One float64 score per row of ``X``."""
        return self.of_output(getattr(model, self.method)(X))

    def of_output(self, output: Any) -> np.ndarray:
        """One float64 score per row of ``output``, what ``model.<method>(X)`` returned (or a
        compiled kernel of it)."""
        if self.function is not None:
            scores = np.asarray(self.function(output), dtype=np.float64)
        elif self.column is not None:
            scores = np.asarray(output, dtype=np.float64)[:, self.column]
        else:
            scores = np.asarray(output, dtype=np.float64)
        if scores.ndim != 1:
            raise ValueError(
                f"The score must be one number per row, got an array of shape {scores.shape} from "
                f"{self.description}. Pass score=<callable> returning a 1-D array."
            )
        return scores


def training_target(spec: ScoreSpec, scores: np.ndarray) -> np.ndarray:
    """What the approximate regressor learns: the scores, as logits when they are probabilities.

    The logit is a monotone transform, so rankings are unchanged, but it spreads out the
    saturated probabilities near 0 and 1 where the top of the ranking lives.
    """
    if not spec.is_probability:
        return np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    p = np.clip(scores, 1e-9, 1 - 1e-9)
    return np.log(p) - np.log1p(-p)


def default_approximate_model(model: Any, features: Any) -> Any:
    """The approximate regressor used when ``approximate_model=`` is not given.

    ``clone(model)`` for a regressor; ``Ridge`` for a linear model or sparse features (text);
    otherwise a small ``lightgbm.LGBMRegressor`` (tabular).
    """
    if is_regressor(model):
        return clone(model)
    if sp.issparse(features) or hasattr(model, "coef_"):
        from sklearn.linear_model import Ridge

        return Ridge(alpha=1.0)
    from lightgbm import LGBMRegressor

    return LGBMRegressor(n_estimators=100, num_leaves=15, learning_rate=0.1, verbose=-1, random_state=0)
