"""Lower fitted tree ensembles to generated Numba kernels with the library's exact outputs.

Stages, one per module, data flowing one way:
``trees_lightgbm`` / ``trees_sklearn`` (fitted model -> :class:`TreeEnsemble`),
``trees_codegen`` (ensemble -> kernel module source, trees as nested ``if`` statements),
``trees_build`` (sources -> compiled, disk-cached kernels), and this driver, which wraps the
kernels in a :class:`CompiledTreeOperator` that converts inputs and outputs like the library.
Batches of up to ``SMALL_BATCH_ROWS`` rows go through ``trees_bitvector`` instead (a fixed kernel
over the ensemble's splits as arrays) when no tree has more than 64 leaves: one row would
otherwise run all the nested-``if`` code cold.

Exactness: raw scores are summed in the library's order from the same doubles, so they are
bit-identical; probabilities go through the library's own link (scikit-learn) or LightGBM's
formula in NumPy (differences of a few ulp); labels are chosen exactly as the library does.

:class:`NotLowerable` is raised for: models other than ``TREE_LOWERINGS``' keys, methods a
model does not have, LightGBM objectives without a reproduced transform (custom, ranking),
linear trees, multi-output forests, GradientBoosting with a non-dummy ``init`` estimator and
trees deeper than ``MAX_TREE_DEPTH`` (CPython's nesting limit for the generated ``if``s).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from willow.compiler.lowering import chunks, trees_warm
from willow.compiler.lowering.base import NotLowerable
from willow.compiler.lowering.trees_bitvector import (
    BitvectorTables,
    bitvector_tables,
    compile_score_rows,
    score_rows,
)
from willow.compiler.lowering.trees_build import build_kernels
from willow.compiler.lowering.trees_codegen import group_trees
from willow.compiler.lowering.trees_ir import TreeEnsemble
from willow.compiler.lowering.trees_sources import group_sources
from willow.compiler.lowering.trees_warm import DeferredEnsemble, WarmLightGBM

__all__ = ["CompiledTreeOperator", "lower_tree_model", "TREE_LOWERINGS", "supported_tree_models"]

# Internal nodes per generated function. LLVM's optimisation time grows faster than function
# size (CPU per 320 nodes, 500 x 63-leaf trees: 0.45 s in 320-node functions, 0.41 s at 640,
# 0.52 s at 1,280, 0.80 s at 2,560); small functions also spread over the compiling processes.
DEFAULT_GROUP_NODES = 320
# A batch whose rows x trees reach this runs in row chunks on the worker threads; smaller ones on
# the calling thread only. Measured on credit's 200 x 31-leaf LightGBM (2 threads, 2026-12-03):
# 2 threads were 0.92x one thread at 300 rows, 1.17x at 600, 1.42x at 1,000 and 1.79x at 4,000.
# A cascade's uncertain rows are such mid-sized batches, so the cut is by work, not by rows alone.
PARALLEL_MIN_TREE_ROWS = 160_000
# Up to this many rows a batch goes through the bitvector kernel (``trees_bitvector``) when the
# ensemble has one: the nested-if code is only faster once it is hot in the instruction cache.
SMALL_BATCH_ROWS = 256


class CompiledTreeOperator:
    """A compiled ``model.method``: ``op(X)`` returns what ``getattr(model, method)(X)`` returns.

    It follows the :class:`~willow.compiler.lowering.base.CompiledOperator` contract (``name``,
    ``source``, call) and adds ``raw`` and the per-group ``sources``.

    ``raw(X)`` gives the summed tree scores (n_rows, n_outputs) before any output transform.
    """

    def __init__(
        self,
        name: str,
        ensemble: TreeEnsemble | DeferredEnsemble,
        sources: list[str],
        kernels: list[Callable[..., Any]],
        prepare: Callable[[Any], np.ndarray],
        finish: Callable[[np.ndarray], np.ndarray],
        n_threads: int | None,
        small: BitvectorTables | None = None,
        arrays_as_is: bool = False,
    ) -> None:
        self.name = name
        self._ensemble = ensemble  # a DeferredEnsemble (warm cache) is loaded on first read
        self._n_trees = ensemble.n_trees if isinstance(ensemble, DeferredEnsemble) else len(ensemble.trees)
        self._n_outputs = ensemble.n_outputs
        self.sources = sources  # group modules, then the driver module when there are several
        self.source = "\n\n# ---- next group module ----\n\n".join(sources)
        self._kernels = kernels
        self._prepare = prepare
        self._finish = finish
        self._n_threads = n_threads
        self._base = np.asarray(ensemble.base, dtype=np.float64)
        self._divisor = float(ensemble.divisor)
        self._small = None if small is None else small.arguments(self._base)
        # ``prepare`` returns a float64 array of 1+ rows and n_features columns as it is, in C order
        # (LightGBM): small batches skip it, the conversion is most of their Python time
        self._arrays_as_is = arrays_as_is and not ensemble.float32_input
        self._direct = self._arrays_as_is and self._small is not None
        self._n_features = ensemble.n_features
        self._parallel_rows = parallel_min_rows(self._n_trees)

    @property
    def ensemble(self) -> TreeEnsemble:
        """The compiled ensemble (read back from the warm cache on first access, see ``trees_warm``)."""
        if isinstance(self._ensemble, DeferredEnsemble):
            self._ensemble = self._ensemble.load()
        return self._ensemble

    def __repr__(self) -> str:
        return f"CompiledTreeOperator({self.name!r}, trees={self._n_trees}, kernels={len(self._kernels)})"

    def _run(self, X: np.ndarray, out: np.ndarray) -> None:
        for kernel in self._kernels:
            kernel(X, out)

    def raw(self, X: Any) -> np.ndarray:
        """Summed leaf values plus base score, divided by the ensemble's divisor."""
        workers = self._n_threads if self._n_threads is not None else chunks.worker_threads()
        if (
            self._arrays_as_is
            and workers > 1
            and _feature_rows(X, np.float64, self._n_features)
            and X.shape[0] >= self._parallel_rows
            and not X.flags.c_contiguous
        ):
            # ``prepare`` would copy the whole array to C order first (a frame's to_numpy, and an
            # hstack of them, is Fortran-ordered): each thread copies its chunks instead, in
            # parallel, right before its kernels read them
            return self._chunked(X, lambda a, b: np.ascontiguousarray(X[a:b]), workers)
        data = self._prepare(X)
        n = data.shape[0]
        if n <= SMALL_BATCH_ROWS and self._small is not None:
            return score_rows(data, self._divisor, *self._small)
        return self._chunked(data, lambda a, b: data[a:b], workers if n >= self._parallel_rows else 1)

    def _chunked(self, X: np.ndarray, rows: Callable[[int, int], np.ndarray], workers: int) -> np.ndarray:
        """The raw scores of every row of ``X``: chunks of rows on the shared pool's threads, each
        chunk (``rows(first, last)``, C-contiguous) run through every group in turn."""
        out = np.empty((X.shape[0], self._n_outputs), dtype=np.float64)
        out[:] = self._base
        if workers > 1:
            chunks.map_row_chunks(lambda a, b: self._run(rows(a, b), out[a:b]), X.shape[0], workers)
        else:
            self._run(rows(0, X.shape[0]), out)
        if self._divisor != 1.0:
            out /= self._divisor
        return out

    def __call__(self, *inputs: Any) -> np.ndarray:
        if len(inputs) != 1:
            raise TypeError(f"{self.name} takes one argument X, got {len(inputs)}.")
        X = inputs[0]
        if (
            self._direct
            and _feature_rows(X, np.float64, self._n_features)
            and 0 < X.shape[0] <= SMALL_BATCH_ROWS
        ):
            flags = X.flags  # (inline: a single row's call is counted in microseconds)
            if not (flags.c_contiguous and flags.aligned):  # e.g. a row of a frame's to_numpy
                X = np.array(X, order="C")
            return self._finish(score_rows(X, self._divisor, *self._small))
        return self._finish(self.raw(X))


