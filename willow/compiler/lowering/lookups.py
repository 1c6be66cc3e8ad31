"""Key lookups into fitted tables: ``reindex``, ``.loc[...]``, ``Series.map`` and left merges.

A pipeline often joins per-key feature tables onto its rows::

    stats = user_table.reindex(rows["userId"]).to_numpy(dtype=float)
    rate = rows["city"].map(city_rates).to_numpy(dtype=float)
    tags = rows[["movieId"]].merge(tag_table, how="left", left_on="movieId",
                                   right_index=True).drop(columns="movieId").to_numpy(dtype=float)
    joined = rows.merge(stats, how="left", on="movieId").to_numpy(dtype=float)

A merge's result layout (the left frame's columns, then the table's, with pandas' ``_x``/``_y``
suffixes, less those dropped) is read from pandas' own merge of the two frames' empty slices at
calibration; a call whose left frame has other columns runs pandas. Kept left columns must be
numeric numpy columns (converted at call time as pandas converts them), else pandas runs.

When the table is a fitted object (a global or closure ``DataFrame``, ``Series`` or ``dict``),
:func:`match_lookup` recognises such an expression and returns a :class:`Lookup`: the table's
values as one float64 array, built once, and :meth:`KeyIndex.rows` which turns the call's keys
into row positions (``-1`` for a missing key). The gather itself runs in the generated kernel of
:mod:`willow.compiler.lowering.arithmetic`, which writes NaN for a missing key.

Only results converted to float64 (``.to_numpy(dtype=float)``, ``np.asarray(..., dtype=float)``,
or ``.to_numpy()``/``.values`` of an all-float64 table) are lowered: pandas' own result dtype
depends on the values (int columns become float64 only when a key is missing), but after the
float conversion it is always float64 with NaN exactly where a key is missing.

The table is read once, at calibration: the serving function checks that the same table object
is still bound to its name (otherwise it runs the original function), and a loaded plan checks
its content, but a table changed *in place* after calibration (``table.loc[k] = ...``,
``rates[key] = ...``) needs a new calibration.

Row positions come from the table index's own ``get_indexer`` (pandas' matching: NaN keys match a
NaN label, ``1`` matches ``1.0``), except for integer keys into an integer index spanning at most
:data:`DENSE_SPAN` values, which go through a dense position array in a Numba loop.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np
import pandas as pd
from numba import types

from willow.compiler.kernel_cache import harden_module
from willow.compiler.lowering.base import NotLowerable
from willow.compiler.lowering.signatures import compile_locked, readonly_array

__all__ = [
    "DENSE_SPAN",
    "KeyIndex",
    "Lookup",
    "match_lookup",
    "unwrap_float",
    "dense_rows",
    "dense_rows_kernel",
]

DENSE_SPAN = 1 << 21
"""Largest ``max(label) - min(label) + 1`` of an integer index served by a dense position array
(8 bytes per slot: 16 MiB at most)."""

SMALL_STRING_BATCH = 256
"""Up to this many string keys go through a Python ``dict``; larger batches of pyarrow-backed
strings (pandas 3's default ``str``) use ``pyarrow.compute.index_in`` (byte equality of UTF-8
strings), others ``Index.get_indexer``. Measured by ``python -m benchmarks.compiler_lookups``
against ``get_indexer`` (40 labels): dict 5.3x faster for 1 key, 1.6x at 256, 1.0x at 1,000;
``index_in`` 0.6x for 1 key, 0.9x at 256, 1.8x at 1,000, 13x at 100,000."""

_FLOAT_DTYPES = ("float", "float64", "f8", "double")


@numba.njit(cache=True, nogil=True)
def dense_rows_kernel(keys: np.ndarray, dense: np.ndarray, low: int) -> np.ndarray:  # pragma: no cover
    """Row position of each integer key through ``dense[key - low]`` (``-1`` outside the span)."""
    n = keys.shape[0]
    out = np.empty(n, dtype=np.int64)
    span = dense.shape[0]
    for i in range(n):
        offset = np.int64(keys[i]) - low
        if 0 <= offset < span:
            out[i] = dense[offset]
        else:
            out[i] = -1
    return out


_DENSE_ROWS_KEYS: set[np.dtype] = set()


def dense_rows(keys: np.ndarray, dense: np.ndarray, low: int) -> np.ndarray:
    """:func:`dense_rows_kernel` compiled once per integer dtype of ``keys``: keys are typed
    read-only, any layout, unaligned, so a frame's column (read-only under pandas 3), a NumPy array
    and a strided slice run one signature. The any-layout loop measured as fast as the C-ordered
    one (0.86-1.01x, 1 to 100k int64/int32 keys, ``python -m benchmarks.kernel_signatures``
    describes the probe): the gather through ``dense`` is the cost."""
    if keys.dtype not in _DENSE_ROWS_KEYS:
        compile_locked(
            dense_rows_kernel,
            (readonly_array(keys.dtype, 1, "A", aligned=False), readonly_array(np.int64, 1), types.int64),
        )
        _DENSE_ROWS_KEYS.add(keys.dtype)
    return dense_rows_kernel(keys, dense, low)


def _plain_keys(keys: Any) -> bool:
    """Whether ``keys`` is a list-like whose matching pandas does by value (no categoricals, no
    boolean masks, no nullable extension arrays)."""
    if isinstance(keys, (pd.Series, pd.Index, np.ndarray)):
        dtype = keys.dtype
        if isinstance(dtype, np.dtype):
            return dtype.kind in "iufOU" and keys.ndim == 1
        return isinstance(dtype, pd.StringDtype)
    return False


def _arrow_strings(keys: Any) -> bool:
    dtype = getattr(keys, "dtype", None)
    return isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow"


def _arrow_positions(keys: pd.Series | pd.Index, labels: list[str]) -> np.ndarray | None:
    """Positions of pyarrow-backed string keys among ``labels`` (``-1`` missing or null)."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc

        found = pc.index_in(pa.array(keys.array), value_set=pa.array(labels, type=pa.string()))
        return np.asarray(found.fill_null(-1).to_numpy(), dtype=np.int64)
    except Exception:  # noqa: BLE001 - an unusual arrow layout: pandas matches instead
        return None


