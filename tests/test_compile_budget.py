"""compile=True: a time budget at calibration, the rest compiled in the background; the speed gate
of compiled-only plans; the calibration progress bar.

No big model is compiled here: a small forced budget (0 s) defers a 20-tree ensemble, and the
background thread is held on an event so that what serves before and after the switch is
checked deterministically. Timings are fixed wherever a decision depends on them.
"""

from __future__ import annotations

import threading
import warnings

import lightgbm as lgb
import numpy as np
import pipelines
import pytest
from conftest import make_tabular
from equivalence import assert_same_as_original
from sklearn.linear_model import LogisticRegression

import willow
from willow import api, progress
from willow.compiler import background, compile_budget, speed_gate
from willow.compiler.compile_pass import CompilationWarning

OPTIONS = dict(accuracy_target=0.9, confidence=0.9, cost_repeats=2, importance_repeats=2, cascade=False)


@pytest.fixture(scope="module")
def data():
    cheap, extra, y = make_tabular(2_400, seed=9)
    train, calib, test = np.split(np.arange(len(y)), [800, 2_000])
    X = np.hstack([cheap[train], pipelines.slow_features(extra[train])])
    model = lgb.LGBMClassifier(n_estimators=20, num_leaves=7, verbose=-1).fit(X, y[train])
    return model, (cheap[calib], extra[calib]), (cheap[test], extra[test])


class HeldBackground(background.BackgroundCompile):
    """A background compilation that starts its job only once the test releases it."""

    release = threading.Event()

    def _run(self) -> None:
        assert self.release.wait(120)
        super()._run()


def test_a_model_over_the_budget_compiles_in_the_background_and_switches(monkeypatch, data):
    model, (cc, ce), (xc, xe) = data
    monkeypatch.setattr(compile_budget, "DEFAULT_BUDGET_SECONDS", 0.0)
    HeldBackground.release = threading.Event()
    monkeypatch.setattr(api, "BackgroundCompile", HeldBackground)
    pipeline = willow.optimize(pipelines.numpy_pipeline, **OPTIONS, require_faster=False)
    pipeline.calibrate(model, cc, ce)
    # calibration returned: the tree model was deferred; the verified plan without it serves
    deferred = pipeline._compilation.deferred
    assert [type(obj).__name__ for obj, _ in deferred] == ["LGBMClassifier"]
    assert "deferred: compiling LGBMClassifier is estimated at" in pipeline._compilation.report()
    assert all(node.recipe[0] is not model for node in pipeline._compilation.nodes)
    assert "Compiling in the background: LGBMClassifier" in pipeline.explain()
    assert not pipeline.wait_compiled(timeout=0.01)
    expected = pipelines.numpy_pipeline(model, xc, xe)
    np.testing.assert_array_equal(pipeline(model, xc, xe), expected)
    HeldBackground.release.set()
    assert pipeline.wait_compiled(timeout=300)
    # switched: the model's kernel serves, verified exact, with the eager plan's report
    assert any(node.recipe[0] is model for node in pipeline._compilation.nodes)
    assert not pipeline._compilation.deferred
    assert "Compiled in the background: LGBMClassifier" in pipeline.explain()
    assert "_willow.ops.model_predict" in pipeline.generated_source_
    np.testing.assert_array_equal(pipeline(model, xc, xe), expected)
    np.testing.assert_array_equal(pipeline(model, xc[:1], xe[:1]), expected[:1])
    assert_same_as_original(pipeline, model, xc[:0], xe[:0])  # 0 rows: as the original


def test_eager_and_all_compile_during_calibration_whatever_the_budget(monkeypatch, data):
    model, (cc, ce), (xc, xe) = data
    monkeypatch.setattr(compile_budget, "DEFAULT_BUDGET_SECONDS", 0.0)
    pipeline = willow.optimize(pipelines.numpy_pipeline, **OPTIONS, compile="eager", require_faster=False)
    pipeline.calibrate(model, cc, ce)
    assert pipeline.__dict__.get("_background") is None and pipeline.wait_compiled(0)
    assert any(node.recipe[0] is model for node in pipeline._compilation.nodes)
    np.testing.assert_array_equal(pipeline(model, xc, xe), pipelines.numpy_pipeline(model, xc, xe))
    with compile_budget.calibration_budget("all") as budget:  # "all": the old name of "eager"
        assert budget.seconds is None and compile_budget.current_budget(True) is budget
    assert compile_budget.current_budget(True).seconds == 0.0
    with pytest.raises(ValueError, match="compile must be True, False, 'eager' or 'all'"):
        willow.optimize(pipelines.numpy_pipeline, compile="yes")


