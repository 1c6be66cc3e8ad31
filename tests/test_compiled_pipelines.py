"""compile=True: lowered operators inside real pipelines, verified against the original."""

from __future__ import annotations

import numpy as np
import pipelines
import pytest
import scipy.sparse as sp
from equivalence import assert_cascade_equivalent, assert_same_as_original
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

import willow
from willow.compiler import compile_pass
from willow.compiler.lowering.base import CompiledOperator

# cascade mechanics are under test here; whether a cascade beats the compiled pipeline on a
# few hundred holdout rows is timing, checked by test_cascades' require_faster tests
OPTIONS = dict(
    accuracy_target=0.97, confidence=0.95, cost_repeats=2, importance_repeats=1, require_faster=False
)


@pytest.fixture(scope="module")
def text_setup(sms):
    texts, labels = sms
    order = np.random.default_rng(1).permutation(len(texts))
    train, calib, test = order[:1200], order[1200:4200], order[4200:4600]
    words = TfidfVectorizer(ngram_range=(1, 2), min_df=2).fit(texts[train])
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=2).fit(texts[train])
    pipelines.WORDS, pipelines.CHARS = words, chars
    X = sp.hstack([words.transform(texts[train]), chars.transform(texts[train])]).tocsr()
    model = LogisticRegression(max_iter=1000, C=10).fit(X, labels[train])
    batch = list(texts[test]) + ["", "zzqx unseenword ♥ ünïcödé 漢字", "   ", "A", "ÉCOLE école"]
    return model, list(texts[calib]), batch


def test_compiled_pipeline_without_cascade_is_exact(text_setup):
    model, calib, batch = text_setup
    pipeline = willow.optimize(pipelines.text_pipeline, cascade=False, **OPTIONS).calibrate(model, calib)
    plan = pipeline.plan_
    assert not plan.cascade and "cascade=False" in plan.reason
    assert plan.compiled_nodes >= 1
    assert pipeline.generated_source_ is not None and "_willow.ops." in pipeline.generated_source_
    np.testing.assert_array_equal(pipeline(model, batch), pipelines.text_pipeline(model, batch))
    np.testing.assert_array_equal(pipeline(model, batch[:1]), pipelines.text_pipeline(model, batch[:1]))
    assert_same_as_original(pipeline, model, [])
    assert plan.agreement == 1.0 and plan.holdout_rows > 0
    text = pipeline.explain()
    assert "Compiled nodes:" in text and "Generated kernel for _willow.ops." in text


def test_compiled_cascade_matches_the_battery(text_setup):
    model, calib, batch = text_setup
    pipeline = willow.optimize(pipelines.text_pipeline, **OPTIONS).calibrate(model, calib)
    assert pipeline.plan_.cascade, pipeline.plan_.reason
    assert assert_cascade_equivalent(pipeline, model, batch) >= 0.95
    assert_cascade_equivalent(pipeline, model, np.array(batch, dtype=object))


def test_compiled_plan_survives_save_and_load(text_setup, tmp_path):
    model, calib, batch = text_setup
    pipeline = willow.optimize(pipelines.text_pipeline, **OPTIONS).calibrate(model, calib)
    path = tmp_path / "compiled.willow"
    pipeline.save(path)
    loaded = willow.load(path, pipelines.text_pipeline)
    assert loaded.generated_source_ == pipeline.generated_source_
    np.testing.assert_array_equal(loaded(model, batch), pipeline(model, batch))


def test_replaced_fitted_object_falls_back_to_the_original(text_setup):
    model, calib, batch = text_setup
    pipeline = willow.optimize(pipelines.text_pipeline, cascade=False, **OPTIONS).calibrate(model, calib)
    if not pipeline._compilation.guarded:
        pytest.skip("no vectorizer was compiled faster than Python on this machine")
    original_words = pipelines.WORDS
    try:
        pipelines.WORDS = TfidfVectorizer(ngram_range=(1, 2), min_df=2, vocabulary=original_words.vocabulary_)
        pipelines.WORDS.fit(batch)
        with pytest.warns(willow.ModelChangedWarning, match="replaced since calibration"):
            out = pipeline(model, batch)
        np.testing.assert_array_equal(out, pipelines.text_pipeline(model, batch))
    finally:
        pipelines.WORDS = original_words


def test_unlowerable_options_stay_python_and_are_explained(text_setup):
    model, calib, batch = text_setup
    original = pipelines.WORDS
    try:
        pipelines.WORDS = TfidfVectorizer(
            ngram_range=(1, 2), min_df=2, tokenizer=str.split, token_pattern=None
        )
        pipelines.WORDS.fit(calib)
        X = sp.hstack([pipelines.WORDS.transform(calib), pipelines.CHARS.transform(calib)]).tocsr()
        local_model = LogisticRegression(max_iter=500).fit(
            X, model.predict(sp.hstack([original.transform(calib), pipelines.CHARS.transform(calib)]).tocsr())
        )
        pipeline = willow.optimize(pipelines.text_pipeline, cascade=False, **OPTIONS).calibrate(
            local_model, calib
        )
        report = pipeline._compilation.report()
        assert "Kept as Python:" in report and "tokenizer" in report
        np.testing.assert_array_equal(
            pipeline(local_model, batch), pipelines.text_pipeline(local_model, batch)
        )
    finally:
        pipelines.WORDS = original


