"""What a function does with its model's output, and guards around the pipeline (issue #13.2, #13.7).

Every style is calibrated with ``willow.optimize`` and compared with the original on fresh rows:
exactly where no cascade is served, and, where one is, row by row: the rows the full pipeline
answered equal the original's, the rows the approximate model answered equal the post-processing
of its own output, and the agreement reaches the target. 0-row and 1-row batches too.
"""

from __future__ import annotations

import ast
import logging
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import make_tabular
from equivalence import assert_same_as_original
from pipelines import slow_features
from sklearn.linear_model import LogisticRegression

import willow
from willow.cascades.approximate import ApproximateModel
from willow.cascades.outputs import OutputSpec, find_margin
from willow.compiler.codegen import stack_expression
from willow.compiler.execution import StatementRunner, bind_arguments
from willow.compiler.tracing import trace_pipeline
from willow.errors import ModelChangedWarning

N_TRAIN, N_CALIBRATE, N_TEST = 600, 1600, 300
OPTIONS = dict(
    accuracy_target=0.9,
    confidence=0.9,
    cost_repeats=2,
    importance_repeats=1,
    compile=False,
    require_faster=False,
)
THRESHOLD = 0.3
CLASS_NAMES = ["ham", "spam"]
logger = logging.getLogger("willow.tests.outputs")


# --------------------------------------------------------------------------- styles


def assign_then_return(model, cheap, extra):
    a = cheap * 1.0
    b = slow_features(extra)
    X = np.hstack([a, b])
    preds = model.predict(X)
    return preds


def proba_column(model, cheap, extra):
    a = cheap * 1.0
    b = slow_features(extra)
    return model.predict_proba(np.hstack([a, b]))[:, 1]


def threshold_literal(model, cheap, extra):
    a = cheap * 1.0
    b = slow_features(extra)
    X = np.hstack([a, b])
    proba = model.predict_proba(X)
    return proba[:, 1] > 0.3


def threshold_global_left(model, cheap, extra):
    a = cheap * 1.0
    b = slow_features(extra)
    X = np.hstack([a, b])
    proba = model.predict_proba(X)
    return THRESHOLD <= proba[:, 1]  # noqa: SIM300 - the constant on the left is the point


def threshold_below(model, cheap, extra):
    a = cheap * 1.0
    b = slow_features(extra)
    X = np.hstack([a, b])
    proba = model.predict_proba(X)
    return proba[:, 1] < THRESHOLD


def threshold_at_most(model, cheap, extra):
    a = cheap * 1.0
    b = slow_features(extra)
    X = np.hstack([a, b])
    return 0.3 >= model.predict_proba(X)[:, 1]  # noqa: SIM300 - the constant on the left


def where_labels(model, cheap, extra):
    a = cheap * 1.0
    b = slow_features(extra)
    X = np.hstack([a, b])
    p = model.predict_proba(X)
    return np.where(p[:, 1] > THRESHOLD, "spam", "ham")


def several_statements(model, cheap, extra):
    a = cheap * 1.0
    b = slow_features(extra)
    X = np.hstack([a, b])
    proba = model.predict_proba(X)
    logger.debug("scored %d rows", len(proba))
    positive = proba[:, 1]
    flagged = positive >= THRESHOLD
    return flagged.astype(np.int64)


def argmax_method(model, cheap, extra):
    a = cheap * 1.0
    b = slow_features(extra)
    X = np.hstack([a, b])
    return model.predict_proba(X).argmax(axis=1)


def argmax_function(model, cheap, extra):
    a = cheap * 1.0
    b = slow_features(extra)
    X = np.hstack([a, b])
    proba = model.predict_proba(X)
    return np.argmax(proba, axis=1)


def to_list(model, cheap, extra):
    a = cheap * 1.0
    b = slow_features(extra)
    X = np.hstack([a, b])
    return model.predict(X).tolist()


def proba_frame(model, cheap, extra):
    a = cheap * 1.0
    b = slow_features(extra)
    X = np.hstack([a, b])
    proba = model.predict_proba(X)
    return pd.DataFrame(proba, columns=CLASS_NAMES)


def decision_positive(model, cheap, extra):
    a = cheap * 1.0
    b = slow_features(extra)
    X = np.hstack([a, b])
    return model.decision_function(X) > 0


