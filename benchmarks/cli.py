"""``python -m benchmarks [WORKLOAD ...] [--quick] [--accuracy-target X] [--out DIR]``."""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import willow
from benchmarks.data import data_available, data_dir
from benchmarks.feature_tables import TABLE_MODES, check_mode
from benchmarks.plots import plot_all
from benchmarks.report import terminal_table, write_json, write_markdown
from benchmarks.run import DEFAULT_TARGETS, RunConfig, run_workload
from benchmarks.variants import optimize_accepts, supports_top_k

WORKLOADS = ("toxic", "product", "music", "credit", "price")
# scale -> (batch repeats, repeats per trade-off point, least seconds per timed sample)
REPEATS = {"smoke": (2, 1, 0.0), "quick": (5, 3, 0.1), "full": (9, 5, 0.25)}


def load_workload(name: str):
    """The workload module ``benchmarks.<name>``."""
    if name not in WORKLOADS:
        raise SystemExit(f"Unknown workload {name!r}; choose from {', '.join(WORKLOADS)}.")
    return importlib.import_module(f"benchmarks.{name}")


def run(
    workloads: list[str],
    scale: str,
    accuracy_target: float,
    targets: tuple[float, ...] = DEFAULT_TARGETS,
    repeats: int | None = None,
    progress: bool = True,
    tables: str = "pandas",
) -> dict[str, Any]:
    """Run ``workloads`` and return the results dict (what ``results.json`` holds)."""
    batch_repeats, tradeoff_repeats, min_seconds = REPEATS[scale]
    config = RunConfig(
        scale=scale,
        accuracy_target=accuracy_target,
        targets=tuple(sorted(set(targets) | {accuracy_target})),
        repeats=repeats or batch_repeats,
        tradeoff_repeats=tradeoff_repeats,
        min_seconds=min_seconds,
        progress=progress,
        tables=tables,
    )
    start = time.perf_counter()
    results: dict[str, Any] = {
        "willow_version": willow.__version__,
        "created": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "scale": scale,
        "tables": tables,
        "accuracy_target": accuracy_target,
        "confidence": config.base_options["confidence"],
        "willow_options": {k: list(v) if isinstance(v, tuple) else v for k, v in config.base_options.items()},
        "targets": list(config.targets),
        "repeats": config.repeats,
        "min_seconds_per_sample": config.min_seconds,
        "capabilities": {"compile": optimize_accepts("compile"), "top_k": supports_top_k()},
        "data_dir": str(data_dir()),
        "workloads": [],
    }
    for name in workloads:
        module = load_workload(name)
        try:
            results["workloads"].append(run_workload(module, config))
        except Exception as exc:  # noqa: BLE001 - one broken workload must not hide the others
            results["workloads"].append({"name": name, "error": f"{type(exc).__name__}: {exc}"})
    results["wall_seconds"] = time.perf_counter() - start
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure willow's variants side by side on Willump-style workloads over real data.",
    )
    parser.add_argument(
        "workloads", nargs="*", metavar="WORKLOAD", help=f"any of {', '.join(WORKLOADS)} (default: all)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="small slices and few repeats (under 5 minutes on 2 cores)"
    )
    parser.add_argument(
        "--scale", choices=sorted(REPEATS), help="data slice sizes: smoke, quick or full (default full)"
    )
    parser.add_argument(
        "--accuracy-target", type=float, default=0.99, help="target of the main variants (default 0.99)"
    )
    parser.add_argument(
        "--targets",
        type=float,
        nargs="+",
        default=list(DEFAULT_TARGETS),
        help="accuracy targets of the trade-off curve",
    )
    parser.add_argument("--repeats", type=int, help="timed batch repeats (median reported)")
    parser.add_argument(
        "--tables",
        choices=TABLE_MODES,
        default="pandas",
        help="music's lookups: pandas reindex/merge (default), willow.tables MemoryTables, or "
        "RedisTables in a local redis-server the benchmark starts and stops",
    )
    parser.add_argument("--out", type=Path, default=Path("results"), help="results folder (default results/)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--dask",
        type=int,
        nargs="+",
        metavar="N",
        help="instead of the variants: rows/s of the calibrated pipeline over a dask DataFrame on a "
        "LocalCluster of N single-threaded workers, next to one process (needs willow[dask])",
    )
    parser.add_argument(
        "--dask-rows", type=int, default=200_000, help="rows scored in --dask mode (test split tiled)"
    )
    args = parser.parse_args(argv)
    for value in [args.accuracy_target, *args.targets]:
        if not 0.0 < value <= 1.0:
            parser.error(f"accuracy targets must be in (0, 1], got {value}.")
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}.")

    scale = args.scale or ("quick" if args.quick else "full")
    workloads = list(dict.fromkeys(args.workloads)) or list(WORKLOADS)
    missing = [f for name in workloads for f in load_workload(name).FILES if not data_available(f)]
    if missing:
        print(
            f"No {', '.join(missing)} in {data_dir()}: the repository ships the data in data/ "
            "(restore it with `git checkout -- data`), or set WILLOW_DATA_DIR to a folder holding it.",
            file=sys.stderr,
        )
        return 2
    if args.tables != "pandas":
        other = [name for name in workloads if not hasattr(load_workload(name), "make_table_pipeline")]
        if other:
            parser.error(
                f"--tables {args.tables} applies to music only (not {', '.join(other)}): run "
                f"`python -m benchmarks music --tables {args.tables}`."
            )
        problem = check_mode(args.tables)
        if problem:
            parser.error(problem)
    if args.dask:
        if args.tables != "pandas":
            parser.error(
                "--dask measures the pandas pipelines only; drop --tables, or run --tables without --dask."
            )
        return _scaleout(args, workloads, scale)
    results = run(
        workloads,
        scale,
        args.accuracy_target,
        tuple(args.targets),
        args.repeats,
        not args.no_progress,
        args.tables,
    )

    args.out.mkdir(parents=True, exist_ok=True)
    results["plots"] = [] if args.no_plots else [str(p) for p in plot_all(results, args.out)]
    write_json(results, args.out / "results.json")
    write_markdown(results, args.out / "results.md")
    print()
    print(terminal_table(results))
    for workload in results["workloads"]:
        tables = workload.get("feature_tables", {})
        if tables.get("mode", "pandas") != "pandas":
            print(
                f"{workload['name']}: lookups served by {tables['where']} (loaded in "
                f"{tables['load_seconds']:.2f} s; test output identical to the pandas pipeline)."
            )
    print(
        f"\nWrote {args.out / 'results.json'}, {args.out / 'results.md'}"
        + "".join(f", {p}" for p in results["plots"])
        + f" ({results['wall_seconds']:.0f} s)."
    )
    return 1 if any("error" in w for w in results["workloads"]) else 0


def _scaleout(args: argparse.Namespace, workloads: list[str], scale: str) -> int:
    """``--dask N ...``: the scale-out measurement (see :mod:`benchmarks.scaleout`)."""
    import json

    from benchmarks.scaleout import run_scaleout, scaleout_table

    if min(args.dask) < 1 or args.dask_rows < 1:
        raise SystemExit("--dask worker counts and --dask-rows must be at least 1.")
    results = [
        run_scaleout(
            load_workload(name),
            args.dask,
            args.dask_rows,
            scale,
            args.accuracy_target,
            dict(RunConfig().base_options),
            args.repeats or 3,
        )
        for name in workloads
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dask.json").write_text(json.dumps(results, indent=2))
    table = scaleout_table(results)
    (args.out / "dask.md").write_text(table + "\n")
    print(table)
    print(f"\nWrote {args.out / 'dask.json'} and {args.out / 'dask.md'}.")
    return 0 if all(d["identical"] for r in results for d in r["dask"]) else 1
