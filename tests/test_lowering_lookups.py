"""Lookups into fitted tables compiled to kernels: equal to pandas, key kind by key kind."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lowering_helpers import compile_expression, original

from willow.compiler.lowering.base import NotLowerable
from willow.compiler.lowering.lookups import KeyIndex

rng = np.random.default_rng(7)
INT_TABLE = pd.DataFrame({"n": np.arange(5) * 10, "m": np.arange(5) - 2}, index=[3, 1, 4, 15, 9])
FLOAT_TABLE = pd.DataFrame(rng.normal(size=(5, 2)), index=[3, 1, 4, 15, 9], columns=["p", "q"])
FLOAT_TABLE.iloc[2, 0] = np.nan
MIXED_TABLE = INT_TABLE.assign(f=[0.5, np.inf, -0.0, np.nan, 2.0], b=[True, False, True, True, False])
STRING_TABLE = pd.DataFrame({"rate": [0.1, 0.2, 0.3], "size": [10, 20, 30]}, index=["a", "b", "ç"])
FLOAT_KEY_TABLE = pd.DataFrame({"v": [1.0, 2.0, 3.0]}, index=[0.5, np.nan, 2.0])
WIDE_TABLE = pd.DataFrame({"v": [1.0, 2.0, 3.0]}, index=[-(10**12), 0, 10**12])  # sparse int keys
SERIES = pd.Series([1.5, 2.5, np.nan], index=["a", "b", "c"])
INT_SERIES = pd.Series([7, 8, 9], index=[1, 2, 3])
RATES = {"a": 1, "b": 2.5, "c": np.nan}
NS = {
    "np": np,
    "pd": pd,
    "INT_TABLE": INT_TABLE,
    "FLOAT_TABLE": FLOAT_TABLE,
    "MIXED_TABLE": MIXED_TABLE,
    "STRING_TABLE": STRING_TABLE,
    "FLOAT_KEY_TABLE": FLOAT_KEY_TABLE,
    "WIDE_TABLE": WIDE_TABLE,
    "SERIES": SERIES,
    "INT_SERIES": INT_SERIES,
    "RATES": RATES,
}

INT_KEYS = [
    pd.Series([3, 1, 1, 99, 9, -5], name="k"),  # duplicated and unseen keys
    pd.Series([15], name="k"),
    pd.Series([], dtype=np.int64, name="k"),
    np.array([4, 4, 3], dtype=np.int32),
    pd.Series([3.0, np.nan, 15.0]),  # float keys (with NaN) into an int index
]
STRING_KEYS = [
    pd.Series(["a", "ç", "zz", "a", ""]),
    pd.Series(["b"]),
    pd.Series([], dtype=str),
    pd.Series(["a", None, "b"], dtype=object),
    np.array(["b", "x"], dtype=object),
]


def _check(source: str, keys_list: list, calibrate_with=None):
    run, operator = compile_expression(
        source, {**NS, "rows": calibrate_with if calibrate_with is not None else keys_list[0]}
    )
    for keys in keys_list:
        expected = original(source, NS, {"rows": keys})
        got = run({"rows": keys})
        assert type(got) is np.ndarray and got.dtype == expected.dtype and got.shape == expected.shape
        # the same memory order as pandas' result, so later reductions sum in the same order
        assert (got.flags.c_contiguous, got.flags.f_contiguous) == (
            expected.flags.c_contiguous,
            expected.flags.f_contiguous,
        )
        np.testing.assert_array_equal(got, expected)
    return operator


@pytest.mark.parametrize("table", ["INT_TABLE", "FLOAT_TABLE", "MIXED_TABLE", "WIDE_TABLE"])
def test_reindex_int_keys(table):
    operator = _check(f"{table}.reindex(rows).to_numpy(dtype=float)", INT_KEYS)
    strategy = "dense position array" if table != "WIDE_TABLE" else "get_indexer"
    assert strategy in operator.source


def test_reindex_string_and_float_keys():
    _check("STRING_TABLE.reindex(rows).to_numpy(dtype=float)", STRING_KEYS)
    float_keys = [pd.Series([0.5, np.nan, 7.0, 2.0]), pd.Series([np.nan]), np.array([2, 0])]
    _check("FLOAT_KEY_TABLE.reindex(rows).to_numpy(dtype=np.float64)", float_keys)


def test_series_tables_and_values_forms():
    _check("SERIES.reindex(rows).to_numpy(dtype=float)", STRING_KEYS)
    _check("INT_SERIES.reindex(rows).to_numpy(dtype=float)", INT_KEYS)
    _check("FLOAT_TABLE.reindex(rows).to_numpy()", INT_KEYS)  # all-float table: no dtype needed
    _check("FLOAT_TABLE.reindex(rows).values", INT_KEYS)
    _check("np.asarray(INT_TABLE.reindex(rows), dtype=float)", INT_KEYS)
    with pytest.raises(NotLowerable, match="without dtype=float"):
        compile_expression("INT_TABLE.reindex(rows).to_numpy()", {**NS, "rows": INT_KEYS[0]})


def test_map_with_dict_and_series():
    series_keys = [k for k in STRING_KEYS if isinstance(k, pd.Series)]
    _check("rows.map(RATES).to_numpy(dtype=float)", series_keys)
    _check("rows.map(SERIES).to_numpy(dtype=float)", series_keys)
    _check("rows.map(INT_SERIES).to_numpy(dtype=float)", [k for k in INT_KEYS if isinstance(k, pd.Series)])


def test_loc_matches_and_raises_like_pandas():
    run, _ = compile_expression("INT_TABLE.loc[rows].to_numpy(dtype=float)", {**NS, "rows": INT_KEYS[1]})
    for keys in (pd.Series([3, 3, 9]), pd.Series([], dtype=np.int64)):
        np.testing.assert_array_equal(
            run({"rows": keys}), original("INT_TABLE.loc[rows].to_numpy(dtype=float)", NS, {"rows": keys})
        )
    with pytest.raises(KeyError, match="99"):
        run({"rows": pd.Series([3, 99])})
    with pytest.raises(KeyError):
        run({"rows": pd.Series(["a"])})


def test_left_merge():
    frames = [
        pd.DataFrame({"key": [3, 99, 1, 3]}),
        pd.DataFrame({"key": [9]}),
        pd.DataFrame({"key": pd.Series([], dtype=np.int64)}),
        pd.DataFrame({"key": [3.0, np.nan]}),
    ]
    source = 'rows.merge(MIXED_TABLE, how="left", left_on="key", right_index=True).drop(columns="key").to_numpy(dtype=float)'
    _check(source, frames)
    on_table = MIXED_TABLE.rename_axis("key").reset_index()
    NS["ON_TABLE"] = on_table
    _check('rows.merge(ON_TABLE, how="left", on="key").drop(columns=["key"]).to_numpy(dtype=float)', frames)
    # a left frame with more columns than the dropped key: the original runs
    run, _ = compile_expression(source, {**NS, "rows": frames[0]})
    wider = frames[0].assign(extra=1.0)
    np.testing.assert_array_equal(run({"rows": wider}), original(source, NS, {"rows": wider}))


def test_left_merge_keeping_left_columns():
    """The merged frame's columns (left ones first, suffixes, drops) and values equal pandas'."""
    on_table = MIXED_TABLE.rename_axis("key").reset_index().rename(columns={"m": "x"})
    NS["ON_TABLE"] = on_table
    frames = [
        pd.DataFrame({"x": [0.5, -0.0, np.inf, 2.0], "key": [3, 99, 1, 3], "ok": [True, False, True, True]}),
        pd.DataFrame({"x": [np.nan], "key": [9], "ok": [False]}),
        pd.DataFrame({"x": pd.Series([], dtype=float), "key": pd.Series([], dtype=np.int64), "ok": []}),
        pd.DataFrame({"x": [1.0, 2.0], "key": [3.0, np.nan], "ok": [True, True]}),  # float keys
    ]
    for source in (
        'rows.merge(ON_TABLE, how="left", on="key").to_numpy(dtype=float)',  # x_x ... x_y
        'rows.merge(ON_TABLE, how="left", on="key").drop(columns=["key", "x_y"]).to_numpy(dtype=float)',
        'rows.merge(MIXED_TABLE, how="left", left_on="key", right_index=True).to_numpy(dtype=float)',
        'np.nansum(rows.merge(ON_TABLE, how="left", on="key").to_numpy(dtype=float) * 2.0, axis=1)',
    ):
        _check(source, frames)
        run, operator = compile_expression(source, {**NS, "rows": frames[0]})
        assert "l0[i, j]" in operator.source
        # another left layout, or a left column pandas cannot convert: pandas runs (or raises)
        for rows in (frames[0][["key", "x", "ok"]], frames[0].assign(extra=1)):
            np.testing.assert_array_equal(run({"rows": rows}), original(source, NS, {"rows": rows}))
        with pytest.raises(ValueError):
            run({"rows": frames[0].assign(x=["a", "b", "c", "d"])})


def test_merge_layout_survives_a_saved_plan():
    from lowering_helpers import _evaluator

    from willow.compiler.compile_pass import _resolve_fitted
    from willow.compiler.lowering.arithmetic import analyze, signature, stand_in

    frame = pd.DataFrame({"x": [0.5, 2.0], "key": [3, 99]})
    source = 'rows.merge(MIXED_TABLE, how="left", left_on="key", right_index=True).to_numpy(dtype=float)'
    node = __import__("ast").parse(source, mode="eval").body
    evaluate = _evaluator({**NS, "rows": frame})

    def resolve(e):
        return _resolve_fitted(e, {"rows"}, evaluate)

    expression = analyze(node, evaluate, resolve)
    again = analyze(node, stand_in(signature(expression)), resolve)
    (before,), (after,) = expression.lookups, again.lookups
    assert (after.left_columns, after.left_keep, after.width) == (before.left_columns, before.left_keep, 6)


def test_unexpected_keys_run_the_original():
    run, _ = compile_expression("INT_TABLE.reindex(rows).to_numpy(dtype=float)", {**NS, "rows": INT_KEYS[0]})
    for keys in (
        pd.Series([3, 1], dtype="category"),
        [3, 1, 99],
        pd.Series([3, 1], dtype="Int64"),
        pd.Series(["3", "x"]),
    ):
        np.testing.assert_array_equal(
            run({"rows": keys}), original("INT_TABLE.reindex(rows).to_numpy(dtype=float)", NS, {"rows": keys})
        )
    with pytest.raises(TypeError):  # pandas refuses a scalar; so does the compiled call
        run({"rows": 3})


def test_refused_tables():
    duplicated = pd.DataFrame({"v": [1.0, 2.0]}, index=[1, 1])
    with pytest.raises(NotLowerable, match="duplicate labels"):
        compile_expression(
            "T.reindex(rows).to_numpy(dtype=float)", {**NS, "T": duplicated, "rows": INT_KEYS[0]}
        )
    text = pd.DataFrame({"v": ["x", "y"]}, index=[1, 2])
    with pytest.raises(NotLowerable, match="dtype"):
        compile_expression("T.reindex(rows).to_numpy(dtype=float)", {**NS, "T": text, "rows": INT_KEYS[0]})
    dup_right = pd.DataFrame({"key": [1, 1], "v": [1.0, 2.0]})
    with pytest.raises(NotLowerable, match="duplicates"):
        compile_expression(
            'rows.merge(T, how="left", on="key").drop(columns="key").to_numpy(dtype=float)',
            {**NS, "T": dup_right, "rows": pd.DataFrame({"key": [1]})},
        )
    with pytest.raises(NotLowerable, match="how='left'"):
        compile_expression(
            'rows.merge(MIXED_TABLE, left_on="key", right_index=True).drop(columns="key").to_numpy(dtype=float)',
            {**NS, "rows": pd.DataFrame({"key": [1]})},
        )


def test_multiindex_and_range_index_tables():
    multi = pd.DataFrame({"v": [1.0, 2.0]}, index=pd.MultiIndex.from_tuples([(1, "a"), (2, "b")]))
    with pytest.raises(NotLowerable, match="MultiIndex"):
        compile_expression("T.reindex(rows).to_numpy(dtype=float)", {**NS, "T": multi, "rows": INT_KEYS[0]})
    NS["RANGED"] = pd.DataFrame({"v": np.arange(20.0)})
    _check("RANGED.reindex(rows).to_numpy(dtype=float)", INT_KEYS)


def test_key_index_strategies():
    assert KeyIndex.build(pd.Index([5, 7, 9]), "t").dense is not None
    assert KeyIndex.build(pd.Index([0, 10**9]), "t").dense is None
    assert KeyIndex.build(pd.Index(["a"]), "t").dense is None


def test_string_key_paths_agree_with_pandas_on_large_batches():
    rng = np.random.default_rng(2)
    labels = ["a", "b", "ç", "", "long label"]
    keys = pd.Series(rng.choice(labels + ["unseen", "A"], 2000))
    keys[::7] = None  # missing keys
    for source in (
        "STRING_TABLE.reindex(rows).to_numpy(dtype=float)",
        "rows.map(RATES).to_numpy(dtype=float)",
    ):
        _check(source, [keys, keys.astype(object), keys.iloc[:10]])
    _check("STRING_TABLE.reindex(rows).to_numpy(dtype=float)", [keys.to_numpy(dtype=object)])


def test_dense_position_kernel_compiles_once_per_key_dtype():
    # a frame's column (read-only under pandas 3), a NumPy array and a strided slice of the same
    # dtype run one signature (any layout, read-only); an int32 column adds one, nothing else does
    from willow.compiler.lowering.lookups import dense_rows_kernel

    index = KeyIndex.build(pd.Index([3, 1, 4, 15, 9]), "t")
    keys = np.array([3, 1, 99, 9, -5, 4, 15, 15], dtype=np.int64)
    read_only = keys.copy()
    read_only.setflags(write=False)
    frame = pd.DataFrame({"k": keys, "k32": keys.astype(np.int32)})
    expected = np.asarray(index.index.get_indexer(keys), dtype=np.int64)
    for value in (frame["k"], keys, read_only, frame.to_numpy()[:, 0], frame["k32"]):
        np.testing.assert_array_equal(index.rows(value), expected)
    np.testing.assert_array_equal(index.rows(keys[::3]), expected[::3])
    key_dtypes = [signature[0].dtype for signature in dense_rows_kernel.signatures]
    assert len(key_dtypes) == len(set(key_dtypes)), dense_rows_kernel.signatures
    assert {str(d) for d in key_dtypes} >= {"int64", "int32"}
    assert all(not s[0].mutable and s[0].layout == "A" for s in dense_rows_kernel.signatures)
