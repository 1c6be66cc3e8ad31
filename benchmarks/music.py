"""music: recommendation-style "will this user like this movie" with many per-key lookups.

Willump's "music" workload (per-user and per-item feature tables joined onto a click table) on
the real MovieLens latest-small data. A ``history`` split of the ratings builds the tables (what a
Kaggle pipeline would aggregate ahead of time); the model learns ``rating >= 4`` on other
ratings. Nine feature groups, each a lookup or merge into one table keyed by ``userId`` or
``movieId``, are stacked with ``numpy.hstack`` into a LightGBM classifier (``predict_proba``):

user_stats, item_stats (counts, mean, spread and liked-rate of ratings), item_genres (one-hot
genres from movies.csv), item_year (release year and title length), item_tags and user_tags
(from tags.csv, a ``merge``), user_genres (the user's mean rating per genre), affinity (the
user's genre profile against the movie's genres) and recency (seconds since the user's first and
last rating in the history).

``make_table_pipeline`` is the same pipeline written against ``willow.tables`` feature tables
(``table.lookup(keys)`` for every reindex and for the merge): ``python -m benchmarks music
--tables memory|redis`` serves it from MemoryTables or from RedisTables in a local redis-server
(see :mod:`benchmarks.feature_tables`). Its features equal the pandas pipeline's exactly, so the
same trained model serves both.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from lightgbm import LGBMClassifier, LGBMRegressor

import willow
from benchmarks.data import cached, data_path, split_positions
from benchmarks.workload import Prepared, Sizes, feature_matrix

NAME = "music"
FILES = ("movielens-small/ratings.csv", "movielens-small/movies.csv", "movielens-small/tags.csv")
SIZES = {
    "smoke": Sizes(history=50000, train=1500, calibrate=500, test=150, point_rows=5),
    "quick": Sizes(history=50000, train=8000, calibrate=3000, test=2000, point_rows=100),
    "full": Sizes(history=50000, train=20000, calibrate=12000, test=10000, point_rows=200),
}
# Top-K query: the K (user, movie) pairs most likely to be liked.
TOP_K = {"smoke": 10, "quick": 50, "full": 100}


def make_pipeline(tables: dict[str, pd.DataFrame], **options: Any) -> willow.OptimizedPipeline:
    """The user's inference function, decorated with ``willow.optimize(**options)``."""
    user_table = tables["user"]
    item_table = tables["item"]
    genre_table = tables["genres"]
    year_table = tables["year"]
    item_tag_table = tables["item_tags"]
    user_tag_table = tables["user_tags"]
    user_genre_table = tables["user_genres"]
    activity_table = tables["activity"]

    @willow.optimize(**options)
    def recommend(model, ratings):
        user_stats = user_table.reindex(ratings["userId"]).to_numpy(dtype=float)
        item_stats = item_table.reindex(ratings["movieId"]).to_numpy(dtype=float)
        item_genres = genre_table.reindex(ratings["movieId"]).to_numpy(dtype=float)
        item_year = year_table.reindex(ratings["movieId"]).to_numpy(dtype=float)
        item_tags = (
            ratings[["movieId"]]
            .merge(item_tag_table, how="left", left_on="movieId", right_index=True)
            .drop(columns="movieId")
            .to_numpy(dtype=float)
        )
        user_tags = user_tag_table.reindex(ratings["userId"]).to_numpy(dtype=float)
        user_genres = user_genre_table.reindex(ratings["userId"]).to_numpy(dtype=float)
        affinity = np.nansum(
            user_genre_table.reindex(ratings["userId"]).to_numpy(dtype=float)
            * genre_table.reindex(ratings["movieId"]).to_numpy(dtype=float),
            axis=1,
            keepdims=True,
        )
        recency = ratings["timestamp"].to_numpy(dtype=float)[:, None] - activity_table.reindex(
            ratings["userId"]
        ).to_numpy(dtype=float)
        X = np.hstack(
            [
                user_stats,
                item_stats,
                item_genres,
                item_year,
                item_tags,
                user_tags,
                user_genres,
                affinity,
                recency,
            ]
        )
        return model.predict_proba(X)

    return recommend


