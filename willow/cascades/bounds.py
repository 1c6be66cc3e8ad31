"""Exact (Clopper-Pearson) confidence bounds on an agreement rate.

willow never reports a cascade's accuracy as a bare point estimate: a plan is accepted only when
the one-sided lower confidence bound of its agreement with the original pipeline, measured on
held-out rows, reaches the user's ``accuracy_target``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import beta

__all__ = ["clopper_pearson_lower", "min_rows_for_target"]


def clopper_pearson_lower(successes: np.ndarray | int, n: np.ndarray | int, confidence: float) -> np.ndarray:
    """One-sided lower Clopper-Pearson bound at level ``confidence`` for ``successes`` out of ``n``.

    The true rate is at least the returned value with probability ``confidence``. Vectorised over
    ``successes``; zero successes (or ``n == 0``) give 0.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence!r}.")
    k = np.asarray(successes, dtype=float)
    total = np.broadcast_to(np.asarray(n, dtype=float), k.shape)
    safe_k = np.where(k > 0, k, 1.0)
    bound = beta.ppf(1.0 - confidence, safe_k, np.maximum(total - k + 1.0, 1.0))
    return np.where((k > 0) & (total > 0), bound, 0.0)


def min_rows_for_target(accuracy_target: float, confidence: float) -> int | None:
    """Fewest rows whose perfect agreement proves ``accuracy_target`` at ``confidence``.

    ``None`` when no finite sample can (``accuracy_target == 1``).
    """
    if accuracy_target >= 1.0:
        return None
    if accuracy_target <= 0.0:
        return 1
    # All n rows agree: the bound is (1 - confidence) ** (1 / n).
    n = math.ceil(math.log(1.0 - confidence) / math.log(accuracy_target))
    while clopper_pearson_lower(n, n, confidence) < accuracy_target:
        n += 1
    return max(n, 1)
