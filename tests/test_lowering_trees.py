"""Equivalence battery: compiled tree ensembles against LightGBM and scikit-learn themselves.

Models are small and trained once per module; hypothesis varies the rows (NaN, zeros, negative
and unseen categories, float32) fed to every compiled operator. Kernels compile into a
temporary cache directory, so the tests are hermetic.
"""

from __future__ import annotations

import os
import sys

import lightgbm as lgb
import numba
import numpy as np
import pandas as pd
import pytest
from conftest import data_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn import ensemble as sk_ensemble
from sklearn.linear_model import LogisticRegression

from willow.compiler.backend import load_generated_module
from willow.compiler.lowering import chunks, trees_llvm
from willow.compiler.lowering import trees as trees_module
from willow.compiler.lowering.astgen import runtime_digest
from willow.compiler.lowering.base import NotLowerable
from willow.compiler.lowering.trees import TREE_LOWERINGS, lower_tree_model, supported_tree_models
from willow.compiler.lowering.trees_bitvector import TAIL, bitvector_tables, compile_score_rows, score_rows
from willow.compiler.lowering.trees_build import _is_cached, _module_name
from willow.compiler.lowering.trees_ir import Leaf, TreeEnsemble
from willow.compiler.lowering.trees_llvm import nested_ifs

N_FEATURES = 6
CAT = 5  # categorical feature index (integer codes 0..7)


@pytest.fixture(scope="module", autouse=True)
def kernel_cache(tmp_path_factory):
    """Point willow's kernel cache at a fresh directory for this module."""
    old = os.environ.get("WILLOW_CACHE_DIR")
    os.environ["WILLOW_CACHE_DIR"] = str(tmp_path_factory.mktemp("willow_cache"))
    yield
    if old is None:
        os.environ.pop("WILLOW_CACHE_DIR", None)
    else:
        os.environ["WILLOW_CACHE_DIR"] = old


def _train_data(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, N_FEATURES))
    X[:, CAT] = rng.integers(0, 8, n)
    X[rng.random(X.shape) < 0.1] = 0.0
    X[rng.random(X.shape) < 0.12] = np.nan
    filled = np.nan_to_num(X)
    score = (
        filled[:, 0]
        + 0.8 * filled[:, 1] * filled[:, 2]
        + (filled[:, CAT] % 3 == 1)
        - 0.5 * (X[:, 3] != X[:, 3])
    )
    y_binary = (score > 0.3).astype(int)
    y_multi = np.digitize(score, [-0.5, 0.7])
    y_reg = score + 0.1 * rng.standard_normal(n)
    return X, y_binary, y_multi, y_reg


X_TRAIN, Y_BIN, Y_MULTI, Y_REG = _train_data()


def _lgb(model, *args, **fit):
    return model.fit(*args, **fit)


