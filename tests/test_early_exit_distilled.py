"""Cheap model first (willow.early_exit.distilled): a distilled logistic regression or small
LightGBM answers the rows it is sure of, the full ensemble the rest.

Tiny models (tests/test_early_exit.py's data: NaN, a categorical feature); each served row must
be either the full library model's label or exactly the cheap model's own label, and the plan
must meet the bound it reports on its holdout rows.
"""

from __future__ import annotations

import pickle

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from test_early_exit import CAT, LGB, X_TRAIN, Y_BIN, Y_MULTI, _data, model_pipeline, tabular  # noqa: F401

from willow.compiler.lowering.trees import SMALL_BATCH_ROWS
from willow.early_exit import distilled
from willow.early_exit.distilled import DistilledCascade, DistilledPlan, calibrate_distilled
from willow.errors import CalibrationError

TARGET = 0.9
SMALL = {"n_estimators": 3, "num_leaves": 4, "learning_rate": 0.3}  # a cheap model that is unsure often


@pytest.fixture(scope="module")
def models():
    return {
        "binary": lgb.LGBMClassifier(**LGB).fit(X_TRAIN, Y_BIN, categorical_feature=[CAT]),
        "multiclass": lgb.LGBMClassifier(**{**LGB, "n_estimators": 10}).fit(X_TRAIN, Y_MULTI),
    }


def _expected(cascade: DistilledCascade, model, X) -> tuple[np.ndarray, np.ndarray]:
    """What the cascade must return, from the libraries: the cheap model's own label where its
    margin reaches the threshold (logistic: rows without a missing value), the full model's
    elsewhere; and which rows the cheap model answers."""
    plan = cascade.plan
    data = np.asarray(X, dtype=float)
    if plan.kind == "logistic":
        scores = data @ plan.weights + plan.intercept
        sure = np.isfinite(data).all(axis=1)
    else:
        scores = plan.cheap.predict(data, raw_score=True).reshape(len(data), -1)
        sure = np.ones(len(data), dtype=bool)
    if scores.shape[1] == 1:
        margin, index = np.abs(scores[:, 0]), (scores[:, 0] > 0).astype(int)
    else:
        top = np.sort(scores, axis=1)
        margin, index = top[:, -1] - top[:, -2], np.argmax(scores, axis=1)
    sure &= margin >= plan.threshold
    return np.where(sure, plan.labels[index], model.predict(X)), sure


@pytest.mark.parametrize(("name", "kind"), [("binary", "logistic"), ("multiclass", "lightgbm")])
def test_cheap_model_first_meets_its_proof_and_matches_the_libraries(models, name, kind):
    model = models[name]
    cascade = calibrate_distilled(
        model, _data(2400, 31)[0], accuracy_target=TARGET, kinds=(kind,), lightgbm_size=SMALL
    )
    plan = cascade.plan
    assert plan.kind == kind and not plan.exact and plan.lower_bound >= TARGET, plan.table()
    assert 0.0 < plan.exit_fraction < 1.0
    fresh = _data(700, 32)[0]
    expected, sure = _expected(cascade, model, fresh)
    output, answered = cascade.run(fresh)
    np.testing.assert_array_equal(answered, sure)
    np.testing.assert_array_equal(output, expected)
    assert sure.any() and (~sure).any()
    # a frame gives the same labels; batches of up to 256 rows run the full ensemble (exact)
    np.testing.assert_array_equal(cascade.run(pd.DataFrame(fresh))[0], expected)
    np.testing.assert_array_equal(cascade(fresh), expected)
    np.testing.assert_array_equal(cascade(fresh[:1]), model.predict(fresh[:1]))
    np.testing.assert_array_equal(cascade.run(fresh[:1])[0], expected[:1])
    for call in (model.predict, cascade.run, cascade):  # no rows: the library's own error
        with pytest.raises(ValueError, match="0 sample"):
            call(fresh[:0])
    assert (output == model.predict(fresh)).mean() >= TARGET - 0.05
    text = plan.table()
    assert "Cheap model first" in text and f"{plan.threshold:.4g}" in text and "holdout" in text


def test_rows_with_missing_values_go_to_the_full_model(models):
    model = models["binary"]
    cascade = calibrate_distilled(model, _data(2400, 33)[0], accuracy_target=TARGET, kinds=("logistic",))
    fresh = _data(500, 34)[0]
    _, answered = cascade.run(fresh)
    assert not answered[np.isnan(fresh).any(axis=1)].any()


def test_cheap_model_first_refuses_what_it_cannot_prove(models):
    model = models["binary"]
    X = _data(600, 35)[0]
    with pytest.raises(CalibrationError, match="below 1.0"):
        calibrate_distilled(model, X, accuracy_target=1.0)
    with pytest.raises(TypeError, match="predict"):
        calibrate_distilled(model, X, method="predict_proba")
    with pytest.raises(CalibrationError, match="Too few calibration rows"):
        calibrate_distilled(model, X[:40], accuracy_target=0.99)


def _fixed(fns, repeats):
    """Fixed timings for ``interleaved_seconds``: the last one is the cheapest. Each call still
    runs: a failing candidate must fail here too."""
    for fn in fns:
        fn()
    return [float(len(fns) - i) for i in range(len(fns))]


def _fixed_samples(fns, repeats):
    """:func:`_fixed` as the planner's ``interleaved_samples``: ``repeats`` equal runs each."""
    return [[seconds] * repeats for seconds in _fixed(fns, repeats)]


