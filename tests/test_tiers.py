"""Accuracy tiers: one calibration, one proven plan per declared target, picked per call.

Every tier is checked like a single-target cascade: its holdout bound reaches its target, the
rows it sends to the full pipeline equal the original exactly and the rows its approximate model
answers equal that model's own output, and it agrees with the original on test rows at least as
often as its target. The plain call is the strictest tier; a scalar target is one tier; plan
files and pickles keep every tier; bad targets and unknown tiers fail with clear errors.
"""

from __future__ import annotations

import ast
import inspect
import pickle
from dataclasses import replace

import cloudpickle
import numpy as np
import pipelines
import pytest
from conftest import make_tabular
from picklable import make_text_pipeline, text_setup
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

import willow
from willow.cascades import tiers
from willow.cascades.calibration import CalibrationResult
from willow.compiler.codegen import stack_expression
from willow.compiler.execution import StatementRunner, bind_arguments
from willow.errors import CalibrationError, UnknownTierError, WillowError

TARGETS = (0.98, 0.95, 0.9)
# compile=False: the cascade logic is what is checked here (compiled text pipelines have their
# own tests); require_faster=False: whether a cascade also measures faster is wall-clock timing.
FAST = dict(confidence=0.9, cost_repeats=2, importance_repeats=1, compile=False, require_faster=False)


@pytest.fixture(scope="module")
def text(sms):
    words, chars, model, calib, batch = text_setup(*sms, n_calib=1600)  # 400 holdout rows
    tiered = make_text_pipeline(words, chars, accuracy_target=TARGETS, **FAST).calibrate(model, calib)
    return {"tiered": tiered, "model": model, "batch": batch}


def tier_routing(pipeline, index, *args):
    """(approximate output, rows the approximate model answers) for tier ``index``, recomputed
    from the traced graph and that tier's plan, independently of the generated code."""
    plan = pipeline.tiers_[index].plan
    approximate = pipeline._approximate if index == 0 else pipeline._tiers[index - 1].approximate
    runner = StatementRunner(pipeline.graph_, pipeline.traced_function)
    ns = runner.run(runner.namespace(bind_arguments(pipeline.__wrapped__, args, {})))
    expression = compile(ast.Expression(stack_expression(pipeline.graph_, plan.selected)), "<test>", "eval")
    approx, confidence = approximate.predict_with_confidence(eval(expression, ns))
    return approx, confidence >= plan.threshold


def test_every_tier_is_proven_on_the_holdout_rows(text):
    results = text["tiered"].tiers_
    assert tuple(r.target for r in results) == TARGETS
    assert results[0].plan is text["tiered"].plan_
    for r in results:
        assert r.plan.cascade, r.plan.reason
        assert r.plan.accuracy_target == r.target
        assert r.plan.holdout_rows > 0
        assert r.lower_bound == r.plan.lower_bound >= r.target
        assert r.early_fraction == r.plan.confident_fraction > 0
        assert r.measured_speedup is not None and r.measured_speedup > 0
    # one calibration: the same split, costs and candidates for every tier, a threshold each
    assert len({(r.plan.train_rows, r.plan.tune_rows, r.plan.holdout_rows) for r in results}) == 1
    assert len({tuple(c.groups for c in r.plan.candidates) for r in results}) == 1
    assert results[0].plan.threshold >= results[1].plan.threshold >= results[2].plan.threshold
    assert results[0].early_fraction <= results[-1].early_fraction


