"""Model cascades wherever a pipeline is served: accuracy tiers, Dask, single rows, compile=False.

Tiny LightGBM models and few rows (tests/test_early_exit.py's data: NaN, a categorical feature);
every served output is compared with the library's own on the same rows: equal labels where the
plan is exact, the plan's proven agreement where it is not.
"""

from __future__ import annotations

import pickle

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from equivalence import assert_same_as_original
from test_early_exit import CAT, LGB, X_TRAIN, Y_BIN, _data, model_pipeline
from test_early_exit import tabular as tabular  # noqa: F401 (a fixture)

import willow
from willow.early_exit import ModelCascade, planner
from willow.early_exit import tiers as early_exit_tiers
from willow.early_exit.wiring import model_node
from willow.errors import CalibrationError

TIERS = (0.99, 0.9)
FAST = dict(require_faster=False, confidence=0.9, cost_repeats=2, importance_repeats=1)


@pytest.fixture(scope="module")
def model():
    return lgb.LGBMClassifier(**LGB).fit(X_TRAIN, Y_BIN, categorical_feature=[CAT])


def _operator(compilation):
    return getattr(compilation.operators, model_node(compilation).attribute)


def _frame(model, X):
    return pd.DataFrame(X, columns=model.booster_.feature_name())


@pytest.fixture(scope="module")
def approximate_tiers(model):
    """Tiers (0.99, 0.9) with margin exits (early_exit=True): each tier its own model cascade."""
    patch = pytest.MonkeyPatch()

    def refused(*args, **kwargs):  # cheap model first has its own tests; staged exits are checked here
        raise CalibrationError("not in this test")

    patch.setattr(planner, "_calibrate_cheap", refused)
    try:
        pipeline = willow.optimize(model_pipeline, accuracy_target=TIERS, early_exit=True, **FAST)
        pipeline.calibrate(model, _data(1600, 41)[0])
    finally:
        patch.undo()
    return pipeline


def test_each_tier_serves_its_own_model_cascade_proven_at_its_target(model, approximate_tiers):
    pipeline = approximate_tiers
    plans = early_exit_tiers.served_plans(pipeline)
    assert len(plans) == 2 and all(p is not None for p in plans), pipeline.explain()
    for plan, target in zip(plans, TIERS):  # exact exits, or margins proven at the tier's target
        assert plan.accuracy_target == target and (plan.exact or plan.lower_bound >= target), plan.table()
    assert not plans[1].exact and plans[0] != plans[1]  # the looser target exits earlier or more often
    assert plans[1].trees_per_row <= plans[0].trees_per_row
    # one tier's swap left the other's operator alone; both share the full ensemble and kernels
    strict, loose = _operator(pipeline._compilation), _operator(pipeline._tiers[0].compilation)
    assert isinstance(strict, ModelCascade) and isinstance(loose, ModelCascade) and strict is not loose
    assert strict.plan is plans[0] and loose.plan is plans[1]
    assert strict.full is loose.full and strict.staged._kernels is loose.staged._kernels
    fresh = _data(700, 42)[0]
    expected = model.predict(fresh)
    for target in TIERS:
        served = pipeline.tier(target)(model, fresh)
        np.testing.assert_array_equal(served, _operator_of(pipeline, target)(fresh))
        assert (served == expected).mean() >= target - 0.05
    text = pipeline.explain()
    assert "Tier 0.9: Model cascade inside LGBMClassifier.predict" in text, text
    # the tier table reports the looser tier's proven bound, not "exact"
    assert pipeline.tiers_[1].lower_bound == plans[1].lower_bound
    assert f"{plans[1].lower_bound:.4f}" in text and "model cascade only" in text
    from willow.serve.endpoint import _same_plans

    assert _same_plans(pipeline, 2) == (0, 1)  # two plans of different cost: the scaler may step


def _operator_of(pipeline, target):
    index = TIERS.index(target)
    compilation = pipeline._compilation if index == 0 else pipeline._tiers[index - 1].compilation
    return lambda X: _operator(compilation).run(X)[0]  # through the stages, every batch size


def test_tiers_keep_their_model_cascades_through_save_load_and_pickle(model, approximate_tiers, tmp_path):
    pipeline = approximate_tiers
    path = tmp_path / "tiers.willow"
    pipeline.save(path)
    fresh = _data(600, 43)[0]
    plans = early_exit_tiers.served_plans(pipeline)
    for copy in (willow.load(path, model_pipeline), pickle.loads(pickle.dumps(pipeline))):
        assert early_exit_tiers.served_plans(copy) == plans
        for target in TIERS:
            np.testing.assert_array_equal(
                copy.tier(target)(model, fresh), pipeline.tier(target)(model, fresh)
            )
        assert "Tier 0.9: Model cascade inside" in copy.explain()
        strict, loose = _operator(copy._compilation), _operator(copy._tiers[0].compilation)
        assert strict is not loose and strict.full is loose.full


