"""The public surface: decoration, calling conventions, errors, explain(), save/load."""

from __future__ import annotations

import importlib.util
import inspect
import pickle
import textwrap

import numpy as np
import pipelines
import pytest
import scipy.sparse as sp
from conftest import make_tabular
from equivalence import assert_cascade_equivalent, assert_same_outcome
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

import willow
from willow import api

# require_faster=False: the speed gate is timing; test_cascades checks it with fixed timings
OPTIONS = dict(
    accuracy_target=0.9, confidence=0.9, cost_repeats=2, importance_repeats=2, require_faster=False
)


@pytest.fixture(scope="module")
def tabular():
    cheap, extra, y = make_tabular(3400, seed=11)
    train, calib, test = np.split(np.arange(len(y)), [800, 3000])
    model = LogisticRegression(max_iter=500).fit(
        np.hstack([cheap[train], pipelines.slow_features(extra[train])]), y[train]
    )
    return model, (cheap[calib], extra[calib], y[calib]), (cheap[test], extra[test], y[test])


@pytest.fixture(scope="module")
def calibrated(tabular):
    model, (cc, ce, cy), _ = tabular
    return willow.optimize(pipelines.numpy_pipeline, **OPTIONS).calibrate(model, cc, ce)


def documented(model, cheap, extra):
    """Predict with both groups."""
    a = cheap * 1.0
    b = pipelines.slow_features(extra)
    return model.predict(np.hstack([a, b]))


def test_decorator_forms_and_wrapping():
    bare = willow.optimize(documented)
    configured = willow.optimize(accuracy_target=0.95)(documented)
    for pipeline in (bare, configured):
        assert isinstance(pipeline, willow.OptimizedPipeline)
        assert pipeline.__name__ == "documented"
        assert pipeline.__doc__ == "Predict with both groups."
        assert inspect.signature(pipeline) == inspect.signature(documented)
        assert pipeline.__wrapped__ is documented
    assert configured.get_params()["accuracy_target"] == 0.95
    assert "not calibrated" in repr(bare)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(accuracy_target=0), ValueError, "accuracy_target must be in"),
        (dict(accuracy_target=1.5), ValueError, "accuracy_target must be in"),
        (dict(accuracy_target="high"), TypeError, "accuracy_target must be a number"),
        (dict(confidence=1.0), ValueError, "confidence must be in"),
        (dict(cost_repeats=0), ValueError, "cost_repeats must be an integer"),
        (dict(approximate_model="lr"), TypeError, "approximate_model must be"),
    ],
)
def test_bad_options_are_rejected_with_the_argument_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        willow.optimize(documented, **kwargs)


def test_uncalibrated_runs_the_original_and_has_no_fitted_state(tabular):
    model, _, (xc, xe, _) = tabular
    pipeline = willow.optimize(pipelines.numpy_pipeline)
    np.testing.assert_array_equal(pipeline(model, xc, xe), pipelines.numpy_pipeline(model, xc, xe))
    with pytest.raises(willow.NotCalibratedError, match=r"Call \.calibrate"):
        _ = pipeline.plan_
    with pytest.raises(willow.NotCalibratedError):
        pipeline.save("never.willow")
    assert "Not calibrated" in pipeline.explain()


def test_calibrated_cascade_serves_and_explains(calibrated, tabular):
    model, _, (xc, xe, _) = tabular
    assert calibrated.plan_.cascade
    assert assert_cascade_equivalent(calibrated, model, xc, xe) >= 0.85
    text = calibrated.explain()
    for piece in (
        "PipelineGraph",
        "Cost per row",
        "Cascade:",
        "lower 90% bound",
        "Generated source",
        "_willow.approximate(",
    ):
        assert piece in text
    assert calibrated.generated_source_ in text
    assert "def numpy_pipeline(model, cheap, extra):" in calibrated.generated_source_
    assert isinstance(calibrated.costs_, willow.CostProfile)
    assert calibrated.costs_.total_seconds_per_row > 0