def test_each_tier_serves_its_own_cascade_within_its_target(text):
    pipeline, model, batch = text["tiered"], text["model"], text["batch"]
    original = pipeline.__wrapped__(model, batch)
    for index, target in enumerate(TARGETS):
        served = pipeline.tier(target)(model, batch)
        assert type(served) is type(original) and served.dtype == original.dtype
        assert served.shape == original.shape
        approx, early = tier_routing(pipeline, index, model, batch)
        np.testing.assert_allclose(served[~early], original[~early], rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(served[early], approx[early])
        agreement = np.mean(served.argmax(axis=1) == original.argmax(axis=1))
        assert agreement >= target, (target, agreement)
    # looser tiers answer more rows early on this batch
    fractions = [tier_routing(pipeline, i, model, batch)[1].mean() for i in range(len(TARGETS))]
    assert fractions[0] <= fractions[-1]
    # 1 row takes the same path; 0 rows fail like the original
    one = pipeline.tier(0.9)(model, batch[:1])
    approx, early = tier_routing(pipeline, 2, model, batch[:1])
    expected = approx if early[0] else pipeline.__wrapped__(model, batch[:1])
    np.testing.assert_allclose(one, expected, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError):
        pipeline.__wrapped__(model, [])
    with pytest.raises(ValueError):
        pipeline.tier(0.9)(model, [])


def test_plain_call_is_the_strictest_tier(text):
    pipeline, model, batch = text["tiered"], text["model"], text["batch"]
    strictest = pipeline.tier(0.98)
    assert strictest.tier == 0.98 and strictest.__name__ == pipeline.__wrapped__.__name__
    np.testing.assert_array_equal(strictest(model, batch), pipeline(model, batch))
    np.testing.assert_array_equal(
        pipeline.tier(np.float64(0.95))(model, comments=batch), pipeline.tier(0.95)(model, batch)
    )
    table = pipeline.explain()
    assert "Accuracy tiers (3" in table
    for r in pipeline.tiers_:
        assert f"{r.lower_bound:.4f}" in table and f"{r.early_fraction:.2%}" in table


def assert_same_tiers(restored, pipeline, model, batch):
    assert restored.accuracy_target == TARGETS
    assert [(r.target, r.lower_bound, r.early_fraction, r.plan) for r in restored.tiers_] == [
        (r.target, r.lower_bound, r.early_fraction, r.plan) for r in pipeline.tiers_
    ]
    for target in TARGETS:
        np.testing.assert_array_equal(
            restored.tier(target)(model, batch), pipeline.tier(target)(model, batch)
        )
    np.testing.assert_array_equal(restored(model, batch), pipeline(model, batch))


def test_save_and_load_keep_every_tier(text, tmp_path):
    pipeline, model, batch = text["tiered"], text["model"], text["batch"]
    path = tmp_path / "tiers.willow"
    pipeline.save(path)
    assert_same_tiers(willow.load(path, pipeline.__wrapped__), pipeline, model, batch)


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps])
def test_pickle_keeps_every_tier(text, dumps):
    pipeline, model, batch = text["tiered"], text["model"], text["batch"]
    if dumps is pickle.dumps:  # a closure pickles by value: willow carries it with cloudpickle
        restored = pickle.loads(dumps(pipeline))
    else:
        restored = cloudpickle.loads(dumps(pipeline))
    assert_same_tiers(restored, pipeline, model, batch)


def tabular_pipeline(target, **options):
    cheap, extra, y = make_tabular(2800, seed=3)
    model = LogisticRegression(max_iter=500).fit(
        np.hstack([cheap[:800], pipelines.slow_features(extra[:800])]), y[:800]
    )
    pipeline = willow.optimize(pipelines.numpy_pipeline, accuracy_target=target, **{**FAST, **options})
    return pipeline.calibrate(model, cheap[800:2400], extra[800:2400]), model, cheap[2400:], extra[2400:]


def test_a_tier_of_one_runs_the_original_and_looser_tiers_still_cascade():
    pipeline, model, cheap, extra = tabular_pipeline((1.0, 0.9))
    exact, loose = pipeline.tiers_
    assert not exact.plan.cascade and "accuracy_target=1.0" in exact.plan.reason
    assert exact.lower_bound == 0.0 and exact.early_fraction == 0.0 and exact.measured_speedup is None
    assert loose.plan.cascade and loose.lower_bound >= 0.9, loose.plan.reason
    original = pipeline.__wrapped__(model, cheap, extra)
    np.testing.assert_array_equal(pipeline(model, cheap, extra), original)
    served = pipeline.tier(0.9)(model, cheap, extra)
    assert np.mean(served == original) >= 0.9

    # a scalar target is one tier, planned as that tier of a tiered calibration is
    scalar, _, _, _ = tabular_pipeline(0.9)
    assert scalar.accuracy_target == 0.9
    (only,) = scalar.tiers_
    assert only.target == 0.9 and only.plan is scalar.plan_
    assert "Accuracy tiers" not in scalar.explain()
    np.testing.assert_array_equal(scalar.tier(0.9)(model, cheap, extra), scalar(model, cheap, extra))
    with pytest.raises(UnknownTierError, match=r"declares the accuracy tiers 0\.9 "):
        scalar.tier(0.95)
    # the same split and fitted candidates give the same thresholds (only timings may differ)
    thresholds = {c.groups: c.threshold for c in loose.plan.candidates}
    assert thresholds == {c.groups: c.threshold for c in scalar.plan_.candidates}
    if loose.plan.selected == scalar.plan_.selected:
        assert (loose.plan.threshold, loose.lower_bound) == (scalar.plan_.threshold, scalar.plan_.lower_bound)


