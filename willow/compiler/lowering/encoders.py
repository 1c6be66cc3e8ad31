"""Lowering scikit-learn's ``OneHotEncoder.transform`` for string and numeric categories.

``OneHotEncoder.transform`` validates its input column by column (``check_array``, feature names,
unknown categories) before it encodes anything: ~0.8 ms per call for one row, which was most of a
compiled pipeline's single-row time in the product benchmark (three encoders). The compiled
operator matches each value to its column's fitted categories in one hash lookup and builds the
one-hot matrix as scikit-learn builds it. There is no per-call code to generate: numpy builds the
CSR arrays, so the operator's "source" is a description of what it does.

Handled exactly (anything else runs ``encoder.transform`` itself, so results, warnings and errors
are scikit-learn's own):

- fitted on a DataFrame, every feature's categories all Python ``str`` (possibly followed by the
  NaN category scikit-learn sorts last), all integers or all finite floats: otherwise
  :class:`NotLowerable`;
- called with a DataFrame of 1+ rows whose columns are the fitted feature names in order and
  whose values are, per feature, all ``str`` (object or pandas string columns; missing values
  only where they reach scikit-learn as float NaN: pandas' ``str`` dtype, or float NaN in an
  ``object`` column), integers (a numpy integer column) or finite floats (a numpy float column),
  as its categories are; a missing value is the NaN category where there is one, else unknown;
- infrequent categories (``min_frequency``/``max_categories``) go to their feature's last
  column through scikit-learn's own grouping map (``_default_to_infrequent_mappings``);
- unknown categories: with ``handle_unknown="ignore"`` (or ``"infrequent_if_exist"`` for a feature
  without infrequent categories) and no ``drop`` they become all-zero features, with
  ``"infrequent_if_exist"`` the infrequent column where the feature has one, as in scikit-learn;
  where scikit-learn would raise or warn (``"error"``, ``"warn"``, ``"ignore"`` with ``drop``) the
  call runs scikit-learn;
- ``drop`` (``"first"``, ``"if_binary"``, explicit categories) removes the dropped category's
  column and shifts the later ones, ``dtype`` sets the values' type, ``sparse_output`` picks CSR
  (``csr_matrix`` or ``csr_array`` by scikit-learn's ``sparse_interface`` setting, int32 indices)
  or a dense array; a ``set_output`` container other than the default runs scikit-learn.

Values are matched by equality (``str`` equality, or numeric value), as scikit-learn's encoding
does: through :class:`~willow.compiler.lowering.lookups.KeyIndex` (for strings a dict for small
batches, pandas ``get_indexer`` or pyarrow's ``index_in`` for large ones; for integers a dense
position array over a short span of categories, else ``get_indexer``). Integers against float
categories (or the reverse) run scikit-learn: comparing them goes through float64 rounding.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import sklearn
from sklearn.preprocessing import OneHotEncoder

from willow.compiler.lowering.base import CompiledOperator, NotLowerable
from willow.compiler.lowering.lookups import SMALL_STRING_BATCH, KeyIndex

__all__ = ["lower_one_hot_encoder", "require_frame_encoder", "frame_codes", "ENCODER_LOWERINGS"]


def _category_indexes(encoder: OneHotEncoder) -> list[tuple[KeyIndex, str]]:
    """Per feature, a key index of its categories and their kind: ``"str"``, ``"i"`` (integers) or
    ``"f"`` (finite floats); :class:`NotLowerable` for any other categories (NaN among them,
    ``None``, mixed types, booleans, ``uint64``)."""
    indexes = []
    for name, categories in zip(encoder.feature_names_in_, encoder.categories_):
        kind = categories.dtype.kind
        labels = categories[:-1] if _nan_category(categories) >= 0 else categories
        if kind == "O" and all(type(c) is str for c in labels):
            indexes.append((KeyIndex.build(pd.Index(labels, dtype=object), f"feature {name!r}"), "str"))
        elif (kind in "iu" and categories.dtype != np.uint64) or (
            kind == "f" and np.isfinite(categories).all()
        ):
            index = pd.Index(categories.astype(np.int64 if kind in "iu" else np.float64))
            indexes.append((KeyIndex.build(index, f"feature {name!r}"), "i" if kind in "iu" else "f"))
        else:
            raise NotLowerable(
                f"OneHotEncoder feature {name!r} has {categories.dtype} categories that are neither all "
                "str nor finite numbers (a NaN or None category, mixed types, booleans); scikit-learn "
                "keeps encoding them."
            )
    return indexes


def _nan_category(categories: np.ndarray) -> int:
    """Position of the NaN category of string categories (scikit-learn sorts it last), else -1."""
    if categories.dtype.kind == "O" and len(categories) > 1:
        last = categories[-1]
        if type(last) is float and last != last and all(type(c) is str for c in categories[:-1]):
            return len(categories) - 1
    return -1


def _float_nan_missing(column: pd.Series) -> bool:
    """Whether a string column's missing values all reach scikit-learn as ``float('nan')``, which
    it matches to a NaN category (or treats as unknown): pandas' ``str`` dtype (its missing value
    is NaN) or ``object`` strings whose missing values are float NaN (``None``, ``pd.NA`` run
    scikit-learn)."""
    dtype = column.dtype
    if isinstance(dtype, pd.StringDtype):
        return dtype.na_value is np.nan
    if dtype != np.dtype(object) or pd.api.types.infer_dtype(column, skipna=True) != "string":
        return False
    return all(type(v) is float for v in column[column.isna()].tolist())


def _matchable(column: pd.Series, kind: str) -> bool:
    """Whether every value of ``column`` can be matched to categories of ``kind`` by the key index
    exactly as scikit-learn matches them: all ``str`` (no missing value, no number) for string
    categories; integers (no ``uint64``) for integer ones; finite floats for float ones. A mixed
    pair (integers against float categories) runs scikit-learn."""
    dtype = column.dtype
    if kind == "str":
        if isinstance(dtype, pd.StringDtype):
            return not column.hasnans
        return dtype == np.dtype(object) and pd.api.types.infer_dtype(column, skipna=False) == "string"
    if not isinstance(dtype, np.dtype):  # nullable Int64, Float64...: their NA is scikit-learn's
        return False
    if kind == "i":
        return dtype.kind in "iu" and dtype != np.uint64
    return dtype.kind == "f" and bool(np.isfinite(column.to_numpy()).all())


def _default_output(encoder: OneHotEncoder) -> bool:
    """Whether ``transform`` returns scikit-learn's own containers (no ``set_output`` frame)."""
    configured = getattr(encoder, "_sklearn_output_config", {})
    chosen = configured.get("transform", sklearn.get_config()["transform_output"])
    return chosen == "default"