def test_wrong_arguments_fail_like_the_original(calibrated, tabular):
    model, _, (xc, xe, _) = tabular
    with pytest.raises(TypeError, match="extra"):
        calibrated(model, xc)
    with pytest.raises(TypeError):
        calibrated(model, xc, xe, 5)
    with pytest.raises(ValueError, match="inconsistent numbers of rows"):
        calibrated(model, xc[:10], xe[:11])


def test_keyword_arguments_work(calibrated, tabular):
    model, _, (xc, xe, _) = tabular
    np.testing.assert_array_equal(calibrated(model, extra=xe, cheap=xc), calibrated(model, xc, xe))


def test_calibration_too_small_says_how_many_rows(tabular):
    model, (cc, ce, _), _ = tabular
    with pytest.raises(willow.CalibrationError, match=r"calibrate with at least (\d+) rows"):
        willow.optimize(pipelines.numpy_pipeline, accuracy_target=0.99).calibrate(model, cc[:200], ce[:200])


def test_calibration_checks_labels(tabular):
    model, (cc, ce, cy), _ = tabular
    pipeline = willow.optimize(pipelines.numpy_pipeline, **OPTIONS)
    with pytest.raises(ValueError, match="one label per calibration row"):
        pipeline.calibrate(model, cc, ce, y=cy[:-1])
    with pytest.raises(ValueError, match="does not predict"):
        pipeline.calibrate(model, cc, ce, y=np.where(cy == 1, 7, 0))


def test_accuracy_target_one_means_no_cascade(tabular):
    model, (cc, ce, _), (xc, xe, _) = tabular
    pipeline = willow.optimize(pipelines.numpy_pipeline, accuracy_target=1.0, cost_repeats=1).calibrate(
        model, cc, ce
    )
    assert not pipeline.plan_.cascade
    assert "accuracy_target=1.0" in pipeline.plan_.reason
    assert "No cascade" in pipeline.explain()
    np.testing.assert_array_equal(pipeline(model, xc, xe), pipelines.numpy_pipeline(model, xc, xe))


def test_a_different_model_falls_back_to_the_original_with_a_warning(calibrated, tabular):
    model, _, (xc, xe, xy) = tabular
    other = LogisticRegression(C=0.01, max_iter=500).fit(np.hstack([xc, pipelines.slow_features(xe)]), xy)
    with pytest.warns(willow.ModelChangedWarning, match="not the one it was calibrated with"):
        out = calibrated(other, xc, xe)
    np.testing.assert_array_equal(out, pipelines.numpy_pipeline(other, xc, xe))
    # an equal copy of the calibrated model is accepted (content hash)
    clone = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(calibrated(clone, xc, xe), calibrated(model, xc, xe))


def test_save_and_load_give_identical_predictions(calibrated, tabular, tmp_path):
    model, _, (xc, xe, _) = tabular
    path = tmp_path / "plan.willow"
    calibrated.save(path)
    loaded = willow.load(path, pipelines.numpy_pipeline)
    assert loaded.plan_ == calibrated.plan_
    assert loaded.generated_source_ == calibrated.generated_source_
    fresh_model = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(loaded(fresh_model, xc, xe), calibrated(model, xc, xe))
    also = willow.load(path, calibrated)  # an OptimizedPipeline is accepted too
    np.testing.assert_array_equal(also(model, xc, xe), calibrated(model, xc, xe))


def test_load_refuses_other_versions_and_edited_sources(calibrated, tmp_path, monkeypatch):
    path = tmp_path / "plan.willow"
    calibrated.save(path)
    with pytest.raises(willow.PlanMismatchError, match="source of documented differs"):
        willow.load(path, documented)
    monkeypatch.setattr(api, "__version__", "999.0")
    with pytest.raises(willow.PlanMismatchError, match="saved by willow 0"):
        willow.load(path, pipelines.numpy_pipeline)
    junk = tmp_path / "junk.willow"
    junk.write_bytes(pickle.dumps({"hello": 1}))
    with pytest.raises(willow.PlanMismatchError, match="not a willow plan file"):
        willow.load(junk, pipelines.numpy_pipeline)


