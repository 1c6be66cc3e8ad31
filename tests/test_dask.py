"""willow.dask.predict on a real multi-process LocalCluster equals the single-process pipeline.

Pipelines reach the worker processes by pickling: ``pipelines.frame_pipeline`` by reference (the
workers import ``pipelines``: they inherit this process's ``sys.path``), the text closure by
value. Partitions include an empty and a one-row partition.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pipelines
import pytest
from picklable import frame_cascade, make_text_pipeline, text_setup

import willow

dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")
import dask.dataframe as dd  # noqa: E402

import willow.dask  # noqa: E402

FAST = dict(cost_repeats=2, importance_repeats=1)
BOUNDS = (0, 150, 150, 151, 290)  # partitions of 150, 0, 1, 139 and the remaining rows


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
    )
    with distributed.Client(cluster) as connected:
        yield connected
    cluster.close()


def irregular(frame: pd.DataFrame) -> dd.DataFrame:
    """``frame`` as a dask DataFrame whose partitions have 150, 0, 1, 139 and the remaining rows."""
    edges = list(BOUNDS) + [len(frame)]
    parts = [dask.delayed(frame.iloc[a:b]) for a, b in zip(edges[:-1], edges[1:])]
    ddf = dd.from_delayed(parts, meta=frame.iloc[:0])
    assert [len(p) for p in dask.compute(*parts)][1:3] == [0, 1]
    return ddf


@pytest.fixture(scope="module")
def tabular():
    pipeline, model, test = frame_cascade(seed=7, **FAST)
    return pipeline, model, test.assign(user=np.arange(len(test)))  # a column the pipeline does not read


@pytest.fixture(scope="module")
def text(sms):
    words, chars, model, calib, batch = text_setup(*sms, n_calib=1500)
    compiled = make_text_pipeline(words, chars, cascade=False, **FAST).calibrate(model, calib)
    assert compiled.plan_.compiled_nodes >= 1 and compiled._serving is not None
    frame = pd.DataFrame({"text": batch, "id": np.arange(len(batch))}, index=np.arange(len(batch)) * 3 + 1)
    return compiled, model, frame


def test_cascade_pipeline_equals_single_process(client, tabular):
    pipeline, model, test = tabular
    features = test[[c for c in test.columns if c != "user"]]
    result = willow.dask.predict(pipeline, irregular(test), model, columns=list(features.columns))
    assert isinstance(result, dd.Series) and result.npartitions == len(BOUNDS)
    computed = result.compute()
    expected = pipeline(model, features)
    assert computed.index.equals(test.index)
    assert computed.dtype == expected.dtype
    np.testing.assert_array_equal(computed.to_numpy(), expected)


def test_compiled_text_pipeline_equals_single_process(client, text):
    pipeline, model, frame = text
    result = willow.dask.predict(pipeline, irregular(frame), model, columns="text")
    assert isinstance(result, dd.DataFrame) and list(result.columns) == list(model.classes_)
    computed = result.compute()
    expected = pipeline(model, list(frame["text"]))
    assert computed.index.equals(frame.index)
    np.testing.assert_allclose(computed.to_numpy(), expected, rtol=0, atol=1e-12)
    # the series itself, and the model passed by keyword
    series = willow.dask.predict(pipeline, irregular(frame)["text"], model=model).compute()
    np.testing.assert_allclose(series.to_numpy(), expected, rtol=0, atol=1e-12)


def test_workers_reuse_the_pipeline_they_unpickled(client, text):
    pipeline, model, frame = text
    client.run(lambda: willow.dask._CACHE.clear())  # a lambda: run on the worker's own cache
    ddf = dd.from_pandas(frame, npartitions=4)
    first = willow.dask.predict(pipeline, ddf, model, columns="text").compute()
    again = willow.dask.predict(pipeline, ddf, model, columns="text").compute()
    cached = client.run(lambda: list(willow.dask._CACHE))
    assert all(len(digests) <= 1 for digests in cached.values())
    assert len({d for digests in cached.values() for d in digests}) == 1
    pd.testing.assert_frame_equal(first, again)


def test_uncalibrated_pipeline_with_two_row_parameters(client, tabular):
    _, model, test = tabular
    pipeline = willow.optimize(pipelines.numpy_pipeline)
    columns = {"cheap": ["c0", "c1"], "extra": [f"e{i}" for i in range(6)]}
    result = willow.dask.predict(
        pipeline, irregular(test), model, columns=columns, meta=pd.Series(dtype="int64", name="label")
    )
    computed = result.compute()
    expected = pipelines.numpy_pipeline(model, test[["c0", "c1"]], test[columns["extra"]])
    assert computed.name == "label" and computed.index.equals(test.index)
    np.testing.assert_array_equal(computed.to_numpy(), expected)


def test_results_join_back_onto_the_input(client, text):
    pipeline, model, frame = text
    ddf = dd.from_pandas(frame, npartitions=3)
    joined = ddf.assign(spam=willow.dask.predict(pipeline, ddf, model, columns="text")["spam"]).compute()
    np.testing.assert_allclose(
        joined["spam"].to_numpy(), pipeline(model, list(frame["text"]))[:, 1], rtol=0, atol=1e-12
    )


def test_input_errors_name_what_was_expected(tabular, text):
    pipeline, model, test = tabular
    ddf = dd.from_pandas(test, npartitions=2)
    with pytest.raises(TypeError, match="dask.dataframe DataFrame or Series, got pandas"):
        willow.dask.predict(pipeline, test, model)
    with pytest.raises(KeyError, match=r"\['nope'\].*its columns are"):
        willow.dask.predict(pipeline, ddf, model, columns=["c0", "nope"])
    with pytest.raises(TypeError, match="other than the row parameter"):
        willow.dask.predict(pipeline, ddf, model, model)
    with pytest.raises(ValueError, match="not calibrated.*pass meta="):
        willow.dask.predict(willow.optimize(pipelines.frame_pipeline), ddf, model)
    with pytest.raises(ValueError, match=r"row parameters \['cheap', 'extra'\]"):
        willow.dask.predict(willow.optimize(pipelines.numpy_pipeline), ddf, model, meta=pd.Series(dtype=int))
    with pytest.raises(ValueError, match="does not have"):
        willow.dask.predict(pipeline, ddf, model, columns={"rows": None})
    with pytest.raises(TypeError, match="willow.OptimizedPipeline"):
        willow.dask.predict(pipelines.frame_pipeline, ddf, model)
    with pytest.raises(ValueError, match="input is a dask Series"):
        willow.dask.predict(text[0], dd.from_pandas(text[2]["text"], npartitions=1), model, columns="text")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        topk = willow.optimize(pipelines.frame_pipeline, query="topk", k=5)
    with pytest.raises(ValueError, match="partition by partition"):
        willow.dask.predict(topk, ddf, model)


def test_import_willow_does_not_import_dask():
    code = (
        "import sys, willow; assert 'dask' not in sys.modules, 'dask imported'; "
        "assert willow.dask.predict and 'dask' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
