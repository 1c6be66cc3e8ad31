"""Inference pipelines written the ways people write them, one style per function.

Each function is an ordinary, undecorated inference function over the shared real data; the
battery (tests/realworld/test_realworld.py) and ``python -m benchmarks.styles`` decorate each with
``willow.optimize`` and compare it with itself undecorated. The fitted objects are module globals
loaded at import (as a user's module loads its pickles), or arguments where the style says so.

Datasets: SMS spam (texts), airline tweets (texts + categories), UCI Adult (tabular), MovieLens
small (rating rows joined with per-user and per-movie tables).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.pipeline import FeatureUnion, Pipeline, make_pipeline, make_union

from tests.realworld import rw_data

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------- fitted globals

_sms = rw_data.sms_fitted()
word_vectorizer = _sms.word_vectorizer
char_vectorizer = _sms.char_vectorizer
classifier = _sms.classifier
# The same fitted objects as scikit-learn composites (the classifier was trained on exactly
# hstack([words, chars]), which is what the FeatureUnion produces).
text_pipeline = Pipeline(
    [
        ("features", FeatureUnion([("word", word_vectorizer), ("char", char_vectorizer)])),
        ("classifier", classifier),
    ]
)
union_pipeline = make_pipeline(make_union(word_vectorizer, char_vectorizer), classifier)

_airline = rw_data.airline_fitted()
tweet_words = _airline.title_vectorizer
tweet_chars = _airline.color_vectorizer
tweet_mentions = _airline.brand_vectorizer
sentiment_model = _airline.model
tweet_pipeline = _airline.text_pipeline

_adult = rw_data.adult_fitted()
category_encoder = _adult.category_encoder
occupation_stats = _adult.tables["occupation"]
education_stats = _adult.tables["education"]
country_stats = _adult.tables["native-country"]
income_model = _adult.model
scaled_pipeline = _adult.scaled_pipeline
tree_pipeline = _adult.tree_pipeline
occupation_table = _adult.merge_tables["occupation"]
education_table = _adult.merge_tables["education"]
NUMERIC = rw_data.NUMERIC
CATEGORICAL = rw_data.CATEGORICAL
FRAME_FEATURES = [
    *NUMERIC,
    "occupation_rich_rate",
    "occupation_mean_hours",
    "education_rich_rate",
    "education_mean_age",
    "hours_per_age",
    "net_gain",
]

_movies = rw_data.movielens_fitted()
user_stats = _movies.tables["us_features"][0]
movie_stats = _movies.tables["ss_features"][0]
genre_stats = _movies.tables["gs_features"][0]
MOVIE_FEATURES = [
    "u_played",
    "u_played_rel",
    "s_played",
    "s_played_rel",
    "gmax_played_pos_rel",
    "gmax_played_ratio",
    "popularity_ratio",
    "year",
]


@contextmanager
def timer(title):
    t0 = time.time()
    yield
    logger.debug("%s - done in %.5fs", title, time.time() - t0)


def predict_function(model, X):
    return model.predict(X)


def make_features(people):
    numeric = people[NUMERIC].to_numpy(dtype=float)
    categories = category_encoder.transform(people[CATEGORICAL])
    occupation = occupation_stats.reindex(people["occupation"]).to_numpy(dtype=float)
    education = education_stats.reindex(people["education"]).to_numpy(dtype=float)
    country = country_stats.reindex(people["native-country"]).to_numpy(dtype=float)
    return np.hstack([numeric, categories, occupation, education, country])


# ------------------------------------------------------------------------------ SMS: texts


def globals_predict(texts):
    words = word_vectorizer.transform(texts)
    chars = char_vectorizer.transform(texts)
    X = sp.hstack([words, chars]).tocsr()
    return classifier.predict(X)


def arguments_predict(model, word_vect, char_vect, texts):
    words = word_vect.transform(texts)
    chars = char_vect.transform(texts)
    X = sp.hstack([words, chars]).tocsr()
    return model.predict(X)


def dict_of_models(texts, models):
    words = models["word"].transform(texts)
    chars = models["char"].transform(texts)
    X = sp.hstack([words, chars]).tocsr()
    return models["classifier"].predict(X)


def union_pipeline_predict(texts):
    return text_pipeline.predict(texts)


def make_union_proba(texts):
    return union_pipeline.predict_proba(texts)


def named_steps_proba(texts):
    features = text_pipeline.named_steps["features"].transform(texts)
    return text_pipeline.named_steps["classifier"].predict_proba(features)


def assigned_result(texts):
    words = word_vectorizer.transform(texts)
    chars = char_vectorizer.transform(texts)
    X = sp.hstack([words, chars]).tocsr()
    preds = classifier.predict(X)
    return preds


def proba_threshold(texts):
    words = word_vectorizer.transform(texts)
    chars = char_vectorizer.transform(texts)
    X = sp.hstack([words, chars]).tocsr()
    return classifier.predict_proba(X)[:, 1] > 0.3


def tolist_result(texts):
    words = word_vectorizer.transform(texts)
    chars = char_vectorizer.transform(texts)
    X = sp.hstack([words, chars]).tocsr()
    return classifier.predict(X).tolist()


def series_result(texts):
    words = word_vectorizer.transform(texts)
    chars = char_vectorizer.transform(texts)
    X = sp.hstack([words, chars]).tocsr()
    return pd.Series(classifier.predict(X), name="label")


def decision_function_result(texts):
    words = word_vectorizer.transform(texts)
    chars = char_vectorizer.transform(texts)
    X = sp.hstack([words, chars]).tocsr()
    return classifier.decision_function(X)


def np_where_result(texts):
    words = word_vectorizer.transform(texts)
    chars = char_vectorizer.transform(texts)
    X = sp.hstack([words, chars]).tocsr()
    proba = classifier.predict_proba(X)
    return np.where(proba[:, 1] > 0.5, "spam", "ham")


def empty_guard(texts):
    if len(texts) == 0:
        return []
    words = word_vectorizer.transform(texts)
    chars = char_vectorizer.transform(texts)
    X = sp.hstack([words, chars]).tocsr()
    return classifier.predict(X)


def timer_block(texts):
    with timer("features"):
        words = word_vectorizer.transform(texts)
        chars = char_vectorizer.transform(texts)
        X = sp.hstack([words, chars]).tocsr()
    return classifier.predict(X)


def logging_and_assert(texts):
    logger.info("scoring %d messages", len(texts))
    words = word_vectorizer.transform(texts)
    chars = char_vectorizer.transform(texts)
    assert words.shape[0] == chars.shape[0]
    X = sp.hstack([words, chars]).tocsr()
    return classifier.predict(X)


def predict_function_helper(texts):
    words = word_vectorizer.transform(texts)
    chars = char_vectorizer.transform(texts)
    X = sp.hstack([words, chars]).tocsr()
    return predict_function(classifier, X)


def string_array_rows(texts):
    words = word_vectorizer.transform(texts)
    chars = char_vectorizer.transform(texts)
    X = sp.hstack([words, chars]).tocsr()
    return classifier.predict(X)


def column_values(frame):
    texts = frame["SMS"].values
    words = word_vectorizer.transform(texts)
    chars = char_vectorizer.transform(texts)
    X = sp.hstack([words, chars]).tocsr()
    return classifier.predict(X)


# ----------------------------------------------------------------- airline: texts + columns


def argmax_sentiment(tweets):
    words = tweet_words.transform(tweets)
    chars = tweet_chars.transform(tweets)
    mentions = tweet_mentions.transform(tweets)
    X = sp.hstack([words, chars, mentions], format="csr")
    proba = sentiment_model.predict_proba(X)
    return np.argmax(proba, axis=1)


def column_transformer_text(frame):
    return tweet_pipeline.predict(frame[["text", "airline", "user_timezone"]])


# ---------------------------------------------------------------------------- adult: tables


def tabular_globals(people):
    numeric = people[NUMERIC].to_numpy(dtype=float)
    categories = category_encoder.transform(people[CATEGORICAL])
    occupation = occupation_stats.reindex(people["occupation"]).to_numpy(dtype=float)
    education = education_stats.reindex(people["education"]).to_numpy(dtype=float)
    country = country_stats.reindex(people["native-country"]).to_numpy(dtype=float)
    X = np.hstack([numeric, categories, occupation, education, country])
    return income_model.predict_proba(X)


def make_features_helper(people):
    X = make_features(people)
    return income_model.predict(X)


def predict_function_tabular(people):
    X = make_features(people)
    return predict_function(income_model, X)


def predict_in_batches(model, X, batch_size=100_000):
    if X.shape[0] > batch_size:  # both branches are model.predict(X) (willow.frontend.chunking)
        return np.concatenate([model.predict(X[i : i + batch_size]) for i in range(0, len(X), batch_size)])
    return model.predict(X)


def batched_helper(people):
    X = make_features(people)
    return predict_in_batches(income_model, X)


def column_transformer_scaled(people):
    return scaled_pipeline.predict(people)


def column_transformer_threshold(people):
    return tree_pipeline.predict_proba(people)[:, 1] > 0.3


def frame_merges(people):
    df = people.merge(occupation_table, how="left", on="occupation")
    df = df.merge(education_table, how="left", on="education")
    df["hours_per_age"] = df["hours-per-week"] / df["age"]
    df["net_gain"] = df["capital-gain"] - df["capital-loss"]
    X = df[FRAME_FEATURES]
    return frame_model.predict(X)


# ------------------------------------------------------------------------ movielens: frames


def frame_assign(ratings):
    df = ratings.merge(user_stats, how="left", on="userId")
    df = df.merge(movie_stats, how="left", on="movieId")
    df = df.merge(genre_stats, how="left", on="genre_max")
    df = df.assign(popularity_ratio=df["s_played"] / df["u_played"])
    X = df[MOVIE_FEATURES].fillna(0)
    return movie_model.predict(X)


# ------------------------------------------------------------------ models of the frame styles


def _train_frame_models():
    """Models for the two whole-frame styles, trained on the frames those functions build (the
    same steps, run once on the train rows)."""
    from lightgbm import LGBMClassifier

    options = dict(n_estimators=60, num_leaves=15, learning_rate=0.1, n_jobs=1, verbose=-1, random_state=0)
    adult = rw_data.adult()
    people = adult.frame.iloc[adult.split.train]
    df = people.merge(occupation_table, how="left", on="occupation")
    df = df.merge(education_table, how="left", on="education")
    df["hours_per_age"] = df["hours-per-week"] / df["age"]
    df["net_gain"] = df["capital-gain"] - df["capital-loss"]
    people_model = LGBMClassifier(**options).fit(df[FRAME_FEATURES], people["rich"].to_numpy())

    movies = rw_data.movielens()
    ratings = movies.rows.iloc[movies.split.train]
    df = ratings.merge(user_stats, how="left", on="userId")
    df = df.merge(movie_stats, how="left", on="movieId")
    df = df.merge(genre_stats, how="left", on="genre_max")
    df = df.assign(popularity_ratio=df["s_played"] / df["u_played"])
    ratings_model = LGBMClassifier(**options).fit(df[MOVIE_FEATURES].fillna(0), ratings["liked"].to_numpy())
    return people_model, ratings_model


frame_model, movie_model = _train_frame_models()
