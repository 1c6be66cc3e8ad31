"""What every feature table shares: the ``lookup`` contract, the stored schema, key handling.

A feature table maps a key (a user id, a movie id) to one row of numeric features. Pipelines
call ``table.lookup(keys)`` where they would call ``frame.reindex(keys)`` on a pandas frame, and
get the same frame back, whichever table serves it:

- one row per key, in the order given (duplicates repeated), index built from the keys exactly
  as ``frame.reindex(keys)`` builds it (a Series' or Index's name, otherwise the table's index
  name; ``[]`` gives an empty index of the table's key dtype);
- the table's columns in their stored order, **always float64**: a key that is not in the table
  gives a row of NaN. ``reindex`` itself upcasts an integer column to float only when some key is
  missing, so its dtypes depend on the batch; a table stores every column as float64 so that the
  dtypes never do. Integers above 2**53 lose precision and non-numeric columns are refused.

The rule makes a table's lookup equal ``frame.astype("float64").reindex(keys)`` cell for cell,
which is what the tests check for every table.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from willow.errors import TableError

__all__ = ["FeatureTable", "TableSchema", "as_float_frame", "lookup_index"]


@dataclass(frozen=True)
class TableSchema:
    """A table's columns, its key dtype and its index name (what a lookup's result needs)."""

    columns: tuple[str, ...]
    key_dtype: str
    index_name: Any = None

    def to_json(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "key_dtype": self.key_dtype, "index_name": self.index_name}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TableSchema:
        return cls(tuple(data["columns"]), str(data["key_dtype"]), data.get("index_name"))

    @cached_property
    def numeric_keys(self) -> bool:
        """Whether the keys are numbers (then string keys never match, as in ``reindex``)."""
        return bool(pd.api.types.is_numeric_dtype(pd.Index([], dtype=self.key_dtype)))

    @cached_property
    def column_index(self) -> pd.Index:
        """The columns as one shared pandas Index (building it per lookup costs more than a
        small lookup itself)."""
        return pd.Index(self.columns)

    @classmethod
    def of(cls, frame: pd.DataFrame) -> TableSchema:
        return cls(tuple(str(c) for c in frame.columns), str(frame.index.dtype), frame.index.name)


def as_float_frame(frame: pd.DataFrame, what: str = "table") -> pd.DataFrame:
    """``frame`` with every column as float64, after checking it can be a feature table."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(
            f"A {what} is built from a pandas DataFrame indexed by key; got {type(frame).__name__}."
        )
    if isinstance(frame.index, pd.MultiIndex):
        raise TableError(f"A {what} needs a single-level key index; got a MultiIndex {frame.index.names}.")
    if not frame.index.is_unique:
        dupes = frame.index[frame.index.duplicated()].unique()[:5].tolist()
        raise TableError(
            f"A {what}'s index holds one row per key; keys {dupes} appear more than once. "
            "Aggregate or drop_duplicates the frame before building the table."
        )
    if len(set(map(str, frame.columns))) != frame.shape[1]:
        raise TableError(f"A {what}'s column names must be distinct as strings; got {list(frame.columns)}.")
    bad = [
        c
        for c in frame.columns
        if not (pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]))
    ]
    if bad:
        raise TableError(
            f"A {what} stores numeric features as float64; columns {bad} are not numeric "
            f"({[str(frame[c].dtype) for c in bad]}). Encode them as numbers (one-hot, codes) first."
        )
    out = frame.astype("float64")
    out.columns = [str(c) for c in frame.columns]
    return out


_EMPTY_INDEXES: dict[tuple[str, Any], pd.Index] = {}


def lookup_index(keys: Any, schema: TableSchema) -> pd.Index:
    """The index ``frame.reindex(keys)`` gives a frame with ``schema``'s key dtype and index name.

    Built by reindexing an empty index of that dtype and name, so that every pandas rule (a
    Series' name wins, ``[]`` keeps the key dtype, float keys give a float index) is pandas' own.
    """
    keys = check_keys(keys)
    if (
        isinstance(keys, (pd.Series, pd.Index, np.ndarray))
        and len(keys)
        and str(keys.dtype) == schema.key_dtype
    ):
        # What reindex returns for non-empty keys of the table's own dtype, without its hashing.
        name = keys.name if isinstance(keys, (pd.Series, pd.Index)) else schema.index_name
        return pd.Index(np.asarray(keys), name=name)
    cache_key = (schema.key_dtype, schema.index_name)
    empty = _EMPTY_INDEXES.get(cache_key)
    if empty is None:
        empty = pd.Index([], dtype=schema.key_dtype, name=schema.index_name)
        _EMPTY_INDEXES[cache_key] = empty
    return empty.reindex(keys)[0]


def check_keys(keys: Any) -> Any:
    """``keys`` if it is a one-dimensional list, tuple, array, Series or Index (TypeError otherwise)."""
    if isinstance(keys, (pd.Series, pd.Index, list, tuple)):
        return keys
    if isinstance(keys, np.ndarray):
        if keys.ndim != 1:
            raise TypeError(f"Table keys must be one-dimensional; got an array of shape {keys.shape}.")
        return keys
    if isinstance(keys, pd.DataFrame):
        raise TypeError("Table keys must be one column: pass frame['key'], not a DataFrame.")
    raise TypeError(
        f"Table keys must be a list, numpy array, pandas Series or Index; got {type(keys).__name__}."
    )


class FeatureTable(ABC):
    """A keyed table of numeric features answering ``lookup(keys) -> DataFrame`` (see the module)."""

    @property
    @abstractmethod
    def columns(self) -> tuple[str, ...]:
        """The table's columns, in the order every lookup returns them."""

    @abstractmethod
    def lookup(self, keys: Sequence[Any] | np.ndarray | pd.Series | pd.Index) -> pd.DataFrame:
        """One float64 row per key, in order; NaN rows for keys not in the table."""
