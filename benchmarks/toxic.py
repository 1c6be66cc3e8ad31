"""toxic: short-text classification with word and character TF-IDF groups (SMS spam).

Willump's "toxic comment" workload on the real SMS Spam Collection: a word 1-2-gram TF-IDF group
(cheap) and a character 2-5-gram TF-IDF group (several times dearer), stacked with
``scipy.sparse.hstack`` into a LogisticRegression that predicts ham / spam.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

import willow
from benchmarks.data import cached, data_path, split_positions
from benchmarks.workload import Prepared, Sizes

NAME = "toxic"
FILES = ("sms_spam.tsv",)
SIZES = {
    "smoke": Sizes(train=600, calibrate=400, test=150, point_rows=5),
    "quick": Sizes(train=1500, calibrate=3100, test=972, point_rows=100),
    "full": Sizes(train=1500, calibrate=3100, test=972, point_rows=200),
}


def make_pipeline(
    word_vectorizer: TfidfVectorizer, char_vectorizer: TfidfVectorizer, **options: Any
) -> willow.OptimizedPipeline:
    """The user's inference function, decorated with ``willow.optimize(**options)``."""

    @willow.optimize(**options)
    def classify(model, comments):
        words = word_vectorizer.transform(comments)
        chars = char_vectorizer.transform(comments)
        X = sp.hstack([words, chars]).tocsr()
        return model.predict(X)

    return classify


def _train(texts: np.ndarray, labels: np.ndarray):
    word_vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    char_vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True)
    words = word_vectorizer.fit_transform(texts)
    chars = char_vectorizer.fit_transform(texts)
    model = LogisticRegression(max_iter=2000, C=10).fit(sp.hstack([words, chars]).tocsr(), labels)
    return word_vectorizer, char_vectorizer, model


def prepare(scale: str = "quick", random_state: int = 0) -> Prepared:
    sizes = SIZES[scale]
    frame = pd.read_csv(data_path("sms_spam.tsv"), sep="\t")
    texts = frame["SMS"].astype(str).to_numpy(dtype=object)
    labels = frame["Label"].astype(str).to_numpy(dtype=object)
    train, calibration, test = split_positions(
        len(frame), [sizes.train, sizes.calibrate, sizes.test], random_state
    )
    config = {"train": train.size, "seed": random_state, "version": 1}
    word_vectorizer, char_vectorizer, model = cached(
        NAME, FILES, config, lambda: _train(texts[train], labels[train]), code=__file__
    )
    return Prepared(
        name=NAME,
        task="binary",
        model=model,
        make_pipeline=lambda **options: make_pipeline(word_vectorizer, char_vectorizer, **options),
        calibration_rows=list(texts[calibration]),
        calibration_labels=labels[calibration],
        test_rows=list(texts[test]),
        test_labels=labels[test],
        groups=("words", "chars"),
        description="SMS spam: word 1-2-gram TF-IDF + char_wb 2-5-gram TF-IDF -> LogisticRegression.predict",
        sizes=sizes,
        details={"positive_class": "spam", "model": "LogisticRegression(C=10)", "rows_in_file": len(frame)},
    )
