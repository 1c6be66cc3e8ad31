"""Pipelines written as methods: ``@willow.optimize`` on ``predict(self, texts)``.

``SpamFilter`` holds fitted objects given to its constructor; ``SpamClassifier`` is a
scikit-learn-style estimator whose ``fit`` learns them (trailing-underscore attributes). Both are
decorated at class definition with default options, as a user would write them; the battery
calibrates them through an instance (``instance.predict.calibrate(texts)``).
"""

from __future__ import annotations

import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

import willow


class SpamFilter:
    def __init__(self, word_vectorizer, char_vectorizer, model):
        self.word_vectorizer = word_vectorizer
        self.char_vectorizer = char_vectorizer
        self.model = model

    @willow.optimize
    def predict(self, texts):
        words = self.word_vectorizer.transform(texts)
        chars = self.char_vectorizer.transform(texts)
        X = sp.hstack([words, chars]).tocsr()
        return self.model.predict(X)


class SpamClassifier(ClassifierMixin, BaseEstimator):
    def __init__(self, C=10.0):
        self.C = C

    def fit(self, texts, y):
        self.word_ = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True).fit(texts)
        self.char_ = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True).fit(
            texts
        )
        X = sp.hstack([self.word_.transform(texts), self.char_.transform(texts)]).tocsr()
        self.model_ = clone(LogisticRegression(C=self.C, solver="liblinear")).fit(X, y)
        self.classes_ = self.model_.classes_
        return self

    @willow.optimize
    def predict(self, texts):
        words = self.word_.transform(texts)
        chars = self.char_.transform(texts)
        X = sp.hstack([words, chars]).tocsr()
        return self.model_.predict(X)
