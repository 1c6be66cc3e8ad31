"""Whole-frame pandas split by column family (willow.frontend.frames).

The normalized function must build the very frame the original hands its model (columns, order,
dtypes, values, index) on every batch: the calibration rows, unseen keys (NaN after a left merge),
0 and 1 rows, and frames with other indexes. Tracing it gives one feature group per family; what
cannot be rewritten exactly stays as written, with a note.
"""

from __future__ import annotations

import ast
import warnings

import numpy as np
import pandas as pd
import pytest
from lightgbm import LGBMClassifier

import willow
from willow.compiler.tracing import trace_pipeline
from willow.frontend.driver import normalize
from willow.frontend.frames import select_columns, split_frame_groups

PASSES = [("frames", split_frame_groups)]
_rng = np.random.default_rng(0)
# a bool column: pandas makes it object (NaN for a missing key), so this table stays a pandas merge
USER_TABLE = pd.DataFrame(
    {
        "userId": np.arange(40),
        "user_mean": _rng.random(40),
        "user_count": _rng.integers(1, 9, 40),
        "user_active": _rng.random(40) > 0.5,
    }
)
# numeric: merged in the form the lookup lowering compiles; movie_votes is int64 (pandas gives the
# merged column int64 when every key matched, else float64), movie_score float32
MOVIE_TABLE = pd.DataFrame(
    {
        "movieId": np.arange(60),
        "movie_mean": _rng.random(60),
        "movie_year": _rng.random(60),
        "movie_votes": _rng.integers(0, 10**6, 60),
        "movie_score": _rng.random(60).astype(np.float32),
    }
)
DUPLICATED = pd.DataFrame({"userId": [1, 1, 2], "extra": [0.5, 0.6, 0.7]})
FEATURES = [
    "movie_mean",
    "ratio",
    "user_count",
    "timestamp",
    "late",
    "movie_year",
    "user_mean",
    "scaled",
    "movie_votes",
    "user_active",
    "movie_score",
]


class Passthrough:
    """A 'model' returning what it reads, to compare the frames themselves."""

    def predict(self, X):
        return X

    def predict_proba(self, X):
        return X


def whole_frame(model, df):
    df = df.merge(USER_TABLE, on="userId", how="left")
    df = df.merge(MOVIE_TABLE, on="movieId", how="left")
    df["ratio"] = df.user_mean / df["movie_mean"]
    df = df.assign(late=df["timestamp"] > 5.0, scaled=lambda d: d.movie_year * 2.0)
    X = df[FEATURES]
    return model.predict_proba(X)


MODEL_FEATURES = [c for c in FEATURES if c != "user_active"]  # LightGBM refuses object columns


def scored(model, df):
    df = df.merge(USER_TABLE, on="userId", how="left")
    df = df.merge(MOVIE_TABLE, on="movieId", how="left")
    df["ratio"] = df.user_mean / df["movie_mean"]
    df = df.assign(late=df["timestamp"] > 5.0, scaled=lambda d: d.movie_year * 2.0)
    return model.predict_proba(df[MODEL_FEATURES])


def inlined_helper(model, rows):
    # the shape helper inlining leaves for `X = make_features(rows)[FEATURES]`
    frame = rows.copy()
    frame["ratio"] = frame["timestamp"] / 10.0
    frame = frame.merge(MOVIE_TABLE, how="left", on="movieId")
    features = frame
    return model.predict(features.loc[:, ["ratio", "movie_mean", "timestamp"]].to_numpy())


MOVIES_BY_ID = MOVIE_TABLE.set_index("movieId")
KEY = "userId"


def indexed_table(model, df):
    # right_index=True: pandas keeps the left frame's index; options through constants
    df = df.merge(MOVIES_BY_ID, how="left", left_on="movieId", right_index=True)
    df = df.merge(USER_TABLE, how="left", on=KEY)
    return model.predict(df[["movie_mean", "user_mean", "timestamp"]])