def make_table_pipeline(tables: dict[str, Any], **options: Any) -> willow.OptimizedPipeline:
    """``make_pipeline`` with every lookup through a ``willow.tables`` table (same features)."""
    user_table = tables["user"]
    item_table = tables["item"]
    genre_table = tables["genres"]
    year_table = tables["year"]
    item_tag_table = tables["item_tags"]
    user_tag_table = tables["user_tags"]
    user_genre_table = tables["user_genres"]
    activity_table = tables["activity"]

    @willow.optimize(**options)
    def recommend(model, ratings):
        user_stats = user_table.lookup(ratings["userId"]).to_numpy(dtype=float)
        item_stats = item_table.lookup(ratings["movieId"]).to_numpy(dtype=float)
        item_genres = genre_table.lookup(ratings["movieId"]).to_numpy(dtype=float)
        item_year = year_table.lookup(ratings["movieId"]).to_numpy(dtype=float)
        item_tags = item_tag_table.lookup(ratings["movieId"]).to_numpy(dtype=float)
        user_tags = user_tag_table.lookup(ratings["userId"]).to_numpy(dtype=float)
        user_genres = user_genre_table.lookup(ratings["userId"]).to_numpy(dtype=float)
        affinity = np.nansum(
            user_genre_table.lookup(ratings["userId"]).to_numpy(dtype=float)
            * genre_table.lookup(ratings["movieId"]).to_numpy(dtype=float),
            axis=1,
            keepdims=True,
        )
        recency = ratings["timestamp"].to_numpy(dtype=float)[:, None] - activity_table.lookup(
            ratings["userId"]
        ).to_numpy(dtype=float)
        X = np.hstack(
            [
                user_stats,
                item_stats,
                item_genres,
                item_year,
                item_tags,
                user_tags,
                user_genres,
                affinity,
                recency,
            ]
        )
        return model.predict_proba(X)

    return recommend


def _load() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    ratings = pd.read_csv(data_path("movielens-small/ratings.csv"))
    movies = pd.read_csv(data_path("movielens-small/movies.csv"))
    tags = pd.read_csv(data_path("movielens-small/tags.csv"))
    return ratings, movies, tags


