"""The credit, music and price workloads in ``python -m benchmarks.early_exit``.

* **Inside the model** (credit, music: LightGBM classifiers): the workload's own feature matrix
  (the pipeline's features, captured at the model call) on its calibration and test rows, and
  staged early exit on the model's ``predict`` against willow's compiled full ensemble, as for
  the synthetic model (:func:`benchmarks.early_exit.measure_targets`).
* **End to end** (credit): the pipeline returning the model's labels (``model.predict``: model
  cascades serve labels only, see :mod:`willow.early_exit.planner`), the original function
  against ``willow.optimize(compile=True)`` with a feature cascade and ``early_exit=False`` (the
  plan before model cascades) and with ``early_exit="exact"`` / ``True`` (the planner compares
  the feature cascade, the model cascade alone and both combined). The labels pipeline is the
  workload's own function with its last line's ``predict_proba`` read as ``predict``, so the
  features are exactly the workload's (the ``predict_proba`` original is timed too).
* **price** (an LGBMRegressor) inside the model, within the coverage benchmark's tolerance
  ($50,000): staged early exit on ``predict`` with ``tolerance=`` (exact: the stage after which
  the leaf bounds keep every row within it, the same for every row; below 1.0: settled-score
  exits with an extrapolated estimate, proven on "within tolerance" agreement), as for credit and
  music; also the fewest trees the bounds alone need. ``synthetic-regression`` does the same on a
  make_regression LightGBM (200 x 31, tolerance 0.25 standard deviations of the target).

Measured on the shared 2-core machine, quiet (2026-12-04 04:54 UTC, load 0.7-1.7; ``python -m
benchmarks.early_exit --workloads credit music price synthetic-regression --scale full``; medians of 7 interleaved runs,
speedup over the compiled full ensemble; price and synthetic-regression: agreement within the
tolerance):

| workload | target 1.0 | 0.999 | 0.99 (trees/row, test agreement, holdout bound) |
|---|---|---|---|
| credit, inside the model (200 trees) | 0.97x | 0.96x (exact only) | 1.18x (141, 0.9976, 0.9968) |
| music, inside the model (150 trees) | 0.83x | 0.86x (exact only) | 1.48x (62, 0.9963, 0.9961) |
| price (200 trees, within $50,000) | 1.04x (170 trees, every row) | 1.06x (exact only) | 2.15x (52.6, 0.9952, 0.9933) |
| make_regression 200 x 31 (within 37.6) | 0.98x (160 trees) | 0.99x (exact only) | 2.48x (50.0, 0.9984, 0.9959) |

End to end (``--end-to-end-scale full``, 2026-12-04 03:38-04:55 UTC, quiet): credit, four runs,
cascades + compiled 10.05-11.04x the original, ``early_exit="exact"`` 11.37-13.50x, ``True``
11.16-12.40x (each serving the feature cascade its calibration chose; see the README for every
figure); price compiled 6.82x, ``"exact"`` 7.04x, ``True`` 10.94x (agreement within $50,000
0.9952).

price at 0.99: 95.6% of the test rows left after 50 trees, 3.7% after 100, 0.5% after 150,
0.2% after 180, none ran all 200; the bounds alone need 167 trees (the exact plan snaps to 170).
At 0.999 no settled-score thresholds qualified on 4,500 tune rows (the exact plan serves).

**credit deciding** ``predict_proba(X)[:, 1] > t`` (``credit-threshold-end-to-end``, ``--threshold
t``: the workload's function returning that decision; model cascades keep its side of ``t``),
2026-12-04 04:07-04:10 UTC, quiet, full scale: t = 0.5 cascades + compiled 12.48x, ``"exact"``
14.26x, ``True`` 14.57x (feature cascade on numeric + marital); t = 0.3 7.89x / 8.14x / 8.38x
(no feature cascade served: fewer rows are sure at 0.3).

**price end to end** (``price-end-to-end``: the workload's pipeline, which returns
``model.predict``, with ``tolerance=50_000``, accuracy_target 0.99; full scale, 5,000 test rows):
see the figures above; with ``early_exit=True`` 96% of rows leave after 50 trees, 3% after 100,
1% after 150.

"""