@dataclass(eq=False)
class KeyIndex:
    """Key -> row position for one table index, computed once at compile time."""

    index: pd.Index
    dense: np.ndarray | None = field(default=None, repr=False)
    low: int = 0
    positions: dict[str, int] | None = field(default=None, repr=False)  # an all-str index

    @classmethod
    def build(cls, index: pd.Index, what: str) -> KeyIndex:
        if type(index) not in (pd.Index, pd.RangeIndex):
            raise NotLowerable(
                f"{what} is indexed by a {type(index).__name__}; lookups are compiled for a flat Index "
                "of numbers or strings."
            )
        if not index.is_unique:
            raise NotLowerable(
                f"{what} has duplicate labels in its index; a lookup would repeat rows (or pandas "
                "raises), so it is not compiled."
            )
        dense, low = None, 0
        if index.dtype.kind in "iu" and len(index) and isinstance(index.dtype, np.dtype):
            low, high = int(index.min()), int(index.max())
            if high - low + 1 <= DENSE_SPAN and index.dtype != np.uint64:
                dense = np.full(high - low + 1, -1, dtype=np.int64)
                dense[index.to_numpy().astype(np.int64) - low] = np.arange(len(index), dtype=np.int64)
        positions = None
        if index.dtype == object or isinstance(index.dtype, pd.StringDtype):
            labels = index.tolist()
            if all(type(label) is str for label in labels):
                positions = {label: k for k, label in enumerate(labels)}
        return cls(index, dense, low, positions)

    @property
    def strategy(self) -> str:
        if self.dense is not None:
            return f"dense position array over keys {self.low}..{self.low + len(self.dense) - 1}"
        if self.positions is not None:
            return (
                f"a dict of its string labels up to {SMALL_STRING_BATCH} keys, "
                f"pandas {type(self.index).__name__}.get_indexer beyond"
            )
        return f"pandas {type(self.index).__name__}.get_indexer ({self.index.dtype})"

    def rows(self, keys: Any) -> np.ndarray | None:
        """Row position of every key (``-1`` when missing), or ``None`` when ``keys`` is of a kind
        the compiled lookup does not handle (the caller then runs the original pandas code)."""
        if not _plain_keys(keys):
            return None
        if self.dense is not None and keys.dtype.kind in "iu" and keys.dtype != np.uint64:
            values = keys.to_numpy() if isinstance(keys, (pd.Series, pd.Index)) else keys
            return dense_rows(values, self.dense, self.low)
        if self.positions is not None and len(keys) <= SMALL_STRING_BATCH:
            get = self.positions.get
            found = [get(k, -1) if type(k) is str else -2 for k in keys.tolist()]
            if -2 not in found:  # only str keys: str equality is exactly pandas' matching
                return np.array(found, dtype=np.int64)
        if self.positions is not None and _arrow_strings(keys):
            found = _arrow_positions(keys, list(self.positions))
            if found is not None:
                return found
        return np.asarray(self.index.get_indexer(keys), dtype=np.int64)