def test_exact_tiers_share_one_model_cascade_and_give_the_library_labels(model):
    """early_exit="exact" (the default): every tier's model cascade is exact, so the looser tier
    serves the strictest's (one plan: the scaler groups them) and every tier equals the library."""
    pipeline = willow.optimize(model_pipeline, accuracy_target=(0.9, 0.8), **FAST)
    pipeline.calibrate(model, _data(500, 44)[0])
    plans = early_exit_tiers.served_plans(pipeline)
    assert plans[0] is not None and plans[0].exact and plans[1] is plans[0], pipeline.explain()
    assert pipeline.tiers_[1].plan.reason.startswith("serves the 0.9 tier's plan")
    from willow.serve.endpoint import _same_plans

    assert _same_plans(pipeline, 2) == (0, 0)
    fresh = _data(400, 45)[0]
    for target in (0.9, 0.8):
        np.testing.assert_array_equal(pipeline.tier(target)(model, fresh), model.predict(fresh))
    copy = pickle.loads(pickle.dumps(pipeline))
    assert early_exit_tiers.served_plans(copy)[1] == plans[0]
    np.testing.assert_array_equal(copy.tier(0.8)(model, fresh), model.predict(fresh))


@pytest.fixture(scope="module")
def exact(model):
    """A pipeline served by an exact model cascade (identical labels)."""
    pipeline = willow.optimize(model_pipeline, accuracy_target=1.0, **FAST)
    pipeline.calibrate(model, _data(500, 46)[0])
    assert isinstance(_operator(pipeline._compilation), ModelCascade), pipeline.explain()
    return pipeline


@pytest.mark.parametrize("rows", [0, 1, 2, 300])
def test_single_rows_and_tiny_batches_give_the_library_labels(model, exact, rows):
    fresh = _data(300, 47)[0][:rows]
    assert_same_as_original(exact, model, fresh)  # 0 rows: LightGBM's own ValueError
    assert_same_as_original(exact, model, _frame(model, fresh))
    if rows:
        np.testing.assert_array_equal(exact(model, fresh), model.predict(fresh))


def test_dask_serves_the_model_cascade_like_the_original(model, exact):
    pytest.importorskip("dask")
    import dask
    import dask.dataframe as dd

    import willow.dask

    frame = _frame(model, _data(420, 48)[0])
    edges = (0, 300, 300, 301, 420)  # partitions of 300 (through the stages), 0, 1 and 119 rows
    parts = [dask.delayed(frame.iloc[a:b]) for a, b in zip(edges[:-1], edges[1:])]
    ddf = dd.from_delayed(parts, meta=frame.iloc[:0])
    willow.dask._CACHE.clear()
    computed = willow.dask.predict(exact, ddf, model).compute(scheduler="synchronous")
    np.testing.assert_array_equal(computed.to_numpy(), model.predict(frame))
    assert computed.index.equals(frame.index)
    # what served the partitions: the pickled pipeline, rebuilt with its model cascade
    (call,) = willow.dask._CACHE.values()
    served = _operator(call.pipeline._compilation)
    assert call.pipeline is not exact and isinstance(served, ModelCascade)
    assert served.plan == _operator(exact._compilation).plan


