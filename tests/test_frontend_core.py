"""The front end's core: arguments as constants, helper inlining, methods, guards, persistence.

Every optimized pipeline here is compared with the original function on the same inputs (exact
labels; the cascade test checks routed rows with the shared battery), including 0-row and 1-row
batches.
"""

from __future__ import annotations

import ast
import pickle
import warnings

import frontend_core_pipelines as fp
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from equivalence import assert_cascade_equivalent, assert_same_as_original
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

import willow
from willow.frontend.arguments import classify_arguments, is_row_container
from willow.frontend.driver import normalize, parse_function

VOCABULARY = [f"w{i}" for i in range(120)]
EXACT = dict(cascade=False, accuracy_target=0.9, confidence=0.9, cost_repeats=1, importance_repeats=1)


def make_texts(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n):
        words = rng.choice(VOCABULARY, size=rng.integers(2, 10))
        texts.append(" ".join(words) + "!" * int(rng.integers(0, 3)))
        labels.append(int(sum(int(w[1:]) < 40 for w in words) + rng.normal() > 1.5))
    return texts, np.array(labels)


@pytest.fixture(scope="module")
def text_parts():
    train, labels = make_texts(600, 0)
    words = TfidfVectorizer(sublinear_tf=True).fit(train)
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True).fit(train)
    X = sp.hstack([words.transform(train), chars.transform(train)], format="csr")
    model = LogisticRegression(max_iter=500).fit(X, labels)
    calibration, _ = make_texts(500, 1)
    batch, _ = make_texts(80, 2)
    return model, words, chars, calibration, batch


@pytest.fixture(scope="module")
def toxic(text_parts):
    model, words, chars, calibration, _ = text_parts
    return willow.optimize(fp.toxic_arguments, **EXACT).calibrate(model, words, chars, calibration)


