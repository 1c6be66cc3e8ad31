"""How long compiling a fitted object will take, and whether calibration can afford it now.

Compiling a tree ensemble costs time in proportion to its split nodes (LLVM optimising the
generated nested ``if``s); every other lowering compiles in about a second. ``compile=True``
gives calibration a time budget (:data:`DEFAULT_BUDGET_SECONDS`): an object whose estimated
compile time fits in what is left of it is compiled during calibration; a larger one is
*deferred*: calibration serves the verified kernels it has, and the pipeline compiles the rest in
the background afterwards (see :mod:`willow.compiler.background`). ``compile="eager"`` (or its
old name ``"all"``) has no budget.

The estimate is ``split nodes / rate``. The rate is measured: every tree ensemble compiled on
this machine records its split nodes and wall seconds in ``compile_rates.json`` in the kernel
cache. A first-time compile of at least :data:`MIN_RATE_NODES` split nodes adds its rate to the
record (smaller ones are dominated by fixed costs, such as Numba's first compile in a process,
and would understate the rate); an ensemble never compiled here is estimated at the median of
those rates (:data:`DEFAULT_NODES_PER_SECOND` before any). An ensemble compiled here before
(same content fingerprint) has its kernels in the disk cache: it is estimated at its last
measured load, or at :data:`WARM_FRACTION` of its one cold compile until a load was measured.
The file lives in the kernel cache, so clearing the cache forgets the rates with the kernels.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_BUDGET_SECONDS",
    "DEFAULT_NODES_PER_SECOND",
    "CompileBudget",
    "budget_for",
    "budget_refusal",
    "calibration_budget",
    "current_budget",
    "estimate_seconds",
    "timed_lower",
]

DEFAULT_BUDGET_SECONDS = 10.0
"""Seconds of estimated compilation ``compile=True`` spends during calibration; the rest is
compiled in the background after calibration returns."""

DEFAULT_NODES_PER_SECOND = 1000.0
"""Cold compile rate (split nodes per wall second) assumed before any was measured: the rate on
the project's 2-core development machine, rounded down (500 trees x 63 leaves, 31,000 nodes,
about 28 s cold)."""

MIN_RATE_NODES = 5_000
"""Smallest first-time compile whose rate is recorded."""

WARM_FRACTION = 0.2
"""A cached ensemble's load time as a fraction of its cold compile (28 s cold, about 6 s warm for
500 trees x 63 leaves on the development machine)."""

_RATES_FILE = "compile_rates.json"
_LOCK = threading.Lock()


def _rates_path() -> Path:
    from willow.compiler.backend import kernel_cache_dir

    return kernel_cache_dir() / _RATES_FILE


def _read_rates() -> dict[str, Any]:
    try:
        data = json.loads(_rates_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"models": {}, "cold": []}
    if not isinstance(data, dict):
        return {"models": {}, "cold": []}
    data.setdefault("models", {})
    data.setdefault("cold", [])
    return data


def _is_tree(obj: Any) -> bool:
    from willow.compiler.lowering.trees import TREE_LOWERINGS

    return type(obj) in TREE_LOWERINGS


def _fingerprint(obj: Any) -> str:
    from willow.fingerprints import fingerprint

    return fingerprint(obj)


def cold_rate() -> float:
    """Split nodes compiled per wall second on this machine: the median of the first-time
    compiles recorded in the kernel cache, or :data:`DEFAULT_NODES_PER_SECOND`."""
    cold = [float(r) for r in _read_rates()["cold"] if float(r) > 0]
    return statistics.median(cold) if cold else DEFAULT_NODES_PER_SECOND


def estimate_seconds(obj: Any) -> float:
    """Estimated wall seconds to compile ``obj`` here (0 for anything but a tree ensemble)."""
    if not _is_tree(obj):
        return 0.0
    from willow.compiler.lowering.trees import split_nodes

    known = _read_rates()["models"].get(_fingerprint(obj))
    if known is not None:
        seconds = float(known["seconds"])
        return seconds if known.get("loads", 1) > 1 else seconds * WARM_FRACTION
    return split_nodes(obj) / cold_rate()


def _record(obj: Any, seconds: float) -> None:
    """Remember how long compiling ``obj`` took (and, the first time, the rate it ran at)."""
    from willow.compiler.lowering.trees import split_nodes

    nodes = split_nodes(obj)
    key = _fingerprint(obj)
    with _LOCK:
        data = _read_rates()
        known = data["models"].pop(key, None)
        if known is None and seconds > 0 and nodes >= MIN_RATE_NODES:
            data["cold"] = ([*data["cold"], nodes / seconds])[-20:]
        loads = 1 if known is None else int(known.get("loads", 1)) + 1
        data["models"][key] = {"nodes": nodes, "seconds": round(seconds, 3), "loads": loads}
        if len(data["models"]) > 500:  # keep the file small: drop the oldest entries
            data["models"] = dict(list(data["models"].items())[-500:])
        path = _rates_path()
        tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
        try:
            tmp.write_text(json.dumps(data), encoding="utf-8")
            tmp.replace(path)
        except OSError:  # a read-only cache only loses the measurement
            pass


def timed_lower(lower: Callable[[Any, str], Any], obj: Any, method: str) -> Any:
    """``lower(obj, method)``, recording the compile time of a tree ensemble for later estimates."""
    if not _is_tree(obj):
        return lower(obj, method)
    start = time.perf_counter()
    operator = lower(obj, method)
    _record(obj, time.perf_counter() - start)
    return operator


class CompileBudget:
    """What is left of calibration's compile-time budget (``None`` seconds: no limit)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.remaining = seconds
        self.deferred: list[str] = []  # type names of what was deferred, for the caller

    def __repr__(self) -> str:
        return f"CompileBudget(seconds={self.seconds}, remaining={self.remaining})"

    def refusal(self, obj: Any) -> str | None:
        """Why ``obj`` is deferred to the background (its estimate exceeds what is left), or
        ``None`` after charging its estimate to the budget."""
        if self.remaining is None:
            return None
        estimate = estimate_seconds(obj)
        if estimate <= self.remaining:
            self.remaining -= estimate
            return None
        self.deferred.append(type(obj).__name__)
        return (
            f"deferred: compiling {type(obj).__name__} is estimated at {estimate:.1f} s "
            f"({_nodes_text(obj)}, {cold_rate():.0f} split nodes/s measured here), more than the "
            f"{self.remaining:.1f} s left of compile=True's calibration budget "
            f"({self.seconds:.0f} s); it is compiled in the background after calibration "
            "(pipeline.wait_compiled() waits for it; compile='eager' compiles it during calibration)"
        )