def in_model_order(model, df):
    df = df.merge(MOVIE_TABLE, on="movieId", how="left")
    return model.predict(df[["movie_mean", "movie_year", "movie_votes", "movie_score", "timestamp"]])


def predict_helper(model, X):
    if len(X) == 0:
        return np.zeros(0)
    return model.predict(X)


def willump_style(model, combi):
    # Willump's music do_merge: the selection rebinds the frame's name, then more steps on it
    combi = combi.merge(USER_TABLE, how="left", on="userId")
    combi = combi.merge(MOVIE_TABLE, how="left", on="movieId")
    combi = combi[["user_mean", "movie_mean", "movie_votes"]]
    combi = combi.fillna(0)
    preds = predict_helper(model, combi)
    return preds


def empty_guard(model, df):
    if len(df) == 0:
        return np.zeros(0)
    df = df.merge(USER_TABLE, on="userId", how="left")
    df = df.merge(MOVIE_TABLE, on="movieId", how="left")
    return model.predict(df[["user_mean", "movie_mean"]])


def mutates_input(model, df):
    df["late"] = df.timestamp > 5.0
    df = df.merge(MOVIE_TABLE, on="movieId", how="left")
    return model.predict(df[["late", "movie_mean", "movie_year"]])


def duplicated_keys(model, df):
    df = df.merge(DUPLICATED, on="userId", how="left")
    df = df.merge(MOVIE_TABLE, on="movieId", how="left")
    return model.predict(df[["extra", "movie_mean"]])


def reads_whole_frame(model, df):
    df = df.merge(MOVIE_TABLE, on="movieId", how="left")
    df["total"] = df.sum(axis=1)
    return model.predict(df[["total", "movie_mean", "timestamp"]])


def one_family(model, df):
    df = df.merge(MOVIE_TABLE, on="movieId", how="left")
    return model.predict(df[["movie_mean", "movie_year"]])


def reads_some_table_columns(model, df):
    df = df.merge(MOVIE_TABLE, on="movieId", how="left")
    df["votes_per_year"] = df["movie_votes"] / df["timestamp"]
    return model.predict(df[["timestamp", "movie_votes", "votes_per_year"]])


def consecutive_columns(model, df):
    df = df.merge(MOVIE_TABLE, on="movieId", how="left")
    df["late"] = df["timestamp"] > 5.0
    df["double"] = df["timestamp"] * 2.0
    df["late_double"] = df["double"] + df["late"]  # reads the column before: a call of its own
    return model.predict(df[["movie_mean", "late", "double", "late_double"]])


def rows(n, seed=1, index=None):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "userId": rng.integers(0, 50, n),  # 40..49 are not in USER_TABLE: NaN after the merge
            "movieId": rng.integers(0, 70, n),
            "timestamp": rng.random(n) * 10,
        }
    )
    return frame if index is None else frame.set_axis(index, axis=0)


def batches():
    yield "calibration-like", rows(300, seed=2)
    yield "0 rows", rows(0)
    yield "1 row", rows(1, seed=3)
    yield "1 row, known keys", pd.DataFrame({"userId": [3], "movieId": [4], "timestamp": [7.0]})
    yield "labelled index", rows(50, seed=4, index=pd.Index(np.arange(50) * 7 + 100))
    yield "repeated labels", rows(20, seed=5, index=pd.Index([5] * 20))
    yield "string index", rows(10, seed=6, index=pd.Index([f"r{i}" for i in range(10)]))


def normalized(fn, model, calibration, parameter="df"):
    return normalize(fn, {"model": model, parameter: calibration}, (parameter,), passes=PASSES)


def assert_same(expected, found):
    assert type(found) is type(expected)
    if isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(found, expected, check_exact=True)
    else:
        assert found.dtype == expected.dtype
        np.testing.assert_array_equal(found, expected)


