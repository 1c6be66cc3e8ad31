"""What the calibration call fixes: type tests folded (and guarded at every call), comprehensions
over a frame's columns evaluated, model keywords that change nothing dropped.

Each capability is checked on the normalized function (the front end alone) and, once, end to end
through ``willow.optimize`` on a Willump-credit-shaped pipeline: helper branching on
``isinstance(X, pd.DataFrame)``, ``[f for f in df.columns if ...]``, and
``model.predict_proba(X, num_iteration=model.best_iteration_)``; compared with the original on
the same rows (0, 1 and many, unseen keys), and with inputs of another type or other columns at
serving, which must run the original.
"""

from __future__ import annotations

import ast
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

import willow
from willow.frontend.driver import normalize
from willow.frontend.model_kwargs import neutral_keyword

TABLE = pd.DataFrame({"key": [0, 1, 2, 3], "t_mean": [0.1, 0.5, 0.3, 0.9], "t_count": [3.0, 1.0, 4.0, 2.0]})
KEYS = ["key"]
EXACT = dict(cascade=False, accuracy_target=0.9, confidence=0.9, cost_repeats=1, importance_repeats=1)


def rows(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    b = rng.normal(size=n)
    b[rng.random(n) < 0.2] = np.nan
    return pd.DataFrame({"a": rng.normal(size=n), "b": b, "key": rng.integers(0, 5, n)})  # key 4: unseen


def prepare(X):
    if isinstance(X, pd.DataFrame):
        X = X.fillna(0)
    elif type(X) is np.ndarray:
        X = np.nan_to_num(X) * 1.0
    return X


def predict_with(model, X):
    if isinstance(X, pd.DataFrame):
        X = X.fillna(0)
    if len(X) == 0:
        return np.zeros(0)
    else:
        return model.predict_proba(X, num_iteration=model.best_iteration_)[:, 1]


def credit_like(model, df):
    df = df.merge(TABLE, how="left", on="key")
    feats = [f for f in df.columns if f not in KEYS]
    X = prepare(df[feats])
    return predict_with(model, X)


def scores(model, X):
    X = prepare(X)
    return model.predict_proba(X)[:, 1]


def fixed_iterations(model, df):
    df = df.merge(TABLE, how="left", on="key")
    return model.predict_proba(df[["a", "b", "t_mean", "t_count"]], num_iteration=2, raw_score=False)


def top_level_tests(model, X):
    if not hasattr(X, "columns") or type(X) is not pd.DataFrame:
        X = pd.DataFrame(X)
    return model.predict(X)


class Echo:
    """A 'model' returning the features it reads (to compare the frames themselves)."""

    def predict(self, X):
        return X.to_numpy()


COLUMNS = ("a", "b", "key")


def from_constant(model, df):
    return model.predict(df[[c for c in COLUMNS if c != "key"]].assign(n=lambda d: [c for c in d]))


def features_of(df):
    df = df.merge(TABLE, how="left", on="key")
    feats = [f for f in df.columns if f not in KEYS]
    return df[feats]


def helper_columns(model, df):
    X = features_of(df)
    return model.predict(X)


def unknown_columns(model, df, drop):
    feats = [f for f in df.columns if f != drop[0]]
    return model.predict(df[feats])


@pytest.fixture(scope="module")
def lgbm():
    from lightgbm import LGBMClassifier

    train = rows(300, 0).merge(TABLE, how="left", on="key")
    y = (train["a"] + train["t_mean"] > 0.5).to_numpy()
    X = train[[c for c in train.columns if c not in KEYS]].fillna(0)
    return LGBMClassifier(n_estimators=4, num_leaves=4, n_jobs=1, verbose=-1, random_state=0).fit(X, y)


def _normalized(fn, arguments, row_parameters=("df",)):
    front = normalize(fn, arguments, row_parameters)
    return front, ast.unparse(front.tree)


# --------------------------------------------------------------------------- type tests


def test_type_tests_fold_for_the_calibration_type_and_are_guarded():
    X = rows(40, 1)[["a", "b"]]
    model = LogisticRegression().fit(X.fillna(0), X["a"] > 0)
    front, source = _normalized(scores, dict(model=model, X=X), ("X",))
    assert "isinstance" not in source and "nan_to_num" not in source and "fillna(0)" in source
    assert [(g.parameter, g.type, g.columns) for g in front.type_guards] == [("X", pd.DataFrame, None)]
    assert any("folded to its body" in n and "`X` (pandas.DataFrame)" in n for n in front.notes)
    # an ndarray at calibration takes the elif branch
    front, source = _normalized(scores, dict(model=model, X=X.to_numpy()), ("X",))
    assert "nan_to_num" in source and "fillna" not in source
    assert front.type_guards[0].type is np.ndarray
    # not, and/or, hasattr and `type(x) is not T` in the function itself
    front, source = _normalized(top_level_tests, dict(model=model, X=X), ("X",))
    assert "hasattr" not in source and "pd.DataFrame(X)" not in source
    front, source = _normalized(top_level_tests, dict(model=model, X=X.to_numpy()), ("X",))
    assert "hasattr" not in source and "X = pd.DataFrame(X)" in source
    # a list's type does not decide hasattr(x, "columns")... but hasattr on a list type does
    front, source = _normalized(top_level_tests, dict(model=model, X=[[1.0, 2.0]]), ("X",))
    assert "X = pd.DataFrame(X)" in source and "hasattr" not in source


def test_the_type_guard_refuses_another_type_with_a_warning():
    X = rows(200, 2)[["a", "b"]]
    model = LogisticRegression().fit(X.fillna(0), X["a"] > 0)
    pipeline = willow.optimize(scores, compile=False, **EXACT).calibrate(model, X)
    assert "folded to its body" in pipeline.explain()
    guards = pipeline._guards  # what serving checks before it runs the plan
    assert guards.check((model, rows(5, 3)[["a", "b"]]), {})
    with pytest.warns(willow.ModelChangedWarning, match=r"Argument `X` is a numpy.ndarray"):
        assert not guards.check((model, X.to_numpy()), {})
    assert not guards.check((model, Frame(X)), {}, warn=False)


class Frame(pd.DataFrame):
    """A DataFrame subclass: not the calibration type."""

    @property
    def _constructor(self):
        return Frame


# --------------------------------------------------------------------------- model keywords


def test_model_keywords_are_dropped_only_when_they_change_nothing(lgbm):
    n = lgbm.booster_.current_iteration()
    assert neutral_keyword(lgbm, "predict_proba", "num_iteration", lgbm.best_iteration_, {})
    assert neutral_keyword(lgbm, "predict_proba", "num_iteration", n, {})
    assert neutral_keyword(lgbm, "predict_proba", "num_iteration", -1, {})
    assert not neutral_keyword(lgbm, "predict_proba", "num_iteration", n - 1, {})
    assert neutral_keyword(lgbm, "predict_proba", "raw_score", False, {})
    assert not neutral_keyword(lgbm, "predict_proba", "raw_score", True, {})
    assert not neutral_keyword(lgbm, "predict_proba", "pred_leaf", 1, {})  # not the default's type
    assert neutral_keyword(lgbm, "predict_proba", "num_threads", 2, {})
    assert not neutral_keyword(lgbm, "predict_proba", "num_iteration", n, {"start_iteration": 1})
    assert not neutral_keyword(LogisticRegression(), "predict", "anything", 1, {})

    # num_iteration=2 of 4 trees changes the output: kept, so the model is not compiled (exact)
    df = rows(30, 4)
    front, source = _normalized(fixed_iterations, dict(model=lgbm, df=df))
    assert "num_iteration=2" in source and "raw_score=False" in source
    assert any("runs as written (not compiled)" in note for note in front.notes)
    np.testing.assert_array_equal(front.function(lgbm, df), fixed_iterations(lgbm, df))


# --------------------------------------------------------------------------- comprehensions


def test_comprehensions_over_constant_columns_only():
    df = rows(20, 5)
    model = LogisticRegression().fit(df[["a"]], df["a"] > 0)
    front, source = _normalized(unknown_columns, dict(model=model, df=df, drop=["b", "key"]))
    assert "for f in df.columns" in source  # `drop` is an argument: another call may pass another
    front, source = _normalized(unknown_columns, dict(model=model, df=df, drop=["b", "key"]), ("df", "drop"))
    assert "for f in df.columns" in source  # it reads a row input
    # in a helper: evaluated as it is inlined, and the list read where it selects (the frames
    # pass then splits the merge into its own group)
    front, source = _normalized(helper_columns, dict(model=Echo(), df=df))
    assert "for f in" not in source and "TABLE_columns" in source
    assert [(g.parameter, g.columns) for g in front.type_guards] == [("df", ("a", "b", "key"))]
    for part in (df, df[:1]):
        np.testing.assert_array_equal(front.function(Echo(), part), helper_columns(Echo(), part))
    # over a constant: evaluated, nothing to guard; inside a lambda (its own scope): left alone
    front, source = _normalized(from_constant, dict(model=model, df=df))
    assert (
        "select_frame_columns(df, ['a', 'b'])" in source
        and "[c for c in d]" in source
        and not front.type_guards
    )


def test_credit_shaped_pipeline_end_to_end(lgbm):
    calibration, batch = rows(400, 6), rows(120, 7)
    front, source = _normalized(credit_like, dict(model=lgbm, df=calibration))
    assert "isinstance" not in source and "for f in df.columns" not in source
    assert "num_iteration" not in source and "len(X" not in source
    (guard,) = front.type_guards
    assert guard.parameter == "df" and guard.columns == ("a", "b", "key")

    # served whatever its measured speed (this test checks what is served, not timing)
    pipeline = willow.optimize(credit_like, require_faster=False, **EXACT).calibrate(lgbm, calibration)
    explained = pipeline.explain()
    assert "evaluated at calibration to 4 constant(s)" in explained
    assert "the keywords are dropped" in explained
    compiled = explained.split("Compiled nodes:")[1].split("Generated kernel")[0]
    assert "[LGBMClassifier.predict_proba]" in compiled.split("Kept as Python")[0]
    assert len(pipeline.plan_.groups) == 2 and "No generated source" not in explained
    for batch_rows in (batch, batch.iloc[:1], batch.iloc[:0]):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = pipeline(lgbm, batch_rows)
        np.testing.assert_allclose(out, credit_like(lgbm, batch_rows), rtol=1e-12, atol=0)
    # another type (a subclass) or other columns (so another list from the comprehension): the
    # original runs
    with pytest.warns(willow.ModelChangedWarning, match="Frame"):
        out = pipeline(lgbm, Frame(batch))
    np.testing.assert_array_equal(out, credit_like(lgbm, Frame(batch)))
    reordered = batch[["b", "a", "key"]]
    with pytest.warns(willow.ModelChangedWarning, match="columns"):
        out = pipeline(lgbm, reordered)
    np.testing.assert_array_equal(out, credit_like(lgbm, reordered))
