"""CUDA tree kernels run under Numba's CUDA simulator: equal to the CPU kernels and the libraries.

The simulator must be chosen before ``numba.cuda`` is first imported (willow never imports it
before a CUDA kernel is built), so this module sets ``NUMBA_ENABLE_CUDASIM`` for that import and
restores the environment: later subprocesses (kernel-compiling workers) do not inherit it.
The simulator runs every CUDA thread as a Python thread, so models and batches stay tiny.
"""

from __future__ import annotations

import os
import pickle
import sys

if "numba.cuda" not in sys.modules:
    _previous = os.environ.get("NUMBA_ENABLE_CUDASIM")
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    from numba.core import config as _config

    _config.reload_config()
    import numba.cuda  # noqa: F401 - the simulator, from here on in this process

    if _previous is None:
        del os.environ["NUMBA_ENABLE_CUDASIM"]
    else:
        os.environ["NUMBA_ENABLE_CUDASIM"] = _previous

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import (
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
    RandomForestRegressor,
)

import willow
from willow.compiler.lowering.trees import lower_tree_model
from willow.errors import DeviceUnavailableError, WillowError
from willow.gpu import runtime
from willow.gpu.trees import CudaTreeOperator, lower_tree_model_cuda


@pytest.fixture(autouse=True)
def _simulator(tmp_path_factory):
    if not runtime.simulator_active():
        pytest.fail(
            "numba.cuda was imported before tests/test_gpu_sim.py could enable the CUDA simulator; "
            "run this module on its own or with NUMBA_ENABLE_CUDASIM=1."
        )


def _data(rows: int, seed: int, categories: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, 5))
    X[:, 4] = rng.integers(0, categories, rows)
    signal = X[:, 0] + np.where(np.isin(X[:, 4], (1, 3)), 1.5, -0.5) + 0.5 * X[:, 1]
    X[rng.random(X.shape) < 0.08] = np.nan
    X[rng.random(rows) < 0.05, 2] = 0.0  # exact zeros: missing for zero_as_missing models
    return X, signal


def _rows(X: np.ndarray) -> np.ndarray:
    """A small batch with the awkward values: NaN everywhere, unseen and negative categories."""
    rows = X[:24].copy()
    rows[0] = np.nan
    rows[1, 4] = 17.0  # a category never seen in training
    rows[2, 4] = -3.0
    rows[3, 4] = 0.5  # truncates to category 0
    rows[4, 2] = 1e-40  # |x| <= 1e-35: missing under zero_as_missing
    return rows


def _check(model, method, X, reference, exact_library=True):
    gpu = lower_tree_model_cuda(model, method)
    cpu = lower_tree_model(model, method)
    got = gpu(X)
    np.testing.assert_array_equal(got, cpu(X))  # same bits as the CPU kernel
    if exact_library:
        np.testing.assert_array_equal(got, reference)
    else:  # probabilities: the library's formula in NumPy, a few ulp (as the CPU kernel)
        np.testing.assert_allclose(got, reference, rtol=1e-12, atol=1e-15)
    return gpu


def test_lightgbm_binary_nan_categorical_zero_missing():
    X, signal = _data(400, 0)
    y = (signal > 0).astype(int)
    model = lgb.LGBMClassifier(
        n_estimators=6, num_leaves=8, min_child_samples=5, zero_as_missing=True, verbose=-1
    ).fit(X, y, categorical_feature=[4])
    dump = model.booster_.dump_model()["tree_info"]
    assert any("decision_type" in str(t) and "==" in str(t) for t in dump)  # categorical splits exist
    rows = _rows(X)
    gpu = _check(model, "raw", rows, model.predict(rows, raw_score=True))
    _check(model, "predict", rows, model.predict(rows))
    _check(model, "predict_proba", rows, model.predict_proba(rows), exact_library=False)
    assert "@cuda.jit" in gpu.source and "in_bitset(CATEGORIES_" in gpu.source
    assert gpu.device == "cuda" and gpu.name == "LGBMClassifier.raw on cuda"
    one = rows[5:6]
    np.testing.assert_array_equal(gpu(one), model.predict(one, raw_score=True))


def test_lightgbm_multiclass_and_regression_several_groups():
    X, signal = _data(300, 1)
    y = np.digitize(signal, [-0.5, 0.8])
    model = lgb.LGBMClassifier(n_estimators=4, num_leaves=6, min_child_samples=5, verbose=-1).fit(
        X, y, categorical_feature=[4]
    )
    rows = _rows(X)
    _check(model, "raw", rows, model.predict(rows, raw_score=True))
    _check(model, "predict", rows, model.predict(rows))
    _check(model, "predict_proba", rows, model.predict_proba(rows), exact_library=False)
    regressor = lgb.LGBMRegressor(n_estimators=8, num_leaves=6, min_child_samples=5, verbose=-1).fit(
        X, signal
    )
    # 4-node groups: several device functions, called in tree order by one kernel
    gpu = lower_tree_model_cuda(regressor, "predict", group_nodes=4)
    assert gpu.source.count("@cuda.jit(device=True)") > 3
    np.testing.assert_array_equal(gpu(rows), regressor.predict(rows))
    np.testing.assert_array_equal(gpu(rows), lower_tree_model(regressor, "predict")(rows))


