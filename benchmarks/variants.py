"""The variants a workload is measured in, and how each one is built from ``willow.optimize``.

Features still being built elsewhere are detected, not assumed: the compiled variants exist when
``willow.optimize`` accepts ``compile=``, and the top-K variant when an optimized pipeline has a
``top_k`` method. A variant whose feature is missing is reported as "n/a" with the reason.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import willow

__all__ = ["Variant", "VARIANTS", "optimize_accepts", "supports_top_k", "unavailable", "optimize_options"]


@dataclass(frozen=True)
class Variant:
    """One way of serving a workload's pipeline."""

    name: str
    description: str
    cascades: bool = False
    compiled: bool = False
    top_k: bool = False
    optimized: bool = True


VARIANTS: tuple[Variant, ...] = (
    Variant("original", "the undecorated function", optimized=False),
    Variant("compiled", "willow.optimize(compile=True), no cascade", compiled=True),
    Variant("cascades", "willow.optimize(compile=False): a proven cascade", cascades=True),
    Variant(
        "cascades+compiled",
        "willow.optimize(compile=True): a proven, compiled cascade",
        cascades=True,
        compiled=True,
    ),
    Variant(
        "top-k",
        'willow.optimize(query="topk", k=K): the K best rows via a tuned filter',
        cascades=True,
        top_k=True,
    ),
)


def optimize_accepts(parameter: str) -> bool:
    """Whether ``willow.optimize`` has a keyword parameter called ``parameter``."""
    return parameter in inspect.signature(willow.optimize).parameters


def supports_top_k() -> bool:
    """Whether optimized pipelines answer top-K queries (``pipeline.top_k``)."""
    return hasattr(willow.OptimizedPipeline, "top_k")


def unavailable(variant: Variant, workload_top_k: int | None) -> str | None:
    """Why ``variant`` cannot run in this checkout (``None`` when it can)."""
    if variant.compiled and not optimize_accepts("compile"):
        return "n/a: willow.optimize has no compile= parameter yet (compiler pending)"
    if variant.top_k:
        if workload_top_k is None:
            return "-: no top-K query for this workload"
        if not supports_top_k():
            return "n/a: OptimizedPipeline has no top_k() yet (top-K pending)"
    return None


def optimize_options(variant: Variant, accuracy_target: float, base: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments to ``willow.optimize`` for ``variant``.

    A compiled variant without cascades asks for ``cascade=False`` where that exists and otherwise
    for ``accuracy_target=1.0``, which no finite sample can prove, so no cascade is planned and
    only compilation changes the function.
    """
    options = dict(base, accuracy_target=accuracy_target)
    if optimize_accepts("compile"):
        options["compile"] = variant.compiled
    if not variant.cascades:
        if optimize_accepts("cascade"):
            options["cascade"] = False
        else:
            options["accuracy_target"] = 1.0
    return options
