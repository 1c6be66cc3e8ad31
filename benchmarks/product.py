"""product: tweet text plus categorical columns, feature groups of very different cost.

Willump's "product" workload (text + categories) on the real Twitter US Airline Sentiment data:
word TF-IDF and character TF-IDF of the tweet (dear), and one-hot groups of the airline, the
user's time zone and the annotated negative reason (nearly free), stacked with
``scipy.sparse.hstack`` into a multinomial LogisticRegression that returns class probabilities
for negative / neutral / positive.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import OneHotEncoder

import willow
from benchmarks.data import cached, data_path, split_positions
from benchmarks.workload import Prepared, Sizes

NAME = "product"
FILES = ("airline_tweets.csv",)
SIZES = {
    "smoke": Sizes(train=800, calibrate=400, test=150, point_rows=5),
    "quick": Sizes(train=4000, calibrate=2500, test=1500, point_rows=100),
    "full": Sizes(train=4000, calibrate=9000, test=1640, point_rows=200),
}
CATEGORIES = ("airline", "user_timezone", "negativereason")


def make_pipeline(fitted: dict[str, Any], **options: Any) -> willow.OptimizedPipeline:
    """The user's inference function, decorated with ``willow.optimize(**options)``."""
    word_vectorizer = fitted["words"]
    char_vectorizer = fitted["chars"]
    airline_encoder = fitted["airline"]
    timezone_encoder = fitted["user_timezone"]
    reason_encoder = fitted["negativereason"]

    @willow.optimize(**options)
    def sentiment(model, tweets):
        words = word_vectorizer.transform(tweets["text"])
        chars = char_vectorizer.transform(tweets["text"])
        airline = airline_encoder.transform(tweets[["airline"]])
        timezone = timezone_encoder.transform(tweets[["user_timezone"]].fillna("none"))
        reason = reason_encoder.transform(tweets[["negativereason"]].fillna("none"))
        X = sp.hstack([words, chars, airline, timezone, reason]).tocsr()
        return model.predict_proba(X)

    return sentiment


def _load() -> pd.DataFrame:
    frame = pd.read_csv(data_path("airline_tweets.csv"))
    frame = frame[["text", *CATEGORIES, "airline_sentiment"]].copy()
    frame["text"] = frame["text"].astype(str)
    return frame


def _train(frame: pd.DataFrame):
    fitted = {
        "words": TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True).fit(frame["text"]),
        "chars": TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True).fit(
            frame["text"]
        ),
    }
    for column in CATEGORIES:
        encoder = OneHotEncoder(handle_unknown="ignore")
        fitted[column] = encoder.fit(frame[[column]].fillna("none"))
    blocks = [fitted["words"].transform(frame["text"]), fitted["chars"].transform(frame["text"])]
    blocks += [fitted[c].transform(frame[[c]].fillna("none")) for c in CATEGORIES]
    model = LogisticRegression(max_iter=3000, C=5).fit(sp.hstack(blocks).tocsr(), frame["airline_sentiment"])
    return fitted, model


def prepare(scale: str = "quick", random_state: int = 0) -> Prepared:
    sizes = SIZES[scale]
    frame = _load()
    train, calibration, test = split_positions(
        len(frame), [sizes.train, sizes.calibrate, sizes.test], random_state
    )
    config = {"train": train.size, "seed": random_state, "version": 1}
    fitted, model = cached(
        NAME, FILES, config, lambda: _train(frame.iloc[train].reset_index(drop=True)), code=__file__
    )
    rows = frame.drop(columns=["airline_sentiment"])
    return Prepared(
        name=NAME,
        task="multiclass",
        model=model,
        make_pipeline=lambda **options: make_pipeline(fitted, **options),
        calibration_rows=rows.iloc[calibration].reset_index(drop=True),
        calibration_labels=frame["airline_sentiment"].to_numpy(dtype=object)[calibration],
        test_rows=rows.iloc[test].reset_index(drop=True),
        test_labels=frame["airline_sentiment"].to_numpy(dtype=object)[test],
        groups=("words", "chars", "airline", "timezone", "reason"),
        description="airline tweets: word + char TF-IDF of the text, one-hot airline / time zone / "
        "negative reason -> LogisticRegression.predict_proba (3 classes)",
        sizes=sizes,
        details={"model": "LogisticRegression(C=5, multinomial)", "rows_in_file": len(frame)},
    )
