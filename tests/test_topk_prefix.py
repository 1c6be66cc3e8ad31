"""Top-K plans whose filter is a prefix of the model's own tree ensemble (willow.topk.prefix).

The reference everywhere is the original pipeline's score of every row, ranked by
``(-score, position)`` with a stable sort; the prefix scores are checked against LightGBM's own
partial predictions (``num_iteration=k``).
"""

from __future__ import annotations

import pickle
import threading
import warnings

import numpy as np
import pandas as pd
import pytest
from lightgbm import LGBMClassifier

import willow
from willow.errors import OptionError
from willow.topk.prefix import PrefixFilter
from willow.topk.ranking import precision_at_k
from willow.topk.scores import ScoreSpec

FAST = dict(cost_repeats=1, importance_repeats=1)
SETTINGS = dict(query="topk", k=10, precision_target=0.9, query_size=500, k_fractions=(0.02, 0.05, 0.1))
N_FEATURES = 8


def make_rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, N_FEATURES))


def reference(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-np.asarray(scores, dtype=float), kind="stable")[:k]


def rank_rows(model, X):
    return model.predict_proba(X)


def rank_groups(model, A, B):
    X = np.hstack([A * 1.0, B * 1.0])
    return model.predict_proba(X)


@pytest.fixture(scope="module")
def model():
    X = make_rows(1500, 0)
    noise = np.random.default_rng(1).normal(size=len(X))
    y = (X[:, 0] + X[:, 1] * X[:, 2] + 0.5 * np.sin(3 * X[:, 3]) + 0.5 * noise > 0).astype(int)
    return LGBMClassifier(n_estimators=60, num_leaves=8, verbose=-1, random_state=0).fit(X, y)


