"""Elementwise numpy expressions compiled to one kernel: equal to numpy on any input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lowering_helpers import compile_expression, original

from willow.compiler.lowering.base import NotLowerable

SPECIALS = [0.0, -0.0, np.nan, np.inf, -np.inf, 1.0, -1.0, 1e-308, 5e-324, 1e308, 2.5, -3.75]
NS = {"np": np, "SCALE": 0.25, "OFFSET": 3}

# Operations whose float64 results are bit-identical to numpy's.
EXACT_BINARY = [
    "({a} + {b})",
    "({a} - {b})",
    "({a} * {b})",
    "({a} / {b})",
    "np.minimum({a}, {b})",
    "np.maximum({a}, {b})",
    "np.fmin({a}, {b})",
    "np.fmax({a}, {b})",
    "np.where({a} > {b}, {a}, {b})",
    "np.where(({a} <= {b}) & ({b} == {b}), {a}, -{b})",
]
EXACT_UNARY = [
    "(-{a})",
    "np.sqrt({a})",
    "np.abs({a})",
    "({a} ** 2)",
    "({a} ** 0.5)",
    "({a} ** -1)",
    "np.floor({a})",
    "np.square({a})",
    "np.clip({a}, -1.5, 2)",
    "np.sign({a})",
    "np.where(np.isnan({a}), 0.0, {a})",
    "({a} * SCALE - OFFSET)",
    "(1 / {a})",
]


def expressions(leaves):
    return st.recursive(
        st.sampled_from(leaves),
        lambda children: st.one_of(
            st.builds(lambda t, a: t.format(a=a), st.sampled_from(EXACT_UNARY), children),
            st.builds(lambda t, a, b: t.format(a=a, b=b), st.sampled_from(EXACT_BINARY), children, children),
        ),
        max_leaves=5,
    ).filter(lambda s: "(" in s)


def arrays(n, columns=None):
    element = st.one_of(st.sampled_from(SPECIALS), st.floats(allow_nan=True, allow_infinity=True, width=64))
    shape = n if columns is None else n * columns
    return st.lists(element, min_size=shape, max_size=shape).map(
        lambda v: np.array(v, dtype=np.float64).reshape((n,) if columns is None else (n, columns))
    )


@st.composite
def one_d_case(draw):
    n = draw(st.integers(0, 6))
    return draw(expressions(["x", "y"])), {"x": draw(arrays(n)), "y": draw(arrays(n))}


@st.composite
def two_d_case(draw):
    n = draw(st.integers(0, 5))
    return draw(expressions(["m", "x[:, None]", "w"])), {
        "m": draw(arrays(n, 3)),
        "w": draw(arrays(n, 3)),
        "x": draw(arrays(n)),
    }


def _assert_same(source, values, calibration=None):
    run, operator = compile_expression(
        source, {**NS, **(calibration or values)}, row_names=("x", "y", "m", "w")
    )
    with np.errstate(all="ignore"):
        expected = original(source, NS, values)
    got = run(values)
    assert got.dtype == expected.dtype and got.shape == expected.shape, source
    np.testing.assert_array_equal(got, expected, err_msg=source)
    return operator


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(one_d_case())
def test_exact_operations_equal_numpy_bit_for_bit(case):
    source, values = case
    _assert_same(source, values)


@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(two_d_case())
def test_broadcast_columns_equal_numpy(case):
    source, values = case
    _assert_same(source, values)


def _ulps(got, expected):
    finite = np.isfinite(expected) & np.isfinite(got)
    assert np.array_equal(np.isnan(got), np.isnan(expected)) and np.array_equal(
        got[~finite & ~np.isnan(got)], expected[~finite & ~np.isnan(expected)]
    )
    if not finite.any():
        return 0.0
    return float(np.max(np.abs(got[finite] - expected[finite]) / np.spacing(np.abs(expected[finite]))))


@pytest.mark.parametrize(
    "function,max_ulps",
    [
        ("np.log", 1),
        ("np.log1p", 1),
        ("np.log2", 1),
        ("np.log10", 2),
        ("np.exp", 1),
        ("np.expm1", 1),
        ("np.tanh", 2),
        ("np.arctan", 1),
        ("np.sin", 1),
        ("np.cos", 1),
    ],
)
def test_transcendental_functions_within_stated_ulps(function, max_ulps):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(20000) * 10, np.abs(rng.standard_normal(2000)) * 1e-6, SPECIALS])
    run, _ = compile_expression(f"{function}(x)", {**NS, "x": x}, row_names=("x",))
    with np.errstate(all="ignore"):
        expected = original(f"{function}(x)", NS, {"x": x})
    assert _ulps(run({"x": x}), expected) <= max_ulps


def test_general_power_within_one_ulp():
    rng = np.random.default_rng(1)
    x, y = np.abs(rng.standard_normal(20000)) * 5, rng.standard_normal(20000) * 3
    run, _ = compile_expression("x ** y + x ** 1.5", {**NS, "x": x, "y": y}, row_names=("x", "y"))
    assert _ulps(run({"x": x, "y": y}), x**y + x**1.5) <= 2


def test_division_by_zero_and_nan_comparisons_like_numpy():
    x = np.array([1.0, -1.0, 0.0, np.nan, np.inf])
    y = np.zeros(5)
    _assert_same("x / y", {"x": x, "y": y})
    _assert_same("x > y", {"x": x, "y": y})  # bool result
    _assert_same("np.where(x, 1.0, 2.0)", {"x": x, "y": y})  # float condition: NaN is true


def test_operands_that_change_kind_run_numpy():
    x = np.array([1.0, 2.0, 3.0])
    run, _ = compile_expression("x * 2 + np.log(x)", {**NS, "x": x}, row_names=("x",))
    for value in (x.astype(np.float32), x.astype(np.int64), pd.Series(x), x.reshape(3, 1), np.float64(2.0)):
        expected = original("x * 2 + np.log(x)", NS, {"x": value})
        got = run({"x": value})
        assert type(got) is type(expected) and np.asarray(got).dtype == np.asarray(expected).dtype
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    run2, _ = compile_expression("m - x[:, None]", {**NS, "x": x, "m": np.ones((3, 2))}, row_names=("x", "m"))
    mismatched = {"x": np.ones(4), "m": np.ones((3, 2))}
    with pytest.raises(ValueError):  # numpy's broadcasting error, from the original expression
        run2(mismatched)


def test_refusals():
    x = np.ones(3)
    with pytest.raises(NotLowerable, match="1-D and 2-D"):
        compile_expression("x + m", {**NS, "x": x, "m": np.ones((3, 3))}, row_names=("x", "m"))
    with pytest.raises(NotLowerable):
        compile_expression("x + 1", {**NS, "x": pd.Series(x)}, row_names=("x",))
    with pytest.raises(NotLowerable):
        compile_expression("x + 1", {**NS, "x": x.astype(int)}, row_names=("x",))
    with pytest.raises(NotLowerable, match="integer"):
        compile_expression("np.where(x > 0, 1, 0)", {**NS, "x": x}, row_names=("x",))
    with pytest.raises(NotLowerable, match="no lookup or array operation"):
        compile_expression("x[:, None]", {**NS, "x": x}, row_names=("x",))