def test_a_kernel_that_disagrees_is_refused_with_a_warning(text_setup, monkeypatch):
    model, calib, batch = text_setup
    from willow.compiler import lowering

    real_lower = lowering.lower

    def sabotaged(obj, method):
        op = real_lower(obj, method)
        if method == "transform":
            return CompiledOperator(op.name, op.source, lambda texts: op(texts) * 2.0)
        return op

    monkeypatch.setattr(lowering, "lower", sabotaged)
    with pytest.warns(compile_pass.CompilationWarning, match="did not reproduce"):
        pipeline = willow.optimize(pipelines.text_pipeline, cascade=False, **OPTIONS).calibrate(model, calib)
    assert all(node.operator.name != "TfidfVectorizer.transform" for node in pipeline._compilation.nodes)
    np.testing.assert_array_equal(pipeline(model, batch), pipelines.text_pipeline(model, batch))


def test_fusion_reads_texts_a_shared_statement_defines(text_setup):
    """`comments = list(frame.values)` feeds every vectorizer: it stays, and the fused kernels (the
    approximate model's on every row, the full model's on the uncertain ones) read its result."""
    import pandas as pd

    model, calib, batch = text_setup
    pipeline = willow.optimize(pipelines.listed_text_pipeline, **OPTIONS).calibrate(model, pd.Series(calib))
    assert pipeline._compilation.fused is not None and pipeline.plan_.cascade, pipeline.plan_.reason
    source = pipeline.generated_source_
    assert source.index("comments = list(frame.values)") < source.index("_willow.approximate_text(comments)")
    assert "fused_predict(comments)" in source  # the full model's kernel on the uncertain rows
    for rows in (
        pd.Series(batch, index=range(7, 7 + len(batch))),
        pd.Series(batch[:1]),
    ):
        assert assert_cascade_equivalent(pipeline, model, rows) >= 0.95
    assert_same_as_original(pipeline, model, pd.Series([], dtype=object))  # raises as it does


def test_a_vectorizer_that_timed_slower_alone_is_still_fused(text_setup, monkeypatch):
    """keep_faster drops a kernel that measured slower than scikit-learn on the calibration
    batches (noise, on small ones); the fused kernel, which never runs it alone, keeps it."""
    import dataclasses

    from willow.cascades import calibration

    real = calibration.keep_faster

    def words_timed_slower(compilation, graph, python_costs, compiled_costs):
        first = min(n.statement for n in compilation.nodes if n.statement is not None)
        statements = tuple(
            dataclasses.replace(s, seconds_per_row=0.0) if s.index == first else s
            for s in python_costs.statements
        )
        trimmed = real(
            compilation, graph, dataclasses.replace(python_costs, statements=statements), compiled_costs
        )
        assert len(trimmed[0].nodes) < len(compilation.nodes)
        return trimmed

    monkeypatch.setattr(calibration, "keep_faster", words_timed_slower)
    model, calib, batch = text_setup
    pipeline = willow.optimize(pipelines.text_pipeline, cascade=False, **OPTIONS).calibrate(
        model, calib[:800]
    )
    assert pipeline._compilation.fused is not None
    assert "fused_predict(comments)" in pipeline.generated_source_
    np.testing.assert_array_equal(pipeline(model, batch), pipelines.text_pipeline(model, batch))


def test_load_refuses_a_changed_fitted_object(text_setup, tmp_path):
    model, calib, batch = text_setup
    pipeline = willow.optimize(pipelines.text_pipeline, cascade=False, **OPTIONS).calibrate(model, calib)
    if not pipeline._compilation.guarded:
        pytest.skip("no vectorizer was compiled faster than Python on this machine")
    path = tmp_path / "compiled.willow"
    pipeline.save(path)
    original = pipelines.WORDS
    try:
        pipelines.WORDS = TfidfVectorizer(ngram_range=(1, 1)).fit(calib)
        with pytest.raises(willow.PlanMismatchError, match="not the fitted object"):
            willow.load(path, pipelines.text_pipeline)
    finally:
        pipelines.WORDS = original


def test_text_pipeline_fuses_vectorizers_into_the_model(text_setup, tmp_path):
    model, calib, batch = text_setup
    compiled = willow.optimize(pipelines.text_pipeline, cascade=False, **OPTIONS).calibrate(model, calib)
    assert compiled._compilation.fused is not None
    assert "_willow.ops.fused_predict(comments)" in compiled.generated_source_
    np.testing.assert_array_equal(compiled(model, batch), pipelines.text_pipeline(model, batch))
    cascade = willow.optimize(pipelines.text_pipeline, **OPTIONS).calibrate(model, calib)
    assert cascade.plan_.cascade
    assert "_willow.approximate_text(comments)" in cascade.generated_source_
    assert assert_cascade_equivalent(cascade, model, batch) >= 0.95
    path = tmp_path / "fused.willow"
    cascade.save(path)
    loaded = willow.load(path, pipelines.text_pipeline)
    assert loaded.generated_source_ == cascade.generated_source_
    np.testing.assert_array_equal(loaded(model, batch), cascade(model, batch))
