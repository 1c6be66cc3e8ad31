"""Top-K plans with compile=, save/load of top-K plans, and top_k()'s own keywords.

The references: the original pipeline's score of every row ranked by ``(-score, position)``
(stable), and, for compiled plans, the same plan served without kernels.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

import willow
from willow.cascades.runtime import ModelGuard
from willow.topk.approximate import ApproximateScorer
from willow.topk.calibration import build_topk
from willow.topk.ranking import precision_at_k

FAST = dict(cost_repeats=1, importance_repeats=1)
VOCABULARY = [f"w{i}" for i in range(300)]


def make_texts(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Random messages; the label leans on the first 30 words and on character shapes."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n):
        words = rng.choice(VOCABULARY, size=rng.integers(2, 12))
        texts.append(" ".join(words) + ("!" * int(rng.integers(0, 3))))
        hits = sum(int(w[1:]) < 30 for w in words)
        labels.append(int(hits + rng.normal() > 1.5))
    return texts, np.array(labels)


words = TfidfVectorizer(sublinear_tf=True)
chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True)


def rank_text(model, messages):
    w = words.transform(messages)
    c = chars.transform(messages)
    X = sp.hstack([w, c]).tocsr()
    return model.predict_proba(X)


def rank_text_edited(model, messages):
    w = words.transform(messages)
    c = chars.transform(messages)
    X = sp.hstack([c, w]).tocsr()
    return model.predict_proba(X)


def full_scores(model, messages):
    return model.predict_proba(sp.hstack([words.transform(messages), chars.transform(messages)]).tocsr())[
        :, 1
    ]


def reference(scores, k):
    return np.argsort(-np.asarray(scores, dtype=float), kind="stable")[:k]


def without_kernels(pipeline, model):
    """The calibrated plan of ``pipeline`` served from the original (uncompiled) statements."""
    calibration = pipeline._topk
    function, _ = build_topk(
        pipeline.graph_,
        pipeline.__wrapped__,
        calibration.plan,
        ApproximateScorer(calibration.approximate.estimator_),
        calibration.score,
        calibration.scorer,
        ModelGuard(calibration.model_fingerprint, model),
    )
    return function


@pytest.fixture(scope="module")
def text_model():
    texts, labels = make_texts(1200, 0)
    words.fit(texts)
    chars.fit(texts)
    return LogisticRegression(C=5, max_iter=1000).fit(
        sp.hstack([words.transform(texts), chars.transform(texts)]).tocsr(), labels
    )


def calibrated(model, compile, **options):
    pipeline = willow.optimize(
        query="topk", k=10, precision_target=0.9, query_size=1000, compile=compile, **FAST, **options
    )(rank_text)
    calibration, _ = make_texts(3000, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pipeline.calibrate(model, calibration)
    return pipeline


@pytest.fixture(scope="module")
def compiled(text_model):
    return calibrated(text_model, True)


def test_compiled_plan_uses_kernels_and_explains_them(compiled):
    assert compiled.plan_.approximate
    assert compiled.plan_.compiled_nodes >= 1
    text = compiled.explain()
    assert "Compiled nodes:" in text and "_willow.ops." in compiled.generated_source_
    assert "same_objects(words, chars)" in compiled.generated_source_
    assert "compiled:" in compiled.plan_.table()


def test_compiled_top_k_equals_the_same_plan_without_kernels(compiled, text_model):
    python_plan = without_kernels(compiled, text_model)
    for seed in (2, 3, 4):
        messages, _ = make_texts(800, seed)
        for k in (1, 8, 40):
            found, scores = compiled.top_k(text_model, messages, k=k, return_scores=True)
            expected, expected_scores = python_plan(k, text_model, messages)
            np.testing.assert_array_equal(found, expected)
            np.testing.assert_allclose(scores, expected_scores, rtol=1e-9, atol=1e-12)
            full = full_scores(text_model, messages)
            np.testing.assert_allclose(scores, full[found], rtol=1e-9, atol=1e-12)
            assert precision_at_k(found, reference(full, k), k) >= 0.5


def test_compiled_plan_is_exact_when_candidates_cover_all_rows(compiled, text_model):
    messages, _ = make_texts(60, 5)
    full = full_scores(text_model, messages)
    for k in (30, 60, 100):  # c * K >= N: every row is scored by the original
        np.testing.assert_array_equal(compiled.top_k(text_model, messages, k=k), reference(full, k))
    assert compiled.top_k(text_model, [], k=3).shape == (0,)
    assert compiled.top_k(text_model, messages[:1], k=3).tolist() == [0]


def test_compiled_and_python_calibrations_agree(compiled, text_model):
    python = calibrated(text_model, False)
    assert python.plan_.compiled_nodes == 0 and "_willow.ops" not in python.generated_source_
    assert python.plan_.selected == compiled.plan_.selected
    messages, _ = make_texts(900, 6)
    np.testing.assert_array_equal(
        python.top_k(text_model, messages, k=9), compiled.top_k(text_model, messages, k=9)
    )


def test_changed_model_answers_exactly_not_with_the_compiled_one(compiled, text_model):
    texts, labels = make_texts(1200, 0)
    other = LogisticRegression(C=0.5, max_iter=1000).fit(
        sp.hstack([words.transform(texts), chars.transform(texts)]).tocsr(), 1 - labels
    )
    messages, _ = make_texts(400, 13)
    with pytest.warns(willow.ModelChangedWarning):
        found, scores = compiled.top_k(other, messages, k=6, return_scores=True)
    full = full_scores(other, messages)
    np.testing.assert_array_equal(found, reference(full, 6))
    np.testing.assert_allclose(scores, full[found])


def test_replaced_vectorizer_answers_exactly(compiled, text_model):
    messages, _ = make_texts(300, 7)
    global chars
    saved = chars
    try:
        # the same vocabulary, other weights (an equal copy would be no change: it is compared by
        # its fingerprint)
        chars = TfidfVectorizer(
            analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, vocabulary=saved.vocabulary_
        ).fit(make_texts(1200, 5)[0])
        with pytest.warns(willow.ModelChangedWarning):
            found = compiled.top_k(text_model, messages, k=5)
        np.testing.assert_array_equal(found, reference(full_scores(text_model, messages), 5))
    finally:
        chars = saved


def slow_features(x):
    """A deliberately costly feature group (elementwise, so rows stay independent)."""
    for _ in range(60):
        x = np.tanh(x) * 1.01
    return x


def tree_rank(model, cheap, costly):
    a = cheap * 1.0
    b = slow_features(costly)
    X = np.hstack([a, b])
    return model.predict(X)


def test_compiled_tree_regressor_plan_equals_the_plan_without_kernels(kernels_kept):
    from lightgbm import LGBMRegressor
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(12)
    cheap, costly = rng.normal(size=(3000, 3)), rng.normal(size=(3000, 12))
    X = np.hstack([cheap, slow_features(costly)])
    y = X[:, 0] * 2 + X[:, 1] - X[:, 3] + 0.3 * rng.normal(size=3000)
    model = LGBMRegressor(n_estimators=30, num_leaves=15, verbose=-1, random_state=0).fit(X[:1000], y[:1000])
    pipeline = willow.optimize(
        query="topk",
        k=10,
        query_size=1000,
        precision_target=0.9,
        approximate_model=Ridge(),
        **FAST,
    )(tree_rank)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pipeline.calibrate(model, cheap[1000:], costly[1000:])
    assert pipeline.plan_.approximate and pipeline.plan_.compiled_nodes >= 1
    python_plan = without_kernels(pipeline, model)
    query_cheap, query_costly = rng.normal(size=(700, 3)), rng.normal(size=(700, 12))
    query_cheap[::50], query_costly[::50] = (
        query_cheap[3],
        query_costly[3],
    )  # tied rows: lowest position first
    full = model.predict(np.hstack([query_cheap, slow_features(query_costly)]))
    for k in (1, 7, 30):
        found, scores = pipeline.top_k(model, query_cheap, query_costly, k=k, return_scores=True)
        expected, expected_scores = python_plan(k, model, query_cheap, query_costly)
        np.testing.assert_array_equal(found, expected)
        np.testing.assert_allclose(scores, expected_scores, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(scores, full[found], rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(
        pipeline.top_k(model, query_cheap[:40], query_costly[:40], k=40), reference(full[:40], 40)
    )


# --------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("compile", [True, False])
def test_save_and_load_give_identical_top_k(compile, compiled, text_model, tmp_path):
    pipeline = compiled if compile else calibrated(text_model, False)
    path = tmp_path / "topk.willow"
    pipeline.save(path)
    loaded = willow.load(path, rank_text)
    assert loaded.plan_ == pipeline.plan_
    assert loaded.generated_source_ == pipeline.generated_source_
    assert loaded.plan_.compiled_nodes == pipeline.plan_.compiled_nodes
    messages, _ = make_texts(700, 8)
    for k in (1, 7, 35, 700):
        a, a_scores = pipeline.top_k(text_model, messages, k=k, return_scores=True)
        b, b_scores = loaded.top_k(text_model, messages, k=k, return_scores=True)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a_scores, b_scores)
    np.testing.assert_array_equal(loaded(text_model, messages), pipeline(text_model, messages))
    assert "Top-K plan" in loaded.explain()


def test_load_refuses_an_edited_top_k_function(compiled, tmp_path):
    path = tmp_path / "topk.willow"
    compiled.save(path)
    with pytest.raises(willow.PlanMismatchError, match="differs"):
        willow.load(path, rank_text_edited)


def test_load_refuses_a_refitted_compiled_vectorizer(compiled, tmp_path):
    path = tmp_path / "topk.willow"
    compiled.save(path)
    global words
    saved = words
    try:
        words = TfidfVectorizer().fit(["other words entirely", "nothing alike"])
        with pytest.raises(willow.PlanMismatchError, match="not the fitted object"):
            willow.load(path, rank_text)
    finally:
        words = saved


def test_exact_top_k_plan_saves_and_loads(tmp_path):
    @willow.optimize(query="topk", k=3, **FAST)
    def single(model, rows):
        X = np.tanh(rows)
        return model.predict_proba(X)

    rng = np.random.default_rng(9)
    rows = rng.normal(size=(300, 4))
    model = LogisticRegression().fit(np.tanh(rows), (rows[:, 0] > 0).astype(int))
    single.calibrate(model, rows)
    assert not single.plan_.approximate
    single.save(tmp_path / "exact.willow")
    loaded = willow.load(tmp_path / "exact.willow", single)
    np.testing.assert_array_equal(loaded(model, rows[:50]), single(model, rows[:50]))


# --------------------------------------------------------------------------- top_k()'s own keywords


def test_keyword_only_k_is_refused_at_decoration():
    def clash(model, rows, *, k=2):
        return model.predict_proba(rows[:, :k])

    with pytest.raises(TypeError, match="keyword-only parameter `k`.*Rename"):
        willow.optimize(query="topk", k=5)(clash)


def test_function_k_is_passed_positionally():
    @willow.optimize(query="topk", k=5, row_args=["rows"], **FAST)
    def power_rank(model, rows, k):
        a = rows[:, :2] ** k
        b = np.tanh(rows[:, 2:])
        X = np.hstack([a, b])
        return model.predict_proba(X)

    rng = np.random.default_rng(10)
    rows = rng.normal(size=(2000, 6))
    model = LogisticRegression().fit(
        np.hstack([rows[:, :2] ** 3, np.tanh(rows[:, 2:])]), (rows[:, 0] > 0).astype(int)
    )
    query = rows[:200]
    full = model.predict_proba(np.hstack([query[:, :2] ** 3, np.tanh(query[:, 2:])]))[:, 1]
    np.testing.assert_array_equal(power_rank.top_k(model, query, 3, k=7), reference(full, 7))
    with pytest.raises(TypeError, match="own parameter `k`.*positionally.*top_k\\(model, rows, k, k=100\\)"):
        power_rank.top_k(model, query, k=7)
    with pytest.raises(TypeError, match="`k=` is a keyword of the query"):
        power_rank(model, query, k=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        power_rank.calibrate(model, rows, 3)
    np.testing.assert_array_equal(power_rank(model, query, 3), power_rank.top_k(model, query, 3, k=5))
    found = power_rank.top_k(model, query, 3, k=10)
    assert precision_at_k(found, reference(full, 10), 10) >= 0.5


def test_function_return_scores_with_a_default_keeps_it():
    @willow.optimize(row_args=["rows"])
    def scored(model, rows, return_scores=False):
        return model.predict_proba(rows)

    rng = np.random.default_rng(11)
    rows = rng.normal(size=(50, 3))
    model = LogisticRegression().fit(rows, (rows[:, 0] > 0).astype(int))
    found, scores = scored.top_k(model, rows, k=4, return_scores=True)
    full = model.predict_proba(rows)[:, 1]
    np.testing.assert_array_equal(found, reference(full, 4))
    np.testing.assert_allclose(scores, full[found])
