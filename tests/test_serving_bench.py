"""The serving benchmark's own logic (benchmarks.serving, benchmarks.serving_peers), without a
server, a load generator or a calibration: the peers' batch answers (each request its own rows, in
order), the request bodies, the tier-cost verdict, the report's skip lines and the process-tree
walk that ends a peer's processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pandas as pd
import pytest

pytest.importorskip("starlette")

from benchmarks.serving import (  # noqa: E402
    _SAME_COST,
    SCENARIOS,
    _descendants,
    _line,
    cost_split,
    markdown,
    scenario_markdown,
    tier_costs,
    write_bodies,
)
from benchmarks.serving_peers import answer_batch  # noqa: E402
from willow.serve import ServedPipeline  # noqa: E402


def _tag(prefix, texts):
    return [f"{prefix}{t}" for t in texts]


def _income(scale, frame):
    return (frame["age"] * scale + frame["hours"]).to_numpy()


def test_peer_batches_answer_each_request_with_its_own_rows_in_order():
    calls = []

    def tag(prefix, texts):
        calls.append(list(texts))
        return _tag(prefix, texts)

    served = ServedPipeline(tag, "x:", example=["a"])
    bodies = [{"rows": ["a", "b"]}, {"rows": ["c"]}, ["d", "e", "f"]]
    assert answer_batch(served, bodies) == [
        {"predictions": ["x:a", "x:b"]},
        {"predictions": ["x:c"]},
        {"predictions": ["x:d", "x:e", "x:f"]},
    ]
    assert calls == [["a", "b", "c", "d", "e", "f"]]  # one pipeline call for the batch
    frame = pd.DataFrame({"age": [30, 40], "hours": [1.5, 2.5]})
    served = ServedPipeline(_income, 2, example=frame)
    rows = [{"hours": 1.0, "age": 10}, {"age": 20, "hours": 0.5}]  # keys in any order
    got = answer_batch(served, [{"rows": rows[:1]}, {"rows": rows[1:]}])
    assert got == [{"predictions": [21.0]}, {"predictions": [40.5]}]


def test_bodies_hold_the_asked_rows_per_request_cycling(tmp_path):
    path = write_bodies(tmp_path / "b.jsonl", ["a", "b", "c", "d", "e"], 2)
    assert [json.loads(line)["rows"] for line in path.read_text().splitlines()] == [
        ["a", "b"],
        ["c", "d"],
        ["e", "a"],
    ]


def _results(figures, peers):
    return {
        "workload": "toxic",
        "slo_ms": 50.0,
        "seconds_per_rate": 1,
        "generator": "wrk",
        "tiers": [
            {"target": 0.99, "cascade": False, "lower_bound": 0.0},
            {"target": 0.95, "cascade": True, "lower_bound": 0.97},
        ],
        "cpus": 2,
        "uptime_before": "load average: 1.00",
        "in_process": figures,
        "tier_costs": tier_costs(figures, (0.99, 0.95)),
        "modes": {},
        "peers": peers,
    }


def test_tier_costs_and_the_report_say_when_scaling_has_nothing_to_trade():
    differ = {"0.99 x256 ms": 10.0, "0.95 x256 ms": 1.0}
    same = {"0.99 x256 ms": 10.0, "0.95 x256 ms": 9.0}
    assert tier_costs(differ, (0.99, 0.95)) == {
        "rows": 256,
        "strictest_ms": 10.0,
        "loosest_ms": 1.0,
        "ratio": 0.1,
        "differ": True,
    }
    assert not tier_costs(same, (0.99, 0.95))["differ"]
    point = {
        "offered_per_s": 100,
        "throughput_per_s": 99.0,
        "p50_ms": 1.0,
        "p99_ms": 2.0,
        "over_slo": 0.0,
        "mean_batch_rows": None,
        "mean_batch_ms": None,
        "tier_mix": {},
        "early_exit": None,
        "cpu_ms_per_request": None,
    }
    scenario = {
        "factor": 2.0,
        "warm_s": 3,
        "rows_per_request": 32,
        "capacity_per_s": 50.0,
        "offered_per_s": 100,
        "saturated": {**point, "offered_per_s": "saturating"},
        "points": {"fixed tier": point, "accuracy scaling": {**point, "tier_mix": {"0.95": 1.0}}},
    }
    peers = {"LitServe": "skipped: litserve does not import", "Ray Serve": [point]}
    report = markdown({**_results(same, peers), "scenario": scenario})
    assert _SAME_COST in report
    assert "offered 100 req/s to both servers (each first 3 s unmeasured at that rate)" in report
    assert "| LitServe | skipped: litserve does not import |" in report
    assert "| Ray Serve | 100 | 99 | 1.0 | 2.0 | 0.0% | - | - | - | - |" in report
    assert "| accuracy scaling | 100 | 99 | 1.0 | 2.0 | 0.0% | - | 0.95: 100% |" in report
    assert " ".join(_line(point).split()) == "99 req/s p50 1.0 ms p99 2.0 ms over SLO 0.0%"  # a peer's line
    assert _line({**point, "mean_batch_rows": 2.0, "mean_batch_ms": 0.5, "tier_mix": {"0.95": 1.0}}).endswith(
        "batch   2.0 rows   0.50 ms  tiers 0.95 100%"
    )
    assert _SAME_COST not in markdown({**_results(differ, {}), "scenario": scenario})


def test_a_named_scenario_splits_a_requests_cost_and_reports_both_servers(tmp_path):
    """The cost split calls every tier on one request's rows (each answers its own rows) and the
    JSON side; the report names the scenario, the split and both servers' rows."""

    class Tiers:
        tiers_ = tuple(type("T", (), {"target": t})() for t in (0.99, 0.95))

        def __call__(self, texts):
            return [len(t) for t in texts]

        def tier(self, target):
            return lambda texts: [len(t) for t in texts]

    served = ServedPipeline(Tiers(), example=["a"])
    body = write_bodies(tmp_path / "b.jsonl", ["ab", "c", "def"], 3).read_text().splitlines()[0]
    split = cost_split(served, body, repeats=3)
    assert set(split) == {"0.99 ms", "0.95 ms", "json ms", "strictest / fastest"}
    assert all(split[k] >= 0 for k in ("0.99 ms", "0.95 ms", "json ms"))
    spec = SCENARIOS["features"]
    assert spec["options"] == {"compile": False} and spec["rows_per_request"] == 64
    point = {
        "offered_per_s": 80,
        "throughput_per_s": 79.0,
        "p50_ms": 10.0,
        "p99_ms": 40.0,
        "over_slo": 0.0,
        "mean_batch_rows": 64.0,
        "mean_batch_ms": 6.0,
        "tier_mix": {"0.95": 1.0},
        "early_exit": 0.99,
        "cpu_ms_per_request": 7.0,
    }
    report = scenario_markdown(
        {
            "scenario": "features",
            **{k: v for k, v in spec.items() if k != "targets"},
            "tiers": [{"target": 0.99}, {"target": 0.95, "cascade": True}],
            "slo_ms": 50.0,
            "seconds_per_rate": 8,
            "uptime_before": "load average: 0.5",
            "uptime_after": "load average: 0.6",
            "cpus": 2,
            "cost_split": {"0.99 ms": 20.0, "0.95 ms": 4.0, "json ms": 0.03, "strictest / fastest": 5.0},
            "factor": 2.0,
            "warm_s": 3,
            "capacity_per_s": 40.0,
            "offered_per_s": 80,
            "saturated": {**point, "offered_per_s": "saturating"},
            "points": {"fixed tier (adaptive batching)": point, "accuracy scaling": point},
        }
    )
    assert "scenario `features`" in report and "tiers 0.99 (no cascade), 0.95 (cascade)" in report
    assert "0.99: 20.00 ms, 0.95: 4.00 ms, json: 0.03 ms; strictest / fastest tier 5.0x" in report
    assert (
        "| accuracy scaling | 80 | 79 | 10.0 | 40.0 | 0.0% | 64.0, 6.00 | 0.95: 100% | 99% | 7.0 |" in report
    )


def test_descendants_finds_the_processes_a_peer_started():
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys; subprocess.Popen(['sleep', '30']).wait()"]
    )
    try:
        for _ in range(100):
            children = _descendants(parent.pid)
            if children:
                break
            time.sleep(0.05)
        assert len(children) == 1 and children[0] != parent.pid
    finally:
        for pid in [*_descendants(parent.pid), parent.pid]:
            subprocess.run(["kill", str(pid)], check=False)
        parent.wait(timeout=10)
