"""Coverage study: how often does a served cascade fall below its accuracy target on fresh rows?

willow serves a cascade only when the one-sided lower confidence bound of its agreement with the
original, measured on held-out calibration rows, reaches ``accuracy_target``. If that proof is
honest, the fraction of calibrations that serve a cascade whose agreement on fresh rows is below
the target is at most ``1 - confidence``. This study checks it by reseeding: for every seed it
draws a new calibration sample from the workload's rows (the model is trained once, on rows
neither sample touches), calibrates with ``random_state=seed``, and measures the agreement of
the served pipeline with the original on the remaining rows.

Each seed runs twice: on the calibration sample as drawn, and on the same sample repeated 4x
(``pd.concat([cal] * 4)``, oversampled data), the case where a row-wise split put copies of
holdout rows in train and made the proof optimistic.

    python -m benchmarks.coverage                     # 50 seeds per workload and setting
    python -m benchmarks.coverage --quick             # 10 seeds
    python -m benchmarks.coverage --seeds 20 --workloads toxic --json coverage.json

Pipelines that return numbers are cascaded with ``tolerance=`` (:mod:`willow.cascades.tolerance`):
a row agrees when the served value is within the tolerance of the original's, in every column.
``price`` is the regression cascade (LGBMRegressor house values, tolerance $50,000, about a
quarter of the median value; the approximate model is the workload's small 30-tree regressor, as
a clone of the 200-tree model would cost as much as the model), and ``product-proba`` the
``product`` workload's ``predict_proba`` judged on every class probability within 0.05 instead of
the most likely class. ``TOLERANCES`` holds them.

    python -m benchmarks.coverage --seeds 10 --workloads price product-proba

The default target is 0.97: with the quick scale's ~3,000 calibration rows, 0.99 at 95%
confidence is rarely provable on these workloads, so no cascade would be served and the study
would measure nothing (``--accuracy-target 0.99`` runs it anyway).

Calibrations use ``compile=False`` and ``require_faster=False``: the guarantee is about which
rows the cascade answers, which compiling does not change, and a proven cascade is served
whatever its speed, so every proven plan is counted. The fresh-row agreement is itself measured
on finite rows (about a thousand), so a run whose true agreement sits right at the target can
land on either side by chance; the table shows the median and the lowest agreement too.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["CoverageRun", "run_workload", "main"]

WORKLOADS = ("toxic", "credit", "product", "price", "product-proba")
#: Workloads whose pipeline returns numbers: (benchmark module, ``tolerance=`` they are cascaded with).
TOLERANCES: dict[str, tuple[str, float]] = {
    "price": ("price", 50_000.0),
    "product-proba": ("product", 0.05),
}
DEFAULT_SEEDS = 50
QUICK_SEEDS = 10
CALIBRATION_FRACTION = 0.7  # of the pooled calibration + test rows; the rest are fresh rows


@dataclass(frozen=True)
class CoverageRun:
    """One reseeded calibration and what its served pipeline did on fresh rows."""

    workload: str
    duplicated: bool
    seed: int
    cascade: bool
    lower_bound: float
    holdout_rows: int
    duplicate_rows: int
    fresh_rows: int
    fresh_agreement: float
    below_target: bool
    seconds: float
    reason: str


def _pool(prepared: Any) -> Any:
    rows = [prepared.calibration_rows, prepared.test_rows]
    if isinstance(rows[0], pd.DataFrame):
        return pd.concat(rows, ignore_index=True)
    return np.asarray(list(rows[0]) + list(rows[1]), dtype=object)


def _take(pool: Any, positions: np.ndarray, copies: int = 1) -> Any:
    if isinstance(pool, pd.DataFrame):
        part = pool.iloc[positions].reset_index(drop=True)
        return pd.concat([part] * copies, ignore_index=True) if copies > 1 else part
    part = pool[positions]
    return list(np.tile(part, copies)) if copies > 1 else list(part)


def _agreement(optimized: Any, original: Any, tolerance: float | None = None) -> np.ndarray:
    a, b = np.asarray(optimized), np.asarray(original)
    if tolerance is not None:  # numbers: within tolerance in every column
        return (np.abs(a - b) <= tolerance).reshape(len(a), -1).all(axis=1)
    if a.ndim == 2:  # probabilities: the same most likely class
        return np.argmax(a, axis=1) == np.argmax(b, axis=1)
    return a == b


def run_workload(
    name: str,
    seeds: int,
    accuracy_target: float = 0.97,
    confidence: float = 0.95,
    copies: tuple[int, ...] = (1, 4),
    scale: str = "quick",
    log: Any = sys.stderr,
) -> list[CoverageRun]:
    """``seeds`` reseeded calibrations of workload ``name`` for each number of ``copies``."""
    module_name, tolerance = TOLERANCES.get(name, (name, None))
    module = importlib.import_module(f"benchmarks.{module_name}")
    prepared = module.prepare(scale)
    pool = _pool(prepared)
    n = len(pool)
    n_calibrate = int(CALIBRATION_FRACTION * n)
    options = {
        **prepared.optimize_options,
        "accuracy_target": accuracy_target,
        "confidence": confidence,
        "compile": False,
        "require_faster": False,
        "cost_repeats": 1,
        "importance_repeats": 1,
    }
    if tolerance is not None:
        options["tolerance"] = tolerance
        if prepared.task == "regression":  # its small regressor (see the module doc)
            options.update(prepared.topk_options)
    runs = []
    for seed in range(seeds):
        order = np.random.default_rng(10_000 + seed).permutation(n)
        fresh = _take(pool, order[n_calibrate:])
        original = prepared.original()(prepared.model, fresh)
        for k in copies:
            started = time.perf_counter()
            pipeline = prepared.make_pipeline(random_state=seed, **options)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pipeline.calibrate(prepared.model, _take(pool, order[:n_calibrate], k))
                served = pipeline(prepared.model, fresh)
            agreement = float(_agreement(served, original, tolerance).mean())
            plan = pipeline.plan_
            run = CoverageRun(
                workload=name,
                duplicated=k > 1,
                seed=seed,
                cascade=bool(plan.cascade),
                lower_bound=float(plan.lower_bound),
                holdout_rows=int(plan.holdout_rows),
                duplicate_rows=int(getattr(plan, "duplicate_rows", 0)),
                fresh_rows=len(fresh),
                fresh_agreement=agreement,
                below_target=agreement < accuracy_target,
                seconds=time.perf_counter() - started,
                reason=plan.reason[:160],
            )
            runs.append(run)
            print(
                f"{name} copies={k} seed={seed}: cascade={run.cascade} bound={run.lower_bound:.4f} "
                f"fresh agreement={agreement:.4f} ({run.seconds:.1f} s)",
                file=log,
                flush=True,
            )
    return runs


def summarize(runs: list[CoverageRun], accuracy_target: float, confidence: float) -> str:
    """One line per workload and setting: runs, cascades served, runs below target."""
    lines = [
        f"accuracy_target={accuracy_target}, confidence={confidence}: a run counts as below target "
        f"when its served pipeline agreed with the original on < {accuracy_target} of fresh rows; "
        f"the guarantee allows at most {1 - confidence:.0%} of runs.",
        "",
        f"{'workload':<13} {'calibration rows':<17} {'runs':>5} {'cascades':>9} {'below':>6} "
        f"{'fraction':>9} {'allowed':>8} {'median agr.':>12} {'lowest agr.':>12}",
    ]
    keys = sorted({(r.workload, r.duplicated) for r in runs})
    for workload, duplicated in keys:
        group = [r for r in runs if r.workload == workload and r.duplicated == duplicated]
        below = sum(r.below_target for r in group)
        served = [r.fresh_agreement for r in group if r.cascade]
        lines.append(
            f"{workload:<13} {'4x duplicated' if duplicated else 'as drawn':<17} {len(group):>5} "
            f"{len(served):>9} {below:>6} {below / len(group):>9.3f} {1 - confidence:>8.3f} "
            f"{np.median(served) if served else float('nan'):>12.4f} "
            f"{min(served) if served else float('nan'):>12.4f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.coverage", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--seeds", type=int, default=None, help=f"seeds per setting (default {DEFAULT_SEEDS})"
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SEEDS} seeds per setting")
    parser.add_argument("--workloads", nargs="+", default=["toxic", "credit"], choices=WORKLOADS)
    parser.add_argument("--accuracy-target", type=float, default=0.97)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--json", help="also write every run to this JSON file")
    args = parser.parse_args(argv)
    seeds = args.seeds if args.seeds is not None else (QUICK_SEEDS if args.quick else DEFAULT_SEEDS)
    runs: list[CoverageRun] = []
    for name in args.workloads:
        runs += run_workload(name, seeds, args.accuracy_target, args.confidence)
    print(f"Coverage study: {seeds} seeds per workload and setting, workloads {', '.join(args.workloads)}.")
    print(summarize(runs, args.accuracy_target, args.confidence))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([asdict(r) for r in runs], fh, indent=1)
    failed = [
        (w, d)
        for w, d in {(r.workload, r.duplicated) for r in runs}
        if np.mean([r.below_target for r in runs if (r.workload, r.duplicated) == (w, d)])
        > 1 - args.confidence
    ]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