def test_lightgbm_many_categories_multiword_bitsets():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((400, 3))
    X[:, 2] = rng.integers(0, 70, 400)
    y = X[:, 0] + (X[:, 2] % 3 == 0) * 2.0 + (X[:, 2] > 40)
    X[rng.random(X.shape) < 0.08] = np.nan
    model = lgb.LGBMRegressor(
        n_estimators=5, num_leaves=8, min_child_samples=3, min_data_per_group=2, cat_smooth=1, verbose=-1
    ).fit(X, y, categorical_feature=[2])
    rows = X[:30].copy()
    rows[0, 2], rows[1, 2], rows[2, 2] = 69.0, 200.0, 2.0**31 + 5  # last word, past it, past int32
    gpu = _check(model, "predict", rows, model.predict(rows))
    words = [line.count(",") + 1 for line in gpu.source.splitlines() if line.startswith("CATEGORIES_")]
    assert max(words) > 1  # bitsets of several 32-bit words


def test_lightgbm_pandas_categories_and_empty_batches():
    X, signal = _data(300, 2)
    frame = pd.DataFrame(X[:, :4], columns=list("abcd"))
    frame["kind"] = pd.Categorical(np.where(np.isnan(X[:, 4]), None, X[:, 4].astype("U3")))
    booster = lgb.train(
        {"objective": "regression", "num_leaves": 6, "min_data_in_leaf": 5, "verbose": -1},
        lgb.Dataset(frame, signal),
        num_boost_round=5,
    )
    rows = frame.iloc[:20]
    _check(booster, "predict", rows, booster.predict(rows))
    empty = np.empty((0, 5))
    assert lower_tree_model_cuda(booster, "predict")(empty).shape == booster.predict(empty).shape == (0,)
    classifier = lgb.LGBMClassifier(n_estimators=2, num_leaves=4, verbose=-1).fit(X, signal > 0)
    with pytest.raises(ValueError, match="0 sample"):  # as the library (and the CPU kernel) refuse
        lower_tree_model_cuda(classifier, "predict")(X[:0])


def test_sklearn_forests_and_boosting():
    X, signal = _data(200, 3)
    y = (signal > 0).astype(int)
    rows = _rows(X)
    forest = RandomForestClassifier(n_estimators=3, max_depth=4, random_state=0).fit(X, y)
    _check(forest, "predict_proba", rows, forest.predict_proba(rows))
    _check(forest, "predict", rows, forest.predict(rows))
    regressor = RandomForestRegressor(n_estimators=3, max_depth=4, random_state=0).fit(X, signal)
    _check(regressor, "predict", rows, regressor.predict(rows))
    hgb = HistGradientBoostingClassifier(max_iter=4, max_leaf_nodes=6, categorical_features=[4]).fit(X, y)
    hgb_gpu = _check(hgb, "decision_function", rows, hgb.decision_function(rows))
    assert "& 255)" in hgb_gpu.source  # HistGradientBoosting's categorical rule is exercised
    _check(hgb, "predict", rows, hgb.predict(rows))
    dense = np.nan_to_num(X)  # GradientBoosting refuses NaN
    gb = GradientBoostingClassifier(n_estimators=4, max_depth=3, random_state=0).fit(dense, y)
    _check(gb, "decision_function", dense[:24], gb.decision_function(dense[:24]))
    _check(gb, "predict_proba", dense[:24], gb.predict_proba(dense[:24]), exact_library=False)


def test_operator_transfer_seam():
    X, signal = _data(100, 4)
    model = lgb.LGBMRegressor(n_estimators=3, num_leaves=4, verbose=-1).fit(X, signal)
    gpu = lower_tree_model_cuda(model, "predict")
    assert isinstance(gpu, CudaTreeOperator)
    rows = gpu.to_device(X[:10].astype(np.float32).astype(np.float64).T.copy().T)  # Fortran in
    assert rows.dtype == np.float64 and rows.flags.c_contiguous
    raw = gpu.raw_device(rows)
    np.testing.assert_array_equal(runtime.to_host(raw)[:, 0], model.predict(X[:10].astype(np.float32)))


_QUICK = {"cost_repeats": 1, "importance_repeats": 1, "require_faster": False}  # device logic, not speed


def _features(X):
    scaled = X * 2.0
    return scaled