def test_a_looser_tier_without_its_own_proof_serves_the_stricter_proven_plan(text):
    pipeline = text["tiered"]
    strict, loose = pipeline.tiers_[0].plan, pipeline.tiers_[2].plan
    failed = replace(loose, cascade=False, reason="it measured slower than the compiled pipeline.")
    failed = replace(failed, lower_bound=0.0, rejected_lower_bound=loose.lower_bound)
    results = [
        CalibrationResult(strict, pipeline.costs_, pipeline._output, pipeline._fingerprint),
        CalibrationResult(failed, pipeline.costs_, pipeline._output, pipeline._fingerprint),
    ]
    kept, borrowed = tiers._inherit_stricter(results)
    assert kept is results[0]
    assert borrowed.plan.cascade and borrowed.plan.accuracy_target == 0.9
    assert (borrowed.plan.selected, borrowed.plan.threshold) == (strict.selected, strict.threshold)
    assert borrowed.plan.lower_bound >= strict.accuracy_target >= 0.9
    assert "it measured slower than the compiled pipeline" in borrowed.plan.reason
    # nothing stricter proven: the tier keeps its own "no cascade"
    alone = tiers._inherit_stricter([results[1], results[1]])
    assert not alone[1].plan.cascade
    # its own cascade missed its bound on the holdout rows: no second look, no cascade (as alone)
    missed = replace(results[1], plan=replace(failed, rejected_lower_bound=0.85))
    assert tiers._inherit_stricter([results[0], missed])[1] is missed
    # the server's accuracy scaler takes the borrowed plan for the stricter tier's (one step)
    from willow.serve.endpoint import _same_plans

    listed = [strict, borrowed.plan, failed, missed.plan]
    fake = type(
        "Tiered", (), {"tiers_": tuple(tiers.TierResult.of(0.99 - i / 100, p) for i, p in enumerate(listed))}
    )
    assert _same_plans(fake, 4) == (0, 0, 2, 2)  # no cascade (either reason): the full pipeline


@pytest.mark.parametrize(
    "target, expected",
    [
        ((0.9, 0.95), r"strictest first.*accuracy_target\[1\]=0\.95 is stricter than.*\(0\.95, 0\.9\)"),
        ((0.95, 0.95), r"accuracy_target\[1\]=0\.95 repeats accuracy_target\[0\]=0\.95"),
        ((1.5, 0.9), r"accuracy_target\[0\] must be in \(0, 1\].*got 1\.5"),
        ([0.99, 0.0], r"accuracy_target\[1\] must be in \(0, 1\].*got 0\.0"),
        ((), r"got an empty sequence"),
        ((0.99, "0.9"), r"accuracy_target\[1\] must be a number in \(0, 1\], got str '0\.9'"),
        ((0.99, True), r"accuracy_target\[1\] must be a number"),
    ],
)
def test_bad_tiers_are_refused_at_decoration(target, expected):
    with pytest.raises(CalibrationError, match=expected) as info:
        willow.optimize(pipelines.numpy_pipeline, accuracy_target=target)
    assert isinstance(info.value, ValueError)


