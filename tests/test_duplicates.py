"""Duplicated calibration rows never put a copy of a holdout input in train or tune.

Oversampled data (``pd.concat([cal] * 4)``), repeated messages: with a row-wise split the same
input lands in train and holdout, and the holdout proof is optimistic. The split is made over
distinct inputs, and tune and holdout count each input once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pipelines
import pytest
import scipy.sparse as sp
from conftest import make_tabular
from sklearn.linear_model import LogisticRegression

import willow
from willow.cascades import calibration as cascade_calibration
from willow.cascades.duplicates import row_groups
from willow.cascades.splits import split_rows
from willow.errors import CalibrationError


def test_row_groups_over_every_kind_of_row_argument():
    texts = ["spam", "ham", "spam", "ham"]
    numbers = np.array([[1.0, np.nan], [0.0, 2.0], [1.0, float("nan")], [-0.0, 2.0]])
    assert row_groups([texts], 4).tolist() == [0, 1, 0, 1]
    groups = row_groups([numbers], 4)
    assert groups[0] == groups[2] and groups[1] == groups[3] and groups[0] != groups[1]
    sparse = sp.csr_matrix(np.array([[0, 1.0], [2.0, 0], [0, 1.0], [0, 3.0]]))
    groups = row_groups([sparse], 4)
    assert groups[0] == groups[2] and len(set(groups.tolist())) == 3
    frame = pd.DataFrame({"a": [1.0, np.nan, 1.0, np.nan], "b": ["x", None, "x", None]}, index=[9, 8, 7, 6])
    groups = row_groups([frame], 4)
    assert groups[0] == groups[2] and groups[1] == groups[3] and groups[0] != groups[1]
    # rows are duplicates only when every row argument repeats: texts agree, numbers differ on row 3
    groups = row_groups([texts, numbers], 4)
    assert groups[0] == groups[2] and groups[1] == groups[3]
    groups = row_groups([texts, np.array([1, 2, 1, 5])], 4)
    assert groups[0] == groups[2] and groups[1] != groups[3]
    assert row_groups([np.arange(5.0)], 5).tolist() == [0, 1, 2, 3, 4]


def _parts(split, groups):
    return [set(groups[rows].tolist()) for rows in (split.train, split.tune, split.holdout)]


def test_repeated_rows_stay_in_one_split_part():
    distinct = 1000
    groups = np.tile(np.arange(distinct), 4)  # pd.concat([cal] * 4)
    # the defect: a row-wise split puts copies of most holdout inputs in train or tune
    rowwise = split_rows(len(groups), (0.5, 0.25, 0.25), 0.9, 0.9, 0, None)
    train, tune, holdout = _parts(rowwise, groups)
    assert len(holdout & (train | tune)) > 0.9 * len(holdout)
    split = split_rows(len(groups), (0.5, 0.25, 0.25), 0.9, 0.9, 0, groups)
    train, tune, holdout = _parts(split, groups)
    assert not holdout & (train | tune) and not train & tune
    assert len(split.holdout) == len(holdout) and len(split.tune) == len(tune)  # one row per input
    assert len(split.train) == 4 * len(train)  # train keeps every copy
    assert split.duplicate_rows == 3 * distinct
    assert abs(len(holdout) - distinct / 4) <= 1 and abs(len(train) - distinct / 2) <= 1
    # distinct rows: the same split as a seeded permutation of the rows
    plain = split_rows(800, (0.5, 0.25, 0.25), 0.9, 0.9, 3, np.arange(800))
    reference = np.random.default_rng(3).permutation(800)
    np.testing.assert_array_equal(plain.train, np.sort(reference[:400]))
    np.testing.assert_array_equal(plain.holdout, np.sort(reference[600:]))


def test_too_few_distinct_inputs_is_a_calibration_error():
    with pytest.raises(CalibrationError, match="distinct"):
        split_rows(4000, (0.5, 0.25, 0.25), 0.99, 0.95, 0, np.tile(np.arange(200), 20))


def test_calibration_on_oversampled_rows_holds_out_whole_inputs(monkeypatch):
    cheap, extra, y = make_tabular(2000, seed=4)
    model = LogisticRegression(max_iter=500).fit(
        np.hstack([cheap[:600], pipelines.slow_features(extra[:600])]), y[:600]
    )
    cal_cheap, cal_extra = np.tile(cheap[600:1400], (4, 1)), np.tile(extra[600:1400], (4, 1))
    seen = []
    real_split = cascade_calibration.split_rows

    def recording_split(n, *args):
        split = real_split(n, *args)
        seen.append((split, args[-1]))
        return split

    monkeypatch.setattr(cascade_calibration, "split_rows", recording_split)
    pipeline = willow.optimize(
        pipelines.numpy_pipeline,
        accuracy_target=0.9,
        confidence=0.9,
        compile=False,
        require_faster=False,
        cost_repeats=1,
        importance_repeats=1,
    )
    pipeline.calibrate(model, cal_cheap, cal_extra)
    ((split, groups),) = seen
    train, tune, holdout = _parts(split, groups)
    assert len(set(groups.tolist())) == 800 and not holdout & (train | tune)
    plan = pipeline.plan_
    assert plan.duplicate_rows == 2400 and "2400 calibration rows repeat" in pipeline.explain()
    assert plan.tune_rows == len(tune) and plan.train_rows == 4 * len(train)
    if plan.cascade:
        assert plan.holdout_rows == len(holdout)
    out = pipeline(model, cheap[1400:], extra[1400:])
    assert out.shape == (600,)
