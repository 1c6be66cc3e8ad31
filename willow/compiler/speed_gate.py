"""Serve an optimized function only when it measured faster than the original beyond timing noise.

Both functions run on the same held-out rows, alternately (original, optimized, original, ...),
``repeats`` times after one warm-up each, so a change in machine load hits both alike. The
optimized function is served only when its *slower* timings beat the original's *faster* ones:
the upper quartile (75th percentile) of its samples must be below the lower quartile (25th
percentile) of the original's. The margin is therefore set by the measured spread itself: a noisy
machine widens both quartile ranges and demands a larger speedup; a quiet one accepts a small but
real one. Ties and overlapping ranges serve the original.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["SpeedVerdict", "interleaved_samples", "faster_beyond_noise", "GATE_REPEATS"]

GATE_REPEATS = 7
"""Timed runs of each function for the gate (the calibration's ``cost_repeats`` when larger)."""

SLOW_QUANTILE = 0.75
FAST_QUANTILE = 0.25


def interleaved_samples(fns: Sequence[Callable[[], Any]], repeats: int) -> list[list[float]]:
    """Every timed run of each of ``fns`` (seconds), run in turn ``repeats`` times after one
    warm-up run each."""
    for fn in fns:
        fn()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            samples[k].append(time.perf_counter() - start)
    return samples


@dataclass(frozen=True)
class SpeedVerdict:
    """The gate's decision and the figures behind it (seconds per call on the held-out rows)."""

    faster: bool
    original_median: float
    optimized_median: float
    original_fast: float  # FAST_QUANTILE of the original's samples
    optimized_slow: float  # SLOW_QUANTILE of the optimized samples
    repeats: int

    @property
    def speedup(self) -> float:
        """Median original time over median optimized time."""
        return self.original_median / self.optimized_median if self.optimized_median > 0 else float("inf")

    def describe(self) -> str:
        """One sentence for ``explain()``."""
        relation = "below" if self.faster else "not below"
        return (
            f"over {self.repeats} interleaved timings on the holdout rows it took "
            f"{self.optimized_median * 1e3:.2f} ms (median; {SLOW_QUANTILE:.0%} quantile "
            f"{self.optimized_slow * 1e3:.2f} ms) against the original's {self.original_median * 1e3:.2f} ms "
            f"(median; {FAST_QUANTILE:.0%} quantile {self.original_fast * 1e3:.2f} ms): its slower "
            f"quantile is {relation} the original's faster one"
        )


def faster_beyond_noise(original: Sequence[float], optimized: Sequence[float]) -> SpeedVerdict:
    """Whether ``optimized``'s timings beat ``original``'s by more than their spread (see module)."""
    if not original or not optimized:
        raise ValueError("faster_beyond_noise needs at least one timing of each function.")
    first, second = np.asarray(original, dtype=float), np.asarray(optimized, dtype=float)
    original_fast = float(np.quantile(first, FAST_QUANTILE))
    optimized_slow = float(np.quantile(second, SLOW_QUANTILE))
    return SpeedVerdict(
        faster=optimized_slow < original_fast,
        original_median=float(np.median(first)),
        optimized_median=float(np.median(second)),
        original_fast=original_fast,
        optimized_slow=optimized_slow,
        repeats=min(len(first), len(second)),
    )