def _models() -> dict[str, tuple[object, tuple[str, ...], bool]]:
    """name -> (fitted model, methods, accepts NaN)."""
    X, yb, ym, yr = X_TRAIN, Y_BIN, Y_MULTI, Y_REG
    X_finite = np.nan_to_num(X)
    common = dict(n_estimators=8, num_leaves=7, min_child_samples=5, verbose=-1, random_state=0)
    rf_booster = lgb.train(
        dict(
            objective="regression",
            boosting="rf",
            bagging_fraction=0.7,
            bagging_freq=1,
            num_leaves=9,
            verbose=-1,
        ),
        lgb.Dataset(X, yr),
        num_boost_round=6,
    )
    return {
        "lgb_binary_cat": (
            lgb.LGBMClassifier(**common).fit(X, yb, categorical_feature=[CAT]),
            ("predict", "predict_proba", "raw"),
            True,
        ),
        "lgb_multiclass": (
            lgb.LGBMClassifier(**common).fit(X, ym, categorical_feature=[CAT]),
            ("predict", "predict_proba", "raw"),
            True,
        ),
        "lgb_reg_zero_missing": (
            lgb.LGBMRegressor(zero_as_missing=True, **common).fit(X, yr),
            ("predict",),
            True,
        ),
        "lgb_reg_no_missing": (lgb.LGBMRegressor(use_missing=False, **common).fit(X, yr), ("predict",), True),
        "lgb_booster_rf": (rf_booster, ("predict", "raw"), True),
        "rf_classifier": (
            sk_ensemble.RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0).fit(X, ym),
            ("predict", "predict_proba"),
            True,
        ),
        "et_regressor": (
            sk_ensemble.ExtraTreesRegressor(n_estimators=5, max_depth=4, random_state=0).fit(X, yr),
            ("predict",),
            True,
        ),
        "gb_classifier": (
            sk_ensemble.GradientBoostingClassifier(n_estimators=6, max_depth=3, random_state=0).fit(
                X_finite, ym
            ),
            ("predict", "predict_proba", "decision_function"),
            False,
        ),
        "gb_binary": (
            sk_ensemble.GradientBoostingClassifier(n_estimators=6, max_depth=3, random_state=0).fit(
                X_finite, yb
            ),
            ("predict", "predict_proba", "decision_function"),
            False,
        ),
        "gb_regressor": (
            sk_ensemble.GradientBoostingRegressor(n_estimators=6, max_depth=3, random_state=0).fit(
                X_finite, yr
            ),
            ("predict",),
            False,
        ),
        "hgb_classifier_cat": (
            sk_ensemble.HistGradientBoostingClassifier(
                max_iter=5, max_leaf_nodes=6, categorical_features=[CAT], random_state=0
            ).fit(X, ym),
            ("predict", "predict_proba", "decision_function"),
            True,
        ),
        "hgb_binary": (
            sk_ensemble.HistGradientBoostingClassifier(max_iter=5, max_leaf_nodes=6, random_state=0).fit(
                X, yb
            ),
            ("predict", "predict_proba", "decision_function"),
            True,
        ),
        "hgb_poisson": (
            sk_ensemble.HistGradientBoostingRegressor(
                max_iter=5, max_leaf_nodes=6, loss="poisson", categorical_features=[CAT], random_state=0
            ).fit(X, np.exp(yr / 3)),
            ("predict",),
            True,
        ),
    }


@pytest.fixture(scope="module")
def compiled(kernel_cache):
    """name -> (model, {method: operator}, accepts NaN); every kernel compiled once."""
    result = {}
    for name, (model, methods, nan_ok) in _models().items():
        result[name] = (model, {m: lower_tree_model(model, m) for m in methods}, nan_ok)
    return result


def _reference(model, method, X):
    if method == "raw":
        return model.predict(X, raw_score=True)
    return getattr(model, method)(X)


def assert_same_as_library(model, method, op, X) -> None:
    """Equal labels exactly, scores to 1e-9; or the same exception type as the library."""
    try:
        expected = _reference(model, method, X)
    except ValueError as error:
        with pytest.raises(type(error)):
            op(X)
        return
    got = op(X)
    assert got.shape == expected.shape, (method, got.shape, expected.shape)
    if np.asarray(expected).dtype.kind == "f":
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    else:
        np.testing.assert_array_equal(got, expected)


# rows: finite values mixed with NaN, exact zeros, tiny values (LightGBM's zero band), and
# categories that are negative, fractional, unseen or huge
_cell = st.one_of(
    st.floats(-3, 3, allow_nan=False),
    st.sampled_from([np.nan, 0.0, -0.0, 1e-36, -1e-36, 2.5, -0.5, -1.0, 7.0, 9.0, 300.0, 3e9]),
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(_cell, min_size=N_FEATURES, max_size=N_FEATURES), min_size=1, max_size=20))
def test_equivalence_on_random_rows(compiled, rows):
    X = np.array(rows, dtype=np.float64)
    for model, operators, nan_ok in compiled.values():
        data = X if nan_ok else np.nan_to_num(X)
        for method, op in operators.items():
            assert_same_as_library(model, method, op, data)


@pytest.mark.parametrize("name", list(_models()))
def test_equivalence_on_training_like_rows(compiled, name):
    model, operators, nan_ok = compiled[name]
    X, *_ = _train_data(n=300, seed=1)
    X = X if nan_ok else np.nan_to_num(X)
    for method, op in operators.items():
        # the CompiledOperator contract: a name, the generated source, and a call
        assert op.name.endswith(method) and "@numba.njit" in op.source and callable(op)
        assert_same_as_library(model, method, op, X)
        assert_same_as_library(model, method, op, X.astype(np.float32))
        assert_same_as_library(model, method, op, X[:1])
        assert_same_as_library(model, method, op, X[:0])


