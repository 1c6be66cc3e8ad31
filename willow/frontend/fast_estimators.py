"""Fitted models handed to opaque helpers: the same predictions without scikit-learn's checks.

Willump-style code passes a collection of fitted models to a helper willow does not inline (it
loops, indexes by partition, writes into a preallocated array)::

    def model_prediction(X, model):
        for i in range(NUM_PARTITIONS):
            rows = np.nonzero(X[:, -1] == i)[0]
            preds[rows] = model[i].predict_proba(X[rows, :-1])[:, 1]

    pred_lr = model_prediction(X, clf_lr)          # clf_lr: a list of LogisticRegression

The helper stays Python, but most of its time is scikit-learn's input validation on each small
partition (``validate_data``: narwhals' frame checks, dtype and finiteness checks, feature-name
checks), not the arithmetic. This pass hands such a helper, in place of a guarded argument that
is a fitted model or a list/tuple/dict of them, the same container of :class:`FastEstimator`
views: each reads the calibrated model itself (live, never a copy) and answers ``predict_proba``
on a plain input by the model's own arithmetic, skipping the checks that input passes anyway:

- a plain input is a 2-D C- or F-ordered float64 ``numpy.ndarray`` of at least one row, with the
  model's ``n_features_in_`` columns, all finite, for a model fitted without feature names;
- anything else (lists, frames, float32, NaN, 0 rows, a wrong width) calls the model's own
  ``predict_proba``, so errors and warnings are the original's.

Supported: ``LogisticRegression`` (binary and multinomial), ``GaussianNB``, ``MLPClassifier`` and
``DecisionTreeClassifier`` (single output). Each view is checked when it is made: on probe rows
its output must equal the model's own bit for bit, else the model is passed as it is. A view
looks like its model (``isinstance``, attributes, other methods); the argument guards
(:mod:`willow.frontend.guards`) still check the call's object at every call, and a model refitted
in place is read as it is now. A container mutated in place after calibration (an item replaced)
is not seen by the view, as with any calibrated object under an identity guard.
"""

from __future__ import annotations

import ast
import types
from collections.abc import Callable
from typing import Any

import numpy as np

from willow.frontend.context import FrontEndContext

__all__ = ["FastEstimator", "fast_view", "fast_opaque_estimators"]

_PROBE_ROWS = 16


def _plain(estimator: Any, X: Any) -> bool:
    """Whether ``X`` is an input every check of ``predict_proba`` passes unchanged (see module doc)."""
    return (
        type(X) is np.ndarray
        and X.ndim == 2
        and X.dtype == np.float64
        and X.shape[0] > 0
        and X.shape[1] == getattr(estimator, "n_features_in_", -1)
        and (X.flags.c_contiguous or X.flags.f_contiguous)
        and bool(np.isfinite(X.sum()))  # a finite sum means every value is finite; else the model checks
    )


def _namespace(X: np.ndarray) -> Any:
    from sklearn.utils._array_api import get_namespace

    return get_namespace(X)[0]


def _logistic_proba(estimator: Any, X: np.ndarray) -> np.ndarray:
    """``LogisticRegression.predict_proba``: ``decision_function`` then expit (binary) or softmax."""
    from sklearn.utils._array_api import _expit
    from sklearn.utils.extmath import softmax

    coef_t = estimator.coef_.T if estimator.coef_.ndim == 2 else estimator.coef_
    scores = X @ coef_t + estimator.intercept_
    if scores.ndim > 1 and scores.shape[1] == 1:
        scores = scores.reshape(-1)
    if len(estimator.classes_) > 2:
        return softmax(scores, copy=False)
    xp = _namespace(X)
    prob = _expit(scores, out=scores, xp=xp)
    if prob.ndim == 1:
        return xp.stack([1 - prob, prob], axis=1)
    return _ovr_normalize(prob)


def _ovr_normalize(prob: np.ndarray) -> np.ndarray:
    prob_sum = prob.sum(axis=1)
    all_zero = prob_sum == 0
    if np.any(all_zero):
        prob[all_zero, :] = 1
        prob_sum[all_zero] = prob.shape[1]
    prob /= prob_sum.reshape((prob.shape[0], -1))
    return prob


def _naive_bayes_proba(estimator: Any, X: np.ndarray) -> np.ndarray:
    """``GaussianNB.predict_proba``: ``exp`` of the joint log likelihood less its logsumexp."""
    from sklearn.utils._array_api import _logsumexp

    xp = _namespace(X)
    jll = estimator._joint_log_likelihood(X)
    log_prob_x = _logsumexp(jll, axis=1, xp=xp)
    return xp.exp(jll - xp.reshape(log_prob_x, (1, -1)).T)


def _mlp_proba(estimator: Any, X: np.ndarray) -> np.ndarray:
    """``MLPClassifier.predict_proba``: the forward pass without its input check."""
    y_pred = estimator._forward_pass_fast(X, check_input=False)
    if estimator.n_outputs_ == 1:
        y_pred = y_pred.ravel()
    if y_pred.ndim == 1:
        return np.vstack([1 - y_pred, y_pred]).T
    return y_pred


def _tree_proba(estimator: Any, X: np.ndarray) -> np.ndarray:
    """``DecisionTreeClassifier.predict_proba`` on the float32 rows its check would make."""
    return type(estimator).predict_proba(estimator, np.asarray(X, dtype=np.float32), check_input=False)