def test_the_budget_is_charged_by_estimates_and_defers_past_it(monkeypatch, data):
    model = data[0]
    monkeypatch.setattr(compile_budget, "estimate_seconds", lambda obj: 6.0)
    budget = compile_budget.CompileBudget(10.0)
    assert budget.refusal(model) is None and budget.remaining == pytest.approx(4.0)
    reason = budget.refusal(model)
    assert reason is not None and "estimated at 6.0 s" in reason and "4.0 s left" in reason
    assert "compile='eager'" in reason and budget.deferred == ["LGBMClassifier"]
    assert compile_budget.CompileBudget(None).refusal(model) is None
    assert compile_budget.budget_for("all").seconds is None
    assert compile_budget.budget_for(True).seconds == compile_budget.DEFAULT_BUDGET_SECONDS


def test_compile_rates_are_measured_and_reused(monkeypatch, tmp_path, data):
    model = data[0]
    monkeypatch.setenv("WILLOW_CACHE_DIR", str(tmp_path))  # an empty cache: nothing measured yet
    from willow.compiler.lowering.trees import split_nodes

    nodes = split_nodes(model)
    assert compile_budget.cold_rate() == compile_budget.DEFAULT_NODES_PER_SECOND
    assert compile_budget.estimate_seconds(model) == pytest.approx(nodes / 1000.0)
    assert compile_budget.estimate_seconds(LogisticRegression()) == 0.0
    ticks = iter([100.0, 110.0, 200.0, 201.5])
    monkeypatch.setattr(compile_budget.time, "perf_counter", lambda: next(ticks))

    def lower(obj, method):
        return ("kernel", method)

    assert compile_budget.timed_lower(lower, model, "predict") == ("kernel", "predict")
    # a small model's compile is mostly fixed costs: its rate is not recorded
    assert compile_budget.cold_rate() == compile_budget.DEFAULT_NODES_PER_SECOND
    # compiled once (10 s cold): its kernels are cached, a load costs a fraction of that
    assert compile_budget.estimate_seconds(model) == pytest.approx(10.0 * compile_budget.WARM_FRACTION)
    compile_budget.timed_lower(lower, model, "predict")
    assert compile_budget.estimate_seconds(model) == pytest.approx(1.5)  # its measured load
    monkeypatch.setattr(compile_budget, "MIN_RATE_NODES", 1)
    monkeypatch.setattr(compile_budget, "_fingerprint", lambda obj: "another model")
    ticks = iter([300.0, 302.0])
    compile_budget.timed_lower(lower, model, "predict")
    assert compile_budget.cold_rate() == pytest.approx(nodes / 2.0)  # measured: nodes in 2 s


def test_a_failed_background_compilation_keeps_the_plan_and_says_why():
    installed = []

    def job():
        raise RuntimeError("no compiler here")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        task = background.BackgroundCompile(job, installed.append, "LGBMClassifier").start()
        assert task.wait(30)
    assert installed == [] and isinstance(task.error, RuntimeError)
    assert any(issubclass(w.category, CompilationWarning) for w in caught)
    assert "failed (RuntimeError: no compiler here)" in task.status()


def test_a_superseded_background_compilation_never_installs():
    installed, gate = [], threading.Event()
    task = background.BackgroundCompile(lambda: gate.wait(30) and "plan", installed.append, "X").start()
    task.cancel()
    gate.set()
    assert task.wait(30) and installed == [] and "superseded" in task.status()
    done = background.BackgroundCompile(lambda: "plan", installed.append, "X").start()
    assert done.wait(30) and installed == ["plan"] and "Compiled in the background" in done.status()


# ---------------------------------------------------------------------------- the speed gate


def fixed_samples(monkeypatch, original, compiled):
    """The speed gate's timings fixed to ``original`` and ``compiled``. Its tests also request
    ``kernels_kept`` (every kernel kept whatever it measured per statement: a loaded machine can
    time one slower), so they see only the whole-pipeline gate."""

    def timed(fns, repeats):
        assert len(fns) == 2 and repeats >= 7
        for fn in fns:  # both still run: a failing function must fail here too
            fn()
        return [list(original), list(compiled)]

    monkeypatch.setattr(speed_gate, "interleaved_samples", timed)


@pytest.fixture(scope="module")
def linear():
    cheap, extra, y = make_tabular(2_000, seed=3)
    X = np.hstack([cheap[:600], pipelines.slow_features(extra[:600])])
    model = LogisticRegression(max_iter=500).fit(X, y[:600])
    return model, (cheap[600:1800], extra[600:1800]), (cheap[1800:], extra[1800:])


def test_a_compiled_plan_within_the_noise_is_not_served(monkeypatch, linear, kernels_kept):
    model, (cc, ce), (xc, xe) = linear
    fixed_samples(
        monkeypatch, [0.010, 0.011, 0.010, 0.012, 0.010, 0.011, 0.010], [0.009, 0.0115] * 3 + [0.01]
    )
    pipeline = willow.optimize(pipelines.numpy_pipeline, **OPTIONS, compile=True)
    pipeline.calibrate(model, cc, ce)
    plan = pipeline.plan_
    assert plan.compiled_nodes == 0 and pipeline.generated_source_ is None, plan.reason
    assert "not faster beyond the timing noise" in plan.reason
    assert "so the original runs" in plan.reason and "require_faster=False" in plan.reason
    assert "a sign test needs 7 such pairs" in pipeline.explain()
    np.testing.assert_array_equal(pipeline(model, xc, xe), pipelines.numpy_pipeline(model, xc, xe))
    served = willow.optimize(pipelines.numpy_pipeline, **OPTIONS, compile=True, require_faster=False)
    served.calibrate(model, cc, ce)
    assert served.plan_.compiled_nodes > 0 and served.generated_source_ is not None


