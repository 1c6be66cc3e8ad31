"""Column selections by a literal label list (willow.frontend.selections): the same result as
pandas' ``X[[...]]`` (values, dtypes, column order, index) on 0, 1 and many rows, pandas' own
subscript for duplicate labels and non-frames, and only reads of distinct string literals are
rewritten."""

from __future__ import annotations

import ast
import re

import numpy as np
import pandas as pd
import pytest

from willow.frontend.driver import normalize
from willow.frontend.selections import select_frame_columns


def frame(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(n)
    text = rng.choice(["a b", "", "紅"], n).astype(object)
    text[::3] = None
    values = rng.normal(size=n)
    values[::4] = np.nan
    return pd.DataFrame(
        {
            "text": pd.array(text, dtype="str"),
            "x": values,
            "k": np.arange(n),
            "c": pd.Categorical(rng.choice(["p", "q"], n)),
        },
        index=np.arange(n) * 2 + 5,
    )


def build(df):
    df["t2"] = df["text"]
    df[["x", "k"]] = df[["k", "x"]]  # a store target is left alone
    labels = ["k", "x"]
    picked = df[labels]  # not a literal: left alone
    return df[["t2", "x", "c"]], picked, df[["k"]]


@pytest.mark.parametrize("n", [0, 1, 9])
def test_the_pass_gives_pandas_own_frames(n):
    df = frame(n)
    front = normalize(build, {"df": df}, ("df",))
    source = ast.unparse(front.tree)
    assert len(re.findall(r"select_frame_columns\w*\(df, \[", source)) == 3, (
        source
    )  # two returned reads and the right side
    assert "df[['x', 'k']] =" in source and "df[labels]" in source
    for got, expected in zip(front.function(df.copy()), build(df.copy())):
        pd.testing.assert_frame_equal(got, expected, check_exact=True, check_column_type=True)


def test_anything_else_runs_pandas_own_subscript():
    df = frame(6)
    duplicated = pd.concat([df, df[["x"]]], axis=1)  # two columns named x: both are selected
    pd.testing.assert_frame_equal(
        select_frame_columns(duplicated, ["x", "k"]), duplicated[["x", "k"]], check_exact=True
    )
    with pytest.raises(KeyError):  # a missing label raises as pandas does
        select_frame_columns(df, ["x", "missing"])
    series = pd.Series([1, 2], index=["a", "b"])
    pd.testing.assert_series_equal(select_frame_columns(series, ["b"]), series[["b"]])
    array = np.zeros(3, dtype=[("a", float), ("b", int)])
    assert select_frame_columns(array, ["b"]).dtype == array[["b"]].dtype
