"""Kernel templates for text vectorizers (specialised by :func:`astgen.specialize`, never called).

The UPPER_CASE names below are the compile-time options each template is specialised on; their
placeholder values here only keep the module importable. ``ANALYZER`` is ``"word"``, ``"char"`` or
``"char_wb"``; ``NORM`` is ``"l1"``, ``"l2"`` or ``None``; ``HASHING`` selects feature hashing
(HashingVectorizer) over a fitted vocabulary.
"""

# ruff: noqa: F821, F841, B007 - the helpers are imported by the generated module, not here, and
# the statement slots (LONGEST, ADD_SCORES) are what reads the loop variables and scratch arrays.
from __future__ import annotations

import numpy as np

ANALYZER = MIN_N = MAX_N = MIN_TOKEN_LENGTH = TOKEN_PREFIX = None
HASHING = N_FEATURES = ALTERNATE_SIGN = None
BINARY = SUBLINEAR_TF = USE_IDF = NORM = None
ADD_SCORES = LONGEST = HEAD = None  # statement slots and the head, filled by fused.py
MAX_SIZES = None  # most n-gram sizes of any fused vectorizer


def transform_rows(code_points, offsets, char_class, vocabulary, stop_words, idf):
    """CSR ``(indptr, indices, values)`` of sklearn's ``transform``: sorted columns per row.

    The per-row scratch (text buffer, token and span arrays, keys, columns) is allocated once per
    call, sized for the longest row: a short document would otherwise pay more for its half-dozen
    allocations than for its n-gram lookups. Columns are sorted in place (for feature hashing with
    the sign in the low bit), so equal columns are adjacent and counted in one pass.
    """
    n_rows = offsets.shape[0] - 1
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    capacity = 64
    indices = np.empty(capacity, dtype=np.int64)
    values = np.empty(capacity, dtype=np.float64)
    nnz = 0
    longest = 0
    for row in range(n_rows):
        longest = max(longest, offsets[row + 1] - offsets[row])
    n_spans_max = span_capacity(longest, MAX_N - MIN_N + 1)
    buf = np.empty(3 * longest + 2, dtype=np.uint32)
    tokens = np.empty(2 * (longest + 1), dtype=np.int64)
    span_starts = np.empty(n_spans_max, dtype=np.int64)
    span_ends = np.empty(n_spans_max, dtype=np.int64)
    keys = np.empty(n_spans_max, dtype=np.uint64)
    columns = np.empty(n_spans_max, dtype=np.int64)
    utf8 = np.empty(4 * (3 * longest + 2), dtype=np.uint8)
    sign_bits = 1 if HASHING else 0  # hashed columns carry their sign in the low bit
    for row in range(n_rows):
        start = offsets[row]
        end = offsets[row + 1]
        if ANALYZER == "word":
            n_spans = word_spans_into(
                code_points, start, end, char_class, MIN_TOKEN_LENGTH, TOKEN_PREFIX, stop_words, MIN_N, MAX_N,
                buf, tokens[: longest + 1], tokens[longest + 1 :], span_starts, span_ends,
            )  # fmt: skip
        elif ANALYZER == "char":
            n_spans = char_spans_into(
                code_points, start, end, char_class, MIN_N, MAX_N, buf, span_starts, span_ends
            )
        else:
            n_spans = char_wb_spans_into(
                code_points, start, end, char_class, MIN_N, MAX_N, buf, span_starts, span_ends
            )
        if HASHING:
            n_found = hash_spans_into(
                buf, span_starts, span_ends, n_spans, N_FEATURES, ALTERNATE_SIGN, utf8, columns
            )
        else:
            n_found = lookup_columns_into(vocabulary, buf, span_starts, span_ends, n_spans, keys, columns)
        if nnz + n_found > capacity:
            capacity = max(2 * capacity, nnz + n_found)
            grown_indices = np.empty(capacity, dtype=np.int64)
            grown_indices[:nnz] = indices[:nnz]
            indices = grown_indices
            grown_values = np.empty(capacity, dtype=np.float64)
            grown_values[:nnz] = values[:nnz]
            values = grown_values
        sort_prefix(columns, n_found)
        row_start = nnz
        i = 0
        while i < n_found:
            column = columns[i] >> sign_bits
            total = 0.0
            while i < n_found and columns[i] >> sign_bits == column:
                total += -1.0 if columns[i] & sign_bits else 1.0
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