@dataclass(eq=False)
class Lookup:
    """One recognised lookup: its table's values, key index and how the keys reach it.

    ``mode`` is ``"reindex"`` (missing -> NaN), ``"loc"`` (missing -> pandas raises ``KeyError``,
    so the compiled call runs the original instead), ``"map"`` (``Series.map``; keys must be a
    ``Series``) or ``"merge"`` (a left merge: the merged frame's columns are the left frame's, then
    the table's, less those dropped afterwards; the left ones kept are ``left_keep``). ``keys`` is the expression the call evaluates for its keys (the left frame
    for merges); ``values`` is 1-D for a ``Series``/``dict`` table, 2-D for a ``DataFrame``.
    """

    mode: str
    table_expr: str
    keys: ast.expr
    values: np.ndarray = field(repr=False)
    key_index: KeyIndex = field(repr=False)
    merge_key: str | None = None
    merge_drop: tuple[str, ...] = ()
    right_numeric: bool = True
    float_table: bool = True  # every column float64: no dtype=float needed
    # merges whose result keeps left columns: the left frame's columns at calibration (``None``:
    # unknown, the left frame must hold only dropped columns) and the positions of those kept
    left_columns: tuple[Any, ...] | None = None
    left_keep: tuple[int, ...] = ()
    left_dtypes: tuple[str, ...] = ()  # of the left columns at calibration (a loaded plan's stand-in)

    @property
    def ndim(self) -> int:
        return self.values.ndim

    @property
    def left_width(self) -> int:
        return len(self.left_keep)

    @property
    def width(self) -> int:
        return 1 if self.values.ndim == 1 else self.left_width + self.values.shape[1]

    def left_values(self, frame: pd.DataFrame) -> np.ndarray | None:
        """The kept left columns of a merge as float64 (what the merged frame's ``to_numpy(dtype=
        float)`` holds there: a left merge keeps the left columns' values and dtypes), or ``None``
        when one is not a numeric numpy column (pandas then converts, or raises, itself)."""
        kept = frame.iloc[:, list(self.left_keep)]
        if not all(isinstance(d, np.dtype) and d.kind in "iufb" for d in kept.dtypes):
            return None
        return kept.to_numpy(dtype=np.float64)

    def describe(self) -> str:
        return f"{self.mode} into `{self.table_expr}` {self.values.shape} by {self.key_index.strategy}"

    def rows(self, keys: Any) -> np.ndarray | None:
        """Row positions for the value the call's ``keys`` expression produced, or ``None`` when
        the compiled lookup cannot reproduce pandas for it (the original code runs instead)."""
        if self.mode == "map" and not isinstance(keys, pd.Series):
            return None
        if self.mode == "merge":
            if not isinstance(keys, pd.DataFrame) or keys.columns.has_duplicates:
                return None
            if self.left_columns is not None:
                if tuple(keys.columns) != self.left_columns:
                    return None  # another layout of the merged frame: pandas builds it
            elif [c for c in keys.columns if c not in self.merge_drop] or self.merge_key not in keys.columns:
                return None
            keys = keys[self.merge_key]
            if not _plain_keys(keys) or (keys.dtype.kind in "iuf") != self.right_numeric:
                return None  # pandas refuses to merge numbers with strings; let it say so
        rows = self.key_index.rows(keys)
        if rows is None:
            return None
        if self.mode == "loc" and (rows < 0).any():
            return None  # pandas raises KeyError naming the missing labels
        return rows


