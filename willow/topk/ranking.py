"""Deterministic rankings and the bootstrap that tunes the candidate ratio.

Every ranking in willow's top-K path orders rows by ``(-score, row position)``: higher scores
first, ties broken by the lowest position, NaN last (with ``-inf``). The original pipeline's
ranking and the optimized one use the same rule, so whenever the candidate set contains the
original's top K the optimized answer is identical to it, ties included.

:func:`required_ratios` measures, on bootstrap query sets drawn from calibration rows, how many
candidates (as a multiple of K) the approximate ranking needs so that the full model's exact top
K among them overlaps the true top K in at least ``precision_target * K`` rows.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "check_k",
    "ranking_key",
    "top_positions",
    "precision_at_k",
    "bootstrap_weights",
    "required_ratios",
    "bootstrap_precision",
]


def check_k(k: Any) -> int:
    """Validate a query's ``k``: a positive integer (``bool`` is not one). Returns it as ``int``."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral):
        raise TypeError(
            f"k must be a positive integer (the number of rows to return), got "
            f"{type(k).__name__} {k!r}. Pass e.g. k=100."
        )
    if k <= 0:
        raise ValueError(f"k must be a positive integer (the number of rows to return), got k={k!r}.")
    return int(k)


def ranking_key(scores: Any, xp: Any = np) -> Any:
    """Ascending sort key of ``scores``: ``-score`` as float64, NaN mapped to ``+inf`` (last).
    ``xp`` is the array module the key is built in (NumPy, or CuPy for :mod:`willow.gpu.selection`)."""
    values = xp.asarray(scores, dtype=xp.float64).reshape(-1)
    key = -values
    key[xp.isnan(key)] = xp.inf
    return key


def top_positions(scores: Any, m: int, xp: Any = np) -> Any:
    """Positions of the ``m`` highest ``scores``, best first, ties by lowest position.

    Equivalent to ``np.argsort(ranking_key(scores), kind="stable")[:m]`` but linear-time in the
    number of rows (a partition, then a sort of the ``m`` chosen rows only). ``xp`` is the array
    module to compute in (NumPy, or CuPy for :mod:`willow.gpu.selection`); the positions are
    arrays of that module. Ties are broken by an explicit sort on ``(key, position)``, so the
    result does not depend on whether the module's sort is stable.
    """
    key = ranking_key(scores, xp)
    n = key.shape[0]
    if m >= n:
        if xp is np:
            return np.argsort(key, kind="stable")
        return xp.lexsort(xp.stack([xp.arange(n), key]))
    if m <= 0:
        return xp.empty(0, dtype=np.intp)
    kth = xp.partition(key, m - 1)[m - 1]
    better = xp.flatnonzero(key < kth)
    tied = xp.flatnonzero(key == kth)[: m - better.shape[0]]
    chosen = xp.concatenate([better, tied])
    return chosen[xp.lexsort(xp.stack([chosen, key[chosen]]))]


def precision_at_k(found: Sequence[int] | np.ndarray, reference: Sequence[int] | np.ndarray, k: int) -> float:
    """Overlap of two top-K index sets divided by ``k`` (1.0 when ``k`` is 0)."""
    if k <= 0:
        return 1.0
    return len(set(np.asarray(found).tolist()) & set(np.asarray(reference).tolist())) / k


def needed_overlap(precision_target: float, k: int) -> int:
    """Fewest true top-K rows that give precision@K >= ``precision_target``."""
    return max(1, math.ceil(precision_target * k - 1e-9))


