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
    orders = draw(st.sampled_from(["CC", "FF", "CF", "FC"]))  # numpy's result order follows them
    return draw(expressions(["m", "x[:, None]", "w"])), {
        "m": np.asarray(draw(arrays(n, 3)), order=orders[0]),
        "w": np.asarray(draw(arrays(n, 3)), order=orders[1]),
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
    layout = (expected.flags.c_contiguous, expected.flags.f_contiguous)
    assert (got.flags.c_contiguous, got.flags.f_contiguous) == layout, source
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


def test_transcendental_functions_and_general_powers_are_left_to_numpy():
    from lowering_helpers import _evaluator

    from willow.compiler.compile_pass import _resolve_fitted
    from willow.compiler.lowering.arithmetic import find_expressions

    x = np.array([0.5, 2.0, np.nan, 0.0, np.inf])
    ns = {**NS, "x": x}
    for source in ("np.log1p(x)", "x ** 1.5", "2.0 ** x", "x ** x"):
        with pytest.raises(NotLowerable):
            compile_expression(source, ns, row_names=("x",))
    _, operator = compile_expression("np.exp(x) * 2", ns, row_names=("x",))  # numpy's exp is an operand
    assert "operand 0: np.exp(x)" in operator.source
    import ast

    node = ast.parse("np.log1p(np.abs(x) * SCALE) + np.where(x > 0, x ** 2, -x)", mode="eval").body
    evaluate = _evaluator(ns)
    found, _ = find_expressions(node, evaluate, lambda e: _resolve_fitted(e, {"x"}, evaluate))
    assert [e.source for _, e in found] == [
        "np.abs(x) * SCALE",
        "np.where(x > 0, x ** 2, -x)",
    ]
    for _, expression in found:
        _assert_same(expression.source, {"x": x})


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


@pytest.mark.parametrize(
    "source",
    [
        "np.where(x > 0, y, -y) / (y * y + 1.0)",  # 1-D
        "TABLE.reindex(rows['key']).to_numpy(dtype=float) * 2.0 - w[:, None]",  # lookup, F order
        "np.nansum(TABLE.reindex(rows['key']).to_numpy(dtype=float) * w[:, None], axis=1)",  # scratch row
        "np.column_stack([rows['a'] / rows['b'], rows['b'] - rows['a']])",  # stack, C order
    ],
)
def test_row_chunks_on_worker_threads_equal_one_thread(monkeypatch, source):
    """Large batches fill row chunks on the worker threads: the same values and memory order as
    numpy, whichever chunk each row falls in (forced here at any size and thread count)."""
    from willow.compiler.lowering import arithmetic_codegen, chunks

    rng = np.random.default_rng(3)
    n = 2_000
    table = pd.DataFrame(rng.normal(size=(50, 4)), index=np.arange(0, 100, 2))
    rows = pd.DataFrame({"key": rng.integers(-5, 110, n), "a": rng.normal(size=n), "b": rng.normal(size=n)})
    values = {"rows": rows, "x": rng.normal(size=n), "y": rng.normal(size=n), "w": rng.normal(size=n)}
    values["x"][::7] = np.nan
    namespace = {**NS, "TABLE": table, **values}
    run, _ = compile_expression(source, namespace)
    expected = original(source, namespace, values)
    monkeypatch.setattr(arithmetic_codegen, "PARALLEL_MIN_VALUES", 0)
    monkeypatch.setattr(chunks, "worker_threads", lambda: 3)
    calls = []
    real_map = chunks.map_row_chunks
    monkeypatch.setattr(chunks, "map_row_chunks", lambda *a: calls.append(a[1:]) or real_map(*a))
    got = run(values)
    assert calls == [(n, 3)]  # the chunked path ran
    np.testing.assert_array_equal(got, expected)
    assert got.flags.f_contiguous == expected.flags.f_contiguous
    assert got.flags.c_contiguous == expected.flags.c_contiguous


def test_one_signature_per_layout_combination_whatever_the_write_flag():
    """Writable and read-only operands (pandas 3's to_numpy() is read-only) run one signature per
    combination of C/Fortran layouts, strided operands one per combination with any-layout ("A")
    arrays, in a dispatcher of its own (see signatures.LayoutKernel). Every result equals numpy's, in numpy's memory order."""
    rng = np.random.default_rng(4)
    m, w = rng.normal(size=(7, 3)), rng.normal(size=(7, 3))
    m[2, 1] = np.nan

    def read_only(array):
        array = array.copy(order="K")
        array.setflags(write=False)
        return array

    source = "m * 2.0 - w"
    run, operator = compile_expression(source, {**NS, "m": m, "w": w}, row_names=("m", "w"))
    firsts = (
        m,
        read_only(m),
        np.asfortranarray(m),
        read_only(np.asfortranarray(m)),
        pd.DataFrame(m).to_numpy(),
    )
    cases = [(a, b) for a in firsts for b in (w, np.asfortranarray(w), read_only(w))]
    cases += [(m[::2], w[::2].copy()), (read_only(m)[:, ::-1], w), (m[1:2], w[1:2]), (m[:0], w[:0])]
    for first, second in cases:
        values = {"m": first, "w": second}
        expected, got = original(source, NS, values), run(values)
        assert (got.flags.c_contiguous, got.flags.f_contiguous) == (
            expected.flags.c_contiguous,
            expected.flags.f_contiguous,
        )
        np.testing.assert_array_equal(got, expected)
    cells = dict(zip(operator.function.__code__.co_freevars, operator.function.__closure__))
    kernel = cells["kernel"].cell_contents
    exact = kernel.dispatcher.signatures
    # (out, m, w): C C C, C C F, C F C, F F F; read-only and writable operands share each
    assert len(exact) == 4, exact
    assert len({tuple(t.layout for t in s if hasattr(t, "layout")) for s in exact}) == 4
    assert all(s[0].mutable and not any(t.mutable for t in s[4:]) for s in exact), exact
    # strided operands: (out, m, w) C A C for both strided calls, their own dispatcher
    assert [[t.layout for t in s if hasattr(t, "layout")] for s in kernel.signatures[4:]] == [["C", "A", "C"]]