def add_row_scores(
    code_points,
    start,
    end,
    char_class,
    vocabulary,
    weights,
    stop_words,
    longest,
    buf,
    work,
    keys,
    counts,
    scores,
):
    """Add one vectorizer's contribution for the document ``code_points[start:end]`` to ``scores``:
    sum of weight x coefficient.

    ``weights[slot]`` is ``[idf, coef...]`` of the vocabulary term in ``slot`` (for feature
    hashing: ``[1, coef...]`` per column), so scoring an n-gram reads one cache line. N-grams are
    counted in an open-addressing set sized for the row; ``buf``, ``work``, ``keys`` and ``counts``
    are the call's scratch, sized by :func:`scratch_size` for rows of at most ``longest`` code
    points.
    """
    capacity = span_capacity(longest, MAX_N - MIN_N + 1)
    base = 2 * longest + 2
    span_starts = work[base : base + capacity]
    span_ends = work[base + capacity : base + 2 * capacity]
    found = work[base + 2 * capacity : base + 3 * capacity]
    distinct = work[base + 3 * capacity : base + 4 * capacity]
    set_slots = work[base + 4 * capacity :]
    if ANALYZER == "word":
        n_spans = word_spans_into(
            code_points, start, end, char_class, MIN_TOKEN_LENGTH, TOKEN_PREFIX, stop_words, MIN_N, MAX_N,
            buf, work[: longest + 1], work[longest + 1 : base], span_starts, span_ends,
        )  # fmt: skip
    elif ANALYZER == "char":
        n_spans = char_spans_into(
            code_points, start, end, char_class, MIN_N, MAX_N, buf, span_starts, span_ends
        )
    else:
        n_spans = char_wb_spans_into(
            code_points, start, end, char_class, MIN_N, MAX_N, buf, span_starts, span_ends
        )
    if HASHING:
        columns, signs = hash_spans(
            buf, span_starts[:n_spans], span_ends[:n_spans], N_FEATURES, ALTERNATE_SIGN
        )
        n_found = n_spans
        found[:n_found] = columns
    else:
        n_found = lookup_slots_into(vocabulary, buf, span_starts, span_ends, n_spans, keys, found)
    size = set_capacity(n_found)
    set_slots[:size] = -1
    n_distinct = 0
    mask = size - 1
    for i in range(n_found):
        slot = found[i]
        count = signs[i] if HASHING else 1.0
        h = (slot * 2654435761) & mask
        while True:
            stored = set_slots[h]
            if stored == slot:
                counts[h] += count
                break
            if stored < 0:
                set_slots[h] = slot
                counts[h] = count
                distinct[n_distinct] = h
                n_distinct += 1
                break
            h = (h + 1) & mask
    norm = 0.0
    for p in range(n_distinct):
        h = distinct[p]
        value = counts[h]
        if BINARY:
            value = 1.0
        if SUBLINEAR_TF:
            value = np.log(value) + 1.0
        if USE_IDF:
            value = value * weights[set_slots[h], 0]
        counts[h] = value
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
        h = distinct[p]
        slot = set_slots[h]
        weight = counts[h] / norm if NORM is not None else counts[h]
        for k in range(n_outputs):
            scores[k] += weight * weights[slot, 1 + k]


def fused_rows():
    """Rows of raw text straight to model outputs (large batches call this on chunks of rows in
    several threads, see :mod:`willow.compiler.lowering.chunks`).

    ``LONGEST`` stands for one statement per document group that raises ``longest`` to the row's
    length, ``ADD_SCORES`` for one statement per vectorizer; the parameters are completed by
    :mod:`willow.compiler.lowering.fused`. Empty ``offsets`` mean one row: the whole buffer (a
    single text needs no offsets array built in Python). Scratch is allocated once per call.
    """
    n_rows = max(offsets_0.shape[0] - 1, 1)
    n_outputs = intercept.shape[0]
    scores = np.empty((n_rows, n_outputs))
    longest = 0
    for row in range(n_rows):
        LONGEST  # noqa: B018
    capacity = span_capacity(longest, MAX_SIZES)
    buf = np.empty(3 * longest + 2, dtype=np.uint32)
    work = np.empty(scratch_size(longest, MAX_SIZES), dtype=np.int64)
    keys = np.empty(capacity, dtype=np.uint64)
    counts = np.empty(set_capacity(capacity))
    row_scores = np.empty(n_outputs)
    for row in range(n_rows):
        for k in range(n_outputs):
            row_scores[k] = intercept[k]
        ADD_SCORES  # noqa: B018
        for k in range(n_outputs):
            scores[row, k] = row_scores[k]
    return HEAD(scores)
