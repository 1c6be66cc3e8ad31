"""Arithmetic on pandas Series (column selections of the row frame) compiled where the result is
read as an array: bit-identical to pandas, and pandas itself whenever indexes could align."""

from __future__ import annotations

import ast

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lowering_helpers import _evaluator

from willow.compiler.compile_pass import _resolve_fitted
from willow.compiler.lowering.arithmetic import (
    Stack,
    analyze,
    find_expressions,
    is_stacked,
    node_at,
    signature,
    stand_in,
)
from willow.compiler.lowering.arithmetic_codegen import compile_expression
from willow.compiler.lowering.base import NotLowerable

SPECIALS = [0.0, -0.0, np.nan, np.inf, -np.inf, 1.0, -1.0, 2.5, -3.75, 1e308, 5e-324]
NS = {"np": np, "SCALE": 0.25}
# What a consumer reads as an array: the compiled expression sits at the {} hole.
CONTEXTS = [
    "np.column_stack([{}, rows['a'] * 1.0])",
    "np.hstack(({},))",
    "({}).to_numpy(dtype=float)",
    "np.asarray({}, dtype=float)",
    "({}).values",
]
BINARY = ["({a} + {b})", "({a} - {b})", "({a} * {b})", "({a} / {b})", "np.maximum({a}, {b})"]
UNARY = ["(-{a})", "np.sqrt({a})", "({a} ** 2)", "np.floor({a})", "({a} * SCALE - 3)", "(1 / {a})"]


def _compile(source: str, namespace: dict):
    """``(run, found)``: the statement ``source`` with its compiled expressions swapped in."""
    tree = ast.parse(source, mode="eval")
    evaluate = _evaluator(namespace)
    found, _ = find_expressions(tree.body, evaluate, lambda e: _resolve_fitted(e, {"rows", "z"}, evaluate))
    operators = []
    for path, expression in found:
        operator, arguments, _ = compile_expression(expression, node_at(tree.body, path), dict(namespace))
        operators.append((path, operator, arguments))

    def run(values: dict) -> object:
        scope = {**namespace, **values}
        rewritten = ast.parse(source, mode="eval")
        for k, (path, operator, arguments) in enumerate(operators):
            scope[f"_op{k}"] = operator
            scope[f"_args{k}"] = [_evaluator(scope)(a) for a in arguments]
            call = ast.parse(f"_op{k}(*_args{k})", mode="eval").body
            if path:
                parent = node_at(rewritten.body, path[:-1])
                if isinstance(path[-1], int):
                    parent[path[-1]] = call
                else:
                    setattr(parent, path[-1], call)
            else:
                rewritten.body = call
        return eval(compile(ast.fix_missing_locations(rewritten), "<test>", "eval"), scope)

    return run, found


def _frame(values_a, values_b, index=None) -> pd.DataFrame:
    return pd.DataFrame({"a": values_a, "b": values_b, "s": ["x"] * len(values_a)}, index=index)


def _assert_identical(got, expected):
    assert type(got) is type(expected)
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    if got.dtype == np.float64:  # signed zeros too
        np.testing.assert_array_equal(np.signbit(got), np.signbit(expected))


def _check(source: str, rows: pd.DataFrame, z: np.ndarray, calibration: pd.DataFrame | None = None):
    cal = calibration if calibration is not None else rows
    run, found = _compile(source, {**NS, "rows": cal, "z": np.linspace(-1, 1, len(cal))})
    with np.errstate(all="ignore"):
        expected = eval(source, {**NS, "rows": rows, "z": z})
        got = run({"rows": rows, "z": z})
    _assert_identical(got, expected)
    return found


