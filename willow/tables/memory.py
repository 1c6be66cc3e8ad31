"""MemoryTable: a feature table held in this process (the embedded default)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from willow.tables.base import FeatureTable, TableSchema, as_float_frame, check_keys

__all__ = ["MemoryTable"]


class MemoryTable(FeatureTable):
    """A feature table in memory: a float64 copy of ``frame`` looked up by its index.

    ``lookup(keys)`` equals ``frame.astype("float64").reindex(keys)``; it takes rows from one
    float64 array by the index's hash positions, without pandas' per-column reindexing. Picklable
    (it is its data), so it also serves as the ``fallback`` of a :class:`RedisTable`.
    """

    def __init__(self, frame: pd.DataFrame) -> None:
        data = as_float_frame(frame, "MemoryTable")
        self.schema = TableSchema.of(data)
        self._index = data.index
        self._values = np.ascontiguousarray(data.to_numpy(dtype=np.float64))

    @property
    def columns(self) -> tuple[str, ...]:
        return self.schema.columns

    def __len__(self) -> int:
        return len(self._index)

    def lookup(self, keys: Sequence[Any] | np.ndarray | pd.Series | pd.Index) -> pd.DataFrame:
        """One float64 row per key, in order; NaN rows for keys not in the table."""
        new_index, indexer = self._index.reindex(check_keys(keys))
        if indexer is None:  # the keys are the table's own index, in order
            values = self._values.copy()
        else:
            values = self._values.take(indexer, axis=0, mode="clip") if len(self._index) else None
            if values is None:
                values = np.full((len(indexer), len(self.columns)), np.nan)
            else:
                values[indexer < 0] = np.nan
        return pd.DataFrame(values, index=new_index, columns=self.schema.column_index, copy=False)

    def to_frame(self) -> pd.DataFrame:
        """The whole table as a float64 DataFrame (what :meth:`RedisTable.load` writes)."""
        return pd.DataFrame(self._values.copy(), index=self._index.copy(), columns=list(self.columns))

    def __repr__(self) -> str:
        return f"MemoryTable({len(self)} keys x {len(self.columns)} columns)"
