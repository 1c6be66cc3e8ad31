"""Containers of fitted objects read by a literal key (willow.frontend.elements).

``models["word"].transform(texts)`` with ``models`` a dict argument, a module global or an
attribute of ``self``: each element is compiled like a global and checked at every call; a
swapped element or a dict changed in place runs the original with a ModelChangedWarning. Outputs
are compared with the original on the same inputs, 0 and 1 rows included.
"""

from __future__ import annotations

import ast
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from equivalence import assert_same_as_original
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

import willow
from willow.frontend.driver import normalize

EXACT = dict(
    cascade=False,
    require_faster=False,
    accuracy_target=0.9,
    confidence=0.9,
    cost_repeats=1,
    importance_repeats=1,
)
WORDS = [f"w{i}" for i in range(60)]


def texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(2, 8))) for _ in range(n)]


@pytest.fixture(scope="module")
def models():
    train = texts(200, 0)
    word = TfidfVectorizer(sublinear_tf=True).fit(train)
    labels = np.array([int(sum(int(w[1:]) < 25 for w in t.split()) > 2) for t in train])
    clf = LogisticRegression(max_iter=300).fit(word.transform(train), labels)
    return {"word": word, "clf": clf, "unused": None}


def dict_argument(texts, models):
    X = models["word"].transform(texts)
    return models["clf"].predict(X)


MODELS: dict = {}


def dict_global(texts):
    X = MODELS["word"].transform(texts)
    return MODELS["clf"].predict(X)


def nested(texts, config):
    X = config["stages"][0].transform(texts)
    return config["stages"][1].predict(sp.csr_matrix(X))


def mutating(texts, models):
    models["seen"] = len(texts)
    return models["clf"].predict(models["word"].transform(texts))


class DictClassifier:
    def __init__(self, models):
        self.models = models

    @willow.optimize(**EXACT)
    def predict(self, texts):
        X = self.models["word"].transform(texts)
        return self.models["clf"].predict(X)


def quiet(pipeline, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return pipeline(*args)


def test_elements_of_a_dict_argument_are_compiled_and_guarded(models):
    calibration, batch = texts(300, 1), texts(40, 2)
    pipeline = willow.optimize(dict_argument, **EXACT).calibrate(calibration, models)
    assert pipeline.plan_.compiled_nodes >= 1
    assert pipeline._guards.paths == ("models['word']", "models['clf']")
    assert "models_word" in pipeline.graph_.source
    for rows in (batch, batch[:1]):
        np.testing.assert_array_equal(quiet(pipeline, rows, models), dict_argument(rows, models))
    assert_same_as_original(pipeline, [], models)
    quiet(pipeline, batch, dict(models))  # a new dict of the same objects: identity per element
    other = TfidfVectorizer(binary=True).fit(batch + [" ".join(WORDS)])
    swapped = {**models, "word": other}
    with pytest.warns(willow.ModelChangedWarning, match=r"models\['word'\]"):
        out = pipeline(batch, swapped)
    np.testing.assert_array_equal(out, dict_argument(batch, swapped))
    changed = dict(models)
    changed["clf"] = LogisticRegression().fit(models["word"].transform(batch), np.arange(40) % 2)
    with pytest.warns(willow.ModelChangedWarning, match=r"models\['clf'\]"):
        out = pipeline(batch, changed)
    np.testing.assert_array_equal(out, dict_argument(batch, changed))


def test_a_global_dict_changed_in_place_runs_the_original(models):
    MODELS.update(models)
    calibration, batch = texts(300, 3), texts(30, 4)
    pipeline = willow.optimize(dict_global, **EXACT).calibrate(calibration)
    assert pipeline.plan_.compiled_nodes >= 1
    assert pipeline._guards.paths == ("MODELS['word']", "MODELS['clf']")
    np.testing.assert_array_equal(quiet(pipeline, batch), dict_global(batch))
    MODELS["clf"] = LogisticRegression().fit(models["word"].transform(batch), np.arange(30) % 2)
    try:
        with pytest.warns(willow.ModelChangedWarning, match=r"MODELS\['clf'\]"):
            out = pipeline(batch)
        np.testing.assert_array_equal(out, dict_global(batch))
    finally:
        MODELS.update(models)
    np.testing.assert_array_equal(quiet(pipeline, batch), dict_global(batch))


def test_self_attribute_dicts_of_a_decorated_method(models):
    clf = DictClassifier(dict(models))
    clf.predict.calibrate(texts(300, 5))
    batch = texts(25, 6)
    assert "self.models['word']" in clf.predict.explain()
    np.testing.assert_array_equal(quiet(clf.predict, batch), DictClassifier.predict.__wrapped__(clf, batch))
    clf.models["word"] = TfidfVectorizer().fit(batch)
    with pytest.raises(ValueError), pytest.warns(willow.ModelChangedWarning, match=r"self\.models\['word'\]"):
        clf.predict(batch)


def _normalized(fn, arguments, rows):
    front = normalize(fn, arguments, rows)
    return ast.unparse(front.tree), front


def test_nested_chains_bind_the_outermost_element_and_mutated_dicts_stay(models):
    config = {"stages": [models["word"], models["clf"]]}
    source, front = _normalized(nested, {"texts": ["w1"], "config": config}, ("texts",))
    assert "config_stages_0.transform" in source and "config_stages_1.predict" in source
    assert [g.path for g in front.guards] == ["config['stages'][0]", "config['stages'][1]"]
    assert front.function(["w1 w2"], config) == nested(["w1 w2"], config)
    source, front = _normalized(mutating, {"texts": ["w1"], "models": dict(models)}, ("texts",))
    assert "['clf'].predict" in source and not any("[" in g.path for g in front.guards)
