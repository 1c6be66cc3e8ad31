"""Cascades of numeric outputs with ``tolerance=`` (willow.cascades.tolerance): regression and
``predict_proba`` cascades proven within tolerance, the option's refusals, save/load and pickle."""

from __future__ import annotations

import pickle

import cloudpickle
import numpy as np
import pytest
from equivalence import assert_cascade_equivalent, assert_same_as_original
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeRegressor

import willow
from willow.cascades.tolerance import RegressionApproximateModel, ToleranceError, ToleranceSpec, numeric_spec
from willow.errors import UnsavablePlanError

FAST = dict(accuracy_target=0.95, cost_repeats=1, importance_repeats=1, require_faster=False)
TOLERANCE = 0.5


def slow_features(x):
    """A deliberately costly feature group (elementwise, so rows stay independent), costly
    enough that the cascade's expected saving stands far above the timing noise of a loaded
    machine (the plan is only cascaded when it is expected to be cheaper)."""
    for _ in range(200):
        x = np.tanh(x) * 1.01
    return x


def within_half(original, approx):
    """A module-level tolerance callable: relative 10% or absolute 0.5, whichever is larger."""
    return np.abs(approx - original) <= np.maximum(0.5, 0.1 * np.abs(original))


@willow.optimize(tolerance=TOLERANCE, compile=False, **FAST)
def regress(model, cheap, costly):
    a = cheap * 1.0
    b = slow_features(costly)
    X = np.hstack([a, b])
    return model.predict(X)


@willow.optimize(tolerance=0.1, **FAST)
def probabilities(model, cheap, costly):
    a = cheap * 1.0
    b = slow_features(costly)
    X = np.hstack([a, b])
    return model.predict_proba(X)


# The same function with a module-level callable tolerance, and called with a classifier, whose
# predict() returns labels.
regress_callable = willow.optimize(regress.__wrapped__, tolerance=within_half, compile=False, **FAST)
labels = willow.optimize(regress.__wrapped__, tolerance=0.1, compile=False, **FAST)


def make_rows(n, seed):
    rng = np.random.default_rng(seed)
    cheap, costly = rng.normal(size=(n, 4)), rng.normal(size=(n, 30))
    target = cheap @ np.array([3.0, -2.0, 1.0, 0.5]) + 0.3 * slow_features(costly)[:, :3].sum(axis=1)
    return cheap, costly, target + 0.1 * rng.normal(size=n)


@pytest.fixture(scope="module")
def data():
    cheap, costly, target = make_rows(4000, 0)
    features = np.hstack([cheap, slow_features(costly)])[:1000]
    regressor = DecisionTreeRegressor(max_depth=6, random_state=0).fit(features, target[:1000])
    classifier = LogisticRegression().fit(features, (target[:1000] > 0).astype(int))
    calibration = (cheap[1000:3000], costly[1000:3000])
    fresh = (cheap[3000:], costly[3000:])
    return regressor, classifier, calibration, fresh


@pytest.fixture(scope="module")
def regression(data):
    regressor, _, calibration, _ = data
    return regress.calibrate(regressor, *calibration)


def test_regression_cascade_proven_and_fresh_rows_within_tolerance(data, regression):
    regressor, _, _, (cheap, costly) = data
    plan = regression.plan_
    assert plan.cascade, plan.reason
    assert plan.lower_bound >= plan.accuracy_target
    assert 0.0 < plan.confident_fraction < 1.0
    assert isinstance(regression._approximate, RegressionApproximateModel)
    assert_cascade_equivalent(regression, regressor, cheap, costly)  # routing: exact full rows
    fresh = np.abs(regression(regressor, cheap, costly) - regress.__wrapped__(regressor, cheap, costly))
    assert np.mean(fresh <= TOLERANCE) >= plan.accuracy_target
    # the cascade did approximate: some fresh rows differ from the original (within tolerance)
    assert np.any(fresh > 0)
    for rows in (slice(0, 0), slice(0, 1)):  # 0 and 1 rows behave like the original's output
        assert_same_as_original(regression, regressor, cheap[rows], costly[rows])


def test_explain_states_the_tolerance(regression):
    text = regression.explain()
    assert "Tolerance: a row agrees with the original when |approx - original| <= 0.5" in text
    assert "judged on the returned numbers, within tolerance" in text


def test_confidence_orders_the_approximate_errors(data, regression):
    """The error model's confidence is informative: on fresh rows the confident half errs less."""
    regressor, _, _, (cheap, costly) = data
    approx, confidence = regression._approximate.predict_with_confidence(cheap * 1.0)
    error = np.abs(approx - regress.__wrapped__(regressor, cheap, costly))
    high = confidence >= np.median(confidence)
    assert error[high].mean() < error[~high].mean()


def test_numeric_output_without_tolerance_stays_exact(data):
    regressor, _, calibration, _ = data
    exact = willow.optimize(regress.__wrapped__, compile=False, **FAST).calibrate(regressor, *calibration)
    assert not exact.plan_.cascade and "tolerance=" in exact.plan_.reason


def test_callable_tolerance_cascade_and_save_by_name(data, tmp_path):
    regressor, _, calibration, (cheap, costly) = data
    regress_callable.calibrate(regressor, *calibration)
    plan = regress_callable.plan_
    assert plan.cascade and plan.lower_bound >= plan.accuracy_target
    served = regress_callable(regressor, cheap, costly)
    original = regress_callable.__wrapped__(regressor, cheap, costly)
    assert np.mean(within_half(original, served)) >= plan.accuracy_target
    assert "within_half(original, approx) is True" in regress_callable.explain()
    regress_callable.save(tmp_path / "callable.willow")
    loaded = willow.load(tmp_path / "callable.willow", regress_callable)
    assert loaded.tolerance is within_half
    np.testing.assert_array_equal(loaded(regressor, cheap, costly), served)