def _fast_method(estimator: Any) -> Callable[[Any, np.ndarray], np.ndarray] | None:
    """The checked-input ``predict_proba`` for ``estimator``'s exact class, or ``None``."""
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.naive_bayes import GaussianNB
        from sklearn.neural_network import MLPClassifier
        from sklearn.tree import DecisionTreeClassifier
    except ImportError:  # pragma: no cover - scikit-learn is a core dependency
        return None
    kind = type(estimator)  # exact classes: a subclass may override predict_proba
    if kind is LogisticRegression:
        return _logistic_proba
    if kind is GaussianNB:
        return _naive_bayes_proba
    if kind is MLPClassifier:
        return _mlp_proba if getattr(estimator, "n_outputs_", None) == 1 else None
    if kind is DecisionTreeClassifier:
        return _tree_proba if getattr(estimator, "n_outputs_", None) == 1 else None
    return None


class FastEstimator:
    """A view of a fitted model whose ``predict_proba`` skips the checks a plain input passes.

    Every other attribute and method is the model's own (read through), and ``isinstance`` sees
    the model's class, so helper code that inspects the model behaves as with the model itself.
    """

    __slots__ = ("_willow_estimator", "_willow_proba")

    def __init__(self, estimator: Any, proba: Callable[[Any, np.ndarray], np.ndarray]) -> None:
        object.__setattr__(self, "_willow_estimator", estimator)
        object.__setattr__(self, "_willow_proba", proba)

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # noqa: D105 - isinstance(view, LogisticRegression) holds
        return type(self._willow_estimator)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._willow_estimator, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._willow_estimator, name, value)

    def __repr__(self) -> str:
        return repr(self._willow_estimator)

    def __reduce_ex__(self, protocol: Any) -> tuple:
        return (fast_view, (self._willow_estimator,))

    def predict_proba(self, X: Any) -> Any:
        estimator = self._willow_estimator
        if _plain(estimator, X):
            return self._willow_proba(estimator, X)
        return estimator.predict_proba(X)


def _agrees(estimator: Any, proba: Callable[[Any, np.ndarray], np.ndarray]) -> bool:
    """Whether the fast ``predict_proba`` equals the model's own, bit for bit, on probe rows."""
    width = getattr(estimator, "n_features_in_", None)
    if not isinstance(width, int) or width < 1 or hasattr(estimator, "feature_names_in_"):
        return False
    rng = np.random.default_rng(0)
    for X in (rng.standard_normal((_PROBE_ROWS, width)) * 3.0, np.zeros((1, width))):
        try:
            expected = estimator.predict_proba(X)
            found = proba(estimator, X.copy())
        except Exception:  # noqa: BLE001 - a model the fast path cannot answer stays as it is
            return False
        if not (
            isinstance(found, np.ndarray)
            and found.dtype == expected.dtype
            and found.shape == expected.shape
            and np.array_equal(found, expected, equal_nan=True)
        ):
            return False
    return True


def fast_view(estimator: Any) -> Any:
    """``estimator`` as a :class:`FastEstimator` when its class is supported and its fast
    ``predict_proba`` reproduces its own on probe rows; otherwise ``estimator`` itself."""
    proba = _fast_method(estimator)
    if proba is None or not _agrees(estimator, proba):
        return estimator
    return FastEstimator(estimator, proba)


def _fast_container(obj: Any) -> Any:
    """``obj`` (a model, or a list/tuple/dict of models) with its supported models as views, or
    ``None`` when nothing in it has a view."""
    if type(obj) in (list, tuple):
        views = [fast_view(item) for item in obj]
        if not any(_is_view(v) for v in views):
            return None
        return type(obj)(views)
    if type(obj) is dict:
        views_by_key = {k: fast_view(v) for k, v in obj.items()}
        if not any(_is_view(v) for v in views_by_key.values()):
            return None
        return views_by_key
    view = fast_view(obj)
    return view if _is_view(view) else None


def _is_view(obj: Any) -> bool:
    return type(obj) is FastEstimator


def _user_helper(fn: Any, ctx: FrontEndContext) -> bool:
    """Whether ``fn`` is a plain Python function of the decorated function's own package (a
    user helper: library functions get the models themselves)."""
    if not isinstance(fn, types.FunctionType):
        return False
    home = str(ctx.constants.get("__name__", "")).split(".")[0]
    return bool(home) and str(getattr(fn, "__module__", "")).split(".")[0] == home


def fast_opaque_estimators(tree: ast.FunctionDef, ctx: FrontEndContext) -> ast.FunctionDef:
    """Pass guarded model arguments to the user helpers that receive them as fast views.

    Runs after :func:`willow.frontend.arguments.bind_argument_reads`: a call ``helper(..., name,
    ...)`` where ``helper`` is a user helper and ``name`` a guarded binding of a fitted model (or a
    list/tuple/dict of models) gets a new binding holding the views instead; the guard on the
    argument is unchanged (it still checks the calibrated object at every call).
    """
    guarded = {g.name for g in ctx.guards}
    made: dict[str, ast.Name] = {}
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call) or not _user_helper(ctx.resolve(call.func), ctx):
            continue
        slots = [(call.args, position, arg) for position, arg in enumerate(call.args)]
        slots += [(keyword, None, keyword.value) for keyword in call.keywords]
        for holder, position, arg in slots:
            if not (isinstance(arg, ast.Name) and arg.id in guarded and arg.id in ctx.bindings):
                continue
            if arg.id not in made:
                views = _fast_container(ctx.bindings[arg.id])
                if views is None:
                    continue
                made[arg.id] = ctx.bind(views, f"{arg.id}_fast")
                ctx.note(
                    f"line {call.lineno}: `{ast.unparse(call.func)}` receives `{arg.id}`'s models as views "
                    "whose predict_proba skips scikit-learn's input checks on plain float64 rows (same "
                    "outputs, checked on probe rows)"
                )
            view = ast.copy_location(ast.Name(id=made[arg.id].id, ctx=ast.Load()), arg)
            if position is None:
                holder.value = view  # type: ignore[union-attr]
            else:
                holder[position] = view  # type: ignore[index]
    return tree