def test_edited_function_in_a_module_is_refused(calibrated, tmp_path):
    path = tmp_path / "plan.willow"
    calibrated.save(path)
    module = tmp_path / "edited_pipeline.py"
    source = inspect.getsource(pipelines.numpy_pipeline).replace("cheap * 1.0", "cheap * 2.0")
    module.write_text("import numpy as np\nimport pipelines\n" + textwrap.dedent(source))

    spec = importlib.util.spec_from_file_location("edited_pipeline", module)
    edited = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(edited)
    with pytest.raises(willow.PlanMismatchError, match="differs"):
        willow.load(path, edited.numpy_pipeline)


def test_text_pipeline_on_real_data_with_unseen_tokens(sms):
    texts, labels = sms
    order = np.random.default_rng(0).permutation(len(texts))
    train, calib, test = order[:1200], order[1200:4200], order[4200:4700]
    pipelines.WORDS = TfidfVectorizer(ngram_range=(1, 2), min_df=2).fit(texts[train])
    pipelines.CHARS = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=2).fit(texts[train])
    X = sp.hstack([pipelines.WORDS.transform(texts[train]), pipelines.CHARS.transform(texts[train])]).tocsr()
    model = LogisticRegression(max_iter=1000, C=10).fit(X, labels[train])
    # require_faster=False: this checks the cascade on real text; its speed check is timing
    pipeline = willow.optimize(
        pipelines.text_pipeline, accuracy_target=0.97, confidence=0.95, cost_repeats=2, require_faster=False
    )
    pipeline.calibrate(model, list(texts[calib]))
    assert pipeline.plan_.cascade, pipeline.plan_.reason
    assert pipeline.plan_.selected == ("words",)
    batch = list(texts[test]) + ["", "zzqx unseenword ♥ ünïcödé 漢字", "   "]
    assert assert_cascade_equivalent(pipeline, model, batch) >= 0.95
    assert assert_cascade_equivalent(pipeline, model, np.array(batch, dtype=object)) >= 0.95
    import pandas as pd

    assert (
        assert_cascade_equivalent(pipeline, model, pd.Series(batch, index=np.arange(len(batch)) * 3)) >= 0.95
    )
    assert_cascade_equivalent(pipeline, model, ["only one row"])
    assert_same_outcome(pipeline, model, [])  # 0 rows: as the original (scikit-learn refuses them)
    with pytest.raises(ValueError, match="np.nan is an invalid document"):
        pipeline(model, ["fine", np.nan])


def test_strict_false_calibration_failure_falls_back(tabular):
    model, (cc, ce, _), (xc, xe, _) = tabular

    def user_stack(model, cheap, extra):
        a = cheap * 1.0
        b = pipelines.slow_features(extra)
        X = hstack([a, b])  # noqa: F821 - a user function called hstack, resolved at call time
        return model.predict(X)

    user_stack.__globals__["hstack"] = np.hstack  # same name, real numpy: accepted
    willow.optimize(user_stack, accuracy_target=0.9, confidence=0.9, cost_repeats=1).calibrate(model, cc, ce)
    user_stack.__globals__["hstack"] = lambda parts: np.hstack(parts)
    with pytest.raises(willow.UnsupportedPipelineError, match="not one of the stacking functions"):
        willow.optimize(user_stack, accuracy_target=0.9, confidence=0.9, cost_repeats=1).calibrate(
            model, cc, ce
        )
    lenient = willow.optimize(user_stack, accuracy_target=0.9, confidence=0.9, cost_repeats=1, strict=False)
    with pytest.warns(willow.UnsupportedPipelineWarning):
        lenient.calibrate(model, cc, ce)
    np.testing.assert_array_equal(lenient(model, xc, xe), user_stack(model, xc, xe))
    del user_stack.__globals__["hstack"]