def parallel_min_rows(n_trees: int) -> int:
    """Fewest rows of a batch that runs on the worker threads, for an ensemble of ``n_trees``
    trees (see :data:`PARALLEL_MIN_TREE_ROWS`; never a batch the bitvector path answers)."""
    return max(SMALL_BATCH_ROWS + 1, -(-PARALLEL_MIN_TREE_ROWS // max(n_trees, 1)))


def _c_aligned(X: np.ndarray) -> bool:
    """Whether ``X`` is C-contiguous and aligned: what the kernels' one signature takes as it is
    (writable or read-only, see ``signatures``); anything else is copied first."""
    flags = X.flags
    return flags.c_contiguous and flags.aligned


def _feature_rows(X: Any, dtype: type, n_features: int) -> bool:
    """Whether ``X`` is a 2-D ``dtype`` ndarray with ``n_features`` columns, in any memory order."""
    return type(X) is np.ndarray and X.dtype == dtype and X.ndim == 2 and X.shape[1] == n_features


def _dense(X: Any, dtype: type, n_features: int) -> np.ndarray:
    if _feature_rows(X, dtype, n_features) and _c_aligned(X):
        return X  # already what the kernels read
    import scipy.sparse as sp

    if sp.issparse(X):
        X = X.toarray()
    data = np.ascontiguousarray(np.asarray(X, dtype=dtype))
    if not data.flags.aligned:  # the locked kernels take aligned rows; a copy is aligned
        data = data.copy()
    if data.ndim != 2:
        raise ValueError(
            f"Expected 2D array, got {data.ndim}D array instead. Reshape your data either using "
            "array.reshape(-1, 1) if your data has a single feature or array.reshape(1, -1) if it "
            "contains a single sample."
        )
    if data.shape[1] != n_features:
        raise ValueError(f"X has {data.shape[1]} features, but the model expects {n_features} features.")
    return data


# ---------------------------------------------------------------------------------------------
# LightGBM


def _lightgbm_prepare(parsed: Any) -> Callable[[Any], np.ndarray]:
    import pandas as pd  # here, not per call: a single row's conversion is counted in microseconds

    n_features = parsed.ensemble.n_features
    categories = parsed.pandas_categorical

    def prepare(X: Any) -> np.ndarray:
        if type(X) is not np.ndarray and isinstance(X, pd.DataFrame):
            data = X.copy(deep=False)
            cat_cols = [c for c, t in zip(data.columns, data.dtypes) if isinstance(t, pd.CategoricalDtype)]
            if cat_cols:
                if categories is None or len(categories) != len(cat_cols):
                    raise ValueError("train and valid dataset categorical_feature do not match.")
                for col, cats in zip(cat_cols, categories):
                    if list(data[col].cat.categories) != list(cats):
                        data[col] = data[col].cat.set_categories(cats)
                data[cat_cols] = data[cat_cols].apply(lambda s: s.cat.codes).replace({-1: np.nan})
            X = data.to_numpy(dtype=np.float64, na_value=np.nan)
        return _dense(X, np.float64, n_features)

    return prepare


def _lower_lightgbm(model: Any, method: str, **options: Any) -> CompiledTreeOperator:
    from willow.compiler.lowering.trees_lightgbm import lightgbm_output, parse_lightgbm

    booster = model if type(model).__name__ == "Booster" else model.booster_
    # a model lowered before (in any process sharing the kernel cache) is not parsed again
    key = None
    if options.get("builder") is None:
        key = trees_warm.model_key(
            booster, booster.best_iteration, options.get("group_nodes", DEFAULT_GROUP_NODES)
        )
    warm = None if key is None else trees_warm.read_lightgbm(key, "trees")
    parsed: Any = warm if warm is not None else parse_lightgbm(booster, num_iteration=booster.best_iteration)
    kind = type(model).__name__
    transform, sigmoid = parsed.transform, parsed.sigmoid

    def squeeze(raw: np.ndarray) -> np.ndarray:
        return raw[:, 0] if raw.shape[1] == 1 else raw

    if method in ("raw", "decision_function"):
        finish = squeeze
    elif method == "predict" and kind in ("Booster", "LGBMRegressor", "LGBMRanker"):
        if transform == "identity":  # regression: one call less per single row
            finish = squeeze
        else:

            def finish(raw: np.ndarray) -> np.ndarray:
                return squeeze(lightgbm_output(raw, transform, sigmoid))

    elif kind == "LGBMClassifier" and method in ("predict", "predict_proba"):
        if transform not in ("sigmoid", "softmax", "ova_sigmoid"):
            raise NotLowerable(f"LGBMClassifier with a {transform!r} output is not supported.")
        classes = model.classes_

        def proba(raw: np.ndarray) -> np.ndarray:
            p = lightgbm_output(raw, transform, sigmoid)
            if p.shape[1] == 1:
                return np.vstack((1.0 - p[:, 0], p[:, 0])).transpose()
            return p

        if method == "predict_proba":
            finish = proba
        else:

            def finish(raw: np.ndarray) -> np.ndarray:
                return classes[np.argmax(proba(raw), axis=1)]

    else:
        raise NotLowerable(f"{kind}.{method} is not supported; use predict, predict_proba or raw.")
    ensemble = parsed.ensemble
    if method in ("raw", "decision_function"):
        # LightGBM averages rf-mode outputs in Predict, not in PredictRaw
        ensemble = dataclasses.replace(ensemble, divisor=1.0)
    base_prepare = _lightgbm_prepare(parsed)
    if kind == "Booster":
        inner = finish

        def finish(raw: np.ndarray) -> np.ndarray:
            # Booster.predict returns a flat empty array for 0 rows, whatever the class count
            return np.empty(0) if raw.shape[0] == 0 else inner(raw)

        prepare = base_prepare
    else:

        def prepare(X: Any) -> np.ndarray:
            data = base_prepare(X)
            if data.shape[0] == 0:
                raise ValueError(
                    f"Found array with 0 sample(s) (shape={data.shape}) while a minimum of 1 is "
                    f"required by {kind}."
                )
            return data

    remember = None
    if key is not None and warm is None:

        def remember(groups: list[range], sources: list[str], small: BitvectorTables | None) -> None:
            trees_warm.write_lightgbm(key, "trees", parsed, groups, sources, small)

    return _compile(
        f"{kind}.{method}",
        ensemble,
        prepare,
        finish,
        arrays_as_is=True,
        warm=warm,
        remember=remember,
        **options,
    )


# ---------------------------------------------------------------------------------------------
# scikit-learn


def _lower_sklearn(model: Any, method: str, **options: Any) -> CompiledTreeOperator:
    from sklearn.utils.validation import check_is_fitted

    from willow.compiler.lowering import trees_sklearn

    check_is_fitted(model)
    kind = type(model).__name__
    is_classifier = hasattr(model, "classes_")
    if kind.startswith(("RandomForest", "ExtraTrees")):
        ensemble = trees_sklearn.parse_forest(model)
        family = "forest"
    elif kind.startswith("GradientBoosting"):
        ensemble = trees_sklearn.parse_gradient_boosting(model)
        family = "gb"
    elif kind.startswith("HistGradientBoosting"):
        ensemble = trees_sklearn.parse_hist_gradient_boosting(model)
        family = "hgb"
    else:
        raise NotLowerable(f"{kind} is not a supported tree ensemble.")

    n_features = ensemble.n_features
    if family == "hgb":

        def prepare(X: Any) -> np.ndarray:
            return _dense(model._preprocess_X(X, reset=False), np.float64, n_features)

    elif family == "forest":

        def prepare(X: Any) -> np.ndarray:
            # the forest's own check: float32, NaN allowed only where its trees support it
            return _dense(model._validate_X_predict(X), np.float32, n_features)

    else:
        from sklearn.utils.validation import validate_data

        def prepare(X: Any) -> np.ndarray:
            # GradientBoosting rejects NaN like its decision_function does
            X = validate_data(model, X, dtype=np.float32, reset=False, accept_sparse="csr")
            return _dense(X, np.float32, n_features)

    if family == "forest":
        if method == "predict_proba" and is_classifier:
            finish = lambda raw: raw  # noqa: E731 - averaged class frequencies
        elif method == "predict" and is_classifier:
            classes = model.classes_
            finish = lambda raw: classes.take(np.argmax(raw, axis=1), axis=0)  # noqa: E731
        elif method == "predict" and not is_classifier:
            finish = lambda raw: raw[:, 0]  # noqa: E731
        else:
            raise NotLowerable(f"{kind}.{method} is not supported; use predict or predict_proba.")
    else:
        loss = model._loss

        def decision(raw: np.ndarray) -> np.ndarray:
            return raw.ravel() if raw.shape[1] == 1 else raw

        if method == "decision_function" and is_classifier:
            finish = decision
        elif method == "predict_proba" and is_classifier:
            finish = loss.predict_proba
        elif method == "predict" and is_classifier:
            classes = model.classes_
            strict = family == "hgb"  # HGB: raw > 0; GradientBoosting: raw >= 0

            def finish(raw: np.ndarray) -> np.ndarray:
                if raw.shape[1] == 1:
                    flat = raw.ravel()
                    encoded = (flat > 0 if strict else flat >= 0).astype(int)
                else:
                    encoded = np.argmax(raw, axis=1)
                return classes[encoded]

        elif method == "predict" and not is_classifier:
            if family == "hgb":
                finish = lambda raw: loss.link.inverse(raw.ravel())  # noqa: E731
            else:
                finish = lambda raw: raw.ravel()  # noqa: E731
        else:
            raise NotLowerable(f"{kind}.{method} is not supported.")
    return _compile(f"{kind}.{method}", ensemble, prepare, finish, **options)


# ---------------------------------------------------------------------------------------------


def _compile(
    name: str,
    ensemble: TreeEnsemble | DeferredEnsemble,
    prepare: Callable[[Any], np.ndarray],
    finish: Callable[[np.ndarray], np.ndarray],
    *,
    group_nodes: int = DEFAULT_GROUP_NODES,
    n_jobs: int | None = None,
    n_threads: int | None = None,
    arrays_as_is: bool = False,
    builder: Callable[..., Any] | None = None,
    warm: WarmLightGBM | None = None,
    remember: Callable[[list[range], list[str], BitvectorTables | None], None] | None = None,
) -> CompiledTreeOperator:
    """Compile ``ensemble``'s kernels into an operator. ``warm``: its groups, sources and bitvector
    tables as read back from the cache (``trees_warm``; ``ensemble`` is then its deferred
    ensemble); ``remember`` is called with them once the kernels are built and loaded."""
    if warm is not None:
        groups, sources, small = warm.groups, warm.sources, warm.small
    else:
        if not ensemble.trees:
            raise NotLowerable(f"{name}: the model has no trees.")
        if builder is not None:  # another target (willow.gpu) compiles the same ensemble and conversions
            return builder(name, ensemble, prepare, finish)
        groups = group_trees(ensemble, group_nodes)
        sources = group_sources(ensemble, groups, "trees")  # rendered once per machine, then read back
        small = bitvector_tables(ensemble)
    dtype = np.dtype(np.float32 if ensemble.float32_input else np.float64)
    # small batches take the bitvector kernel when there is one, so large ones can afford a
    # Python call per group instead of a compiled driver
    kernels, driver_source = build_kernels(
        sources, "trees", dtype, ensemble.n_features, ensemble.n_outputs, n_jobs=n_jobs, driver=small is None
    )
    modules = [*sources, driver_source] if driver_source else sources
    operator = CompiledTreeOperator(
        name, ensemble, modules, kernels, prepare, finish, n_threads, small, arrays_as_is=arrays_as_is
    )
    if small is not None:  # load (or compile, once per machine) the fixed kernel now, not on first use
        compile_score_rows(dtype)
    if remember is not None:
        remember(groups, sources, small)
    return operator


def lower_tree_model(model: Any, method: str = "predict", **options: Any) -> CompiledTreeOperator:
    """Compile ``getattr(model, method)`` for a fitted tree ensemble.

    ``method``: ``"predict"``, ``"predict_proba"``, ``"decision_function"`` (scikit-learn
    boosting) or ``"raw"`` (LightGBM raw scores, like ``predict(raw_score=True)``).
    Options: ``group_nodes`` (internal nodes per generated function), ``n_jobs`` (worker
    processes compiling cold kernels), ``n_threads`` (threads for large batches; default
    ``numba.get_num_threads()``, as the other chunked kernels), ``builder`` (called as
    ``builder(name, ensemble, prepare, finish)`` instead of compiling CPU kernels: how
    :mod:`willow.gpu.trees` reuses the parsing and the input/output conversions).
    Raises :class:`NotLowerable` naming the reason when the model or method is not supported.
    """
    lowering = TREE_LOWERINGS.get(type(model))
    if lowering is None:
        raise NotLowerable(
            f"{type(model).__name__} is not a supported tree model; supported: {supported_tree_models()}."
        )
    return lowering(model, method, **options)


def _registry() -> dict[type, Callable[..., CompiledTreeOperator]]:
    import lightgbm
    from sklearn import ensemble

    table: dict[type, Callable[..., CompiledTreeOperator]] = {
        lightgbm.Booster: _lower_lightgbm,
        lightgbm.LGBMClassifier: _lower_lightgbm,
        lightgbm.LGBMRegressor: _lower_lightgbm,
    }
    for name in (
        "RandomForestClassifier",
        "RandomForestRegressor",
        "ExtraTreesClassifier",
        "ExtraTreesRegressor",
        "GradientBoostingClassifier",
        "GradientBoostingRegressor",
        "HistGradientBoostingClassifier",
        "HistGradientBoostingRegressor",
    ):
        table[getattr(ensemble, name)] = _lower_sklearn
    return table


TREE_LOWERINGS: dict[type, Callable[..., CompiledTreeOperator]] = _registry()


def supported_tree_models() -> list[str]:
    """Names of the model classes :func:`lower_tree_model` accepts."""
    return sorted(t.__name__ for t in TREE_LOWERINGS)


def split_nodes(model: Any) -> int:
    """Split (internal) nodes of a supported tree model: what its compile time grows with.

    Numba needs about half a core-second per 60 split nodes (see ``DEFAULT_GROUP_NODES``), so
    callers use this to keep compilation within a budget.
    """
    import lightgbm

    if isinstance(model, (lightgbm.Booster, lightgbm.LGBMModel)):
        booster = model if isinstance(model, lightgbm.Booster) else model.booster_
        return int(sum(tree["num_leaves"] - 1 for tree in booster.dump_model()["tree_info"]))
    if hasattr(model, "_predictors"):  # HistGradientBoosting*
        return int(
            sum((~p.nodes["is_leaf"].astype(bool)).sum() for trees in model._predictors for p in trees)
        )
    estimators = np.asarray(getattr(model, "estimators_", []), dtype=object).ravel()
    return int(sum(e.tree_.node_count - e.tree_.n_leaves for e in estimators))
