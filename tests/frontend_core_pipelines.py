"""Pipelines written as people write them, for tests/test_frontend_core.py: fitted objects passed
as arguments, helper functions (same module and imported), methods."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from frontend_core_helpers import level3, scaled

SCALE = 5.0  # shadows nothing in the helpers' module: scaled() must keep reading its own SCALE
WORDS = None  # set by the tests (the globals version of the toxic pipeline)
CHARS = None


def predict_function(model, X):
    """Willump's helper, straight-line."""
    return model.predict(X)


def predict_checked(model, X):
    """A helper whose only branch answers an empty batch: inlined without it."""
    if X.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    return model.predict(X)


def vectorizer_transform(word_vect, char_vect, texts):
    word_features = word_vect.transform(texts)
    char_features = char_vect.transform(texts)
    combined = sp.hstack([word_features, char_features], format="csr")
    return combined


def toxic_arguments(model, word_vect, char_vect, texts):
    """Willump's toxic: the vectorizers are arguments, features built by a helper."""
    X = vectorizer_transform(word_vect, char_vect, texts)
    return predict_function(model, X)


def toxic_scores(model, word_vect, char_vect, texts):
    X = vectorizer_transform(word_vect, char_vect, texts)
    return model.predict_proba(X)


def toxic_globals(model, texts):
    """The same pipeline with the vectorizers as globals (willow's own idiom)."""
    word_features = WORDS.transform(texts)
    char_features = CHARS.transform(texts)
    X = sp.hstack([word_features, char_features], format="csr")
    return model.predict(X)


def toxic_nested(model, word_vect, char_vect, texts):
    return model.predict(vectorizer_transform(word_vect, char_vect, texts))


def toxic_opaque(model, word_vect, char_vect, texts):
    X = vectorizer_transform(word_vect, char_vect, texts)
    return predict_checked(model, X)


def predict_branching(model, X):
    """A helper with control flow returning values: stays an opaque call."""
    if X.shape[1] > 10:
        return model.predict(X)
    return np.zeros(X.shape[0], dtype=np.int64)


def toxic_branching(model, word_vect, char_vect, texts):
    X = vectorizer_transform(word_vect, char_vect, texts)
    return predict_branching(model, X)


def tabular_features(cheap, extra):
    a = cheap * 1.0
    b = scaled(extra)
    return np.hstack([a, b])


def tabular_helpers(model, cheap, extra):
    X = tabular_features(cheap, extra)
    return model.predict(X)


def deep(model, cheap, extra):
    return model.predict(np.hstack([cheap, level2(extra)]))


def level2(values):
    return level3(values) * 1.0


def with_table(model, table, offsets, cheap):
    """``table`` (a frame of another length) and ``offsets`` (a dict) are constants."""
    X = cheap + table["w"].to_numpy()[: cheap.shape[1]] + offsets["bias"]
    return model.predict(X)


class TextClassifier:
    """An sklearn-style class whose fitted parts are attributes."""

    def __init__(self, words, chars, model):
        self.words = words
        self.chars = chars
        self.model = model

    def features(self, texts):
        return sp.hstack([self.words.transform(texts), self.chars.transform(texts)], format="csr")

    def predict(self, texts):
        X = self.features(texts)
        return self.model.predict(X)