def test_optimize_device_cuda_end_to_end(monkeypatch):
    X, signal = _data(300, 5)
    y = (signal > 0).astype(int)
    model = lgb.LGBMClassifier(n_estimators=4, num_leaves=6, min_child_samples=5, verbose=-1).fit(
        X * 2.0, y, categorical_feature=[4]
    )

    def predict(X):
        features = X * 2.0
        return model.predict_proba(features)

    fast = willow.optimize(
        predict, device="cuda", cascade=False, accuracy_target=0.8, confidence=0.5, **_QUICK
    )
    assert fast.get_params()["device"] == "cuda"
    fast.calibrate(X[:120])
    rows = _rows(X)
    np.testing.assert_allclose(fast(rows), predict(rows), rtol=1e-12, atol=1e-15)
    # the features stay on the device between the elementwise and the tree kernel: one upload of
    # X, one download of the raw scores, per call (1 row too)
    fast.wait_compiled()  # a kernel compiled in the background would swap the serving function
    for batch in (rows, rows[5:6]):
        with runtime.count_transfers() as log:
            got = fast(batch)
        assert [(t.direction, t.what, t.shape) for t in log] == [
            ("to_device", "expression operand", batch.shape),
            ("to_host", "raw scores", (len(batch), 1)),
        ], (log, fast.generated_source_, fast.explain())
        np.testing.assert_allclose(got, predict(batch), rtol=1e-12, atol=1e-15)
    frame = pd.DataFrame(rows, columns=list("abcde"))  # a frame runs the host expression
    np.testing.assert_allclose(fast(frame), predict(frame), rtol=1e-12, atol=1e-15)
    for run in (fast, predict):  # 0 rows: the library's own refusal
        with pytest.raises(ValueError, match="0 sample"):
            run(rows[:0])
    report = fast.explain()
    assert "kept on the device between device nodes: features (from _willow.ops.features_expr)" in report
    assert "LGBMClassifier.predict_proba on cuda" in report
    assert "On the device: _willow.ops." in report and "(cuda)" in report
    assert "@cuda.jit" in report and "def kernel(X, out):" in report
    # unpickling compiles the plan again for the pipeline's device
    restored = pickle.loads(pickle.dumps(fast))
    np.testing.assert_array_equal(restored(rows), fast(rows))
    assert "LGBMClassifier.predict_proba on cuda" in restored.explain()
    # device="cpu" keeps the CPU kernels
    slow = willow.optimize(predict, cascade=False, accuracy_target=0.8, confidence=0.5, **_QUICK)
    slow.calibrate(X[:120])
    assert "on cuda" not in slow.explain() and slow.get_params()["device"] == "cpu"
    assert "Devices (" not in slow.explain()
    # a device="cuda" plan restored where CUDA cannot run (no CuPy, no simulator) says what is missing
    saved = pickle.dumps(fast)
    monkeypatch.setattr(runtime, "simulator_active", lambda: False)
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(DeviceUnavailableError, match=r"needs CuPy.*pip install willow\[gpu\]"):
        pickle.loads(saved)


def test_device_errors(monkeypatch):
    with pytest.raises(ValueError, match="device must be one of"):
        willow.optimize(_features, device="tpu")
    monkeypatch.setattr(runtime, "simulator_active", lambda: False)
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError
    with pytest.raises(DeviceUnavailableError, match=r"pip install willow\[gpu\]") as caught:
        willow.optimize(_features, device="cuda")
    assert isinstance(caught.value, WillowError) and isinstance(caught.value, RuntimeError)
    assert "CuPy" in str(caught.value)


def test_gpu_benchmark_refuses_without_a_gpu(monkeypatch, capsys):
    from benchmarks import gpu as bench

    with pytest.raises(SystemExit) as exit_:
        bench.main(["--rows", "10", "--trees", "2"])  # the simulator is on here: not a GPU
    assert exit_.value.code == 2 and "simulator" in capsys.readouterr().err
    # the selection timing's code path, with NumPy as the device (its timings mean nothing here)
    selection = bench.measure_selection(rows=500, k=7, repeats=1)
    assert selection["topk_equal"] and selection["rows_below_equal"] and selection["k"] == 7
    # --simulate: every step end to end at a tiny size, labelled as a simulator run
    result = bench.main(["--simulate", "--rows", "24", "--trees", "2", "--features", "5"])
    assert result["mode"].startswith("simulator") and "say nothing about GPU speed" in result["mode"]
    assert result["gpu_equals_willow_cpu"] and result["max_abs_diff_gpu_vs_lightgbm"] == 0.0
    chain = result["chain"]
    assert chain["equals_original"] and chain["on_cuda"]
    assert [(t["direction"], t["shape"]) for t in chain["transfers_per_call"]] == [
        ("to_device", [24, 5]),
        ("to_host", [24, 1]),
    ]
    assert result["selection"]["topk_equal"] and result["selection"]["rows_below_equal"]
    assert set(result["fil"]) in ({"skipped"}, {"loader", "median_seconds", "max_abs_diff_vs_lightgbm"})
    capsys.readouterr()
    monkeypatch.setattr(runtime, "simulator_active", lambda: False)
    monkeypatch.setitem(sys.modules, "cupy", None)
    assert "pip install willow[gpu]" in bench.refusal()


