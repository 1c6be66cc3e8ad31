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
    python -m benchmarks.coverage --summary           # the table of what the results file holds

Every run is appended to a results file as one JSON line the moment it ends
(``results/coverage.jsonl`` by default, ``--results``), and runs already in it (same workload,
setting, seed, target, confidence and scale) are skipped: an interrupted study keeps its per-seed
rows and continues where it stopped when started again. Seeds are the outer loop and workloads
the inner one, so a partial run has about as many seeds of every listed workload and setting.
The table is made from the whole results file (the runs of this target, confidence and scale),
with the calibration size (rows passed to ``calibrate()``; holdout inputs), the number of runs
that served a cascade (a refused cascade serves the original, so it cannot fall below the
target: it is counted apart, never as a failure) and the median wall time of one calibration.

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
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["CoverageRun", "Study", "run_workload", "run_study", "read_results", "summarize", "main"]

WORKLOADS = ("toxic", "credit", "product", "price", "product-proba")
#: Workloads whose pipeline returns numbers: (benchmark module, ``tolerance=`` they are cascaded with).
TOLERANCES: dict[str, tuple[str, float]] = {
    "price": ("price", 50_000.0),
    "product-proba": ("product", 0.05),
}
DEFAULT_SEEDS = 50
QUICK_SEEDS = 10
CALIBRATION_FRACTION = 0.7  # of the pooled calibration + test rows; the rest are fresh rows
DEFAULT_RESULTS = Path("results") / "coverage.jsonl"


@dataclass(frozen=True)
class CoverageRun:
    """One reseeded calibration and what its served pipeline did on fresh rows.

    ``seconds`` is the whole run (calibration and serving the fresh rows); ``calibration_seconds``
    the ``calibrate()`` call alone; ``calibration_rows`` the rows passed to it (copies included).
    """

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
    accuracy_target: float = 0.97
    confidence: float = 0.95
    scale: str = "quick"
    copies: int = 1
    calibration_rows: int = 0
    calibration_seconds: float = 0.0

    def key(self) -> tuple:
        """What makes two runs the same run (the results file holds each once)."""
        return _key(self.workload, self.copies, self.seed, self.accuracy_target, self.confidence, self.scale)


def _key(workload: str, copies: int, seed: int, target: float, confidence: float, scale: str) -> tuple:
    return (workload, int(copies), int(seed), round(float(target), 6), round(float(confidence), 6), scale)


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