def decision_threshold(model, cheap, extra):
    a = cheap * 1.0
    b = slow_features(extra)
    X = np.hstack([a, b])
    margin = model.decision_function(X)
    return margin > -0.8


def decision_scores(model, cheap, extra):
    a = cheap * 1.0
    b = slow_features(extra)
    X = np.hstack([a, b])
    return model.decision_function(X)


def sorted_labels(model, cheap, extra):
    a = cheap * 1.0
    b = slow_features(extra)
    X = np.hstack([a, b])
    preds = model.predict(X)
    return np.sort(preds)


def guarded(model, cheap, extra):
    """Guards that feed no feature: kept and run."""
    if len(cheap) == 0:
        return np.array([], dtype=bool)
    assert cheap.shape[1] == 2, "two cheap columns"
    logger.debug("batch of %d rows", len(cheap))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        a = cheap * 1.0
        b = slow_features(extra)
        X = np.hstack([a, b])
    print_rows(X)
    proba = model.predict_proba(X)
    return proba[:, 1] > THRESHOLD


SEEN: list[int] = []


def print_rows(X):
    SEEN.append(X.shape[0])


CHEAP = ["c0", "c1"]
EXTRA = [f"e{i}" for i in range(6)]


def frame_series(model, frame):
    a = frame[CHEAP].to_numpy() * 1.0
    b = slow_features(frame[EXTRA].to_numpy())
    X = np.hstack([a, b])
    preds = model.predict(X)
    return pd.Series(preds, index=frame.index, name="label")


# --------------------------------------------------------------------------- data and helpers


@pytest.fixture(scope="module")
def data():
    cheap, extra, y = make_tabular(N_TRAIN + N_CALIBRATE + N_TEST, seed=3)
    parts = np.split(np.arange(len(y)), [N_TRAIN, N_TRAIN + N_CALIBRATE])
    (tc, te, ty), cal, test = [(cheap[p], extra[p], y[p]) for p in parts]
    model = LogisticRegression(max_iter=500).fit(np.hstack([tc, slow_features(te)]), ty)
    return model, cal, test


@pytest.fixture(scope="module")
def data3():
    cheap, extra, y = make_tabular(N_TRAIN + N_CALIBRATE + N_TEST, seed=4, n_classes=3)
    parts = np.split(np.arange(len(y)), [N_TRAIN, N_TRAIN + N_CALIBRATE])
    (tc, te, ty), cal, test = [(cheap[p], extra[p], y[p]) for p in parts]
    model = LogisticRegression(max_iter=500).fit(np.hstack([tc, slow_features(te)]), ty)
    return model, cal, test


def _same(a, b):
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, pd.Series):
        pd.testing.assert_series_equal(a, b)
    elif isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b)
    else:
        x, y = np.asarray(a), np.asarray(b)
        assert x.dtype == y.dtype and x.shape == y.shape
        if x.dtype.kind == "f":
            np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12)
        else:
            np.testing.assert_array_equal(x, y)


def check_against_original(pipeline, *args):
    """Served vs original on one batch; returns the agreement of the returned decisions."""
    original = pipeline.__wrapped__(*args)
    served = pipeline(*args)
    if not pipeline.plan_.cascade:
        _same(served, original)
        return 1.0
    assert type(served) is type(original)
    graph = pipeline.graph_
    runner = StatementRunner(graph, pipeline.__wrapped__)
    ns = runner.run(runner.namespace(bind_arguments(pipeline.__wrapped__, args, {})))
    expression = compile(ast.Expression(stack_expression(graph, pipeline.plan_.selected)), "<test>", "eval")
    approx, confidence = pipeline._approximate.predict_with_confidence(eval(expression, ns))
    confident = confidence >= pipeline.plan_.threshold
    approximate_answer = np.asarray(runner.post(ns, approx))
    got, want = np.asarray(served), np.asarray(original)
    np.testing.assert_array_equal(got[~confident], want[~confident])
    np.testing.assert_array_equal(got[confident], approximate_answer[confident])
    return float(pipeline._output.agreement(served, original).mean())


def calibrate(fn, model, cal, **options):
    cheap, extra, _ = cal
    return willow.optimize(fn, **{**OPTIONS, **options}).calibrate(model, cheap, extra)


