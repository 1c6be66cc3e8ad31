"""Model cascades for a thresholded output: ``predict_proba(X)[:, c] > t`` (and
``decision_function(X) > t``, ``regressor.predict(X) > t``) of a tree ensemble, the way users
write a decision.

Exits keep the row on its side of ``t`` (the raw-score cut found on the model's own output
conversion), so exact mode must return the library's decisions and approximate mode must meet
the bound it reports, judged on those decisions, not on labels.
"""

from __future__ import annotations

import pickle

import lightgbm as lgb
import numpy as np
import pytest
from sklearn import ensemble as sk_ensemble
from test_early_exit import CAT, _serving_cascade
from test_early_exit import _data as _rows

import willow
from willow.compiler.lowering.base import NotLowerable
from willow.early_exit import calibrate_early_exit, stage_tree_model
from willow.early_exit.calibrate import thresholded

BUILD = dict(n_jobs=1)
THRESHOLDS = ((1, 0.3), (0, 0.8), (1, 0.5))


def _data(n: int, seed: int, nan: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """test_early_exit's rows (NaN, a categorical column), their binary labels flipped on 10%
    of rows, so that probabilities are not all near 0 or 1 and thresholds move decisions."""
    X, labels, _ = _rows(n, seed, nan)
    flip = np.random.default_rng(seed + 1000).random(n) < 0.1
    return X, np.where(flip, 1 - labels, labels)


X_TRAIN, Y_TRAIN = _data(600, 0)
X_FINITE, Y_FINITE = _data(600, 0, nan=False)
LGB = dict(n_estimators=40, num_leaves=6, min_child_samples=5, verbose=-1, random_state=0)


@pytest.fixture(scope="module")
def models():
    """name -> (fitted binary classifier, rows it accepts for calibration, fresh rows)."""
    return {
        "lgb_cat": (
            lgb.LGBMClassifier(**LGB).fit(X_TRAIN, Y_TRAIN, categorical_feature=[CAT]),
            _data(1600, 1)[0],
            _data(500, 2)[0],
        ),
        "gb": (
            sk_ensemble.GradientBoostingClassifier(n_estimators=30, max_depth=2, random_state=0).fit(
                X_FINITE, Y_FINITE
            ),
            _data(1600, 1, nan=False)[0],
            _data(500, 2, nan=False)[0],
        ),
        "rf": (
            sk_ensemble.RandomForestClassifier(n_estimators=24, max_depth=4, random_state=0).fit(
                X_TRAIN, Y_TRAIN
            ),
            _data(1600, 1)[0],
            _data(500, 2)[0],
        ),
        "rf_multiclass": (  # class votes averaged column by column: a threshold on one class
            sk_ensemble.RandomForestClassifier(n_estimators=24, max_depth=4, random_state=0).fit(
                X_TRAIN, Y_TRAIN + (X_TRAIN[:, 1] > 0.5)
            ),
            _data(1600, 1)[0],
            _data(500, 2)[0],
        ),
        "hgb_cat": (
            sk_ensemble.HistGradientBoostingClassifier(
                max_iter=30, max_leaf_nodes=5, categorical_features=[CAT], random_state=0
            ).fit(X_TRAIN, Y_TRAIN),
            _data(1600, 1)[0],
            _data(500, 2)[0],
        ),
    }


# ---------------------------------------------------------------------------- the raw-score cut


def test_the_cut_is_where_the_library_output_crosses_the_threshold(models):
    model, _, _ = models["lgb_cat"]
    staged = stage_tree_model(model, "predict_proba", **BUILD)
    for t in (0.05, 0.3, 0.5, 0.9):
        logit = np.log(t / (1 - t))
        assert staged.cut_for(1, t) == pytest.approx(logit, abs=1e-9)
        assert staged.cut_for(0, t) == pytest.approx(-logit, abs=1e-9)  # p0 > t: raw < -logit(t)
    gb, _, _ = models["gb"]
    scores = stage_tree_model(gb, "decision_function", **BUILD)
    assert scores.cut_for(None, 0.7) == pytest.approx(0.7, abs=1e-9)  # an identity conversion


def test_no_cut_for_a_threshold_no_output_reaches_or_a_multiclass_ensemble(models):
    model, _, _ = models["lgb_cat"]
    staged = stage_tree_model(model, "predict_proba", **BUILD)
    with pytest.raises(NotLowerable, match="every row decides the same way"):
        staged.cut_for(1, 1.0)
    multiclass = lgb.LGBMClassifier(**{**LGB, "n_estimators": 6}).fit(X_TRAIN, np.arange(len(X_TRAIN)) % 3)
    with pytest.raises(NotLowerable, match="softmax"):
        stage_tree_model(multiclass, "predict_proba", **BUILD).cut_for(1, 0.5)
    with pytest.raises(ValueError, match="decision= thresholds a classifier's predict_proba"):
        calibrate_early_exit(model, X_TRAIN, method="predict", decision=(1, 0.5), **BUILD)


# ---------------------------------------------------------------------------- calibration


@pytest.mark.parametrize("name", ["lgb_cat", "gb", "hgb_cat", "rf", "rf_multiclass"])
def test_exact_exits_keep_every_thresholded_decision(models, name):
    model, rows, fresh = models[name]
    staged = stage_tree_model(model, "predict_proba", **BUILD)
    for decision in THRESHOLDS:
        cascade = calibrate_early_exit(
            model, rows, method="predict_proba", accuracy_target=1.0, decision=decision, staged=staged
        )
        assert cascade.plan.exact and cascade.plan.decision == decision
        for batch in (fresh, fresh[:1], np.vstack([fresh] * 3)):
            output, stage = cascade.run(batch)
            expected = thresholded(model.predict_proba(batch), decision)
            np.testing.assert_array_equal(thresholded(output, decision), expected)
        assert stage.min() < len(cascade.plan.stops) - 1 or name == "gb", cascade.plan.table()


def test_a_forest_cut_is_its_averaged_vote(models):
    model, _, _ = models["rf"]
    staged = stage_tree_model(model, "predict_proba", **BUILD)
    assert staged.raw_column(1) == 1 and staged.ensemble.n_outputs == 2
    # proba[:, 1] is the mean of the trees' class-1 fractions: the cut is t times the tree count
    assert staged.cut_for(1, 0.3) == pytest.approx(0.3 * staged.ensemble.divisor, rel=1e-12)


def test_exact_exits_on_a_one_column_score(models):
    model, rows, fresh = models["gb"]
    cascade = calibrate_early_exit(
        model, rows, method="decision_function", accuracy_target=1.0, decision=(None, 0.7), **BUILD
    )
    np.testing.assert_array_equal(cascade(fresh) > 0.7, model.decision_function(fresh) > 0.7)


def test_approximate_exits_meet_their_bound_on_the_thresholded_decision(models):
    model, rows, fresh = models["lgb_cat"]
    decision = (1, 0.3)
    cascade = calibrate_early_exit(
        model, rows, method="predict_proba", accuracy_target=0.95, decision=decision, **BUILD
    )
    plan = cascade.plan
    assert not plan.exact and plan.lower_bound >= 0.95, plan.table()
    assert plan.trees_per_row < plan.n_trees
    agrees = thresholded(cascade(fresh), decision) == thresholded(model.predict_proba(fresh), decision)
    assert agrees.mean() >= 0.9
    # judged on the thresholded decision, not the label: at t = 0.3 they differ on many rows
    labels = model.predict(fresh) == 1
    assert (labels != thresholded(model.predict_proba(fresh), decision)).any()
    assert "decision: predict_proba(X)[:, 1] > 0.3" in plan.table()


# ---------------------------------------------------------------------------- end to end


def flagged(model, X):
    return model.predict_proba(X)[:, 1] > 0.3


def named(model, X):
    proba = model.predict_proba(X)
    return np.where(proba[:, 0] >= 0.8, "ham", "spam")


CUTOFF = 0.3


def flagged_at_cutoff(model, X):
    return model.predict_proba(X)[:, 1] > CUTOFF


def two_thresholds(model, X):
    p = model.predict_proba(X)[:, 1]
    return np.where(p > 0.8, 2, 0) + (p > 0.4)


@pytest.mark.parametrize("fn", [flagged, named])
def test_optimize_serves_an_exact_model_cascade_for_a_thresholded_output(models, fn, tmp_path):
    model, rows, fresh = models["lgb_cat"]
    pipeline = willow.optimize(fn, accuracy_target=0.95, require_faster=False, compile="eager")
    pipeline.calibrate(model, rows)
    plan = _serving_cascade(pipeline).plan
    assert plan.exact and plan.method == "predict_proba", plan.table()
    assert "decision: predict_proba(X)[:, " in pipeline.explain()
    for batch in (fresh, fresh[:1], fresh[:7]):
        np.testing.assert_array_equal(pipeline(model, batch), fn(model, batch))
    path = tmp_path / "plan.willow"
    pipeline.save(path)
    for copy in (willow.load(path, fn), pickle.loads(pickle.dumps(pipeline))):
        assert _serving_cascade(copy).plan == plan
        np.testing.assert_array_equal(copy(model, fresh), fn(model, fresh))


def test_optimize_tunes_an_approximate_model_cascade_for_a_thresholded_output(models):
    model, rows, fresh = models["lgb_cat"]
    pipeline = willow.optimize(
        flagged, accuracy_target=0.95, require_faster=False, early_exit=True, compile="eager"
    )
    pipeline.calibrate(model, rows)
    plan = _serving_cascade(pipeline).plan
    assert not plan.exact and plan.lower_bound >= 0.95 and plan.decision == (1, 0.3), plan.table()
    assert "No cheap model first: its cheap model answers labels" in pipeline.plan_.reason
    assert (pipeline.plan_.lower_bound, pipeline.plan_.agreement) == (plan.lower_bound, plan.agreement)
    assert (pipeline(model, fresh) == flagged(model, fresh)).mean() >= 0.9


def test_a_threshold_read_from_a_name_is_guarded(models, monkeypatch, tmp_path):
    """The cut is the threshold's at calibration: when the name changes, the original runs (a
    reloaded plan too)."""
    model, rows, fresh = models["lgb_cat"]
    pipeline = willow.optimize(flagged_at_cutoff, accuracy_target=1.0, require_faster=False, compile="eager")
    pipeline.calibrate(model, rows)
    assert _serving_cascade(pipeline).plan.decision == (1, 0.3)
    np.testing.assert_array_equal(pipeline(model, fresh), flagged_at_cutoff(model, fresh))
    path = tmp_path / "cutoff.willow"
    pipeline.save(path)
    loaded = willow.load(path, flagged_at_cutoff)
    assert "same_threshold(CUTOFF)" in loaded.generated_source_
    monkeypatch.setitem(globals(), "CUTOFF", 0.7)
    for served_by in (pipeline, loaded):
        with pytest.warns(willow.ModelChangedWarning, match="now 0.7, but its cascade was proven for 0.3"):
            served = served_by(model, fresh)
        np.testing.assert_array_equal(served, model.predict_proba(fresh)[:, 1] > 0.7)


def test_no_model_cascade_for_two_thresholds_or_multiclass(models):
    """The returned value must depend on the model through one comparison (two thresholds do
    not), of a binary classifier; early_exit=True says why none was tried."""
    model, rows, fresh = models["lgb_cat"]
    pipeline = willow.optimize(
        two_thresholds, accuracy_target=0.95, require_faster=False, early_exit=True, compile="eager"
    )
    pipeline.calibrate(model, rows)
    assert "Model cascade inside" not in pipeline.explain()
    assert "other than one comparison" in pipeline.plan_.reason, pipeline.plan_.reason
    np.testing.assert_array_equal(pipeline(model, fresh), two_thresholds(model, fresh))


def flagged_features(model, cheap, extra):
    import pipelines

    X = np.hstack([cheap * 1.0, pipelines.slow_features(extra)])
    return model.predict_proba(X)[:, 1] > 0.35


def test_a_feature_cascade_with_a_thresholded_model_cascade_behind_it(cascade_pays):
    """The combined plan for a thresholded output: the rows the feature cascade passes on meet
    an exact model cascade on the same side of the threshold, so its outputs are the feature
    cascade's (the planner checks so on the calibration rows) and its proof stands."""
    import pipelines
    from conftest import make_tabular

    cheap, extra, y = make_tabular(2600, seed=7)
    features = np.hstack([cheap, pipelines.slow_features(extra)])
    model = lgb.LGBMClassifier(**LGB).fit(features[:800], y[:800])
    pipeline = willow.optimize(
        flagged_features, accuracy_target=0.97, confidence=0.9, require_faster=False, compile="eager"
    )
    pipeline.calibrate(model, cheap[800:2200], extra[800:2200])
    plan = pipeline.plan_
    assert plan.cascade and plan.lower_bound >= 0.97 and "Serving: combined" in plan.reason, plan.reason
    behind = _serving_cascade(pipeline).plan
    assert behind.exact and behind.decision == (1, 0.35)
    test = slice(2200, None)
    served = pipeline(model, cheap[test], extra[test])
    assert (served == flagged_features(model, cheap[test], extra[test])).mean() >= 0.9
    copy = pickle.loads(pickle.dumps(pipeline))
    np.testing.assert_array_equal(copy(model, cheap[test], extra[test]), served)
    np.testing.assert_array_equal(pipeline(model, cheap[test][:1], extra[test][:1]), served[:1])


def booster_flags(model, X):
    return model.predict(X) > 0.4


def expensive(model, X):
    return np.where(model.predict(X) > 1.0, "review", "pass")


@pytest.mark.parametrize("kind", ["booster", "regressor"])
def test_models_without_classes_keep_a_thresholded_prediction(kind):
    """A LightGBM Booster's probabilities and a regressor's numbers, thresholded once: exits
    keep each row's side (no tolerance= needed: the decision is what is judged)."""
    X, y = _data(600, 0, nan=False)
    target = 2.5 * X[:, 0] + X[:, 1]
    if kind == "booster":
        params = {"objective": "binary", "num_leaves": 6, "min_data_in_leaf": 5, "verbose": -1}
        model, fn = lgb.train(params, lgb.Dataset(X, y), 40), booster_flags
    else:
        model, fn = lgb.LGBMRegressor(**LGB).fit(X, target), expensive
    rows, fresh = _data(1600, 1, nan=False)[0], _data(500, 2, nan=False)[0]
    for early_exit, target_accuracy in (("exact", 0.95), (True, 0.95)):
        pipeline = willow.optimize(
            fn, accuracy_target=target_accuracy, require_faster=False, early_exit=early_exit, compile="eager"
        )
        pipeline.calibrate(model, rows)
        plan = _serving_cascade(pipeline).plan
        assert plan.method == "predict" and plan.decision[0] is None and not plan.regression, plan.table()
        assert "a thresholded prediction of a model without classes gets none" in pipeline.plan_.reason
        served = pipeline(model, fresh)
        if plan.exact:
            np.testing.assert_array_equal(served, fn(model, fresh))
        else:
            assert plan.lower_bound >= target_accuracy and (served == fn(model, fresh)).mean() >= 0.9
    with pytest.raises(ValueError, match="Pass one or the other"):
        calibrate_early_exit(model, rows, decision=(None, 0.4), tolerance=0.1, **BUILD)


def test_each_accuracy_tier_keeps_the_threshold(models):
    from willow.early_exit import tiers

    model, rows, fresh = models["lgb_cat"]
    pipeline = willow.optimize(
        flagged, accuracy_target=(0.97, 0.9), early_exit=True, require_faster=False, compile="eager"
    )
    pipeline.calibrate(model, rows)
    plans = tiers.served_plans(pipeline)
    assert [p.decision for p in plans] == [(1, 0.3)] * 2, pipeline.explain()
    expected = flagged(model, fresh)
    for plan, target in zip(plans, (0.97, 0.9)):
        assert plan.exact or plan.lower_bound >= target, plan.table()
        assert (pipeline.tier(target)(model, fresh) == expected).mean() >= target - 0.05


def test_an_uncompiled_pipeline_serves_a_thresholded_model_cascade(models):
    """compile=False, early_exit=True: the staged model (its own kernels) takes the place of the
    library's predict_proba call, on the threshold's side."""
    model, rows, fresh = models["lgb_cat"]
    pipeline = willow.optimize(
        flagged, accuracy_target=0.95, require_faster=False, early_exit=True, compile=False
    )
    pipeline.calibrate(model, rows)
    plan = _serving_cascade(pipeline).plan
    assert plan.decision == (1, 0.3) and (plan.exact or plan.lower_bound >= 0.95), pipeline.plan_.reason
    assert "compile=False" in pipeline.plan_.reason
    assert (pipeline(model, fresh) == flagged(model, fresh)).mean() >= 0.9
    np.testing.assert_array_equal(pipeline(model, fresh[:3]), flagged(model, fresh[:3]))  # the library's call


def probability(model, X):
    return model.predict_proba(X)[:, 1]


@pytest.mark.parametrize("fn", [flagged, named, probability])
def test_dask_serves_a_thresholded_model_cascade_like_the_original(models, fn):
    """willow.dask's default meta is what the function returns (booleans, strings, one
    probability per row), not the model's output (two probability columns)."""
    pytest.importorskip("dask")
    import dask
    import dask.dataframe as dd
    import pandas as pd

    import willow.dask

    model, rows, fresh = models["lgb_cat"]
    columns = model.booster_.feature_name()
    pipeline = willow.optimize(fn, accuracy_target=1.0, require_faster=False, compile="eager")
    pipeline.calibrate(model, pd.DataFrame(rows, columns=columns))
    if fn is not probability:  # numbers: exits would change them, so no model cascade
        assert _serving_cascade(pipeline).plan.decision is not None
    frame = pd.DataFrame(fresh[:420], columns=columns)
    edges = (0, 300, 300, 301, 420)  # partitions of 300 (through the stages), 0, 1 and 119 rows
    parts = [dask.delayed(frame.iloc[a:b]) for a, b in zip(edges[:-1], edges[1:])]
    ddf = dd.from_delayed(parts, meta=frame.iloc[:0])
    willow.dask._CACHE.clear()
    computed = willow.dask.predict(pipeline, ddf, model).compute(scheduler="synchronous")
    expected = fn(model, frame)
    if fn is probability:
        np.testing.assert_allclose(computed.to_numpy(), expected, rtol=1e-9, atol=1e-12)
    else:
        np.testing.assert_array_equal(computed.to_numpy(), expected)
    assert computed.index.equals(frame.index)