class Study:
    """One workload prepared for reseeded calibrations (the model is trained once)."""

    def __init__(
        self, name: str, accuracy_target: float = 0.97, confidence: float = 0.95, scale: str = "quick"
    ) -> None:
        self.name, self.scale = name, scale
        self.accuracy_target, self.confidence = accuracy_target, confidence
        module_name, self.tolerance = TOLERANCES.get(name, (name, None))
        module = importlib.import_module(f"benchmarks.{module_name}")
        self.prepared = prepared = module.prepare(scale)
        self.pool = _pool(prepared)
        self.n_calibrate = int(CALIBRATION_FRACTION * len(self.pool))
        self.options = {
            **prepared.optimize_options,
            "accuracy_target": accuracy_target,
            "confidence": confidence,
            "compile": False,
            "require_faster": False,
            "cost_repeats": 1,
            "importance_repeats": 1,
        }
        if self.tolerance is not None:
            self.options["tolerance"] = self.tolerance
            if prepared.task == "regression":  # its small regressor (see the module doc)
                self.options.update(prepared.topk_options)

    def run(self, seed: int, copies: Iterable[int] = (1, 4), log: Any = None) -> list[CoverageRun]:
        """Calibrate on seed ``seed``'s sample repeated ``k`` times for each ``k`` in ``copies``."""
        prepared = self.prepared
        order = np.random.default_rng(10_000 + seed).permutation(len(self.pool))
        fresh = _take(self.pool, order[self.n_calibrate :])
        original = prepared.original()(prepared.model, fresh)
        runs = []
        for k in copies:
            started = time.perf_counter()
            pipeline = prepared.make_pipeline(random_state=seed, **self.options)
            sample = _take(self.pool, order[: self.n_calibrate], k)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pipeline.calibrate(prepared.model, sample)
                calibrated = time.perf_counter()
                served = pipeline(prepared.model, fresh)
            agreement = float(_agreement(served, original, self.tolerance).mean())
            plan = pipeline.plan_
            run = CoverageRun(
                workload=self.name,
                duplicated=k > 1,
                seed=seed,
                cascade=bool(plan.cascade),
                lower_bound=float(plan.lower_bound),
                holdout_rows=int(plan.holdout_rows),
                duplicate_rows=int(getattr(plan, "duplicate_rows", 0)),
                fresh_rows=len(fresh),
                fresh_agreement=agreement,
                below_target=agreement < self.accuracy_target,
                seconds=time.perf_counter() - started,
                reason=plan.reason[:160],
                accuracy_target=self.accuracy_target,
                confidence=self.confidence,
                scale=self.scale,
                copies=k,
                calibration_rows=len(sample),
                calibration_seconds=calibrated - started,
            )
            runs.append(run)
            if log is not None:
                print(
                    f"{self.name} copies={k} seed={seed}: cascade={run.cascade} bound={run.lower_bound:.4f} "
                    f"fresh agreement={agreement:.4f} ({run.calibration_seconds:.1f} s calibration, "
                    f"{run.seconds:.1f} s in all)",
                    file=log,
                    flush=True,
                )
        return runs


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
    study = Study(name, accuracy_target, confidence, scale)
    return [run for seed in range(seeds) for run in study.run(seed, copies, log)]


def read_results(path: str | Path) -> list[CoverageRun]:
    """The runs a results file holds (one JSON object a line; a line cut short by an interrupted
    write is skipped; a run present twice counts once, the last)."""
    path = Path(path)
    if not path.exists():
        return []
    names = {f.name for f in fields(CoverageRun)}
    runs: dict[tuple, CoverageRun] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict):
            continue
        record = {k: v for k, v in record.items() if k in names}
        record.setdefault("copies", 4 if record.get("duplicated") else 1)
        try:
            run = CoverageRun(**record)
        except TypeError:
            continue
        runs[run.key()] = run
    return list(runs.values())


