"""``DictVectorizer.transform(frame.to_dict(orient="records"))`` compiled column-wise
(willow.compiler.lowering.records) and the front-end pass that fuses the two statements
(willow.frontend.records): scikit-learn's exact output (container, index dtypes, explicit zeros,
NaN) on 0, 1 and many rows, unseen values, missing strings and other column types."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from equivalence import assert_same_as_original
from sklearn.feature_extraction import DictVectorizer
from sklearn.linear_model import Ridge
from test_lowering_encoders import assert_same_result

import willow
from willow.compiler.lowering import lower
from willow.compiler.lowering.base import NotLowerable
from willow.compiler.lowering.records import FrameRecordsVectorizer

EXACT = dict(
    cascade=False,
    require_faster=False,
    accuracy_target=0.9,
    confidence=0.9,
    cost_repeats=3,
    importance_repeats=1,
)


def frame(n: int, seed: int, unseen: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    kinds = ["a", "b", "c"] + (["new"] if unseen else [])
    amount = rng.normal(size=n).round(1)
    amount[rng.random(n) < 0.2] = 0.0  # explicit zeros stay stored, as in scikit-learn
    amount[rng.random(n) < 0.1] = np.nan
    return pd.DataFrame(
        {
            "amount": amount,
            "count": rng.integers(0, 5, n),
            "kind": pd.array(rng.choice(kinds, n), dtype="string"),
            "flag": rng.random(n) < 0.5,
            "label": np.array(rng.choice(["x", "y"], n), dtype=object),
        }
    )


TRAIN = frame(200, 0)


def outcome(function, X):
    try:
        return function(X)
    except Exception as exc:  # noqa: BLE001 - compared with the original's own error
        return type(exc)


@pytest.mark.parametrize(
    "options, columns",
    [
        ({}, None),
        ({}, ["amount", "kind"]),
        ({"sparse": False}, ["count", "label", "flag"]),
        ({"dtype": np.float32, "separator": ":"}, None),
    ],
)
def test_the_same_matrix_as_scikit_learn(options, columns):
    records = (TRAIN if columns is None else TRAIN[columns]).to_dict(orient="records")
    wrapper = FrameRecordsVectorizer(DictVectorizer(**options).fit(records), columns)
    operator = lower(wrapper, "transform")
    for X in (frame(50, 1, unseen=True), frame(1, 2), frame(0, 3), TRAIN.drop(columns=["amount"])):
        expected = outcome(wrapper.transform, X)
        got = outcome(operator, X)
        if isinstance(expected, type):
            assert got is expected  # 0 rows, a missing column: the original's own error
        else:
            assert_same_result(got, expected)


def test_inputs_outside_the_fast_path_run_the_original():
    wrapper = FrameRecordsVectorizer(DictVectorizer().fit(TRAIN.to_dict(orient="records")))
    operator = lower(wrapper, "transform")
    missing = frame(20, 4).astype({"kind": object})
    missing.loc[3, "kind"] = None  # a missing string: scikit-learn's "kind" feature with NaN
    nullable = frame(20, 5).astype({"count": "Int64"})
    categorical = frame(20, 6).astype({"label": "category"})
    for X in (missing, nullable, categorical, frame(5, 7).to_dict(orient="list")):
        expected = outcome(wrapper.transform, X)
        got = outcome(operator, X)
        if isinstance(expected, type):
            assert got is expected
        else:
            assert_same_result(got, expected)
    with pytest.raises(NotLowerable, match="dtype"):
        lower(FrameRecordsVectorizer(DictVectorizer(dtype=np.int64).fit([{"a": 1}])), "transform")


def records_pipeline(rows, dict_vectorizer):
    df = rows[["amount", "kind", "count"]]
    records = df.to_dict(orient="records")
    X = dict_vectorizer.transform(records)
    return model.predict(X)


model = None


def test_the_front_end_fuses_records_and_guards_the_vectorizer():
    global model
    columns = ["amount", "kind", "count"]
    dv = DictVectorizer().fit(TRAIN[columns].to_dict(orient="records"))
    model = Ridge().fit(
        np.nan_to_num(dv.transform(TRAIN[columns].to_dict(orient="records")).toarray()), TRAIN["count"]
    )
    clean = frame(300, 8).fillna({"amount": 0.0})
    pipeline = willow.optimize(records_pipeline, **EXACT).calibrate(clean, dv)
    assert "dict_vectorizer_records.transform(rows)" in pipeline.graph_.source
    report = pipeline._compilation.report()  # compiled, unless it measured slower on this machine
    assert "DictVectorizer.transform(records)]" in report or "measured slower than Python" in report
    batch = frame(40, 9, unseen=True).fillna({"amount": 0.0})
    for rows in (batch, batch.iloc[:1]):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the compiled Ridge may differ in the last bit
            np.testing.assert_allclose(pipeline(rows, dv), records_pipeline(rows, dv), rtol=1e-12)
    assert_same_as_original(pipeline, batch.iloc[:0], dv)
    other = DictVectorizer().fit(batch[columns].to_dict(orient="records"))
    with pytest.warns(willow.ModelChangedWarning, match="`dict_vectorizer`"), pytest.raises(ValueError):
        pipeline(batch, other)  # the original's own error: another number of features
