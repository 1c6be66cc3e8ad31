"""Row reductions (np.sum/np.nansum/np.mean/np.nanmean/np.nanmax/np.nanmin with axis=1) of compiled
2-D expressions: bit-identical to numpy, pairwise summation and memory order included."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lowering_helpers import compile_expression

from willow.compiler.lowering.base import NotLowerable

NS = {"np": np}
FUNCTIONS = ["sum", "nansum", "mean", "nanmean", "nanmax", "nanmin"]
CHILDREN = ["m * 2.0 - w", "np.maximum(m, w) / x[:, None]", "m + 0.0"]
WIDTHS = [0, 1, 3, 7, 8, 9, 17, 33, 128, 129]  # pairwise blocks of 8; numpy recurses past 128


def _compiled(source: str):
    calibration = {"m": np.ones((3, 4)), "w": np.ones((3, 4)), "x": np.ones(3)}
    run, _ = compile_expression(source, {**NS, **calibration}, row_names=("m", "w", "x"))
    return run


def _same(got, expected, signed_zeros=True):
    """Equal shape, dtype and values (NaN where numpy has NaN); the signs of zeros too, except for
    nanmax/nanmin, whose zeros numpy's SIMD loops pick either way (equal as numbers)."""
    if isinstance(expected, Exception):
        return type(got) is type(expected)
    sign_checked = expected if signed_zeros else np.where(expected == 0, 0.0, expected)
    sign_got = got if signed_zeros else np.where(got == 0, 0.0, got)
    return (
        type(got) is np.ndarray
        and got.shape == expected.shape
        and got.dtype == expected.dtype
        and np.array_equal(got, expected, equal_nan=True)
        and np.array_equal(np.signbit(sign_got), np.signbit(sign_checked))
    )


def _original(source):
    return lambda values: eval(source, {**NS, **values})


def _outcome(function, source, values):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            return function(values)
        except Exception as exc:  # noqa: BLE001 - compared with the compiled call's
            return exc


def _values(rng, n, c, order):
    m = rng.normal(size=(n, c)) * 10.0 ** rng.integers(-8, 9, size=(n, c))  # order matters
    m[rng.random(m.shape) < 0.15] = np.nan
    m[rng.random(m.shape) < 0.1] = -0.0
    m[rng.random(m.shape) < 0.03] = np.inf
    if n > 1 and c:
        m[1] = np.nan  # an all-NaN row
    w = rng.normal(size=(n, c))
    w[rng.random(w.shape) < 0.3] = 0.0
    return {"m": np.asarray(m, order=order), "w": np.asarray(w, order=order), "x": rng.normal(size=n)}


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("keepdims", [False, True])
def test_row_reductions_equal_numpy_bit_for_bit(function, keepdims):
    rng = np.random.default_rng(len(function) + keepdims)
    # two of the three children per case (each kernel compiles once; cache=True keeps them)
    first = (FUNCTIONS.index(function) + keepdims) % len(CHILDREN)
    for child in (CHILDREN[first], CHILDREN[(first + 1) % len(CHILDREN)]):
        source = f"np.{function}({child}, axis=1{', keepdims=True' if keepdims else ''})"
        run = _compiled(source)
        for n in (0, 1, 2, 40):
            for c in WIDTHS:
                for order in "CF":
                    values = _values(rng, n, c, order)
                    expected = _outcome(_original(source), source, values)
                    got = _outcome(run, source, values)
                    signed = function not in ("nanmax", "nanmin")
                    assert _same(got, expected, signed), (source, n, c, order, got, expected)


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    st.sampled_from(["sum", "nansum", "mean", "nanmean"]),
    st.integers(1, 5),
    st.integers(1, 40),
    st.sampled_from("CF"),
    st.data(),
)
def test_sums_of_special_values(function, n, c, order, data):
    element = st.one_of(
        st.sampled_from([0.0, -0.0, np.nan, np.inf, -np.inf, 1e308, -1e308, 5e-324]),
        st.floats(allow_nan=True, allow_infinity=True),
    )
    m = np.asarray(
        np.array(data.draw(st.lists(element, min_size=n * c, max_size=n * c))).reshape(n, c), order=order
    )
    source = f"np.{function}(m * 1.0, axis=1)"
    run = _compiled(source)
    values = {"m": m, "w": m, "x": np.ones(n)}
    expected = _outcome(_original(source), source, values)
    assert _same(_outcome(run, source, values), expected), (source, m)


def test_lookup_rows_reduced():
    table = pd.DataFrame(np.arange(40.0).reshape(4, 10) - 7.5, index=[10, 11, 12, 13])
    table.iloc[1, 3] = np.nan
    source = "np.nansum(TABLE.reindex(keys).to_numpy(dtype=float) * w, axis=1, keepdims=True)"
    ns = {**NS, "TABLE": table, "keys": np.array([10, 11]), "w": np.ones((2, 10))}
    run, operator = compile_expression(source, ns, row_names=("keys", "w"))
    assert "row_nansum" in operator.source
    rng = np.random.default_rng(0)
    for keys in ([], [12], [10, 11, 99, 13, 13, 11]):
        keys = np.array(keys, dtype=np.int64)
        w = rng.normal(size=(len(keys), 10))
        expected = eval(source, {**ns, "keys": keys, "w": w})
        assert _same(run({"keys": keys, "w": w}), expected)


def test_reductions_not_compiled():
    ns = {**NS, "m": np.ones((3, 4)), "x": np.ones(3)}
    for source in (
        "np.sum(m * 2, axis=0)",  # a column reduction
        "np.sum(m * 2)",
        "np.nansum(x * 2, axis=1)",  # 1-D: numpy raises AxisError
        "np.nansum(m, axis=1)",  # nothing computed: numpy alone
        "np.max(m * 2, axis=1)",
    ):
        with pytest.raises(NotLowerable):
            compile_expression(source, ns, row_names=("m", "x"))
