"""Staged early exit in tree ensembles (willow.early_exit) against LightGBM and scikit-learn.

Small models (tens of trees, a handful of leaves) with small kernel groups, so that stages fall
every few trees; rows mix NaN and categories where the library accepts them. Exact mode must
give the library's own outputs; approximate mode must meet the bound it reports.
"""

from __future__ import annotations

import pickle

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from sklearn import ensemble as sk_ensemble

from willow.early_exit import EarlyExitPlan, ModelCascade, calibrate_early_exit, stage_tree_model
from willow.early_exit.calibrate import _exits, _stages, agreeing_rows
from willow.early_exit.staged import leaf_bounds
from willow.errors import CalibrationError

N_FEATURES = 5
CAT = 4  # integer codes 0..5, a LightGBM categorical feature
BUILD = dict(n_jobs=1)  # default groups: at least 16 per ensemble; compile in-process


def _data(n: int, seed: int, nan: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, N_FEATURES))
    X[:, CAT] = rng.integers(0, 6, n)
    filled = X.copy()
    if nan:
        X[rng.random(X.shape) < 0.08] = np.nan
    score = 2.5 * filled[:, 0] + filled[:, 1] - 0.7 * filled[:, 2] + (filled[:, CAT] % 3 == 1)
    return X, (score > 0.4).astype(int), np.digitize(score, [-1.0, 1.5])


X_TRAIN, Y_BIN, Y_MULTI = _data(500, 0)
X_ROWS, _, _ = _data(300, 1)
X_FINITE, YF_BIN, YF_MULTI = _data(500, 0, nan=False)
X_ROWS_FINITE, _, _ = _data(300, 1, nan=False)
LGB = dict(n_estimators=24, num_leaves=6, min_child_samples=5, verbose=-1, random_state=0)
GB = dict(n_estimators=20, max_depth=2, random_state=0)


def _models() -> dict[str, tuple[object, bool]]:
    """name -> (fitted classifier, accepts NaN)."""
    return {
        "lgb_binary_cat": (lgb.LGBMClassifier(**LGB).fit(X_TRAIN, Y_BIN, categorical_feature=[CAT]), True),
        "lgb_multiclass": (lgb.LGBMClassifier(**{**LGB, "n_estimators": 10}).fit(X_TRAIN, Y_MULTI), True),
        "gb_binary": (sk_ensemble.GradientBoostingClassifier(**GB).fit(X_FINITE, YF_BIN), False),
        "gb_multiclass": (
            sk_ensemble.GradientBoostingClassifier(**{**GB, "n_estimators": 8}).fit(X_FINITE, YF_MULTI),
            False,
        ),
        "hgb_binary_cat": (
            sk_ensemble.HistGradientBoostingClassifier(
                max_iter=15, max_leaf_nodes=5, categorical_features=[CAT], random_state=0
            ).fit(X_TRAIN, Y_BIN),
            True,
        ),
        "rf_multiclass": (
            sk_ensemble.RandomForestClassifier(n_estimators=12, max_depth=3, random_state=0).fit(
                X_TRAIN, Y_MULTI
            ),
            True,
        ),
    }


@pytest.fixture(scope="module")
def staged():
    """name -> (model, staged predict, rows it accepts); each ensemble's kernels compiled once."""
    result = {}
    for name, (model, nan_ok) in _models().items():
        result[name] = (
            model,
            stage_tree_model(model, "predict", **BUILD),
            X_ROWS if nan_ok else X_ROWS_FINITE,
        )
    return result


def _every_group(model) -> tuple[int, ...]:
    return model.group_ends