def test_a_compiled_plan_faster_beyond_the_noise_is_served(monkeypatch, linear, kernels_kept):
    model, (cc, ce), (xc, xe) = linear
    fixed_samples(monkeypatch, [0.010] * 7, [0.004, 0.005, 0.004, 0.006, 0.004, 0.005, 0.004])
    pipeline = willow.optimize(pipelines.numpy_pipeline, **OPTIONS, compile=True)
    pipeline.calibrate(model, cc, ce)
    assert pipeline.plan_.compiled_nodes > 0 and pipeline.generated_source_ is not None
    assert pipeline.plan_.measured_speedup == pytest.approx(0.010 / 0.0045 * 1.0, rel=0.2)
    assert "The compiled pipeline is served: in 7 of 7 interleaved pairs" in pipeline.explain()
    np.testing.assert_array_equal(pipeline(model, xc, xe), pipelines.numpy_pipeline(model, xc, xe))


# ---------------------------------------------------------------------------- progress


def test_progress_is_shown_in_a_terminal_or_notebook_but_never_in_ci(monkeypatch):
    class Stream:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(progress.sys, "stderr", Stream(True))
    assert progress.should_show(None)
    monkeypatch.setenv("CI", "true")
    assert not progress.should_show(None) and progress.should_show(True)
    monkeypatch.setenv("CI", "false")
    assert progress.should_show(None)
    monkeypatch.setattr(progress.sys, "stderr", Stream(False))
    assert not progress.should_show(None) and not progress.should_show(False)
    monkeypatch.setattr(progress, "_in_notebook", lambda: True)
    assert progress.should_show(None)


def test_calibrate_shows_its_stages(capsys, linear):
    model, (cc, ce), _ = linear
    options = dict(OPTIONS, compile=False)
    willow.optimize(pipelines.numpy_pipeline, **options).calibrate(model, cc, ce, progress=True)
    shown = capsys.readouterr().err
    assert "willow: numpy_pipeline" in shown and "proof" in shown
    willow.optimize(pipelines.numpy_pipeline, **options).calibrate(model, cc, ce)  # not a terminal
    assert capsys.readouterr().err == ""


def test_progress_without_tqdm_prints_one_line_per_stage(monkeypatch, capsys, linear):
    model, (cc, ce), _ = linear
    monkeypatch.setitem(__import__("sys").modules, "tqdm.auto", None)  # import fails
    options = dict(OPTIONS, compile=False)
    willow.optimize(pipelines.numpy_pipeline, **options).calibrate(model, cc, ce, progress=True)
    lines = capsys.readouterr().err.splitlines()
    stages = [line.rsplit(": ", 1)[1] for line in lines if line.startswith("willow: numpy_pipeline: ")]
    assert stages == ["tracing", "costing", "proof"]  # cascade=False, compile=False: no other stage
    assert set(stages) <= set(progress.STAGES) and len(stages) == len(set(stages))


def test_a_top_k_plan_compiles_its_deferred_model_in_the_background(monkeypatch, cascade_pays):
    cheap, extra, y = make_tabular(3_000, seed=5)
    X = np.hstack([cheap[:800], pipelines.slow_features(extra[:800])])
    model = lgb.LGBMRegressor(n_estimators=20, num_leaves=7, verbose=-1).fit(X, y[:800].astype(float))
    calib, test = slice(800, 2_600), slice(2_600, None)
    options = dict(query="topk", k=10, precision_target=0.9, cost_repeats=1, importance_repeats=1)
    monkeypatch.setattr(compile_budget, "DEFAULT_BUDGET_SECONDS", 0.0)
    pipeline = willow.optimize(pipelines.numpy_pipeline, **options)
    pipeline.calibrate(model, cheap[calib], extra[calib])
    assert [type(obj).__name__ for obj, _ in pipeline._compilation.deferred] == ["LGBMRegressor"]
    assert pipeline.wait_compiled(timeout=300)
    assert any(node.recipe[0] is model for node in pipeline._compilation.nodes)
    assert "Compiled in the background: LGBMRegressor" in pipeline.explain()
    eager = willow.optimize(pipelines.numpy_pipeline, **options, compile="eager")
    eager.calibrate(model, cheap[calib], extra[calib])
    np.testing.assert_array_equal(
        pipeline(model, cheap[test], extra[test]), eager(model, cheap[test], extra[test])
    )
