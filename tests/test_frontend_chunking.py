"""Batched calls of a row-wise estimator become one call (willow.frontend.chunking).

Each recognised form is checked on the normalized function (the front end alone) against the
original on the same rows (numpy and pandas; 1 row, fewer rows than the batch and several batches
with a batch of 7, so both branches of the original run), and end to end through
``willow.optimize`` (0 rows included). Forms the rule cannot prove row-wise (a user model, a
user function in a Pipeline, chunks scaled by their own mean, a batch size that is not a positive
int) are left as written; a helper left so is refused naming the reason. A batch size or a model
that changes after calibration runs the original with a ModelChangedWarning.
"""

from __future__ import annotations

import ast
import re
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

import willow
from willow.frontend.chunking import row_wise_reason
from willow.frontend.driver import normalize

EXACT = dict(cascade=False, accuracy_target=0.9, confidence=0.9, cost_repeats=1, importance_repeats=1)
BATCH = 7
SIZES = (1, 5, 7, 20)  # one row, under one batch, exactly one, three batches (the last short)

_rng = np.random.default_rng(0)
TRAIN = pd.DataFrame(_rng.normal(size=(80, 3)), columns=["a", "b", "c"])
LABELS = np.array(["no", "yes", "maybe"])[
    (TRAIN["a"] > 0).to_numpy().astype(int) + (TRAIN["b"] > 0.5).to_numpy()
]
model = LogisticRegression().fit(TRAIN.to_numpy(), LABELS)
frame_model = LogisticRegression().fit(TRAIN, LABELS)  # fitted on a frame: reads columns by name
scaler = StandardScaler().fit(TRAIN.to_numpy())
frame_scaler = StandardScaler().fit(TRAIN).set_output(transform="pandas")
pipe = make_pipeline(StandardScaler(), LogisticRegression()).fit(TRAIN.to_numpy(), LABELS)


def rows(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3))


def frame(n: int, seed: int = 1) -> pd.DataFrame:
    return pd.DataFrame(rows(n, seed), columns=["a", "b", "c"], index=np.arange(100, 100 + n))


# --------------------------------------------------------------------------- the forms


def predict_in_batches(model, X, batch_size=BATCH):
    if X.shape[0] > batch_size:
        return np.concatenate([model.predict(X[i : i + batch_size]) for i in range(0, len(X), batch_size)])
    return model.predict(X)


def helper_style(X):
    X = X * 2.0
    return predict_in_batches(model, X)


def frame_helper_style(df):
    return predict_in_batches(frame_model, df)


def argument_style(clf, X, size):
    return np.concatenate([clf.predict(X[i : size + i]) for i in range(0, X.shape[0], size)], axis=0)


def iloc_style(df):
    return np.concatenate(
        [frame_model.predict_proba(df.iloc[i : i + BATCH]) for i in range(0, len(df), BATCH)]
    )


def vstack_style(X):
    return np.vstack([pipe.predict_proba(X[i : i + BATCH]) for i in range(0, len(X), BATCH)])


def append_loop(X):
    parts = []
    for i in range(0, len(X), BATCH):
        parts.append(model.decision_function(X[i : i + BATCH]))
    scores = np.concatenate(parts)
    return scores


def extend_loop(X):
    labels = []
    for start in range(0, X.shape[0], 7):
        labels.extend(model.predict(X[start : start + 7]))
    return labels


def transform_style(X):
    return np.concatenate([scaler.transform(X[i : i + BATCH]) for i in range(0, len(X), BATCH)])


def pandas_transform_style(df):
    return pd.concat([frame_scaler.transform(df[i : i + BATCH]) for i in range(0, len(df), BATCH)])


FORMS = [
    # (function, rows, the normalized function's return value)
    (helper_style, rows, "model.predict(X)"),
    (frame_helper_style, frame, "frame_model.predict(df)"),
    (iloc_style, frame, "frame_model.predict_proba(df)"),
    (vstack_style, rows, "logisticregression.predict_proba(X_standardscaler)"),  # then expanded
    (append_loop, rows, "model.decision_function(X)"),
    (extend_loop, rows, "list(model.predict(X))"),
    (transform_style, rows, "np.concatenate([scaler.transform(X)])"),
    (pandas_transform_style, frame, "pd.concat([frame_scaler.transform(df)])"),
]


def _assert_same(a, b, rtol: float = 0.0) -> None:
    """Equal (``rtol`` for floats: a compiled kernel rounds as sklearn's BLAS does not)."""
    assert type(a) is type(b)
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    else:
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape
        if rtol:
            np.testing.assert_allclose(a, b, rtol=rtol, atol=0)
        else:
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fn, make, expected", FORMS, ids=[f[0].__name__ for f in FORMS])
def test_batched_forms_become_one_call_with_the_same_output(fn, make, expected):
    parameter = fn.__code__.co_varnames[0]
    front = normalize(fn, {parameter: make(30)}, (parameter,))
    source = ast.unparse(front.tree)
    assert "range(" not in source and "for " not in source and " if " not in source, source
    assert f"return {expected}" in source or f"= {expected}" in source, source
    assert any("row-wise" in note for note in front.notes)
    for n in SIZES:
        batch = make(n, seed=n)
        _assert_same(front.function(batch), fn(batch))


def test_arguments_are_guarded_and_the_batch_size_must_stay_a_positive_int():
    front = normalize(argument_style, {"clf": model, "X": rows(30), "size": 7}, ("X",))
    assert "return clf.predict(X)" in ast.unparse(front.tree)
    assert {g.path for g in front.guards} == {"clf", "size"}
    for n in SIZES:
        np.testing.assert_array_equal(front.function(model, rows(n), 7), argument_style(model, rows(n), 7))
    for size in (0, -3, 2.5, True, None, np.float64(7)):
        front = normalize(argument_style, {"clf": model, "X": rows(30), "size": size}, ("X",))
        assert "range(0" in ast.unparse(front.tree), size
    # a batch size the function computes is not a constant: left as written
    front = normalize(computed_size, {"X": rows(30)}, ("X",))
    assert "range(0" in ast.unparse(front.tree)


