"""Kernel templates for linear models (specialised by :func:`astgen.specialize`, never called).

Scores are ``X @ coef_.T + intercept_`` with ``coef_t`` the transposed coefficients
(``n_features x n_outputs``, contiguous per feature so a sparse row touches one cache line per
feature). Heads turn scores into what sklearn's methods return.
"""

from __future__ import annotations

import numba
import numpy as np


def dense_scores(X, coef_t, intercept):
    """Decision values of dense rows, rows in parallel."""
    n_rows = X.shape[0]
    n_features = coef_t.shape[0]
    n_outputs = coef_t.shape[1]
    scores = np.empty((n_rows, n_outputs))
    for row in numba.prange(n_rows):
        for k in range(n_outputs):
            total = 0.0
            for j in range(n_features):
                total += X[row, j] * coef_t[j, k]
            scores[row, k] = total + intercept[k]
    return scores


def csr_scores(data, indices, indptr, coef_t, intercept):
    """Decision values of CSR rows, rows in parallel."""
    n_rows = indptr.shape[0] - 1
    n_outputs = coef_t.shape[1]
    scores = np.empty((n_rows, n_outputs))
    for row in numba.prange(n_rows):
        if n_outputs == 1:
            # one output (binary classifiers, regressors): a scalar sum stays in a register,
            # where ``scores[row, 0] +=`` is a load and a store per value (LLVM cannot tell
            # that ``scores`` does not alias ``coef_t``)
            total = intercept[0]
            for p in range(indptr[row], indptr[row + 1]):
                total += data[p] * coef_t[indices[p], 0]
            scores[row, 0] = total
            continue
        for k in range(n_outputs):
            scores[row, k] = intercept[k]
        for p in range(indptr[row], indptr[row + 1]):
            value = data[p]
            j = indices[p]
            for k in range(n_outputs):
                scores[row, k] += value * coef_t[j, k]
    return scores


def label_indices(scores):
    """Index into ``classes_``: ``score > 0`` for one output, else the first argmax (as numpy)."""
    n_rows = scores.shape[0]
    n_outputs = scores.shape[1]
    chosen = np.empty(n_rows, dtype=np.int64)
    for row in range(n_rows):
        if n_outputs == 1:
            chosen[row] = 1 if scores[row, 0] > 0 else 0
        else:
            best = 0
            for k in range(1, n_outputs):
                if scores[row, k] > scores[row, best]:
                    best = k
            chosen[row] = best
    return chosen


def binary_proba(scores):
    """``[1 - expit(s), expit(s)]`` (LogisticRegression / SGD log_loss, two classes)."""
    n_rows = scores.shape[0]
    proba = np.empty((n_rows, 2))
    for row in range(n_rows):
        p = 1.0 / (1.0 + np.exp(-scores[row, 0]))
        proba[row, 0] = 1.0 - p
        proba[row, 1] = p
    return proba


def softmax_proba(scores):
    """sklearn's ``extmath.softmax``: subtract the row max, exponentiate, divide by the sum."""
    n_rows = scores.shape[0]
    n_outputs = scores.shape[1]
    proba = np.empty((n_rows, n_outputs))
    for row in range(n_rows):
        top = scores[row, 0]
        for k in range(1, n_outputs):
            top = max(top, scores[row, k])
        total = 0.0
        for k in range(n_outputs):
            proba[row, k] = np.exp(scores[row, k] - top)
            total += proba[row, k]
        for k in range(n_outputs):
            proba[row, k] /= total
    return proba


def ovr_proba(scores):
    """One-vs-rest: expit per class, normalised per row; all-zero rows become uniform (as sklearn)."""
    n_rows = scores.shape[0]
    n_outputs = scores.shape[1]
    proba = np.empty((n_rows, n_outputs))
    for row in range(n_rows):
        total = 0.0
        for k in range(n_outputs):
            proba[row, k] = 1.0 / (1.0 + np.exp(-scores[row, k]))
            total += proba[row, k]
        if total == 0.0:
            for k in range(n_outputs):
                proba[row, k] = 1.0
            total = n_outputs
        for k in range(n_outputs):
            proba[row, k] /= total
    return proba


def identity(scores):
    """Decision values / regression outputs as they are."""
    return scores
