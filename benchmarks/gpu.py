"""Benchmark: tree ensembles on the GPU (willow's CUDA kernels) against LightGBM and willow on the CPU.

    python -m benchmarks.gpu [--trees 500 --leaves 63 --features 100 --rows 1000000 --repeats 5]
    python -m benchmarks.gpu --simulate      # no GPU: a tiny run under Numba's CUDA simulator

Needs an NVIDIA GPU and CuPy (``pip install willow[gpu]``); it refuses, with the reason, anywhere
else, Numba's CUDA simulator included (which runs the kernels on the CPU, for tests only), unless
``--simulate`` is given: then it turns the simulator on and runs every step end to end at a tiny
size (defaults: 64 rows, 3 trees x 7 leaves, 8 features, 1 repeat), with NumPy standing in for
CuPy. That run checks the benchmark's code, exactness and the transfers per call; its timings
are the simulator's (Python threads per CUDA thread) and say nothing about GPU speed, and its
JSON says so (``"mode"``).

Reports, as medians of ``--repeats`` alternating runs: LightGBM's own ``predict`` (CPU), willow's
CPU kernels and willow's CUDA kernel on ``--rows`` rows of a synthetic regression model, with the
GPU time split into host -> device transfer (``to_device``), the kernel (``raw_device``) and
device -> host (``to_host``), plus the end-to-end call; the CUDA kernel's first-call compile time;
and exactness (the CUDA raw scores against LightGBM's and willow CPU's, max |difference|).
Under ``fil``: RAPIDS' Forest Inference Library (``nvforest``, or ``cuml.fil`` in older RAPIDS) on
the same model and rows, when it imports (``{"skipped": why}`` otherwise; it is not a dependency
of willow: install the RAPIDS package matching the GPU's CUDA version).
Under ``chain``: a ``@willow.optimize(device="cuda")`` pipeline (an elementwise feature kernel
feeding the tree kernel) called on ``--rows`` rows: the host <-> device copies one call makes
(:func:`willow.gpu.runtime.count_transfers`: the features stay on the device between the two
kernels, so one upload and one download), its median time, and whether it equals the original.
Under ``cascades`` (``--cascades``; on by default on a GPU): the toxic and credit workloads
(``benchmarks.toxic``/``benchmarks.credit``, ``--scale``) calibrated with ``device="cpu"`` and
``device="cuda"``, each called on the test rows in alternation: median seconds per call, whether
each plan cascades, the share of rows whose decision (label, or most probable class) is the
original function's, and the transfers of one cuda call.
Under ``selection``: top-K's choice of the best ``--k`` rows and a cascade's uncertain rows among
``--rows`` scores, NumPy on the host against :mod:`willow.gpu.selection` on scores already on the
device (positions back to the host included; the scores' transfer timed apart as ``h2d``), and
whether both give the same rows.

Not measured yet: no session has been lent a GPU since this was written, so there are no figures
here; the issue's target is trees >= 10x willow CPU at 10^6 rows, exact.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def _synthetic(rows: int, features: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, features))
    y = X @ rng.standard_normal(features) + np.sin(3 * X[:, 0]) * X[:, 1] + rng.standard_normal(rows)
    X[rng.random(X.shape) < 0.02] = np.nan
    return X, y


def refusal() -> str | None:
    """Why this machine cannot run the benchmark, or ``None`` when it can."""
    from willow.errors import DeviceUnavailableError
    from willow.gpu import runtime

    if runtime.simulator_active():
        return (
            "benchmarks.gpu needs a real NVIDIA GPU, but Numba's CUDA simulator is enabled "
            "(NUMBA_ENABLE_CUDASIM=1): it runs the kernels on the CPU, and its timings mean nothing. "
            "Unset it and run on a machine with a GPU and `pip install willow[gpu]`."
        )
    try:
        runtime.check_device("cuda")
    except DeviceUnavailableError as exc:
        return f"benchmarks.gpu needs a real NVIDIA GPU: {exc}"
    return None


def _median_seconds(fn: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> float:
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure(trees: int, leaves: int, features: int, rows: int, repeats: int) -> dict:
    """Train the synthetic model and time the three ways of predicting ``rows`` rows."""
    import lightgbm as lgb

    from willow.compiler.lowering.trees import lower_tree_model
    from willow.gpu import runtime
    from willow.gpu.trees import lower_tree_model_cuda

    X, y = _synthetic(rows, features)
    train_rows = min(rows, 100_000)
    params = dict(objective="regression", num_leaves=leaves, verbose=-1, min_data_in_leaf=5)
    booster = lgb.train(params, lgb.Dataset(X[:train_rows], y[:train_rows]), num_boost_round=trees)

    start = time.perf_counter()
    cpu = lower_tree_model(booster, "predict")
    cpu_compile = time.perf_counter() - start
    start = time.perf_counter()
    gpu = lower_tree_model_cuda(booster, "predict")
    gpu.raw(X[:1])  # the kernel compiles on its first launch
    gpu_compile = time.perf_counter() - start

    expected = booster.predict(X)
    on_cpu = cpu(X)
    device_rows = gpu.to_device(X)
    raw = runtime.to_host(gpu.raw_device(device_rows))[:, 0]
    sync = runtime.synchronize
    none: Callable[[], None] = lambda: None  # noqa: E731 - CPU timings need no device sync

    timings: dict[str, list[float]] = {
        k: [] for k in ("lightgbm", "willow_cpu", "h2d", "kernel", "d2h", "gpu_call")
    }
    for _ in range(repeats):  # alternate, so every variant sees the same machine load
        timings["lightgbm"].append(_median_seconds(lambda: booster.predict(X), 1, none))
        timings["willow_cpu"].append(_median_seconds(lambda: cpu(X), 1, none))
        timings["h2d"].append(_median_seconds(lambda: gpu.to_device(X), 1, sync))
        timings["kernel"].append(_median_seconds(lambda: gpu.raw_device(device_rows), 1, sync))
        out = gpu.raw_device(device_rows)
        timings["d2h"].append(_median_seconds(lambda out=out: runtime.to_host(out), 1, sync))
        timings["gpu_call"].append(_median_seconds(lambda: gpu(X), 1, sync))
    medians = {k: float(np.median(v)) for k, v in timings.items()}
    return {
        "model": f"synthetic {trees} trees x {leaves} leaves, {features} features",
        "rows": rows,
        "median_seconds": medians,
        "rows_per_s": {k: rows / medians[k] for k in ("lightgbm", "willow_cpu", "kernel", "gpu_call")},
        "gpu_kernel_vs_willow_cpu": medians["willow_cpu"] / medians["kernel"],
        "gpu_call_vs_willow_cpu": medians["willow_cpu"] / medians["gpu_call"],
        "gpu_call_vs_lightgbm": medians["lightgbm"] / medians["gpu_call"],
        "compile_s": {"willow_cpu": cpu_compile, "willow_gpu_first_call": gpu_compile},
        "max_abs_diff_gpu_vs_lightgbm": float(np.max(np.abs(raw - expected))),
        "gpu_equals_willow_cpu": bool(np.array_equal(raw, on_cpu)),
        "cpu_threads": os.cpu_count(),
        "fil": measure_fil(booster, X, expected, repeats),
    }


def _fil_loader() -> tuple[Callable[..., Any] | None, str]:
    """RAPIDS' Forest Inference Library's model loader (``nvforest.load_model``, or the older
    ``cuml.fil.ForestInference.load``) and its name; ``(None, why)`` when neither imports."""
    try:
        import nvforest

        return nvforest.load_model, "nvforest.load_model"
    except ImportError as nvforest_missing:
        try:
            from cuml.fil import ForestInference

            return ForestInference.load, "cuml.fil.ForestInference.load"
        except ImportError as cuml_missing:
            return None, (
                f"neither nvforest ({nvforest_missing}) nor cuML ({cuml_missing}) imports: install RAPIDS' "
                "nvforest or cuml for the GPU's CUDA version to compare with FIL"
            )


def measure_fil(booster: Any, X: np.ndarray, expected: np.ndarray, repeats: int) -> dict:
    """RAPIDS FIL (the issue's peer for trees on a GPU) on the same LightGBM model and rows:
    median seconds of ``predict`` on rows already on the device, the end-to-end call from host
    rows, and its largest difference to LightGBM (FIL computes in float32 unless the model loads
    with ``precision="double"``); ``{"skipped": why}`` when FIL does not import or load."""
    import tempfile

    load, name = _fil_loader()
    if load is None:
        return {"skipped": name}
    from willow.gpu import runtime

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.txt")
        booster.save_model(path)
        try:
            fil = load(path, model_type="lightgbm", precision="double")
        except Exception as error:  # a FIL that cannot read this model: report, do not fail the run
            return {"skipped": f"{name} could not load the model: {type(error).__name__}: {error}"}
    xp = runtime.array_module()
    device_rows = xp.asarray(X)
    got = runtime.to_host(xp.asarray(fil.predict(device_rows))).reshape(len(X), -1)[:, 0]
    sync = runtime.synchronize
    return {
        "loader": name,
        "median_seconds": {
            "predict_device_rows": _median_seconds(lambda: fil.predict(device_rows), repeats, sync),
            "call_from_host_rows": _median_seconds(
                lambda: runtime.to_host(fil.predict(xp.asarray(X))), repeats, sync
            ),
        },
        "max_abs_diff_vs_lightgbm": float(np.max(np.abs(got - expected))) if len(X) else 0.0,
    }


def measure_chain(trees: int, leaves: int, features: int, rows: int, repeats: int) -> dict:
    """A compiled ``device="cuda"`` pipeline whose features stay on the device between its
    elementwise kernel and its tree kernel: transfers per call, median time, exactness."""
    import lightgbm as lgb

    import willow
    from willow.gpu import runtime

    X, y = _synthetic(rows, features, seed=1)
    train_rows = min(rows, 100_000)
    params = dict(objective="regression", num_leaves=leaves, verbose=-1, min_data_in_leaf=5)
    booster = lgb.train(params, lgb.Dataset(X[:train_rows] * 0.5, y[:train_rows]), num_boost_round=trees)

    def predict(X):
        features = X * 0.5
        return booster.predict(features)

    # cascade=False: the compiled pipeline only, so the targets just size the calibration split
    options = dict(cascade=False, accuracy_target=0.8, confidence=0.5, cost_repeats=1, require_faster=False)
    fast = willow.optimize(predict, device="cuda", **options)
    fast.calibrate(_synthetic(120, features, seed=2)[0])
    with runtime.count_transfers() as log:
        got = fast(X)
    seconds = _median_seconds(lambda: fast(X), repeats, runtime.synchronize)
    return {
        "pipeline": "features = X * 0.5; booster.predict(features)",
        "rows": rows,
        "transfers_per_call": [
            {"direction": t.direction, "what": t.what, "shape": list(t.shape), "bytes": t.nbytes} for t in log
        ],
        "median_seconds": seconds,
        "equals_original": bool(np.array_equal(got, predict(X))),
        "on_cuda": "on cuda" in fast.explain(),
    }


def measure_cascades(names: tuple[str, ...], scale: str, repeats: int) -> dict:
    """The toxic and credit workloads end to end with ``device="cpu"`` and ``device="cuda"``."""
    import importlib
    import warnings

    from willow.gpu import runtime

    # the smoke scale's few hundred calibration rows cannot prove the default 0.99 target
    targets = {"accuracy_target": 0.9, "confidence": 0.5} if scale == "smoke" else {}
    results: dict[str, Any] = {}
    for name in names:
        prepared = importlib.import_module(f"benchmarks.{name}").prepare(scale)
        rows, model = prepared.test_rows, prepared.model
        pipelines = {}
        for device in ("cpu", "cuda"):
            fast = prepared.make_pipeline(
                device=device, random_state=0, **targets, **prepared.optimize_options
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fast.calibrate(
                    model, prepared.calibration_rows, y=prepared.calibration_labels, progress=False
                )
                fast.wait_compiled()
            pipelines[device] = fast
        original = pipelines["cpu"].__wrapped__
        expected = np.asarray(original(model, rows))
        with runtime.count_transfers() as log:
            on_cuda = np.asarray(pipelines["cuda"](model, rows))
        calls = {"original": functools.partial(original, model, rows)}
        calls.update({device: functools.partial(fast, model, rows) for device, fast in pipelines.items()})
        times: dict[str, list[float]] = {variant: [] for variant in calls}
        for _ in range(repeats):  # alternate, so every variant sees the same machine load
            for variant, call in calls.items():
                times[variant].append(_median_seconds(call, 1, runtime.synchronize))
        agreement = {
            device: float(np.mean(_rows_equal(np.asarray(calls[device]()), expected))) for device in pipelines
        }
        results[name] = {
            "rows": len(rows),
            "median_seconds": {k: float(np.median(v)) for k, v in times.items()},
            "cascade": {device: bool(fast.plan_.cascade) for device, fast in pipelines.items()},
            "decision_agreement_with_original": agreement,
            "cuda_equals_cpu": bool(np.array_equal(on_cuda, np.asarray(pipelines["cpu"](model, rows)))),
            "transfers_per_cuda_call": len(log),
            "bytes_per_cuda_call": int(sum(t.nbytes for t in log)),
            "cuda_nodes": [
                line.strip() for line in pipelines["cuda"].explain().splitlines() if "on cuda" in line
            ][:8],
        }
    return results


def _rows_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row, the same decision: the same label, or the same most probable class (a cascade
    answers confident rows with its approximate model's probabilities, never the same numbers)."""
    if a.dtype.kind in "fc" and a.ndim == 2:
        return np.argmax(a, axis=1) == np.argmax(b, axis=1)
    return np.isclose(a, b, rtol=1e-9, atol=1e-12) if a.dtype.kind in "fc" else a == b


def measure_selection(rows: int, k: int, repeats: int, seed: int = 0) -> dict:
    """Time top-K's selection of the ``k`` best of ``rows`` scores (many ties, 1% NaN) and a
    cascade's uncertain rows: NumPy on the host against :mod:`willow.gpu.selection` on scores
    already on the device (only the positions come back), and check both give the same rows."""
    from willow.gpu import runtime, selection
    from willow.topk.ranking import top_positions

    rng = np.random.default_rng(seed)
    scores = rng.integers(0, max(2, rows // 4), rows).astype(np.float64)
    scores[rng.random(rows) < 0.01] = np.nan
    threshold = float(np.nanmedian(scores))
    on_device = runtime.to_device(scores)
    sync = runtime.synchronize
    none: Callable[[], None] = lambda: None  # noqa: E731
    timings: dict[str, list[float]] = {
        k_: [] for k_ in ("topk_cpu", "topk_gpu", "below_cpu", "below_gpu", "h2d")
    }
    for _ in range(repeats):
        timings["topk_cpu"].append(_median_seconds(lambda: top_positions(scores, k), 1, none))
        timings["topk_gpu"].append(_median_seconds(lambda: selection.top_positions(on_device, k), 1, sync))
        timings["below_cpu"].append(_median_seconds(lambda: np.flatnonzero(~(scores >= threshold)), 1, none))
        timings["below_gpu"].append(
            _median_seconds(lambda: selection.rows_below(on_device, threshold), 1, sync)
        )
        timings["h2d"].append(_median_seconds(lambda: runtime.to_device(scores), 1, sync))
    medians = {k_: float(np.median(v)) for k_, v in timings.items()}
    return {
        "rows": rows,
        "k": k,
        "median_seconds": medians,
        "topk_gpu_vs_cpu": medians["topk_cpu"] / medians["topk_gpu"],
        "rows_below_gpu_vs_cpu": medians["below_cpu"] / medians["below_gpu"],
        "topk_equal": bool(np.array_equal(selection.top_positions(on_device, k), top_positions(scores, k))),
        "rows_below_equal": bool(
            np.array_equal(selection.rows_below(on_device, threshold), np.flatnonzero(~(scores >= threshold)))
        ),
    }


SIMULATED_SIZES = {"trees": 3, "leaves": 7, "features": 8, "rows": 64, "repeats": 1, "k": 5}
GPU_SIZES = {"trees": 500, "leaves": 63, "features": 100, "rows": 1_000_000, "repeats": 5, "k": 100}
SIMULATED = (
    "simulator: Numba's CUDA simulator ran the kernels on the CPU with NumPy arrays; exactness and "
    "transfer counts hold, timings say nothing about GPU speed"
)


def enable_simulator() -> str | None:
    """Turn Numba's CUDA simulator on for this process; why not, when ``numba.cuda`` was already
    imported with the real driver (the choice is made at that import)."""
    if "numba.cuda" in sys.modules:
        from willow.gpu import runtime

        return None if runtime.simulator_active() else "numba.cuda was imported before --simulate could apply"
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    from numba.core import config

    config.reload_config()
    import numba.cuda  # noqa: F401 - the simulator, from here on

    return None


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and print its JSON; exits with status 2 and the reason without a GPU
    (unless ``--simulate``)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trees", type=int)
    parser.add_argument("--leaves", type=int)
    parser.add_argument("--features", type=int)
    parser.add_argument("--rows", type=int)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--k", type=int, help="top-K's K for the selection timing")
    parser.add_argument(
        "--cascades",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the toxic and credit cascades with device cpu vs cuda (default: on a GPU only)",
    )
    parser.add_argument(
        "--scale", default=None, help="the cascades' workload size (default: quick; smoke simulated)"
    )
    parser.add_argument(
        "--simulate",
        action="store_true",
        help="run under Numba's CUDA simulator at a tiny size (no GPU; timings mean nothing)",
    )
    args = parser.parse_args(argv)
    defaults = SIMULATED_SIZES if args.simulate else GPU_SIZES
    size = {
        name: default if getattr(args, name) is None else getattr(args, name)
        for name, default in defaults.items()
    }
    reason = enable_simulator() if args.simulate else refusal()
    if reason is not None:
        print(reason, file=sys.stderr)
        raise SystemExit(2)
    shape = (size["trees"], size["leaves"], size["features"], size["rows"], size["repeats"])
    result = {"mode": SIMULATED if args.simulate else "gpu", **measure(*shape)}
    result["chain"] = measure_chain(*shape)
    result["selection"] = measure_selection(size["rows"], size["k"], size["repeats"])
    if args.cascades if args.cascades is not None else not args.simulate:
        scale = args.scale or ("smoke" if args.simulate else "quick")
        result["cascades"] = measure_cascades(("toxic", "credit"), scale, size["repeats"])
    print(json.dumps(result, indent=1), flush=True)
    return result


if __name__ == "__main__":
    main()
