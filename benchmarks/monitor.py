"""The serving-time monitor: its overhead, and a population shift it detects.

``python -m benchmarks.monitor`` runs both parts (``--part overhead`` or ``--part shift`` runs one):

- overhead: the toxic workload's text cascade (SMS spam, word + character TF-IDF) calibrated
  once with ``monitor=0.01``, then the test rows served in batches by the same plan with the
  monitor and without it (the cascade function alone, as a pipeline without ``monitor=`` serves
  it), interleaved. A repeat serves every test row once; the figure is the median over repeats of
  that total time, so calls that sampled rows and calls that did not both count.
- shift: the credit workload's pipeline (UCI Adult, LightGBM) calibrated on one population and
  served another: female -> male rows, and age < 35 -> age >= 35, plus a control served the same
  population it was calibrated on. Served rows are drawn with replacement from the target
  population (a stream of i.i.d. rows), in calls of 1,000 rows, until the monitor falls back or
  the stream ends; for each sampling fraction it reports the cascade's agreement on the served
  population, and how many rows were served (and sampled) before the fallback. The default target
  is 0.97, as in the coverage study: calibrated on female rows at 0.99, the cascade's threshold
  is strict enough that it still agrees on about 0.99 of male rows (0.989 to 0.997 over three
  seeds: no drop worth detecting), while at 0.97 it agrees on 0.90 to 0.95 of them.
  ``--scenarios female-male --fractions 0.01 --calls 500`` runs the one scenario long enough for
  1% sampling to gather the evidence.
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

import numpy as np
from lightgbm import LGBMClassifier

from benchmarks import credit, toxic
from benchmarks.data import split_positions
from willow.compiler.profiling import median_seconds


def _served_in_batches(pipeline: Any, model: Any, rows: list, batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(rows), batch):
        pipeline(model, rows[i : i + batch])
    return time.perf_counter() - start


def overhead(
    repeats: int, batches: tuple[int, ...], fraction: float, compile: bool, target: float
) -> list[str]:
    prepared = toxic.prepare("quick")
    pipeline = prepared.make_pipeline(
        monitor=fraction, compile=compile, require_faster=False, accuracy_target=target
    )
    pipeline.calibrate(prepared.model, prepared.calibration_rows)
    plan = pipeline.plan_
    if not plan.cascade:
        return [f"toxic (compile={compile}): no cascade to monitor: {plan.reason}"]
    lines = [
        f"toxic cascade (compile={compile}, accuracy_target={target}): {plan.confident_fraction:.1%} of holdout rows answered "
        f"approximately, holdout agreement {plan.agreement:.4f}",
        f"{'rows/call':>10} {'no monitor ms':>14} {f'monitor {fraction:.0%} ms':>16} {'overhead':>9}",
    ]
    monitored = pipeline._serving
    cascade = monitored._cascade
    rows = list(prepared.test_rows) * 4
    for batch in batches:
        plain_times, monitor_times = [], []
        for _ in range(repeats):
            pipeline._serving = cascade
            plain_times.append(_served_in_batches(pipeline, prepared.model, rows, batch))
            pipeline._serving = monitored
            monitor_times.append(_served_in_batches(pipeline, prepared.model, rows, batch))
        plain, monitor = np.median(plain_times), np.median(monitor_times)
        lines.append(f"{batch:>10} {plain * 1e3:>14.1f} {monitor * 1e3:>16.1f} {monitor / plain - 1:>9.1%}")
    state = pipeline.monitor_
    lines.append(f"({len(rows)} rows per repeat, median of {repeats} repeats; {state.describe()})")
    # The same overhead by accounting, less exposed to machine load: one check (the pipeline
    # without the cascade on check_rows rows) per check_rows / fraction rows the cascade serves.
    check_rows = monitored.check_rows
    sample = rows[:check_rows]
    check = median_seconds(lambda: monitored._fallback(prepared.model, sample), repeats)
    per_row = median_seconds(lambda: cascade(prepared.model, rows[:1000]), repeats) / 1000
    served = check_rows / fraction
    lines.append(
        f"accounted: one check of {check_rows} rows {check * 1e3:.1f} ms per {served:,.0f} served rows "
        f"({per_row * served * 1e3:.1f} ms through the cascade at 1,000 rows/call): "
        f"{check / (per_row * served):.1%} overhead"
    )
    return lines


def _stream(pipeline: Any, model: Any, population: Any, calls: int, seed: int) -> int:
    """Serve up to ``calls`` calls of 1,000 rows drawn from ``population``; return the rows
    served until the monitor fell back (or all of them)."""
    rng = np.random.default_rng(seed)
    served = 0
    for _ in range(calls):
        rows = population.iloc[rng.integers(0, len(population), 1000)].reset_index(drop=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipeline(model, rows)
        served += 1000
        if pipeline.monitor_.state == "fallen back":
            break
    return served


SCENARIOS = ("control", "female-male", "age")


def shift(
    fractions: tuple[float, ...], calls: int, target: float, names: tuple[str, ...] = SCENARIOS
) -> list[str]:
    frame = credit._load()
    train, rest = split_positions(len(frame), [6000, len(frame) - 6000], 0)
    fitted, model = credit._train(frame.iloc[train].reset_index(drop=True))
    people = frame.iloc[rest].drop(columns=["Salary"]).reset_index(drop=True)
    female, young = people["sex"] == "Female", people["age"] < 35
    every = {
        "control": ("female -> female (control)", people[female].iloc[::2], people[female].iloc[1::2]),
        "female-male": ("female -> male", people[female].iloc[::2], people[~female]),
        "age": ("age < 35 -> age >= 35", people[young].iloc[::2], people[~young]),
    }
    scenarios = {every[key][0]: every[key][1:] for key in SCENARIOS if key in names}
    lines = [
        f"credit cascade, accuracy_target={target}; served in calls of 1,000 rows drawn with "
        f"replacement from the served population, up to {calls} calls",
        f"{'scenario':<28} {'holdout bound':>13} {'served agreement':>17} {'fraction':>9} "
        f"{'rows to fallback':>17} {'sampled':>8}",
    ]
    for name, (calibration, served) in scenarios.items():
        options = dict(
            accuracy_target=target,
            compile=False,
            approximate_model=LGBMClassifier(n_estimators=30, num_leaves=15, n_jobs=1, verbose=-1),
        )
        reference = credit.make_pipeline(fitted, require_faster=False, **options)
        reference.calibrate(model, calibration.reset_index(drop=True))
        if not reference.plan_.cascade:
            lines.append(f"{name:<28} no cascade: {reference.plan_.reason}")
            continue
        exact = reference(model, served.reset_index(drop=True))
        truth = float((exact.argmax(axis=1) == reference.__wrapped__(model, served).argmax(axis=1)).mean())
        for fraction in fractions:
            pipeline = credit.make_pipeline(fitted, require_faster=False, monitor=fraction, **options)
            pipeline._install(  # the same plan, monitored (calibrating again would re-draw nothing)
                reference.plan_,
                reference.costs_,
                reference._approximate,
                reference._output,
                reference._fingerprint,
                reference._serving,
                reference.generated_source_,
                reference._compilation,
            )
            rows = _stream(pipeline, model, served.reset_index(drop=True), calls, seed=1)
            state = pipeline.monitor_
            fell = f"{rows:>17,}" if state.state == "fallen back" else f"{'none in ' + format(rows, ','):>17}"
            lines.append(
                f"{name:<28} {reference.plan_.lower_bound:>13.4f} {truth:>17.4f} {fraction:>9.0%} "
                f"{fell} {state.rows_sampled:>8,}"
            )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("overhead", "shift", "both"), default="both")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batches", type=int, nargs="+", default=[1000, 100])
    parser.add_argument("--fraction", type=float, default=0.01)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--overhead-target", type=float, default=0.97)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--target", type=float, default=0.97)
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    args = parser.parse_args(argv)
    if args.part in ("overhead", "both"):
        print(
            "\n".join(
                overhead(args.repeats, tuple(args.batches), args.fraction, args.compile, args.overhead_target)
            )
        )
    if args.part in ("shift", "both"):
        print("\n".join(shift(tuple(args.fractions), args.calls, args.target, tuple(args.scenarios))))


if __name__ == "__main__":
    main()