def bootstrap_weights(
    n: int, query_size: int, repeats: int, rng: np.random.Generator, double: bool = True
) -> np.ndarray:
    """How often each of ``n`` calibration rows appears in each of ``repeats`` bootstrap queries.

    With ``double=False``, each query draws ``query_size`` rows with replacement (the plain
    bootstrap: an estimate of how queries vary, used to check a plan on the holdout split).
    With ``double=True`` (used for tuning), a double bootstrap: each query first resamples the ``n`` calibration rows with replacement
    (standing in for another sample of the population, since the calibration rows are one sample
    too), then draws ``query_size`` rows with replacement from that resample. The spread of
    precision@K across queries therefore covers both a query's own sampling and the uncertainty
    of tuning on a finite calibration sample; a plain bootstrap tuned on one split was seen to
    miss the target on another. Copies of a row tie in every ranking and are counted exactly by
    the functions below. Shape ``(repeats, n)``, integer counts summing to ``query_size``.
    """
    if not double:
        return rng.multinomial(query_size, np.full(n, 1.0 / n), size=repeats).astype(np.int64)
    population = rng.multinomial(n, np.full(n, 1.0 / n), size=repeats) / n
    return np.stack([rng.multinomial(query_size, p) for p in population]).astype(np.int64)


def _true_counts(weights: np.ndarray, full_order: np.ndarray, k: int) -> np.ndarray:
    """Copies of each row inside each query's true top ``k`` (rows in ``full_order`` order)."""
    w = weights[:, full_order]
    before = np.cumsum(w, axis=1) - w
    return np.clip(k - before, 0, w)


def required_ratios(
    full_scores: np.ndarray,
    approx_scores: np.ndarray,
    weights: np.ndarray,
    fractions: Sequence[float],
    precision_target: float,
) -> np.ndarray:
    """Smallest candidate ratio ``c = m / K`` each bootstrap query needs, per K/N fraction.

    For every query (a row of ``weights``) and fraction ``f`` (``K = max(1, round(f * N))``) it
    finds the fewest candidates ``m``, taken in the approximate ranking's order, that contain at
    least ``ceil(precision_target * K)`` of the query's true top-K rows. Returns an array of shape
    ``(len(fractions), repeats)``.
    """
    n = len(full_scores)
    query_size = int(weights[0].sum())
    full_order = np.argsort(ranking_key(full_scores), kind="stable")
    approx_order = np.argsort(ranking_key(approx_scores), kind="stable")
    w_approx = weights[:, approx_order]
    starts = np.cumsum(w_approx, axis=1) - w_approx
    result = np.empty((len(fractions), len(weights)))
    for i, fraction in enumerate(fractions):
        k = max(1, int(round(fraction * query_size)))
        need = needed_overlap(precision_target, k)
        inside = np.empty_like(weights)
        inside[:, full_order] = _true_counts(weights, full_order, k)
        useful = inside[:, approx_order]
        reached = np.cumsum(useful, axis=1)
        j = np.argmax(reached >= need, axis=1)
        rows = np.arange(len(weights))
        m = starts[rows, j] + need - (reached[rows, j] - useful[rows, j])
        result[i] = m / k
    assert n == weights.shape[1]
    return result


def bootstrap_precision(
    full_scores: np.ndarray,
    approx_scores: np.ndarray,
    weights: np.ndarray,
    fractions: Sequence[float],
    ratios: Sequence[float],
) -> np.ndarray:
    """precision@K of each bootstrap query when ``ceil(ratio * K)`` candidates are kept.

    Shape ``(len(fractions), repeats)``.
    """
    query_size = int(weights[0].sum())
    full_order = np.argsort(ranking_key(full_scores), kind="stable")
    approx_order = np.argsort(ranking_key(approx_scores), kind="stable")
    w_approx = weights[:, approx_order]
    starts = np.cumsum(w_approx, axis=1) - w_approx
    result = np.empty((len(fractions), len(weights)))
    for i, (fraction, ratio) in enumerate(zip(fractions, ratios)):
        k = max(1, int(round(fraction * query_size)))
        m = min(query_size, max(k, math.ceil(ratio * k - 1e-9)))
        inside = np.empty_like(weights)
        inside[:, full_order] = _true_counts(weights, full_order, k)
        taken = np.clip(m - starts, 0, w_approx)
        overlap = np.minimum(inside[:, approx_order], taken).sum(axis=1)
        result[i] = overlap / k
    return result
