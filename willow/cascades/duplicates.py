"""Which calibration rows hold identical inputs (oversampled data, repeated messages).

Two rows are duplicates when every row argument holds the same values in both: the same text,
the same numbers (NaN equal to NaN, -0.0 equal to 0.0), the same sparse entries, the same frame
row. :func:`row_groups` numbers the distinct inputs so that the calibration split can keep all
copies of one input in the same part: a copy of a holdout row in train or tune would make the
holdout proof optimistic (the approximate model has seen that very input).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["row_groups"]


def row_groups(values: Sequence[Any], n: int) -> np.ndarray:
    """A group number per row, numbered in order of first occurrence (distinct rows get
    ``0, 1, 2, ...``): rows share a number exactly when every value in ``values`` (the call's row
    arguments, each with ``n`` rows) holds identical inputs in them."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    columns = [_distinct_ids(value, n) for value in values]
    if not columns:
        return np.arange(n, dtype=np.int64)
    _, first, inverse = np.unique(np.column_stack(columns), axis=0, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.reshape(-1)]


def _distinct_ids(value: Any, n: int) -> np.ndarray:
    """Per row, a number that is equal exactly for rows holding identical values."""
    import pandas as pd
    import scipy.sparse as sp

    if isinstance(value, np.ndarray) and value.dtype.kind in "biufcmM?":
        rows = np.ascontiguousarray(value.reshape(n, -1))
        if rows.dtype.kind in "fc":
            rows = np.where(np.isnan(rows), np.nan, rows) + 0  # one NaN, and -0.0 -> 0.0
            rows = np.ascontiguousarray(rows)
        as_bytes = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1])))
        _, inverse = np.unique(as_bytes.reshape(-1), return_inverse=True)
        return inverse.reshape(-1).astype(np.int64)
    if isinstance(value, (pd.DataFrame, pd.Series)):
        frame = value.to_frame() if isinstance(value, pd.Series) else value
        keys = zip(*(frame.iloc[:, j].tolist() for j in range(frame.shape[1])), strict=True)
        return _number(((tuple(_key(v) for v in row)) for row in keys), n)
    if sp.issparse(value):
        csr = sp.csr_matrix(value, copy=True)
        csr.sum_duplicates()
        csr.eliminate_zeros()
        csr.sort_indices()
        data = np.where(np.isnan(csr.data), np.nan, csr.data) + 0 if csr.data.dtype.kind == "f" else csr.data
        return _number(
            (
                csr.indices[csr.indptr[i] : csr.indptr[i + 1]].tobytes()
                + b"|"
                + data[csr.indptr[i] : csr.indptr[i + 1]].tobytes()
                for i in range(n)
            ),
            n,
        )
    if isinstance(value, np.ndarray):  # object or string arrays
        if value.ndim == 1:
            return _number((_key(v) for v in value.tolist()), n)
        return _number((tuple(_key(v) for v in row) for row in value.reshape(n, -1).tolist()), n)
    return _number((_key(v) for v in value), n)


def _number(keys: Any, n: int) -> np.ndarray:
    seen: dict[Any, int] = {}
    ids = np.fromiter((seen.setdefault(k, len(seen)) for k in keys), dtype=np.int64, count=n)
    return ids


def _key(value: Any) -> Any:
    """A hashable stand-in for one cell, equal for equal values (all NaNs alike)."""
    if isinstance(value, (float, np.floating)):
        return ("float", "nan") if math.isnan(value) else ("float", float(value) + 0.0)
    if value is None or isinstance(value, (str, bytes, bool, int, np.integer, np.bool_)):
        return (type(value).__name__, value)
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_key(v) for v in value))
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape, tuple(_key(v) for v in value.ravel().tolist()))
    try:
        hash(value)
    except TypeError:
        return (type(value).__name__, repr(value))
    return (type(value).__name__, value)