@pytest.fixture(scope="module")
def forced(model):
    pipeline = willow.optimize(approximate_model="prefix", **SETTINGS, **FAST)(rank_rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pipeline.calibrate(model, make_rows(4000, 2))
    return pipeline


def test_prefix_scores_are_the_truncated_models(model):
    X = make_rows(300, 3)
    spec = ScoreSpec.for_model(model)
    prefix = PrefixFilter(model, "predict_proba", 12, spec)
    partial = model.predict_proba(X, num_iteration=12, raw_score=True)
    # same ranking as LightGBM's own first 12 trees (a constant shift, then the sigmoid)
    shift = prefix.predict(X)
    logit = np.log(shift) - np.log1p(-shift)
    np.testing.assert_allclose(logit - partial, (logit - partial)[0], atol=1e-9)
    assert prefix.model_trees == 60
    again = pickle.loads(pickle.dumps(prefix))
    np.testing.assert_array_equal(again.predict(X), prefix.predict(X))


def test_forced_prefix_plan_is_chosen_verified_and_explained(forced):
    plan = forced.plan_
    assert plan.approximate and plan.verified
    assert 0 < plan.prefix_trees < plan.model_trees == 60 and plan.selected == ()
    assert plan.candidates and all(c.trees > 0 and c.groups == () for c in plan.candidates)
    assert all(r.holdout_pass_rate >= 0.9 for r in plan.ratios)
    text = forced.explain()
    assert f"first {plan.prefix_trees} of 60 trees on every feature (ensemble prefix)" in text
    assert "guarantee: precision@K >= 0.9" in text and "prefix" in plan.table()
    assert "_willow.approximate_scores(X)" in forced.generated_source_
    assert "_willow.take_rows(X, candidates, n_rows)" in forced.generated_source_


def test_precision_on_fresh_queries(forced, model):
    precisions = []
    for seed in range(10, 18):
        X = make_rows(500, seed)
        found, scores = forced.top_k(model, X, k=10, return_scores=True)
        full = model.predict_proba(X)[:, 1]
        precisions.append(precision_at_k(found, reference(full, 10), 10))
        np.testing.assert_allclose(scores, full[found], rtol=1e-12)  # the full model's scores
        assert np.all(np.diff(scores) <= 0)
    assert np.mean(precisions) >= 0.9


def test_exact_for_k_at_least_n_and_tiny_batches(forced, model):
    X = make_rows(40, 4)
    full = model.predict_proba(X)[:, 1]
    for k in (40, 41, 1000):
        found, scores = forced.top_k(model, X, k=k, return_scores=True)
        np.testing.assert_array_equal(found, reference(full, k))
        np.testing.assert_allclose(scores, full[found], rtol=1e-12)
    found, scores = forced.top_k(model, X[:1], k=3, return_scores=True)
    assert found.tolist() == [0] and scores == pytest.approx(full[:1])
    found, scores = forced.top_k(model, X[:0], k=3, return_scores=True)
    assert found.shape == (0,) and scores.shape == (0,)


def test_pandas_rows_answer_like_numpy(forced, model):
    X = make_rows(500, 5)
    frame = pd.DataFrame(X, columns=[f"Column_{i}" for i in range(N_FEATURES)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # LightGBM on feature names it was not fitted with
        np.testing.assert_array_equal(forced.top_k(model, frame, k=10), forced.top_k(model, X, k=10))


def test_save_load_and_pickle_answer_the_same(forced, model, tmp_path):
    X = make_rows(500, 6)
    expected = forced.top_k(model, X, k=10, return_scores=True)
    path = tmp_path / "prefix.willow"
    forced.save(path)
    loaded = willow.load(path, rank_rows)
    pickled = pickle.loads(pickle.dumps(forced))
    for other in (loaded, pickled):
        assert other.plan_ == forced.plan_
        found, scores = other.top_k(model, X, k=10, return_scores=True)
        np.testing.assert_array_equal(found, expected[0])
        np.testing.assert_array_equal(scores, expected[1])


def test_prefix_competes_with_feature_groups_by_expected_cost(model):
    pipeline = willow.optimize(**SETTINGS, **FAST)(rank_groups)
    X = make_rows(2000, 7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pipeline.calibrate(model, X[:, :4], X[:, 4:])
    plan = pipeline.plan_
    prefixes = [c for c in plan.candidates if c.trees]
    groups = [c for c in plan.candidates if c.groups]
    assert prefixes and groups  # both kinds priced on the tune split
    if plan.approximate:
        best = min(plan.candidates, key=lambda c: c.expected_seconds_per_row)
        assert plan.prefix_trees == best.trees
    forced = willow.optimize(approximate_model="prefix", **SETTINGS, **FAST)(rank_groups)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        forced.calibrate(model, X[:, :4], X[:, 4:])
    assert forced.plan_.prefix_trees > 0 and "X = _willow.take_rows(X, candidates" in forced.generated_source_
    Q = make_rows(500, 8)
    expected = reference(model.predict_proba(Q)[:, 1], 10)
    for served in (pipeline, forced):
        found = served.top_k(model, Q[:, :4], Q[:, 4:], k=10)
        assert precision_at_k(found, expected, 10) >= 0.7


def test_prefix_option_needs_a_topk_query():
    with pytest.raises(OptionError, match='approximate_model="prefix"'):
        willow.optimize(approximate_model="prefix")(rank_rows)


def uncertainty(proba):
    """Rank by closeness to the decision boundary: not monotone in the raw score."""
    return -np.abs(proba[:, 1] - 0.5)


def test_a_score_callable_ranks_the_prefix_by_the_same_conversion(model):
    pipeline = willow.optimize(approximate_model="prefix", score=uncertainty, **SETTINGS, **FAST)(rank_rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pipeline.calibrate(model, make_rows(4000, 9))
    plan = pipeline.plan_
    assert plan.approximate and plan.prefix_trees > 0 and plan.score.startswith("uncertainty(")
    X = make_rows(300, 10)
    prefix = pipeline._approximate.estimator_
    truncated = model.predict_proba(X, num_iteration=prefix.trees, raw_score=True)
    # the prefix's scores are uncertainty() of its probabilities: the same conversion
    p = 1 / (1 + np.exp(-(truncated + prefix._stages().center(prefix.trees)[0])))
    np.testing.assert_allclose(prefix.predict(X), -np.abs(p - 0.5), atol=1e-12)
    precisions = []
    for seed in range(20, 26):
        Q = make_rows(500, seed)
        found = pipeline.top_k(model, Q, k=10)
        precisions.append(precision_at_k(found, reference(uncertainty(model.predict_proba(Q)), 10), 10))
    assert np.mean(precisions) >= 0.9


def test_prefix_refused_for_a_model_that_is_not_a_tree_ensemble():
    from sklearn.linear_model import LogisticRegression

    X = make_rows(600, 11)
    linear = LogisticRegression().fit(X, (X[:, 0] > 0).astype(int))
    pipeline = willow.optimize(approximate_model="prefix", **SETTINGS, **FAST)(rank_rows)
    pipeline.calibrate(linear, X)
    assert not pipeline.plan_.approximate
    assert "approximate_model='prefix': no ensemble-prefix filter" in pipeline.plan_.reason
    found = pipeline.top_k(linear, X[:50], k=5)
    np.testing.assert_array_equal(found, reference(linear.predict_proba(X[:50])[:, 1], 5))


def test_a_model_deferred_past_the_budget_gets_its_prefix_in_the_background(monkeypatch, model):
    from willow import api
    from willow.compiler import background, compile_budget

    release = threading.Event()

    class Held(background.BackgroundCompile):
        def _run(self) -> None:  # starts once the first plan has been checked
            assert release.wait(120)
            super()._run()

    monkeypatch.setattr(compile_budget, "DEFAULT_BUDGET_SECONDS", 0.0)
    monkeypatch.setattr(api, "BackgroundCompile", Held)
    pipeline = willow.optimize(approximate_model="prefix", **SETTINGS, **FAST)(rank_rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pipeline.calibrate(model, make_rows(4000, 2))
        first = pipeline.plan_
        assert not first.approximate and "model's kernels are deferred past compile=True's" in first.reason
        release.set()
        assert pipeline.wait_compiled(timeout=300)
    assert pipeline.plan_.approximate and pipeline.plan_.prefix_trees > 0
    X = make_rows(500, 12)
    found = pipeline.top_k(model, X, k=10)
    assert precision_at_k(found, reference(model.predict_proba(X)[:, 1], 10), 10) >= 0.7
