"""Fingerprints of fitted objects are their learned state, stable across processes.

The subprocess test saves one plan of every kind (cascade, compiled, fused text cascade, top-K)
and loads it with ``willow.load`` in a fresh interpreter that loads its own copy of the fitted
vectorizers, as a serving process does.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import joblib
import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import saved_plans
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

import willow
from willow.fingerprints import fingerprint, is_process_state

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(cost_repeats=2, importance_repeats=1)
STOP_WORDS = ["the", "a", "to", "you"]


def test_fingerprint_ignores_recorded_ids_and_memory_layout():
    texts = ["the cat sat", "a dog ran to you", "cats and dogs"] * 20
    vectorizer = TfidfVectorizer(stop_words=list(STOP_WORDS)).fit(texts)
    before = fingerprint(vectorizer)
    copy = pickle.loads(pickle.dumps(vectorizer))
    copy.transform(texts)  # scikit-learn records id(copy.stop_words), a new id in this copy
    assert copy._stop_words_id != vectorizer._stop_words_id
    assert fingerprint(copy) == before
    array = np.arange(12.0).reshape(3, 4)
    assert fingerprint(array.T) == fingerprint(np.ascontiguousarray(array.T))
    assert fingerprint({"b": 1, "a": 2}) == fingerprint({"a": 2, "b": 1})


def test_fingerprint_sees_learned_state():
    texts = ["the cat sat", "a dog ran to you", "cats and dogs"] * 20
    fitted = TfidfVectorizer().fit(texts)
    assert fingerprint(fitted) != fingerprint(TfidfVectorizer().fit(texts[:1]))
    assert fingerprint(fitted) != fingerprint(TfidfVectorizer(min_df=2).fit(texts))
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(200, 3)), rng.integers(0, 2, 200)
    model = LogisticRegression().fit(X, y)
    changed = pickle.loads(pickle.dumps(model))
    changed.coef_[0, 0] += 1e-12
    assert fingerprint(model) == fingerprint(pickle.loads(pickle.dumps(model))) != fingerprint(changed)
    booster = lgb.LGBMClassifier(n_estimators=3, verbose=-1).fit(X, y)
    assert fingerprint(booster) == fingerprint(pickle.loads(pickle.dumps(booster)))
    assert fingerprint(booster) != fingerprint(lgb.LGBMClassifier(n_estimators=4, verbose=-1).fit(X, y))
    frame = pd.DataFrame({"a": [1.0, np.nan], "b": ["x", "y"]})
    assert fingerprint(frame) == fingerprint(frame.copy()) != fingerprint(frame.iloc[::-1])
    assert fingerprint(sp.csr_matrix(X)) == fingerprint(sp.csc_matrix(X).tocsr())


def test_process_state_rule():
    assert is_process_state("_stop_words_id", 140000)
    assert not is_process_state("pad_token_id", 0)  # public: data
    assert not is_process_state("_stop_words_id", "english")  # not an id()
    assert not is_process_state("vocabulary_", {"a": 0})


WORKER = textwrap.dedent(
    """
    import pickle, sys, warnings
    sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
    folder = sys.argv[2]
    warnings.simplefilter("error")  # a plan that falls back to the original must fail here
    import willow, saved_plans
    saved_plans.use(folder + "/fitted.joblib")
    saved_plans.words.transform(["warm up"])  # records this process's id(stop_words)
    with open(folder + "/inputs.pkl", "rb") as fh:
        inputs = pickle.load(fh)
    outputs = {}
    for name, function in (("cascade", "label"), ("compiled", "classify"), ("fused", "classify")):
        pipeline = willow.load(f"{folder}/{name}.plan", getattr(saved_plans, function))
        outputs[name] = (pipeline.plan_, pipeline(inputs["model"], inputs["texts"]))
    pipeline = willow.load(folder + "/topk.plan", saved_plans.rank)
    outputs["topk"] = (pipeline.plan_, pipeline.top_k(inputs["rank_model"], *inputs["rank_rows"], k=10))
    with open(folder + "/outputs.pkl", "wb") as fh:
        pickle.dump(outputs, fh)
    """
)


def test_saved_plans_load_in_another_process(sms, tmp_path):
    texts, labels = sms
    order = np.random.default_rng(2).permutation(len(texts))
    train, calib, test = order[:1000], order[1000:2600], order[2600:2800]
    joblib.dump(
        {
            "words": TfidfVectorizer(stop_words=list(STOP_WORDS), min_df=2).fit(texts[train]),
            "chars": TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 3), min_df=2).fit(texts[train]),
        },
        tmp_path / "fitted.joblib",
    )
    saved_plans.use(str(tmp_path / "fitted.joblib"))  # this process's own copy, as the worker's
    features = sp.hstack(
        [saved_plans.words.transform(texts[train]), saved_plans.chars.transform(texts[train])]
    )
    model = LogisticRegression(max_iter=1000, C=10).fit(features.tocsr(), labels[train])
    calib_texts, batch = list(texts[calib]), list(texts[test]) + ["", "zzqx unseen ♥"]
    plans = {
        "cascade": willow.optimize(
            saved_plans.label, compile=False, accuracy_target=0.95, require_faster=False, **FAST
        ),
        "compiled": willow.optimize(saved_plans.classify, cascade=False, **FAST),
        "fused": willow.optimize(saved_plans.classify, accuracy_target=0.95, require_faster=False, **FAST),
    }
    for name, pipeline in plans.items():
        pipeline.calibrate(model, calib_texts)
        pipeline.save(tmp_path / f"{name}.plan")
    assert plans["cascade"].plan_.cascade and plans["fused"].plan_.cascade, plans["fused"].plan_.reason
    assert plans["compiled"].plan_.compiled_nodes >= 1 and plans["fused"].plan_.compiled_nodes >= 1

    rng = np.random.default_rng(3)
    cheap, extra = rng.normal(size=(2400, 4)), rng.normal(size=(2400, 30))
    X = np.hstack([cheap * 3, saved_plans.costly(extra) * 0.3])
    y = (X @ rng.normal(size=34) + rng.normal(size=2400) > 0).astype(int)
    rank_model = LogisticRegression().fit(X[:800], y[:800])
    topk = willow.optimize(saved_plans.rank, query="topk", k=10, precision_target=0.9, query_size=300, **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        topk.calibrate(rank_model, cheap[800:2200], extra[800:2200])
    assert topk.plan_.approximate, topk.plan_.reason
    topk.save(tmp_path / "topk.plan")
    rank_rows = (cheap[2200:], extra[2200:])
    inputs = {"model": model, "texts": batch, "rank_model": rank_model, "rank_rows": rank_rows}
    (tmp_path / "inputs.pkl").write_bytes(pickle.dumps(inputs))
    (tmp_path / "worker.py").write_text(WORKER)
    done = subprocess.run(
        [sys.executable, str(tmp_path / "worker.py"), str(ROOT), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outputs = pickle.loads((tmp_path / "outputs.pkl").read_bytes())
    for name, pipeline in plans.items():
        plan, served = outputs[name]
        assert plan == pipeline.plan_
        expected = pipeline(model, batch)
        assert served.dtype == expected.dtype and served.shape == expected.shape
        if expected.dtype.kind == "f":
            np.testing.assert_allclose(served, expected, rtol=0, atol=1e-12)
        else:
            np.testing.assert_array_equal(served, expected)
    plan, served = outputs["topk"]
    assert plan == topk.plan_
    np.testing.assert_array_equal(served, topk.top_k(rank_model, *rank_rows, k=10))


def test_an_equal_fitted_object_loaded_again_keeps_the_compiled_plan(tmp_path):
    """Rebinding a compiled global to an equal copy (loaded again from its file) is no change;
    one with other content runs the original, with a warning."""
    from willow.cascades.runtime import ServingRuntime
    from willow.errors import ModelChangedWarning

    texts = ["the cat sat", "a dog ran to you", "cats and dogs"] * 20
    fitted = TfidfVectorizer(stop_words=list(STOP_WORDS)).fit(texts)
    runtime = ServingRuntime(None, None, None, None, objects=(fitted,))
    copy = pickle.loads(pickle.dumps(fitted))
    copy.transform(texts)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert runtime.same_objects(copy) and runtime.same_objects(copy)
    other = TfidfVectorizer().fit(texts[:2])
    for _ in range(2):
        with pytest.warns(ModelChangedWarning, match="other content"):
            assert not runtime.same_objects(other)
