"""Staged early exit for regressors, within ``tolerance=`` (willow.early_exit, issue 16).

Small ensembles (tens of trees, a handful of leaves; stages every few trees), rows with NaN and
a LightGBM categorical feature. Exact mode must keep every row within the tolerance of the
library's own prediction; approximate mode must meet the bound it reports.
"""

from __future__ import annotations

import pickle

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from sklearn import ensemble as sk_ensemble
from test_early_exit import CAT, N_FEATURES
from test_early_exit import _data as _rows

from willow.early_exit import EarlyExitPlan, ModelCascade, calibrate_early_exit, stage_tree_model
from willow.early_exit.calibrate import EarlyExitToleranceError, _exits, _regression_stages
from willow.errors import WillowError

BUILD = dict(n_jobs=1)


def _data(n: int, seed: int, nan: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """test_early_exit's rows (NaN where ``nan``) and a regression target from their values."""
    filled = _rows(n, seed, nan=False)[0]
    rng = np.random.default_rng(seed + 1000)
    X = filled.copy()
    if nan:
        X[rng.random(X.shape) < 0.08] = np.nan
    y = 3.0 * filled[:, 0] + np.sin(2 * filled[:, 1]) - filled[:, 2] ** 2 + (filled[:, CAT] % 3 == 1)
    return X, y + 0.1 * rng.standard_normal(n)


X_TRAIN, Y_TRAIN = _data(600, 0)
LGB = dict(n_estimators=40, num_leaves=6, min_child_samples=5, learning_rate=0.1, verbose=-1, random_state=0)


def _models() -> dict[str, object]:
    return {
        "lgb": lgb.LGBMRegressor(**LGB).fit(X_TRAIN, Y_TRAIN, categorical_feature=[CAT]),
        "hgb": sk_ensemble.HistGradientBoostingRegressor(
            max_iter=30, max_leaf_nodes=5, categorical_features=[CAT], random_state=0
        ).fit(X_TRAIN, Y_TRAIN),
        "rf": sk_ensemble.RandomForestRegressor(n_estimators=16, max_depth=4, random_state=0).fit(
            X_TRAIN, Y_TRAIN
        ),
    }


@pytest.fixture(scope="module")
def staged():
    """name -> (model, staged predict); each ensemble's kernels compiled once."""
    return {name: (model, stage_tree_model(model, "predict", **BUILD)) for name, model in _models().items()}


def _halfway_tolerance(stages) -> float:
    """A tolerance the leaf bounds reach about halfway through the ensemble."""
    stop = stages.group_ends[len(stages.group_ends) // 2]
    return (
        float(stages._rest_high[stop, 0] - stages._rest_low[stop, 0]) / 2.0 / stages.ensemble.divisor * 1.01
    )


@pytest.mark.parametrize("name", ["lgb", "hgb", "rf"])
def test_exact_regression_exits_stay_within_tolerance(staged, name):
    model, stages = staged[name]
    tolerance = _halfway_tolerance(stages)
    stages.with_regression(tolerance).with_stages(stages.group_ends)
    X = _data(300, 1)[0]
    output, exit_stage = stages.run(X)
    expected = model.predict(X)
    assert np.abs(output - expected).max() <= tolerance
    # not vacuous: every row left early, with a value that is not the library's
    assert (exit_stage < len(stages.stops) - 1).all() and not np.allclose(output, expected, atol=1e-9)
    frame = pd.DataFrame(X, columns=[f"Column_{i}" for i in range(N_FEATURES)]) if name == "lgb" else X
    for rows in (frame, X[:1], X[7:8]):
        assert np.abs(stages(rows) - model.predict(rows)).max() <= tolerance
    with pytest.raises(ValueError):  # as the library
        stages(X[:0])


def test_calibrated_exact_plan_is_within_tolerance(staged):
    model, stages = staged["lgb"]
    tolerance = _halfway_tolerance(stages)
    cascade = calibrate_early_exit(
        model, _data(400, 2)[0], accuracy_target=1.0, staged=stages, tolerance=tolerance
    )
    plan = cascade.plan
    assert plan.exact and plan.regression and plan.tolerance == tolerance and plan.lower_bound is None
    assert plan.trees_per_row < plan.n_trees
    fresh = _data(300, 3)[0]
    assert np.abs(cascade(fresh) - model.predict(fresh)).max() <= tolerance
    assert f"within tolerance {tolerance:g}" in plan.table()


def test_serving_exits_where_tuning_predicted(staged):
    """The compiled settled-score pass (serving) and the NumPy simulation (tuning) pick the same
    exit stage for every row and the same within-tolerance agreement."""
    model, stages = staged["lgb"]
    tolerance = 0.3
    stages.with_regression(tolerance)
    X = _data(400, 4)[0]
    stops = stages.snap([4, 10, 20])
    needed = sorted(set(stops) | {stages.lookback(stop) for stop in stops} - {0})
    partial = dict(zip(needed, stages.partial_scores(X, needed)))
    reference = model.predict(X)

    def within(original, approx):
        return np.abs(original - approx) <= tolerance

    simulated = _regression_stages(stages, stops, partial, within, "linear")
    thresholds = 1.0 * simulated.sigma
    first, agrees = _exits(simulated, thresholds)
    output, exit_stage = stages.with_stages(stops, thresholds, simulated.offsets, simulated.slopes).run(X)
    np.testing.assert_array_equal(exit_stage, first)
    assert 0 < (first < len(stops) - 1).mean() < 1
    np.testing.assert_array_equal(within(reference, output), agrees)
    assert any(slope != 0.0 for slope in simulated.slopes)


def test_approximate_plan_meets_its_proof_and_round_trips(staged):
    model, stages = staged["lgb"]
    tolerance = 0.25
    X = _data(1200, 5)[0]
    cascade = calibrate_early_exit(
        model, X, accuracy_target=0.95, staged=stages, tolerance=tolerance, repeats=1
    )
    plan = cascade.plan
    assert not plan.exact and plan.regression, plan.table()
    assert plan.lower_bound >= 0.95 and plan.agreement >= plan.lower_bound
    assert plan.trees_per_row < plan.n_trees and plan.holdout_rows + plan.tune_rows == 1200
    fresh = _data(600, 6)[0]
    output, exit_stage = cascade.run(fresh)
    assert (np.abs(output - model.predict(fresh)) <= tolerance).mean() >= 0.9
    assert (exit_stage < len(plan.stops) - 1).any()
    table = plan.table()
    assert (
        "settled-score" in table and f"within tolerance {tolerance:g}" in table and "lower 95% bound" in table
    )
    copy = pickle.loads(pickle.dumps(plan))
    assert isinstance(copy, EarlyExitPlan) and copy == plan
    rebuilt = ModelCascade.from_plan(model, "predict", copy, **BUILD)
    np.testing.assert_array_equal(rebuilt.run(fresh)[0], output)


def test_callable_tolerance_is_approximate_only(staged):
    model, stages = staged["lgb"]

    def relative(original, approx):
        return np.abs(approx - original) <= 0.1 * np.maximum(np.abs(original), 1.0)

    X = _data(1200, 7)[0]
    cascade = calibrate_early_exit(
        model, X, accuracy_target=0.95, staged=stages, tolerance=relative, repeats=1
    )
    plan = cascade.plan
    assert plan.regression and plan.tolerance is None and "relative" in plan.tolerance_text
    assert plan.exact or plan.lower_bound >= 0.95
    fresh = _data(400, 8)[0]
    assert relative(model.predict(fresh), cascade(fresh)).mean() >= 0.9
    with pytest.raises(EarlyExitToleranceError, match="needs a float tolerance"):
        calibrate_early_exit(model, X, accuracy_target=1.0, staged=stages, tolerance=relative)


def test_tolerance_refusals(staged):
    model, stages = staged["rf"]
    X = _data(200, 9)[0]
    with pytest.raises(EarlyExitToleranceError, match="it needs tolerance=") as missing:
        calibrate_early_exit(model, X, accuracy_target=1.0, staged=stages)
    assert isinstance(missing.value, WillowError) and isinstance(missing.value, ValueError)
    classifier = lgb.LGBMClassifier(n_estimators=3, num_leaves=4, verbose=-1).fit(X_TRAIN, Y_TRAIN > 0)
    with pytest.raises(EarlyExitToleranceError, match="Remove tolerance="):
        calibrate_early_exit(classifier, X, accuracy_target=1.0, tolerance=0.5)
    integer = calibrate_early_exit(model, X, accuracy_target=1.0, staged=stages, tolerance=10)
    assert integer.plan.tolerance == 10.0 and integer.plan.exact and integer.plan.trees_per_row < 16
    with pytest.raises(ValueError, match="finite number > 0"):
        calibrate_early_exit(model, X, accuracy_target=1.0, staged=stages, tolerance=-1.0)


# ---------------------------------------------------------------------------------------------
# the planner: @willow.optimize(tolerance=...) serves a regressor's model cascade


def regress(model, X):
    return model.predict(X)


def doubled(model, X):
    values = model.predict(X)
    return values * 2.0


def _cascade_of(compilation):
    from willow.early_exit.planner import _cascade_of

    return _cascade_of(compilation)


def _serving_cascade(pipeline):
    from willow.early_exit.planner import _cascade_of

    return _cascade_of(pipeline._compilation)


def test_optimize_serves_a_regressor_model_cascade_and_keeps_it(staged, tmp_path):
    import willow

    model, stages = staged["lgb"]
    tolerance = _halfway_tolerance(stages)
    pipeline = willow.optimize(regress, tolerance=tolerance, accuracy_target=1.0, require_faster=False)
    pipeline.calibrate(model, _data(400, 10)[0])
    cascade = _serving_cascade(pipeline)
    assert isinstance(cascade, ModelCascade), pipeline.explain()
    assert cascade.plan.exact and cascade.plan.regression  # early_exit="exact": the leaf bounds' proof
    assert f"within tolerance {tolerance:g}" in pipeline.explain()
    fresh = _data(600, 11)[0]
    expected = model.predict(fresh)
    served = pipeline(model, fresh)
    assert np.abs(served - expected).max() <= tolerance and not np.array_equal(served, expected)
    np.testing.assert_array_equal(pipeline(model, fresh[:1]), model.predict(fresh[:1]))  # full model
    path = tmp_path / "plan.willow"
    pipeline.save(path)
    for copy in (willow.load(path, regress), pickle.loads(pickle.dumps(pipeline))):
        assert _serving_cascade(copy).plan == cascade.plan
        np.testing.assert_array_equal(copy(model, fresh), served)

    approximate = willow.optimize(
        regress, tolerance=0.25, accuracy_target=0.95, require_faster=False, early_exit=True
    )
    approximate.calibrate(model, _data(1200, 12)[0])
    plan = _serving_cascade(approximate).plan
    assert plan.regression and (plan.exact or plan.lower_bound >= 0.95), approximate.explain()
    assert (np.abs(approximate(model, fresh) - expected) <= 0.25).mean() >= 0.9


def test_no_regressor_model_cascade_when_the_function_changes_the_predictions(staged):
    import willow

    model, stages = staged["lgb"]
    pipeline = willow.optimize(
        doubled, tolerance=_halfway_tolerance(stages), accuracy_target=1.0, require_faster=False
    )
    pipeline.calibrate(model, _data(300, 13)[0])
    assert _serving_cascade(pipeline) is None
    assert "computes its return value from the model's predictions" in pipeline.plan_.reason
    fresh = _data(200, 14)[0]
    np.testing.assert_allclose(pipeline(model, fresh), 2.0 * model.predict(fresh), rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# regressors' model cascades where classifiers' work: behind a feature cascade, tiers, Dask

FAST = dict(confidence=0.9, cost_repeats=2, importance_repeats=1)
TOLERANCE = 0.5
WIDE = 1.0  # the feature cascades' tolerance (tabular's slow group moves some rows by more)


@pytest.fixture(scope="module")
def tabular():
    """A LightGBM regressor behind tests/pipelines.numpy_pipeline (a cheap feature group that
    decides the target, except where ``cheap[:, 0] > 1``: there the slow group moves it, so the
    cheap group's error model knows which rows are uncertain): ``(model, cheap, extra,
    features, (train, calibration, test))``."""
    import pipelines
    from conftest import make_tabular

    cheap, extra, _ = make_tabular(2600, seed=7)
    y = 3.0 * cheap[:, 0] + 1.5 * cheap[:, 1] + 2.0 * (cheap[:, 0] > 1) * extra[:, 0]
    parts = np.split(np.arange(len(y)), [800, 2200])
    features = np.hstack([cheap, pipelines.slow_features(extra)])
    # n_jobs=1: the approximate and error models are its clones (10 fits); threads only contend
    model = lgb.LGBMRegressor(**LGB, n_jobs=1).fit(features[parts[0]], y[parts[0]])
    return model, cheap, extra, features, parts


@pytest.fixture
def slow_group_costs(monkeypatch):
    """Computing tabular's slow group ``b`` taken as 1 ms a row more than measured, so that the
    cascade on the cheap group ``a`` is chosen whatever the machine's load (which group serves
    is not what these tests check)."""
    from willow.compiler.profiling import CostProfile

    measured = CostProfile.features_cost
    monkeypatch.setattr(
        CostProfile, "features_cost", lambda c, groups: measured(c, groups) + 1e-3 * ("b" in set(groups))
    )


def _feature_cascade_outputs(plan, approximate, cheap, extra, full):
    """What a feature cascade (``plan``, ``approximate``) alone serves: the approximate model's
    value where confident (on the group it selected: ``a`` the cheap one, ``b`` the slow one), the
    full model's elsewhere; and which rows reach the model."""
    import pipelines

    (group,) = plan.selected
    inputs = {"a": cheap * 1.0, "b": pipelines.slow_features(extra)}[group]
    approx, confidence = approximate.predict_with_confidence(inputs)
    uncertain = confidence < plan.threshold
    return np.where(uncertain, full, approx), uncertain


@pytest.mark.parametrize(
    "cheapest, early_exit", [("combined", "exact"), ("model cascade", "exact"), ("combined", True)]
)
def test_a_regressor_feature_cascade_and_its_model_cascades(
    tabular, monkeypatch, tmp_path, cascade_pays, slow_group_costs, cheapest, early_exit
):
    """The planner's comparison for a regressor, timings fixed so that ``cheapest`` measures
    cheapest. The combined plan: rows the feature cascade answers keep its answer, the rest get
    the exact-within-tolerance model cascade's, so every row agrees with the original wherever
    the feature cascade's did (its proof holds); with ``early_exit=True`` too (settled-score exits
    behind a feature cascade would need a joint proof). The model cascade alone: every row within
    the tolerance. Save/load and pickle keep either."""
    import pipelines
    from equivalence import assert_same_as_original

    import willow
    from willow.cascades import calibration
    from willow.early_exit import calibrate, planner

    candidates = ["feature cascade", "combined", "model cascade"]

    def fixed(fns, repeats):  # each still runs: a failing candidate must fail here too
        for fn in fns:
            fn()
        assert len(fns) == len(candidates)
        return [[1.0 if name == cheapest else 3.0] * repeats for name in candidates]

    monkeypatch.setattr(calibration, "interleaved_seconds", lambda fns, r: [3.0, 1.0, 2.0][: len(fns)])
    monkeypatch.setattr(planner, "interleaved_samples", fixed)
    monkeypatch.setattr(planner, "MIN_SPEEDUP", 0.0)  # whatever the model cascade measured itself
    monkeypatch.setattr(planner, "MIN_GAIN", 0.0)
    model, cheap, extra, features, (_, rows, test) = tabular
    pipeline = willow.optimize(
        pipelines.numpy_pipeline,
        tolerance=WIDE,
        accuracy_target=0.97,
        require_faster=True,
        early_exit=early_exit,
        **FAST,
    )
    pipeline.calibrate(model, cheap[rows], extra[rows])
    plan = pipeline.plan_
    assert f"Serving: {cheapest} (faster beyond the timing noise)" in plan.reason, plan.reason
    cascade = _serving_cascade(pipeline)
    assert cascade.plan.exact and cascade.plan.regression and cascade.plan.tolerance == WIDE
    assert f"within tolerance {WIDE:g}" in pipeline.explain()
    # the test's few uncertain rows through the stages (as a large batch's), not the full model
    monkeypatch.setattr(calibrate, "SMALL_BATCH_ROWS", 0)
    library = model.predict(features[test])
    served = pipeline(model, cheap[test], extra[test])
    if cheapest == "combined":
        assert plan.cascade and plan.lower_bound >= 0.97, plan.table()
        assert plan.selected == ("a",) and plan.confident_fraction > 0.5
        alone, uncertain = _feature_cascade_outputs(
            plan, pipeline._approximate, cheap[test], extra[test], library
        )
        assert 20 <= uncertain.sum() < len(test)
        np.testing.assert_array_equal(served[~uncertain], alone[~uncertain])  # the feature cascade's
        assert (np.abs(served - library) <= WIDE).mean() >= 0.9
    else:
        assert not plan.cascade and plan.lower_bound >= 0.97, plan.table()  # the exact exits' proof
        uncertain = np.ones(len(test), dtype=bool)
    assert np.abs(served[uncertain] - library[uncertain]).max() <= WIDE  # the model cascade's
    assert not np.allclose(served[uncertain], library[uncertain], rtol=0, atol=1e-9)  # it exits early
    path = tmp_path / "plan.willow"
    pipeline.save(path)
    for copy in (willow.load(path, pipelines.numpy_pipeline), pickle.loads(pickle.dumps(pipeline))):
        assert _serving_cascade(copy).plan == cascade.plan
        np.testing.assert_array_equal(copy(model, cheap[test], extra[test]), served)
        np.testing.assert_array_equal(copy(model, cheap[test][:1], extra[test][:1]), served[:1])
        assert_same_as_original(copy, model, cheap[test][:0], extra[test][:0])  # LightGBM's ValueError


def within_wide(original, approx):
    return np.abs(approx - original) <= WIDE


def test_a_callable_tolerance_gets_no_combined_plan(tabular, cascade_pays, slow_group_costs):
    """Near the full model's value does not imply agreeing under a callable tolerance, so no
    model cascade goes behind the feature cascade (and exact exits need a float): the feature
    cascade serves, its uncertain rows answered by the full compiled ensemble."""
    import pipelines

    import willow

    model, cheap, extra, features, (_, rows, test) = tabular
    pipeline = willow.optimize(
        pipelines.numpy_pipeline, tolerance=within_wide, accuracy_target=0.97, require_faster=False, **FAST
    )
    pipeline.calibrate(model, cheap[rows], extra[rows])
    plan = pipeline.plan_
    assert plan.cascade and _serving_cascade(pipeline) is None, pipeline.explain()
    assert "no combined plan (a callable tolerance" in plan.reason, plan.reason
    assert "no model cascade alone" in plan.reason and "needs a float tolerance" in plan.reason
    library = model.predict(features[test])
    alone, _ = _feature_cascade_outputs(plan, pipeline._approximate, cheap[test], extra[test], library)
    np.testing.assert_allclose(pipeline(model, cheap[test], extra[test]), alone, rtol=1e-9, atol=1e-12)


def test_regressor_tiers_with_a_feature_cascade_keep_their_own_plans(
    tabular, monkeypatch, tmp_path, cascade_pays, slow_group_costs
):
    """Tiers (0.99, 0.95): no feature cascade reaches 0.99, so the model cascade alone serves that
    tier; the 0.95 tier's feature cascade sends its uncertain rows to a model cascade (combined).
    Each tier within the tolerance where its plan says so; save/load and pickle keep both."""
    import pipelines

    import willow
    from willow.early_exit import calibrate, tiers

    model, cheap, extra, features, (_, rows, test) = tabular
    pipeline = willow.optimize(
        pipelines.numpy_pipeline, tolerance=WIDE, accuracy_target=(0.99, 0.95), require_faster=False, **FAST
    )
    pipeline.calibrate(model, cheap[rows], extra[rows])
    strict, loose = pipeline.tiers_
    assert not strict.plan.cascade and "Instead, a model cascade inside" in strict.plan.reason, (
        strict.plan.reason
    )
    assert loose.plan.cascade and "Serving: combined" in loose.plan.reason, loose.plan.reason
    plans = tiers.served_plans(pipeline)
    assert all(p is not None and p.exact and p.regression and p.tolerance == WIDE for p in plans)
    monkeypatch.setattr(calibrate, "SMALL_BATCH_ROWS", 0)  # the few uncertain rows through the stages
    library = model.predict(features[test])
    served = {
        tier.target: pipeline.tier(tier.target)(model, cheap[test], extra[test]) for tier in pipeline.tiers_
    }
    assert np.abs(served[0.99] - library).max() <= WIDE and not np.allclose(served[0.99], library)
    alone, uncertain = _feature_cascade_outputs(
        loose.plan, pipeline._tiers[0].approximate, cheap[test], extra[test], library
    )
    np.testing.assert_array_equal(served[0.95][~uncertain], alone[~uncertain])
    assert uncertain.any() and np.abs(served[0.95][uncertain] - library[uncertain]).max() <= WIDE
    path = tmp_path / "tiers.willow"
    pipeline.save(path)
    for copy in (willow.load(path, pipelines.numpy_pipeline), pickle.loads(pickle.dumps(pipeline))):
        assert tiers.served_plans(copy) == plans
        for target, expected in served.items():
            np.testing.assert_array_equal(copy.tier(target)(model, cheap[test], extra[test]), expected)


@pytest.fixture(scope="module")
def tiered(staged):
    """``regress`` with tiers (0.99, 0.95) and settled-score exits: each tier its own model
    cascade within the tolerance (no feature cascade: the model reads one group)."""
    import willow

    model, _ = staged["lgb"]
    pipeline = willow.optimize(
        regress,
        tolerance=TOLERANCE,
        accuracy_target=(0.99, 0.95),
        early_exit=True,
        require_faster=False,
        **FAST,
    )
    pipeline.calibrate(model, _data(1600, 20)[0])
    return pipeline


def test_each_regressor_tier_serves_its_own_model_cascade(staged, tiered, tmp_path):
    import willow
    from willow.early_exit import tiers

    model, _ = staged["lgb"]
    plans = tiers.served_plans(tiered)
    assert len(plans) == 2 and all(p is not None for p in plans), tiered.explain()
    for plan, target in zip(plans, (0.99, 0.95)):
        assert plan.regression and plan.tolerance == TOLERANCE and plan.accuracy_target == target
        assert plan.exact or plan.lower_bound >= target, plan.table()
    assert plans[0] != plans[1] and not plans[1].exact and plans[1].trees_per_row < plans[1].n_trees
    assert "Tier 0.95: Model cascade inside LGBMRegressor.predict" in tiered.explain()
    # one tier's swap left the other's operator alone; both share the staged model's kernels
    strict, loose = (_cascade_of(c) for c in (tiered._compilation, tiered._tiers[0].compilation))
    assert strict is not loose and strict.staged._kernels is loose.staged._kernels
    fresh = _data(600, 21)[0]
    library = model.predict(fresh)
    served = {target: tiered.tier(target)(model, fresh) for target in (0.99, 0.95)}
    assert np.abs(served[0.99] - library).max() <= TOLERANCE  # exact within the tolerance
    assert (np.abs(served[0.95] - library) <= TOLERANCE).mean() >= 0.9
    assert not np.array_equal(served[0.95], served[0.99])
    path = tmp_path / "tiers.willow"
    tiered.save(path)
    for copy in (willow.load(path, regress), pickle.loads(pickle.dumps(tiered))):
        assert tiers.served_plans(copy) == plans
        for target in (0.99, 0.95):
            np.testing.assert_array_equal(copy.tier(target)(model, fresh), served[target])
            np.testing.assert_array_equal(copy.tier(target)(model, fresh[:1]), library[:1])  # full model
            with pytest.raises(ValueError):  # 0 rows: as the library
                copy.tier(target)(model, fresh[:0])


def test_dask_serves_a_regressor_model_cascade_like_one_process(staged, tiered):
    pytest.importorskip("dask")
    import dask
    import dask.dataframe as dd

    import willow.dask

    model, _ = staged["lgb"]
    frame = pd.DataFrame(_data(420, 22)[0], columns=[f"Column_{i}" for i in range(N_FEATURES)])
    edges = (0, 300, 300, 301, 420)  # partitions of 300 (through the stages), 0, 1 and 119 rows
    parts = [dask.delayed(frame.iloc[a:b]) for a, b in zip(edges[:-1], edges[1:])]
    ddf = dd.from_delayed(parts, meta=frame.iloc[:0])
    willow.dask._CACHE.clear()
    computed = willow.dask.predict(tiered, ddf, model).compute(scheduler="synchronous")
    single = np.concatenate([tiered(model, frame.iloc[a:b]) for a, b in zip(edges[:-1], edges[1:]) if b > a])
    np.testing.assert_array_equal(computed.to_numpy(), single)
    assert computed.index.equals(frame.index)
    assert np.abs(computed.to_numpy() - model.predict(frame)).max() <= TOLERANCE
    (call,) = willow.dask._CACHE.values()  # the pickled pipeline, rebuilt with its model cascade
    assert (
        call.pipeline is not tiered and _serving_cascade(call.pipeline).plan == _serving_cascade(tiered).plan
    )


def test_uncompiled_regressor_pipelines_serve_a_staged_model(staged, tmp_path):
    """compile=False, early_exit=True: each tier's staged regressor (its own compiled kernels)
    takes the place of the library's predict call, within the tolerance as its plan proves;
    small batches are the library's call; plan files and pickles keep it. With
    early_exit="exact" nothing is compiled, so the plan says why none serves."""
    import willow
    from willow.early_exit import tiers
    from willow.early_exit.uncompiled import LibraryCall

    model, _ = staged["lgb"]
    options = dict(tolerance=TOLERANCE, compile=False, require_faster=False, **FAST)
    pipeline = willow.optimize(regress, accuracy_target=(0.99, 0.95), early_exit=True, **options)
    pipeline.calibrate(model, _data(1600, 20)[0])
    plans = tiers.served_plans(pipeline)
    assert all(p is not None and p.regression and p.tolerance == TOLERANCE for p in plans), pipeline.explain()
    fresh = _data(600, 23)[0]
    library = model.predict(fresh)
    for index, (tier, plan) in enumerate(zip(pipeline.tiers_, plans)):
        assert "in place of the uncompiled LGBMRegressor.predict call" in tier.plan.reason, tier.plan.reason
        assert plan.accuracy_target == tier.target and (plan.exact or plan.lower_bound >= tier.target)
        compilation = pipeline._compilation if index == 0 else pipeline._tiers[index - 1].compilation
        assert isinstance(_cascade_of(compilation).full, LibraryCall)
        served = pipeline.tier(tier.target)(model, fresh)
        assert (np.abs(served - library) <= TOLERANCE).mean() >= (1.0 if plan.exact else 0.9)
        np.testing.assert_array_equal(pipeline.tier(tier.target)(model, fresh[:1]), library[:1])
    assert not plans[1].exact and plans[1].trees_per_row < plans[0].trees_per_row
    path = tmp_path / "uncompiled.willow"
    pipeline.save(path)
    for copy in (willow.load(path, regress), pickle.loads(pickle.dumps(pipeline))):
        assert tiers.served_plans(copy) == plans
        for target in (0.99, 0.95):
            np.testing.assert_array_equal(
                copy.tier(target)(model, fresh), pipeline.tier(target)(model, fresh)
            )
    exact = willow.optimize(regress, accuracy_target=0.95, **options)
    exact.calibrate(model, _data(400, 24)[0])
    assert "Optimize with compile=True" in exact.plan_.reason and tiers.served_plans(exact) == (None,)
    np.testing.assert_array_equal(exact(model, fresh), library)
