"""Bounds, threshold tuning and subset selection: the math behind a plan."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

from willow.cascades.bounds import clopper_pearson_lower, min_rows_for_target
from willow.cascades.selection import candidate_subsets, knapsack
from willow.cascades.splits import split_rows
from willow.cascades.threshold import allowed_disagreements, tune_threshold
from willow.errors import CalibrationError


@pytest.mark.parametrize(
    ("k", "n", "level"), [(99, 100, 0.95), (1, 10, 0.9), (500, 500, 0.95), (0, 7, 0.95), (37, 50, 0.99)]
)
def test_clopper_pearson_matches_scipy(k, n, level):
    expected = binomtest(k, n).proportion_ci(confidence_level=1 - 2 * (1 - level), method="exact").low
    assert float(clopper_pearson_lower(k, n, level)) == pytest.approx(expected, abs=1e-9)


def test_min_rows_for_target():
    n = min_rows_for_target(0.99, 0.95)
    assert n == 299
    assert clopper_pearson_lower(n, n, 0.95) >= 0.99 > clopper_pearson_lower(n - 1, n - 1, 0.95)
    assert min_rows_for_target(1.0, 0.95) is None


def test_split_is_seeded_disjoint_and_explains_small_data():
    a = split_rows(1000, (0.5, 0.25, 0.25), 0.9, 0.9, random_state=3)
    b = split_rows(1000, (0.5, 0.25, 0.25), 0.9, 0.9, random_state=3)
    assert all(
        np.array_equal(x, y) for x, y in zip((a.train, a.tune, a.holdout), (b.train, b.tune, b.holdout))
    )
    together = np.concatenate([a.train, a.tune, a.holdout])
    assert sorted(together.tolist()) == list(range(1000))
    with pytest.raises(CalibrationError, match=r"at least \d+ rows"):
        split_rows(500, (0.5, 0.25, 0.25), 0.99, 0.95, random_state=0)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 400),
    error_rate=st.floats(0.0, 0.3),
    target=st.sampled_from([0.8, 0.9, 0.95, 0.99]),
    seed=st.integers(0, 10_000),
)
def test_tuned_threshold_meets_the_bound_on_the_rows_it_was_tuned_on(n, error_rate, target, seed):
    rng = np.random.default_rng(seed)
    confidence = np.round(rng.random(n), 2)  # many ties
    agrees = rng.random(n) > error_rate * (1 - confidence)
    choice = tune_threshold(confidence, agrees, target, 0.9)
    if np.isfinite(choice.threshold):
        confident = confidence >= choice.threshold
        cascade_agrees = np.where(confident, agrees, True)
        assert choice.confident_fraction == pytest.approx(confident.mean())
        assert clopper_pearson_lower(cascade_agrees.sum(), n, 0.9) >= target
        assert choice.lower_bound >= target
        # nothing lower is feasible: the next distinct confidence value breaks the bound
        lower_values = np.unique(confidence[confidence < choice.threshold])
        if lower_values.size:
            wider = confidence >= lower_values[-1]
            assert clopper_pearson_lower(np.where(wider, agrees, True).sum(), n, 0.9) < target
    else:
        assert choice.confident_fraction == 0.0


def test_holdout_pass_probability_makes_tuning_more_conservative():
    rng = np.random.default_rng(0)
    confidence = rng.random(2000)
    agrees = rng.random(2000) > 0.02 * (1 - confidence) ** 2
    plain = tune_threshold(confidence, agrees, 0.99, 0.95)
    careful = tune_threshold(confidence, agrees, 0.99, 0.95, holdout_rows=2000)
    assert careful.threshold >= plain.threshold
    assert allowed_disagreements(299, 0.99, 0.95) == 0
    assert allowed_disagreements(100, 0.99, 0.95) == -1


@settings(max_examples=60, deadline=None)
@given(
    items=st.lists(st.tuples(st.floats(0.01, 10), st.floats(0, 1)), min_size=1, max_size=8),
    fraction=st.floats(0.05, 1.0),
)
def test_knapsack_is_optimal_within_rounding(items, fraction):
    costs = [c for c, _ in items]
    values = [v for _, v in items]
    budget = fraction * sum(costs)
    chosen = knapsack(costs, values, budget, resolution=10_000)
    slack = budget / 10_000 * len(items)
    assert sum(costs[i] for i in chosen) <= budget + slack
    best = max(
        (
            sum(values[i] for i in s)
            for r in range(len(items) + 1)
            for s in itertools.combinations(range(len(items)), r)
            if sum(costs[i] for i in s) <= budget - slack
        ),
        default=0.0,
    )
    assert sum(values[i] for i in chosen) >= best - 1e-9


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 9),
    seed=st.integers(0, 1000),
    exhaustive=st.integers(0, 5),
)
def test_candidate_subsets_are_proper_unique_and_ordered(n, seed, exhaustive):
    rng = np.random.default_rng(seed)
    names = [f"g{i}" for i in range(n)]
    subsets = candidate_subsets(
        names, rng.random(n) + 0.01, rng.random(n), exhaustive_max_groups=exhaustive, max_candidates=20
    )
    assert subsets and len(subsets) == len(set(subsets)) <= 20
    for subset in subsets:
        assert 0 < len(subset) < n
        assert list(subset) == sorted(subset, key=names.index)
    if n <= exhaustive:
        assert len(subsets) == min(2**n - 2, 20)
