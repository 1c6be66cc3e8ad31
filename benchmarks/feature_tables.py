"""``--tables {pandas,memory,redis}``: serve a workload's lookups from ``willow.tables`` tables.

``pandas`` (the default) leaves the workload as it is. ``memory`` builds a
:class:`~willow.tables.MemoryTable` per feature table; ``redis`` starts a throwaway local
``redis-server`` (free port, temporary directory, no persistence), loads every table into it as a
:class:`~willow.tables.RedisTable` and stops the server when the workload is done. Either way the
workload's ``make_table_pipeline`` (the same pipeline with ``table.lookup`` for every lookup)
replaces its pipeline, and its output on the test rows is checked to equal the pandas
pipeline's exactly, so the figures of the three modes are comparable.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from typing import Any

import numpy as np

from benchmarks.workload import Prepared
from willow.tables import LocalRedisServer, MemoryTable, RedisTable, redis_server_binary
from willow.tables.server import INSTALL_HINT

__all__ = ["TABLE_MODES", "serve_tables", "check_mode"]

TABLE_MODES = ("pandas", "memory", "redis")


def check_mode(mode: str) -> str | None:
    """Why ``mode`` cannot run on this machine (``None`` when it can)."""
    if mode != "redis":
        return None
    if redis_server_binary() is None:
        return f"--tables redis starts a local redis-server, which is not installed. {INSTALL_HINT}"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "--tables redis needs redis-py: pip install -e '.[tables]' (or pip install redis)."
    return None


@contextmanager
def serve_tables(prepared: Prepared, mode: str) -> Iterator[Prepared]:
    """``prepared`` with its lookups served by ``mode``'s tables, for the ``with`` block."""
    if mode == "pandas":
        yield prepared
        return
    if mode not in TABLE_MODES:
        raise ValueError(f"--tables must be one of {', '.join(TABLE_MODES)}; got {mode!r}.")
    if prepared.make_table_pipeline is None or prepared.feature_frames is None:
        raise ValueError(
            f"Workload {prepared.name!r} has no feature-table pipeline; --tables applies to music."
        )
    frames = prepared.feature_frames
    with ExitStack() as stack:
        start = time.perf_counter()
        if mode == "memory":
            tables: dict[str, Any] = {name: MemoryTable(frame) for name, frame in frames.items()}
            where = "in-process MemoryTables"
        else:
            server = stack.enter_context(LocalRedisServer())
            tables = {
                name: RedisTable.from_frame(frame, server.url, prefix=f"{prepared.name}:{name}")
                for name, frame in frames.items()
            }
            where = f"RedisTables in a local redis-server at {server.host}:{server.port}"
        load_seconds = time.perf_counter() - start
        served = replace(
            prepared,
            make_pipeline=lambda **options: prepared.make_table_pipeline(tables, **options),
            description=f"{prepared.description} [lookups: {where}]",
        )
        model, rows = prepared.model, prepared.test_rows
        if not np.array_equal(served.original()(model, rows), prepared.original()(model, rows)):
            raise AssertionError(f"{prepared.name}: the {mode} table pipeline differs from the pandas one.")
        served.details = {
            **prepared.details,
            "feature_tables": {
                "mode": mode,
                "where": where,
                "load_seconds": load_seconds,
                "tables": {name: list(frame.shape) for name, frame in frames.items()},
                "same_output_as_pandas": True,
            },
        }
        yield served
