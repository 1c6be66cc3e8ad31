"""Where credit's labels pipeline spends its time per row, and what each model cascade does to it.

    python -m benchmarks.early_exit_profile [--scale full] [--repeats 7]

Calibrates credit's labels pipeline (:func:`benchmarks.early_exit_workloads.labels_pipeline`,
``accuracy_target=0.99``) three ways -- the feature cascade with ``early_exit=False``, the
compiled pipeline without cascades (``cascade=False``) and ``early_exit=True`` (the planner
compares the feature cascade, the combined plan, the model cascade alone, cheap model first and
the feature cascade with cheap model first behind it), and once more serving that last one
whenever it was built and proven --
and, on the model's own input (the pipeline's features on the test rows), the compiled full
ensemble, cheap model first (:func:`willow.early_exit.calibrate_distilled`), staged early exit at
0.99 and LightGBM's own ``predict``. Prints us/row (medians of interleaved runs), speedups over
the original labels function, each plan's agreement, the calibration's per-statement costs (the
original path) and the plans.
"""

from __future__ import annotations

import argparse
import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

#: The row serving the feature cascade with cheap model first behind it whenever the planner
#: built and proved it, whatever the planner's timing on the calibration rows said.
FORCED = "feature cascade + cheap model first (served when proven)"


@contextlib.contextmanager
def _serving_behind(force: bool) -> Iterator[None]:
    """With ``force``, the planner serves :data:`willow.early_exit.behind.NAME` when built."""
    from willow.early_exit import behind, planner

    if not force:
        yield
        return
    original = planner.choose_plan
    planner.choose_plan = lambda seconds, incumbent, *a, **k: (
        behind.NAME if behind.NAME in seconds else original(seconds, incumbent, *a, **k)
    )
    try:
        yield
    finally:
        planner.choose_plan = original


def profile(scale: str = "full", repeats: int = 7, accuracy_target: float = 0.99) -> str:
    """The profile as markdown (see the module doc)."""
    from benchmarks import early_exit_workloads as workloads
    from benchmarks.measure import time_batches
    from willow.compiler.lowering.trees import lower_tree_model
    from willow.early_exit import calibrate_distilled, calibrate_early_exit

    prepared = workloads._prepare("credit", scale)
    model, rows = prepared.model, prepared.test_rows
    original = workloads.labels_pipeline(prepared)
    reference = original(model, rows)
    options = {**workloads.BASE_OPTIONS, **prepared.optimize_options, "accuracy_target": accuracy_target}
    variants = {
        "feature cascade (early_exit=False)": {"early_exit": False},
        "compiled, no cascade": {"cascade": False},
        "early_exit=True (the planner's choice)": {"early_exit": True},
    }
    variants[FORCED] = {"early_exit": True}
    pipelines: dict[str, Any] = {}
    for label, extra in variants.items():
        pipeline = workloads.labels_pipeline(prepared, **options, **extra)
        with warnings.catch_warnings(), _serving_behind(label == FORCED):
            warnings.simplefilter("ignore")
            pipeline.calibrate(model, prepared.calibration_rows, progress=False)
            pipeline.wait_compiled()
        pipelines[label] = pipeline
    X_cal, X_test = workloads.model_rows(prepared)
    full = lower_tree_model(model, "predict")
    cheap = calibrate_distilled(model, X_cal, accuracy_target=accuracy_target, full=full)
    staged = calibrate_early_exit(model, X_cal, accuracy_target=accuracy_target)
    calls = {"original (labels)": lambda: original(model, rows)}
    for label, pipeline in pipelines.items():
        calls[label] = lambda pipeline=pipeline: pipeline(model, rows)
    calls["model only: compiled full ensemble"] = lambda: full(X_test)
    calls["model only: cheap model first"] = lambda: cheap(X_test)
    calls[f"model only: staged early exit {accuracy_target}"] = lambda: staged(X_test)
    calls["model only: LightGBM predict"] = lambda: model.predict(X_test)
    samples = time_batches(calls, repeats)
    n = len(reference)
    base = float(np.median(samples["original (labels)"]))
    with open("/proc/loadavg", encoding="utf-8") as handle:
        load = " ".join(handle.read().split()[:3])
    lines = [
        f"credit ({scale}), labels pipeline: {n} test rows, load {load}; medians of {repeats} interleaved runs",
        "",
        "| what | us/row | speedup vs original | agreement | served |",
        "|---|---|---|---|---|",
    ]
    for label in calls:
        seconds = float(np.median(samples[label]))
        agreement = served = ""
        if label in pipelines:
            pipeline = pipelines[label]
            agreement = f"{(np.asarray(pipeline(model, rows)) == reference).mean():.4f}"
            served = workloads._plan_line(pipeline)
        lines.append(
            f"| {label} | {seconds / n * 1e6:.2f} | {base / seconds:.2f}x | {agreement} | {served} |"
        )
    costs = pipelines["feature cascade (early_exit=False)"].costs_
    lines += ["", f"calibration costs (original path, us/row): model {costs.model_seconds_per_row * 1e6:.2f}"]
    lines += [f"  {s.seconds_per_row * 1e6:7.2f}  {sorted(s.groups)}" for s in costs.statements]
    for label, pipeline in pipelines.items():
        lines += ["", f"{label}: {pipeline.plan_.reason}"]
    lines += ["", cheap.plan.table(), "", staged.plan.table()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", default="full")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--accuracy-target", type=float, default=0.99)
    args = parser.parse_args(argv)
    print(profile(args.scale, args.repeats, args.accuracy_target), flush=True)


if __name__ == "__main__":
    main()