def _table_values(table: Any, what: str) -> tuple[np.ndarray, pd.Index, bool]:
    """The table as float64 values (C order), its index and whether all its columns are float64."""
    if isinstance(table, dict):
        if type(table) is not dict:
            raise NotLowerable(
                f"{what} is a {type(table).__name__} (it may define __missing__); only plain dicts are compiled."
            )
        table = pd.Series(table)
    if isinstance(table, pd.Series):
        dtypes = [table.dtype]
    elif isinstance(table, pd.DataFrame):
        dtypes = list(table.dtypes)
        if table.columns.has_duplicates:
            raise NotLowerable(f"{what} has duplicate column names.")
    else:
        raise NotLowerable(f"{what} is a {type(table).__name__}, not a DataFrame, Series or dict.")
    for dtype in dtypes:
        if not (isinstance(dtype, np.dtype) and dtype.kind in "iufb"):
            raise NotLowerable(
                f"{what} has a column of dtype {dtype}; only numeric numpy columns convert to float "
                "exactly as pandas does."
            )
    values = np.ascontiguousarray(table.to_numpy(dtype=np.float64))
    return values, table.index, all(dtype == np.float64 for dtype in dtypes)


def _is_float_request(call: ast.Call, resolve: Callable[[ast.expr], Any]) -> bool:
    """Whether a ``to_numpy``/``np.asarray`` call asks for float64 (``dtype=float``...)."""
    dtype = None
    for keyword in call.keywords:
        if keyword.arg != "dtype":
            return False
        dtype = keyword.value
    if dtype is None:
        return False
    if isinstance(dtype, ast.Constant):
        return dtype.value in _FLOAT_DTYPES
    try:
        value = resolve(dtype)
    except NotLowerable:
        return False
    return value is float or value is np.float64


def _table(expr: ast.expr, resolve: Callable[[ast.expr], Any]) -> Any:
    try:
        return resolve(expr)
    except NotLowerable:
        return None


def unwrap_float(node: ast.expr, resolve: Callable[[ast.expr], Any]) -> tuple[ast.expr, bool] | None:
    """``(inner, converts_to_float)`` for ``inner.to_numpy(...)``, ``inner.values`` or
    ``np.asarray(inner, ...)``; ``None`` otherwise."""
    if isinstance(node, ast.Attribute) and node.attr == "values":
        return node.value, False
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    if isinstance(func, ast.Attribute) and func.attr == "to_numpy" and not node.args:
        if not node.keywords:
            return func.value, False
        return (func.value, True) if _is_float_request(node, resolve) else None
    if len(node.args) == 1 and _table(func, resolve) in (np.asarray, np.array) and node.keywords:
        if _table(func, resolve) is np.array:
            return None
        return (node.args[0], True) if _is_float_request(node, resolve) else None
    if len(node.args) == 2 and not node.keywords and _table(func, resolve) is np.asarray:
        second = node.args[1]
        fake = ast.Call(func=func, args=[], keywords=[ast.keyword(arg="dtype", value=second)])
        return (node.args[0], True) if _is_float_request(fake, resolve) else None
    return None


def match_lookup(
    node: ast.expr,
    resolve: Callable[[ast.expr], Any],
    evaluate: Callable[[ast.expr], Any] | None = None,
) -> Lookup | None:
    """The :class:`Lookup` that ``node`` computes, or ``None`` when it is not a lookup expression.

    ``resolve(expr)`` evaluates an expression that reads only fitted state (globals, closure
    variables) and raises :class:`NotLowerable` for anything row-dependent; ``evaluate(expr)``
    gives a row-dependent value on the calibration rows (a merge's left frame, for its columns;
    without it a merge is compiled only when every left column is dropped). Raises
    :class:`NotLowerable` when ``node`` is a lookup that cannot be compiled exactly (the reason
    goes to ``explain()``).
    """
    unwrapped = unwrap_float(node, resolve)
    if unwrapped is None:
        return None
    inner, to_float = unwrapped
    lookup = _match_inner(inner, resolve, evaluate)
    if lookup is None:
        return None
    if not to_float and not lookup.float_table:
        raise NotLowerable("the lookup result is converted without dtype=float")
    return lookup


