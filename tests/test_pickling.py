"""Pickled pipelines (pickle and cloudpickle) serve exactly what the original process served.

Covers cascade, compiled-only, fused text, top-K and uncalibrated pipelines; functions pickled by
reference (module level), by reference to a decorated module-level pipeline, and by value (a
closure over fitted vectorizers); and a fresh interpreter that never defined the function.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import cloudpickle
import numpy as np
import pipelines
import pytest
from equivalence import assert_same_as_original
from picklable import frame_cascade, make_text_pipeline, tabular_frame, text_setup
from sklearn.linear_model import LogisticRegression

import willow
from willow import api
from willow.pickling import FunctionByValue, WrappedReference

FAST = dict(cost_repeats=2, importance_repeats=1)
ROOT = Path(__file__).resolve().parents[1]
DUMPS = {"pickle": pickle.dumps, "cloudpickle": cloudpickle.dumps}


@pytest.fixture(scope="module")
def frame_setup():
    return frame_cascade(seed=5, **FAST)


@pytest.fixture(scope="module")
def text(sms):
    words, chars, model, calib, batch = text_setup(*sms)
    # require_faster=False: the cascade against the compiled pipeline on 750 holdout rows is timing
    cascade = make_text_pipeline(words, chars, accuracy_target=0.97, require_faster=False, **FAST)
    cascade.calibrate(model, calib)
    assert cascade.plan_.cascade and cascade.plan_.compiled_nodes >= 1, cascade.plan_.reason
    compiled = make_text_pipeline(words, chars, cascade=False, **FAST).calibrate(model, calib)
    assert not compiled.plan_.cascade and compiled.plan_.compiled_nodes >= 1
    return {"cascade": cascade, "compiled": compiled, "model": model, "batch": batch, "words": words}


def copy_of(model):
    """The model as a worker would see it: another object with the same content."""
    return pickle.loads(pickle.dumps(model))


def assert_same_output(actual, expected):
    assert (
        type(actual) is type(expected) and actual.dtype == expected.dtype and actual.shape == expected.shape
    )
    if expected.dtype.kind == "f":
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-12)
    else:
        np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("dumps", sorted(DUMPS))
def test_cascade_by_reference_round_trip(frame_setup, dumps):
    pipeline, model, batch = frame_setup
    assert pipeline.__getstate__()["attributes"]["__wrapped__"] is pipelines.frame_pipeline
    clone = pickle.loads(DUMPS[dumps](pipeline))
    assert clone.__wrapped__ is pipelines.frame_pipeline
    assert clone.plan_ == pipeline.plan_
    for rows in (batch, batch.iloc[[7]]):
        assert_same_output(clone(copy_of(model), rows), pipeline(model, rows))
    # a front-end rewrite (X[[...]] by position) restores the generated source at the first call
    assert clone.generated_source_ == pipeline.generated_source_
    assert_same_as_original(clone, copy_of(model), batch.iloc[:0])  # 0 rows: the original's error
    assert "cascade" in repr(clone)


@pytest.mark.parametrize("dumps", sorted(DUMPS))
@pytest.mark.parametrize("variant", ["cascade", "compiled"])
def test_compiled_text_closure_by_value_round_trip(text, variant, dumps):
    pipeline, model, batch = text[variant], text["model"], text["batch"]
    assert isinstance(pipeline.__getstate__()["attributes"]["__wrapped__"], FunctionByValue)
    clone = pickle.loads(DUMPS[dumps](pipeline))
    assert clone.plan_ == pipeline.plan_ and clone.generated_source_ == pipeline.generated_source_
    assert clone._compilation is not None
    assert [n.attribute for n in clone._compilation.nodes] == [
        n.attribute for n in pipeline._compilation.nodes
    ]
    assert (clone._compilation.fused is None) == (pipeline._compilation.fused is None)
    if variant == "cascade":
        assert clone._approximate.fused == pipeline._approximate.fused
    fresh = copy_of(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "model changed" fallback to the original function
        for rows in (batch, batch[:1], np.array(batch, dtype=object)):
            assert_same_output(clone(fresh, rows), pipeline(model, rows))
        assert_same_as_original(clone, fresh, [])  # 0 rows: the original's error


def test_uncalibrated_round_trip(text, frame_setup):
    original = text["cascade"].__wrapped__
    clone = pickle.loads(pickle.dumps(willow.optimize(original)))
    assert not clone.is_calibrated and clone.graph_ is not None and "not calibrated" in repr(clone)
    assert_same_output(clone(text["model"], text["batch"]), original(text["model"], text["batch"]))
    _, model, batch = frame_setup
    by_reference = pickle.loads(cloudpickle.dumps(willow.optimize(pipelines.frame_pipeline)))
    assert by_reference.__wrapped__ is pipelines.frame_pipeline and not by_reference.is_calibrated
    assert_same_output(by_reference(model, batch), pipelines.frame_pipeline(model, batch))


@willow.optimize(accuracy_target=0.9, confidence=0.9, **FAST)
def decorated(model, frame):
    cheap = frame[["c0", "c1"]]
    slow = pipelines.slow_features(frame[[f"e{i}" for i in range(6)]])
    return model.predict(np.hstack([cheap.to_numpy(), slow]))


def test_module_level_decorated_pipeline_is_pickled_by_reference(frame_setup):
    _, model, batch = frame_setup
    calibrated = willow.optimize(decorated, accuracy_target=0.9, confidence=0.9, **FAST)
    calibrated.calibrate(model, tabular_frame(2000, seed=9)[0])
    stored = calibrated.__getstate__()["attributes"]["__wrapped__"]
    assert isinstance(stored, WrappedReference) and stored.qualname == "decorated"
    clone = pickle.loads(pickle.dumps(calibrated))
    assert clone.__wrapped__ is decorated.__wrapped__ and clone.plan_ == calibrated.plan_
    assert_same_output(clone(copy_of(model), batch), calibrated(model, batch))


def costly_features(x):
    for _ in range(40):
        x = np.tanh(x) * 1.01
    return x


def rank(model, cheap, costly):
    a = cheap * 1.0
    b = costly_features(costly)
    return model.predict_proba(np.hstack([a, b]))


def test_topk_plan_round_trip():
    rng = np.random.default_rng(3)
    cheap, costly = rng.normal(size=(3000, 4)), rng.normal(size=(3000, 30))
    X = np.hstack([cheap * 3, costly_features(costly) * 0.3])
    y = (X @ rng.normal(size=34) + rng.normal(size=3000) > 0).astype(int)
    model = LogisticRegression().fit(X[:800], y[:800])
    pipeline = willow.optimize(rank, query="topk", k=10, precision_target=0.9, query_size=400, **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pipeline.calibrate(model, cheap[800:2600], costly[800:2600])
    assert pipeline.plan_.approximate, pipeline.plan_.reason
    for dumps in DUMPS.values():
        clone = pickle.loads(dumps(pipeline))
        assert clone.plan_ == pipeline.plan_ and clone.generated_source_ == pipeline.generated_source_
        for k in (1, 10, 50):
            got = clone.top_k(copy_of(model), cheap[2600:], costly[2600:], k=k, return_scores=True)
            want = pipeline.top_k(model, cheap[2600:], costly[2600:], k=k, return_scores=True)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])


def test_unpickling_with_another_willow_version_is_refused(frame_setup, monkeypatch):
    blob = pickle.dumps(frame_setup[0])
    monkeypatch.setattr(api, "__version__", "0.0.0")
    with pytest.raises(willow.PlanMismatchError, match="same willow version on every machine"):
        pickle.loads(blob)


def test_closure_without_cloudpickle_is_a_clear_error(text, monkeypatch):
    monkeypatch.setitem(sys.modules, "cloudpickle", None)
    with pytest.raises(pickle.PicklingError, match="needs cloudpickle"):
        pickle.dumps(willow.optimize(text["cascade"].__wrapped__))


WORKER = textwrap.dedent(
    """
    import pickle, sys
    sys.path[:0] = [sys.argv[1]]
    folder = sys.argv[2]
    with open(folder + "/inputs.pkl", "rb") as fh:
        inputs = pickle.load(fh)
    outputs = {}
    for name in ("cascade", "compiled"):  # closures: by value, their module is never imported
        with open(folder + f"/{name}.pkl", "rb") as fh:
            pipeline = pickle.load(fh)
        outputs[name] = pipeline(inputs["text_model"], inputs["texts"])
    assert "picklable" not in sys.modules and "test_pickling" not in sys.modules
    sys.path.append(sys.argv[1] + "/tests")  # by reference: the module must be importable
    with open(folder + "/frame.pkl", "rb") as fh:
        pipeline = pickle.load(fh)
    outputs["frame"] = pipeline(inputs["frame_model"], inputs["frame"])
    outputs["is_cascade"] = [pipeline.plan_.cascade]
    with open(folder + "/outputs.pkl", "wb") as fh:
        pickle.dump(outputs, fh)
    """
)


def test_fresh_interpreter_serves_identical_outputs(text, frame_setup, tmp_path):
    frame_pipeline, frame_model, frame = frame_setup
    (tmp_path / "cascade.pkl").write_bytes(cloudpickle.dumps(text["cascade"]))
    (tmp_path / "compiled.pkl").write_bytes(pickle.dumps(text["compiled"]))
    (tmp_path / "frame.pkl").write_bytes(pickle.dumps(frame_pipeline))
    inputs = {"text_model": text["model"], "texts": text["batch"], "frame_model": frame_model, "frame": frame}
    (tmp_path / "inputs.pkl").write_bytes(pickle.dumps(inputs))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    done = subprocess.run(
        [sys.executable, str(script), str(ROOT), str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outputs = pickle.loads((tmp_path / "outputs.pkl").read_bytes())
    assert outputs["is_cascade"] == [True]
    assert_same_output(outputs["cascade"], text["cascade"](text["model"], text["batch"]))
    assert_same_output(outputs["compiled"], text["compiled"](text["model"], text["batch"]))
    assert_same_output(outputs["frame"], frame_pipeline(frame_model, frame))