def same_labels(pipeline, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = pipeline(*args)
    np.testing.assert_array_equal(out, pipeline.__wrapped__(*args))
    return out


# --------------------------------------------------------------------------- arguments


def test_row_containers_are_recognised():
    for rows in ([1, 2], (1, 2), np.zeros(3), sp.csr_matrix((2, 2)), pd.DataFrame({"a": [1]})):
        assert is_row_container(rows)
    for rows in (pd.Series([1]), pd.Index([1, 2]), pd.array(["a", "b"], dtype="string")):
        assert is_row_container(rows)
    model = LogisticRegression()
    for constant in (model, [model, model], {"a": model}, "text", 3, 0.5, None, np.float64(1.0)):
        assert not is_row_container(constant)


def test_toxic_with_vectorizers_as_arguments_compiles_them(toxic, text_parts):
    model, words, chars, _, batch = text_parts
    assert toxic.graph_.row_parameters == ("texts",)
    assert toxic.plan_.compiled_nodes >= 1
    for rows in (batch, batch[:1], np.array(batch, dtype=object), pd.Series(batch)):
        same_labels(toxic, model, words, chars, rows)
    # 0 rows: exactly what the original does (scikit-learn's TfidfTransformer raises)
    assert_same_as_original(toxic, model, words, chars, [])
    text = toxic.explain()
    assert "Front end" in text and "inlined" in text and "Normalized source" in text
    assert "`word_vect`" in text and "`char_vect`" in text
    assert "TfidfVectorizer" in toxic._compilation.report()


def test_a_swapped_argument_runs_the_original_with_a_warning(toxic, text_parts):
    model, words, chars, _, batch = text_parts
    other = TfidfVectorizer(binary=True).fit(batch + [" ".join(VOCABULARY)])
    with pytest.warns(willow.ModelChangedWarning, match="`word_vect`"):
        out = toxic(model, other, chars, batch)
    np.testing.assert_array_equal(out, fp.toxic_arguments(model, other, chars, batch))
    copy_words, copy_chars = pickle.loads(pickle.dumps((words, chars)))
    assert toxic._guards.check((model, copy_words, copy_chars, batch), {})
    same_labels(toxic, model, copy_words, copy_chars, batch)  # no warning: an equal copy


def test_arguments_and_globals_build_the_same_plan(toxic, text_parts):
    model, words, chars, calibration, batch = text_parts
    fp.WORDS, fp.CHARS = words, chars
    plain = willow.optimize(fp.toxic_globals, **EXACT).calibrate(model, calibration)
    assert plain.plan_.compiled_nodes == toxic.plan_.compiled_nodes
    assert (plain._compilation.fused is None) == (toxic._compilation.fused is None)
    np.testing.assert_array_equal(plain(model, batch), toxic(model, words, chars, batch))


def test_a_cascade_over_arguments_routes_rows_like_the_original(text_parts, cascade_pays):
    model, words, chars, calibration, batch = text_parts
    pipeline = willow.optimize(
        fp.toxic_nested, accuracy_target=0.8, confidence=0.8, cost_repeats=1, require_faster=False
    ).calibrate(model, words, chars, calibration)
    assert pipeline.plan_.cascade, pipeline.plan_.reason
    assert assert_cascade_equivalent(pipeline, model, words, chars, batch) >= 0.75
    assert_same_as_original(pipeline, model, words, chars, [])


def test_constant_arguments_of_other_lengths_and_dicts(tmp_path):
    rng = np.random.default_rng(3)
    cheap = rng.normal(size=(300, 2))
    table = pd.DataFrame({"w": [0.5, -0.25, 9.0]})
    offsets = {"bias": 0.1}
    model = LogisticRegression().fit(cheap, (cheap[:, 0] > 0).astype(int))
    pipeline = willow.optimize(fp.with_table, **EXACT).calibrate(model, table, offsets, cheap)
    assert pipeline.graph_.row_parameters == ("cheap",)
    for rows in (cheap[:50], cheap[:1]):
        same_labels(pipeline, model, table, offsets, rows)
    assert pipeline.plan_.compiled_nodes >= 1  # the table and the dict were compiled as constants
    assert_same_as_original(pipeline, model, table, offsets, cheap[:0])
    with pytest.warns(willow.ModelChangedWarning, match=r"`offsets\[.bias.\]`"):
        out = pipeline(model, table, {"bias": 3.0}, cheap[:50])
    np.testing.assert_array_equal(out, fp.with_table(model, table, {"bias": 3.0}, cheap[:50]))
    # a table of the same length as the rows is rows, unless row_args says otherwise
    square = pd.DataFrame({"w": rng.normal(size=300)})
    named = willow.optimize(fp.with_table, row_args=["cheap"], **EXACT).calibrate(
        model, square, offsets, cheap
    )
    assert named.graph_.row_parameters == ("cheap",)
    same_labels(named, model, square, offsets, cheap[:20])


def test_argument_errors_name_the_argument_and_row_args():
    model = LogisticRegression()
    tree, _ = parse_function(fp.toxic_arguments)
    with pytest.raises(willow.UnsupportedPipelineError, match=r"texts=str.*row_args"):
        classify_arguments(fp.toxic_arguments, tree, dict(model=model, word_vect=1, char_vect=2, texts="x"))
    with pytest.raises(willow.UnsupportedPipelineError, match=r"'word_vect'.*got TfidfVectorizer"):
        classify_arguments(
            fp.toxic_arguments,
            tree,
            dict(model=model, word_vect=TfidfVectorizer(), char_vect=2, texts=["a"]),
            row_args=["word_vect", "texts"],
        )
    with pytest.raises(ValueError, match="row_args must name parameters"):
        classify_arguments(fp.toxic_arguments, tree, dict(texts=["a"]), row_args=["nope"])


def test_strict_false_catches_argument_errors(text_parts):
    model, words, chars, calibration, batch = text_parts
    lenient = willow.optimize(fp.toxic_arguments, strict=False, **EXACT)
    with pytest.warns(willow.UnsupportedPipelineWarning, match="row_args"):
        lenient.calibrate(model, words, chars, "not rows")
    np.testing.assert_array_equal(
        lenient(model, words, chars, batch), fp.toxic_arguments(model, words, chars, batch)
    )
    assert "Runs unoptimized" in lenient.explain()
    lenient.calibrate(model, words, chars, calibration)  # a later calibration with rows succeeds
    assert lenient.plan_.compiled_nodes >= 1 and "Runs unoptimized" not in lenient.explain()
    strict = willow.optimize(fp.toxic_arguments, row_args=["word_vect", "texts"], **EXACT)
    with pytest.raises(willow.UnsupportedPipelineError, match="'word_vect'"):
        strict.calibrate(model, words, chars, batch)


# --------------------------------------------------------------------------- helper inlining


def _normalized(fn, arguments, rows):
    front = normalize(fn, arguments, rows)
    return front, ast.unparse(front.tree)


def test_helpers_are_inlined_and_compute_the_same(text_parts):
    model, words, chars, _, batch = text_parts
    arguments = dict(model=model, word_vect=words, char_vect=chars, texts=batch)
    for fn in (fp.toxic_arguments, fp.toxic_nested):
        front, source = _normalized(fn, arguments, ("texts",))
        assert "vectorizer_transform" not in source and "predict_function" not in source
        assert source.rstrip().splitlines()[-1].strip().startswith("return model.predict(")
        np.testing.assert_array_equal(
            front.function(model, words, chars, batch), fn(model, words, chars, batch)
        )
    # `X = vectorizer_transform(...)`: the helper's returned local takes the caller's name X
    assert "combined" not in _normalized(fp.toxic_arguments, arguments, ("texts",))[1]
    # a leading empty-batch guard is left to the original (which willow runs on 0 rows)
    front, source = _normalized(fp.toxic_opaque, arguments, ("texts",))
    assert "predict_checked(model" not in source and "X.shape[0] == 0" not in source
    assert any("early return for an empty batch" in note for note in front.notes)
    np.testing.assert_array_equal(
        front.function(model, words, chars, batch), fp.toxic_opaque(model, words, chars, batch)
    )
    # other control flow returning values keeps the helper opaque: when it holds the only model
    # call, the refusal names the helper's branch and what to change
    with pytest.raises(
        willow.UnsupportedPipelineError, match=r"inside predict_branching\(\) \(.*:\d+: `if X.shape"
    ):
        _normalized(fp.toxic_branching, arguments, ("texts",))


def test_helper_globals_come_from_the_helpers_module():
    rng = np.random.default_rng(4)
    cheap, extra = rng.normal(size=(40, 2)), rng.normal(size=(40, 3))
    model = LogisticRegression().fit(np.hstack([cheap, extra * 2.0]), (cheap[:, 0] > 0).astype(int))
    front, source = _normalized(
        fp.tabular_helpers, dict(model=model, cheap=cheap, extra=extra), ("cheap", "extra")
    )
    assert "tabular_features" not in source and "scaled" not in source
    assert "SCALE_2" in source and front.bindings["SCALE_2"] == 2.0
    np.testing.assert_array_equal(
        front.function(model, cheap, extra), fp.tabular_helpers(model, cheap, extra)
    )
    # depth: level2 -> level3 -> level4 are inlined; the fourth level (level5) stays a call
    model3 = LogisticRegression().fit(np.hstack([cheap, extra]), (cheap[:, 0] > 0).astype(int))
    front, source = _normalized(fp.deep, dict(model=model3, cheap=cheap, extra=extra), ("cheap", "extra"))
    assert "level3(" not in source and "level4(" not in source and "level5(" in source
    np.testing.assert_array_equal(front.function(model3, cheap, extra), fp.deep(model3, cheap, extra))


def test_a_function_traceable_only_after_inlining_is_accepted_at_calibrate(text_parts):
    model, words, chars, calibration, batch = text_parts
    fp.WORDS, fp.CHARS = words, chars
    pipeline = willow.optimize(fp.toxic_arguments, **EXACT)  # no error at decoration
    assert pipeline.graph_ is None and "calibrate()" in pipeline.explain()
    same_labels(pipeline, model, words, chars, batch[:5])  # uncalibrated: the original


# --------------------------------------------------------------------------- methods


class Optimized(fp.TextClassifier):
    predict = willow.optimize(fp.TextClassifier.predict, **EXACT)


def test_a_decorated_method_binds_self_attributes(text_parts):
    model, words, chars, calibration, batch = text_parts
    clf = Optimized(words, chars, model)
    assert clf.predict(batch[:3]).shape == (3,)  # uncalibrated, through the descriptor
    bound = clf.predict.calibrate(calibration)
    assert bound.plan_.compiled_nodes >= 1
    text = clf.predict.explain()
    assert "`self.words`" in text and "`self.model`" in text
    for rows in (batch, batch[:1]):
        np.testing.assert_array_equal(clf.predict(rows), fp.TextClassifier.predict(clf, rows))
    with pytest.raises(ValueError):  # 0 rows: as the original (scikit-learn refuses them)
        clf.predict([])
    with pytest.raises(ValueError):
        fp.TextClassifier.predict(clf, [])
    twin = Optimized(*pickle.loads(pickle.dumps((words, chars, model))))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(twin.predict(batch), fp.TextClassifier.predict(clf, batch))
    changed = Optimized(TfidfVectorizer().fit(batch), chars, model)
    # the original's own error (a vocabulary of another size), after the warning
    with pytest.raises(ValueError), pytest.warns(willow.ModelChangedWarning, match="`self.words`"):
        changed.predict(batch)


# --------------------------------------------------------------------------- persistence


def test_save_load_and_pickle_round_trips(toxic, text_parts, tmp_path):
    model, words, chars, _, batch = text_parts
    path = tmp_path / "toxic.willow"
    toxic.save(path)
    loaded = willow.load(path, fp.toxic_arguments)
    assert loaded.plan_ == toxic.plan_ and loaded._pending is not None
    words2, chars2 = pickle.loads(pickle.dumps((words, chars)))
    np.testing.assert_array_equal(loaded(model, words2, chars2, batch), toxic(model, words, chars, batch))
    assert loaded._pending is None and loaded._compilation is not None
    again = pickle.loads(pickle.dumps(toxic))
    other = TfidfVectorizer(binary=True).fit(batch + [" ".join(VOCABULARY)])
    with pytest.warns(willow.ModelChangedWarning, match="word_vect"):
        out = again(model, other, chars, batch)
    np.testing.assert_array_equal(out, fp.toxic_arguments(model, other, chars, batch))
    same_labels(again, model, words, chars, batch)
    assert again._compilation is not None


def test_exact_top_k_uses_the_call_s_objects(toxic, text_parts):
    model, words, chars, _, batch = text_parts
    other = TfidfVectorizer(binary=True).fit(batch + [" ".join(VOCABULARY)])
    for word_vect in (words, other):
        X = fp.vectorizer_transform(word_vect, chars, batch)
        scores = model.predict_proba(X)[:, 1]
        expected = np.lexsort((np.arange(len(scores)), -scores))[:5]
        np.testing.assert_array_equal(toxic.top_k(model, word_vect, chars, batch, k=5), expected)


def test_a_top_k_query_over_arguments(text_parts, tmp_path):
    model, words, chars, calibration, batch = text_parts
    rank = willow.optimize(
        fp.toxic_scores, query="topk", k=60, precision_target=0.8, confidence=0.8, cost_repeats=1
    ).calibrate(model, words, chars, calibration)
    assert rank.graph_.row_parameters == ("texts",) and rank._guards.paths == ("word_vect", "char_vect")

    def reference(word_vect, k):
        scores = fp.toxic_scores(model, word_vect, chars, batch)[:, 1]
        return np.lexsort((np.arange(len(scores)), -scores))[:k]

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(rank.top_k(model, words, chars, batch, k=80), reference(words, 80))
    other = TfidfVectorizer(binary=True).fit(batch + [" ".join(VOCABULARY)])
    with pytest.warns(willow.ModelChangedWarning, match="`word_vect`"):
        found = rank.top_k(model, other, chars, batch, k=10)
    np.testing.assert_array_equal(found, reference(other, 10))
    path = tmp_path / "rank.willow"
    rank.save(path)
    loaded = willow.load(path, fp.toxic_scores)
    assert loaded._pending is not None
    np.testing.assert_array_equal(loaded(model, words, chars, batch), rank(model, words, chars, batch))
    assert loaded._pending is None and loaded.plan_ == rank.plan_