def check_batches(pipeline, model, test):
    cheap, extra, _ = test
    agreement = check_against_original(pipeline, model, cheap, extra)
    check_against_original(pipeline, model, cheap[:1], extra[:1])
    assert_same_as_original(pipeline, model, cheap[:0], extra[:0])  # 0 rows: as the original
    return agreement


# --------------------------------------------------------------------------- tests


CASCADED = [
    assign_then_return,
    threshold_literal,
    threshold_global_left,
    threshold_below,
    threshold_at_most,
    where_labels,
    several_statements,
    to_list,
    proba_frame,
    decision_positive,
    decision_threshold,
]


@pytest.mark.parametrize("fn", CASCADED, ids=lambda f: f.__name__)
def test_cascaded_styles_agree_within_the_target(fn, data):
    model, cal, test = data
    pipeline = calibrate(fn, model, cal)
    assert pipeline.plan_.cascade, pipeline.plan_.reason
    assert pipeline.plan_.lower_bound >= 0.9
    agreement = check_batches(pipeline, model, test)
    assert agreement >= 0.9
    assert "Generated source" in pipeline.explain()


def test_thresholds_are_recognised_with_the_constant_on_either_side(data):
    model, cal, _ = data
    expected = {
        threshold_literal: (1, 0.3, None),
        threshold_global_left: (1, 0.3, "THRESHOLD"),
        threshold_below: (1, 0.3, "THRESHOLD"),
        threshold_at_most: (1, 0.3, None),
        where_labels: (1, 0.3, "THRESHOLD"),
        several_statements: (1, 0.3, "THRESHOLD"),
        decision_threshold: (None, -0.8, None),
        decision_positive: (None, 0.0, None),
    }
    for fn, (column, threshold, source) in expected.items():
        graph = trace_pipeline(fn)
        n_columns = None if graph.model_call.method == "decision_function" else 2
        found = find_margin(graph.post.statements, graph.post.variable, fn.__globals__, n_columns, set())
        assert found == (column, threshold, source), fn.__name__
    assert (
        find_margin(trace_pipeline(argmax_method).post.statements, "predict_proba_output", {}, 2, set())
        is None
    )


def test_threshold_confidence_is_the_distance_from_the_threshold_not_from_one_half():
    class Fixed:
        classes_ = np.array([0, 1])

        def predict_proba(self, X):
            p = np.asarray(X, dtype=float)[:, 0]
            return np.column_stack([1 - p, p])

    proba = np.array([[0.5, 0.5], [0.7, 0.3]])
    plain = OutputSpec.from_output("predict_proba", proba, Fixed())
    thresholded = OutputSpec(plain.method, plain.dtype, 2, plain.classes, "post", 1, 0.3, None)
    X = np.array([[0.5], [0.31], [0.29], [0.9]])
    _, at_half = ApproximateModel(Fixed(), plain).predict_with_confidence(X)
    rows, at_threshold = ApproximateModel(Fixed(), thresholded).predict_with_confidence(X)
    np.testing.assert_allclose(at_half, [0.5, 0.69, 0.71, 0.9])
    np.testing.assert_allclose(at_threshold, [0.2, 0.01, 0.01, 0.6])
    # a row at 0.5 is confident and rows next to 0.3 are not, for any cut between 0.01 and 0.2
    assert at_threshold[0] > at_threshold[1] and at_threshold[0] > at_threshold[2]
    np.testing.assert_allclose(rows, np.column_stack([1 - X[:, 0], X[:, 0]]))


def test_served_threshold_cascade_routes_rows_near_the_threshold_to_the_full_model(data):
    model, cal, test = data
    pipeline = calibrate(threshold_literal, model, cal)
    assert pipeline.plan_.cascade, pipeline.plan_.reason
    assert pipeline._output.margin_threshold == 0.3 and pipeline._output.margin_column == 1
    cheap, extra, _ = test
    p = pipeline.approximate_model_.predict_proba(cheap * 1.0)[:, 1]
    confident = np.abs(p - 0.3) >= pipeline.plan_.threshold
    assert not confident[np.abs(p - 0.3) < pipeline.plan_.threshold].any()
    near_half = np.abs(p - 0.5) < 0.1
    assert near_half.any() and confident[near_half].all()
    served = pipeline(model, cheap, extra)
    np.testing.assert_array_equal(served[confident], p[confident] > 0.3)


