"""Run one workload: train (or load), calibrate every variant, measure them side by side."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from benchmarks import measure
from benchmarks.feature_tables import serve_tables
from benchmarks.variants import VARIANTS, Variant, optimize_options, unavailable
from benchmarks.workload import Prepared
from willow.errors import CalibrationError

__all__ = ["RunConfig", "run_workload", "DEFAULT_TARGETS"]

DEFAULT_TARGETS = (0.95, 0.98, 0.99, 0.999, 1.0)


@dataclass(frozen=True)
class RunConfig:
    """How a benchmark run is sized and which willow options every variant shares.

    ``base_options`` go to every ``willow.optimize`` call; the default split gives tune and
    holdout more rows than willow's default so that a modest calibration slice can prove 0.99.
    """

    scale: str = "quick"
    accuracy_target: float = 0.99
    targets: tuple[float, ...] = DEFAULT_TARGETS
    repeats: int = 5
    tradeoff_repeats: int = 3
    min_seconds: float = 0.1
    base_options: dict[str, Any] = field(
        default_factory=lambda: {"confidence": 0.95, "split": (0.3, 0.35, 0.35)}
    )
    progress: bool = True
    tables: str = "pandas"  # where lookups are served from: pandas, memory or redis (--tables)


class _Steps:
    """A tqdm progress bar over a workload's steps (a no-op when tqdm is missing or disabled)."""

    def __init__(self, name: str, total: int, enabled: bool) -> None:
        self._bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm

                self._bar = tqdm(total=total, desc=f"{name:<8}", unit="step", leave=True)
            except ImportError:
                pass

    def step(self, label: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(label)

    def done(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"


def _status(exc: BaseException) -> str:
    """Too few calibration rows to prove a target is "n/a" (a sizing limit); the rest is "error"."""
    return "n/a" if isinstance(exc, CalibrationError) else "error"


def _plan_summary(pipeline: Any) -> dict[str, Any]:
    plan = pipeline.plan_
    return {
        "cascade": bool(plan.cascade),
        "reason": plan.reason,
        "selected": list(plan.selected),
        "threshold": float(plan.threshold) if np.isfinite(plan.threshold) else None,
        "agreement": float(plan.agreement),
        "lower_bound": float(plan.lower_bound),
        "accuracy_target": float(plan.accuracy_target),
        "confidence": float(plan.confidence),
        "confident_fraction": float(plan.confident_fraction),
        "expected_speedup": float(plan.expected_speedup),
        "original_us_per_row": float(plan.original_seconds_per_row * 1e6),
        "holdout_rows": int(plan.holdout_rows),
        "group_us_per_row": {g: float(s * 1e6) for g, s in plan.group_seconds_per_row.items()},
        "importances": {g: float(v) for g, v in plan.importances.items()},
    }


def _calibrate(prepared: Prepared, options: dict[str, Any]) -> tuple[Any, float]:
    """The calibrated pipeline and the seconds until its final plan serves: calibration plus any
    background compilation (compile=True defers models over its time budget), waited for so that
    the variant is measured as it serves once compiled."""
    pipeline = prepared.make_pipeline(**options)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipeline.calibrate(
            prepared.model, prepared.calibration_rows, y=prepared.calibration_labels, progress=False
        )
        pipeline.wait_compiled()
    return pipeline, time.perf_counter() - start


def _base(config: RunConfig, prepared: Prepared) -> dict[str, Any]:
    return {**config.base_options, **prepared.optimize_options}


def _same(task: str, output: Any, reference: Any) -> bool:
    output, reference = np.asarray(output), np.asarray(reference)
    if output.shape != reference.shape:
        return False
    if output.dtype.kind in "fc":
        return bool(np.allclose(output, reference, rtol=1e-9, atol=1e-12))
    return bool(np.array_equal(output, reference))


def run_workload(module: ModuleType, config: RunConfig) -> dict[str, Any]:
    """Everything measured for one workload, as a JSON-able dict."""
    extra_targets = [t for t in config.targets if t != config.accuracy_target]
    bar = _Steps(module.NAME, 5 + len(VARIANTS) + len(extra_targets), config.progress)
    try:
        return _run(module, config, bar, extra_targets)
    finally:
        bar.close()


def _run(module: ModuleType, config: RunConfig, bar: _Steps, extra_targets: list[float]) -> dict[str, Any]:
    bar.step("train / load model")
    start = time.perf_counter()
    prepared: Prepared = module.prepare(config.scale)
    prepare_seconds = time.perf_counter() - start
    bar.done()
    with serve_tables(prepared, config.tables) as served:  # --tables memory|redis
        return _measure(served, config, bar, extra_targets, prepare_seconds)


def _measure(
    prepared: Prepared, config: RunConfig, bar: _Steps, extra_targets: list[float], prepare_seconds: float
) -> dict[str, Any]:
    model, rows, task = prepared.model, prepared.test_rows, prepared.task
    positive = prepared.details.get("positive_class")
    n_test = len(prepared.test_labels)
    original = prepared.original()

    result: dict[str, Any] = {
        "name": prepared.name,
        "description": prepared.description,
        "task": task,
        "groups": list(prepared.groups),
        "model": prepared.details.get("model"),
        "sizes": {
            "train": prepared.sizes.train,
            "history": prepared.sizes.history,
            "calibrate": prepared.sizes.calibrate,
            "test": n_test,
            "point_rows": min(prepared.sizes.point_rows, n_test),
        },
        "top_k": prepared.top_k,
        "willow_options": {k: repr(v) for k, v in prepared.optimize_options.items()},
        "prepare_seconds": prepare_seconds,
        "accuracy_target": config.accuracy_target,
        "feature_tables": prepared.details.get("feature_tables", {"mode": "pandas"}),
    }

    # ---- build and calibrate every variant
    entries: dict[str, dict[str, Any]] = {}
    pipelines: dict[str, Any] = {}
    for variant in VARIANTS:
        bar.step(f"calibrate {variant.name}")
        entry: dict[str, Any] = {"name": variant.name, "description": variant.description, "status": "ok"}
        entries[variant.name] = entry
        reason = unavailable(variant, prepared.top_k)
        if reason is not None:
            entry["status"], entry["note"] = reason.split(":", 1)[0], reason.split(":", 1)[1].strip()
        elif variant.top_k:
            options = {**config.base_options, **prepared.topk_options, "query": "topk", "k": prepared.top_k}
            try:
                pipeline, seconds = _calibrate(prepared, options)
            except Exception as exc:  # noqa: BLE001 - reported, the other variants still run
                entry["status"], entry["note"] = _status(exc), _error(exc)
            else:
                pipelines[variant.name] = pipeline
                entry["calibration_seconds"] = seconds
        elif variant.optimized:
            try:
                pipeline, seconds = _calibrate(
                    prepared, optimize_options(variant, config.accuracy_target, _base(config, prepared))
                )
            except Exception as exc:  # noqa: BLE001 - reported, the other variants still run
                entry["status"], entry["note"] = _status(exc), _error(exc)
            else:
                pipelines[variant.name] = pipeline
                entry["calibration_seconds"] = seconds
                entry["plan"] = _plan_summary(pipeline)
        bar.done()

    def batch_call(variant: Variant) -> Callable[[], Any]:
        if not variant.optimized:
            return lambda: original(model, rows)
        pipeline = pipelines[variant.name]
        if variant.top_k:
            return lambda: pipeline.top_k(model, rows, k=prepared.top_k)
        return lambda: pipeline(model, rows)

    runnable = [v for v in VARIANTS if entries[v.name]["status"] == "ok"]

    # ---- outputs and quality
    bar.step("outputs and quality")
    original_output = original(model, rows)
    reference_scores = measure.scores(task, original_output, model, positive) if prepared.top_k else None
    for variant in list(runnable):
        entry = entries[variant.name]
        try:
            output = batch_call(variant)()
        except Exception as exc:  # noqa: BLE001
            entry["status"], entry["note"] = "error", _error(exc)
            runnable.remove(variant)
            continue
        if variant.top_k:
            k = prepared.top_k
            entry["k"] = k
            entry["precision_at_k"] = measure.precision_at_k(
                output, measure.original_top_k(reference_scores, k), k
            )
            continue
        entry.update(measure.quality(task, output, prepared.test_labels, model, positive))
        entry["agreement"] = measure.agreement(task, output, original_output, model)
        entry["identical_to_original"] = _same(task, output, original_output)
        plan = entry.get("plan")
        entry["must_match_original"] = plan is not None and not plan["cascade"]
    if entries["original"]["status"] == "ok" and prepared.top_k:
        entries["original"]["precision_at_k"] = 1.0
    bar.done()

    # ---- batch throughput
    bar.step("batch timing")
    samples = measure.time_batches(
        {v.name: batch_call(v) for v in runnable}, config.repeats, config.min_seconds
    )
    base = float(np.median(samples["original"]))
    for name, times in samples.items():
        seconds = float(np.median(times))
        entries[name].update(
            batch_seconds=seconds,
            rows_per_second=n_test / seconds,
            speedup=base / seconds,
            repeats=len(times),
        )
    bar.done()

    # ---- point latency
    bar.step("point latency")
    point = measure.point_latencies(
        {
            v.name: (lambda one, v=v: _single(v, pipelines, original, model, one))
            for v in runnable
            if not v.top_k
        },
        rows,
        prepared.sizes.point_rows,
    )
    for name, lat in point.items():
        entries[name].update(
            p50_ms=float(np.percentile(lat, 50) * 1e3), p99_ms=float(np.percentile(lat, 99) * 1e3)
        )
    bar.done()

    # ---- oracle bound of the cascade
    bar.step("oracle bound")
    oracle: dict[str, Any] = {"status": "n/a", "note": "cascades variant did not run"}
    if "cascades" in pipelines and entries["cascades"]["status"] == "ok":
        try:
            oracle = measure.oracle_bound(
                pipelines["cascades"], model, rows, original_output, entries["cascades"].get("speedup")
            )
        except Exception as exc:  # noqa: BLE001
            oracle = {"status": "error", "note": _error(exc)}
    result["oracle"] = oracle
    bar.done()

    # ---- accuracy-vs-speed trade-off over accuracy targets
    curves: dict[str, list[dict[str, Any]]] = {}
    cascade_variants = [v for v in VARIANTS if v.cascades and not v.top_k]
    for target in sorted(config.targets):
        reused = target == config.accuracy_target
        if not reused:
            bar.step(f"trade-off at {target}")
        for variant in cascade_variants:
            point_entry = _tradeoff_point(
                variant, target, reused, entries, oracle, prepared, config, original, original_output
            )
            curves.setdefault(variant.name, []).append(point_entry)
        if not reused:
            bar.done()
    result["tradeoff"] = curves
    result["variants"] = [entries[v.name] for v in VARIANTS]
    return result


def _single(variant: Variant, pipelines: dict[str, Any], original: Callable, model: Any, one: Any) -> Any:
    if not variant.optimized:
        return original(model, one)
    return pipelines[variant.name](model, one)


def _tradeoff_point(
    variant: Variant,
    target: float,
    reused: bool,
    entries: dict[str, dict[str, Any]],
    main_oracle: dict[str, Any],
    prepared: Prepared,
    config: RunConfig,
    original: Callable,
    original_output: Any,
) -> dict[str, Any]:
    point: dict[str, Any] = {"accuracy_target": target}
    reason = unavailable(variant, prepared.top_k)
    if reason is not None:
        status, note = reason.split(":", 1)
        return point | {"status": status, "note": note.strip()}
    if reused:
        entry = entries[variant.name]
        if entry["status"] != "ok":
            return point | {"status": entry["status"], "note": entry.get("note", "")}
        plan = entry["plan"]
        return point | {
            "status": "ok",
            "speedup": entry["speedup"],
            "agreement": entry["agreement"],
            "lower_bound": plan["lower_bound"],
            "cascade": plan["cascade"],
            "oracle_speedup": main_oracle.get("oracle_speedup") if variant.name == "cascades" else None,
            "note": "" if plan["cascade"] else plan["reason"],
        }
    model, rows = prepared.model, prepared.test_rows
    try:
        pipeline, seconds = _calibrate(prepared, optimize_options(variant, target, _base(config, prepared)))
    except Exception as exc:  # noqa: BLE001 - e.g. too few calibration rows to prove this target
        return point | {"status": _status(exc), "note": _error(exc)}
    plan = pipeline.plan_
    output = pipeline(model, rows)
    samples = measure.time_batches(
        {"original": lambda: original(model, rows), "optimized": lambda: pipeline(model, rows)},
        config.tradeoff_repeats,
        config.min_seconds,
    )
    oracle = measure.oracle_bound(pipeline, model, rows, original_output, None) if plan.cascade else {}
    return point | {
        "status": "ok",
        "speedup": float(np.median(samples["original"]) / np.median(samples["optimized"])),
        "agreement": measure.agreement(prepared.task, output, original_output, model),
        "lower_bound": float(plan.lower_bound),
        "cascade": bool(plan.cascade),
        "calibration_seconds": seconds,
        "oracle_speedup": oracle.get("oracle_speedup"),
        "note": "" if plan.cascade else plan.reason,
    }