def test_dataframe_input(compiled):
    X, *_ = _train_data(n=200, seed=2)
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(N_FEATURES)])
    for name in ("lgb_binary_cat", "rf_classifier", "hgb_binary"):
        model, operators, _ = compiled[name]
        for method, op in operators.items():
            assert_same_as_library(model, method, op, frame.to_numpy())


def test_one_signature_per_kernel_for_writable_and_read_only_rows(compiled):
    # pandas 3's to_numpy() and np.frombuffer give read-only arrays, NumPy's default is writable:
    # Numba types the flag, so a kernel called with both would be compiled twice (and a tree
    # model's kernels are most of a plan's compile time). Each kernel has one read-only signature
    # and writable rows run it too; score_rows has one signature per row dtype.
    X, *_ = _train_data(n=300, seed=5)
    read_only, read_only_32 = X.copy(), X.astype(np.float32)
    read_only.setflags(write=False)
    read_only_32.setflags(write=False)
    from_frame = pd.DataFrame(X).to_numpy()  # Fortran-ordered (read-only under pandas 3)
    for model, operators, nan_ok in compiled.values():
        for method, op in operators.items():
            for rows in (X, read_only, read_only_32, from_frame):
                if not nan_ok:
                    rows = np.nan_to_num(rows)
                    rows.setflags(write=False)
                for batch in (rows, rows[:1], rows[: trees_module.SMALL_BATCH_ROWS + 1]):
                    assert_same_as_library(model, method, op, batch)
            assert all(len(kernel.signatures) == 1 for kernel in op._kernels), [
                kernel.signatures for kernel in op._kernels
            ]
            assert not any(kernel.signatures[0][0].mutable for kernel in op._kernels)
    row_dtypes = [signature[0].dtype for signature in score_rows.signatures]
    assert len(row_dtypes) == len(set(row_dtypes)) >= 1, score_rows.signatures


def test_lightgbm_pandas_categorical(kernel_cache):
    rng = np.random.default_rng(3)
    n = 500
    frame = pd.DataFrame(
        {
            "x": rng.standard_normal(n),
            "colour": pd.Categorical(rng.choice(["red", "green", "blue", "grey"], n)),
            "size": rng.integers(0, 5, n).astype(float),
        }
    )
    y = ((frame["colour"] == "red") | (frame["x"] > 0.8)).astype(int)
    model = lgb.LGBMClassifier(n_estimators=8, num_leaves=7, min_child_samples=5, verbose=-1).fit(frame, y)
    op = lower_tree_model(model, "predict_proba")
    test = frame.sample(100, random_state=0).reset_index(drop=True)
    test.loc[:5, "colour"] = np.nan
    # different category order and an unseen category in the new frame
    test["colour"] = (
        test["colour"]
        .cat.add_categories(["purple"])
        .cat.reorder_categories(["purple", "grey", "blue", "green", "red"])
    )
    test.loc[6:8, "colour"] = "purple"
    assert_same_as_library(model, "predict_proba", op, test)


def test_several_groups_compile_in_worker_processes(kernel_cache):
    # trees over 64 leaves: no bitvector kernel, so the groups are tied together by a compiled driver
    finite = np.nan_to_num(X_TRAIN)
    model = sk_ensemble.ExtraTreesRegressor(n_estimators=3, random_state=0).fit(finite, Y_REG)
    op = lower_tree_model(model, "predict", group_nodes=12, n_jobs=2)
    assert op._small is None and len(op.sources) >= 4  # groups, then the driver
    assert all(_is_cached(s, "trees") for s in op.sources[:-1])
    assert _is_cached(op.sources[-1], "trees_driver") and "def predict(X, out):" in op.sources[-1]
    assert_same_as_library(model, "predict", op, finite)
    assert_same_as_library(model, "predict", op, finite[:1])
    assert "def kernel(X, out):" in op.source and "numba.njit(cache=True" in op.source
    # as a second process finds it: the cached driver is loaded, the groups are only imported
    names = [_module_name(s, "trees") for s in op.sources[:-1]] + [
        _module_name(op.sources[-1], "trees_driver")
    ]
    for name in names:
        sys.modules.pop(name)
    again = lower_tree_model(model, "predict", group_nodes=12, n_jobs=2)
    assert all(not sys.modules[name].kernel.overloads for name in names[:-1])
    np.testing.assert_array_equal(again(finite), op(finite))
    assert_same_as_library(model, "predict", again, finite[:1])
    # numeric splits: small batches use the bitvector kernel and large ones call each group
    numeric = lgb.LGBMRegressor(n_estimators=9, num_leaves=5, verbose=-1, random_state=1).fit(X_TRAIN, Y_REG)
    op = lower_tree_model(numeric, "predict", group_nodes=12, n_jobs=2)
    assert op._small is not None and len(op._kernels) == len(op.sources) >= 3
    assert all(_is_cached(s, "trees") for s in op.sources)
    assert_same_as_library(numeric, "predict", op, X_TRAIN)
    assert_same_as_library(numeric, "predict", op, X_TRAIN[:1])


