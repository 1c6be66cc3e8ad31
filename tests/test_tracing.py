"""Tracing: the PipelineGraph of supported shapes, and clear errors for unsupported ones."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import willow
from willow.compiler.tracing import trace_pipeline

vec_a = vec_b = None  # placeholders read by the traced functions below (never called here)


def two_groups(model, comments):
    words = vec_a.transform(comments)
    chars = vec_b.transform(comments)
    X = sp.hstack([words, chars]).tocsr()
    return model.predict(X)


def shared_upstream(model, comments):
    cleaned = [c.lower() for c in comments]
    log = []
    log.append(len(comments))
    words = vec_a.transform(cleaned)
    chars = vec_b.transform(cleaned)
    extra = vec_b.transform(comments)
    return model.predict_proba(sp.hstack([words, chars, extra]))


def inline_groups(comments):
    return MODEL.predict(np.hstack([vec_a.transform(comments), vec_b.transform(comments)]))


MODEL = None


def tail_statements(model, comments, weights):
    a = vec_a.transform(comments)
    b = vec_b.transform(comments)
    X = np.column_stack([a, b])
    X = X * weights
    X = np.nan_to_num(X)
    return model.predict(X)


def single_group(model, comments):
    X = vec_a.transform(comments)
    return model.predict(X)


def test_two_groups_graph():
    graph = trace_pipeline(two_groups)
    assert graph.group_names == ("words", "chars")
    assert graph.row_parameters == ("comments",)
    assert graph.model_call.model_parameter == "model"
    assert graph.model_call.method == "predict"
    assert graph.stack is not None and graph.stack.kind == "hstack"
    assert [len(g.statements) for g in graph.groups] == [1, 1]
    assert graph.shared_statements == ()


def test_shared_upstream_is_attributed_once_and_side_effects_kept():
    graph = trace_pipeline(shared_upstream)
    cleaned = next(st for st in graph.statements if "cleaned =" in st.source)
    assert graph.consumers[cleaned.index] == frozenset({"words", "chars"})
    assert cleaned.index in graph.shared_statements
    extra = graph.group("extra")
    assert cleaned.index not in extra.slice
    log_statements = [st for st in graph.statements if "log" in st.source]
    assert len(log_statements) == 2
    assert all(st.index not in graph.consumers for st in log_statements)
    assert graph.model_call.method == "predict_proba"
    # the inline stacking call was hoisted into its own statement
    assert graph.stack is not None and graph.stack.elements == ("words", "chars", "extra")


def test_inline_groups_are_hoisted_with_readable_names():
    graph = trace_pipeline(inline_groups)
    assert graph.group_names == ("vec_a_features", "vec_b_features")
    assert graph.model_call.model_parameter is None  # a global model
    assert graph.row_parameters == ("comments",)


def test_tail_statements_follow_the_stack():
    graph = trace_pipeline(tail_statements)
    assert len(graph.tail) == 2
    assert graph.row_parameters == ("comments", "weights")


def test_single_group_has_no_stack():
    graph = trace_pipeline(single_group)
    assert graph.stack is None
    assert graph.group_names == ("X",)
    assert "single feature group" in graph.notes[0]


def branchy(model, comments):
    if len(comments) > 3:
        comments = [c.lower() for c in comments]
    words = vec_a.transform(comments)
    chars = vec_b.transform(comments)
    return model.predict(sp.hstack([words, chars]))


def no_model_call(model, comments):
    words = vec_a.transform(comments)
    return words.sum()


def early_return(model, comments):
    words = vec_a.transform(comments)
    for w in comments:
        if not w:
            return None
    return model.predict(words)


def starred(model, comments):
    parts = [vec_a.transform(comments)]
    return model.predict(sp.hstack([*parts]))


def reassigned_group_input(model, comments):
    words = vec_a.transform(comments)
    comments = [c.upper() for c in comments]
    chars = vec_b.transform(comments)
    return model.predict(sp.hstack([words, chars]))


@pytest.fixture
def fitted(monkeypatch):
    """Fitted stand-ins for the module's vectorizers, and (model, comments) to calibrate with."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    comments = [f"message {i} with word{i % 7} and word{i % 3}" for i in range(60)]
    a = TfidfVectorizer().fit(comments)
    b = TfidfVectorizer(analyzer="char", ngram_range=(1, 2)).fit(comments)
    monkeypatch.setitem(globals(), "vec_a", a)
    monkeypatch.setitem(globals(), "vec_b", b)
    X = sp.hstack([a.transform(comments), b.transform(comments)]).tocsr()
    model = LogisticRegression().fit(X, np.arange(60) % 2)
    return model, comments


@pytest.mark.parametrize(
    ("fn", "line_text", "reason"),
    [
        (branchy, "if len(comments) > 3", "control flow"),
        (no_model_call, "return words.sum()", "no recognisable model call"),
        (early_return, "return None", "returns or yields before"),
        (starred, "sp.hstack([*parts])", "unpacks"),
    ],
)
def test_unsupported_shapes_name_the_line_and_the_fallback(fn, line_text, reason, fitted):
    # Not traceable as written, but the front end may rewrite it with the real objects, so the
    # refusal comes at calibrate(), when it has had its chance.
    pipeline = willow.optimize(fn)
    assert pipeline.graph_ is None and reason in pipeline.explain()
    with pytest.raises(willow.UnsupportedPipelineError) as info:
        pipeline.calibrate(*fitted)
    message = str(info.value)
    assert reason in message
    assert "strict=False" in message
    with open(__file__, encoding="utf-8") as source:
        lineno = next(i for i, line in enumerate(source, start=1) if line_text in line)
    assert f"{__file__}:{lineno}" in message


def test_strict_false_warns_and_runs_the_original(fitted):
    pipeline = willow.optimize(branchy, strict=False)
    with pytest.warns(willow.UnsupportedPipelineWarning, match="control flow"):
        pipeline.calibrate(*fitted)
    assert pipeline.graph_ is None
    assert "Runs unoptimized" in pipeline.explain()
    model, comments = fitted
    np.testing.assert_array_equal(pipeline(model, comments), branchy(model, comments))


def test_source_unavailable_is_reported():
    fn = eval("lambda model, x: model.predict(x)")
    with pytest.raises(willow.UnsupportedPipelineError, match="Cannot read the source"):
        willow.optimize(fn)


def test_builtin_is_rejected_clearly():
    with pytest.raises(willow.UnsupportedPipelineError, match="source"):
        willow.optimize(len)


def test_reassignment_between_sections_is_caught_at_layout_time():
    from willow.compiler.codegen import layout_cascade

    graph = trace_pipeline(reassigned_group_input)
    layout_cascade(graph, ["words"])  # words runs first, as in the original: consistent
    # With chars first, `words` would run after `comments` is rebound and see the new value.
    with pytest.raises(willow.UnsupportedPipelineError, match="reads `comments`"):
        layout_cascade(graph, ["chars"])


def test_describe_lists_every_statement():
    text = trace_pipeline(shared_upstream).describe()
    assert "group chars+words" in text or "group words+chars" in text
    assert "[kept]" in text and "[model]" in text