def computed_size(X):
    size = max(1, len(X) // 3)
    return np.concatenate([model.predict(X[i : i + size]) for i in range(0, len(X), size)])


# --------------------------------------------------------------------------- what is not row-wise


class MeanCentered:
    """A user 'model' whose output for a row depends on the whole batch."""

    def predict(self, X):
        return X.sum(axis=1) - X.mean()


centered = MeanCentered()
user_step = make_pipeline(FunctionTransformer(lambda X: X - X.mean(axis=0)), LogisticRegression()).fit(
    TRAIN.to_numpy(), LABELS
)
dummy = DummyClassifier(strategy="stratified", random_state=0).fit(TRAIN.to_numpy(), LABELS)


def own_mean(X):
    return np.concatenate([model.predict(X[i : i + 7] - X[i : i + 7].mean()) for i in range(0, len(X), 7)])


def user_model(X):
    return np.concatenate([centered.predict(X[i : i + 7]) for i in range(0, len(X), 7)])


def user_function_step(X):
    return np.concatenate([user_step.predict(X[i : i + 7]) for i in range(0, len(X), 7)])


def batch_dependent(X):
    return np.concatenate([dummy.predict(X[i : i + 7]) for i in range(0, len(X), 7)])


def hstack_of_probabilities(X):  # hstack puts 2-D pieces side by side: not the rows
    return np.hstack([model.predict_proba(X[i : i + 7]) for i in range(0, len(X), 7)])


def uneven_slices(X):  # the slices overlap: not a partition of the rows
    return np.concatenate([model.predict(X[i : i + 8]) for i in range(0, len(X), 7)])


@pytest.mark.parametrize(
    "fn", [own_mean, user_model, user_function_step, batch_dependent, hstack_of_probabilities, uneven_slices]
)
def test_chunks_that_are_not_provably_row_wise_stay_as_written(fn):
    front = normalize(fn, {"X": rows(30)}, ("X",))
    assert "range(0, len(X), 7)" in ast.unparse(front.tree)
    assert not any("row-wise `" in note for note in front.notes)


def test_row_wise_reasons():
    assert row_wise_reason(model, "predict") is None
    assert row_wise_reason(pipe, "predict_proba") is None
    assert "not a scikit-learn or LightGBM" in row_wise_reason(centered, "predict")
    assert "<lambda>" in row_wise_reason(user_step, "predict")
    assert "DummyClassifier" in row_wise_reason(dummy, "predict")
    assert "not one of the row-wise" in row_wise_reason(model, "fit")


def user_model_in_helper(X):
    return predict_in_batches(centered, X)


def test_a_helper_left_as_written_is_refused_with_the_reason():
    with pytest.raises(willow.UnsupportedPipelineError) as info:
        willow.optimize(user_model_in_helper, compile=False, **EXACT).calibrate(rows(60))
    message = str(info.value)
    assert f"{__file__}:" in message and "predict_in_batches()" in message
    assert "`model.predict` may not be row-wise" in message and "MeanCentered" in message


# --------------------------------------------------------------------------- end to end


def _served_like_the_original(pipeline, fn, rtol: float = 0.0) -> None:
    for n in (0, *SIZES):
        batch = rows(n, seed=10 + n)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                expected = fn(batch)
            except ValueError as exc:  # 0 rows: the original raises, and so must willow
                with pytest.raises(ValueError, match=re.escape(str(exc)[:30])):
                    pipeline(batch)
                continue
            _assert_same(pipeline(batch), expected, rtol)


def test_served_like_the_original_and_guarded():
    pipeline = willow.optimize(helper_style, compile=False, **EXACT).calibrate(rows(120, 3))
    assert pipeline.is_calibrated and "folded to one" in pipeline.explain()
    _served_like_the_original(pipeline, helper_style)  # 0 rows: LogisticRegression refuses them

    # compiled and served whatever its speed (this checks what is served, not timing)
    pipeline = willow.optimize(vstack_style, require_faster=False, **EXACT).calibrate(rows(120, 3))
    assert "Generated kernel" in pipeline.explain()
    _served_like_the_original(pipeline, vstack_style, rtol=1e-12)  # 0 rows: np.vstack([]) raises
    module = sys.modules[__name__]
    try:
        module.BATCH = 0  # the original now raises (range() arg 3 must not be zero)
        with pytest.warns(willow.ModelChangedWarning, match="BATCH"), pytest.raises(ValueError):
            pipeline(rows(5))
        module.BATCH = 3
        with pytest.warns(willow.ModelChangedWarning, match="BATCH"):
            _assert_same(pipeline(rows(5)), vstack_style(rows(5)))  # the original ran: exact
    finally:
        module.BATCH = 7
    _served_like_the_original(pipeline, vstack_style, rtol=1e-12)

    # the batch size and the model passed as arguments are checked at every call
    other = LogisticRegression(C=0.01).fit(TRAIN.to_numpy(), LABELS)
    pipeline = willow.optimize(argument_style, compile=False, **EXACT).calibrate(model, rows(120, 3), 7)
    guards = pipeline._guards  # what serving checks before it runs the plan
    assert guards.check((model, rows(9), 7), {})
    with pytest.warns(willow.ModelChangedWarning, match="size"):
        assert not guards.check((model, rows(9), 4), {})
    with pytest.warns(willow.ModelChangedWarning, match="clf"):
        assert not guards.check((other, rows(9), 7), {})
