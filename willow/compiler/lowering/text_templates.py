"""Kernel templates for text vectorizers (specialised by :func:`astgen.specialize`, never called).

The UPPER_CASE names below are the compile-time options each template is specialised on; their
placeholder values here only keep the module importable. ``ANALYZER`` is ``"word"``, ``"char"`` or
``"char_wb"``; ``NORM`` is ``"l1"``, ``"l2"`` or ``None``; ``HASHING`` selects feature hashing
(HashingVectorizer) over a fitted vocabulary.
"""

# ruff: noqa: F821 - the helpers are imported by the generated module, not here.
from __future__ import annotations

import numba
import numpy as np

ANALYZER = MIN_N = MAX_N = MIN_TOKEN_LENGTH = None
HASHING = N_FEATURES = ALTERNATE_SIGN = None
BINARY = SUBLINEAR_TF = USE_IDF = NORM = None
ADD_SCORES = HEAD = None  # a statement slot and the head, filled by fused.py


def transform_rows(code_points, offsets, char_class, vocabulary, stop_words, idf):
    """CSR ``(indptr, indices, values)`` of sklearn's ``transform``: sorted columns per row."""
    n_rows = offsets.shape[0] - 1
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    capacity = 64
    indices = np.empty(capacity, dtype=np.int64)
    values = np.empty(capacity, dtype=np.float64)
    nnz = 0
    for row in range(n_rows):
        start = offsets[row]
        end = offsets[row + 1]
        if ANALYZER == "word":
            text, span_starts, span_ends = word_spans(
                code_points, start, end, char_class, MIN_TOKEN_LENGTH, stop_words, MIN_N, MAX_N
            )
        elif ANALYZER == "char":
            text, span_starts, span_ends = char_spans(code_points, start, end, char_class, MIN_N, MAX_N)
        else:
            text, span_starts, span_ends = char_wb_spans(code_points, start, end, char_class, MIN_N, MAX_N)
        if HASHING:
            columns, signs = hash_spans(text, span_starts, span_ends, N_FEATURES, ALTERNATE_SIGN)
        else:
            columns = lookup_spans(vocabulary, text, span_starts, span_ends)
            signs = np.ones(columns.shape[0])
        n_found = columns.shape[0]
        if nnz + n_found > capacity:
            capacity = max(2 * capacity, nnz + n_found)
            grown_indices = np.empty(capacity, dtype=np.int64)
            grown_indices[:nnz] = indices[:nnz]
            indices = grown_indices
            grown_values = np.empty(capacity, dtype=np.float64)
            grown_values[:nnz] = values[:nnz]
            values = grown_values
        order = np.argsort(columns)
        row_start = nnz
        i = 0
        while i < n_found:
            column = columns[order[i]]
            total = 0.0
            while i < n_found and columns[order[i]] == column:
                total += signs[order[i]]
                i += 1
            value = total
            if BINARY:
                value = 1.0
            if SUBLINEAR_TF:
                value = np.log(value) + 1.0
            if USE_IDF:
                value = value * idf[column]
            indices[nnz] = column
            values[nnz] = value
            nnz += 1
        if NORM is not None:
            norm = 0.0
            for j in range(row_start, nnz):
                if NORM == "l2":
                    norm += values[j] * values[j]
                else:
                    norm += abs(values[j])
            if norm != 0.0:
                if NORM == "l2":
                    norm = np.sqrt(norm)
                for j in range(row_start, nnz):
                    values[j] = values[j] / norm
        indptr[row + 1] = nnz
    return indptr, indices[:nnz], values[:nnz]


def add_row_scores(code_points, offsets, row, char_class, vocabulary, stop_words, feature_rows, scores):
    """Add one vectorizer's contribution for ``row`` to ``scores``: sum of weight x coefficient.

    ``feature_rows[j]`` is ``[idf_j, coef_j...]`` for this vectorizer's column ``j`` (its ``hstack``
    block of the transposed coefficients), so weighting and scoring a feature reads one cache line.
    N-grams are counted in a small open-addressing set sized for the row (it stays in L1 cache
    and costs nothing to allocate for short rows, unlike a scratch vector of n_features).
    """
    start = offsets[row]
    end = offsets[row + 1]
    if ANALYZER == "word":
        text, span_starts, span_ends = word_spans(
            code_points, start, end, char_class, MIN_TOKEN_LENGTH, stop_words, MIN_N, MAX_N
        )
    elif ANALYZER == "char":
        text, span_starts, span_ends = char_spans(code_points, start, end, char_class, MIN_N, MAX_N)
    else:
        text, span_starts, span_ends = char_wb_spans(code_points, start, end, char_class, MIN_N, MAX_N)
    if HASHING:
        columns, signs = hash_spans(text, span_starts, span_ends, N_FEATURES, ALTERNATE_SIGN)
    else:
        columns = lookup_spans(vocabulary, text, span_starts, span_ends)
    n_found = columns.shape[0]
    distinct = np.empty(n_found, dtype=np.int64)
    values = np.zeros(n_found)
    n_distinct = 0
    size = 16
    while size < 2 * n_found:
        size *= 2
    set_columns = np.full(size, -1, dtype=np.int64)
    set_positions = np.empty(size, dtype=np.int64)
    for i in range(n_found):
        column = columns[i]
        h = (column * 2654435761) & (size - 1)
        while set_columns[h] >= 0 and set_columns[h] != column:
            h = (h + 1) & (size - 1)
        if set_columns[h] < 0:
            set_columns[h] = column
            set_positions[h] = n_distinct
            distinct[n_distinct] = column
            n_distinct += 1
        p = set_positions[h]
        if HASHING:
            values[p] += signs[i]
        else:
            values[p] += 1.0
    norm = 0.0
    for p in range(n_distinct):
        value = values[p]
        if BINARY:
            value = 1.0
        if SUBLINEAR_TF:
            value = np.log(value) + 1.0
        if USE_IDF:
            value = value * feature_rows[distinct[p], 0]
        values[p] = value
        if NORM == "l2":
            norm += value * value
        elif NORM == "l1":
            norm += abs(value)
    if NORM == "l2" and norm != 0.0:
        norm = np.sqrt(norm)
    if norm == 0.0:
        norm = 1.0
    n_outputs = scores.shape[0]
    for p in range(n_distinct):
        column = distinct[p]
        weight = values[p] / norm if NORM is not None else values[p]
        for k in range(n_outputs):
            scores[k] += weight * feature_rows[column, 1 + k]


def fused_rows(n_chunks):
    """Rows of raw text straight to model outputs; ``n_chunks`` chunks of rows run in parallel.

    ``ADD_SCORES`` stands for one statement per vectorizer, and the
    parameters are completed by :mod:`willow.compiler.lowering.fused`.
    """
    n_rows = offsets_0.shape[0] - 1
    scores = np.empty((n_rows, n_outputs))
    for chunk in numba.prange(n_chunks):
        first = chunk * n_rows // n_chunks
        last = (chunk + 1) * n_rows // n_chunks
        row_scores = np.empty(n_outputs)
        for row in range(first, last):
            for k in range(n_outputs):
                row_scores[k] = intercept[k]
            ADD_SCORES  # noqa: B018
            for k in range(n_outputs):
                scores[row, k] = row_scores[k]
    return HEAD(scores)
