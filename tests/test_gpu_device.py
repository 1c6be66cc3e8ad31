"""The CUDA kernels on a real GPU (CuPy arrays): equal to the CPU kernels. Skipped without one.

Run on a machine with an NVIDIA GPU and ``pip install willow[gpu]``, in its own process (the
simulator tests, ``tests/test_gpu_sim.py``, switch this process's ``numba.cuda`` to the
simulator when they are collected)::

    python -m pytest -q tests/test_gpu_device.py
"""

from __future__ import annotations

import numpy as np
import pytest

from willow.errors import DeviceUnavailableError
from willow.gpu import runtime

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _real_gpu():
    if runtime.simulator_active():
        pytest.skip("numba.cuda is the simulator in this process; run this module on its own")
    try:
        runtime.check_device("cuda")
    except DeviceUnavailableError as exc:
        pytest.skip(f"no GPU: {exc}")


def _data(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, 5))
    X[:, 4] = rng.integers(0, 6, rows)
    signal = X[:, 0] + np.where(np.isin(X[:, 4], (1, 3)), 1.5, -0.5) + 0.5 * X[:, 1]
    X[rng.random(X.shape) < 0.08] = np.nan
    X[rng.random(rows) < 0.05, 2] = 0.0
    return X, signal


def test_trees_on_the_gpu_equal_the_cpu_kernels():
    import lightgbm as lgb
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

    from willow.compiler.lowering.trees import lower_tree_model
    from willow.gpu.trees import lower_tree_model_cuda

    X, signal = _data(5000, 0)
    y = np.digitize(signal, [-0.5, 0.8])
    models = [
        (lgb.LGBMClassifier(n_estimators=50, num_leaves=31, zero_as_missing=True, verbose=-1), "raw"),
        (lgb.LGBMClassifier(n_estimators=50, num_leaves=31, verbose=-1), "predict_proba"),
        (RandomForestClassifier(n_estimators=10, max_depth=12, random_state=0), "predict_proba"),
        (HistGradientBoostingClassifier(max_iter=20, categorical_features=[4]), "decision_function"),
    ]
    for model, method in models:
        if isinstance(model, lgb.LGBMClassifier):
            model.fit(X, y, categorical_feature=[4])
        else:
            model.fit(X, y)
        gpu = lower_tree_model_cuda(model, method)
        np.testing.assert_array_equal(gpu(X), lower_tree_model(model, method)(X))
        raw = gpu.raw_device(gpu.to_device(X))
        assert type(raw).__module__.startswith("cupy")  # the scores stay on the device


def test_linear_on_the_gpu_matches_the_cpu_kernel():
    from sklearn.linear_model import LogisticRegression

    from willow.compiler.lowering.linear import lower_linear_model
    from willow.gpu.linear import lower_linear_model_cuda

    rng = np.random.default_rng(1)
    X = rng.standard_normal((5000, 40))
    y = np.digitize(X[:, 0] + X[:, 1], [-0.5, 0.5])
    model = LogisticRegression(max_iter=500).fit(X, y)
    for method in ("predict", "predict_proba", "decision_function"):
        got = lower_linear_model_cuda(model, method)(X)
        expected = lower_linear_model(model, method)(X)
        if got.dtype.kind == "f":  # NVVM may fuse multiply-adds: the linear row's 1e-9
            np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
        else:
            np.testing.assert_array_equal(got, expected)


def test_selection_on_the_gpu_equals_the_cpu_selection():
    import cupy

    from willow.gpu import selection
    from willow.topk.ranking import top_positions

    rng = np.random.default_rng(2)
    scores = rng.integers(0, 50, 200_000).astype(np.float64)  # many ties
    scores[rng.random(scores.size) < 0.01] = np.nan
    on_device = cupy.asarray(scores)
    for m in (1, 100, 5000, scores.size, scores.size + 1):
        np.testing.assert_array_equal(selection.top_positions(on_device, m), top_positions(scores, m))
    np.testing.assert_array_equal(
        selection.sorted_top_positions(on_device, 777), np.sort(top_positions(scores, 777))
    )
    for threshold in (10.0, 49.0, np.inf):
        np.testing.assert_array_equal(
            selection.rows_below(on_device, threshold), np.flatnonzero(~(scores >= threshold))
        )