def _nodes_text(obj: Any) -> str:
    from willow.compiler.lowering.trees import split_nodes

    return f"{split_nodes(obj):,} split nodes"


def budget_for(compile_option: bool | str) -> CompileBudget:
    """The budget of a calibration run: :data:`DEFAULT_BUDGET_SECONDS` for ``compile=True``, none
    for ``"eager"``/``"all"``."""
    if compile_option in ("eager", "all"):
        return CompileBudget(None)
    return CompileBudget(DEFAULT_BUDGET_SECONDS)


_CURRENT: contextvars.ContextVar[CompileBudget | None] = contextvars.ContextVar(
    "willow_compile_budget", default=None
)


@contextlib.contextmanager
def calibration_budget(compile_option: bool | str) -> Iterator[CompileBudget]:
    """One budget shared by everything a calibration run compiles (the pipeline's statements, the
    model, the approximate model); :func:`current_budget` returns it inside the block, and its
    ``deferred`` says afterwards whether a background compilation is needed."""
    budget = budget_for(compile_option)
    token = _CURRENT.set(budget)
    try:
        yield budget
    finally:
        _CURRENT.reset(token)


def current_budget(compile_option: bool | str) -> CompileBudget:
    """The budget of the calibration run in progress, or a fresh one for ``compile_option``."""
    budget = _CURRENT.get()
    return budget if budget is not None else budget_for(compile_option)


def budget_refusal(obj: Any, budget: CompileBudget | None) -> str | None:
    """Why compiling ``obj`` is deferred past calibration under ``budget``, or ``None``
    (``budget=None``: no limit)."""
    return None if budget is None else budget.refusal(obj)
