"""Tune the cascade's confidence threshold to the accuracy target.

Rows whose approximate confidence is at least the threshold are answered by the approximate
model; all others take the full pipeline, which is exact. So the cascade disagrees with the
original only on confident rows where the approximate model is wrong. The tuner picks the lowest
threshold (most rows answered cheaply) that satisfies two conditions on the tune split:

* the Clopper-Pearson lower bound of its agreement reaches the target, and
* the plan is likely to pass the independent holdout proof: taking the disagreement rate as the
  upper ``rate_level`` Clopper-Pearson bound of what the tune split shows (choosing the threshold
  on the tune split makes its own error rate look optimistic, and zero observed errors are not
  zero risk), the probability that the holdout's lower bound also reaches the target is at least
  ``pass_probability``. Tuning right up to the bound would make the holdout proof a coin flip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binom

from willow.cascades.bounds import clopper_pearson_lower

__all__ = ["ThresholdChoice", "tune_threshold", "allowed_disagreements"]


@dataclass(frozen=True)
class ThresholdChoice:
    """The tuned threshold and what it achieved on the rows it was tuned on."""

    threshold: float
    confident_fraction: float
    agreement: float
    lower_bound: float


def allowed_disagreements(n: int, accuracy_target: float, level: float) -> int:
    """Most disagreements among ``n`` rows whose agreement bound still reaches the target (-1: none)."""
    if n <= 0:
        return -1
    agreements = np.arange(n + 1)
    ok = clopper_pearson_lower(agreements, n, level) >= accuracy_target
    if not ok.any():
        return -1
    return int(n - np.flatnonzero(ok)[0])


def tune_threshold(
    confidence: np.ndarray,
    approximate_agrees: np.ndarray,
    accuracy_target: float,
    level: float,
    holdout_rows: int | None = None,
    pass_probability: float = 0.8,
    rate_level: float = 0.9,
) -> ThresholdChoice:
    """Lowest threshold whose cascade agreement bound reaches ``accuracy_target``.

    ``confidence`` holds the approximate model's confidence per row and ``approximate_agrees``
    whether its prediction equals the full pipeline's. With ``holdout_rows``, the threshold must
    also be likely (``pass_probability``) to pass the holdout proof on that many rows. Returns
    ``threshold=inf`` (no row answered by the approximate model) when no threshold qualifies.
    """
    n = len(confidence)
    if n == 0:
        return ThresholdChoice(float("inf"), 0.0, 1.0, 0.0)
    order = np.argsort(-confidence, kind="stable")
    sorted_conf = confidence[order]
    disagreements = np.cumsum(~approximate_agrees[order])
    k = np.arange(1, n + 1)  # the k most confident rows go to the approximate model
    # Only cut between distinct confidence values: a threshold takes every tied row.
    valid = np.ones(n, dtype=bool)
    valid[:-1] = sorted_conf[:-1] > sorted_conf[1:]
    agreements = n - disagreements
    bounds = clopper_pearson_lower(agreements, n, level)
    feasible = valid & (bounds >= accuracy_target)
    if holdout_rows is not None:
        allowed = allowed_disagreements(holdout_rows, accuracy_target, level)
        rate = 1.0 - clopper_pearson_lower(n - disagreements, n, rate_level)
        passes = binom.cdf(allowed, holdout_rows, rate) if allowed >= 0 else np.zeros(n)
        feasible &= passes >= pass_probability
    if not feasible.any():
        none_bound = float(clopper_pearson_lower(n, n, level))
        return ThresholdChoice(float("inf"), 0.0, 1.0, none_bound)
    best = int(np.flatnonzero(feasible)[-1])
    return ThresholdChoice(
        threshold=float(sorted_conf[best]),
        confident_fraction=float(k[best] / n),
        agreement=float(agreements[best] / n),
        lower_bound=float(bounds[best]),
    )