def test_uncompiled_pipelines_serve_a_staged_model_in_place_of_the_library_call(model, tmp_path):
    """compile=False, early_exit=True: the model call is the only operator, the library's own
    call, and each tier's staged model takes its place (every other statement stays Python);
    small batches are the library's call, so exact; plan files and pickles keep it."""
    from willow.early_exit.uncompiled import LibraryCall

    pipeline = willow.optimize(model_pipeline, accuracy_target=TIERS, early_exit=True, compile=False, **FAST)
    pipeline.calibrate(model, _data(1000, 49)[0])
    plans = early_exit_tiers.served_plans(pipeline)
    assert all(p is not None for p in plans), pipeline.explain()
    fresh = _data(600, 50)[0]
    library = model.predict(fresh)
    for index, (tier, plan) in enumerate(zip(pipeline.tiers_, plans)):
        assert "in place of the uncompiled LGBMClassifier.predict call" in tier.plan.reason
        assert plan.accuracy_target == tier.target and (plan.exact or plan.lower_bound >= tier.target)
        compilation = pipeline._compilation if index == 0 else pipeline._tiers[index - 1].compilation
        assert [n.statement for n in compilation.nodes] == [None]  # nothing else is compiled
        cascade = _operator(compilation)
        assert isinstance(cascade, ModelCascade) and isinstance(cascade.full, LibraryCall)
        served = pipeline.tier(tier.target)(model, fresh)
        np.testing.assert_array_equal(served, cascade.run(fresh)[0])
        assert (served == library).mean() >= tier.target - 0.05
        np.testing.assert_array_equal(pipeline.tier(tier.target)(model, fresh[:1]), library[:1])
    assert "in place of the uncompiled" in pipeline.explain()
    path = tmp_path / "uncompiled.willow"
    pipeline.save(path)
    for copy in (willow.load(path, model_pipeline), pickle.loads(pickle.dumps(pipeline))):
        assert early_exit_tiers.served_plans(copy) == plans
        for target in TIERS:
            np.testing.assert_array_equal(
                copy.tier(target)(model, fresh), pipeline.tier(target)(model, fresh)
            )


def test_uncompiled_pipelines_say_why_no_exact_model_cascade_serves(model):
    """compile=False with early_exit="exact" (the default): nothing is compiled, so no model
    cascade serves; the plan says why and what to do, and outputs are the library's."""
    pipeline = willow.optimize(model_pipeline, accuracy_target=TIERS, compile=False, **FAST)
    pipeline.calibrate(model, _data(1000, 49)[0])
    assert early_exit_tiers.served_plans(pipeline) == (None, None)
    for tier in pipeline.tiers_:
        assert "the model call stays LGBMClassifier.predict in Python" in tier.plan.reason
        assert "Optimize with compile=True" in tier.plan.reason
    assert "Optimize with compile=True" in pipeline.explain()
    fresh = _data(300, 50)[0]
    np.testing.assert_array_equal(pipeline(model, fresh), model.predict(fresh))
    off = willow.optimize(model_pipeline, accuracy_target=0.9, early_exit=False, compile=False, **FAST)
    off.calibrate(model, _data(400, 51)[0])
    assert "compile=False" not in off.plan_.reason


def test_tiers_with_feature_cascades_keep_their_own_model_operators(tabular, cascade_pays):
    """The strict tier's feature cascade sends its uncertain rows to an exact model cascade of its
    own (the combined plan); the loose tier's feature cascade answers nearly every row, too few
    reach the model to tune one, so its uncertain rows reach the full compiled ensemble: the
    strict tier's swap did not reach it. Every row is the tier's approximate answer where
    confident, the library's label elsewhere."""
    import pipelines

    from willow.serve.endpoint import _same_plans

    model, cheap, extra, features, (_, calibration, test) = tabular
    targets = (0.97, 0.9)
    pipeline = willow.optimize(pipelines.numpy_pipeline, **{**FAST, "accuracy_target": targets})
    rows = calibration[:900]
    pipeline.calibrate(model, cheap[rows], extra[rows])
    strict, loose = pipeline.tiers_
    assert strict.plan.cascade and "Serving: combined" in strict.plan.reason, strict.plan.reason
    assert loose.plan.cascade and "Serving: feature cascade" in loose.plan.reason, loose.plan.reason
    assert strict.plan.threshold != loose.plan.threshold
    plans = early_exit_tiers.served_plans(pipeline)
    assert plans[0] is not None and plans[0].exact and plans[1] is None
    operators = [_operator(pipeline._compilation), _operator(pipeline._tiers[0].compilation)]
    assert operators[0].plan is plans[0] and not isinstance(operators[1], ModelCascade)
    assert operators[0].full is operators[1]  # the one compiled full ensemble
    assert _same_plans(pipeline, 2) == (0, 1)
    library = model.predict(features[test])
    copy = pickle.loads(pickle.dumps(pipeline))
    assert early_exit_tiers.served_plans(copy) == plans
    for tier, approximate in zip(pipeline.tiers_, (pipeline._approximate, pipeline._tiers[0].approximate)):
        approx, confidence = approximate.predict_with_confidence(cheap[test] * 1.0)
        expected = np.where(confidence >= tier.plan.threshold, approx, library)
        assert (
            tier.target == loose.target or (confidence < tier.plan.threshold).any()
        )  # rows reach the model cascade
        for served in (pipeline, copy):
            np.testing.assert_array_equal(served.tier(tier.target)(model, cheap[test], extra[test]), expected)