@pytest.mark.parametrize(
    "fn",
    [
        whole_frame,
        scored,
        inlined_helper,
        mutates_input,
        indexed_table,
        in_model_order,
        willump_style,
        empty_guard,
        reads_some_table_columns,
        consecutive_columns,
    ],
    ids=lambda f: f.__name__,
)
def test_normalized_frame_equals_the_original(fn):
    parameter = {inlined_helper: "rows", willump_style: "combi"}.get(fn, "df")
    front = normalized(fn, Passthrough(), rows(400), parameter)
    assert front.rewritten, front.notes
    assert any("split into" in note for note in front.notes), front.notes
    for _, batch in batches():
        assert_same(fn(Passthrough(), batch.copy()), front.function(Passthrough(), batch.copy()))


def test_a_stack_already_in_the_models_order_is_not_selected_again():
    front = normalized(in_model_order, Passthrough(), rows(100))
    returned = front.tree.body[-1]
    assert isinstance(returned, ast.Return) and ast.unparse(returned) == "return model.predict(stacked)"


def test_tracing_the_normalized_function_gives_one_group_per_family():
    front = normalized(whole_frame, Passthrough(), rows(400))
    graph = trace_pipeline(front.function, ("df",), tree=front.tree, filename=front.filename)
    groups = {g.name for g in graph.groups}
    # the input's own columns (and what is derived from them alone), each merge, and the column
    # that reads two merges
    assert len(groups) == 4, groups
    assert sorted(name.split("_")[0] for name in groups) == ["MOVIE", "USER", "df", "ratio"], groups
    source = ast.unparse(front.tree)
    # the numeric table is merged in the form the lookup lowering compiles, its int64 and float32
    # columns given back as pandas gives them; the table with a bool column as pandas
    assert (
        "merge(MOVIE_TABLE, on='movieId', how='left').drop(columns='movieId').to_numpy(dtype=float)" in source
    )
    assert "{'movie_votes': 'int64', 'movie_score': 'float32'})" in source and "merged_frame(" in source
    assert "merge(USER_TABLE, on='userId', how='left')" in source
    assert "merge(USER_TABLE, on='userId', how='left').drop" not in source
    # statements keep the user's line numbers
    lines = {node.lineno for node in front.tree.body}
    first = whole_frame.__code__.co_firstlineno
    assert lines <= set(range(first, first + 8))


def test_selections_of_known_frames_are_takes_by_position():
    """pandas 3 builds an index engine for a label list at every call: the frames the pass built
    (and the stack) are selected by position, the row input's frame through select_columns."""
    front = normalized(whole_frame, Passthrough(), rows(400))
    source = ast.unparse(front.tree)
    assert ".take([" in source and "select_columns" in source  # (a fresh name: this module imports it)
    selection = [n for n in front.tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "X"]
    assert ast.unparse(selection[0].value).startswith("stacked.take(["), ast.unparse(selection[0])


def test_a_merge_gathers_only_the_table_columns_read():
    front = normalized(reads_some_table_columns, Passthrough(), rows(400))
    source = ast.unparse(front.tree)
    # movie_mean, movie_year and movie_score are never read: the lookup does not gather them, and
    # only the int64 column read is given back its dtype
    assert "drop(columns=['movieId', 'movie_mean', 'movie_year', 'movie_score'])" in source, source
    assert "['movie_votes'], {'movie_votes': 'int64'})" in source, source


def test_consecutive_columns_are_one_assign_call():
    front = normalized(consecutive_columns, Passthrough(), rows(400))
    calls = [ast.unparse(n.value) for n in front.tree.body if ".assign(" in ast.unparse(n)]
    assert len(calls) == 2, calls
    assert calls[0].startswith("df_columns.assign(late=df_columns['timestamp'] > 5.0, double="), calls
    assert "late_double=" in calls[1], calls