def test_elementwise_expressions_on_the_gpu():
    import ast

    from willow.compiler.compile_pass import _resolve_fitted
    from willow.compiler.lowering.arithmetic_codegen import lower_expression
    from willow.gpu.arithmetic import CudaExpressionOperator
    from willow.gpu.device import use_device

    rng = np.random.default_rng(3)
    x, y = rng.standard_normal(10_000), rng.standard_normal(10_000)
    x[:20], y[10:30] = np.nan, 0.0
    values = {"np": np, "x": x, "y": y}
    for source in ("np.clip(x / y, -1.5, 2) + np.fmax(x, y)", "np.where(np.isnan(x), 0.0, x * 2.0 - y)"):
        node = ast.parse(source, mode="eval").body

        def evaluate(expr):
            return eval(compile(ast.Expression(body=expr), "<test>", "eval"), values)

        with use_device("cuda"):
            operator, arguments, _ = lower_expression(
                node, evaluate, lambda e: _resolve_fitted(e, {"x", "y"}, evaluate), dict(values)
            )
        assert isinstance(operator, CudaExpressionOperator)
        got = operator(*[evaluate(a) for a in arguments])
        with np.errstate(all="ignore"):
            expected = eval(source, values)
        # no multiply-add whose product rounds (x * 2.0 is exact): bit for bit even if NVVM fuses it
        np.testing.assert_array_equal(got, expected)


def test_topk_approximate_scores_stay_on_the_gpu():
    import lightgbm as lgb
    from sklearn.linear_model import Ridge

    from willow.compiler.lowering import lower
    from willow.gpu.device import use_device
    from willow.topk.approximate import ApproximateScorer

    X, signal = _data(20_000, 4)
    dense = np.nan_to_num(X)
    for estimator, rows in (
        (lgb.LGBMRegressor(n_estimators=20, num_leaves=15, verbose=-1).fit(X, signal), X),
        (Ridge().fit(dense, signal), dense),
    ):
        scorer = ApproximateScorer(estimator)
        with use_device("cuda"):
            assert scorer.compile(lower, rows[:2000]) == ""
        on_device = scorer.scores_on_device(rows)
        assert type(on_device).__module__.startswith("cupy")  # only the candidates come back
        np.testing.assert_allclose(runtime.to_host(on_device), scorer.scores(rows), rtol=1e-12, atol=1e-12)


def test_device_chain_and_cascade_confidences_on_the_gpu():
    import lightgbm as lgb

    import willow
    from willow.cascades.approximate import ApproximateModel
    from willow.cascades.outputs import OutputSpec
    from willow.compiler.lowering import lower
    from willow.gpu.device import use_device

    X, signal = _data(4_000, 5)
    model = lgb.LGBMClassifier(n_estimators=20, num_leaves=15, verbose=-1).fit(X * 2.0, signal > 0)

    def predict(X):
        features = X * 2.0
        return model.predict_proba(features)

    options = dict(cascade=False, cost_repeats=1, importance_repeats=1, require_faster=False)
    fast = willow.optimize(predict, device="cuda", accuracy_target=0.8, confidence=0.5, **options)
    fast.calibrate(X[:2_000])
    with runtime.count_transfers() as log:  # the features stay on the GPU between the kernels
        got = fast(X)
    assert [t.direction for t in log] == ["to_device", "to_host"], log
    np.testing.assert_allclose(got, predict(X), rtol=1e-12, atol=1e-15)
    # the approximate model's confidences computed with CuPy equal the host ones
    spec = OutputSpec.from_output("predict_proba", model.predict_proba(X), model)
    approx = ApproximateModel(model, spec)
    with use_device("cuda"):
        assert approx.compile(lower, X[:500] * 2.0) == ""
    rows, confidence = approx.predict_with_confidence_on_device(X * 2.0)
    assert type(confidence).__module__.startswith("cupy")
    host_rows, host_confidence = approx.predict_with_confidence(X * 2.0)
    np.testing.assert_allclose(rows, host_rows, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(runtime.to_host(confidence), host_confidence, rtol=1e-12, atol=1e-15)