def test_batch_uses_threads_and_stays_exact(compiled, monkeypatch):
    model, operators, _ = compiled["lgb_multiclass"]
    X, *_ = _train_data(n=9000, seed=4)
    op = operators["predict_proba"]
    assert_same_as_library(model, "predict_proba", op, X)
    # Fortran-ordered rows (a frame's to_numpy): each thread copies its own chunks to C order,
    # instead of the whole array being copied first
    fortran = np.asfortranarray(X)
    expected = op(X)
    monkeypatch.setattr(chunks, "worker_threads", lambda: 2)
    monkeypatch.setattr(op, "_prepare", None)  # not called on this path
    np.testing.assert_array_equal(op(fortran), expected)


def test_mid_sized_batches_of_large_ensembles_run_in_chunks(compiled, monkeypatch):
    """The cut is by rows x trees (``PARALLEL_MIN_TREE_ROWS``): a cascade's uncertain rows, a few
    thousand, use the worker threads when the ensemble is large enough to pay for them."""
    model, operators, _ = compiled["lgb_multiclass"]
    op = operators["predict_proba"]
    monkeypatch.setattr(chunks, "worker_threads", lambda: 2)
    chunked = []
    original = chunks.map_row_chunks
    monkeypatch.setattr(
        chunks, "map_row_chunks", lambda fn, n, workers: chunked.append(n) or original(fn, n, workers)
    )
    threshold = trees_module.parallel_min_rows(op._n_trees)
    assert threshold == max(
        trees_module.SMALL_BATCH_ROWS + 1, -(-trees_module.PARALLEL_MIN_TREE_ROWS // op._n_trees)
    )
    assert trees_module.parallel_min_rows(200) == 800
    assert trees_module.parallel_min_rows(10_000) == trees_module.SMALL_BATCH_ROWS + 1
    X, *_ = _train_data(n=threshold, seed=5)
    assert_same_as_library(model, "predict_proba", op, X)
    assert chunked == [threshold]
    assert_same_as_library(model, "predict_proba", op, X[:-1])  # one row fewer: the calling thread only
    assert chunked == [threshold]


# every test model has trees of at most 64 leaves: small batches use the bitvector kernel
SMALL_BATCH_MODELS = list(_models())


def test_small_batch_kernel_covers_trees_up_to_64_leaves(compiled):
    for name, (_, operators, _) in compiled.items():
        assert all(op._small is not None for op in operators.values()), name
    for name, (model, operators, _) in compiled.items():  # LightGBM's arrays skip the conversion
        lightgbm = type(model).__module__.startswith("lightgbm")
        assert all(op._direct == lightgbm for op in operators.values()), name
    # a Fortran-ordered small batch (rows of a frame's to_numpy) too, copied to C order on the way
    model, operators, _ = compiled["lgb_multiclass"]
    X, *_ = _train_data(n=40, seed=6)
    for op in operators.values():
        expected = op(X)
        prepare, op._prepare = op._prepare, None  # not called on this path
        try:
            np.testing.assert_array_equal(op(np.asfortranarray(X)), expected)
            np.testing.assert_array_equal(op(np.asfortranarray(X)[3:4]), expected[3:4])
        finally:
            op._prepare = prepare
    for name in ("lgb_binary_cat", "hgb_classifier_cat"):  # categorical splits in the tables
        assert bitvector_tables(compiled[name][1]["predict"].ensemble).category_splits.shape[0] > 0
    deep = sk_ensemble.RandomForestRegressor(n_estimators=2, random_state=0).fit(
        np.nan_to_num(X_TRAIN), Y_REG
    )
    assert bitvector_tables(lower_tree_model(deep, "predict").ensemble) is None  # > 64 leaves


def _small_batch_inputs(nan_ok: bool) -> list[np.ndarray]:
    X, *_ = _train_data(n=trees_module.SMALL_BATCH_ROWS, seed=5)
    X[0, :3] = [1e-36, -0.0, -1e-36]  # LightGBM's zero band
    X[1, :] = np.nan
    X = X if nan_ok else np.nan_to_num(X)
    return [X[:0], X[:1], X[1:2], X[:2], X, X.astype(np.float32)]


@pytest.mark.parametrize("name", SMALL_BATCH_MODELS)
def test_small_batches_match_library_and_nested_kernel_bit_for_bit(compiled, name, monkeypatch):
    """0, 1, 2 and SMALL_BATCH_ROWS rows (NaN, zero band, float32): library outputs, and raw scores
    identical to the nested-if kernels'."""
    model, operators, nan_ok = compiled[name]
    for X in _small_batch_inputs(nan_ok):
        for method, op in operators.items():
            assert_same_as_library(model, method, op, X)
            if len(X):
                small = op.raw(X)
                with monkeypatch.context() as patch:
                    patch.setattr(trees_module, "SMALL_BATCH_ROWS", -1)
                    nested = op.raw(X)
                np.testing.assert_array_equal(small, nested)


def test_generated_python_is_what_the_group_kernels_compute(compiled):
    """Every group's ``add_leaf_values``, run as plain Python, gives its compiled kernel's sums bit
    for bit (rows of the dtype the kernels read: NaN, LightGBM's zero band, negative, fractional,
    unseen and huge categories), so the rendered source shows exactly what runs."""
    specials = np.array([np.nan, 0.0, -0.0, 1e-36, -1e-36, 2.5, -0.5, -1.0, 7.0, 9.0, 300.0, 3e9])
    rng = np.random.default_rng(12)
    X, *_ = _train_data(n=40, seed=12)
    X[::2] = np.where(rng.random((20, N_FEATURES)) < 0.5, rng.choice(specials, (20, N_FEATURES)), X[::2])
    for name, (_, operators, nan_ok) in compiled.items():
        op = next(iter(operators.values()))
        # the rows' dtype is the one the operator hands its kernels (float32 for scikit-learn's
        # forests and GradientBoosting): a kernel is compiled for that dtype only
        rows = (X if nan_ok else np.nan_to_num(X)).astype(
            np.float32 if op.ensemble.float32_input else np.float64
        )
        for source in op.sources:
            if "def add_leaf_values" not in source:
                continue  # the driver module
            assert f"translator {runtime_digest(trees_llvm)}" in source  # a new translator, new files
            module = load_generated_module(source, "trees")
            width = op.ensemble.n_outputs
            python, kernel = np.full((len(rows), width), 0.5), np.full((len(rows), width), 0.5)
            for i in range(len(rows)):
                module.add_leaf_values(rows, python, i)
            module.kernel(rows, kernel)
            np.testing.assert_array_equal(kernel, python, err_msg=name)


def test_nested_if_translator_refuses_other_python():
    def loop(X, out, i):
        x = X[i]
        acc0 = out[i, 0]
        while x[0] > 0:
            acc0 += 1.0
        out[i, 0] = acc0

    def kernel(X, out):
        compiled(X, out, 0)

    compiled = nested_ifs(loop)
    with pytest.raises(Exception, match="unsupported statement"):
        numba.njit(kernel)(np.zeros((1, 1)), np.zeros((1, 1)))
    with pytest.raises(Exception, match="out must be a 2-D float64 array"):
        numba.njit(kernel)(np.zeros((1, 1)), np.zeros((1, 1), dtype=np.float32))


def test_small_batch_dataframe_and_feature_count_errors(compiled):
    for name in ("lgb_reg_zero_missing", "hgb_binary", "rf_classifier"):
        model, operators, _ = compiled[name]
        X, *_ = _train_data(n=3, seed=6)
        frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(N_FEATURES)])
        for method, op in operators.items():
            np.testing.assert_array_equal(op(frame.iloc[:1]), op(X[:1]))
            assert_same_as_library(model, method, op, frame.iloc[:1].to_numpy())
            for wrong in (X[:1, :-1], np.hstack([X[:1], X[:1]]), X[0]):
                with pytest.raises(ValueError, match="features|2D array"):
                    op(wrong)


