"""Fused text vectorizers -> linear model against the unfused scikit-learn pipeline."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import data_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.feature_extraction.text import CountVectorizer, HashingVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge, RidgeClassifier, SGDClassifier
from sklearn.svm import LinearSVC

from willow.compiler.lowering import NotLowerable
from willow.compiler.lowering.fused import PARALLEL_MIN_ROWS, fuse_text_linear

ALPHABET = "abcdeABCDE xyz019_éÉçßİΣσe\u0301日本語🙂,.!\t\n\u3000"
TRAIN = [
    "free prize call now",
    "are we meeting for lunch today",
    "WINNER claim your free prize 🙂",
    "ok see you at home later",
    "très bien, à demain 日本語",
    "call me when you are free",
    "Σοφία İstanbul straße ß",
    "urgent! your account has a prize",
    "lunch at home? ok",
]
LABELS = {
    2: np.array(["ham", "spam", "spam", "ham", "ham", "ham", "ham", "spam", "ham"]),
    3: np.arange(9) % 3,
}
METHODS = ("predict", "predict_proba", "decision_function")

PIPELINES = {
    "word_char_wb_tfidf": lambda: [
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5)),
    ],
    "count_char_and_hashing": lambda: [
        CountVectorizer(analyzer="char", ngram_range=(1, 3), binary=True),
        HashingVectorizer(n_features=64, ngram_range=(1, 2), stop_words="english"),
        # @mentions (a prefixed token pattern), vocabulary fixed: TRAIN mentions no one
        CountVectorizer(token_pattern=r"@\w+", binary=True, vocabulary=["@free", "@prize", "@日本語", "@a"]),
    ],
    "single_tfidf_l1_upper": lambda: [TfidfVectorizer(norm="l1", lowercase=False, strip_accents="unicode")],
}
MODELS = {
    "logistic": lambda: LogisticRegression(max_iter=1000),
    "sgd_log_loss": lambda: SGDClassifier(loss="log_loss", random_state=0),
    "linear_svc": lambda: LinearSVC(),
    "ridge_classifier": lambda: RidgeClassifier(),
}


def stacked(vectorizers, texts):
    return sp.hstack([v.transform(texts) for v in vectorizers]).tocsr()


@functools.cache
def fitted(pipeline: str, model_name: str, n_classes: int):
    vectorizers = [v.fit(TRAIN) for v in PIPELINES[pipeline]()]
    model = MODELS[model_name]().fit(stacked(vectorizers, TRAIN), LABELS[n_classes])
    return vectorizers, model


@functools.cache
def fused(pipeline: str, model_name: str, n_classes: int, method: str):
    vectorizers, model = fitted(pipeline, model_name, n_classes)
    return fuse_text_linear(vectorizers, model, method)


def assert_same(method, got, expected):
    assert got.shape == expected.shape and got.dtype == expected.dtype
    if method == "predict":
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


# Every model head (model x classes x method) on the one-vectorizer pipeline, and the multi-
# vectorizer pipelines with the heads the other tests use: the head and the vectorizers are
# independent parts of the kernel, and each distinct pair costs a Numba compile of 6-12 s.
CASES = [
    ("single_tfidf_l1_upper", model, n_classes, method)
    for model in MODELS
    for n_classes in (2, 3)
    for method in METHODS
    if method != "predict_proba" or model in ("logistic", "sgd_log_loss")
] + [
    ("word_char_wb_tfidf", "logistic", 2, "predict"),
    ("word_char_wb_tfidf", "logistic", 3, "predict_proba"),
    ("count_char_and_hashing", "logistic", 3, "predict_proba"),
]


@pytest.mark.parametrize(("pipeline", "model_name", "n_classes", "method"), CASES)
def test_fused_matches_the_stacked_pipeline(pipeline, model_name, n_classes, method):
    vectorizers, model = fitted(pipeline, model_name, n_classes)
    operator = fused(pipeline, model_name, n_classes, method)
    texts = [
        *TRAIN,
        "",
        "   ",
        "unseen words only",
        "Free PRIZE!!",
        "日本語🙂",
        "ς",
        "@free @Prize x@a @@日本語 @zz @",
    ]
    big = texts * (PARALLEL_MIN_ROWS // len(texts) + 1)  # runs in chunks on several threads
    ascii_only = [t for t in texts if t.isascii()]
    for batch in (texts, texts[:1], np.array(texts, dtype=object), pd.Series(texts), big, ascii_only):
        assert_same(method, operator(batch), getattr(model, method)(stacked(vectorizers, batch)))
    # one text, ASCII and other batches, chunks: the kernel sees one set of argument types (Numba
    # compiles once per set, so a second one would double the compile time)
    assert len(kernel_of(operator).signatures) == 1, kernel_of(operator).signatures


def kernel_of(operator):
    """The Numba dispatcher a fused operator calls (``run`` in :func:`fuse_text_linear`)."""
    cells = dict(zip(operator.function.__code__.co_freevars, operator.function.__closure__))
    return cells["run"].cell_contents


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(alphabet=ALPHABET, max_size=30), min_size=1, max_size=5))
def test_fused_matches_on_generated_unicode(texts):
    vectorizers, model = fitted("word_char_wb_tfidf", "logistic", 3)
    operator = fused("word_char_wb_tfidf", "logistic", 3, "predict_proba")
    assert_same("predict_proba", operator(texts), model.predict_proba(stacked(vectorizers, texts)))


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_single_texts_match_in_every_container(pipeline):
    """One text (the list fast path: its own preprocessing, no offsets array) and one-element
    tuples, arrays, Series and str subclasses, for every preprocessing option in PIPELINES."""
    vectorizers, model = fitted(pipeline, "logistic", 3)
    operator = fused(pipeline, "logistic", 3, "predict_proba")  # the head is the batch path's
    for text in ["", "   ", "Free PRIZE!!", "日本語🙂", "ς", "İSTANBUL Éé", TRAIN[0], TRAIN[6]]:
        expected = model.predict_proba(stacked(vectorizers, [text]))
        for batch in ([text], (text,), np.array([text], dtype=object), pd.Series([text]), [np.str_(text)]):
            assert_same("predict_proba", operator(batch), expected)


def test_vectorizers_with_different_preprocessing_share_one_kernel():
    """Vectorizers that lowercase / strip accents differently read separate code point buffers
    (and "İ".lower() is two code points long, so the buffers differ in length)."""
    vectorizers = [
        TfidfVectorizer(lowercase=False, ngram_range=(1, 2)).fit(TRAIN),
        CountVectorizer(analyzer="char_wb", strip_accents="ascii", ngram_range=(1, 3)).fit(TRAIN),
    ]
    model = LogisticRegression(max_iter=1000).fit(stacked(vectorizers, TRAIN), LABELS[3])
    operator = fuse_text_linear(vectorizers, model, "predict_proba")
    texts = [*TRAIN, "", "İİİ İstanbul", "Ünïcödé ÉÉ", "x" * 300]
    for batch in ([t] for t in texts):
        assert_same("predict_proba", operator(batch), model.predict_proba(stacked(vectorizers, batch)))
    big = texts * (PARALLEL_MIN_ROWS // len(texts) + 1)
    for batch in (texts, big):
        assert_same("predict_proba", operator(batch), model.predict_proba(stacked(vectorizers, batch)))


def test_chunked_batches_equal_one_call(monkeypatch):
    """Large batches run the kernel on chunks of rows in threads; the pieces join in row order
    into exactly what one call on the whole batch returns."""
    from willow.compiler.lowering import chunks

    vectorizers, model = fitted("word_char_wb_tfidf", "logistic", 3)
    operator = fused("word_char_wb_tfidf", "logistic", 3, "predict_proba")
    texts = [f"{text} {i}" for i, text in enumerate(TRAIN * 90)]  # 810 distinct rows
    monkeypatch.setattr(chunks, "worker_threads", lambda: 1)
    one_call = operator(texts)
    monkeypatch.setattr(chunks, "worker_threads", lambda: 3)  # threads even where Numba has one
    np.testing.assert_array_equal(operator(texts), one_call)
    assert_same("predict_proba", one_call, model.predict_proba(stacked(vectorizers, texts)))


def test_refusals_and_errors():
    vectorizers, model = fitted("word_char_wb_tfidf", "logistic", 2)
    with pytest.raises(NotLowerable, match="expects"):
        fuse_text_linear(vectorizers[:1], model, "predict")
    vectorizers, model = fitted("single_tfidf_l1_upper", "logistic", 2)
    float32 = TfidfVectorizer(dtype=np.float32).fit(TRAIN)
    with pytest.raises(NotLowerable, match="float32"):
        fuse_text_linear([float32], LogisticRegression().fit(float32.transform(TRAIN), LABELS[2]), "predict")
    with pytest.raises(NotLowerable, match="tokenizer"):
        fuse_text_linear(
            [CountVectorizer(tokenizer=str.split, token_pattern=None).fit(TRAIN)], model, "predict"
        )
    regressor = Ridge().fit(stacked(vectorizers, TRAIN), np.arange(9.0))
    assert_same(
        "predict_proba",
        fuse_text_linear(vectorizers, regressor, "predict")(TRAIN),
        regressor.predict(stacked(vectorizers, TRAIN)),
    )
    operator = fused("single_tfidf_l1_upper", "logistic", 2, "predict")
    with pytest.raises(ValueError, match="0 sample"):
        operator([])
    assert "def fused_rows(" in operator.source and "prange" not in operator.source


@pytest.mark.data
def test_real_sms_spam_pipeline():
    sms = pd.read_csv(data_file("sms_spam.tsv"), sep="\t")
    texts, labels = sms["SMS"].astype(str), sms["Label"]
    vectorizers = [
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2).fit(texts[:1500]),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2).fit(texts[:1500]),
    ]
    model = LogisticRegression(max_iter=1000).fit(stacked(vectorizers, texts[:1500]), labels[:1500])
    test = texts[1500:3000]
    for method in ("predict", "predict_proba"):
        assert_same(
            method,
            fuse_text_linear(vectorizers, model, method)(test),
            getattr(model, method)(stacked(vectorizers, test)),
        )