def test_gpu_benchmark_compares_with_fil_when_it_imports(monkeypatch):
    from benchmarks import gpu as bench

    X = np.random.default_rng(3).standard_normal((40, 4))
    booster = lgb.train(
        {"objective": "regression", "num_leaves": 4, "verbose": -1, "min_data_in_leaf": 2},
        lgb.Dataset(X, X[:, 0] - X[:, 1]),
        num_boost_round=3,
    )
    expected = booster.predict(X)
    monkeypatch.setitem(sys.modules, "nvforest", None)  # `import nvforest` raises ImportError
    monkeypatch.setitem(sys.modules, "cuml", None)
    skipped = bench.measure_fil(booster, X, expected, repeats=1)
    assert set(skipped) == {"skipped"} and "nvforest" in skipped["skipped"] and "cuML" in skipped["skipped"]

    loaded = []

    def load(path, model_type, precision):  # a FIL stand-in: the saved model file, read back by LightGBM
        loaded.append((model_type, precision))
        model = lgb.Booster(model_file=path)
        return type("Fil", (), {"predict": staticmethod(lambda rows: model.predict(np.asarray(rows)))})()

    monkeypatch.setattr(bench, "_fil_loader", lambda: (load, "stand-in"))
    result = bench.measure_fil(booster, X, expected, repeats=1)
    assert loaded == [("lightgbm", "double")] and result["loader"] == "stand-in"
    assert result["max_abs_diff_vs_lightgbm"] == 0.0
    assert set(result["median_seconds"]) == {"predict_device_rows", "call_from_host_rows"}
    off = bench.measure_fil(booster, X, expected + 1.0, repeats=1)
    assert off["max_abs_diff_vs_lightgbm"] == pytest.approx(1.0)


def test_linear_models_dense_rows_on_the_device():
    import scipy.sparse as sparse
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.svm import LinearSVC

    from willow.compiler.lowering.linear import lower_linear_model
    from willow.gpu.linear import lower_linear_model_cuda

    rng = np.random.default_rng(6)
    X = rng.standard_normal((120, 7))
    y3 = np.digitize(X[:, 0] + X[:, 1], [-0.5, 0.5])
    rows = X[:30]
    for model, methods in (
        (LogisticRegression().fit(X, y3 > 0), ("predict", "predict_proba", "decision_function")),
        (LogisticRegression().fit(X, y3), ("predict", "predict_proba", "decision_function")),
        (LinearSVC().fit(X, y3), ("predict", "decision_function")),
        (Ridge().fit(X, np.column_stack([X[:, 0], X[:, 2] * 3])), ("predict",)),
    ):
        for method in methods:
            gpu = lower_linear_model_cuda(model, method)
            got = gpu(rows)
            np.testing.assert_array_equal(got, lower_linear_model(model, method)(rows))
            reference = getattr(model, method)(rows)
            if got.dtype.kind == "f":
                np.testing.assert_allclose(got, reference, rtol=1e-9, atol=1e-12)
            else:
                np.testing.assert_array_equal(got, reference)
            assert got.shape == reference.shape and got.dtype == reference.dtype
    assert "@cuda.jit" in gpu.source and gpu.device == "cuda"
    sparse_rows = sparse.csr_matrix(rows)  # CSR rows run the CPU kernel
    np.testing.assert_array_equal(gpu(sparse_rows), lower_linear_model(model, "predict")(sparse_rows))
    bad = rows.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        gpu(bad)
    with pytest.raises(ValueError, match="features"):
        gpu(rows[:, :3])


def _awkward_scores(rng, n):
    """Scores with many ties, NaN and infinities: what a ranking must order exactly."""
    scores = rng.integers(0, 4, n).astype(np.float64)
    scores[rng.random(n) < 0.15] = np.nan
    scores[rng.random(n) < 0.05] = -np.inf
    scores[rng.random(n) < 0.05] = np.inf
    return scores