def require_frame_encoder(encoder: Any, method: str, infrequent: bool = False) -> None:
    """Refuse (:class:`NotLowerable`) an encoder the compiled category lookup cannot reproduce:
    another method than ``transform``, unfitted, fitted on an array, or (unless ``infrequent``)
    with infrequent categories."""
    name = type(encoder).__name__
    if method != "transform":
        raise NotLowerable(f"{name}.{method} is not compiled; only transform is.")
    if not hasattr(encoder, "categories_"):
        raise NotLowerable(f"The {name} is not fitted.")
    if not hasattr(encoder, "feature_names_in_"):
        raise NotLowerable(
            f"The {name} was fitted on an array, not a DataFrame; only encoders fitted on "
            "named columns are compiled."
        )
    if not infrequent and getattr(encoder, "_infrequent_enabled", False):
        raise NotLowerable(
            f"{name} with infrequent categories (min_frequency / max_categories) is not compiled."
        )


def frame_codes(
    encoder: Any,
    names: list[str],
    indexes: list[tuple[KeyIndex, str]],
    X: Any,
    nan_codes: list[int] | None = None,
) -> np.ndarray | None:
    """Each value's category position (``-1`` when unknown), one column per feature, or ``None``
    when scikit-learn must encode ``X`` itself: another container or columns, 0 rows, a
    ``set_output`` container, values not of the categories' kind, or missing values (unless
    ``nan_codes`` gives, per feature, the code of a float-NaN missing string value)."""
    if not (
        type(X) is pd.DataFrame
        and X.shape[0] > 0
        and X.columns.tolist() == names
        and _default_output(encoder)
    ):
        return None
    codes = np.empty((X.shape[0], len(names)), dtype=np.int64)
    # columns by position through items(): neither iloc's indexing machinery nor the label index
    # that ``X[name]`` builds for every new frame (most of a small batch's cost)
    for j, ((_, column), (index, kind)) in enumerate(zip(X.items(), indexes)):
        nan_code = None if nan_codes is None else nan_codes[j]
        found = _arrow_codes(column, index, nan_code) if kind == "str" else None
        if found is not None:
            codes[:, j] = found
            continue
        missing = column.isna().to_numpy() if nan_codes is not None and kind == "str" else None
        if missing is not None and missing.any():
            if not _float_nan_missing(column):
                return None
        elif not _matchable(column, kind):
            return None
        found = index.rows(column)
        if found is None:
            return None
        codes[:, j] = found
        if missing is not None:
            codes[missing, j] = nan_codes[j]  # the NaN category, or unknown (-1)
    return codes