from __future__ import annotations

import ast
import importlib
import inspect
import textwrap
import warnings
from typing import Any

import numpy as np

PRICE_TOLERANCE = 50_000.0
#: willow.optimize options of the end-to-end variants (as benchmarks.run's defaults)
BASE_OPTIONS = {"confidence": 0.95, "split": (0.3, 0.35, 0.35), "compile": True}


def _prepare(name: str, scale: str) -> Any:
    return importlib.import_module(f"benchmarks.{name}").prepare(scale)


def model_rows(prepared: Any) -> tuple[np.ndarray, np.ndarray]:
    """The model's input on the calibration and test rows (the pipeline's own features)."""
    from benchmarks.workload import feature_matrix

    method = "predict" if prepared.task == "regression" else "predict_proba"
    original = prepared.original()
    return tuple(  # type: ignore[return-value]
        np.ascontiguousarray(np.asarray(feature_matrix(original, rows, method), dtype=float))
        for rows in (prepared.calibration_rows, prepared.test_rows)
    )


def inside_the_model(name: str, scale: str, targets: list[float], repeats: int) -> dict[str, Any]:
    """Staged early exit on a classifier workload's model, against the compiled full ensemble."""
    from benchmarks.early_exit import measure_targets

    prepared = _prepare(name, scale)
    X_cal, X_test = model_rows(prepared)
    result = measure_targets(prepared.model, X_cal, X_test, targets, repeats)
    result["model"] = f"{name}: {prepared.details.get('model')} on {X_cal.shape[1]} features ({scale})"
    return result


def price_inside(
    scale: str, targets: list[float], repeats: int, tolerance: float = PRICE_TOLERANCE
) -> dict[str, Any]:
    """Staged early exit within ``tolerance`` on the price regressor's ``predict`` (its own
    features), against the compiled full ensemble; plus the fewest trees after which the leaf
    bounds alone keep every prediction within ``tolerance`` (exact mode's stage-level exit)."""
    from benchmarks.early_exit import measure_targets

    prepared = _prepare("price", scale)
    X_cal, X_test = model_rows(prepared)
    result = measure_targets(prepared.model, X_cal, X_test, targets, repeats, tolerance=tolerance)
    result["model"] = (
        f"price: {prepared.details.get('model')} on {X_cal.shape[1]} features ({scale}), within ${tolerance:,.0f}"
    )
    result["bound_trees"] = bound_trees(prepared.model, tolerance)
    return result


def synthetic_regression(targets: list[float], repeats: int, rows: int = 10_000) -> dict[str, Any]:
    """The same on a make_regression LightGBM (200 trees x 31 leaves, 20 features; tolerance 0.25
    standard deviations of the target): ``rows`` calibration and test rows each."""
    from lightgbm import LGBMRegressor
    from sklearn.datasets import make_regression

    from benchmarks.early_exit import measure_targets

    X, y = make_regression(
        n_samples=6_000 + 2 * rows, n_features=20, n_informative=10, noise=10, random_state=0
    )
    model = LGBMRegressor(n_estimators=200, num_leaves=31, verbose=-1, random_state=0).fit(
        X[:6_000], y[:6_000]
    )
    tolerance = float(0.25 * np.std(y))
    X_cal, X_test = X[6_000 : 6_000 + rows], np.ascontiguousarray(X[6_000 + rows :])
    result = measure_targets(model, X_cal, X_test, targets, repeats, tolerance=tolerance)
    result["model"] = f"make_regression LGBMRegressor 200 x 31, 20 features, within {tolerance:.1f}"
    result["bound_trees"] = bound_trees(model, tolerance)
    return result


def bound_trees(model: Any, tolerance: float) -> int:
    """The fewest trees after which the remaining trees' leaf-value bounds keep every prediction
    within ``tolerance`` of the estimate (the same for every row)."""
    from willow.early_exit.staged import leaf_bounds, stage_tree_model

    ensemble = stage_tree_model(model, "predict").ensemble
    low, high = leaf_bounds(ensemble)
    half_width = np.append((np.cumsum((high - low)[::-1, 0])[::-1]) / 2.0, 0.0)
    return int(np.argmax(half_width <= tolerance))


