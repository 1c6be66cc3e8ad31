"""Serve an optimized function only when it measured faster than the original beyond timing noise.

Both functions run on the same held-out rows in interleaved *pairs* (original then optimized, then
optimized then original, ...: the order alternates so that neither profits from running second),
``GATE_REPEATS`` pairs per round after one warm-up run each. The decision uses the per-pair time
ratio ``optimized / original``: the two runs of a pair are adjacent in time, so a change in machine
load hits both alike and cancels in their ratio, where it would widen the spread of each function's
timings taken on their own.

The rule is a one-sided sign test on those ratios. A pair is a *win* when its optimized run took
less than ``1 - GATE_MARGIN`` (95%) of the original run beside it. The optimized function is served
only when so many pairs win that a function whose median ratio is *not* below ``1 - GATE_MARGIN``
would have produced that many wins with probability at most ``GATE_ALPHA / GATE_ROUNDS`` (the
binomial tail at one half). The margin is therefore twofold: a fixed 5% the speedup must clear in a
typical pair, and the pair-to-pair noise itself, which sets how many pairs may fail that 5% (none of
7, at most 2 of 14, at most 5 of 21). A noisy machine makes more pairs fail and demands a larger or
steadier speedup; a quiet one accepts a small but consistent one.

When the median ratio says faster but the test is not yet significant, the gate takes another
round of pairs and tests all pairs so far, up to ``GATE_ROUNDS`` rounds (and no new round once the
timings have taken ``GATE_MAX_SECONDS``, so the extra time stays proportional to the calls' cost
and bounded). Each look tests at ``GATE_ALPHA / GATE_ROUNDS``, so over all looks a function no
faster than the margin is served with probability at most ``GATE_ALPHA``. A median ratio that does
not say faster refuses at once; a test still undecided after the last round refuses: the original
runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "GATE_ALPHA",
    "GATE_MARGIN",
    "GATE_MAX_SECONDS",
    "GATE_REPEATS",
    "GATE_ROUNDS",
    "SpeedVerdict",
    "allowed_losses",
    "faster_beyond_noise",
    "interleaved_samples",
    "measure_speed",
]

GATE_REPEATS = 7
"""Interleaved pairs per round (the calibration's ``cost_repeats`` when larger)."""

GATE_ROUNDS = 3
"""Most rounds of pairs the gate takes before it decides."""

GATE_MARGIN = 0.05
"""A pair is a win when its optimized run took less than ``1 - GATE_MARGIN`` of its original run."""

GATE_ALPHA = 0.05
"""Chance, over all rounds, of serving a function whose median per-pair ratio is not below the margin."""

GATE_MAX_SECONDS = 20.0
"""No further round starts once the gate's timings have taken this long (or would, by one more round)."""


def interleaved_samples(fns: Sequence[Callable[[], Any]], repeats: int) -> list[list[float]]:
    """Every timed run of each of ``fns`` (seconds), ``repeats`` runs each after one warm-up run
    each. The runs go in turn, the turn's first function rotating each repeat (A B, B A, A B...),
    so the ``k``-th samples of all functions were taken side by side."""
    for fn in fns:
        fn()
    samples: list[list[float]] = [[] for _ in fns]
    for repeat in range(repeats):
        for step in range(len(fns)):
            k = (step + repeat) % len(fns)
            start = time.perf_counter()
            fns[k]()
            samples[k].append(time.perf_counter() - start)
    return samples


def allowed_losses(pairs: int, alpha: float) -> int:
    """The most pairs that may fail the margin for the sign test to reject "not faster" at level
    ``alpha``: the largest ``j`` with ``P(Binomial(pairs, 1/2) <= j) <= alpha``; -1 when even a
    clean sweep is not significant (too few pairs)."""
    tail, allowed = 0.0, -1
    for j in range(pairs + 1):
        tail += math.comb(pairs, j) / 2.0**pairs
        if tail > alpha:
            break
        allowed = j
    return allowed


@dataclass(frozen=True)
class SpeedVerdict:
    """The gate's decision and the figures behind it (seconds per call on the held-out rows).

    ``decided`` is False when the median ratio says faster but the sign test is not yet
    significant: :func:`measure_speed` then takes another round (and ``faster`` is False).
    """

    faster: bool
    decided: bool
    original_median: float
    optimized_median: float
    ratio_median: float  # median of the per-pair ratios optimized / original
    wins: int  # pairs whose optimized run took less than 1 - margin of the original run
    needed: int  # wins the sign test needs (pairs + 1 when no count of wins suffices)
    pairs: int
    rounds: int = 1
    margin: float = GATE_MARGIN

    @property
    def speedup(self) -> float:
        """The original's time over the optimized time, per pair (the median pair)."""
        return 1.0 / self.ratio_median if self.ratio_median > 0 else float("inf")

    def describe(self) -> str:
        """One sentence for ``explain()``: the figures and the rule."""
        need = f"{self.needed} such pairs" if self.needed <= self.pairs else f"more than {self.pairs} pairs"
        rounds = f"{self.rounds} round{'s' if self.rounds != 1 else ''}"
        verdict = "faster beyond the timing noise" if self.faster else "not faster beyond the timing noise"
        if not self.faster and not self.decided:
            verdict += f" (still undecided after {rounds})"
        return (
            f"in {self.wins} of {self.pairs} interleaved pairs of timings on the holdout rows ({rounds}) "
            f"it ran at least {self.margin:.0%} faster than the original run beside it, and a sign test "
            f"needs {need} (median per-pair time ratio {self.ratio_median:.3f}, {self.speedup:.2f}x; "
            f"medians {self.optimized_median * 1e3:.2f} ms against the original's "
            f"{self.original_median * 1e3:.2f} ms): {verdict}"
        )


def faster_beyond_noise(
    original: Sequence[float],
    optimized: Sequence[float],
    *,
    rounds: int = 1,
    max_rounds: int = GATE_ROUNDS,
    margin: float = GATE_MARGIN,
    alpha: float = GATE_ALPHA,
) -> SpeedVerdict:
    """The gate's decision on paired timings: ``original[k]`` and ``optimized[k]`` were taken side
    by side (see the module docstring for the rule). ``rounds`` is how many rounds these samples
    came from, only reported; each look tests at ``alpha / max_rounds``."""
    if not original or not optimized:
        raise ValueError(
            f"faster_beyond_noise needs at least one timing of each function; got {len(original)} "
            f"original and {len(optimized)} optimized timings. Pass the lists interleaved_samples returns."
        )
    if len(original) != len(optimized):
        raise ValueError(
            f"faster_beyond_noise needs paired timings (one optimized run beside each original run); "
            f"got {len(original)} original and {len(optimized)} optimized timings. Pass the lists "
            "interleaved_samples returns."
        )
    first, second = np.asarray(original, dtype=float), np.asarray(optimized, dtype=float)
    ratios = second / np.maximum(first, np.finfo(float).tiny)
    pairs = len(ratios)
    wins = int((ratios < 1.0 - margin).sum())
    allowed = allowed_losses(pairs, alpha / max(1, max_rounds))
    needed = pairs - allowed if allowed >= 0 else pairs + 1
    ratio_median = float(np.median(ratios))
    faster = wins >= needed
    # undecided only while the median says faster (by the margin) and the test is not significant
    decided = faster or not ratio_median < 1.0 - margin
    return SpeedVerdict(
        faster=faster,
        decided=decided,
        original_median=float(np.median(first)),
        optimized_median=float(np.median(second)),
        ratio_median=ratio_median,
        wins=wins,
        needed=needed,
        pairs=pairs,
        rounds=rounds,
        margin=margin,
    )


def measure_speed(
    original: Callable[[], Any],
    optimized: Callable[[], Any],
    repeats: int = GATE_REPEATS,
    *,
    max_rounds: int = GATE_ROUNDS,
    max_seconds: float = GATE_MAX_SECONDS,
) -> SpeedVerdict:
    """Time ``original`` and ``optimized`` in interleaved pairs, ``repeats`` pairs a round, and
    decide with :func:`faster_beyond_noise` on all pairs so far; another round only while the
    verdict is undecided, rounds remain and the time spent (plus one more round like the last)
    stays within ``max_seconds``. An undecided verdict at the end is a refusal."""
    first: list[float] = []
    second: list[float] = []
    start = time.perf_counter()
    for round_ in range(1, max_rounds + 1):
        round_start = time.perf_counter()
        timings = interleaved_samples([original, optimized], repeats)
        first += timings[0]
        second += timings[1]
        verdict = faster_beyond_noise(first, second, rounds=round_, max_rounds=max_rounds)
        now = time.perf_counter()
        if verdict.decided or now - start + (now - round_start) > max_seconds:
            break
    return verdict
