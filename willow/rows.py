"""Row operations on every container a pipeline may pass around.

Cascades need to count, select and shuffle the rows of whatever a pipeline's statements produce:
numpy arrays (object arrays of strings included), scipy.sparse matrices and arrays (any format),
pandas DataFrames, Series (any index), Index objects and extension arrays (``StringArray``,
``ArrowStringArray``, ``Categorical``, nullable ``Int64``/``boolean``...: what ``df[col].values``
gives under pandas 3), pyarrow ``Array``/``ChunkedArray``, and plain lists or tuples. Each
operation here keeps the container's type and format so that downstream statements see exactly
what they would have seen on a smaller batch.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from willow.errors import WillowError

__all__ = ["n_rows", "take_rows", "permute_rows", "supports_rows", "SUPPORTED"]

SUPPORTED = (
    "a list, tuple, numpy array, scipy.sparse matrix, pandas DataFrame, Series, Index or extension "
    "array, or pyarrow Array or ChunkedArray"
)
"""The row containers, as error messages name them."""

_PANDAS_ROWS = (pd.DataFrame, pd.Series, pd.Index, pd.api.extensions.ExtensionArray)


def _arrow(obj: Any) -> bool:
    """Whether ``obj`` is a pyarrow ``Array`` or ``ChunkedArray`` (pyarrow is only looked at when
    something already imported it: otherwise no object can be one)."""
    pa = sys.modules.get("pyarrow")
    return pa is not None and isinstance(obj, (pa.Array, pa.ChunkedArray))


def supports_rows(obj: Any) -> bool:
    """Whether ``obj`` is a container whose rows willow can count and select."""
    if isinstance(obj, np.ndarray):
        return obj.ndim >= 1
    return isinstance(obj, (*_PANDAS_ROWS, list, tuple)) or sp.issparse(obj) or _arrow(obj)


def n_rows(obj: Any) -> int:
    """Number of rows (first axis) of ``obj``.

    Raises ``TypeError`` for objects without rows (scalars, 0-d arrays, dicts, iterators).
    """
    if isinstance(obj, np.ndarray):
        if obj.ndim == 0:
            raise TypeError("Expected an array with at least one dimension, got a 0-d array.")
        return int(obj.shape[0])
    if sp.issparse(obj):
        return int(obj.shape[0])
    if isinstance(obj, (*_PANDAS_ROWS, list, tuple)) or _arrow(obj):
        return len(obj)
    raise TypeError(
        f"Expected rows as {SUPPORTED}, got {type(obj).__name__}. Convert the input to one of these types."
    )


def _positional_index(index: pd.Index, n: int) -> bool:
    """True for the default index ``RangeIndex(n)``, which a freshly built frame would also get."""
    return isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1 and len(index) == n


def take_rows(obj: Any, rows: np.ndarray) -> Any:
    """Select ``rows`` (integer positions) of ``obj``, keeping its type and sparse format.

    pandas objects keep their index labels, except that a default positional index
    (``RangeIndex(n)``) stays positional (``RangeIndex(len(rows))``): that is the index the same
    object would have had if it had been built from the selected rows alone, so frames built
    inside the pipeline keep aligning with each other in ``pandas.concat``.
    """
    rows = np.asarray(rows, dtype=np.intp)
    if isinstance(obj, np.ndarray):
        return obj[rows]
    if sp.issparse(obj):
        fmt = obj.format
        if fmt in ("csr", "csc", "lil"):
            return obj[rows]
        return obj.tocsr()[rows].asformat(fmt)
    if isinstance(obj, (pd.DataFrame, pd.Series)):
        selected = obj.iloc[rows]
        if _positional_index(obj.index, len(obj)):
            selected = selected.reset_index(drop=True)
        return selected
    if isinstance(obj, (pd.Index, pd.api.extensions.ExtensionArray)):
        return obj.take(rows)  # positions (no labels to keep); keeps the array's type and dtype
    if _arrow(obj):
        return obj.take(rows)  # an Array stays an Array, a ChunkedArray a ChunkedArray
    if isinstance(obj, list):
        return [obj[i] for i in rows]
    if isinstance(obj, tuple):
        return tuple(obj[i] for i in rows)
    raise WillowError(f"Cannot select rows of a {type(obj).__name__}; expected {SUPPORTED}.")


def permute_rows(obj: Any, permutation: np.ndarray) -> Any:
    """Shuffle the rows of ``obj`` by ``permutation`` while keeping its row labels in place.

    pandas objects keep their original index in the original order and only their values move:
    otherwise ``pandas.concat(axis=1)`` would realign the shuffled rows back on the index and undo
    the permutation.
    """
    permuted = take_rows(obj, permutation)
    if isinstance(obj, (pd.DataFrame, pd.Series)):
        permuted = permuted.set_axis(obj.index, axis=0)
    return permuted
