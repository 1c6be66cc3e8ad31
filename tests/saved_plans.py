"""Pipelines whose plans the save/load tests write in one process and load in another.

The fitted vectorizers live in this module's globals, loaded from a joblib file by :func:`use`,
as a serving process would load them: the calibrating process and the loading process each
hold their own copy, and each copy's process state (scikit-learn records ``id(stop_words)`` on
the vectorizer at its first ``transform``) differs between them.
"""

from __future__ import annotations

import joblib
import numpy as np
import scipy.sparse as sp

words = chars = None


def use(path: str) -> None:
    """Load the fitted vectorizers the pipelines read (``{"words": ..., "chars": ...}``)."""
    global words, chars
    fitted = joblib.load(path)
    words, chars = fitted["words"], fitted["chars"]


def classify(model, texts):
    w = words.transform(texts)
    c = chars.transform(texts)
    X = sp.hstack([w, c]).tocsr()
    return model.predict_proba(X)


def label(model, texts):
    w = words.transform(texts)
    c = chars.transform(texts)
    X = sp.hstack([w, c]).tocsr()
    return model.predict(X)


def costly(x):
    for _ in range(40):
        x = np.tanh(x) * 1.01
    return x


def rank(model, cheap, extra):
    a = cheap * 1.0
    b = costly(extra)
    return model.predict_proba(np.hstack([a, b]))
