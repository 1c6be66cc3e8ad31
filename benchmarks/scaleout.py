"""``python -m benchmarks WORKLOAD --dask N [N ...]``: the calibrated pipeline over a dask DataFrame.

Calibrates a workload's default pipeline (cascades + compiled), replicates its test split to
``--dask-rows`` rows (a test split of a few thousand rows is scored in milliseconds, less than
Dask's per-call scheduling), and measures rows/s of ``willow.dask.predict(...).compute()`` on a
``LocalCluster`` of N worker processes with one thread each (one Dask thread, and
``NUMBA_NUM_THREADS=1`` so compiled kernels do not fan out over the machine's cores) next to the
same pipeline called in this process, with Numba's default threads (all cores) and with one
thread (the per-core figure N workers should multiply). The input is persisted on the workers first (as data read by the cluster would
be); each timed call ships the pipeline and the model to the workers again, so the figures
include that. Outputs are checked against the single-process call.
"""

from __future__ import annotations

import pickle
import time
import warnings
from types import ModuleType
from typing import Any

import numba
import numpy as np
import pandas as pd

from benchmarks.run import _calibrate, _same
from benchmarks.variants import VARIANTS, optimize_options

__all__ = ["run_scaleout", "scaleout_table"]

VARIANT = next(v for v in VARIANTS if v.name == "cascades+compiled")
PARTITIONS_PER_WORKER = 4


def _frame(rows: Any, n: int) -> tuple[pd.DataFrame, str | None, Any]:
    """``n`` rows tiled from ``rows`` as a pandas frame, the ``columns=`` argument that passes
    them to the pipeline, and the same rows in the workload's own format (for the local call)."""
    positions = np.resize(np.arange(len(rows)), n)
    if isinstance(rows, pd.DataFrame):
        local = rows.iloc[positions].reset_index(drop=True)
        return local, None, local
    local = [rows[i] for i in positions]
    return pd.DataFrame({"rows": pd.Series(local, dtype=object)}), "rows", local


def _median_seconds(call: Any, repeats: int) -> tuple[float, Any]:
    times, output = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        output = call()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), output


def run_scaleout(
    module: ModuleType,
    workers: list[int],
    n_rows: int,
    scale: str,
    accuracy_target: float,
    base: dict[str, Any],
    repeats: int = 3,
) -> dict[str, Any]:
    """Single-process and ``LocalCluster`` throughput of one workload's calibrated pipeline."""
    import cloudpickle
    import dask.dataframe as dd
    from dask.distributed import Client, LocalCluster, wait

    import willow.dask

    prepared = module.prepare(scale)
    options = optimize_options(VARIANT, accuracy_target, {**base, **prepared.optimize_options})
    pipeline, calibration_seconds = _calibrate(prepared, options)
    frame, columns, local = _frame(prepared.test_rows, n_rows)
    model = prepared.model
    threads = numba.get_num_threads()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipeline(model, local)  # warm-up
        single, expected = _median_seconds(lambda: pipeline(model, local), repeats)
        numba.set_num_threads(1)
        try:
            single_thread, _ = _median_seconds(lambda: pipeline(model, local), repeats)
        finally:
            numba.set_num_threads(threads)
    blob = cloudpickle.dumps(pipeline)
    start = time.perf_counter()
    pickle.loads(blob)
    result: dict[str, Any] = {
        "name": prepared.name,
        "rows": n_rows,
        "test_rows": len(prepared.test_labels),
        "plan": "cascade" if pipeline.plan_.cascade else "no cascade",
        "calibration_seconds": calibration_seconds,
        "single_process_rows_per_s": n_rows / single,
        "single_process_threads": threads,
        "single_thread_rows_per_s": n_rows / single_thread,
        "pipeline_pickle_bytes": len(blob),
        "model_pickle_bytes": len(cloudpickle.dumps(model)),
        "unpickle_seconds": time.perf_counter() - start,
        "dask": [],
    }
    for n_workers in workers:
        npartitions = PARTITIONS_PER_WORKER * max(workers)
        with (
            LocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                env={"NUMBA_NUM_THREADS": "1"},
            ) as cluster,
            Client(cluster),
        ):
            with warnings.catch_warnings():  # the rows travel in the graph once, to be persisted
                warnings.filterwarnings("ignore", message=".*large graph", category=UserWarning)
                ddf = dd.from_pandas(frame, npartitions=npartitions).persist()
                wait(ddf)

            def call(ddf: Any = ddf) -> Any:
                return willow.dask.predict(pipeline, ddf, model, columns=columns).compute()

            start = time.perf_counter()
            call()  # ships the pipeline, builds kernels from the workers' cache
            first = time.perf_counter() - start
            seconds, output = _median_seconds(call, repeats)
        result["dask"].append(
            {
                "workers": n_workers,
                "partitions": npartitions,
                "rows_per_s": n_rows / seconds,
                "first_call_seconds": first,
                "identical": _same(prepared.task, output.to_numpy(), expected),
            }
        )
    return result


def scaleout_table(results: list[dict[str, Any]]) -> str:
    """The measured figures as a Markdown table."""
    lines = [
        "| workload | rows | one process, all cores | one process, 1 thread | dask workers x 1 thread | rows/s "
        "| vs 1 thread | vs all cores | first call s | identical |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for d in r["dask"]:
            lines.append(
                f"| {r['name']} | {r['rows']:,} | {r['single_process_rows_per_s']:,.0f} "
                f"({r['single_process_threads']} threads) | {r['single_thread_rows_per_s']:,.0f} | "
                f"{d['workers']} | {d['rows_per_s']:,.0f} | "
                f"{d['rows_per_s'] / r['single_thread_rows_per_s']:.2f}x | "
                f"{d['rows_per_s'] / r['single_process_rows_per_s']:.2f}x | "
                f"{d['first_call_seconds']:.2f} | {d['identical']} |"
            )
    sizes = ", ".join(
        f"{r['name']}: pipeline {r['pipeline_pickle_bytes'] / 1e6:.2f} MB, model "
        f"{r['model_pickle_bytes'] / 1e6:.2f} MB, unpickled in {r['unpickle_seconds']:.2f} s"
        for r in results
    )
    return "\n".join(lines) + f"\n\nShipped to each worker per call: {sizes}."