def test_tier_names_the_declared_tiers_when_asked_for_another():
    pipeline = willow.optimize(pipelines.numpy_pipeline, accuracy_target=np.array([0.99, 0.95]))
    assert pipeline.accuracy_target == (0.99, 0.95) and pipeline.get_params()["accuracy_target"] == (
        0.99,
        0.95,
    )
    with pytest.raises(UnknownTierError) as info:
        pipeline.tier(0.9)
    error = info.value
    assert isinstance(error, KeyError) and isinstance(error, ValueError) and isinstance(error, WillowError)
    assert str(error).startswith("tier(0.9): numpy_pipeline declares the accuracy tiers 0.99, 0.95")
    assert "calibrate again" in str(error)
    with pytest.raises(UnknownTierError, match="not 'fast'"):
        pipeline.tier("fast")
    with pytest.raises(willow.NotCalibratedError):
        pipeline.tiers_  # noqa: B018 - the attribute read is what is tested
    # uncalibrated, every declared tier runs the original
    cheap, extra, y = make_tabular(50, seed=0)
    model = LogisticRegression().fit(np.hstack([cheap, pipelines.slow_features(extra)]), y)
    np.testing.assert_array_equal(
        pipeline.tier(0.95)(model, cheap, extra),
        model.predict(np.hstack([cheap, pipelines.slow_features(extra)])),
    )
    with pytest.raises(ValueError, match='query="topk"'):
        willow.optimize(pipelines.numpy_pipeline, accuracy_target=(0.99, 0.9), query="topk", k=5)


def test_a_loaded_plan_the_front_end_rewrote_restores_every_tier_at_the_first_tier_call(tmp_path):
    import frontend_core_pipelines as fp
    from test_frontend_core import VOCABULARY, make_texts

    train, labels = make_texts(600, 0)
    words = TfidfVectorizer(sublinear_tf=True).fit(train)
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True).fit(train)
    model = LogisticRegression(max_iter=500).fit(fp.vectorizer_transform(words, chars, train), labels)
    calibration, _ = make_texts(1600, 1)
    batch, _ = make_texts(100, 2)
    pipeline = willow.optimize(fp.toxic_arguments, accuracy_target=(0.97, 0.9), **FAST)
    pipeline.calibrate(model, words, chars, calibration)
    assert pipeline._frontend is not None and all(r.plan.cascade for r in pipeline.tiers_)
    path = tmp_path / "toxic.willow"
    pipeline.save(path)
    loaded = willow.load(path, fp.toxic_arguments)
    assert loaded._pending is not None and [r.plan for r in loaded.tiers_] == [
        r.plan for r in pipeline.tiers_
    ]
    words2, chars2 = pickle.loads(pickle.dumps((words, chars)))  # equal content, other objects
    expected = pipeline.tier(0.9)(model, words, chars, batch)
    np.testing.assert_array_equal(loaded.tier(0.9)(model, words2, chars2, batch), expected)
    assert loaded._pending is None  # the looser tier's first call rebuilt serving for every tier
    np.testing.assert_array_equal(loaded(model, words2, chars2, batch), pipeline(model, words, chars, batch))
    other = TfidfVectorizer(binary=True).fit(batch + [" ".join(VOCABULARY)])
    with pytest.warns(willow.ModelChangedWarning, match="word_vect"):
        out = loaded.tier(0.9)(model, other, chars, batch)
    np.testing.assert_array_equal(out, fp.toxic_arguments(model, other, chars, batch))


class Scorer:
    def __init__(self, model):
        self.model = model

    @willow.optimize(accuracy_target=(0.97, 0.9))
    def predict(self, cheap, extra):
        a = cheap * 1.0
        b = pipelines.slow_features(extra)
        return self.model.predict(np.hstack([a, b]))


def test_a_method_s_tier_binds_the_instance():
    cheap, extra, y = make_tabular(40, seed=1)
    scorer = Scorer(LogisticRegression().fit(np.hstack([cheap, pipelines.slow_features(extra)]), y))
    serve = scorer.predict.tier(0.9)
    assert serve.tier == 0.9 and list(inspect.signature(serve).parameters) == ["cheap", "extra"]
    np.testing.assert_array_equal(serve(cheap, extra=extra), Scorer.predict.__wrapped__(scorer, cheap, extra))
    with pytest.raises(UnknownTierError, match="0.97, 0.9"):
        scorer.predict.tier(0.5)
