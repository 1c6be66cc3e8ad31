"""String-column concatenation in one pass (willow.frontend.strings): the same Series as pandas'
chain of ``+`` (values, missing values, dtype, index, name) on 0, 1 and many rows, and pandas'
own ``+`` wherever the fast path does not apply."""

from __future__ import annotations

import ast

import numpy as np
import pandas as pd
import pytest

from willow.frontend.driver import normalize
from willow.frontend.strings import _slow, concat_columns


def frame(n: int, dtype: str) -> pd.DataFrame:
    rng = np.random.default_rng(n)
    a = rng.choice(["NEAR BAY", "INLAND", "ÎLE", ""], n).astype(object)
    b = rng.choice(["north", "south", "紅"], n).astype(object)
    a[::5] = None  # missing values, filled by fillna or propagated
    b[::3] = None
    return pd.DataFrame({"a": a, "b": b, "x": np.arange(n, dtype=float)}).astype({"a": dtype, "b": dtype})


STRING_DTYPES = [
    "str",
    pd.StringDtype("pyarrow"),
    pd.StringDtype("python"),
    pd.StringDtype("python", na_value=np.nan),
]


@pytest.mark.parametrize("dtype", STRING_DTYPES, ids=str)
@pytest.mark.parametrize("n", [0, 1, 7, 60])
def test_the_same_series_as_pandas(dtype, n):
    df = frame(n, dtype)
    a, b = df["a"], df["b"]
    for parts in (
        ((a, ""), " ", (b, "")),
        ((a, "?"), " ", (b,), "-", (a,)),  # b and the last a keep their missing values
        ((b,), (b.rename("b"),)),  # the same name is kept
        ((a,), " ", (b.rename("a"),)),
    ):
        pd.testing.assert_series_equal(concat_columns(*parts), _slow(parts), check_exact=True)


def test_other_inputs_run_pandas_own_addition():
    df = frame(10, "str")
    shifted = df["b"].set_axis(np.arange(10) + 3)  # pandas aligns the indexes
    objects = df.astype({"a": object})["a"]
    for parts in (
        ((df["a"], ""), " ", (shifted, "")),
        ((objects, ""), "!", (df["b"], "")),
        ("prefix ", (df["a"], "")),
        ((df["x"],), (df["x"],)),
    ):
        pd.testing.assert_series_equal(concat_columns(*parts), _slow(parts), check_exact=True)
    with pytest.raises(TypeError):  # the original's own error: a number added to a string
        concat_columns((df["x"],), " ")


def build(df):
    df["name"] = df["a"].fillna("") + " " + df["b"].fillna("")
    total = df["x"] + df["x"]
    return df["name"] + "/" + df["a"], total


def test_the_pass_rewrites_literal_chains_only():
    df = frame(12, "str")
    front = normalize(build, {"df": df}, ("df",))
    source = ast.unparse(front.tree)
    assert source.count("concat_columns") == 2 and "df['x'] + df['x']" in source
    expected = build(df.copy())
    got = front.function(df.copy())
    for g, e in zip(got, expected):
        pd.testing.assert_series_equal(g, e, check_exact=True)