def test_not_lowerable_reasons():
    X, yb = X_TRAIN[:100], Y_BIN[:100]
    with pytest.raises(NotLowerable, match="not a supported tree model"):
        lower_tree_model(LogisticRegression().fit(np.nan_to_num(X), yb), "predict")
    forest = sk_ensemble.RandomForestRegressor(n_estimators=2, max_depth=2).fit(X, np.c_[yb, yb])
    with pytest.raises(NotLowerable, match="Multi-output"):
        lower_tree_model(forest, "predict")
    boosted = sk_ensemble.GradientBoostingRegressor(
        n_estimators=2, init=sk_ensemble.RandomForestRegressor(n_estimators=2)
    ).fit(np.nan_to_num(X), yb)
    with pytest.raises(NotLowerable, match="init=RandomForestRegressor"):
        lower_tree_model(boosted, "predict")
    regressor = lgb.LGBMRegressor(n_estimators=2, verbose=-1).fit(X, yb)
    with pytest.raises(NotLowerable, match="predict_proba"):
        lower_tree_model(regressor, "predict_proba")
    ranker = lgb.train(
        dict(objective="lambdarank", verbose=-1), lgb.Dataset(X, yb, group=[50, 50]), num_boost_round=2
    )
    with pytest.raises(NotLowerable, match="lambdarank"):
        lower_tree_model(ranker, "predict")
    assert "LGBMClassifier" in supported_tree_models() and len(TREE_LOWERINGS) == 11


