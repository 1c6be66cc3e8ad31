"""Lowering scikit-learn's numeric preprocessing: scalers, the imputer, ordinal codes, ufuncs.

A ``ColumnTransformer`` expanded by the front end (:mod:`willow.frontend.composites`) calls each
of these once per batch on a handful of columns. Their arithmetic is a few microseconds; what
costs is scikit-learn's input validation (``validate_data``: feature names, dtype conversion,
finiteness), about 0.1 ms per call for one row. The compiled operators check the same conditions
directly and do the same arithmetic in the same order, so results are bitwise scikit-learn's.
There is no per-call code to generate (numpy does the elementwise work), so each operator's
"source" describes what it does, as for the one-hot encoder.

Handled exactly (anything else runs the original ``transform``, so results, warnings and errors
are scikit-learn's own):

- the input is a DataFrame whose columns are the fitted feature names in order (an estimator
  fitted on a frame) or a 2-D numpy array of the fitted width (one fitted on an array), with 1+
  rows, of float64 or integer values (converted to float64, as ``check_array`` converts them);
  float32 input (which scikit-learn keeps as float32), nullable or object columns, sparse input
  and infinity (which scikit-learn refuses) run scikit-learn;
- the output is scikit-learn's default container (a ``set_output`` frame runs scikit-learn).

Per operator:

- ``StandardScaler``: ``X - mean_`` then ``/ scale_`` (as ``with_mean`` / ``with_std`` say);
  ``copy=False`` (which transforms the caller's array in place) is not compiled;
- ``MinMaxScaler``: ``X * scale_ + min_``, clipped to ``feature_range`` with ``clip=True``;
- ``SimpleImputer`` with ``missing_values=np.nan`` on numeric data (any strategy): each NaN
  replaced by its column's fitted statistic; ``add_indicator``, columns skipped for having no
  observed value, and estimators fitted on object data are not compiled;
- ``OrdinalEncoder`` over string categories (no missing-value category, no infrequent
  categories), on string columns: each value's category position, unknown categories as
  ``unknown_value`` with ``handle_unknown="use_encoded_value"`` (with ``"error"`` an unknown value
  runs scikit-learn, which raises);
- ``FunctionTransformer`` of a one-input numpy ufunc (``np.log1p``, ``np.sqrt``, ``np.abs``...)
  without validation or keyword arguments: the ufunc itself on the input.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.preprocessing import FunctionTransformer, MinMaxScaler, OrdinalEncoder, StandardScaler

from willow.compiler.lowering.base import CompiledOperator, NotLowerable
from willow.compiler.lowering.encoders import _default_output, frame_codes, require_frame_encoder
from willow.compiler.lowering.lookups import KeyIndex

__all__ = [
    "lower_standard_scaler",
    "lower_min_max_scaler",
    "lower_simple_imputer",
    "lower_ordinal_encoder",
    "lower_function_transformer",
    "PREPROCESSING_LOWERINGS",
]


def _fitted(obj: Any, attribute: str, method: str) -> None:
    name = type(obj).__name__
    if method != "transform":
        raise NotLowerable(f"{name}.{method} is not compiled; only transform is.")
    if not hasattr(obj, attribute):
        raise NotLowerable(f"The {name} is not fitted.")


def _float_rows(estimator: Any, X: Any, integers: bool = True) -> np.ndarray | None:
    """``X`` as the float64 array scikit-learn's validation would make of it, or ``None`` when
    scikit-learn must handle the call (another container, dtype, width, 0 rows, infinity, a
    feature-name mismatch it warns or raises about, a ``set_output`` container). ``integers``:
    whether integers are converted to float64 (validation with float dtypes) or kept (validation
    with ``dtype=None``: all-integer input stays integer, so it runs scikit-learn; a frame mixing
    integer and float64 columns still becomes float64)."""
    if not _default_output(estimator):
        return None
    names = getattr(estimator, "feature_names_in_", None)
    if type(X) is pd.DataFrame:
        if names is None or list(X.columns) != list(names):
            return None
        dtypes = X.dtypes.tolist()
        if not all(isinstance(d, np.dtype) and (d == np.float64 or d.kind in "iu") for d in dtypes):
            return None
        if not integers and np.float64 not in dtypes:
            return None
        values = X.to_numpy(dtype=np.float64)
    elif type(X) is np.ndarray:
        if (
            names is not None
            or X.ndim != 2
            or not (X.dtype == np.float64 or (integers and X.dtype.kind in "iu"))
        ):
            return None
        values = X.astype(np.float64, copy=False)
    else:
        return None
    if values.shape[0] == 0 or values.shape[1] != estimator.n_features_in_ or np.isinf(values).any():
        return None
    return values


def _operator(name: str, description: str, function: Any) -> CompiledOperator:
    source = (
        f"# {name}, compiled without generated code: {description}\n"
        "# Another container or dtype, 0 rows, infinity or other columns run the original transform.\n"
    )
    return CompiledOperator(name=name, source=source, function=function, generated=False)


def lower_standard_scaler(scaler: Any, method: str) -> CompiledOperator:
    """Compile ``StandardScaler.transform`` on dense float64 rows; see the module docstring."""
    _fitted(scaler, "n_features_in_", method)
    if not scaler.copy:
        raise NotLowerable("StandardScaler(copy=False) transforms its input in place; it is not compiled.")
    mean = scaler.mean_ if scaler.with_mean else None
    scale = scaler.scale_ if scaler.with_std else None

    def transform(X: Any) -> Any:
        values = _float_rows(scaler, X)
        if values is None:
            return scaler.transform(X)
        if mean is not None:
            values = values - mean
        if scale is not None:
            values = values / scale
        if mean is None and scale is None:
            values = values.copy()
        return values

    steps = [
        s for s, on in (("minus mean_", mean is not None), ("divided by scale_", scale is not None)) if on
    ]
    return _operator(
        "StandardScaler.transform",
        f"{scaler.n_features_in_} columns as float64, {' then '.join(steps) or 'copied'}.",
        transform,
    )


def lower_min_max_scaler(scaler: Any, method: str) -> CompiledOperator:
    """Compile ``MinMaxScaler.transform`` on dense float64 rows; see the module docstring."""
    _fitted(scaler, "scale_", method)
    if not scaler.copy:
        raise NotLowerable("MinMaxScaler(copy=False) transforms its input in place; it is not compiled.")
    low, high = scaler.feature_range
    scale, offset, clip = scaler.scale_, scaler.min_, scaler.clip

    def transform(X: Any) -> Any:
        values = _float_rows(scaler, X)
        if values is None:
            return scaler.transform(X)
        values = values * scale
        values += offset
        if clip:
            np.clip(values, np.float64(low), np.float64(high), out=values)
        return values

    return _operator(
        "MinMaxScaler.transform",
        f"{scaler.n_features_in_} columns as float64, times scale_ plus min_"
        + (f", clipped to [{low}, {high}]." if clip else "."),
        transform,
    )


def lower_simple_imputer(imputer: Any, method: str) -> CompiledOperator:
    """Compile ``SimpleImputer.transform`` of NaN in numeric rows; see the module docstring."""
    _fitted(imputer, "statistics_", method)
    missing = imputer.missing_values
    if not (isinstance(missing, float) and np.isnan(missing)):
        raise NotLowerable(f"SimpleImputer(missing_values={missing!r}) is not compiled; only NaN is.")
    if imputer.add_indicator:
        raise NotLowerable("SimpleImputer(add_indicator=True) is not compiled.")
    if imputer._fit_dtype.kind not in "fiu":
        raise NotLowerable(
            f"The SimpleImputer was fitted on {imputer._fit_dtype} data; only numeric is compiled."
        )
    if imputer._fill_dtype != np.float64:
        raise NotLowerable(f"The SimpleImputer fills {imputer._fill_dtype} values; only float64 is compiled.")
    # statistics_ is an object array for strategy="constant": the fill values, as transform casts them
    fill = np.asarray(imputer.statistics_).astype(np.float64)
    if not np.isfinite(fill).all():
        raise NotLowerable(
            "The SimpleImputer has a column without any observed value (scikit-learn drops it with a "
            "warning) or a non-finite fill value; it is not compiled."
        )

    # mean and median validate with float dtypes; most_frequent and constant keep integers
    integers = imputer.strategy in ("mean", "median")

    def transform(X: Any) -> Any:
        values = _float_rows(imputer, X, integers)
        if values is None:
            return imputer.transform(X)
        return np.where(np.isnan(values), fill, values)

    return _operator(
        "SimpleImputer.transform",
        f"{len(fill)} columns as float64, NaN replaced by the fitted {imputer.strategy} of its column.",
        transform,
    )


def lower_ordinal_encoder(encoder: Any, method: str) -> CompiledOperator:
    """Compile ``OrdinalEncoder.transform`` for string categories; see the module docstring."""
    require_frame_encoder(encoder, method)
    indexes = []
    for name, categories in zip(encoder.feature_names_in_, encoder.categories_):
        if not (categories.dtype == object and all(type(c) is str for c in categories)):
            raise NotLowerable(
                f"OrdinalEncoder feature {name!r} has categories that are not all str (numbers, a "
                "missing-value category); scikit-learn keeps encoding them."
            )
        indexes.append((KeyIndex.build(pd.Index(categories, dtype=object), f"feature {name!r}"), "str"))
    names = list(encoder.feature_names_in_)
    use_unknown = encoder.handle_unknown == "use_encoded_value"
    dtype, unknown_value = encoder.dtype, encoder.unknown_value

    def transform(X: Any) -> Any:
        codes = frame_codes(encoder, names, indexes, X)
        if codes is None:
            return encoder.transform(X)
        unknown = codes < 0
        if unknown.any() and not use_unknown:
            return encoder.transform(X)  # scikit-learn raises about the unknown categories
        codes[unknown] = 0
        out = codes.astype(dtype, copy=False)
        if use_unknown:
            out[unknown] = unknown_value
        return out

    return _operator(
        "OrdinalEncoder.transform",
        f"features {names}, each value's category position as {np.dtype(dtype).name}; unknown "
        + (f"categories as {unknown_value!r}." if use_unknown else "categories run scikit-learn."),
        transform,
    )


def lower_function_transformer(transformer: Any, method: str) -> CompiledOperator:
    """Compile ``FunctionTransformer(<numpy ufunc>).transform``; see the module docstring."""
    if method != "transform":
        raise NotLowerable(f"FunctionTransformer.{method} is not compiled; only transform is.")
    func = transformer.func
    if not (isinstance(func, np.ufunc) and func.nin == 1 and func.nout == 1):
        raise NotLowerable(
            f"FunctionTransformer(func={func!r}) is not compiled; only one-input numpy ufuncs are."
        )
    if transformer.validate or transformer.kw_args:
        raise NotLowerable("FunctionTransformer with validate=True or kw_args is not compiled.")
    if transformer.feature_names_out is not None:
        raise NotLowerable("FunctionTransformer with feature_names_out is not compiled.")

    def transform(X: Any) -> Any:
        if not _default_output(transformer):
            return transformer.transform(X)
        return func(X)

    return _operator("FunctionTransformer.transform", f"numpy.{func.__name__} of the input.", transform)


PREPROCESSING_LOWERINGS = {
    StandardScaler: lower_standard_scaler,
    MinMaxScaler: lower_min_max_scaler,
    SimpleImputer: lower_simple_imputer,
    OrdinalEncoder: lower_ordinal_encoder,
    FunctionTransformer: lower_function_transformer,
}