@pytest.mark.parametrize("name", ["lgb_binary_cat", "lgb_multiclass", "gb_binary", "gb_multiclass"])
def test_partial_scores_are_the_library_prefix_sums(staged, name):
    """After each stage a row holds exactly the raw score of the first trees (LightGBM's
    ``num_iteration``, scikit-learn's ``staged_decision_function``), bit for bit."""
    model, stages, X = staged[name]
    assert len(stages.group_ends) > 2
    scores = stages.partial_scores(X, stages.group_ends)
    per_iteration = stages.ensemble.n_outputs
    if name.startswith("lgb"):
        for stop, partial in zip(stages.group_ends, scores):
            if stop % per_iteration == 0:
                expected = model.predict(X, raw_score=True, num_iteration=stop // per_iteration)
                np.testing.assert_array_equal(partial.reshape(expected.shape), expected)
    else:
        by_stage = list(model.staged_decision_function(X))
        for stop, partial in zip(stages.group_ends, scores):
            if stop % per_iteration == 0:
                expected = by_stage[stop // per_iteration - 1]
                np.testing.assert_array_equal(partial.reshape(expected.shape), expected)


@pytest.mark.parametrize(
    "name",
    ["lgb_binary_cat", "lgb_multiclass", "gb_binary", "gb_multiclass", "hgb_binary_cat", "rf_multiclass"],
)
def test_exact_exits_give_the_library_outputs(staged, name):
    model, stages, X = staged[name]
    stages.with_stages(_every_group(stages))
    output, exit_stage = stages.run(X)
    np.testing.assert_array_equal(output, model.predict(X))
    # the test is not vacuous: rows do leave early, and only where the bounds allow it
    assert (exit_stage < len(stages.stops) - 1).mean() > 0.1
    for one in (X[:1], X[7:8]):
        np.testing.assert_array_equal(stages(one), model.predict(one))


def test_exact_exits_on_a_frame_with_categories(staged):
    model, stages, X = staged["lgb_binary_cat"]
    stages.with_stages(_every_group(stages))
    frame = pd.DataFrame(X, columns=model.booster_.feature_name())
    np.testing.assert_array_equal(stages(frame), model.predict(frame))
    with pytest.raises(ValueError):  # as LGBMClassifier.predict
        stages(X[:0])


def test_exact_exit_probabilities_keep_the_decision():
    model, _ = _models()["lgb_multiclass"]
    stages = stage_tree_model(model, "predict_proba", **BUILD).with_stages((2, 6, 12, 20))
    proba, exit_stage = stages.run(X_ROWS)
    expected = model.predict_proba(X_ROWS)
    assert np.array_equal(np.argmax(proba, axis=1), np.argmax(expected, axis=1))
    full = exit_stage == len(stages.stops) - 1
    np.testing.assert_allclose(proba[full], expected[full], rtol=0, atol=1e-12)  # every tree: exact
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


@pytest.mark.parametrize("name", ["lgb_binary_cat", "lgb_multiclass"])
def test_serving_exits_where_tuning_predicted(staged, name):
    """The compiled exit pass (serving) and the NumPy rules (tuning) pick the same exit stage and
    decision for every row, with margin thresholds and exact exits together."""
    model, stages, X = staged[name]
    stops = stages.snap([2, 6, 12])
    partial = dict(zip(stops, stages.partial_scores(X, stops)))
    simulated = _stages(stages, stops, partial)
    thresholds = 0.8 * simulated.sigma
    first, agrees = _exits(simulated, thresholds)
    output, exit_stage = stages.with_stages(stops, thresholds).run(X)
    np.testing.assert_array_equal(exit_stage, first)
    assert 0 < (first < len(stops) - 1).mean() < 1
    np.testing.assert_array_equal(agreeing_rows(output, model.predict(X), "predict"), agrees)


def test_leaf_bounds_contain_every_leaf(staged):
    model, stages, X = staged["gb_multiclass"]
    low, high = leaf_bounds(stages.ensemble)
    leaves = model.apply(X)  # (rows, stages, classes): leaf node ids
    for t in range(len(stages.ensemble.trees)):
        iteration, k = divmod(t, stages.ensemble.n_outputs)
        tree = model.estimators_[iteration, k].tree_
        values = model.learning_rate * tree.value[leaves[:, iteration, k].astype(int), 0, 0]
        assert (values >= low[t, k]).all() and (values <= high[t, k]).all()


def test_with_stages_checks_its_arguments(staged):
    _, stages, _ = staged["gb_binary"]
    assert stages.snap([1, 1, 10_000]) == (stages.group_ends[0], stages.n_trees)
    with pytest.raises(ValueError, match="one threshold per stage"):
        stages.with_stages((4, 10), (1.0,) * 3)


@pytest.mark.parametrize("name", ["lgb_binary_cat", "gb_multiclass"])
def test_calibrated_exact_plan_is_identical(staged, name):
    model, stages, X = staged[name]
    cascade = calibrate_early_exit(model, X, accuracy_target=1.0, staged=stages, repeats=1)
    plan = cascade.plan
    assert plan.exact and plan.lower_bound is None and plan.agreement == 1.0
    assert all(np.isinf(plan.thresholds))
    assert abs(sum(plan.exit_fractions) - 1.0) < 1e-12
    fresh = _data(200, 5, nan=name.startswith("lgb"))[0]
    np.testing.assert_array_equal(cascade(fresh), model.predict(fresh))
    assert "exact only" in plan.table()


def test_approximate_plan_meets_its_proof(staged):
    model, stages, _ = staged["lgb_binary_cat"]
    X = _data(1200, 7)[0]
    cascade = calibrate_early_exit(model, X, accuracy_target=0.95, staged=stages, repeats=1)
    plan = cascade.plan
    assert not plan.exact, plan.table()  # an easy problem: margins let rows leave early
    assert plan.lower_bound >= 0.95 and plan.agreement >= plan.lower_bound
    assert plan.holdout_rows + plan.tune_rows == 1200
    assert plan.trees_per_row < plan.n_trees
    assert any(np.isfinite(plan.thresholds))
    # the plan's own figures, recomputed on its holdout rows' complement of fresh rows
    fresh = _data(600, 11)[0]
    output, exit_stage = cascade.run(fresh)
    assert agreeing_rows(output, model.predict(fresh), "predict").mean() >= 0.9
    assert (exit_stage == 0).any()
    table = plan.table()
    assert "approximate" in table and "lower 95% bound" in table


def test_plan_round_trips_and_rebuilds(staged):
    model, stages, X = staged["gb_binary"]
    cascade = calibrate_early_exit(model, X, accuracy_target=1.0, staged=stages, repeats=1)
    plan = pickle.loads(pickle.dumps(cascade.plan))
    assert isinstance(plan, EarlyExitPlan) and plan == cascade.plan
    rebuilt = ModelCascade.from_plan(model, "predict", plan, **BUILD)
    np.testing.assert_array_equal(rebuilt(X), cascade(X))
    other = sk_ensemble.GradientBoostingClassifier(n_estimators=3, max_depth=2).fit(X_FINITE, YF_BIN)
    with pytest.raises(CalibrationError, match="Calibrate again"):
        ModelCascade.from_plan(other, "predict", plan, **BUILD)


def test_too_few_rows_or_no_classes_are_refused(staged):
    model, stages, X = staged["gb_binary"]
    with pytest.raises(CalibrationError, match="Too few calibration rows"):
        calibrate_early_exit(model, X[:40], accuracy_target=0.99, staged=stages)
    regressor = sk_ensemble.GradientBoostingRegressor(n_estimators=2, max_depth=1).fit(X_FINITE, YF_BIN)
    with pytest.raises(ValueError, match="it needs tolerance="):  # see test_early_exit_regression.py
        calibrate_early_exit(regressor, X, accuracy_target=1.0)


# ---------------------------------------------------------------------------------------------
# the planner: @willow.optimize serves a model cascade when no feature cascade applies


def model_pipeline(model, X):
    return model.predict(X)


def _serving_cascade(pipeline) -> ModelCascade:
    from willow.early_exit.planner import _cascade_of

    cascade = _cascade_of(pipeline._compilation)
    assert isinstance(cascade, ModelCascade), pipeline.explain()
    return cascade


def test_optimize_serves_an_exact_model_cascade_and_keeps_it(staged, tmp_path):
    import willow

    model, _, _ = staged["lgb_binary_cat"]
    pipeline = willow.optimize(model_pipeline, accuracy_target=1.0, require_faster=False)
    pipeline.calibrate(model, _data(400, 21)[0])
    text = pipeline.explain()
    assert "Model cascade inside LGBMClassifier.predict" in text and "exact only" in text, text
    assert "a model cascade inside LGBMClassifier.predict serves" in pipeline.plan_.reason
    fresh = _data(300, 22)[0]
    _, exit_stage = _serving_cascade(pipeline).run(fresh)
    assert (exit_stage < exit_stage.max()).any()  # rows do leave early when served
    np.testing.assert_array_equal(pipeline(model, fresh), model.predict(fresh))
    np.testing.assert_array_equal(pipeline(model, fresh[:1]), model.predict(fresh[:1]))
    path = tmp_path / "plan.willow"
    pipeline.save(path)
    for copy in (willow.load(path, model_pipeline), pickle.loads(pickle.dumps(pipeline))):
        assert _serving_cascade(copy).plan == _serving_cascade(pipeline).plan
        np.testing.assert_array_equal(copy(model, fresh), model.predict(fresh))
        assert "Model cascade inside" in copy.explain()


def test_optimize_tunes_an_approximate_model_cascade(staged, monkeypatch):
    import willow
    from willow.early_exit import planner

    def refused(*args, **kwargs):  # cheap model first could measure faster (its own tests)
        raise CalibrationError("not in this test")

    monkeypatch.setattr(planner, "_calibrate_cheap", refused)
    model, _, _ = staged["lgb_binary_cat"]
    pipeline = willow.optimize(model_pipeline, accuracy_target=0.95, require_faster=False, early_exit=True)
    pipeline.calibrate(model, _data(1200, 23)[0])
    plan = _serving_cascade(pipeline).plan
    assert not plan.exact and plan.lower_bound >= 0.95, plan.table()
    assert "approximate (margin thresholds)" in pipeline.explain()
    # the pipeline's own plan carries the model cascade's holdout figures, not the exact pipeline's
    assert (pipeline.plan_.lower_bound, pipeline.plan_.agreement) == (plan.lower_bound, plan.agreement)
    assert pipeline.plan_.holdout_rows == plan.holdout_rows
    fresh = _data(600, 24)[0]
    assert (pipeline(model, fresh) == model.predict(fresh)).mean() >= 0.9


def test_by_default_only_exact_exits_serve_below_a_target_of_one(staged):
    """early_exit="exact" (the default): the plan says "no cascade", so outputs must stay
    identical; margin exits would change some labels, so only leaf-bound exits are used."""
    import willow

    model, _, _ = staged["lgb_binary_cat"]
    pipeline = willow.optimize(model_pipeline, accuracy_target=0.95, require_faster=False)
    pipeline.calibrate(model, _data(1200, 23)[0])
    assert _serving_cascade(pipeline).plan.exact
    assert not pipeline.plan_.cascade
    fresh = _data(600, 24)[0]
    np.testing.assert_array_equal(pipeline(model, fresh), model.predict(fresh))
    off = willow.optimize(model_pipeline, accuracy_target=0.95, require_faster=False, early_exit=False)
    off.calibrate(model, _data(300, 25)[0])
    assert "Model cascade inside" not in off.explain()
    with pytest.raises(ValueError, match="early_exit must be"):
        willow.optimize(model_pipeline, early_exit="fast")


def proba_pipeline(model, X):
    return model.predict_proba(X)


def threshold_pipeline(model, X):
    return model.predict_proba(X)[:, 1] > 0.5


def test_no_model_cascade_when_the_function_returns_probabilities(staged):
    """Exits keep a row's class, not its probabilities: a function returning predict_proba keeps
    the full ensemble (found when a served exact model cascade changed a real-world pipeline's
    probabilities)."""
    import willow

    model, _, _ = staged["lgb_binary_cat"]
    for early_exit in ("exact", True):
        pipeline = willow.optimize(
            proba_pipeline, accuracy_target=0.95, require_faster=False, early_exit=early_exit
        )
        pipeline.calibrate(model, _data(600, 26)[0])
        assert "Model cascade inside" not in pipeline.explain()
        # asked for (early_exit=True), the plan says why none was tried
        assert ("No model cascade: the function returns" in pipeline.plan_.reason) == (early_exit is True)
        fresh = _data(300, 27)[0]
        np.testing.assert_allclose(pipeline(model, fresh), model.predict_proba(fresh), rtol=1e-9, atol=1e-12)
    # a decision thresholding the probabilities once keeps its side of the threshold
    # (tests/test_early_exit_threshold.py): a model cascade serves, judged on that decision
    pipeline = willow.optimize(threshold_pipeline, accuracy_target=1.0, require_faster=False, early_exit=True)
    pipeline.calibrate(model, _data(600, 26)[0])
    assert _serving_cascade(pipeline).plan.decision == (1, 0.5), pipeline.plan_.reason
    fresh = _data(300, 27)[0]
    np.testing.assert_array_equal(pipeline(model, fresh), model.predict_proba(fresh)[:, 1] > 0.5)


def test_no_model_cascade_when_cascades_are_off(staged):
    import willow

    model, _, _ = staged["lgb_binary_cat"]
    pipeline = willow.optimize(model_pipeline, accuracy_target=1.0, require_faster=False, cascade=False)
    pipeline.calibrate(model, _data(300, 25)[0])
    assert "Model cascade inside" not in pipeline.explain()


def test_choose_plan_serves_the_cheapest_when_faster_beyond_noise():
    from willow.early_exit.planner import choose_plan

    def runs(*seconds):  # seconds per call, seven runs each, the k-th of every plan side by side
        return [float(t) for t in seconds] * 7 if len(seconds) == 1 else list(seconds)

    samples = {"feature cascade": runs(1.0), "combined": runs(0.7), "model cascade": runs(0.9)}
    assert choose_plan(samples, "feature cascade") == "combined"
    assert choose_plan({**samples, "model cascade": runs(0.5)}, "feature cascade") == "model cascade"
    # within the 5% margin the calibrated plan stays, however steady
    assert choose_plan({"feature cascade": runs(1.0), "combined": runs(0.96)}, "feature cascade") == (
        "feature cascade"
    )
    # a faster median from two lucky runs of seven is noise: the sign test refuses it
    lucky = [0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0]
    noisy = {"feature cascade": runs(1.0), "combined": lucky}
    assert choose_plan(noisy, "feature cascade") == "feature cascade"
    # faster in six of seven pairs: not enough at 5% over three looks, all seven is
    assert choose_plan({**noisy, "combined": [0.8] * 6 + [1.2]}, "feature cascade") == "feature cascade"
    assert choose_plan({**noisy, "combined": [0.8] * 7}, "feature cascade") == "combined"
    assert choose_plan({"feature cascade": runs(0.2), "combined": runs(0.7)}, "feature cascade") == (
        "feature cascade"
    )


def test_model_cascades_are_skipped_when_skipping_trees_cannot_pay_off():
    """By the calibration's cost estimates (synthetic here): a combined plan can save at most the
    model's cost on the rows the feature cascade sends on, a model cascade alone at most the
    model's whole cost."""
    from types import SimpleNamespace

    from willow.early_exit.planner import _could_pay_off

    def costs(model, total):
        return SimpleNamespace(model_seconds_per_row=model, total_seconds_per_row=total)

    def plan(expected, confident):
        return SimpleNamespace(expected_seconds_per_row=expected, confident_fraction=confident)

    # the model dominates: both could pay off
    assert _could_pay_off(plan(10.0, 0.5), costs(model=15.0, total=16.0)) == (True, True)
    # cheap model behind a cascade answering 95% of rows: neither could
    assert _could_pay_off(plan(10.0, 0.95), costs(model=2.0, total=30.0)) == (False, False)
    # features dominate but the cascade sends most rows on: only the combined plan could
    assert _could_pay_off(plan(10.0, 0.2), costs(model=4.0, total=40.0)) == (True, False)


COMBINED_OPTIONS = dict(accuracy_target=0.97, confidence=0.9, cost_repeats=2, importance_repeats=2)


@pytest.fixture(scope="module")
def tabular():
    """A LightGBM model behind tests/pipelines.numpy_pipeline (a cheap and a slow feature group):
    ``(model, cheap, extra, features, (train, calibration, test))``."""
    import pipelines
    from conftest import make_tabular

    cheap, extra, y = make_tabular(2600, seed=7)
    parts = np.split(np.arange(len(y)), [800, 2200])
    features = np.hstack([cheap, pipelines.slow_features(extra)])
    model = lgb.LGBMClassifier(**{**LGB, "n_estimators": 40}).fit(features[parts[0]], y[parts[0]])
    return model, cheap, extra, features, parts


def test_feature_cascade_with_a_model_cascade_behind_it(tabular, cascade_pays):
    """The combined plan: the feature cascade's uncertain rows go to an exact model cascade, so
    every row is the approximate model's answer where confident and the library's own label
    elsewhere (identical to the feature cascade alone), and the feature cascade's proof holds."""
    import pipelines

    import willow

    model, cheap, extra, features, (_, calibration, test) = tabular
    pipeline = willow.optimize(pipelines.numpy_pipeline, **COMBINED_OPTIONS, require_faster=False)
    pipeline.calibrate(model, cheap[calibration], extra[calibration])
    plan = pipeline.plan_
    assert plan.cascade and plan.lower_bound >= 0.97, plan.table()
    assert "Serving: combined" in plan.reason, plan.reason
    cascade = _serving_cascade(pipeline)
    assert cascade.plan.exact and "Model cascade inside" in pipeline.explain()
    approx, confidence = pipeline._approximate.predict_with_confidence(cheap[test] * 1.0)
    expected = np.where(confidence >= plan.threshold, approx, model.predict(features[test]))
    for copy in (pipeline, pickle.loads(pickle.dumps(pipeline))):
        np.testing.assert_array_equal(copy(model, cheap[test], extra[test]), expected)
        np.testing.assert_array_equal(copy(model, cheap[test][:1], extra[test][:1]), expected[:1])
        assert _serving_cascade(copy).plan == cascade.plan
    assert (expected == model.predict(features[test])).mean() >= 0.85
    _, stage = cascade.run(features[test])
    assert (stage < stage.max()).any()  # the rows behind the feature cascade do leave early


def test_the_model_cascade_alone_replaces_a_feature_cascade_it_beats(
    tabular, monkeypatch, tmp_path, cascade_pays
):
    """When the model cascade alone measures cheapest (timings fixed here), it serves instead of
    the feature cascade: the plan says "no cascade" and, exact, returns the library's labels."""
    import pipelines

    import willow
    from willow.cascades import calibration
    from willow.early_exit import planner

    def fixed(fns, repeats):  # each still runs: a failing candidate must fail here too
        for fn in fns:
            fn()
        return [float(len(fns) - i) for i in range(len(fns))]  # the last one is the cheapest

    # the feature cascade's gate (original, cascade, compiled pipeline) sees the cascade fastest;
    # the planner's (feature cascade, combined, model cascade) sees the model cascade alone fastest
    monkeypatch.setattr(calibration, "interleaved_seconds", lambda fns, r: [3.0, 1.0, 2.0][: len(fns)])
    monkeypatch.setattr(planner, "interleaved_samples", lambda fns, r: [[t] * r for t in fixed(fns, r)])
    monkeypatch.setattr(planner, "MIN_SPEEDUP", 0.0)  # whatever the model cascade measured itself
    monkeypatch.setattr(planner, "MIN_GAIN", 0.0)
    model, cheap, extra, features, (_, calibration_rows, test) = tabular
    pipeline = willow.optimize(pipelines.numpy_pipeline, **COMBINED_OPTIONS, require_faster=True)
    pipeline.calibrate(model, cheap[calibration_rows], extra[calibration_rows])
    plan = pipeline.plan_
    assert not plan.cascade and "Serving: model cascade" in plan.reason, plan.reason
    assert _serving_cascade(pipeline).plan.exact
    path = tmp_path / "alone.willow"
    pipeline.save(path)
    for copy in (pipeline, willow.load(path, pipelines.numpy_pipeline)):
        np.testing.assert_array_equal(copy(model, cheap[test], extra[test]), model.predict(features[test]))
        assert "Model cascade inside" in copy.explain()