def build_tables(history: pd.DataFrame, movies: pd.DataFrame, tags: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per-user and per-movie feature tables, aggregated from the history ratings only."""
    liked = (history["rating"] >= 4).astype(float)
    history = history.assign(liked=liked)
    by_user = history.groupby("userId")
    user = pd.DataFrame(
        {
            "user_count": by_user["rating"].size(),
            "user_mean": by_user["rating"].mean(),
            "user_std": by_user["rating"].std(),
            "user_liked": by_user["liked"].mean(),
        }
    )
    by_item = history.groupby("movieId")
    item = pd.DataFrame(
        {
            "item_count": by_item["rating"].size(),
            "item_mean": by_item["rating"].mean(),
            "item_std": by_item["rating"].std(),
            "item_liked": by_item["liked"].mean(),
        }
    )
    genres = movies.set_index("movieId")["genres"].str.get_dummies(sep="|").astype(float)
    genres = genres.drop(columns=[c for c in genres.columns if c.startswith("(")], errors="ignore")
    year = pd.DataFrame(
        {
            "year": pd.to_numeric(movies["title"].str.extract(r"\((\d{4})\)\s*$")[0], errors="coerce"),
            "title_length": movies["title"].str.len().astype(float),
        }
    ).set_index(movies["movieId"])
    item_tags = pd.DataFrame(
        {
            "tag_count": tags.groupby("movieId").size(),
            "taggers": tags.groupby("movieId")["userId"].nunique(),
        }
    ).astype(float)
    user_tags = pd.DataFrame(
        {
            "user_tag_count": tags.groupby("userId").size(),
            "user_tagged_movies": tags.groupby("userId")["movieId"].nunique(),
        }
    ).astype(float)
    rated = history[["userId", "movieId", "rating"]].merge(genres, left_on="movieId", right_index=True)
    weights = rated[genres.columns].to_numpy()
    weighted = pd.DataFrame(weights * (rated["rating"].to_numpy()[:, None] - 3.0), columns=genres.columns)
    weighted["userId"] = rated["userId"].to_numpy()
    counts = pd.DataFrame(weights, columns=genres.columns).assign(userId=rated["userId"].to_numpy())
    user_genres = weighted.groupby("userId").sum() / counts.groupby("userId").sum().replace(0.0, np.nan)
    activity = pd.DataFrame(
        {"first_seen": by_user["timestamp"].min(), "last_seen": by_user["timestamp"].max()}
    )
    return {
        "user": user,
        "item": item,
        "genres": genres,
        "year": year,
        "item_tags": item_tags,
        "user_tags": user_tags,
        "user_genres": user_genres,
        "activity": activity.astype(float),
    }


def _train(history, movies, tags, train_rows, train_labels):
    tables = build_tables(history, movies, tags)
    model = LGBMClassifier(n_estimators=150, learning_rate=0.05, num_leaves=31, n_jobs=1, verbose=-1)
    features = make_pipeline(tables).__wrapped__  # the same feature code the pipeline runs
    model.fit(feature_matrix(features, train_rows), train_labels)
    return tables, model


def prepare(scale: str = "quick", random_state: int = 0) -> Prepared:
    sizes = SIZES[scale]
    ratings, movies, tags = _load()
    history, train, calibration, test = split_positions(
        len(ratings), [sizes.history, sizes.train, sizes.calibrate, sizes.test], random_state
    )
    labels = (ratings["rating"].to_numpy() >= 4).astype(int)
    rows = ratings[["userId", "movieId", "timestamp"]]
    config = {"history": history.size, "train": train.size, "seed": random_state, "version": 1}
    tables, model = cached(
        NAME,
        FILES,
        config,
        lambda: _train(
            ratings.iloc[history], movies, tags, rows.iloc[train].reset_index(drop=True), labels[train]
        ),
        code=__file__,
    )
    return Prepared(
        name=NAME,
        task="binary",
        model=model,
        make_pipeline=lambda **options: make_pipeline(tables, **options),
        feature_frames=tables,
        make_table_pipeline=make_table_pipeline,
        calibration_rows=rows.iloc[calibration].reset_index(drop=True),
        calibration_labels=labels[calibration],
        test_rows=rows.iloc[test].reset_index(drop=True),
        test_labels=labels[test],
        groups=(
            "user_stats",
            "item_stats",
            "item_genres",
            "item_year",
            "item_tags",
            "user_tags",
            "user_genres",
            "affinity",
            "recency",
        ),
        description="MovieLens: 9 lookup/merge groups into per-user and per-movie tables -> "
        "LGBMClassifier.predict_proba (liked = rating >= 4)",
        sizes=sizes,
        # The cascade's cheap model: a 30-tree LightGBM rather than a clone of the full model,
        # which costs as much per row as the full model on these cheap lookup features.
        optimize_options={
            "approximate_model": LGBMClassifier(n_estimators=30, num_leaves=15, n_jobs=1, verbose=-1)
        },
        top_k=TOP_K[scale],
        # The top-K filter learns the full model's scores with a small LightGBM regressor.
        topk_options={
            "approximate_model": LGBMRegressor(n_estimators=30, num_leaves=15, n_jobs=1, verbose=-1)
        },
        details={
            "positive_class": 1,
            "model": "LGBMClassifier(n_estimators=150, num_leaves=31)",
            "rows_in_file": len(ratings),
            "history_rows": int(history.size),
        },
    )
