"""Empty and malformed batches fail (or succeed) exactly as the original function does.

Not covered (a cascade's nature): a bad value only in features the cascade skips for a row it
answers (NaN in a costly column of a confident row) cannot fail there, where the original fails.
"""

from __future__ import annotations

import numpy as np
import pytest
from equivalence import assert_same_as_original
from picklable import frame_cascade


@pytest.fixture(scope="module")
def cascade():
    return frame_cascade(seed=7, cost_repeats=1, importance_repeats=1)


def test_zero_rows_run_the_original(cascade):
    pipeline, model, batch = cascade
    with pytest.raises(ValueError, match="0 sample"):  # scikit-learn refuses 0 rows
        pipeline.__wrapped__(model, batch.iloc[:0])
    assert_same_as_original(pipeline, model, batch.iloc[:0])
    assert_same_as_original(pipeline, model, batch.iloc[:1])


def test_malformed_frame_gets_the_original_error(cascade):
    """NaN in a column the approximate model reads: its own ValueError (another message) used to
    reach the caller instead of the full pipeline's."""
    pipeline, model, batch = cascade
    malformed = batch.copy()
    malformed.loc[malformed.index[3], "c0"] = np.nan
    assert_same_as_original(pipeline, model, malformed)
    assert_same_as_original(pipeline, model, batch.drop(columns=["c1"]))
    assert_same_as_original(pipeline, model, batch.drop(columns=["e2"]))
