"""Lowering scikit-learn linear models' ``predict`` / ``predict_proba`` / ``decision_function``.

A linear model is ``scores = X @ coef_.T + intercept_`` followed by a *head* that turns scores into
the method's result: labels (``score > 0`` with one output, else argmax), sigmoid probabilities
(binary logistic), softmax (multinomial logistic) or normalised one-vs-rest sigmoids
(``SGDClassifier(loss="log_loss")``). :func:`linear_spec` reads a fitted model into a
:class:`LinearSpec` (shared with :mod:`willow.compiler.lowering.fused`); :func:`lower_linear_model`
compiles one method for dense ``ndarray`` and ``scipy.sparse`` CSR rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import (
    ElasticNet,
    Lasso,
    LinearRegression,
    LogisticRegression,
    Ridge,
    RidgeClassifier,
    SGDClassifier,
)
from sklearn.svm import LinearSVC

from willow.compiler.lowering import linear_templates
from willow.compiler.lowering.astgen import compile_module, kernel_module, specialize
from willow.compiler.lowering.base import CompiledOperator, NotLowerable
from willow.compiler.lowering.signatures import compile_locked, readonly_array

__all__ = [
    "LinearSpec",
    "linear_spec",
    "finish_output",
    "cpu_kernels",
    "score_kernels",
    "validated_rows",
    "lower_linear_model",
    "LINEAR_LOWERINGS",
]

CLASSIFIERS = (LogisticRegression, LinearSVC, SGDClassifier, RidgeClassifier)
REGRESSORS = (LinearRegression, Ridge, Lasso, ElasticNet)


@dataclass(frozen=True, eq=False)
class LinearSpec:
    """A fitted linear model's method as scores plus a head.

    ``head`` names a template in :mod:`linear_templates`; ``output`` says how the head's result
    becomes the method's: ``"labels"`` (index into ``classes``), ``"ravel1"`` (one column
    becomes 1-D, as sklearn's ``decision_function``), ``"ravel"`` (regression with 1-D ``coef_``)
    or ``"as_is"``.
    """

    model_name: str
    method: str
    coef_t: np.ndarray = field(repr=False)
    intercept: np.ndarray = field(repr=False)
    classes: np.ndarray | None = field(repr=False)
    head: str
    output: str

    @property
    def n_features(self) -> int:
        return self.coef_t.shape[0]


def _refuse(model: Any, method: str, reason: str) -> NotLowerable:
    return NotLowerable(f"{type(model).__name__}.{method} cannot be compiled: {reason}.")


def linear_spec(model: Any, method: str) -> LinearSpec:
    """Read ``model.method`` into a :class:`LinearSpec`, or raise :class:`NotLowerable`."""
    model_name = type(model).__name__
    if type(model) not in CLASSIFIERS + REGRESSORS:
        raise NotLowerable(f"{model_name} is not a supported linear model.")
    if not hasattr(model, "coef_"):
        raise NotLowerable(f"This {model_name} instance is not fitted yet: call 'fit' before compiling it.")
    coef = np.asarray(model.coef_, dtype=np.float64)
    if sp.issparse(model.coef_):
        raise _refuse(model, method, "sparsified coef_ (call densify())")
    n_outputs = 1 if coef.ndim == 1 else coef.shape[0]
    coef_t = np.ascontiguousarray(coef.reshape(n_outputs, -1).T)
    intercept = np.broadcast_to(np.asarray(model.intercept_, dtype=np.float64), (n_outputs,)).copy()

    if type(model) in REGRESSORS:
        if method != "predict":
            raise _refuse(model, method, "a regressor only has predict")
        output = "ravel" if coef.ndim == 1 else "as_is"
        return LinearSpec(model_name, method, coef_t, intercept, None, "identity", output)

    classes = np.asarray(model.classes_)
    if isinstance(model, RidgeClassifier) and model._label_binarizer.y_type_.startswith("multilabel"):
        raise _refuse(model, method, "multilabel RidgeClassifier")
    if method == "decision_function":
        return LinearSpec(model_name, method, coef_t, intercept, classes, "identity", "ravel1")
    if method == "predict":
        return LinearSpec(model_name, method, coef_t, intercept, classes, "label_indices", "labels")
    if method != "predict_proba":
        raise _refuse(model, method, "only predict, predict_proba and decision_function are compiled")
    if isinstance(model, LogisticRegression):
        head = "binary_proba" if classes.size <= 2 else "softmax_proba"
    elif isinstance(model, SGDClassifier) and model.loss == "log_loss":
        head = "binary_proba" if classes.size <= 2 else "ovr_proba"
    elif isinstance(model, SGDClassifier):
        raise _refuse(
            model, method, f"probabilities for loss={model.loss!r} are not compiled (only 'log_loss')"
        )
    else:
        raise _refuse(model, method, f"{model_name} has no predict_proba")
    return LinearSpec(model_name, method, coef_t, intercept, classes, head, "as_is")


def finish_output(spec: LinearSpec, result: np.ndarray) -> np.ndarray:
    """Turn the head's array into exactly what sklearn's method returns (labels, 1-D shapes)."""
    if spec.output == "labels":
        return spec.classes.take(result)
    if spec.output == "ravel" or (spec.output == "ravel1" and result.shape[1] == 1):
        return result.reshape(-1)
    return result


def _dense_rows(X: Any) -> np.ndarray:
    if hasattr(X, "to_numpy"):
        X = X.to_numpy()
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(
            f"Expected 2D array, got {X.ndim}D array instead. Reshape your data either using "
            "array.reshape(-1, 1) if your data has a single feature or array.reshape(1, -1) if it "
            "contains a single sample."
        )
    return np.ascontiguousarray(X, dtype=np.float64)


PARALLEL_MIN_WORK = 1_000_000
"""Multiply-adds (stored values x outputs) from which a batch is scored with ``prange`` threads."""


SCORE_KERNELS = ("dense_scores", "csr_scores", "dense_scores_serial", "csr_scores_serial")


def score_kernels() -> tuple[ModuleType, str]:
    """The compiled module of the score kernels (dense and CSR rows, parallel and serial) and its
    source: one for every linear model, whatever its head (coefficients are arguments)."""
    functions = [
        (specialize(linear_templates.dense_scores, "dense_scores", {}), True),
        (specialize(linear_templates.csr_scores, "csr_scores", {}), True),
        (specialize(linear_templates.dense_scores, "dense_scores_serial", {}), False),
        (specialize(linear_templates.csr_scores, "csr_scores_serial", {}), False),
    ]
    module_ast = kernel_module(
        "Generated by willow: linear model scores (dense and CSR rows).", [], functions
    )
    return compile_module(module_ast, "linear_scores")


def cpu_kernels(spec: LinearSpec) -> tuple[SimpleNamespace, str]:
    """The score kernels (:func:`score_kernels`) and ``spec``'s head, as attributes of one
    namespace, and their source. The head is a module of its own, shared by every linear model
    with that head: models with different heads (``predict`` and ``predict_proba`` of one model)
    share the score kernels instead of compiling them once per head."""
    scores, scores_source = score_kernels()
    module_ast = kernel_module(
        f"Generated by willow: the {spec.head} head of linear models.",
        [],
        [(specialize(getattr(linear_templates, spec.head), spec.head, {}), False)],
    )
    head, head_source = compile_module(module_ast, f"linear_{spec.head}")
    kernels = {name: getattr(scores, name) for name in SCORE_KERNELS}
    kernels[spec.head] = getattr(head, spec.head)
    return SimpleNamespace(**kernels), f"{scores_source}\n{head_source}"


DENSE_TYPES = (readonly_array(np.float64, 2), readonly_array(np.float64, 2), readonly_array(np.float64, 1))
"""The one signature of the dense score kernels: ``X`` (C-ordered float64, see
:func:`validated_rows`: writable or read-only, as pandas 3's ``to_numpy()`` gives it), ``coef_t``,
``intercept``."""


def csr_types(indices: np.dtype, indptr: np.dtype) -> tuple[Any, ...]:
    """The signature of the CSR score kernels for one pair of index dtypes (scipy's int32 or int64)."""
    return (
        readonly_array(np.float64, 1),
        readonly_array(indices, 1),
        readonly_array(indptr, 1),
        readonly_array(np.float64, 2),
        readonly_array(np.float64, 1),
    )


def locked_dense(kernel: Any) -> Any:
    """``kernel`` (a dense score kernel) compiled for :data:`DENSE_TYPES` on its first use, then
    locked: writable and read-only rows run one specialization."""
    if not kernel.overloads:
        compile_locked(kernel, DENSE_TYPES)
    return kernel


_CSR_INDEX_DTYPES: dict[Any, set[tuple[np.dtype, np.dtype]]] = {}


def locked_csr(kernel: Any, indices: np.ndarray, indptr: np.ndarray) -> Any:
    """``kernel`` (a CSR score kernel) with a signature for these index dtypes, compiled on the
    first batch that brings them (writable and read-only arrays run it)."""
    dtypes = (indices.dtype, indptr.dtype)
    compiled = _CSR_INDEX_DTYPES.setdefault(kernel, set())
    if dtypes not in compiled:
        compile_locked(kernel, csr_types(*dtypes))
        compiled.add(dtypes)
    return kernel


def validated_rows(spec: LinearSpec, X: Any) -> Any:
    """``X`` as the kernels read it (CSR, or C-ordered float64 rows), refused as scikit-learn
    refuses it: wrong width, no rows, NaN or infinity."""
    if sp.issparse(X):
        X = X.tocsr()
    else:
        X = _dense_rows(X)
    width = X.shape[1]
    if width != spec.n_features:
        raise ValueError(
            f"X has {width} features, but {spec.model_name} is expecting {spec.n_features} features as input."
        )
    if X.shape[0] == 0:
        raise ValueError(
            f"Found array with 0 sample(s) (shape={X.shape}) while a minimum of 1 is required by "
            f"{spec.model_name}."
        )
    values = X.data if sp.issparse(X) else X
    if not np.isfinite(values).all():
        # sklearn validates its input; a kernel must fail the same way, never score NaN.
        if np.isnan(values).any():
            raise ValueError(
                f"Input X contains NaN.\n{spec.model_name} does not accept missing values encoded as NaN natively."
            )
        raise ValueError("Input X contains infinity or a value too large for dtype('float64').")
    return X


def lower_linear_model(model: Any, method: str) -> CompiledOperator:
    """Compile ``model.method`` for dense arrays and sparse CSR rows."""
    spec = linear_spec(model, method)
    module, source = cpu_kernels(spec)
    dense_scores, csr_scores = module.dense_scores, module.csr_scores
    dense_serial, csr_serial = module.dense_scores_serial, module.csr_scores_serial
    head: Callable[[np.ndarray], np.ndarray] = getattr(module, spec.head)
    coef_t, intercept = spec.coef_t, spec.intercept

    def run(X: Any) -> np.ndarray:
        X = validated_rows(spec, X)
        values = X.data if sp.issparse(X) else X
        # below PARALLEL_MIN_WORK multiply-adds, starting threads costs more than it saves (and
        # on a busy machine a parallel region waits for its slowest, descheduled thread)
        parallel = values.size * coef_t.shape[1] >= PARALLEL_MIN_WORK
        if sp.issparse(X):
            # scipy's arrays are contiguous (no copy); ascontiguousarray only guards the signature
            indices, indptr = np.ascontiguousarray(X.indices), np.ascontiguousarray(X.indptr)
            run_csr = locked_csr(csr_scores if parallel else csr_serial, indices, indptr)
            data = np.ascontiguousarray(X.data, dtype=np.float64)
            scores = run_csr(data, indices, indptr, coef_t, intercept)
        else:
            scores = locked_dense(dense_scores if parallel else dense_serial)(X, coef_t, intercept)
        return finish_output(spec, head(scores))

    return CompiledOperator(name=f"{spec.model_name}.{method}", source=source, function=run)


LINEAR_LOWERINGS = {model_type: lower_linear_model for model_type in CLASSIFIERS + REGRESSORS}
