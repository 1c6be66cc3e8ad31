"""Compiled linear models against scikit-learn: labels exactly, probabilities and scores to 1e-9."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.linear_model import (
    ElasticNet,
    Lasso,
    LinearRegression,
    LogisticRegression,
    Ridge,
    RidgeClassifier,
    SGDClassifier,
)
from sklearn.svm import LinearSVC

from willow.compiler.lowering import NotLowerable, lower

N_FEATURES = 9
CLASSIFIERS = {
    "logistic": lambda: LogisticRegression(max_iter=500),
    "logistic_liblinear": lambda: LogisticRegression(solver="liblinear"),
    "linear_svc": lambda: LinearSVC(),
    "sgd_log_loss": lambda: SGDClassifier(loss="log_loss", random_state=0),
    "sgd_hinge": lambda: SGDClassifier(random_state=0),
    "ridge_classifier": lambda: RidgeClassifier(),
}
REGRESSORS = {
    "linear_regression": LinearRegression,
    "ridge": Ridge,
    "lasso": lambda: Lasso(alpha=0.01),
    "elastic_net": lambda: ElasticNet(alpha=0.01),
}
METHODS = ("predict", "predict_proba", "decision_function")


def data(n_rows: int = 120, seed: int = 0) -> tuple[np.ndarray, sp.csr_matrix]:
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(n_rows, N_FEATURES)) * (rng.random((n_rows, N_FEATURES)) < 0.5)
    return dense, sp.csr_matrix(dense)


@functools.cache
def fitted(name: str, n_classes: int):
    X, _ = data()
    y = (np.arange(X.shape[0]) * 7 + (X[:, 0] > 0)) % n_classes
    labels = np.array(["spam", "ham", "eggs", "bacon"])[y] if n_classes > 2 else y + 3
    if name == "logistic_liblinear" and n_classes > 2:
        pytest.skip("liblinear is binary only in scikit-learn 1.9")
    return CLASSIFIERS[name]().fit(X, labels)


def assert_same(method: str, got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape and got.dtype == expected.dtype
    if method == "predict":
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
@pytest.mark.parametrize("method", METHODS)
def test_classifier_matches_sklearn(name, n_classes, method):
    model = fitted(name, n_classes)
    if not hasattr(model, method):
        with pytest.raises(NotLowerable, match=method):
            lower(model, method)
        return
    operator = lower(model, method)
    dense, sparse = data(n_rows=40, seed=1)
    inputs = [dense, sparse, dense[:1], sparse[:1], pd.DataFrame(dense), sp.csr_array(dense), sparse.tocsc()]
    for X in inputs:
        assert_same(method, operator(X), getattr(model, method)(X))


@pytest.mark.parametrize("name", sorted(REGRESSORS))
@pytest.mark.parametrize("two_targets", [False, True])
def test_regressor_matches_sklearn(name, two_targets):
    X, sparse = data()
    y = X @ np.arange(N_FEATURES) + 1.5
    model = REGRESSORS[name]().fit(X, np.column_stack([y, -y]) if two_targets else y)
    operator = lower(model, "predict")
    for rows in (X, sparse, X[:1]):
        assert_same("predict_proba", operator(rows), model.predict(rows))


def test_wrong_width_and_empty_batches_fail_like_sklearn():
    model = fitted("logistic", 2)
    operator = lower(model, "predict")
    dense, _ = data(n_rows=3)
    with pytest.raises(ValueError, match="features"):
        operator(dense[:, :4])
    with pytest.raises(ValueError, match="0 sample"):
        operator(dense[:0])
    with pytest.raises(ValueError, match="2D"):
        operator(dense[0])


def test_refusals_name_the_reason():
    X, _ = data()
    y = np.arange(X.shape[0]) % 2
    huber = SGDClassifier(loss="modified_huber", random_state=0).fit(X, y)
    with pytest.raises(NotLowerable, match="modified_huber"):
        lower(huber, "predict_proba")
    with pytest.raises(NotLowerable, match="not fitted"):
        lower(LogisticRegression(), "predict")
    with pytest.raises(NotLowerable, match="only predict"):
        lower(fitted("logistic", 2), "score")
    with pytest.raises(NotLowerable, match="No lowering for"):
        lower(object(), "predict")


@pytest.mark.parametrize("method", ["predict", "decision_function"])
def test_parallel_and_serial_kernels_agree(method, monkeypatch):
    """Small batches take the serial kernels, large ones the prange kernels: same results."""
    from willow.compiler.lowering import linear

    model = fitted("logistic", 3)
    dense, sparse = data(n_rows=300, seed=2)
    for threshold in (0, 10**12):  # everything parallel, everything serial
        monkeypatch.setattr(linear, "PARALLEL_MIN_WORK", threshold)
        operator = lower(model, method)
        for X in (dense, sparse):
            assert_same(method, operator(X), getattr(model, method)(X))


def test_one_signature_per_kernel_for_writable_read_only_and_fortran_rows():
    # pandas 3's to_numpy() is read-only, NumPy's arrays writable, a frame's values Fortran-ordered:
    # Numba types the flag, so without a locked read-only signature the score kernels compiled once
    # per kind (see willow/compiler/lowering/signatures.py). Rows of every kind give sklearn's result.
    from willow.compiler.lowering.linear import cpu_kernels, linear_spec

    model = fitted("logistic", 2)
    operator = lower(model, "predict_proba")
    dense, sparse = data(n_rows=30, seed=3)
    read_only = dense.copy()
    read_only.setflags(write=False)
    read_only_csr = sp.csr_matrix(dense)
    for array in (read_only_csr.data, read_only_csr.indices, read_only_csr.indptr):
        array.setflags(write=False)
    batches = [dense, read_only, np.asfortranarray(dense), pd.DataFrame(dense).to_numpy()]
    batches += [dense.astype(np.float32), read_only[:1], sparse, read_only_csr, sparse.astype(np.float32)]
    for X in batches:
        assert_same("predict_proba", operator(X), model.predict_proba(X))
    module, _ = cpu_kernels(linear_spec(model, "predict_proba"))
    for kernel in (module.dense_scores_serial, module.csr_scores_serial):
        assert len(kernel.signatures) == 1, kernel.signatures
        assert not any(t.mutable for t in kernel.signatures[0]), kernel.signatures
    with pytest.raises(TypeError):  # locked: another kind of argument is refused, not compiled
        module.dense_scores_serial(dense[:, :2].astype(np.float32), dense, dense[0])
