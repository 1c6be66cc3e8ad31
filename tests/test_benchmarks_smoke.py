"""Smoke test of the benchmark suite: every workload on tiny slices of the real data.

No timing is asserted (CI machines are noisy); the test checks the report's structure, that the
files are written, and that optimized outputs equal the original wherever the plan says they
must (no cascade, or accuracy_target=1.0). Skipped when the repository's data/ is absent.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from benchmarks.data import data_available, split_positions

pytestmark = pytest.mark.data

WORKLOAD_FILES = {
    "toxic": ("sms_spam.tsv",),
    "product": ("airline_tweets.csv",),
    "music": ("movielens-small/ratings.csv", "movielens-small/movies.csv", "movielens-small/tags.csv"),
    "credit": ("adult.data",),
    "price": ("california_housing.csv",),
}
ALL_FILES = tuple(f for files in WORKLOAD_FILES.values() for f in files)

needs_data = pytest.mark.skipif(not data_available(*ALL_FILES), reason="the real data (data/) is absent")


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    """One model cache for the module (not the user's), so each workload trains once here."""
    return str(tmp_path_factory.mktemp("model-cache"))


@pytest.fixture(scope="module")
def cli_run(model_cache, tmp_path_factory):
    """One run of the CLI over every workload, as ``python -m benchmarks ... --scale smoke`` does:
    its exit code, the results dict ``cli.run`` returned to it (before it was written), the output
    folder and what it printed. Every test here reads this one run (each workload's variants are
    calibrated once per module, Numba compiles included)."""
    from benchmarks import cli

    out = tmp_path_factory.mktemp("bench-out")
    returned: list[dict] = []
    run = cli.run

    def recording_run(*args, **kwargs):
        returned.append(run(*args, **kwargs))
        return returned[-1]

    argv = [*cli.WORKLOADS, "--scale", "smoke", "--accuracy-target", "0.95", "--targets", "0.95", "1.0"]
    argv += ["--repeats", "1", "--out", str(out), "--no-progress", "--no-plots"]
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setenv("WILLOW_BENCH_CACHE", model_cache)
        mp.setattr(cli, "run", recording_run)
        code = cli.main(argv)
    (results,) = returned
    return code, results, out, printed.getvalue()


@pytest.fixture(scope="module")
def results(cli_run):
    return cli_run[1]


def test_split_positions_are_disjoint():
    parts = split_positions(100, [50, 20, 30], random_state=3)
    assert sum(len(p) for p in parts) == 100
    assert len(np.unique(np.concatenate(parts))) == 100


@needs_data
def test_every_workload_reports_every_variant(results):
    from benchmarks.variants import VARIANTS

    assert [w["name"] for w in results["workloads"]] == ["toxic", "product", "music", "credit", "price"]
    json.dumps(results)  # JSON-able as written to results.json
    for workload in results["workloads"]:
        assert "error" not in workload, workload.get("error")
        assert [v["name"] for v in workload["variants"]] == [v.name for v in VARIANTS]
        original = workload["variants"][0]
        assert original["status"] == "ok" and original["speedup"] == pytest.approx(1.0)
        for entry in workload["variants"]:
            assert entry["status"] in ("ok", "n/a", "-", "error")
            assert entry["status"] != "error", (workload["name"], entry)
            if entry["status"] != "ok":
                assert entry["note"]
                continue
            assert entry["rows_per_second"] > 0 and entry["batch_seconds"] > 0
            if entry["name"] == "top-k":
                assert 0.0 <= entry["precision_at_k"] <= 1.0
                continue
            assert entry["p50_ms"] > 0 and entry["p99_ms"] >= entry["p50_ms"]
            assert 0.0 <= entry["agreement"] <= 1.0
            quality = entry.get("accuracy", entry.get("r2"))
            assert quality is not None and np.isfinite(quality)
        assert set(workload["tradeoff"]) >= {"cascades"}
        assert [p["accuracy_target"] for p in workload["tradeoff"]["cascades"]] == [0.95, 1.0]
        assert workload["oracle"]["status"] in ("ok", "n/a")


@needs_data
def test_optimized_outputs_match_where_the_plan_requires(results):
    for workload in results["workloads"]:
        for entry in workload["variants"]:
            if entry["status"] == "ok" and entry.get("must_match_original"):
                assert entry["identical_to_original"], (workload["name"], entry["name"])
                assert entry["agreement"] == 1.0
            plan = entry.get("plan")
            if entry["status"] == "ok" and plan and plan["cascade"]:
                assert plan["lower_bound"] >= plan["accuracy_target"]
        exact = [p for p in workload["tradeoff"]["cascades"] if p["accuracy_target"] == 1.0][0]
        assert exact["status"] == "ok" and not exact["cascade"] and exact["agreement"] == 1.0


@needs_data
def test_oracle_bound_is_consistent(results):
    for workload in results["workloads"]:
        oracle = workload["oracle"]
        if oracle["status"] == "ok":
            assert oracle["oracle_speedup"] > 0 and 0.0 <= oracle["easy_fraction"] <= 1.0
            assert oracle["fraction_of_oracle"] == pytest.approx(
                oracle["measured_speedup"] / oracle["oracle_speedup"]
            )


@needs_data
def test_report_files(results, tmp_path):
    from benchmarks.report import markdown, terminal_table, write_json

    write_json(results, tmp_path / "results.json")
    assert json.loads((tmp_path / "results.json").read_text())["scale"] == "smoke"
    text = terminal_table(results)
    for name in ("toxic", "product", "music", "credit", "price"):
        assert name in text and f"## {name}" in markdown(results)
    pytest.importorskip("matplotlib")
    from benchmarks.plots import plot_all

    paths = plot_all(results, tmp_path)
    assert [p.name for p in paths] == ["speedup.png", "tradeoff.png"]
    assert all(p.stat().st_size > 0 for p in paths)


@needs_data
def test_cli_writes_results(cli_run):
    code, results, out, printed = cli_run
    assert code == 0
    assert (out / "results.json").exists() and (out / "results.md").exists()
    assert json.loads((out / "results.json").read_text())["scale"] == "smoke"
    assert results["plots"] == []  # --no-plots
    assert "toxic" in printed and f"Wrote {out / 'results.json'}" in printed


@needs_data
def test_compiled_and_top_k_variants_run(results):
    """The compiled and top-K variants are measured with willow's real compile= and query="topk"."""
    from benchmarks import price

    result = next(w for w in results["workloads"] if w["name"] == "price")
    status = {v["name"]: v["status"] for v in result["variants"]}
    assert status == {name: "ok" for name in status}, result["variants"]
    top = next(v for v in result["variants"] if v["name"] == "top-k")
    assert top["k"] == price.TOP_K["smoke"] and 0.0 <= top["precision_at_k"] <= 1.0
    assert [p["status"] for p in result["tradeoff"]["cascades+compiled"]] == ["ok", "ok"]


@pytest.mark.skipif(not data_available("sms_spam.tsv"), reason="the SMS data is absent")
def test_dask_mode_scores_the_tiled_test_split_identically(tmp_path, monkeypatch, model_cache):
    pytest.importorskip("distributed")
    from benchmarks.cli import main

    monkeypatch.setenv("WILLOW_BENCH_CACHE", model_cache)  # toxic's model, trained once here
    argv = ["toxic", "--scale", "smoke", "--accuracy-target", "0.9", "--dask", "1", "--dask-rows", "1000"]
    assert main(argv + ["--repeats", "1", "--out", str(tmp_path)]) == 0
    (result,) = json.loads((tmp_path / "dask.json").read_text())
    assert result["name"] == "toxic" and result["rows"] == 1000 and result["pipeline_pickle_bytes"] > 0
    assert [(d["workers"], d["identical"]) for d in result["dask"]] == [(1, True)]
    assert "| toxic | 1,000 |" in (tmp_path / "dask.md").read_text()


def test_early_exit_benchmark_runs_labels_and_a_thresholded_decision():
    """``python -m benchmarks.early_exit`` on a tiny synthetic model: the labels and the
    ``predict_proba(X)[:, 1] > t`` workloads report exact plans with identical decisions and
    approximate plans within their proven bound."""
    from benchmarks import early_exit

    arguments = "--trees 20 --leaves 7 --features 10 --train-rows 2000 --calibration-rows 2000 "
    arguments += "--test-rows 1000 --repeats 2 --targets 1.0 0.95 --workloads synthetic synthetic-threshold"
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        results = early_exit.main(arguments.split())
    assert set(results) == {"synthetic", "synthetic threshold"}
    assert "deciding predict_proba(X)[:, 1] > 0.3" in printed.getvalue()
    for workload in results.values():
        exact, approximate = workload["targets"]["1.0"], workload["targets"]["0.95"]
        assert exact["exact"] and exact["agreement"] == 1.0
        assert approximate["exact"] or approximate["holdout_lower_bound"] >= 0.95
        assert sum(exact["exit_fractions"]) == pytest.approx(1.0, abs=1e-3)
