"""The serving-time monitor (willow.monitor): its confidence sequence, and a cascade that falls
back to the pipeline without it when served rows shift away from the calibration rows."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pipelines
import pytest
from conftest import make_tabular
from sklearn.linear_model import LogisticRegression

import willow
from willow.monitor import MonitorFallbackWarning, agreement_bounds, concat_rows, excludes

OPTIONS = dict(accuracy_target=0.9, compile=False, cost_repeats=1, importance_repeats=1, require_faster=False)


def test_bounds_contain_the_observed_rate_and_narrow_with_evidence():
    assert agreement_bounds(0, 0, 0.95, 0.99) == (0.0, 1.0)
    widths = []
    for n in (10, 100, 1000, 10000):
        lower, upper = agreement_bounds(int(0.97 * n), n, 0.95, 0.99)
        assert lower < 0.97 < upper
        widths.append(upper - lower)
    assert widths == sorted(widths, reverse=True)
    lower, upper = agreement_bounds(500, 500, 0.95, 0.99)
    assert upper == 1.0 and 0.98 < lower < 1.0
    assert agreement_bounds(0, 500, 0.95, 0.99)[0] == 0.0
    lower, upper = agreement_bounds(950, 1000, 0.95, 0.99)
    for rate, outside in (
        (lower - 1e-6, True),
        (lower + 1e-6, False),
        (upper - 1e-6, False),
        (upper + 1e-6, True),
    ):
        assert excludes(950, 1000, 0.95, 0.99, rate) is outside


@pytest.mark.parametrize("rate", [0.99, 0.9])
def test_the_sequence_covers_the_true_rate_at_every_look(rate):
    """Anytime validity: over 200 seeded streams looked at after every batch of 25 rows (60
    looks), the share of streams whose confidence set ever excludes the true rate stays within
    1 - confidence (with sampling slack)."""
    rng = np.random.default_rng(7)
    missed = 0
    for _ in range(200):
        agreed = np.cumsum(rng.random(1500) < rate)
        for t in range(25, 1501, 25):
            if excludes(int(agreed[t - 1]), t, 0.95, 0.99, rate):
                missed += 1
                break
    assert missed / 200 <= 0.05 + 0.03, missed


def test_concat_rows_keeps_the_container():
    import pandas as pd
    import scipy.sparse as sp

    assert concat_rows([[1, 2], [3]]) == [1, 2, 3]
    np.testing.assert_array_equal(concat_rows([np.ones((2, 3)), np.zeros((1, 3))]).shape, (3, 3))
    stacked = concat_rows([sp.csr_matrix(np.eye(2)), sp.csr_matrix(np.eye(2))])
    assert stacked.format == "csr" and stacked.shape == (4, 2)
    frame = concat_rows([pd.DataFrame({"a": [1]}), pd.DataFrame({"a": [2]})])
    assert list(frame.index) == [0, 1]


@pytest.fixture(scope="module")
def setting():
    cheap, extra, y = make_tabular(1500, seed=5)
    model = LogisticRegression(max_iter=500).fit(np.hstack([cheap, pipelines.slow_features(extra)]), y)
    served_cheap, served_extra, _ = make_tabular(12000, seed=6)
    return model, (cheap, extra), (served_cheap, served_extra)


def calibrated(setting, **options):
    model, (cheap, extra), _ = setting
    pipeline = willow.optimize(pipelines.numpy_pipeline, **{**OPTIONS, **options}).calibrate(
        model, cheap, extra
    )
    assert pipeline.plan_.cascade, pipeline.plan_.reason
    return pipeline


def serve(pipeline, model, cheap, extra, calls, size=500):
    outputs = []
    for i in range(calls):
        rows = slice(i * size, (i + 1) * size)
        outputs.append(pipeline(model, cheap[rows], extra[rows]))
    return outputs


def test_monitor_is_off_by_default(setting):
    pipeline = calibrated(setting)
    assert pipeline.monitor is None and pipeline.monitor_ is None
    with pytest.raises(ValueError, match="monitor must be in"):
        willow.optimize(pipelines.numpy_pipeline, monitor=0.0)


def test_same_distribution_keeps_the_cascade_and_outputs(setting):
    model, _, (cheap, extra) = setting
    plain = calibrated(setting)
    pipeline = calibrated(setting, monitor=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MonitorFallbackWarning)
        served = serve(pipeline, model, cheap, extra, calls=10)
    for i, out in enumerate(served):  # sampling never changes what a call returns
        np.testing.assert_array_equal(
            out, plain(model, cheap[i * 500 : (i + 1) * 500], extra[i * 500 : (i + 1) * 500])
        )
    state = pipeline.monitor_
    assert state.state == "watching" and state.calls == 10 and state.rows_seen == 5000
    assert 300 <= state.rows_sampled + state.rows_pending <= 700 and state.rows_kept == state.rows_sampled
    assert state.rows_pending < 100
    assert state.lower_bound <= state.agreement <= state.upper_bound and state.upper_bound >= 0.9
    assert "watching" in state.describe()


def test_a_shift_is_detected_and_serving_falls_back_to_the_full_pipeline(setting):
    """Served rows whose costly features are scaled up: the cascade (reading only the cheap
    group) stays confident but disagrees with the full model; the monitor falls back, warns once,
    and every later call returns exactly the original's output."""
    model, _, (cheap, extra) = setting
    pipeline = calibrated(setting, monitor=0.2)
    shifted = extra * 6.0
    with pytest.warns(MonitorFallbackWarning, match="fewer than 0.9 of rows") as record:
        serve(pipeline, model, cheap, shifted, calls=24)
    assert len([w for w in record if issubclass(w.category, MonitorFallbackWarning)]) == 1
    state = pipeline.monitor_
    assert state.state == "fallen back" and state.upper_bound < 0.9 and state.agreement < 0.9
    rows = slice(0, 700)
    np.testing.assert_array_equal(
        pipeline(model, cheap[rows], shifted[rows]),
        pipelines.numpy_pipeline(model, cheap[rows], shifted[rows]),
    )
    assert pipeline.monitor_.rows_seen == state.rows_seen  # fallen back: nothing more is sampled
    kept = state.rows_kept
    pipeline.recalibrate_from_monitor()
    plan = pipeline.plan_
    assert plan.train_rows + plan.tune_rows + plan.holdout_rows == kept
    if plan.cascade:
        assert pipeline.monitor_.state == "watching" and pipeline.monitor_.rows_seen == 0


def test_cost_per_call_is_bounded_and_state_survives_pickling(setting):
    model, _, (cheap, extra) = setting
    pipeline = calibrated(setting, monitor=1.0)
    pipeline._monitor.max_rows_per_call = 50
    serve(pipeline, model, cheap, extra, calls=3, size=2000)
    assert pipeline.monitor_.rows_sampled == 100 and pipeline.monitor_.rows_pending == 50
    clone = pickle.loads(pickle.dumps(pipeline))
    assert clone.monitor == 1.0 and clone.monitor_.rows_seen == 0
    np.testing.assert_array_equal(
        clone(model, cheap[:300], extra[:300]), pipeline(model, cheap[:300], extra[:300])
    )


def test_recalibrating_without_a_monitor_says_how(setting):
    with pytest.raises(willow.NotCalibratedError, match="monitor=<fraction>"):
        calibrated(setting).recalibrate_from_monitor()
