"""The coverage study's bookkeeping (``python -m benchmarks.coverage``); the study itself is a
benchmark, run by hand."""

from __future__ import annotations

import numpy as np

from benchmarks.coverage import CoverageRun, _agreement, _take, summarize


def _run(duplicated, seed, cascade, agreement, target=0.97):
    return CoverageRun(
        "toxic", duplicated, seed, cascade, 0.98, 500, 0, 1000, agreement, agreement < target, 1.0, ""
    )


def test_agreement_compares_labels_or_the_most_likely_class():
    assert _agreement(np.array(["a", "b"]), np.array(["a", "a"])).tolist() == [True, False]
    proba = np.array([[0.6, 0.4], [0.2, 0.8]])
    assert _agreement(proba, np.array([[0.9, 0.1], [0.6, 0.4]])).tolist() == [True, False]


def test_duplicated_samples_repeat_every_row():
    pool = np.array(["x", "y", "z"], dtype=object)
    assert _take(pool, np.array([2, 0]), 4) == ["z", "x"] * 4


def test_summary_counts_runs_below_target():
    runs = [_run(False, s, True, 0.99) for s in range(3)] + [
        _run(True, 0, True, 0.96),
        _run(True, 1, False, 1.0),
        _run(True, 2, True, 0.98),
    ]
    table = summarize(runs, 0.97, 0.95)
    as_drawn = next(line for line in table.splitlines() if "as drawn" in line).split()
    duplicated = next(line for line in table.splitlines() if "4x duplicated" in line).split()
    assert as_drawn[3:6] == ["3", "3", "0"]
    assert duplicated[3:7] == ["3", "2", "1", "0.333"]


def test_agreement_within_a_tolerance_for_numbers():
    assert _agreement(np.array([1.0, 5.0]), np.array([1.4, 4.0]), 0.5).tolist() == [True, False]
    proba = np.array([[0.6, 0.4], [0.2, 0.8]])
    assert _agreement(proba, np.array([[0.62, 0.38], [0.5, 0.5]]), 0.05).tolist() == [True, False]