def run_study(
    names: Iterable[str],
    seeds: int,
    accuracy_target: float = 0.97,
    confidence: float = 0.95,
    copies: tuple[int, ...] = (1, 4),
    scale: str = "quick",
    results: str | Path = DEFAULT_RESULTS,
    log: Any = sys.stderr,
) -> list[CoverageRun]:
    """Run the seeds of every workload not yet in ``results``, appending each run as it ends.

    Seeds are the outer loop, so an interrupted study has about as many seeds of every workload
    and setting; a workload is prepared (its model trained or loaded) only if it has runs to do.
    Returns the runs done now.
    """
    names = list(names)
    path = Path(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = {run.key() for run in read_results(path)}
    studies: dict[str, Study] = {}
    new: list[CoverageRun] = []
    for seed in range(seeds):
        for name in names:
            todo = [k for k in copies if _key(name, k, seed, accuracy_target, confidence, scale) not in done]
            if not todo:
                continue
            if name not in studies:
                studies[name] = Study(name, accuracy_target, confidence, scale)
            for run in studies[name].run(seed, todo, log):
                with path.open("a") as fh:
                    fh.write(json.dumps(asdict(run)) + "\n")
                done.add(run.key())
                new.append(run)
    return new


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def summarize(runs: list[CoverageRun], accuracy_target: float, confidence: float) -> str:
    """One line per workload and setting: runs, cascades served, runs below target, agreement,
    calibration size and time."""
    lines = [
        f"accuracy_target={accuracy_target}, confidence={confidence}: a run counts as below target "
        f"when its served pipeline agreed with the original on < {accuracy_target} of fresh rows; "
        f"the guarantee allows at most {1 - confidence:.0%} of runs. A run that served no cascade "
        "serves the original (agreement 1) and is counted in runs, not in cascades.",
        "",
        f"{'workload':<13} {'calibration rows':<17} {'runs':>5} {'cascades':>9} {'below':>6} "
        f"{'fraction':>9} {'allowed':>8} {'median agr.':>12} {'lowest agr.':>12} "
        f"{'cal. rows':>10} {'holdout':>8} {'fresh':>6} {'s/calib.':>9}",
    ]
    keys = sorted({(r.workload, r.duplicated) for r in runs})
    for workload, duplicated in keys:
        group = [r for r in runs if r.workload == workload and r.duplicated == duplicated]
        below = sum(r.below_target for r in group)
        served = [r.fresh_agreement for r in group if r.cascade]
        lines.append(
            f"{workload:<13} {'4x duplicated' if duplicated else 'as drawn':<17} {len(group):>5} "
            f"{len(served):>9} {below:>6} {below / len(group):>9.3f} {1 - confidence:>8.3f} "
            f"{_median(served):>12.4f} {min(served) if served else float('nan'):>12.4f} "
            f"{int(_median([r.calibration_rows for r in group])):>10} "
            f"{int(_median([r.holdout_rows for r in group])):>8} "
            f"{int(_median([r.fresh_rows for r in group])):>6} "
            f"{_median([r.calibration_seconds or r.seconds for r in group]):>9.1f}"
        )
    return "\n".join(lines)


def refusals(runs: list[CoverageRun]) -> list[str]:
    """Why the runs that served no cascade refused one (first words of each plan's reason)."""
    return [
        f"{r.workload} {'4x duplicated' if r.duplicated else 'as drawn'} seed {r.seed}: {r.reason}"
        for r in sorted(runs, key=lambda r: (r.workload, r.copies, r.seed))
        if not r.cascade
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.coverage", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--seeds", type=int, default=None, help=f"seeds per setting (default {DEFAULT_SEEDS})"
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SEEDS} seeds per setting")
    parser.add_argument("--workloads", nargs="+", default=["toxic", "credit"], choices=WORKLOADS)
    parser.add_argument("--accuracy-target", type=float, default=0.97)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--scale", default="quick", choices=("smoke", "quick", "full"))
    parser.add_argument(
        "--results",
        default=str(DEFAULT_RESULTS),
        help=f"append every run to this JSON-lines file and skip runs it holds (default {DEFAULT_RESULTS})",
    )
    parser.add_argument(
        "--summary", action="store_true", help="run nothing: print the table of the results file"
    )
    parser.add_argument("--json", help="also write the table's runs to this JSON file")
    args = parser.parse_args(argv)
    seeds = args.seeds if args.seeds is not None else (QUICK_SEEDS if args.quick else DEFAULT_SEEDS)
    if not args.summary:
        run_study(
            args.workloads,
            seeds,
            args.accuracy_target,
            args.confidence,
            scale=args.scale,
            results=args.results,
        )
    wanted = _key("", 1, 0, args.accuracy_target, args.confidence, args.scale)[3:]
    runs = [
        r
        for r in read_results(args.results)
        if r.workload in args.workloads and r.key()[3:] == wanted and (args.summary or r.seed < seeds)
    ]
    if not runs:
        print(f"No runs of {', '.join(args.workloads)} in {args.results} at these settings.")
        return 0
    print(
        f"Coverage study ({args.results}), scale {args.scale}, compile=False, require_faster=False; "
        f"calibration sample {CALIBRATION_FRACTION:.0%} of each workload's pooled calibration + test "
        "rows, the rest fresh rows."
    )
    print(summarize(runs, args.accuracy_target, args.confidence))
    refused = refusals(runs)
    if refused:
        print(f"\n{len(refused)} runs served no cascade:")
        print("\n".join(refused))
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