def test_changed_threshold_global_runs_the_original(data, monkeypatch):
    model, cal, test = data
    pipeline = calibrate(threshold_global_left, model, cal)
    assert pipeline.plan_.cascade, pipeline.plan_.reason
    cheap, extra, _ = test
    monkeypatch.setitem(threshold_global_left.__globals__, "THRESHOLD", 0.8)
    with pytest.warns(ModelChangedWarning, match="threshold"):
        served = pipeline(model, cheap, extra)
    np.testing.assert_array_equal(served, threshold_global_left(model, cheap, extra))


@pytest.mark.parametrize("fn", [proba_column, decision_scores], ids=lambda f: f.__name__)
def test_numbers_are_served_exactly_without_a_cascade(fn, data):
    model, cal, test = data
    pipeline = calibrate(fn, model, cal)
    assert not pipeline.plan_.cascade
    assert "returns numbers" in pipeline.plan_.reason
    assert "returns numbers" in pipeline.explain()
    check_batches(pipeline, model, test)


def test_numbers_compiled_pipeline_applies_the_post_processing(data):
    model, cal, test = data
    pipeline = calibrate(proba_column, model, cal, compile=True)
    assert not pipeline.plan_.cascade
    if pipeline.generated_source_ is not None:  # a kernel measured faster: the compiled pipeline serves
        assert "[:, 1]" in pipeline.generated_source_
    check_batches(pipeline, model, test)


def test_output_that_is_not_row_by_row_is_not_cascaded(data):
    model, cal, test = data
    pipeline = calibrate(sorted_labels, model, cal)
    assert not pipeline.plan_.cascade
    assert "not row by row" in pipeline.plan_.reason
    check_batches(pipeline, model, test)


@pytest.mark.parametrize("fn", [argmax_method, argmax_function], ids=lambda f: f.__name__)
def test_argmax_styles_multiclass(fn, data3):
    model, cal, test = data3
    pipeline = calibrate(fn, model, cal)
    assert pipeline.plan_.cascade, pipeline.plan_.reason
    assert pipeline._output.decision == "post"
    assert check_batches(pipeline, model, test) >= 0.9


def test_guards_are_kept_and_the_early_return_answers_empty_input(data):
    model, cal, test = data
    pipeline = calibrate(guarded, model, cal)
    assert pipeline.plan_.cascade, pipeline.plan_.reason
    graph = pipeline.graph_
    assert len(graph.prologue) == 1 and len(graph.contexts) == 1
    source = pipeline.generated_source_
    assert "if len(cheap) == 0:" in source and "with warnings.catch_warnings():" in source
    assert "assert cheap.shape[1] == 2" in source and "print_rows(X)" in source
    cheap, extra, _ = test
    assert check_against_original(pipeline, model, cheap, extra) >= 0.9
    check_against_original(pipeline, model, cheap[:1], extra[:1])
    _same(pipeline(model, cheap[:0], extra[:0]), guarded(model, cheap[:0], extra[:0]))
    del SEEN[:]
    pipeline(model, cheap, extra)
    assert SEEN and all(0 < n <= len(cheap) for n in SEEN)  # the uncertain rows' matrix
    filters = list(warnings.filters)
    pipeline(model, cheap, extra)
    assert warnings.filters == filters  # the catch_warnings block was entered and left
    with pytest.raises(AssertionError, match="two cheap columns"):
        pipeline(model, np.hstack([cheap, cheap]), extra)


def test_series_with_the_frame_index(data):
    model, cal, test = data

    def frame(part, offset):
        cheap, extra, _ = part
        columns = dict(zip(CHEAP, cheap.T)) | dict(zip(EXTRA, extra.T))
        return pd.DataFrame(columns, index=pd.Index(np.arange(len(cheap)) * 3 + offset, name="id"))

    pipeline = willow.optimize(frame_series, **OPTIONS).calibrate(model, frame(cal, 7))
    assert pipeline.plan_.cascade, pipeline.plan_.reason
    batch = frame(test, 1000)
    served = pipeline(model, batch)
    original = frame_series(model, batch)
    pd.testing.assert_index_equal(served.index, original.index)
    assert served.name == "label"
    assert float((served == original).mean()) >= 0.9
    _same(pipeline(model, batch.iloc[:1]), frame_series(model, batch.iloc[:1]))
    assert_same_as_original(pipeline, model, batch.iloc[:0])  # 0 rows: as the original


