"""compile=True on a pipeline of pandas Series arithmetic, row reductions and a left merge that
keeps left columns: every kernel bit-identical to its statement, saved and reloaded."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pipelines
import pytest
from compiling import compile_traced, compiled_runner
from equivalence import assert_same_as_original
from lightgbm import LGBMRegressor

import willow

OPTIONS = dict(accuracy_target=0.97, confidence=0.95, cost_repeats=2, importance_repeats=1)
NAMES = ("ratios", "scaled", "joined", "spread", "total", "cell", "X")


def _rows(rng: np.random.Generator, n: int) -> pd.DataFrame:
    a = rng.integers(0, 4, n).astype(float)  # zeros: division by zero gives inf/NaN
    b = np.where(rng.random(n) < 0.1, np.nan, rng.gamma(2.0, 3.0, n))
    return pd.DataFrame({"item": rng.integers(0, 12, n), "a": a, "b": b, "t": rng.normal(0, 2, n)})


@pytest.fixture(scope="module")
def frame_setup():
    rng = np.random.default_rng(5)
    items = pd.DataFrame({"item": np.arange(10), "t": rng.normal(size=10), "w": rng.normal(size=10)})
    items.loc[3, "w"] = np.nan
    pipelines.ITEM_FRAME = items  # items 10, 11 are missing: NaN rows
    pipelines.CELL_TABLE = pd.DataFrame({"c": np.arange(-20.0, 21.0)}, index=np.arange(-20, 21))

    class Capture:
        def predict(self, X):
            self.X = X
            return X[:, 0]

    train = _rows(rng, 600)
    capture = Capture()
    pipelines.frame_arithmetic_pipeline(capture, train)
    X = np.nan_to_num(capture.X, posinf=1e6, neginf=-1e6)
    model = LGBMRegressor(n_estimators=20, num_leaves=7, n_jobs=1, verbose=-1).fit(X, train["t"].to_numpy())
    return model, _rows(rng, 1200), _rows(rng, 200)


def test_every_kernel_reproduces_its_statement(frame_setup):
    model, calib, batch = frame_setup
    fn = pipelines.frame_arithmetic_pipeline
    _, runner, result = compile_traced(fn, {"model": model, "rows": calib})
    compiled = [n.original for n in result.nodes if n.path is not None]
    assert compiled[0].startswith("np.column_stack([rows['a'] / rows['b'],")  # one kernel
    assert any(o.startswith("(rows['t'] / T_SCALE") for o in compiled)
    assert any(o.startswith("rows[['item', 't']].merge(") for o in compiled)
    assert any(o.startswith("np.nanmax(") for o in compiled) and any(
        o.startswith("np.nansum(") for o in compiled
    )
    # the lookup is compiled; its keys, a Series read as a Series (.round()), stay pandas
    assert any(o.startswith("CELL_TABLE.reindex(") for o in compiled)
    assert not any(o.startswith("rows['t'] / 0.5") for o in compiled)

    compiled_graph_runner = compiled_runner(result, fn)
    for rows in (batch, batch.iloc[:1], batch.iloc[:0], batch.iloc[::-1]):  # reversed: another index
        arguments = {"model": model, "rows": rows}
        got = compiled_graph_runner.run(compiled_graph_runner.namespace(arguments))
        want = runner.run(runner.namespace(arguments))
        for name in NAMES:
            assert type(got[name]) is type(want[name]) and got[name].shape == want[name].shape
            assert got[name].dtype == want[name].dtype
            assert got[name].flags.f_contiguous == want[name].flags.f_contiguous
            np.testing.assert_array_equal(got[name], want[name])


def test_pipeline_compiles_saves_and_reloads(frame_setup, tmp_path):
    model, calib, batch = frame_setup
    pipeline = willow.optimize(pipelines.frame_arithmetic_pipeline, cascade=False, compile="all", **OPTIONS)
    pipeline.calibrate(model, calib)
    expected = pipelines.frame_arithmetic_pipeline(model, batch)
    np.testing.assert_allclose(pipeline(model, batch), expected, rtol=1e-12, atol=0)
    assert_same_as_original(pipeline, model, batch.iloc[:0])
    path = tmp_path / "frames.willow"
    pipeline.save(path)
    loaded = willow.load(path, pipelines.frame_arithmetic_pipeline)
    np.testing.assert_array_equal(loaded(model, batch), pipeline(model, batch))
    assert (
        loaded.generated_source_ == pipeline.generated_source_
    )  # a front-end rewrite (X[[...]] by position) restores at the first call
    unpickled = pickle.loads(pickle.dumps(pipeline))
    np.testing.assert_array_equal(unpickled(model, batch), pipeline(model, batch))
    assert unpickled.generated_source_ == pipeline.generated_source_