def test_lambda_tolerance_cannot_be_saved(data, tmp_path):
    regressor, _, calibration, _ = data
    pipeline = willow.optimize(
        regress.__wrapped__, tolerance=lambda a, b: np.abs(a - b) < 1, compile=False, **FAST
    )
    pipeline.calibrate(regressor, *calibration)
    with pytest.raises(UnsavablePlanError, match="define it at module level"):
        pipeline.save(tmp_path / "lambda.willow")
    served = pipeline(regressor, *calibration)
    np.testing.assert_array_equal(
        cloudpickle.loads(cloudpickle.dumps(pipeline))(regressor, *calibration), served
    )


def test_proba_cascade_within_tolerance_on_every_column(data):
    _, classifier, calibration, (cheap, costly) = data
    probabilities.calibrate(classifier, *calibration)
    plan = probabilities.plan_
    assert plan.cascade, plan.reason
    assert plan.lower_bound >= plan.accuracy_target
    assert isinstance(probabilities._output, ToleranceSpec)
    assert_cascade_equivalent(probabilities, classifier, cheap, costly)
    served = probabilities(classifier, cheap, costly)
    original = probabilities.__wrapped__(classifier, cheap, costly)
    assert np.mean(np.abs(served - original).max(axis=1) <= 0.1) >= plan.accuracy_target


def test_save_load_and_pickle_round_trip(data, regression, tmp_path):
    regressor, _, _, (cheap, costly) = data
    served = regression(regressor, cheap, costly)
    regression.save(tmp_path / "regress.willow")
    loaded = willow.load(tmp_path / "regress.willow", regress)
    assert loaded.tolerance == TOLERANCE and loaded.plan_.cascade
    assert isinstance(loaded._output, ToleranceSpec) and loaded._output.tolerance == TOLERANCE
    np.testing.assert_array_equal(loaded(regressor, cheap, costly), served)
    clone = pickle.loads(pickle.dumps(regression))
    np.testing.assert_array_equal(clone(regressor, cheap, costly), served)


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (0, ValueError, "finite number > 0"),
        (-0.5, ValueError, "finite number > 0"),
        (float("nan"), ValueError, "finite number > 0"),
        (float("inf"), ValueError, "finite number > 0"),
        ("0.1", TypeError, "got str '0.1'"),
        (True, TypeError, "got bool True"),
    ],
)
def test_invalid_tolerance_is_refused_at_decoration(value, error, message):
    with pytest.raises(error, match=message):
        willow.optimize(regress.__wrapped__, tolerance=value)


def test_tolerance_is_refused_for_top_k_queries():
    with pytest.raises(ValueError, match='applies to query="predict"'):
        willow.optimize(regress.__wrapped__, query="topk", k=5, tolerance=0.5)


def test_tolerance_on_label_outputs_is_refused(data):
    _, classifier, calibration, _ = data
    with pytest.raises(ToleranceError, match="returns labels"):
        labels.calibrate(classifier, *calibration)


def test_tolerance_callable_of_the_wrong_shape_is_refused(data):
    regressor, _, calibration, _ = data
    pipeline = willow.optimize(
        regress.__wrapped__,
        tolerance=lambda original, approx: np.abs(approx - original),
        compile=False,
        **FAST,
    )
    with pytest.raises(ToleranceError, match=r"must return one bool per row \(shape \(\d+,\), dtype bool\)"):
        pipeline.calibrate(regressor, *calibration)


def test_regression_approximate_model_compiles_and_round_trips():
    """The compiled approximate and error models reproduce the estimators, and come back compiled
    after the plan-file encoding (``__getstate__``/``__setstate__``)."""
    from sklearn.linear_model import Ridge

    from willow.cascades.outputs import OutputSpec
    from willow.compiler.lowering import lower

    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 3))
    target = X @ np.array([1.0, -1.0, 0.5]) + np.abs(X[:, 0]) * rng.normal(size=300)
    spec = numeric_spec(OutputSpec("predict", np.dtype(float), None, None), 0.3, "line 1")
    model = RegressionApproximateModel.fit(Ridge(), X, target, spec, 0)
    python = model.predict_with_confidence(X)
    assert model.compile(lower, X) == "" and model.compiled
    for got, expected in zip(model.predict_with_confidence(X), python):
        np.testing.assert_allclose(got, expected, rtol=1e-9)
    again = RegressionApproximateModel.__new__(RegressionApproximateModel)
    again.__setstate__(model.__getstate__())
    assert again.compiled
    for got, expected in zip(again.predict_with_confidence(X), python):
        np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_monitor_counts_agreement_within_tolerance(data):
    """The serving monitor judges sampled rows with the same within-tolerance agreement."""
    regressor, _, calibration, (cheap, costly) = data
    pipeline = willow.optimize(regress.__wrapped__, tolerance=TOLERANCE, compile=False, monitor=1.0, **FAST)
    pipeline.calibrate(regressor, *calibration)
    assert pipeline.plan_.cascade, pipeline.plan_.reason
    served = pipeline(regressor, cheap, costly)
    within = np.abs(served - regress.__wrapped__(regressor, cheap, costly)) <= TOLERANCE
    state = pipeline.monitor_
    assert state.rows_sampled == len(cheap) and state.rows_agreed == int(within.sum())