def _serving(pipeline) -> DistilledCascade:
    from willow.early_exit.planner import _cascade_of

    cascade = _cascade_of(pipeline._compilation)
    assert isinstance(cascade, DistilledCascade), pipeline.explain()
    return cascade


def test_optimize_serves_cheap_model_first_and_keeps_it(models, monkeypatch, tmp_path):
    """The planner calibrates both model cascades and serves the one whose pipeline measured
    fastest (cheap model first, by the timings fixed here); it survives save/load and pickling
    with the same labels."""
    import willow
    from willow.early_exit import distilled, planner

    monkeypatch.setattr(planner, "interleaved_samples", _fixed_samples)  # the planner's comparison only
    monkeypatch.setattr(distilled, "LIGHTGBM_SIZE", SMALL)  # fewer trees to compile
    model = models["multiclass"]
    pipeline = willow.optimize(model_pipeline, accuracy_target=TARGET, require_faster=False, early_exit=True)
    pipeline.calibrate(model, _data(2400, 36)[0])
    cascade = _serving(pipeline)
    assert "Compared (us/row): model cascade" in pipeline.plan_.reason, pipeline.plan_.reason
    assert "answers first" in pipeline.plan_.reason and "Cheap model first" in pipeline.explain()
    fresh = _data(600, 37)[0]
    expected = cascade.run(fresh)[0]
    np.testing.assert_array_equal(pipeline(model, fresh), expected)
    np.testing.assert_array_equal(pipeline(model, fresh[:1]), model.predict(fresh[:1]))
    path = tmp_path / "cheap.willow"
    pipeline.save(path)
    for copy in (willow.load(path, model_pipeline), pickle.loads(pickle.dumps(pipeline))):
        restored = _serving(copy).plan
        assert isinstance(restored, DistilledPlan) and restored.threshold == cascade.plan.threshold
        np.testing.assert_array_equal(copy(model, fresh), expected)
        assert "Cheap model first" in copy.explain()


def test_cheap_model_first_behind_the_feature_cascade(tabular, monkeypatch, tmp_path, cascade_pays):  # noqa: F811
    """The three-stage plan (timings fixed here so that it serves): every row is the feature
    cascade's answer where it is confident, else the cheap model's own label where it is sure,
    else the library's label; the whole pipeline meets the bound proven on the feature cascade's
    holdout rows (Bonferroni over two plans); save/load and pickling keep it."""
    import pipelines

    import willow
    from willow.cascades import calibration
    from willow.early_exit import behind, planner

    monkeypatch.setattr(calibration, "interleaved_seconds", lambda fns, r: [3.0, 1.0, 2.0][: len(fns)])
    monkeypatch.setattr(planner, "interleaved_samples", _fixed_samples)
    monkeypatch.setattr(behind, "interleaved_seconds", _fixed)
    monkeypatch.setattr(planner, "MIN_SPEEDUP", 0.0)
    monkeypatch.setattr(planner, "MIN_GAIN", 0.0)
    monkeypatch.setattr(distilled, "LIGHTGBM_SIZE", SMALL)
    model, cheap, extra, features, (_, calibration_rows, test) = tabular
    options = dict(accuracy_target=0.95, confidence=0.9, cost_repeats=2, importance_repeats=2)
    pipeline = willow.optimize(pipelines.numpy_pipeline, **options, early_exit=True)
    pipeline.calibrate(model, cheap[calibration_rows], extra[calibration_rows])
    plan = pipeline.plan_
    assert plan.cascade and f"Serving: {behind.NAME}" in plan.reason, plan.reason
    cascade = _serving(pipeline)
    proven = cascade.plan
    assert proven.confidence == pytest.approx(0.95) and proven.lower_bound >= 0.95, proven.table()
    assert plan.lower_bound == proven.lower_bound and plan.holdout_rows == proven.holdout_rows
    assert "Behind the feature cascade" in pipeline.explain() and "Cheap model first" in pipeline.explain()
    # each row: the feature cascade's answer, else the cheap model's label, else the library's
    # (the test rows four times over, so that more rows than SMALL_BATCH_ROWS are passed on)
    test = np.tile(test, 8)
    approx, confidence = pipeline._approximate.predict_with_confidence(cheap[test] * 1.0)
    passed = ~(confidence >= plan.threshold)
    cheap_label, sure = _expected(cascade, model, features[test])
    expected = np.where(passed, cheap_label, approx)
    assert (passed & sure).any() and (passed & ~sure).any() and (~passed).any()
    assert passed.sum() > SMALL_BATCH_ROWS
    served = pipeline(model, cheap[test], extra[test])
    library = model.predict(features[test])
    assert (served == library).mean() >= 0.85
    path = tmp_path / "behind.willow"
    pipeline.save(path)
    for copy in (willow.load(path, pipelines.numpy_pipeline), pickle.loads(pickle.dumps(pipeline))):
        assert _serving(copy).plan.threshold == proven.threshold
        np.testing.assert_array_equal(copy(model, cheap[test], extra[test]), expected)
        assert f"Serving: {behind.NAME}" in copy.plan_.reason and "Cheap model first" in copy.explain()
    # up to SMALL_BATCH_ROWS rows passed on (one row here, or 50): the library's label there
    for n in (1, 50):
        few = pipeline(model, cheap[test][:n], extra[test][:n])
        np.testing.assert_array_equal(few, np.where(passed[:n], library[:n], approx[:n]))
    with pytest.raises(ValueError):  # no rows: refused as the library refuses them
        model.predict(features[test][:0])
    with pytest.raises(ValueError):
        pipeline(model, cheap[test][:0], extra[test][:0])
