"""Top-K queries end to end: calibrated plans against the original pipeline's own ranking.

The reference everywhere is the original pipeline's score of every row, ranked by
``(-score, position)`` with a stable sort.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import data_file
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.tree import DecisionTreeRegressor

import willow
from willow.topk.ranking import precision_at_k

FAST = dict(cost_repeats=1, importance_repeats=1)


def slow_features(x):
    """A deliberately costly feature group (elementwise, so rows stay independent)."""
    for _ in range(40):
        x = np.tanh(x) * 1.01
    return x


def reference(scores, k):
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")[:k]
    return order, np.asarray(scores, dtype=float)[order]


# --------------------------------------------------------------------------- ndarray, classifier


@willow.optimize(query="topk", k=20, precision_target=0.9, query_size=500, **FAST)
def rank_arrays(model, cheap, costly):
    a = cheap * 1.0
    b = slow_features(costly)
    X = np.hstack([a, b])
    return model.predict_proba(X)


def make_arrays(n, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4)), rng.normal(size=(n, 30))


def array_scores(model, cheap, costly):
    return model.predict_proba(np.hstack([cheap, slow_features(costly)]))[:, 1]


@pytest.fixture(scope="module")
def arrays():
    cheap, costly = make_arrays(4000, 0)
    w = np.random.default_rng(1).normal(size=34)
    y = (
        np.hstack([cheap * 3, slow_features(costly) * 0.3]) @ w + np.random.default_rng(2).normal(size=4000)
        > 0
    )
    model = LogisticRegression().fit(np.hstack([cheap, slow_features(costly)])[:1000], y[:1000].astype(int))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        rank_arrays.calibrate(model, cheap[1000:], costly[1000:])
    return model


def test_plan_is_approximate_and_explained(arrays):
    plan = rank_arrays.plan_
    assert isinstance(plan, willow.TopKPlan) and plan.approximate
    assert plan.selected == ("a",)
    text = rank_arrays.explain()
    assert "guarantee: precision@K >= 0.9" in text and "with probability >= 0.95" in text
    assert "def rank_arrays_top_k(k, /, model, cheap, costly):" in text
    assert "K/N" in plan.table() and repr(rank_arrays).endswith("(top-K, approximate)>")


def test_precision_against_original_on_fresh_random_queries(arrays):
    model = arrays
    precisions = []
    for seed in range(10, 20):
        cheap, costly = make_arrays(500, seed)
        found, scores = rank_arrays.top_k(model, cheap, costly, k=20, return_scores=True)
        full = array_scores(model, cheap, costly)
        expected, _ = reference(full, 20)
        precisions.append(precision_at_k(found, expected, 20))
        # Returned scores are the full model's, best first, ties by lowest position.
        np.testing.assert_allclose(scores, full[found])
        assert all(
            (s1 > s2) or (s1 == s2 and i1 < i2)
            for s1, s2, i1, i2 in zip(scores, scores[1:], found, found[1:])
        )
    assert np.mean(precisions) >= 0.9
    assert np.mean(np.array(precisions) >= 0.9) >= 0.8


def test_call_answers_the_declared_k(arrays):
    cheap, costly = make_arrays(300, 5)
    found = rank_arrays(arrays, cheap, costly)
    assert isinstance(found, np.ndarray) and found.dtype == np.intp and len(found) == 20
    np.testing.assert_array_equal(found, rank_arrays.top_k(arrays, cheap, costly, k=20))


def test_exact_when_candidates_cover_all_rows(arrays):
    cheap, costly = make_arrays(60, 7)
    full = array_scores(arrays, cheap, costly)
    for k in (1, 5, 30, 59, 60, 61, 1000):
        if rank_arrays.plan_.candidate_count(k, 60) < 60:
            continue
        found, scores = rank_arrays.top_k(arrays, cheap, costly, k=k, return_scores=True)
        expected, expected_scores = reference(full, k)
        np.testing.assert_array_equal(found, expected)
        np.testing.assert_allclose(scores, expected_scores)
    found = rank_arrays.top_k(arrays, cheap, costly, k=1000)
    assert sorted(found.tolist()) == list(range(60))


@pytest.mark.parametrize("bad", [0, -1])
def test_bad_k_values(arrays, bad):
    cheap, costly = make_arrays(10, 3)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        rank_arrays.top_k(arrays, cheap, costly, k=bad)


@pytest.mark.parametrize("bad", [True, 2.5, "5", None])
def test_bad_k_types(arrays, bad):
    cheap, costly = make_arrays(10, 3)
    with pytest.raises(TypeError, match="k must be a positive integer"):
        rank_arrays.top_k(arrays, cheap, costly, k=bad)


def test_zero_and_one_row(arrays):
    cheap, costly = make_arrays(1, 3)
    found, scores = rank_arrays.top_k(arrays, cheap, costly, k=5, return_scores=True)
    assert found.tolist() == [0] and scores == pytest.approx(array_scores(arrays, cheap, costly))
    found, scores = rank_arrays.top_k(arrays, cheap[:0], costly[:0], k=5, return_scores=True)
    assert found.shape == (0,) and scores.shape == (0,)


def test_changed_model_answers_exactly_with_a_warning(arrays):
    cheap, costly = make_arrays(200, 4)
    other = LogisticRegression().fit(np.hstack([cheap, slow_features(costly)]), (cheap[:, 0] > 0).astype(int))
    with pytest.warns(willow.ModelChangedWarning):
        found = rank_arrays.top_k(other, cheap, costly, k=10)
    np.testing.assert_array_equal(found, reference(array_scores(other, cheap, costly), 10)[0])


# --------------------------------------------------------------------------- options and fallbacks


def test_topk_needs_k_and_a_known_query():
    with pytest.raises(TypeError, match="k="):
        willow.optimize(query="topk")(rank_arrays.__wrapped__)
    with pytest.raises(ValueError, match="query must be one of"):
        willow.optimize(query="nearest")(rank_arrays.__wrapped__)
    with pytest.raises(TypeError, match="k must be a positive integer"):
        willow.optimize(query="topk", k=True)(rank_arrays.__wrapped__)


@willow.optimize
def label_arrays(model, cheap, costly):
    a = cheap * 1.0
    b = slow_features(costly)
    X = np.hstack([a, b])
    return model.predict(X)


def test_top_k_on_an_ordinary_pipeline_is_exact(arrays):
    cheap, costly = make_arrays(100, 8)
    full = array_scores(arrays, cheap, costly)
    found, scores = label_arrays.top_k(arrays, cheap, costly, k=7, return_scores=True)
    expected, expected_scores = reference(full, 7)
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_allclose(scores, expected_scores)
    # Uncalibrated, a call still returns the original's output.
    assert label_arrays(arrays, cheap, costly).shape == (100,)
    assert "answered exactly" in willow.topk.query.explain_lines(label_arrays)[0]


def test_multiclass_needs_score():
    cheap, costly = make_arrays(90, 9)
    model = LogisticRegression().fit(np.hstack([cheap, slow_features(costly)]), np.arange(90) % 3)
    with pytest.raises(ValueError, match="score="):
        label_arrays.top_k(model, cheap, costly, k=3)

    @willow.optimize(score=2)
    def by_class(model, cheap, costly):
        a = cheap * 1.0
        b = slow_features(costly)
        X = np.hstack([a, b])
        return model.predict(X)

    proba = model.predict_proba(np.hstack([cheap, slow_features(costly)]))
    np.testing.assert_array_equal(by_class.top_k(model, cheap, costly, k=4), reference(proba[:, 2], 4)[0])
    with pytest.raises(ValueError, match="not one of"):
        willow.optimize(score="x")(by_class.__wrapped__).top_k(model, cheap, costly, k=3)


# --------------------------------------------------------------------------- ties, regressor


@willow.optimize(query="topk", k=15, precision_target=0.9, query_size=400, **FAST)
def rank_ties(model, cheap, costly):
    a = cheap * 1.0
    b = slow_features(costly)
    X = np.hstack([a, b])
    return model.predict(X)


def test_many_equal_scores_regressor():
    cheap, costly = make_arrays(3000, 21)
    X = np.hstack([cheap, slow_features(costly)])
    model = DecisionTreeRegressor(max_depth=3, random_state=0).fit(X, cheap[:, 0] + 0.1 * costly[:, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        rank_ties.calibrate(model, cheap, costly)
    assert rank_ties.plan_.score == "DecisionTreeRegressor.predict(X)"
    cheap_q, costly_q = make_arrays(400, 22)
    full = model.predict(np.hstack([cheap_q, slow_features(costly_q)]))
    assert len(np.unique(full)) <= 8  # heavy ties
    for k in (1, 15, 60, 399, 400, 401):
        found, scores = rank_ties.top_k(model, cheap_q, costly_q, k=k, return_scores=True)
        expected, expected_scores = reference(full, k)
        assert len(found) == min(k, 400)
        np.testing.assert_allclose(scores, full[found])
        assert all(
            (s1 > s2) or (s1 == s2 and i1 < i2)
            for s1, s2, i1, i2 in zip(scores, scores[1:], found, found[1:])
        )
        if rank_ties.plan_.candidate_count(k, 400) >= 400:
            np.testing.assert_array_equal(found, expected)


# --------------------------------------------------------------------------- DataFrame, regressor


@willow.optimize(query="topk", k=10, precision_target=0.9, query_size=300, **FAST)
def rank_frame(model, frame):
    raw = frame[["a", "b"]]
    slow = pd.DataFrame(
        slow_features(frame[["c", "d", "e"]].to_numpy()), columns=["c2", "d2", "e2"], index=frame.index
    )
    X = pd.concat([raw, slow], axis=1)
    return model.predict(X)


def make_frame(n, seed):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(n, 5)), columns=list("abcde"))
    frame.index = rng.permutation(n) * 3 + 7  # a non-default index: positions are returned
    return frame


def test_dataframe_regressor():
    frame = make_frame(2400, 31)
    features = pd.concat(
        [
            frame[["a", "b"]],
            pd.DataFrame(
                slow_features(frame[["c", "d", "e"]].to_numpy()),
                columns=["c2", "d2", "e2"],
                index=frame.index,
            ),
        ],
        axis=1,
    )
    model = Ridge().fit(features, 2 * frame["a"] - frame["b"] + 0.3 * frame["c"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        rank_frame.calibrate(model, frame)
    assert rank_frame.plan_.approximate_model in ("Ridge", "-")
    query = make_frame(300, 32)
    q_features = pd.concat(
        [
            query[["a", "b"]],
            pd.DataFrame(
                slow_features(query[["c", "d", "e"]].to_numpy()),
                columns=["c2", "d2", "e2"],
                index=query.index,
            ),
        ],
        axis=1,
    )
    full = model.predict(q_features)
    found, scores = rank_frame.top_k(model, query, k=10, return_scores=True)
    assert precision_at_k(found, reference(full, 10)[0], 10) >= 0.8
    np.testing.assert_allclose(scores, full[found])


# --------------------------------------------------------------------------- sparse input


@willow.optimize(query="topk", k=10, precision_target=0.9, query_size=300, **FAST)
def rank_sparse(model, rows):
    left = rows[:, :5]
    right = sp.csr_matrix(slow_features(rows[:, 5:].toarray()))
    X = sp.hstack([left, right]).tocsr()
    return model.predict_proba(X)


def test_sparse_input():
    rng = np.random.default_rng(41)
    dense = rng.normal(size=(2400, 25)) * (rng.random((2400, 25)) < 0.5)
    rows = sp.csr_matrix(dense)
    X = sp.hstack([rows[:, :5], sp.csr_matrix(slow_features(dense[:, 5:]))]).tocsr()
    model = LogisticRegression().fit(X, (dense[:, :5].sum(axis=1) + 0.2 * dense[:, 5] > 0).astype(int))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        rank_sparse.calibrate(model, rows)
    query = sp.csr_matrix(rng.normal(size=(300, 25)) * (rng.random((300, 25)) < 0.5))
    full = model.predict_proba(
        sp.hstack([query[:, :5], sp.csr_matrix(slow_features(query[:, 5:].toarray()))]).tocsr()
    )[:, 1]
    found = rank_sparse.top_k(model, query, k=10)
    assert precision_at_k(found, reference(full, 10)[0], 10) >= 0.8
    assert rank_sparse.top_k(model, query[:0], k=3).shape == (0,)


# --------------------------------------------------------------------------- real text data, lists


@pytest.mark.data
def test_real_sms_spam_list_input():
    from sklearn.feature_extraction.text import TfidfVectorizer

    frame = pd.read_csv(data_file("sms_spam.tsv"), sep="\t")
    texts = frame["SMS"].astype(str).tolist()
    labels = frame["Label"].to_numpy()
    order = np.random.default_rng(0).permutation(len(texts))
    train, calibration, test = order[:1200], order[1200:4200], order[4200:]
    words = TfidfVectorizer(min_df=2, sublinear_tf=True).fit([texts[i] for i in train])
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True).fit(
        [texts[i] for i in train]
    )

    @willow.optimize(query="topk", k=14, precision_target=0.9, query_size=1372, **FAST)
    def spam_rank(model, messages):
        w = words.transform(messages)
        c = chars.transform(messages)
        X = sp.hstack([w, c]).tocsr()
        return model.predict(X)

    def full_scores(messages):
        X = sp.hstack([words.transform(messages), chars.transform(messages)]).tocsr()
        return model.predict_proba(X)[:, 1]

    model = LogisticRegression(C=10, max_iter=2000).fit(
        sp.hstack(
            [words.transform([texts[i] for i in train]), chars.transform([texts[i] for i in train])]
        ).tocsr(),
        labels[train],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        spam_rank.calibrate(model, [texts[i] for i in calibration])
    assert spam_rank.plan_.score == "P('spam') from LogisticRegression.predict_proba(X)"
    messages = [texts[i] for i in test]
    found, scores = spam_rank.top_k(model, messages, k=14, return_scores=True)
    full = full_scores(messages)
    assert precision_at_k(found, reference(full, 14)[0], 14) >= 0.85
    np.testing.assert_allclose(scores, full[found])
    assert spam_rank.top_k(model, tuple(messages[:1]), k=3).tolist() == [0]


# --------------------------------------------------------------------------- exact plans


@willow.optimize(query="topk", k=5, **FAST)
def rank_single_group(model, costly):
    X = slow_features(costly)
    return model.predict_proba(X)


def test_single_group_pipeline_gets_an_exact_plan():
    _, costly = make_arrays(400, 51)
    model = LogisticRegression().fit(slow_features(costly), (costly[:, 0] > 0).astype(int))
    assert "queries score every row" in rank_single_group.explain()
    before = rank_single_group(model, costly[:50])  # uncalibrated: exact
    rank_single_group.calibrate(model, costly)
    plan = rank_single_group.plan_
    assert not plan.approximate and plan.guarantee.startswith("exact")
    assert "Top-K plan: exact" in rank_single_group.explain()
    assert rank_single_group.generated_source_ is None
    full = model.predict_proba(slow_features(costly[:50]))[:, 1]
    np.testing.assert_array_equal(before, reference(full, 5)[0])
    np.testing.assert_array_equal(rank_single_group(model, costly[:50]), reference(full, 5)[0])
    with pytest.warns(UserWarning, match="ignored"):
        rank_single_group.calibrate(model, costly, y=np.zeros(400))