@st.composite
def series_case(draw):
    n = draw(st.integers(0, 6))
    column = st.lists(
        st.one_of(st.sampled_from(SPECIALS), st.floats(allow_nan=True, allow_infinity=True)),
        min_size=n,
        max_size=n,
    )
    leaves = ["rows['a']", "rows['b']", "z", "rows['a']"]
    expression = draw(
        st.recursive(
            st.sampled_from(leaves),
            lambda children: st.one_of(
                st.builds(lambda t, a: t.format(a=a), st.sampled_from(UNARY), children),
                st.builds(lambda t, a, b: t.format(a=a, b=b), st.sampled_from(BINARY), children, children),
            ),
            max_leaves=4,
        ).filter(lambda s: "(" in s and "rows" in s)
    )
    context = draw(st.sampled_from(CONTEXTS))
    z = np.array(draw(column), dtype=np.float64)
    return context.format(expression), _frame(draw(column), draw(column)), z


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(series_case())
def test_series_arithmetic_read_as_an_array_equals_pandas_bit_for_bit(case):
    source, rows, z = case
    calibration = _frame([1.0, 2.0, 3.0], [0.5, 0.0, -1.0])
    found = _check(source, rows, z, calibration)
    assert found, f"{source} was not compiled"


@pytest.mark.parametrize("n", [0, 1, 2, 1000])
def test_division_by_zero_nan_and_inf_like_pandas(n):
    rng = np.random.default_rng(n)
    a = rng.choice(SPECIALS, n)
    b = rng.choice([0.0, -0.0, np.nan, np.inf, 3.0], n)
    rows = _frame(a, b)
    z = rng.normal(size=n)
    source = "np.column_stack([rows['a'] / rows['b'], rows['b'] / rows['a'], (rows['a'] - z) * rows['b']])"
    (found,) = _check(source, rows, z, _frame([1.0, 2.0], [0.0, 1.0]))
    assert isinstance(found[1].root, Stack)  # one kernel writes the three columns


def test_operands_that_would_align_or_change_kind_run_pandas():
    source = "np.column_stack([rows['a'] / rows['b'], rows['a'] + z])"
    calibration = _frame([1.0, 2.0, 3.0], [0.5, 0.0, -1.0])
    run, found = _compile(source, {**NS, "rows": calibration, "z": np.zeros(3)})
    assert len(found) == 1
    z = np.array([1.0, 2.0, 3.0])
    shuffled = _frame([1.0, 2.0, 3.0], [4.0, 0.0, np.nan], index=[2, 0, 1])
    integers = pd.DataFrame({"a": [1, 2, 3], "b": [0, 1, 2]})
    nullable = integers.astype("Float64")
    for rows in (shuffled, integers, nullable, _frame([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], index=list("abc"))):
        with np.errstate(all="ignore"):
            expected = eval(source, {**NS, "rows": rows, "z": z})
            _assert_identical(run({"rows": rows, "z": z}), expected)
    # Series whose indexes differ: pandas aligns them (here: a longer result, NaN where unmatched)
    run_aligned, found = _compile("np.column_stack([rows['a'] / rows['b']])", {**NS, "rows": calibration})
    assert len(found) == 1
    frame_like = {"a": pd.Series([1.0, 2.0, 3.0]), "b": pd.Series([1.0, 2.0, 3.0], index=[1, 2, 3])}
    expected = eval("np.column_stack([rows['a'] / rows['b']])", {**NS, "rows": frame_like})
    assert expected.shape == (4, 1)
    _assert_identical(run_aligned({"rows": frame_like}), expected)
    with pytest.raises(ValueError):  # pandas' length error, from the original expression
        run({"rows": calibration, "z": np.zeros(5)})


def test_a_series_used_as_a_series_stays_python():
    rows = _frame([1.0, 2.5, 3.5], [0.5, 0.0, -1.0])
    for source in (
        "(rows['a'] / SCALE).round().astype(int) * 10000",
        "rows['a'] / rows['b']",
        "np.column_stack([(rows['a'] / SCALE).round()])",
        "np.column_stack([np.clip(rows['a'], 0, 1)])",  # Series.clip: pandas' own signed zeros
        "(rows['a'] > 1).to_numpy(dtype=float)",  # a bool -> float conversion
        "np.column_stack([rows['a'][:, None] * 2])",
    ):
        node = ast.parse(source, mode="eval").body
        evaluate = _evaluator({**NS, "rows": rows})
        found, _ = find_expressions(node, evaluate, lambda e, ev=evaluate: _resolve_fitted(e, {"rows"}, ev))
        assert not any(o.series for _, e in found for o in e.operands), (source, [e.source for _, e in found])