def price_end_to_end(scale: str, accuracy_target: float, repeats: int) -> dict[str, Any]:
    """The price pipeline (``model.predict`` returned as it is) with ``tolerance=`` $50,000 served
    by willow with ``early_exit=False`` / ``"exact"`` / ``True`` against the original function on
    the test rows: speedup, agreement within the tolerance and the plan served."""
    from benchmarks.measure import time_batches

    prepared = _prepare("price", scale)
    model, rows = prepared.model, prepared.test_rows
    original = prepared.make_pipeline().__wrapped__
    reference = np.asarray(original(model, rows))
    options = {**BASE_OPTIONS, "accuracy_target": accuracy_target, "tolerance": PRICE_TOLERANCE}
    calls = {"original": lambda: original(model, rows)}
    pipelines = {}
    for label, early_exit in (
        ("early_exit=False", False),
        ('early_exit="exact"', "exact"),
        ("early_exit=True", True),
    ):
        pipeline = prepared.make_pipeline(**options, early_exit=early_exit)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipeline.calibrate(model, prepared.calibration_rows, progress=False)
            pipeline.wait_compiled()
        pipelines[label] = pipeline
        calls[label] = lambda pipeline=pipeline: pipeline(model, rows)
    samples = time_batches(calls, repeats)
    base = float(np.median(samples["original"]))
    result: dict[str, Any] = {
        "workload": "price",
        "scale": scale,
        "test_rows": len(reference),
        "variants": {},
    }
    for label in calls:
        seconds = float(np.median(samples[label]))
        entry: dict[str, Any] = {"seconds": round(seconds, 4), "speedup": round(base / seconds, 2)}
        if label in pipelines:
            pipeline = pipelines[label]
            output = np.asarray(pipeline(model, rows))
            entry["agreement"] = round(float((np.abs(output - reference) <= PRICE_TOLERANCE).mean()), 5)
            entry["plan"] = _plan_line(pipeline)
            entry["confident_fraction"] = round(float(pipeline.plan_.confident_fraction), 4)
            entry["model_us_per_row"] = round(pipeline.costs_.model_seconds_per_row * 1e6, 2)
        result["variants"][label] = entry
    return result


def labels_pipeline(prepared: Any, threshold: float | None = None, **options: Any) -> Any:
    """The workload's pipeline with ``model.predict_proba(X)`` read as ``model.predict(X)``
    (with ``threshold``: as ``model.predict_proba(X)[:, 1] > threshold``, the decision a user
    writes), decorated with ``willow.optimize(**options)`` (or undecorated without options)."""
    import willow
    from willow.functions import function_from_tree

    original = prepared.original()
    tree = ast.parse(textwrap.dedent(inspect.getsource(original)))
    func = tree.body[0]
    assert isinstance(func, ast.FunctionDef)
    func.decorator_list = []
    renamed = [n for n in ast.walk(func) if isinstance(n, ast.Attribute) and n.attr == "predict_proba"]
    if len(renamed) != 1:
        raise ValueError(f"expected one predict_proba call in {original.__name__}, found {len(renamed)}")
    if threshold is None:
        renamed[0].attr = "predict"
        func.name = f"{original.__name__}_labels"
    else:
        returned = func.body[-1]
        if not isinstance(returned, ast.Return) or returned.value is None:
            raise ValueError(f"expected {original.__name__} to end by returning predict_proba's output")
        returned.value = ast.parse(f"({ast.unparse(returned.value)})[:, 1] > {threshold!r}", mode="eval").body
        func.name = f"{original.__name__}_above"
    ast.fix_missing_locations(func)
    function = function_from_tree(func, original, {}, f"<{func.name}>", register_source=True)
    return willow.optimize(**options)(function) if options else function