_VALUE_SETS: weakref.WeakKeyDictionary[KeyIndex, dict[bool, Any]] = weakref.WeakKeyDictionary()
"""Per string key index, its categories as a pyarrow array (``True``: with a trailing null, the
NaN category), built at the first large batch and kept while the compiled encoder lives."""


def _arrow_backed(column: pd.Series) -> bool:
    dtype = column.dtype
    return isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow"


def _arrow_codes(column: pd.Series, index: KeyIndex, nan_code: int | None) -> np.ndarray | None:
    """Category positions of a pyarrow-backed ``str`` column of more than
    :data:`~willow.compiler.lowering.lookups.SMALL_STRING_BATCH` values, matched in pyarrow
    (``index_in``: UTF-8 byte equality, which is ``str`` equality) with no pandas ``isna``: a
    missing value is the NaN category (``nan_code``: its position, or ``-1`` for unknown) when
    pandas' ``str`` dtype gives scikit-learn float NaN for it. ``None`` where the general path
    decides (small batches, other storage, ``pd.NA`` missing values, no ``nan_code``)."""
    if not _arrow_backed(column) or len(column) <= SMALL_STRING_BATCH or index.positions is None:
        return None
    try:
        import pyarrow as pa
        import pyarrow.compute as pc

        values = pa.array(column.array)
        if values.null_count and (nan_code is None or column.dtype.na_value is not np.nan):
            return None
        with_nan = bool(values.null_count) and nan_code >= 0  # the NaN category, sorted last
        value_sets = _VALUE_SETS.setdefault(index, {})
        value_set = value_sets.get(with_nan)
        if value_set is None:
            labels = list(index.positions)
            if with_nan and nan_code != len(labels):
                return None
            value_set = pa.array([*labels, None] if with_nan else labels, type=pa.string())
            value_sets[with_nan] = value_set
        found = pc.index_in(values, value_set=value_set)
        return np.asarray(found.fill_null(-1), dtype=np.int64)
    except Exception:  # noqa: BLE001 - an unusual arrow layout: the general path matches instead
        return None