@pytest.mark.parametrize(
    ("frame", "columns"),
    [
        (pd.DataFrame({"a": [1, 2], "b": ["x", None], "c": [np.nan, 1.5]}, index=[7, 7]), ["c", "a"]),
        (pd.DataFrame({"a": [1.0], "b": [2.0]}), ["b", "b", "a"]),  # a label twice
        (pd.DataFrame(np.zeros((0, 3)), columns=["a", "b", "c"]), ["b"]),  # 0 rows
        (pd.DataFrame([[1, 2, 3]], columns=["a", "a", "b"]), ["a", "b"]),  # duplicated label
        (pd.DataFrame({1: [1.0], "1": [2.0]}), ["1", 1]),  # an int and a str label
    ],
)
def test_select_columns_is_the_label_selection(frame, columns):
    pd.testing.assert_frame_equal(select_columns(frame, columns), frame[columns], check_exact=True)


def test_select_columns_raises_as_pandas_on_a_missing_label():
    frame = pd.DataFrame({"a": [1.0]})
    with pytest.raises(KeyError, match="zz"):
        frame[["a", "zz"]]
    with pytest.raises(KeyError, match="zz"):
        select_columns(frame, ["a", "zz"])


@pytest.mark.parametrize(
    ("fn", "reason"),
    [
        (duplicated_keys, "repeats values"),
        (reads_whole_frame, "is not a column read"),
        (one_family, None),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_what_cannot_be_split_exactly_stays_as_written(fn, reason):
    front = normalized(fn, Passthrough(), rows(100))
    assert not front.rewritten
    if reason is None:
        assert any("one column family" in note for note in front.notes), front.notes
    else:
        assert any(reason in note and "left as written" in note for note in front.notes), front.notes


def test_a_table_whose_columns_collide_is_left_as_written():
    front = normalized(whole_frame, Passthrough(), rows(100).assign(movie_mean=1.0))
    assert not front.rewritten
    assert any("already in the frame" in note for note in front.notes), front.notes


def test_end_to_end_cascade_on_the_normalized_function():
    """willow.optimize serves the normalized function: the predictions equal the original's on
    the rows the full model answers, 0 rows fail as the original fails."""
    from equivalence import assert_cascade_equivalent, assert_same_as_original

    train = rows(1500, seed=10)
    X = scored(Passthrough(), train)
    labels = ((X["movie_mean"].fillna(0.5) + 0.3 * X["late"]) > 0.7).astype(int)
    model = LGBMClassifier(n_estimators=20, num_leaves=8, verbose=-1, n_jobs=1).fit(X, labels)
    calibration = rows(1600, seed=11)
    front = normalize(scored, {"model": model, "df": calibration}, ("df",), passes=PASSES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # this file's own source traced before the tree is swapped in
        pipeline = willow.optimize(
            front.function,
            compile=False,
            require_faster=False,
            accuracy_target=0.9,
            confidence=0.9,
            cost_repeats=1,
            importance_repeats=1,
            approximate_model=LGBMClassifier(n_estimators=5, num_leaves=4, verbose=-1, n_jobs=1),
        )
    # until OptimizedPipeline.calibrate runs the front end itself, trace the normalized tree here
    pipeline.graph_ = trace_pipeline(front.function, ("df",), tree=front.tree, filename=front.filename)
    pipeline.calibrate(model, calibration)
    assert len(pipeline.graph_.groups) == 4
    # the labels follow two families, so a cascade on them alone is proven (and served: require_faster=False)
    assert pipeline.plan_.cascade, pipeline.plan_.reason
    assert 0 < len(pipeline.plan_.selected) < 4
    for _, batch in batches():
        if len(batch) == 0:
            assert_same_as_original(pipeline, model, batch)
            continue
        expected = scored(model, batch.copy())
        np.testing.assert_array_equal(front.function(model, batch.copy()), expected)  # exact
        assert_cascade_equivalent(pipeline, model, batch.copy())