def end_to_end(
    name: str, scale: str, accuracy_target: float, repeats: int, threshold: float | None = None
) -> dict[str, Any]:
    """The labels pipeline (with ``threshold``: ``predict_proba(X)[:, 1] > threshold``) served by
    willow (feature cascade alone, and with model cascades) against the original function, on the
    workload's test rows."""
    from benchmarks.measure import time_batches

    prepared = _prepare(name, scale)
    model, rows = prepared.model, prepared.test_rows
    original = labels_pipeline(prepared, threshold)
    reference = original(model, rows)
    options = {**BASE_OPTIONS, **prepared.optimize_options, "accuracy_target": accuracy_target}
    variants = {
        "cascades+compiled (early_exit=False)": {"early_exit": False},
        'cascades+compiled+model cascades (early_exit="exact")': {"early_exit": "exact"},
        "cascades+compiled+model cascades (early_exit=True)": {"early_exit": True},
    }
    what = name if threshold is None else f"{name} deciding predict_proba(X)[:, 1] > {threshold:g}"
    pipelines, result = {}, {"workload": what, "scale": scale, "test_rows": len(reference), "variants": {}}
    for label, extra in variants.items():
        pipeline = labels_pipeline(prepared, threshold, **options, **extra)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipeline.calibrate(model, prepared.calibration_rows, progress=False)
            pipeline.wait_compiled()
        pipelines[label] = pipeline
    base_label = "original (labels)" if threshold is None else "original (decision)"
    calls = {base_label: lambda: original(model, rows)}
    proba = prepared.original()
    calls["original (predict_proba)"] = lambda: proba(model, rows)
    for label, pipeline in pipelines.items():
        calls[label] = lambda pipeline=pipeline: pipeline(model, rows)
    samples = time_batches(calls, repeats)
    base = float(np.median(samples[base_label]))
    for label in calls:
        seconds = float(np.median(samples[label]))
        entry = {"seconds": round(seconds, 4), "speedup": round(base / seconds, 2)}
        if label in pipelines:
            pipeline = pipelines[label]
            entry["agreement"] = round(float((np.asarray(pipeline(model, rows)) == reference).mean()), 5)
            entry["plan"] = _plan_line(pipeline)
            plan = pipeline.plan_
            # where the time goes: rows answered early, the compiled model's own cost per row
            entry["confident_fraction"] = round(float(plan.confident_fraction), 4)
            entry["model_us_per_row"] = round(pipeline.costs_.model_seconds_per_row * 1e6, 2)
            entry["expected_us_per_row"] = round(plan.expected_seconds_per_row * 1e6, 2)
            entry["reason"] = plan.reason
        result["variants"][label] = entry
    return result


def _plan_line(pipeline: Any) -> str:
    from willow.early_exit.planner import _cascade_of

    plan = pipeline.plan_
    served = "feature cascade on " + ", ".join(plan.selected) if plan.cascade else "no feature cascade"
    model_cascade = _cascade_of(pipeline._compilation) if pipeline._compilation is not None else None
    if model_cascade is not None:
        early = model_cascade.plan
        if not hasattr(early, "stops"):  # cheap model first (a DistilledPlan)
            return (
                f"{served} + cheap model first ({early.kind}; answers {early.exit_fraction:.0%} of its rows)"
            )
        fractions = ", ".join(f"{s}:{f:.0%}" for s, f in zip(early.stops, early.exit_fractions))
        kind = "exact" if early.exact else "settled scores" if early.regression else "margins"
        served += f" + model cascade ({kind}; exits {fractions})"
    return served


def markdown(results: dict[str, Any]) -> str:
    """The end-to-end figures as a markdown table."""
    lines = [
        f"{results['workload']} end to end ({results['scale']}, {results['test_rows']} test rows; "
        "medians, speedup over the original function)",
        "",
        "| variant | seconds | speedup | agreement | answered early | model us/row | plan |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in results["variants"].items():
        lines.append(
            f"| {label} | {r['seconds']} | {r['speedup']:.2f}x | {r.get('agreement', '')} | "
            f"{r.get('confident_fraction', '')} | {r.get('model_us_per_row', '')} | {r.get('plan', '')} |"
        )
    return "\n".join(lines)