def test_device_selection_equals_the_cpu_selection():
    from willow.cascades.runtime import ServingRuntime
    from willow.gpu import selection
    from willow.gpu.device import use_device
    from willow.topk.ranking import top_positions
    from willow.topk.runtime import TopKRuntime

    rng = np.random.default_rng(8)
    cpu_topk = TopKRuntime(None, None, None, None, None, device="cpu")
    gpu_topk = TopKRuntime(None, None, None, None, None, device="cuda")
    cpu_cascade = ServingRuntime(None, None, None, None, device="cpu")
    gpu_cascade = ServingRuntime(None, None, None, None, device="cuda")
    for n in (0, 1, 2, 7, 40):
        scores = _awkward_scores(rng, n)
        for m in (0, 1, 3, n - 1, n, n + 5):
            expected = top_positions(scores, m)
            got = selection.top_positions(scores, m)
            np.testing.assert_array_equal(got, expected)
            assert got.dtype == np.intp
            if m > 0:
                candidates = gpu_topk.candidates(scores, m)
                np.testing.assert_array_equal(candidates, cpu_topk.candidates(scores, m))
                local = scores[candidates]
                for got_part, expected_part in zip(
                    gpu_topk.best_of(candidates, local, max(1, m // 2)),
                    cpu_topk.best_of(candidates, local, max(1, m // 2)),
                ):
                    np.testing.assert_array_equal(got_part, expected_part)
        for threshold in (0.5, 2.0, np.inf):
            got = gpu_cascade.rows_below(runtime.to_device(scores), threshold)
            np.testing.assert_array_equal(got, cpu_cascade.rows_below(scores, threshold))
            assert got.dtype == np.intp

    # the final K is chosen on the device only when the candidates' scores are there already
    class OnDevice(np.ndarray):
        __cuda_array_interface__ = property(lambda self: {})  # what marks a device array

    scores = _awkward_scores(rng, 30)
    candidates = np.arange(0, 60, 2)
    picked = []
    real_top = selection.top_positions
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(selection, "top_positions", lambda s, m: picked.append(type(s)) or real_top(s, m))
        host = gpu_topk.best_of(candidates, scores, 6)
        device = gpu_topk.best_of(candidates, scores.view(OnDevice), 6)
    assert picked == [OnDevice]  # host scores were not sent to the device
    for part in (0, 1):
        np.testing.assert_array_equal(device[part], host[part])
        np.testing.assert_array_equal(host[part], cpu_topk.best_of(candidates, scores, 6)[part])
    ties = np.zeros(9)  # all tied: lowest positions first
    np.testing.assert_array_equal(selection.top_positions(ties, 4), [0, 1, 2, 3])
    nan_first = np.array([np.nan, 1.0, np.nan, 2.0])
    np.testing.assert_array_equal(selection.top_positions(nan_first, 3), [3, 1, 0])
    np.testing.assert_array_equal(gpu_cascade.rows_below(runtime.to_device(nan_first), 1.5), [0, 1, 2])
    # the runtimes take the pipeline's device from the lowering context by default
    with use_device("cuda"):
        assert TopKRuntime(None, None, None, None, None).device == "cuda"
        assert ServingRuntime(None, None, None, None).device == "cuda"
    assert ServingRuntime(None, None, None, None).device == "cpu"


_SPECIALS = np.array(
    [0.0, -0.0, np.nan, np.inf, -np.inf, 1.0, -1.0, 2.5, -3.75, 1e-308, 1e308, 0.5, -0.5, 1.5, -1.5]
    + [-2.5, 3.5, -0.4, 0.49999999999999994, 2.0**52 + 1, -(2.0**53) - 2, 2.0**52 - 0.5, -7.0]
)


def _same(got, expected):
    np.testing.assert_array_equal(got, expected)  # NaN positions equal, values bit for bit below
    assert got.dtype == expected.dtype and got.shape == expected.shape
    numbers = ~np.isnan(got) if got.dtype.kind == "f" else np.ones(got.shape, dtype=bool)
    assert np.array_equal(np.signbit(got[numbers]), np.signbit(expected[numbers]))  # signed zeros
    if got.ndim == 2 and got.shape[0] > 1 and got.shape[1] > 1:
        assert got.flags.f_contiguous == expected.flags.f_contiguous  # numpy's memory order


def test_elementwise_expressions_on_the_device():
    from lowering_helpers import compile_expression, original

    from willow.gpu.arithmetic import CudaExpressionOperator
    from willow.gpu.device import use_device

    rng = np.random.default_rng(9)
    x = np.concatenate([_SPECIALS, rng.standard_normal(9) * 4])
    y = np.concatenate([_SPECIALS[::-1], rng.standard_normal(9) * 4])
    y[[3, 12]] = 0.0  # division by zero: inf and NaN, as numpy
    with np.errstate(all="ignore"):
        m = np.asfortranarray(np.column_stack([x, y, x * y]))
    table = pd.DataFrame({"p": [0.5, np.nan, -2.0], "q": [1.0, 3.0, -0.0]}, index=[10, 20, 30])
    keys = pd.Series([20, 10, 99, 30, 10])  # 99: missing key, NaN
    ns = {"np": np, "SCALE": 0.25, "OFFSET": 3, "TABLE": table}
    values = {"x": x, "y": y, "m": m, "b": x > y, "keys": keys}
    cases = [
        # the CPU kernel is compiled for these (slow); the rest are compared with numpy only
        ("np.where(np.isnan(x), 0.0, np.clip(x / y, -1.5, 2)) * SCALE - OFFSET + np.fmax(x, y)", True),
        ("TABLE.reindex(keys).to_numpy(dtype=float) * 2.0 - 1", False),
        ("np.minimum(x, y) + np.maximum(y, x) + np.fmin(x, y) + np.sign(x) + np.sqrt(np.abs(y))", False),
        ("(1 / x) + (y ** 2) + (x ** -1) + np.floor(y) + np.rint(x) + np.trunc(y) + np.ceil(x)", False),
        (
            "np.column_stack([np.floor(x), np.ceil(x), np.trunc(x), np.rint(x), np.sqrt(x), -np.sqrt(-x)])",
            False,
        ),
        ("np.isfinite(x) & (np.isinf(y) | b) & ~(x == y)", False),
        ("m * x[:, None] / m", False),
        ("np.column_stack([x - y, x * y, x / y])", False),
    ]
    for source, with_cpu in cases:
        namespace = {**ns, **values}
        with use_device("cuda"):
            run, operator = compile_expression(source, namespace, row_names=tuple(values))
        assert isinstance(operator, CudaExpressionOperator), source
        assert "@cuda.jit(cache=True)" in operator.source and "i = cuda.grid(1)" in operator.source
        if "np.clip" in source:  # the helpers the elements call, as device functions (only those)
            assert "def clip(" in operator.source and "def sign(" not in operator.source
        if "np.rint" in source:  # numpy functions Numba's CUDA target lacks: willow's device functions
            assert "def np_rint(" in operator.source and "np_rint(a0[i])" in operator.source
        fallback, operator._fallback = operator._fallback, None  # the kernel must answer these calls
        with np.errstate(all="ignore"):
            expected = original(source, ns, values)
        got = run(values)
        _same(got, expected)
        if with_cpu:
            cpu_run, cpu_operator = compile_expression(source, namespace, row_names=tuple(values))
            assert not isinstance(cpu_operator, CudaExpressionOperator)
            _same(got, cpu_run(values))
        for rows in (slice(0, 0), slice(4, 5)):  # 0 rows, 1 row
            small = {name: value[rows] for name, value in values.items() if name != "keys"}
            small["keys"] = keys.iloc[rows]
            with np.errstate(all="ignore"):
                _same(run(small), original(source, ns, small))
        operator._fallback = fallback
    # operands the kernel was not compiled for (ints, another shape) run the numpy expression
    with use_device("cuda"):
        run, operator = compile_expression("x / y + 1", {**ns, "x": x, "y": y}, row_names=("x", "y"))
    ints = {"x": np.arange(4), "y": np.array([1, 0, 2, 0])}
    with np.errstate(all="ignore"):
        _same(run(ints), ints["x"] / ints["y"] + 1)
    # row reductions stay on the CPU kernel
    with use_device("cuda"):
        _, reduction = compile_expression("np.sum(m * 2.0, axis=1)", {**ns, "m": m}, row_names=("m",))
    assert not isinstance(reduction, CudaExpressionOperator)


def test_topk_approximate_scores_stay_on_the_device():
    from sklearn.linear_model import Ridge

    from willow.compiler.lowering import lower
    from willow.gpu.device import use_device
    from willow.topk.approximate import ApproximateScorer
    from willow.topk.runtime import TopKRuntime

    X, signal = _data(200, 10)
    rows = _rows(X)
    dense = np.nan_to_num(X)
    for estimator, batch in (
        (
            lgb.LGBMRegressor(n_estimators=3, num_leaves=4, min_child_samples=5, verbose=-1).fit(X, signal),
            rows,
        ),
        (Ridge().fit(dense, signal), dense[:24]),
    ):
        scorer = ApproximateScorer(estimator)
        with use_device("cuda"):
            # verified on calibration rows, and kept although the simulator measures it slower
            assert scorer.compile(lower, batch) == ""
        assert scorer.compiled and scorer._kernel.device == "cuda"
        on_device = scorer.scores_on_device(batch)
        np.testing.assert_array_equal(runtime.to_host(on_device), scorer.scores(batch))  # the kernel's call
        np.testing.assert_allclose(
            runtime.to_host(on_device), estimator.predict(batch), rtol=1e-12, atol=1e-14
        )
        gpu = TopKRuntime(None, scorer, None, None, None, device="cuda")
        cpu = TopKRuntime(None, scorer, None, None, None, device="cpu")
        with runtime.count_transfers() as log:  # rows over once, the candidates' positions back
            approx = gpu.approximate_scores(batch)
            chosen = gpu.candidates(approx, 5)
        assert [(t.direction, t.shape) for t in log] == [("to_device", batch.shape), ("to_host", (5,))]
        np.testing.assert_array_equal(chosen, cpu.candidates(cpu.approximate_scores(batch), 5))
        np.testing.assert_array_equal(approx, cpu.approximate_scores(batch))
        for m in (1, 5, len(batch), len(batch) + 3):
            np.testing.assert_array_equal(gpu.candidates(approx, m), cpu.candidates(approx, m))


def _slow(x):
    for _ in range(30):
        x = np.tanh(x) * 1.01
    return x


def _cheap_and_costly(model, cheap, costly):
    """A cascade's pipeline: cheap features (an elementwise kernel) and costly ones (Python)."""
    a = cheap * 1.0
    b = _slow(costly)
    X = np.hstack([a, b])
    return model.predict(X)


def test_cascade_selects_uncertain_rows_on_the_device(monkeypatch):
    from sklearn.linear_model import LogisticRegression

    from willow.gpu import selection

    rng = np.random.default_rng(11)
    cheap, costly = rng.normal(size=(400, 3)), rng.normal(size=(400, 12))
    X = np.hstack([cheap, _slow(costly)])
    model = LogisticRegression().fit(X, (X[:, :3].sum(1) + 0.2 * X[:, 3:].sum(1) > 0).astype(int))

    predict = _cheap_and_costly
    fast = willow.optimize(
        predict, device="cuda", accuracy_target=0.9, confidence=0.5, random_state=0, **_QUICK
    )
    fast.calibrate(model, cheap, costly)
    assert fast.plan_.cascade
    calls = []
    device_rows_below = selection.rows_below

    def spy(confidence, threshold):
        got = device_rows_below(confidence, threshold)
        np.testing.assert_array_equal(got, np.flatnonzero(~(np.asarray(confidence) >= threshold)))
        calls.append((len(confidence), got))
        return got

    monkeypatch.setattr(selection, "rows_below", spy)
    batch = rng.normal(size=(40, 3)), rng.normal(size=(40, 12))
    with runtime.count_transfers() as log:
        out = fast(model, *batch)
    assert len(calls) == 1 and calls[0][0] == 40
    moved = [(t.direction, t.what) for t in log]
    assert moved[:4] == [
        ("to_device", "expression operand"),
        ("to_host", "expression result"),  # read by np.hstack (host) too
        ("to_device", "linear rows"),
        ("to_host", "decision values"),
    ], moved
    # the linear head (probabilities) ran on the host: confidence and selection stay there too
    assert "approximate scores" not in str(moved) and "selected positions" not in str(moved)
    expected = predict(model, *batch)
    assert out.dtype == expected.dtype and out.shape == expected.shape
    uncertain = calls[0][1]
    np.testing.assert_array_equal(out[uncertain], expected[uncertain])  # the full pipeline's rows
    report = fast.explain()
    assert "(cuda)" in report and "array expression (0 lookups) on cuda" in report
    devices = report[report.index('Devices (device="cuda"') :]
    assert "GPU speed has not been measured" in devices
    assert "cuda: _willow.ops.a_expr (array expression (0 lookups) on cuda)" in devices
    assert "cpu: every statement not compiled" in devices
    assert "approximate model: cuda (LogisticRegression." in devices
    assert "row selection: the cascade's uncertain rows on the device" in devices


def test_background_work_runs_on_the_pipelines_device():
    import threading

    from willow.gpu.device import on_device_of

    fast = willow.optimize(_features, device="cuda")
    seen = []
    job = on_device_of(fast, lambda: seen.append(runtime.current_device()) or "done")
    thread = threading.Thread(target=lambda: seen.append(job()))  # a thread starts without our context
    thread.start()
    thread.join()
    assert seen == ["cuda", "done"] and runtime.current_device() == "cpu"


def test_resident_variables_only_between_device_operators():
    import ast

    from willow.compiler.compile_pass import Operators
    from willow.gpu.residency import KeepOnDevice, resident_operators, resident_variables

    class Op:
        def __init__(self, device="cuda", device_inputs=True):
            self.device, self.device_inputs, self.name = device, device_inputs, "op"

        def __call__(self, *args):
            return "host"

        def output_device(self, *args):
            return "device"

    ops = {
        "feat": Op(device_inputs=False),
        "feat2": Op(device_inputs=False),
        "model": Op(),
        "cpu_model": Op(device="cpu"),
        "strict": Op(device_inputs=False),
    }
    source = """
def f(X, Y):
    a = _willow.ops.feat(X)          # read by the device model only: stays on the device
    b = _willow.ops.feat2(X)         # also read by a host statement
    c = _willow.ops.feat(Y)          # feat is also called for a host value: not wrapped
    d = _willow.ops.feat2(Y)         # read by a device operator that takes host rows only
    e = _willow.ops.feat2(Y)         # read by a CPU operator
    n = np.hstack([b, c])
    s = _willow.ops.strict(d) + _willow.ops.cpu_model(e)
    return _willow.ops.model(a, n) + _willow.ops.model(b) + _willow.ops.model(s)
"""
    function = ast.parse(source)
    assert resident_variables(function, ops) == {"a": {"feat"}}  # b and c: np.hstack, d, e: see above
    served = resident_operators(function, Operators(ops))
    assert not isinstance(served.feat, KeepOnDevice)  # feat(Y) assigns the host variable c
    lone = ast.parse("def f(X):\n    a = _willow.ops.feat(X)\n    return _willow.ops.model(a)\n")
    served = resident_operators(lone, Operators(ops))
    assert isinstance(served.feat, KeepOnDevice) and served.feat(1) == "device"
    assert served.model is ops["model"] and served.feat.name == "op"
    for host_read in (
        "    return a",  # returned to the caller
        "    g = lambda: a\n    return _willow.ops.model(g())",  # captured
        "    return _willow.ops.model(*[a])",  # not a plain positional argument
        "    a, b = a, 1\n    return _willow.ops.model(a)",  # assigned another way
        "    return _willow.ops.model(a, _willow.take_rows(a, [0], 1))",
    ):
        body = f"def f(X):\n    a = _willow.ops.feat(X)\n{host_read}\n"
        assert resident_variables(ast.parse(body), ops) == {}, host_read
        assert resident_operators(ast.parse(body), Operators(ops)).feat is ops["feat"]
    assert resident_operators(lone, None) is None


def test_device_rows_are_read_where_they_are():
    from sklearn.linear_model import LogisticRegression

    from willow.gpu.linear import lower_linear_model_cuda

    X, signal = _data(200, 12)
    dense = np.nan_to_num(X)
    booster = lgb.LGBMRegressor(n_estimators=3, num_leaves=4, min_child_samples=5, verbose=-1).fit(X, signal)
    forest = RandomForestRegressor(n_estimators=2, max_depth=3, random_state=0).fit(X, signal)
    logistic = LogisticRegression().fit(dense, signal > 0)
    rows = _rows(X)
    for operator, batch, uploads, downloads in (
        (lower_tree_model_cuda(booster, "predict"), rows, [], ["raw scores"]),
        # scikit-learn's own validation (float32 rounding) runs on the host: rows come back
        (
            lower_tree_model_cuda(forest, "predict"),
            rows,
            ["tree rows"],
            ["device rows for the library's host checks", "raw scores"],
        ),
        (
            lower_linear_model_cuda(logistic, "predict_proba"),
            dense[:24],
            [],
            ["finiteness check (one value)", "decision values"],
        ),
    ):
        on_device = runtime.to_device(batch)
        assert runtime.is_device_array(on_device) and not runtime.is_device_array(batch)
        with runtime.count_transfers() as log:
            got = operator(on_device)
        assert [t.what for t in log if t.direction == "to_device"] == uploads
        assert [t.what for t in log if t.direction == "to_host"] == downloads
        np.testing.assert_array_equal(got, operator(batch))
        assert not runtime.is_device_array(got)
    linear = lower_linear_model_cuda(logistic, "predict")
    bad = runtime.to_device(rows)  # NaN: checked on the device, refused on the host as sklearn does
    with pytest.raises(ValueError, match="Input X contains NaN"):
        linear(bad)
    with pytest.raises(ValueError, match="features"):  # the wrong width, from the host check
        linear(runtime.to_device(dense[:5, :3]))
    ints = runtime.to_device(np.arange(15).reshape(3, 5))  # converted on the device as on the host
    np.testing.assert_array_equal(
        lower_tree_model_cuda(booster, "predict")(ints), booster.predict(np.arange(15.0).reshape(3, 5))
    )


def test_approximate_confidences_on_the_device_equal_the_host_ones():
    from sklearn.linear_model import LogisticRegression

    from willow.cascades.approximate import ApproximateModel
    from willow.cascades.outputs import OutputSpec
    from willow.cascades.runtime import ServingRuntime

    rng = np.random.default_rng(13)
    X = rng.standard_normal((60, 4))
    labels = np.digitize(X[:, 0] + X[:, 1], [-0.5, 0.5])
    two = LogisticRegression().fit(X, labels > 0)
    three = LogisticRegression().fit(X, labels)

    class DeviceKernel:  # a compiled scores kernel whose output stays on the device
        device = "cuda"

        def __init__(self, method):
            self.method = method

        def __call__(self, X):
            return self.method(X)

        def output_device(self, X):
            return runtime.to_device(self.method(X), what="kernel output")

    cases = []
    for model in (two, three):
        for method in ("predict", "predict_proba", "decision_function"):
            spec = OutputSpec.from_output(method, getattr(model, method)(X), model)
            cases.append((model, spec))
    proba_spec = OutputSpec.from_output("predict_proba", two.predict_proba(X), two)
    cases.append((two, OutputSpec(**{**proba_spec.__dict__, "margin_column": 1, "margin_threshold": 0.3})))
    for model, spec in cases:
        approx = ApproximateModel(model, spec)
        approx._scores = DeviceKernel(getattr(model, approx.score_method))
        for batch in (X, X[:1]):
            host_rows, host_confidence = approx.predict_with_confidence(batch)
            with runtime.count_transfers() as log:
                rows, confidence = approx.predict_with_confidence_on_device(batch)
            assert runtime.is_device_array(confidence) and not runtime.is_device_array(rows)
            downloads = [t.what for t in log if t.direction == "to_host"]
            assert downloads in (["approximate rows"], ["approximate label positions"]), downloads
            assert [t.what for t in log if t.direction == "to_device"] == ["kernel output"]
            _same(rows, host_rows)
            _same(runtime.to_host(confidence), host_confidence)
            # the cascade's runtime: confidences and threshold on the device, positions back
            serving = ServingRuntime(approx, spec, None, None, device="cuda")
            threshold = float(np.median(host_confidence))
            with runtime.count_transfers() as log:
                rows, confidence = serving.approximate(batch)
                uncertain = serving.rows_below(confidence, threshold)
            assert [t.what for t in log if t.direction == "to_host"][-1] == "selected positions"
            assert "confidences" not in [t.what for t in log]  # no copy of them either way
            np.testing.assert_array_equal(uncertain, np.flatnonzero(~(host_confidence >= threshold)))
            assert len(batch) == 1 or 0 < len(uncertain) < len(batch)
