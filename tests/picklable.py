"""Pipelines and data shared by the pickling and Dask tests.

``make_text_pipeline`` returns a closure over its fitted vectorizers, so it is not importable by
name and a pickle must carry it by value (with cloudpickle), as a benchmark's nested pipeline
or a notebook's function would be.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pipelines
import scipy.sparse as sp
from conftest import make_tabular
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

import willow


def make_text_pipeline(words, chars, **options):
    """A word + char TF-IDF + LogisticRegression ``predict_proba`` pipeline (a closure)."""

    @willow.optimize(**options)
    def classify(model, comments):
        w = words.transform(comments)
        c = chars.transform(comments)
        X = sp.hstack([w, c]).tocsr()
        return model.predict_proba(X)

    return classify


def text_setup(texts, labels, n_train=1200, n_calib=2400, n_test=300, seed=1):
    """Fitted vectorizers and model, calibration texts and a test batch with edge-case texts."""
    order = np.random.default_rng(seed).permutation(len(texts))
    train = order[:n_train]
    calib = order[n_train : n_train + n_calib]
    test = order[n_train + n_calib : n_train + n_calib + n_test]
    words = TfidfVectorizer(ngram_range=(1, 2), min_df=2).fit(texts[train])
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=2).fit(texts[train])
    X = sp.hstack([words.transform(texts[train]), chars.transform(texts[train])]).tocsr()
    model = LogisticRegression(max_iter=1000, C=10).fit(X, labels[train])
    batch = list(texts[test]) + ["", "zzqx unseenword ♥ ünïcödé 漢字", "   ", "A"]
    return words, chars, model, list(texts[calib]), batch


def tabular_frame(n, seed, offset=0):
    """``make_tabular`` rows as a frame (columns c0, c1, e0..e5) indexed from ``offset``, and labels."""
    cheap, extra, y = make_tabular(n, seed=seed)
    columns = ["c0", "c1"] + [f"e{i}" for i in range(6)]
    frame = pd.DataFrame(np.hstack([cheap, extra]), columns=columns, index=pd.RangeIndex(offset, offset + n))
    return frame, y


def frame_cascade(seed, **options):
    """``pipelines.frame_pipeline`` calibrated to a cascade, its model and 400 test rows (indexed
    from 2800, the calibration rows from 0)."""
    frame, y = tabular_frame(3200, seed)
    train = frame.iloc[:800]
    features = np.hstack([train[["c0", "c1"]].to_numpy(), pipelines.slow_features(train.iloc[:, 2:])])
    model = LogisticRegression(max_iter=500).fit(features, y[:800])
    options = {"require_faster": False, **options}  # whether it also measures faster is timing
    pipeline = willow.optimize(pipelines.frame_pipeline, accuracy_target=0.9, confidence=0.9, **options)
    pipeline.calibrate(model, frame.iloc[800:2800].reset_index(drop=True))
    assert pipeline.plan_.cascade, pipeline.plan_.reason
    return pipeline, model, frame.iloc[2800:]