def test_column_stacks_in_one_kernel_or_column_by_column():
    rows = _frame([1.0, np.nan, -2.0, 0.0], [0.5, 0.0, np.inf, -0.0])
    z = np.arange(4.0)
    ns = {**NS, "rows": rows, "z": z}
    cases = {
        # all columns 1-D of one kind: one kernel (plain columns and arrays are read in place)
        "np.column_stack([rows['a'] / rows['b'], rows['a'], z, -rows['b']])": [Stack],
        "np.column_stack((rows['a'] > z, rows['b'] != rows['b']))": [Stack],
        # a column numpy computes, mixed kinds, 2-D blocks: column by column
        "np.column_stack([rows['a'] / rows['b'], np.log1p(z)])": [Stack],  # log1p(z) an operand
        # numpy computes log1p of the Series (and the product in it); the kernel reads the result
        "np.column_stack([rows['a'] / rows['b'], np.log1p(rows['a'] * 2)])": [Stack],
        "np.column_stack([rows['a'] / rows['b'], rows['a'] > 0])": ["stacked", "stacked"],
        "np.column_stack([rows['a'] * 2.0, np.ones((4, 2))])": ["stacked"],
        "np.hstack([rows['a'] * 2.0, rows['b'] - z])": ["stacked", "stacked"],
    }
    for source, shapes in cases.items():
        found = _check(source, rows, z)
        got = [type(e.root) if isinstance(e.root, Stack) else "stacked" * e.stacked for _, e in found]
        assert got == shapes, source
        run, _ = _compile(source, ns)
        for n in (0, 1):
            part = {"rows": rows.iloc[:n], "z": z[:n]}
            try:
                expected = eval(source, {**NS, **part})
            except ValueError:  # np.ones((4, 2)) against fewer rows: numpy's error, from the original
                with pytest.raises(ValueError):
                    run(part)
                continue
            _assert_identical(run(part), expected)


def test_where_and_bool_results():
    rows = _frame([1.0, np.nan, -2.0, 0.0], [0.5, 0.0, np.inf, -0.0])
    z = np.arange(4.0)
    _check("np.column_stack([np.where(rows['a'] > rows['b'], rows['a'], z), rows['a'] * 2])", rows, z)
    _check("np.hstack([(rows['a'] > 0) & (rows['b'] == rows['b']), rows['a'] <= z])", rows, z)
    _check("(rows['a'] != rows['b']).values", rows, z)


def test_a_loaded_plan_recompiles_series_operands():
    rows = _frame([1.0, 2.0], [0.0, 4.0])
    evaluate = _evaluator({**NS, "rows": rows})

    def resolve(e):
        return _resolve_fitted(e, {"rows"}, evaluate)

    for source in (
        "np.column_stack([rows['a'] / rows['b'], rows['a'] * 2.0])",  # one kernel: the stack
        "np.hstack([rows['a'] / rows['b'], rows['a'] * 2.0])",  # a kernel per element
    ):
        tree = ast.parse(source, mode="eval")
        found, _ = find_expressions(tree.body, evaluate, resolve)
        assert found
        for path, expression in found:
            stacked = is_stacked(tree.body, path, resolve)
            assert stacked == (not isinstance(expression.root, Stack))
            node = node_at(tree.body, path)
            again = analyze(node, stand_in(signature(expression)), resolve, stacked=stacked)
            assert [o.series for o in again.operands] == [o.series for o in expression.operands]
            assert all(o.series for o in again.operands)
            if stacked:
                with pytest.raises(NotLowerable):  # not stacked: the Series result would be read as one
                    analyze(node, stand_in(signature(expression)), resolve, stacked=False)
