"""Unit tests of willow.topk.ranking: deterministic top-K, k validation, the ratio bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from willow.topk.ranking import (
    bootstrap_precision,
    bootstrap_weights,
    check_k,
    needed_overlap,
    precision_at_k,
    required_ratios,
    top_positions,
)


def reference_top(scores: np.ndarray, m: int) -> np.ndarray:
    key = -np.asarray(scores, dtype=float)
    key[np.isnan(key)] = np.inf
    return np.argsort(key, kind="stable")[:m]


@pytest.mark.parametrize("seed", range(6))
def test_top_positions_matches_stable_argsort_with_ties_and_nan(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 5, size=200).astype(float)  # many ties
    scores[rng.choice(200, 10, replace=False)] = np.nan
    scores[rng.choice(200, 3, replace=False)] = -np.inf
    for m in (0, 1, 3, 7, 50, 199, 200, 500):
        np.testing.assert_array_equal(top_positions(scores, m), reference_top(scores, m))


def test_top_positions_breaks_ties_by_lowest_position():
    assert top_positions(np.array([1.0, 2.0, 2.0, 1.0, 2.0]), 2).tolist() == [1, 2]
    assert top_positions(np.zeros(5), 3).tolist() == [0, 1, 2]
    assert top_positions(np.array([np.nan, 0.0]), 1).tolist() == [1]


@pytest.mark.parametrize("bad", [0, -3])
def test_check_k_rejects_non_positive(bad):
    with pytest.raises(ValueError, match="k must be a positive integer"):
        check_k(bad)


@pytest.mark.parametrize("bad", [True, False, 2.0, 1.5, "3", None, np.bool_(True)])
def test_check_k_rejects_non_integers(bad):
    with pytest.raises(TypeError, match="k must be a positive integer"):
        check_k(bad)


def test_check_k_accepts_numpy_integers():
    assert check_k(np.int64(5)) == 5 and isinstance(check_k(np.int32(2)), int)


def brute_force_ratio(full, approx, weights, k, target):
    """Expand the query (copies adjacent, in row order) and search m directly."""
    rows = np.repeat(np.arange(len(full)), weights)
    true_top = set(reference_top(full[rows], k).tolist())
    order = reference_top(approx[rows], len(rows))
    need = needed_overlap(target, k)
    for m in range(1, len(rows) + 1):
        if len(true_top & set(order[:m].tolist())) >= need:
            return m / k
    raise AssertionError


@pytest.mark.parametrize("seed", range(4))
def test_required_ratios_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 40
    full = rng.integers(0, 8, size=n).astype(float)  # ties on purpose
    approx = full + rng.normal(scale=2.0, size=n)
    weights = bootstrap_weights(n, 60, 5, rng)
    fractions = (0.02, 0.1, 0.3)
    got = required_ratios(full, approx, weights, fractions, 0.8)
    for i, f in enumerate(fractions):
        k = max(1, round(f * 60))
        for b in range(len(weights)):
            assert got[i, b] == pytest.approx(brute_force_ratio(full, approx, weights[b], k, 0.8))
    # At exactly the required ratio, every query reaches the target.
    for i, f in enumerate(fractions):
        for b in range(len(weights)):
            p = bootstrap_precision(full, approx, weights[b : b + 1], (f,), (got[i, b],))
            assert p[0, 0] >= 0.8 - 1e-12


def test_bootstrap_weights_sum_to_query_size():
    rng = np.random.default_rng(0)
    for double in (True, False):
        w = bootstrap_weights(30, 100, 7, rng, double=double)
        assert w.shape == (7, 30) and (w.sum(axis=1) == 100).all() and (w >= 0).all()


def test_precision_at_k():
    assert precision_at_k([1, 2, 3], [3, 2, 9], 3) == pytest.approx(2 / 3)
    assert precision_at_k([], [], 0) == 1.0
    assert needed_overlap(0.95, 100) == 95 and needed_overlap(0.95, 10) == 10
    assert needed_overlap(0.5, 1) == 1 and math.isclose(needed_overlap(0.9, 10), 9)