def lower_one_hot_encoder(encoder: Any, method: str) -> CompiledOperator:
    """Compile ``encoder.transform`` for string and numeric categories; see the module docstring."""
    require_frame_encoder(encoder, method, infrequent=True)
    indexes = _category_indexes(encoder)
    names = list(encoder.feature_names_in_)
    widths = np.asarray(encoder._n_features_outs, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(np.int64)
    n_columns = int(widths.sum())
    drop = encoder._drop_idx_after_grouping
    # dropped category per feature (its own count when nothing is dropped, as scikit-learn does)
    dropped = None
    if drop is not None:
        dropped = np.array(
            [len(c) if d is None else int(d) for d, c in zip(drop, encoder.categories_)], dtype=np.int64
        )
    # unknown categories: all-zero features ("ignore", and "infrequent_if_exist" for a feature
    # without infrequent categories) or the infrequent column ("infrequent_if_exist"); scikit-learn
    # raises or warns in every other case, so those calls run it
    zero_unknown = encoder.handle_unknown in ("ignore", "infrequent_if_exist") and drop is None
    infrequent_enabled = bool(getattr(encoder, "_infrequent_enabled", False))
    infrequent = list(encoder._infrequent_indices) if infrequent_enabled else [None] * len(names)
    mappings = list(encoder._default_to_infrequent_mappings) if infrequent_enabled else [None] * len(names)
    unknown_to_infrequent = encoder.handle_unknown == "infrequent_if_exist"
    nan_codes = [_nan_category(c) for c in encoder.categories_]
    dtype, sparse_output = encoder.dtype, encoder.sparse_output

    def transform(X: Any) -> Any:
        codes = frame_codes(encoder, names, indexes, X, nan_codes)
        if codes is None:
            return encoder.transform(X)
        known = codes >= 0
        if not known.all():
            if not zero_unknown:
                return encoder.transform(X)  # scikit-learn raises or warns about the unknown ones
            if unknown_to_infrequent:
                for j, indices in enumerate(infrequent):
                    if indices is not None:
                        codes[~known[:, j], j] = indices[0]
                        known[:, j] = True
        for j, mapping in enumerate(mappings):
            if mapping is not None:  # infrequent categories share the feature's last column
                codes[:, j] = np.take(mapping, np.maximum(codes[:, j], 0))
        if dropped is not None:
            known &= codes != dropped
            codes[codes > dropped] -= 1
        indptr = np.empty(X.shape[0] + 1, dtype=np.int32)
        indptr[0] = 0
        np.cumsum(known.sum(axis=1), out=indptr[1:])
        indices = (codes + offsets)[known].astype(np.int32)
        if not sparse_output:
            out = np.zeros((X.shape[0], n_columns), dtype=dtype)
            out[np.nonzero(known)[0], indices] = 1  # row-major, as indices
            return out
        data = np.ones(indices.shape[0], dtype=dtype)
        shape = (X.shape[0], n_columns)
        if sklearn.get_config()["sparse_interface"] == "sparray":
            return sp.csr_array((data, indices, indptr), shape=shape)
        return sp.csr_matrix((data, indices, indptr), shape=shape)

    described = ", ".join(
        f"{name!r} ({len(c)} categories{'' if dropped is None or d is None else ', one dropped'})"
        for name, c, d in zip(names, encoder.categories_, drop if drop is not None else [None] * len(names))
    )
    source = (
        f"# OneHotEncoder.transform, compiled without generated code: features {described}.\n"
        f"# Each value's category by {'; '.join(sorted({index.strategy for index, _ in indexes}))}; "
        f"{'unknown categories become all-zero features' if zero_unknown else 'unknown categories run scikit-learn'}; "
        f"output {'CSR (int32 indices)' if sparse_output else 'dense'} of {np.dtype(dtype).name}, "
        f"{n_columns} columns.\n"
        "# Another container, other columns, missing values or values not of the categories' kind "
        "run encoder.transform itself.\n"
    )
    return CompiledOperator(
        name="OneHotEncoder.transform", source=source, function=transform, generated=False
    )


ENCODER_LOWERINGS = {OneHotEncoder: lower_one_hot_encoder}
