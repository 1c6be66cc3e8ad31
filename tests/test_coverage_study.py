"""The coverage study's bookkeeping (``python -m benchmarks.coverage``); the study itself is a
benchmark, run by hand."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import numpy as np

from benchmarks import coverage
from benchmarks.coverage import CoverageRun, _agreement, _take, read_results, run_study, summarize


def _run(duplicated, seed, cascade, agreement, target=0.97):
    return CoverageRun(
        "toxic",
        duplicated,
        seed,
        cascade,
        0.98,
        500,
        0,
        1000,
        agreement,
        agreement < target,
        1.0,
        "",
        copies=4 if duplicated else 1,
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


def test_results_file_skips_a_cut_short_line_and_keeps_one_run_per_key(tmp_path):
    path = tmp_path / "coverage.jsonl"
    first, second = _run(False, 0, True, 0.99), _run(True, 0, True, 0.98)
    lines = [
        json.dumps(asdict(first)),
        json.dumps(asdict(second)),
        json.dumps(asdict(replace(first, seed=1))),
    ]
    lines.append(json.dumps(asdict(replace(first, fresh_agreement=0.5)))[:40])  # interrupted write
    path.write_text("\n".join(lines) + "\n")
    runs = read_results(path)
    assert sorted((r.seed, r.copies, r.fresh_agreement) for r in runs) == [
        (0, 1, 0.99),
        (0, 4, 0.98),
        (1, 1, 0.99),
    ]


def test_study_resumes_where_the_results_file_stops(tmp_path, monkeypatch):
    calls = []

    class FakeStudy:
        def __init__(self, name, accuracy_target, confidence, scale):
            self.name = name

        def run(self, seed, copies, log=None):
            calls.append((self.name, seed, tuple(copies)))
            return [replace(_run(k > 1, seed, True, 0.99), workload=self.name) for k in copies]

    monkeypatch.setattr(coverage, "Study", FakeStudy)
    path = tmp_path / "results" / "coverage.jsonl"
    run_study(["toxic", "credit"], 2, results=path, log=None)
    # seeds outer, workloads inner: a partial study has every workload
    assert calls == [("toxic", 0, (1, 4)), ("credit", 0, (1, 4)), ("toxic", 1, (1, 4)), ("credit", 1, (1, 4))]
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:7]) + "\n")  # stopped after credit seed 1, copies 1
    calls.clear()
    new = run_study(["toxic", "credit"], 3, results=path, log=None)
    assert calls == [("credit", 1, (4,)), ("toxic", 2, (1, 4)), ("credit", 2, (1, 4))]
    assert len(new) == 5 and len(read_results(path)) == 12
    calls.clear()
    run_study(["toxic", "credit"], 3, results=path, log=None, accuracy_target=0.99)  # another target
    assert len(calls) == 6
