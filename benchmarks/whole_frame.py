"""Whole-frame pandas on MovieLens: the music features written as one growing DataFrame.

The same per-user and per-movie tables as :mod:`benchmarks.music` (built by its
``build_tables``), kept as frames with their key as a column and joined the way people write it::

    df = ratings.merge(user_table, on="userId", how="left")
    ... six more merges ...
    df["recency"] = df["timestamp"] - df["last_seen"]
    df["mean_gap"] = df.user_mean - df.item_mean
    return model.predict_proba(df[FEATURES])

As written this is one feature group. The front end (:mod:`willow.frontend.frames`) splits it into
a group per table and per derived column, and the lookup lowering compiles the merges of all-float
tables. ``python -m benchmarks.whole_frame`` times, in one process and interleaved, the original,
willow on the function as written, and willow on the normalized function (compiled, no cascade,
and with a cascade), at a batch and at single rows; medians.
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

import numpy as np
import pandas as pd
from lightgbm import LGBMClassifier

import willow
from benchmarks.data import split_positions
from benchmarks.measure import time_batches
from benchmarks.music import _load, build_tables
from willow.compiler.tracing import trace_pipeline
from willow.frontend.driver import normalize

SIZES = {"smoke": (1500, 1000, 300), "quick": (8000, 3000, 2000)}


def make_function(tables: dict[str, pd.DataFrame]) -> Any:
    """The user's inference function over the row frame ``ratings``."""
    user_table = tables["user"].rename_axis("userId").reset_index()
    item_table = tables["item"].rename_axis("movieId").reset_index()
    genre_table = tables["genres"].rename_axis("movieId").reset_index()
    year_table = tables["year"].rename_axis("movieId").reset_index()
    item_tag_table = tables["item_tags"].rename_axis("movieId").reset_index()
    user_tag_table = tables["user_tags"].rename_axis("userId").reset_index()
    activity_table = tables["activity"].rename_axis("userId").reset_index()
    features = [
        *tables["user"].columns,
        *tables["item"].columns,
        *tables["genres"].columns,
        *tables["year"].columns,
        *tables["item_tags"].columns,
        *tables["user_tags"].columns,
        "recency",
        "mean_gap",
    ]

    def recommend(model, ratings):
        df = ratings.merge(user_table, on="userId", how="left")
        df = df.merge(item_table, on="movieId", how="left")
        df = df.merge(genre_table, on="movieId", how="left")
        df = df.merge(year_table, on="movieId", how="left")
        df = df.merge(item_tag_table, on="movieId", how="left")
        df = df.merge(user_tag_table, on="userId", how="left")
        df = df.merge(activity_table, on="userId", how="left")
        df["recency"] = df["timestamp"] - df["last_seen"]
        df["mean_gap"] = df.user_mean - df.item_mean
        X = df[features]
        return model.predict_proba(X)

    return recommend


class _Features:
    def predict_proba(self, X: pd.DataFrame) -> pd.DataFrame:
        return X


def optimized(fn: Any, front: Any, calibration: pd.DataFrame, model: Any, **options: Any) -> Any:
    """``willow.optimize(fn)`` calibrated; with ``front``, on its normalized tree (what
    ``OptimizedPipeline.calibrate`` does once it runs the front end itself)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipeline = willow.optimize(fn, **options)
        if front is not None:
            pipeline.graph_ = trace_pipeline(fn, ("ratings",), tree=front.tree, filename=front.filename)
        return pipeline.calibrate(model, calibration)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SIZES), default="quick")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    n_train, n_calibrate, n_test = SIZES[args.scale]
    ratings, movies, tags = _load()
    history, train, calibration, test = split_positions(
        len(ratings), [50000, n_train, n_calibrate, n_test], 0
    )
    recommend = make_function(build_tables(ratings.iloc[history], movies, tags))
    rows = ratings[["userId", "movieId", "timestamp"]]
    labels = (ratings["rating"].to_numpy() >= 4).astype(int)
    model = LGBMClassifier(n_estimators=150, learning_rate=0.05, num_leaves=31, n_jobs=1, verbose=-1)
    model.fit(recommend(_Features(), rows.iloc[train].reset_index(drop=True)), labels[train])
    calibration_rows = rows.iloc[calibration].reset_index(drop=True)
    batch = rows.iloc[test].reset_index(drop=True)

    start = time.perf_counter()
    front = normalize(recommend, {"model": model, "ratings": calibration_rows}, ("ratings",))
    print(f"front end: {time.perf_counter() - start:.2f} s; " + " ".join(front.notes))
    pd.testing.assert_frame_equal(
        recommend(_Features(), batch), front.function(_Features(), batch), check_exact=True
    )
    cheap = LGBMClassifier(n_estimators=30, num_leaves=15, n_jobs=1, verbose=-1)
    common = dict(cost_repeats=3, importance_repeats=1, approximate_model=cheap)
    variants = {
        "as written": optimized(recommend, None, calibration_rows, model, **common),
        "normalized, compiled": optimized(
            front.function, front, calibration_rows, model, cascade=False, **common
        ),
        "normalized, cascade": optimized(front.function, front, calibration_rows, model, **common),
    }
    for name, pipeline in variants.items():
        plan = pipeline.plan_
        what = f"cascade on {plan.selected}" if plan.cascade else f"no cascade ({plan.reason})"
        print(f"{name}: {len(pipeline.graph_.groups)} groups, {plan.compiled_nodes} compiled nodes; {what}")
    expected = recommend(model, batch)
    for name, pipeline in variants.items():
        found = pipeline(model, batch)
        agree = np.mean(np.argmax(found, axis=1) == np.argmax(expected, axis=1))
        print(f"{name}: agreement {agree:.4f}, largest difference {np.max(np.abs(found - expected)):.1e}")
    for label, data in ((f"batch of {len(batch)} rows", batch), ("1 row", batch.iloc[:1])):
        calls = {"original": lambda d=data: recommend(model, d)}
        calls.update({name: (lambda p=p, d=data: p(model, d)) for name, p in variants.items()})
        samples = time_batches(calls, args.repeats, min_seconds=0.05)
        base = np.median(samples["original"])
        cells = [
            f"{name} {np.median(s) * 1e3:.2f} ms ({base / np.median(s):.2f}x)" for name, s in samples.items()
        ]
        print(f"{label}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