def test_tracing_refuses_post_processing_that_reads_features():
    def reads_features(model, cheap, extra):
        a = cheap * 1.0
        b = slow_features(extra)
        X = np.hstack([a, b])
        preds = model.predict(X)
        return preds * X[:, 0]

    with pytest.raises(willow.UnsupportedPipelineError, match="reads `X`"):
        trace_pipeline(reads_features)


def test_guard_firing_on_calibration_rows_is_refused(data):
    model, cal, _ = data

    def small_batches(model, cheap, extra):
        if len(cheap) < 1000:
            return np.zeros(len(cheap), dtype=np.int64)
        a = cheap * 1.0
        b = slow_features(extra)
        return model.predict(np.hstack([a, b]))

    with pytest.raises(willow.UnsupportedPipelineError, match="early return"):
        calibrate(small_batches, model, cal)


def test_save_load_and_pickle_keep_the_output_handling(data, tmp_path):
    import pickle

    model, cal, test = data
    pipeline = calibrate(threshold_global_left, model, cal)
    assert pipeline.plan_.cascade, pipeline.plan_.reason
    assert "distance of column 1 from the threshold 0.3" in pipeline.explain()
    cheap, extra, _ = test
    served = pipeline(model, cheap, extra)
    pipeline.save(tmp_path / "plan.willow")
    loaded = willow.load(tmp_path / "plan.willow", threshold_global_left)
    assert loaded.generated_source_ == pipeline.generated_source_
    np.testing.assert_array_equal(loaded(model, cheap, extra), served)
    unpickled = pickle.loads(pickle.dumps(pipeline))
    np.testing.assert_array_equal(unpickled(model, cheap, extra), served)


def test_generated_functions_apply_the_post_processing_at_every_exit():
    from willow.compiler.codegen import build_cascade_source, build_compiled_source, layout_cascade, render

    graph = trace_pipeline(where_labels)
    compiled = render(build_compiled_source(graph))
    assert compiled.count("return np.where(p[:, 1] > THRESHOLD, 'spam', 'ham')") == 1  # 0 rows: the original
    assert "p = model.predict_proba(X)" in compiled
    cascade = render(build_cascade_source(graph, layout_cascade(graph, ["a"]), 0.1, (), None, "THRESHOLD"))
    assert (
        cascade.count("return np.where(p[:, 1] > THRESHOLD, 'spam', 'ham')") == 2
    )  # confident, merged (0 rows run the original)
    assert "_willow.same_threshold(THRESHOLD)" in cascade
    assert "p = _willow.merge(approx_output, uncertain, model.predict_proba(X))" in cascade


def two_model_calls(model, cheap, extra):
    X = np.hstack([cheap * 1.0, slow_features(extra)])
    return model.predict(X) + model.predict_proba(X)[:, 1]


def late_early_return(model, cheap, extra):
    a = cheap * 1.0
    if len(a) == 0:
        return []
    return model.predict(np.hstack([a, slow_features(extra)]))


def context_reads_a_local(model, cheap, extra):
    name = "features"
    with open_context(name):
        a = cheap * 1.0
    return model.predict(np.hstack([a, slow_features(extra)]))


def open_context(name):
    return warnings.catch_warnings()


@pytest.mark.parametrize(
    ("fn", "reason"),
    [
        (two_model_calls, "calls the model more than once"),
        (late_early_return, "returns or yields before the final model call"),
        (context_reads_a_local, "control flow"),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_tracing_still_refuses_what_it_cannot_keep_exact(fn, reason):
    with pytest.raises(willow.UnsupportedPipelineError, match=reason):
        trace_pipeline(fn)


def test_tracing_splits_guards_contexts_and_post_processing():
    graph = trace_pipeline(guarded)
    assert [type(n).__name__ for n in graph.prologue] == ["If"]
    assert ast.unparse(graph.contexts[0]) == "warnings.catch_warnings()"
    assert graph.post.variable == "proba" and graph.post.reads == {"THRESHOLD"}
    assert graph.group_names == ("a", "b") and graph.row_parameters == ("cheap", "extra")
    kept = [st.source for st in graph.statements if st.index not in graph.consumers]
    assert any(s.startswith("assert cheap.shape[1] == 2") for s in kept)
    assert "[output]  return proba[:, 1] > THRESHOLD" in graph.describe()
    assert trace_pipeline(assign_then_return).post is None  # `preds = ...; return preds`