def _match_inner(
    inner: ast.expr, resolve: Callable[[ast.expr], Any], evaluate: Callable[[ast.expr], Any] | None
) -> Lookup | None:
    # table.reindex(keys)
    if (
        isinstance(inner, ast.Call)
        and isinstance(inner.func, ast.Attribute)
        and inner.func.attr == "reindex"
        and len(inner.args) == 1
        and not inner.keywords
    ):
        return _build("reindex", inner.func.value, inner.args[0], resolve)
    # table.loc[keys]
    if (
        isinstance(inner, ast.Subscript)
        and isinstance(inner.value, ast.Attribute)
        and inner.value.attr == "loc"
        and not isinstance(inner.slice, (ast.Tuple, ast.Slice))
    ):
        return _build("loc", inner.value.value, inner.slice, resolve)
    # keys.map(table)
    if (
        isinstance(inner, ast.Call)
        and isinstance(inner.func, ast.Attribute)
        and inner.func.attr == "map"
        and len(inner.args) == 1
        and not inner.keywords
    ):
        table = _table(inner.args[0], resolve)
        if table is None or not isinstance(table, (dict, pd.Series)):
            return None
        return _build("map", inner.args[0], inner.func.value, resolve)
    # left.merge(table, how="left", ...)[.drop(columns=...)]
    drop: tuple[str, ...] = ()
    if (
        isinstance(inner, ast.Call)
        and isinstance(inner.func, ast.Attribute)
        and inner.func.attr == "drop"
        and not inner.args
        and len(inner.keywords) == 1
        and inner.keywords[0].arg == "columns"
    ):
        columns = _literal_columns(inner.keywords[0].value)
        if columns is None:
            return None
        drop, inner = columns, inner.func.value
    if isinstance(inner, ast.Call) and isinstance(inner.func, ast.Attribute) and inner.func.attr == "merge":
        return _match_merge(inner, drop, resolve, evaluate)
    return None


def _literal_columns(node: ast.expr) -> tuple[str, ...] | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return (node.value,)
    if isinstance(node, (ast.List, ast.Tuple)) and all(
        isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts
    ):
        return tuple(e.value for e in node.elts)  # type: ignore[attr-defined]
    return None


