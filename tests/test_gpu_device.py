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
