"""Scalers, the imputer, the ordinal encoder and ufunc FunctionTransformers compiled: scikit-learn's
exact output (dtype, NaN), warnings and errors on every input, compiled or not."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.impute import SimpleImputer
from sklearn.preprocessing import FunctionTransformer, MinMaxScaler, OrdinalEncoder, StandardScaler

from willow.compiler.lowering import lower
from willow.compiler.lowering.base import NotLowerable


def _numbers(n: int, seed: int, nan: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {"x": rng.normal(3, 2, n), "count": rng.integers(-5, 50, n), "y": rng.uniform(0, 9, n)}
    )
    if nan and n > 2:
        frame.loc[[0, 2], "x"] = np.nan
        frame.loc[1, "y"] = np.nan
    return frame


TRAIN = _numbers(300, seed=0, nan=True)
TRAIN_ARRAY = TRAIN.to_numpy()


def _outcome(function, X):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = function(X)
        except Exception as exc:  # noqa: BLE001 - compared below
            result = (type(exc), str(exc))
    return result, [(w.category, str(w.message)) for w in caught]


def assert_same_outcome(op, estimator, X) -> None:
    got, got_warnings = _outcome(op, X)
    expected, expected_warnings = _outcome(estimator.transform, X)
    assert got_warnings == expected_warnings
    assert type(got) is type(expected)
    if isinstance(expected, tuple):
        assert got == expected
    elif isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(got, expected, check_exact=True)
    elif sp.issparse(expected):
        assert got.format == expected.format and got.dtype == expected.dtype
        for name in ("indptr", "indices", "data"):
            np.testing.assert_array_equal(getattr(got, name), getattr(expected, name))
    else:
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)  # bitwise, NaN in the same places


def _inputs(array_fitted: bool) -> list:
    with_inf = _numbers(5, seed=3)
    with_inf.loc[1, "y"] = np.inf
    frames = [
        _numbers(1, seed=1),
        _numbers(500, seed=2, nan=True),
        _numbers(20, seed=4).astype({"count": np.float64}),
        _numbers(20, seed=4).astype(np.float32),  # float32: scikit-learn keeps it
        _numbers(20, seed=5).astype({"count": "Int64"}),  # nullable: scikit-learn
        with_inf,  # scikit-learn refuses infinity
        _numbers(0, seed=6),  # 0 rows: scikit-learn's error
        _numbers(5, seed=7)[["y", "x", "count"]],  # other order: the feature-name error
    ]
    arrays = [f.to_numpy() for f in frames[:3]] + [np.arange(6).reshape(2, 3), TRAIN_ARRAY[:4, :2]]
    return arrays + frames if array_fitted else frames + arrays + [sp.csr_matrix(TRAIN_ARRAY[:3])]


ESTIMATORS = [
    StandardScaler(),
    StandardScaler(with_mean=False),
    StandardScaler(with_std=False),
    MinMaxScaler(),
    MinMaxScaler(feature_range=(-1, 2), clip=True),
    SimpleImputer(),
    SimpleImputer(strategy="median"),
    SimpleImputer(strategy="most_frequent"),
    SimpleImputer(strategy="constant", fill_value=-7.5),
    FunctionTransformer(np.log1p),
    FunctionTransformer(np.abs),
]


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=repr)
@pytest.mark.parametrize("fitted_on", ["frame", "array"])
def test_numeric_transform_equals_scikit_learn(estimator, fitted_on):
    fitted = estimator.fit(TRAIN if fitted_on == "frame" else TRAIN_ARRAY)
    op = lower(fitted, "transform")
    for X in _inputs(fitted_on == "array"):
        assert_same_outcome(op, fitted, X)


def test_compiled_path_does_not_call_scikit_learn(monkeypatch):
    cases = [
        (StandardScaler().fit(TRAIN), _numbers(40, seed=8, nan=True)),
        (MinMaxScaler(clip=True).fit(TRAIN_ARRAY), _numbers(3, seed=9).to_numpy() * 3),
        (SimpleImputer(strategy="median").fit(TRAIN), _numbers(30, seed=10, nan=True)),
        (SimpleImputer(strategy="constant", fill_value=0.0).fit(TRAIN), _numbers(1, seed=11)),
    ]
    for fitted, X in cases:
        op = lower(fitted, "transform")
        expected = fitted.transform(X)
        monkeypatch.setattr(fitted, "transform", lambda *a: pytest.fail("scikit-learn was called"))
        got = op(X)
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
        monkeypatch.undo()


COLOURS = ["red", "green", "blue", "", "grün"]


def _categories(n: int, seed: int, unknown: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    colours = rng.choice(COLOURS + (["purple"] if unknown else []), n)
    return pd.DataFrame({"colour": colours, "size": rng.choice(["S", "M", "L"], n)}, dtype=object)


CATEGORIES = _categories(200, seed=12)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"handle_unknown": "use_encoded_value", "unknown_value": -1},
        {"handle_unknown": "use_encoded_value", "unknown_value": np.nan},
        {"handle_unknown": "use_encoded_value", "unknown_value": 99, "dtype": np.int64},
        {"dtype": np.float32},
    ],
    ids=repr,
)
def test_ordinal_encoder_equals_scikit_learn(options, monkeypatch):
    encoder = OrdinalEncoder(**options).fit(CATEGORIES)
    op = lower(encoder, "transform")
    with_none = _categories(10, seed=13)
    with_none.loc[2, "colour"] = None
    for X in (
        _categories(1, seed=14),
        _categories(300, seed=15),
        _categories(40, seed=16, unknown=True),  # unknown: unknown_value, or scikit-learn's error
        _categories(30, seed=17, unknown=True).astype("str"),
        _categories(300, seed=21, unknown=True).astype("str"),  # pyarrow matches large batches
        with_none,
        pd.concat([with_none] * 30, ignore_index=True).astype("str"),  # NaN: scikit-learn's answer
        _categories(0, seed=18),
        _categories(5, seed=19)[["size", "colour"]],
        _categories(5, seed=19).to_numpy(),
    ):
        assert_same_outcome(op, encoder, X)
    X = _categories(50, seed=20, unknown="unknown_value" in options)
    expected = encoder.transform(X)
    monkeypatch.setattr(encoder, "transform", lambda *a: pytest.fail("scikit-learn was called"))
    np.testing.assert_array_equal(op(X), expected)
    assert op(X).dtype == expected.dtype


@pytest.mark.parametrize(
    "estimator, reason",
    [
        (StandardScaler(copy=False).fit(TRAIN), "in place"),
        (SimpleImputer(add_indicator=True).fit(TRAIN), "add_indicator"),
        (SimpleImputer(missing_values=-1).fit(TRAIN.fillna(0)), "only NaN"),
        (SimpleImputer().fit(pd.DataFrame({"a": [np.nan, np.nan], "b": [1.0, 2.0]})), "without any observed"),
        (SimpleImputer(strategy="most_frequent").fit(_categories(20, seed=21)), "only numeric"),
        (OrdinalEncoder().fit(CATEGORIES.to_numpy()), "fitted on an array"),
        (OrdinalEncoder().fit(pd.DataFrame({"n": [1, 2, 3]})), "not all str"),
        (OrdinalEncoder().fit(pd.DataFrame({"c": ["a", None, "b"]}, dtype=object)), "not all str"),
        (FunctionTransformer(lambda X: X + 1), "only one-input numpy ufuncs"),
        (FunctionTransformer(np.log1p, validate=True), "validate=True"),
        (MinMaxScaler(), "not fitted"),
    ],
)
def test_not_lowerable(estimator, reason):
    with pytest.raises(NotLowerable, match=reason):
        lower(estimator, "transform")


def test_output_settings_read_at_call_time():
    scaler = StandardScaler().fit(TRAIN)
    op = lower(scaler, "transform")
    scaler.set_output(transform="pandas")
    X = _numbers(10, seed=22)
    pd.testing.assert_frame_equal(op(X), scaler.transform(X))
    assert "minus mean_ then divided by scale_" in lower(StandardScaler().fit(TRAIN), "transform").source
