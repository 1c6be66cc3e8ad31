"""``DictVectorizer.transform(frame.to_dict(orient="records"))`` without the records.

Willump's price pipeline (and much feature code like it) turns a few frame columns into one dict
per row only to feed a fitted ``DictVectorizer``: building the dicts and walking them costs more
than the vectorizing. The front end (:mod:`willow.frontend.records`) rewrites that pair of
statements into one call of :class:`FrameRecordsVectorizer`, whose ``transform(frame)`` is *by
definition* the two original steps (it runs them), and this module lowers that call to a
column-wise operator: each numeric column is one feature of the fitted vocabulary (its values
converted as ``DictVectorizer`` converts them), each string column a lookup of
``"<column><separator><value>"`` in the vocabulary, and the CSR matrix is assembled row by row in
column order, as scikit-learn assembles it (explicit zeros and NaN kept, indices sorted, the
same sparse container), so the result is identical.

Handled column-wise: a ``pandas.DataFrame`` of 1+ rows with unique column labels (after the
column selection), whose columns are numpy bool/int/uint/float columns or all-``str`` object or
pandas string columns, and a vectorizer with a floating ``dtype``. Anything else (0 rows, missing
strings, categorical or nullable extension columns, another container) runs the original two
steps, so values, warnings and errors are scikit-learn's and pandas' own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction import DictVectorizer

from willow.compiler.lowering.base import CompiledOperator, NotLowerable

__all__ = ["FrameRecordsVectorizer", "lower_frame_records", "RECORDS_LOWERINGS"]


class FrameRecordsVectorizer:
    """``vectorizer.transform(frame[columns].to_dict(orient="records"))`` as one call.

    ``columns`` is the column selection the function made before ``to_dict`` (``None``: the
    whole frame). The front end binds one of these in place of the two statements; calling
    :meth:`transform` runs exactly those statements.
    """

    def __init__(self, vectorizer: Any, columns: Sequence[Any] | None = None) -> None:
        self.vectorizer = vectorizer
        self.columns = None if columns is None else list(columns)

    def transform(self, frame: Any) -> Any:
        """What the original statements compute for ``frame``."""
        if self.columns is not None:
            frame = frame[self.columns]
        return self.vectorizer.transform(frame.to_dict(orient="records"))

    def __repr__(self) -> str:
        selection = "" if self.columns is None else f"[{self.columns!r}]"
        return (
            f"FrameRecordsVectorizer({type(self.vectorizer).__name__}, frame{selection}.to_dict('records'))"
        )


def _align(matrix: Any) -> Any:
    """The sparse container scikit-learn returns (its ``_align_api_if_sparse``, where it has one)."""
    try:
        from sklearn.utils._sparse import _align_api_if_sparse
    except ImportError:  # an older scikit-learn returns what it built
        return matrix
    return _align_api_if_sparse(matrix)


def lower_frame_records(wrapper: Any, method: str) -> CompiledOperator:
    """Compile ``FrameRecordsVectorizer.transform`` column-wise; see the module docstring."""
    if method != "transform":
        raise NotLowerable(f"FrameRecordsVectorizer.{method} is not compiled; only transform is.")
    vectorizer = wrapper.vectorizer
    if type(vectorizer) is not DictVectorizer:
        raise NotLowerable(
            f"Only scikit-learn's own DictVectorizer is compiled over frame records, not "
            f"{type(vectorizer).__name__}."
        )
    if not hasattr(vectorizer, "vocabulary_"):
        raise NotLowerable("The DictVectorizer is not fitted.")
    dtype = np.dtype(vectorizer.dtype)
    if dtype.kind != "f":
        raise NotLowerable(
            f"DictVectorizer(dtype={dtype.name}) is not compiled: only floating dtypes, where "
            "missing values stay NaN as in scikit-learn."
        )
    vocabulary: dict[Any, int] = dict(vectorizer.vocabulary_)
    separator = vectorizer.separator
    width = len(vectorizer.feature_names_)
    sparse = bool(vectorizer.sparse)
    selection = wrapper.columns
    string_features: dict[Any, dict[str, int]] = {}  # per column label: value -> feature index

    def strings_of(label: Any) -> dict[str, int]:
        found = string_features.get(label)
        if found is None:
            prefix = "%s%s" % (label, separator)  # noqa: UP031 - scikit-learn's own formatting
            found = {
                name[len(prefix) :]: index
                for name, index in vocabulary.items()
                if isinstance(name, str) and name.startswith(prefix)
            }
            string_features[label] = found
        return found

    def column_features(label: Any, column: pd.Series) -> tuple[np.ndarray, np.ndarray] | None:
        """(feature index per row, -1 where none; value per row) or None to run the original."""
        kind = column.dtype.kind if isinstance(column.dtype, np.dtype) else None
        n = column.shape[0]
        if kind in ("b", "i", "u", "f"):
            index = vocabulary.get(label, -1)
            values = column.to_numpy()
            if kind in ("i", "u") and dtype != np.float64:
                values = values.astype(np.float64)  # a Python int becomes dtype(v) through a double
            return np.full(n, index, dtype=np.int64), values.astype(dtype)
        if kind == "O" or isinstance(column.dtype, pd.StringDtype):
            objects = column.to_numpy(dtype=object)
            if not all(type(v) is str for v in objects):
                return None  # missing values and other objects: the original's own handling
            lookup = strings_of(label)
            indexes = np.fromiter((lookup.get(v, -1) for v in objects), dtype=np.int64, count=n)
            return indexes, np.ones(n, dtype=dtype)
        return None

    def transform(frame: Any) -> Any:
        if type(frame) is not pd.DataFrame or frame.shape[0] == 0:
            return wrapper.transform(frame)
        if not frame.columns.is_unique:
            return wrapper.transform(frame)  # to_dict would keep one of the same-named columns
        if selection is not None and (
            len(set(selection)) != len(selection) or not all(label in frame.columns for label in selection)
        ):
            return wrapper.transform(frame)  # pandas' own KeyError, or repeated columns
        labels = list(frame.columns) if selection is None else selection
        indexes, values = [], []
        for label in labels:
            found = column_features(label, frame[label])
            if found is None:
                return wrapper.transform(frame)
            indexes.append(found[0])
            values.append(found[1])
        n = frame.shape[0]
        if labels:
            index = np.column_stack(indexes)
            value = np.column_stack(values)
        else:
            index = np.empty((n, 0), dtype=np.int64)
            value = np.empty((n, 0), dtype=dtype)
        known = index >= 0
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(known.sum(axis=1), out=indptr[1:])
        matrix = sp.csr_array(
            (value[known], index[known].astype(np.intc), indptr), shape=(n, width), dtype=dtype
        )
        if sparse:
            matrix.sort_indices()
        else:
            matrix = matrix.toarray()
        return _align(matrix)

    columns = "every column" if selection is None else f"columns {selection!r}"
    source = (
        f"# DictVectorizer.transform(frame.to_dict(orient='records')) over {columns}, compiled "
        "without generated code and without building the records.\n"
        f"# {width} features: a numeric column is its own feature, a string column the feature "
        f"'<column>{separator}<value>' (unseen values dropped); output "
        f"{'CSR (sorted indices)' if sparse else 'dense'} of {dtype.name}.\n"
        "# 0 rows, missing strings, other column types or containers run the original statements.\n"
    )
    return CompiledOperator(
        name="DictVectorizer.transform(records)", source=source, function=transform, generated=False
    )


RECORDS_LOWERINGS = {FrameRecordsVectorizer: lower_frame_records}