@pytest.mark.data
def test_real_data_adult(kernel_cache):
    frame = pd.read_csv(data_file("adult.data"), sep=", ", engine="python")
    y = (frame.pop("Salary").astype(str).str.strip().str.startswith(">50K")).astype(int)
    for col in frame.columns:
        if not pd.api.types.is_numeric_dtype(frame[col]):
            frame[col] = frame[col].astype("category")
    train, test = frame.iloc[:20000], frame.iloc[20000:24000]
    model = lgb.LGBMClassifier(n_estimators=20, num_leaves=15, verbose=-1).fit(train, y.iloc[:20000])
    for method in ("predict", "predict_proba"):
        assert_same_as_library(model, method, lower_tree_model(model, method), test)


def test_small_batch_prefix_count_across_many_blocks_and_ties():
    """Hundreds of splits on two features (many blocks of thresholds, repeated thresholds): rows
    at, just below and just above every threshold land in the leaves LightGBM picks."""
    rng = np.random.default_rng(11)
    X = np.column_stack([rng.integers(0, 40, 3000) / 4.0, rng.normal(size=3000)])
    y = np.sin(X[:, 0]) + X[:, 1] ** 2 + rng.normal(scale=0.1, size=3000)
    booster = lgb.train(
        {"num_leaves": 15, "min_data_in_leaf": 5, "verbose": -1, "seed": 0}, lgb.Dataset(X, y), 60
    )
    op = lower_tree_model(booster, "predict")
    tables = bitvector_tables(op.ensemble)
    assert max(np.diff(tables.block_start.astype(np.int64))) > 4  # several blocks per feature
    thresholds = np.unique(tables.thresholds)
    probes = np.concatenate([thresholds, np.nextafter(thresholds, -np.inf), np.nextafter(thresholds, np.inf)])
    rows = np.column_stack([probes, probes[::-1]])[: trees_module.SMALL_BATCH_ROWS]
    np.testing.assert_array_equal(op(rows), booster.predict(rows))
    for i in range(0, len(rows), 37):
        np.testing.assert_array_equal(op(rows[i : i + 1]), booster.predict(rows[i : i + 1]))


