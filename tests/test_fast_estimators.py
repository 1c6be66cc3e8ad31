"""Fitted models handed to opaque helpers as fast views (willow.frontend.fast_estimators).

A view's ``predict_proba`` must equal the model's own bit for bit on plain float64 rows (1 row,
many rows, F order, a row of zeros) and be the model's own call on everything else (0 rows, NaN,
float32, lists, the wrong width: same result, same error). A pipeline whose helper loops over a
list of models passed as an argument serves the original's outputs exactly.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.neural_network import MLPClassifier
from sklearn.tree import DecisionTreeClassifier

import willow
from willow.frontend.fast_estimators import FastEstimator, fast_view

_rng = np.random.default_rng(3)
X_TRAIN = _rng.standard_normal((120, 4))
Y2 = (X_TRAIN[:, 0] + X_TRAIN[:, 1] > 0).astype(int)
Y3 = np.digitize(X_TRAIN[:, 2], [-0.5, 0.5])


def _models():
    return {
        "lr": LogisticRegression().fit(X_TRAIN, Y2),
        "lr3": LogisticRegression().fit(X_TRAIN, Y3),
        "nb": GaussianNB().fit(X_TRAIN, Y3),
        "mlp": MLPClassifier(hidden_layer_sizes=(3,), solver="lbfgs", max_iter=50, random_state=0).fit(
            X_TRAIN, Y2
        ),
        "tree": DecisionTreeClassifier(max_depth=3, random_state=0).fit(X_TRAIN, Y3),
    }


MODELS = _models()


def _outcome(fn, X):
    try:
        return ("ok", fn(X))
    except Exception as exc:  # noqa: BLE001 - the error itself is compared
        return ("error", type(exc), str(exc))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_view_equals_the_model_on_every_input(name):
    model = MODELS[name]
    view = fast_view(model)
    assert type(view) is FastEstimator
    assert isinstance(view, type(model)) and view.classes_ is model.classes_
    rows = _rng.standard_normal((37, 4))
    with_nan = rows.copy()
    with_nan[3, 1] = np.nan
    inputs = [
        rows,
        rows[:1],
        np.asfortranarray(rows),
        rows[::2],  # not contiguous: the model's own call
        np.zeros((0, 4)),  # 0 rows: the model raises, so does the view
        with_nan,
        rows.astype(np.float32),
        rows.tolist(),
        rows[:, :3],  # wrong width
    ]
    for X in inputs:
        expected, found = _outcome(model.predict_proba, X), _outcome(view.predict_proba, X)
        assert expected[0] == found[0]
        if expected[0] == "ok":
            assert found[1].dtype == expected[1].dtype and np.array_equal(found[1], expected[1])
        else:
            assert expected[1:] == found[1:]


def test_unsupported_or_named_models_are_passed_as_they_are():
    import pandas as pd

    subclass = type("MyLR", (LogisticRegression,), {})().fit(X_TRAIN, Y2)
    named = LogisticRegression().fit(pd.DataFrame(X_TRAIN, columns=list("abcd")), Y2)
    assert fast_view(subclass) is subclass
    assert fast_view(named) is named
    view = pickle.loads(pickle.dumps(fast_view(MODELS["lr"])))
    assert type(view) is FastEstimator and np.array_equal(
        view.predict_proba(X_TRAIN[:5]), MODELS["lr"].predict_proba(X_TRAIN[:5])
    )


# --------------------------------------------------------------- a Willump-style helper


def per_partition(X, models):
    preds = np.zeros(len(X))
    for i in range(2):
        rows = np.nonzero(X[:, -1] == i)[0]
        if len(rows) > 0:
            preds[rows] = models[i].predict_proba(X[rows, :-1])[:, 1]
    return preds.reshape(-1, 1)


STACKER = LogisticRegression().fit(_rng.random((60, 2)), (_rng.random(60) > 0.5).astype(int))


def stacked(X, models, other):
    first = per_partition(X, models)
    second = per_partition(X, models=other)  # by keyword too
    return STACKER.predict_proba(np.hstack([first, second]))


def _rows(n, seed):
    rng = np.random.default_rng(seed)
    return np.hstack([rng.standard_normal((n, 4)), rng.integers(0, 2, (n, 1)).astype(float)])


def test_helper_receives_views_and_serves_the_original_outputs():
    models = [MODELS["lr"], MODELS["tree"]]
    other = (MODELS["nb"], MODELS["mlp"])
    pipeline = willow.optimize(require_faster=False, accuracy_target=0.9)(stacked)
    pipeline.calibrate(_rows(400, 1), models, other)
    explained = pipeline.explain()
    assert "receives `models" in explained and "receives `other" in explained, explained
    for X in (_rows(50, 2), _rows(1, 3)):
        # the helpers' outputs are exact (above); the stacker is willow's compiled linear model,
        # equal to scikit-learn's to rounding (summation order)
        np.testing.assert_allclose(pipeline(X, models, other), stacked(X, models, other), rtol=1e-9, atol=0)
    for fn in (stacked, pipeline):  # 0 rows: the stacker refuses them, in both
        with pytest.raises(ValueError, match="0 sample"):
            fn(_rows(0, 4), models, other)
    nan_rows = _rows(20, 5)
    nan_rows[4, 0] = np.nan  # the models refuse NaN: the view calls them, so the error is theirs
    with pytest.raises(ValueError, match="NaN"):
        stacked(nan_rows, models, other)
    with pytest.raises(ValueError, match="NaN"):
        pipeline(nan_rows, models, other)