def _match_merge(
    call: ast.Call,
    drop: tuple[str, ...],
    resolve: Callable[[ast.expr], Any],
    evaluate: Callable[[ast.expr], Any] | None,
) -> Lookup | None:
    if len(call.args) != 1:
        return None
    table = _table(call.args[0], resolve)
    if not isinstance(table, pd.DataFrame):
        return None
    what = f"`{ast.unparse(call.args[0])}`"
    options: dict[str, Any] = {}
    for keyword in call.keywords:
        if keyword.arg is None or not isinstance(keyword.value, ast.Constant):
            raise NotLowerable(f"merge with {what}: only literal keyword options are compiled")
        options[keyword.arg] = keyword.value.value
    merge_options = dict(options)
    if options.pop("how", "inner") != "left":
        raise NotLowerable(f"merge with {what}: only how='left' keeps the left rows one for one")
    if options.pop("sort", False) or options.pop("indicator", False) or options.pop("validate", None):
        raise NotLowerable(f"merge with {what}: sort/indicator/validate options are not compiled")
    options.pop("copy", None)
    if options.pop("suffixes", ("_x", "_y")) != ("_x", "_y"):
        raise NotLowerable(f"merge with {what}: custom suffixes are not compiled")
    if set(options) == {"left_on", "right_index"} and options["right_index"] is True:
        key, right = options["left_on"], table
    elif set(options) == {"on"} and isinstance(options["on"], str) and options["on"] in table.columns:
        key = options["on"]
        if not table[key].is_unique:
            raise NotLowerable(
                f"merge with {what}: its key column {key!r} has duplicates, which multiplies rows"
            )
        right = table.set_index(key)
    else:
        raise NotLowerable(
            f"merge with {what}: compiled forms are left_on=<column>, right_index=True and on=<column>; "
            f"found {sorted(options)}"
        )
    if not isinstance(key, str):
        raise NotLowerable(f"merge with {what}: the key must be one column name")
    if not right.index.is_unique:
        raise NotLowerable(f"merge with {what}: the table's key has duplicates, which multiplies rows")
    left = call.func.value  # type: ignore[union-attr]
    layout = _merge_layout(left, table, right, merge_options, drop, what, evaluate)
    if layout is None:  # the left frame is not known: it must hold only dropped columns
        if key not in drop:
            raise NotLowerable(
                f"merge with {what}: the left frame's columns must all be dropped after the merge "
                "(`.drop(columns=<key>)`), leaving only the table's columns"
            )
        left_columns, left_dtypes, left_keep, right_keep = None, (), (), list(range(right.shape[1]))
    else:
        left_columns, left_dtypes, left_keep, right_keep = layout
    values, index, float_table = _table_values(right, what)
    numeric = index.dtype.kind in "iufb" if isinstance(index.dtype, np.dtype) else False
    return Lookup(
        "merge",
        ast.unparse(call.args[0]),
        left,
        np.ascontiguousarray(values[:, right_keep]),
        KeyIndex.build(index, what),
        merge_key=key,
        merge_drop=drop,
        right_numeric=numeric,
        # kept left columns have their own dtypes: only a float conversion is compiled then
        float_table=float_table and not left_keep,
        left_columns=left_columns,
        left_keep=left_keep,
        left_dtypes=left_dtypes,
    )


def _merge_layout(
    left_expr: ast.expr,
    table: pd.DataFrame,
    right: pd.DataFrame,
    options: dict[str, Any],
    drop: tuple[str, ...],
    what: str,
    evaluate: Callable[[ast.expr], Any] | None,
) -> tuple[tuple[Any, ...], tuple[str, ...], tuple[int, ...], list[int]] | None:
    """``(left columns, their dtypes, kept left positions, kept table positions)`` of a left merge, read from
    pandas' own merge of the frames' empty slices; ``None`` when the left frame is unknown."""
    if evaluate is None:
        return None
    try:
        frame = evaluate(left_expr)
    except Exception:  # noqa: BLE001 - not evaluable alone (a loaded plan without its columns)
        return None
    if not isinstance(frame, pd.DataFrame) or frame.columns.has_duplicates:
        raise NotLowerable(f"merge with {what}: the left frame is not a DataFrame with unique column names")
    try:
        merged = frame.iloc[:0].merge(table.iloc[:0], **options)
        kept = merged.drop(columns=list(drop)).columns if drop else merged.columns
    except Exception as exc:  # noqa: BLE001 - pandas refuses this merge: it runs as Python
        raise NotLowerable(f"merge with {what}: pandas refuses it on the calibration rows ({exc})") from exc
    width = len(frame.columns)
    if merged.columns.has_duplicates or len(merged.columns) != width + right.shape[1]:
        raise NotLowerable(f"merge with {what}: its result's columns are not the left's then the table's")
    positions = [merged.columns.get_loc(name) for name in kept]
    return (
        tuple(frame.columns),
        tuple(str(dtype) for dtype in frame.dtypes),
        tuple(p for p in positions if p < width),
        [p - width for p in positions if p >= width],
    )


def _build(
    mode: str, table_expr: ast.expr, keys: ast.expr, resolve: Callable[[ast.expr], Any]
) -> Lookup | None:
    table = _table(table_expr, resolve)
    if table is None or not isinstance(table, (pd.DataFrame, pd.Series, dict)):
        return None
    if mode != "map" and isinstance(table, dict):
        return None
    what = f"`{ast.unparse(table_expr)}`"
    values, index, float_table = _table_values(table, what)
    return Lookup(
        mode, ast.unparse(table_expr), keys, values, KeyIndex.build(index, what), float_table=float_table
    )


harden_module(sys.modules[__name__])  # checksummed, self-repairing cache files