def test_small_batch_kernel_without_splits_or_trees():
    """The AND loop's masked tail reads TAIL entries past a feature's prefix: with no splits at all
    (lone-leaf trees) or no trees, it must touch only its no-op entries and give base + leaves."""
    leaves_only = TreeEnsemble(
        trees=(Leaf((0.5,)), Leaf((-2.0,))),
        tree_outputs=((0,), (0,)),
        n_outputs=1,
        n_features=3,
        base=(1.0,),
        divisor=2.0,
    )
    no_trees = TreeEnsemble(trees=(), tree_outputs=(), n_outputs=2, n_features=3, base=(1.0, -3.0))
    X = np.array([[0.0, np.nan, 1e300], [-1.0, 2.0, -0.0]])
    for ensemble, expected in ((leaves_only, [(1.0 + 0.5 - 2.0) / 2.0]), (no_trees, [1.0, -3.0])):
        tables = bitvector_tables(ensemble)
        assert tables.thresholds.shape == (0,) and tables.trees.shape == (TAIL,)
        compile_score_rows(X.dtype)  # as lowering does: one signature for writable and read-only rows
        got = score_rows(X, ensemble.divisor, *tables.arguments(np.asarray(ensemble.base)))
        np.testing.assert_array_equal(got, np.tile(expected, (2, 1)))


def test_group_sources_are_read_back_checked_and_rebuilt(compiled):
    # a second process skips codegen: the sources come from the manifest an earlier lowering
    # wrote, each file checked against the hash in its name; damage or loss means rendering again
    from willow.compiler.backend import kernel_cache_dir
    from willow.compiler.lowering import trees_sources
    from willow.compiler.lowering.trees_build import _module_name
    from willow.compiler.lowering.trees_codegen import build_group_source, group_trees

    op = next(ops["predict"] for model, ops, _ in compiled.values() if isinstance(model, lgb.LGBMModel))
    # the lowering itself went through the manifest, with the default grouping
    default = group_trees(op.ensemble, trees_module.DEFAULT_GROUP_NODES)
    default_key = trees_sources._key(op.ensemble, default, True)
    assert (kernel_cache_dir() / f"tree_sources_{default_key}.txt").is_file()
    groups = group_trees(op.ensemble, 12)
    rendered = [build_group_source(op.ensemble, g) for g in groups]
    assert len(rendered) >= 2
    manifest = kernel_cache_dir() / f"tree_sources_{trees_sources._key(op.ensemble, groups, True)}.txt"
    manifest.unlink(missing_ok=True)
    assert trees_sources.group_sources(op.ensemble, groups, "trees") == rendered  # rendered, remembered
    names = manifest.read_text().split()
    assert names == [_module_name(s, "trees") for s in rendered]
    assert trees_sources.group_sources(op.ensemble, groups, "trees") == rendered  # read back
    damaged = kernel_cache_dir() / f"{names[1]}.py"
    damaged.write_text(rendered[1].replace("add_leaf_values", "add_leaf_values_x"))
    assert trees_sources.group_sources(op.ensemble, groups, "trees") == rendered
    assert damaged.read_text() == rendered[1]  # repaired
    damaged.unlink()
    assert trees_sources.group_sources(op.ensemble, groups, "trees") == rendered
    # another grouping or option is another key: nothing stale is served
    assert trees_sources._key(op.ensemble, groups[:1], True) != trees_sources._key(op.ensemble, groups, True)
    assert trees_sources._key(op.ensemble, groups, False) != trees_sources._key(op.ensemble, groups, True)
    assert trees_sources.group_sources(op.ensemble, groups, "trees", preload=False) == [
        build_group_source(op.ensemble, g, False) for g in groups
    ]


