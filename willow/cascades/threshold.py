"""Tune the cascade's confidence threshold to the accuracy target.

Rows whose approximate confidence is at least the threshold are answered by the approximate
model; all others take the full pipeline, which is exact. So the cascade disagrees with the
original only on confident rows where the approximate model is wrong. The tuner picks the lowest
threshold (most rows answered cheaply) whose agreement on the tune split still has a
Clopper-Pearson lower bound at or above the target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from willow.cascades.bounds import clopper_pearson_lower

__all__ = ["ThresholdChoice", "tune_threshold"]


@dataclass(frozen=True)
class ThresholdChoice:
    """The tuned threshold and what it achieved on the rows it was tuned on."""

    threshold: float
    confident_fraction: float
    agreement: float
    lower_bound: float


def tune_threshold(
    confidence: np.ndarray, approximate_agrees: np.ndarray, accuracy_target: float, level: float
) -> ThresholdChoice:
    """Lowest threshold whose cascade agreement bound reaches ``accuracy_target``.

    ``confidence`` holds the approximate model's confidence per row and ``approximate_agrees``
    whether its prediction equals the full pipeline's. Returns ``threshold=inf`` (no row answered
    by the approximate model) when no threshold meets the target.
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