def test_lightgbm_warm_entry_is_read_back_checked_and_rebuilt(compiled):
    # a second lowering of the same LightGBM model (in this or another process sharing the cache)
    # reads the parsed model, groups, sources and bitvector tables back instead of parsing it;
    # the operator is the same, exact on NaN, zero-as-missing, categorical and multiclass rows
    from willow.compiler.backend import kernel_cache_dir
    from willow.compiler.lowering import trees_warm
    from willow.compiler.lowering.trees_sources import source_names

    X, *_ = _train_data(n=300, seed=5)
    X[:7, CAT] = [-1.0, 8.0, 2.5, 3e9, np.nan, 0.0, 7.0]  # negative, unseen, fractional, huge
    for name in (
        "lgb_binary_cat",
        "lgb_multiclass",
        "lgb_reg_zero_missing",
        "lgb_reg_no_missing",
        "lgb_booster_rf",
    ):
        model, operators, _ = compiled[name]
        booster = model if isinstance(model, lgb.Booster) else model.booster_
        key = trees_warm.model_key(booster, booster.best_iteration, trees_module.DEFAULT_GROUP_NODES)
        entry = kernel_cache_dir() / f"tree_warm_{key}.pkl"
        assert entry.is_file() and trees_warm.read_lightgbm(key, "trees") is not None
        for method, op in operators.items():
            warm = lower_tree_model(model, method)
            assert isinstance(warm._ensemble, trees_warm.DeferredEnsemble)  # not parsed again
            for rows in (X, X[:1], X[:0]):
                assert_same_as_library(model, method, warm, rows)
                if len(rows):
                    np.testing.assert_array_equal(warm(rows), op(rows))
            assert warm.sources == op.sources
            assert warm.ensemble == op.ensemble  # unpickled on first read
    model, operators, _ = compiled["lgb_binary_cat"]
    booster = model.booster_
    key = trees_warm.model_key(booster, 0, trees_module.DEFAULT_GROUP_NODES)
    entry = kernel_cache_dir() / f"tree_warm_{key}.pkl"
    good = entry.read_bytes()
    # damaged, cut short, or naming a group module file that is gone: a miss, then rewritten
    for damage in (
        lambda: entry.write_bytes(good[:-1] + bytes([good[-1] ^ 1])),
        lambda: entry.write_bytes(good[: len(good) // 2]),
        lambda: entry.write_bytes(b"not an entry"),
        lambda: (
            kernel_cache_dir() / f"{source_names(operators['predict'].sources, 'trees')[0]}.py"
        ).unlink(),
    ):
        damage()
        assert trees_warm.read_lightgbm(key, "trees") is None
        rebuilt = lower_tree_model(model, "predict_proba")
        assert not isinstance(rebuilt._ensemble, trees_warm.DeferredEnsemble)  # parsed again
        np.testing.assert_array_equal(rebuilt(X), operators["predict_proba"](X))
        assert entry.read_bytes() == good and trees_warm.read_lightgbm(key, "trees") is not None
    # the key follows the model's text, the iterations used and the grouping
    other = compiled["lgb_multiclass"][0].booster_
    keys = {
        trees_warm.model_key(booster, 0, trees_module.DEFAULT_GROUP_NODES),
        trees_warm.model_key(booster, 3, trees_module.DEFAULT_GROUP_NODES),
        trees_warm.model_key(booster, 0, 12),
        trees_warm.model_key(other, 0, trees_module.DEFAULT_GROUP_NODES),
    }
    assert len(keys) == 4


def test_generated_module_code_is_cached_checked_and_rebuilt(tmp_path):
    # generated modules' bytecode is kept beside them (Python writes no .pyc under
    # PYTHONDONTWRITEBYTECODE); a damaged file or one compiled for another path is rebuilt
    from willow.compiler.backend import _module_code

    source = "def f(x):\n    return x + 1\n"
    path = tmp_path / "willow_kernel_t_0123.py"
    path.write_text(source)
    code_file = tmp_path / f"willow_kernel_t_0123.{sys.implementation.cache_tag}.code"
    first = _module_code(path, source)
    good = code_file.read_bytes()
    assert _module_code(path, source).co_code == first.co_code and code_file.read_bytes() == good
    for bad in (good[:-1] + bytes([good[-1] ^ 1]), good[:20], b""):
        code_file.write_bytes(bad)
        namespace: dict = {}
        exec(_module_code(path, source), namespace)
        assert namespace["f"](1) == 2 and code_file.read_bytes() == good
    moved = tmp_path / "sub"
    moved.mkdir()
    (moved / path.name).write_text(source)
    (moved / code_file.name).write_bytes(good)  # a copied cache folder: the path inside is stale
    assert _module_code(moved / path.name, source).co_filename == str(moved / path.name)
