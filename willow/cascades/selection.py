"""Candidate feature-group subsets for the approximate model.

Few groups: every non-empty proper subset. Many groups: for each cost budget, the subset with the
most importance that fits (an exact 0/1 knapsack over discretised costs). Each candidate is then
fitted and scored by the planner, which keeps the one with the lowest expected cost per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from typing import Any

import numpy as np

__all__ = ["candidate_subsets", "candidates_for", "knapsack"]

DEFAULT_BUDGETS = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7)


def knapsack(
    costs: Sequence[float], values: Sequence[float], budget: float, resolution: int = 1000
) -> tuple[int, ...]:
    """Indices of the items with the largest total value whose total cost is at most ``budget``.

    Costs are rounded to the nearest multiple of ``budget / resolution`` (budgets are a search
    heuristic, so a set may exceed its budget by that rounding). Ties prefer the cheaper set.
    """
    costs = np.asarray(costs, dtype=float)
    values = np.asarray(values, dtype=float)
    if budget <= 0 or len(costs) == 0:
        return ()
    unit = budget / resolution
    weights = np.rint(costs / unit).astype(int)
    weights = np.maximum(weights, 0)
    capacity = resolution
    best = np.full(capacity + 1, -np.inf)
    best[0] = 0.0
    choice = np.zeros((len(costs), capacity + 1), dtype=bool)
    for i, (w, v) in enumerate(zip(weights, values)):
        if w > capacity:
            continue
        shifted = np.full(capacity + 1, -np.inf)
        shifted[w:] = best[: capacity + 1 - w] + v
        take = shifted > best
        choice[i] = take
        best = np.where(take, shifted, best)
    # Highest value; among equal values the lowest weight.
    top = np.max(best)
    c = int(np.flatnonzero(best >= top - 1e-15)[0])
    chosen = []
    for i in range(len(costs) - 1, -1, -1):
        if choice[i, c]:
            chosen.append(i)
            c -= weights[i]
    return tuple(sorted(chosen))


def candidate_subsets(
    names: Sequence[str],
    costs: Sequence[float],
    importances: Sequence[float],
    exhaustive_max_groups: int = 4,
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    max_candidates: int = 16,
) -> list[tuple[str, ...]]:
    """Subsets of ``names`` worth trying as the approximate model's features.

    ``costs`` are per-row costs and ``importances`` the groups' values, aligned with ``names``;
    ``budgets`` are fractions of the total cost. Subsets are returned in the groups' own order,
    without duplicates, the empty set or the full set, at most ``max_candidates`` of them (those
    with the most importance per unit of cost first).
    """
    n = len(names)
    if not (len(costs) == len(importances) == n):
        raise ValueError("names, costs and importances must have the same length.")
    if n < 2:
        return []
    found: set[tuple[int, ...]] = set()
    if n <= exhaustive_max_groups:
        for size in range(1, n):
            found.update(combinations(range(n), size))
    total = float(np.sum(costs))
    for fraction in budgets:
        subset = knapsack(costs, importances, fraction * total)
        if 0 < len(subset) < n:
            found.add(subset)
    # The cheapest group alone is always a sensible candidate.
    found.add((int(np.argmin(costs)),))
    found = {s for s in found if 0 < len(s) < n}

    def value_per_cost(subset: tuple[int, ...]) -> float:
        cost = float(np.sum([costs[i] for i in subset]))
        value = float(np.sum([importances[i] for i in subset]))
        return value / cost if cost > 0 else float("inf")

    ranked = sorted(found, key=lambda s: (-value_per_cost(s), s))[:max_candidates]
    return [tuple(names[i] for i in subset) for subset in sorted(ranked)]


def candidates_for(
    names: Sequence[str], costs: Any, importances: dict[str, float], options: Any
) -> list[tuple[str, ...]]:
    """:func:`candidate_subsets` for a measured :class:`~willow.CostProfile` and an options
    object carrying ``exhaustive_max_groups``, ``budgets`` and ``max_candidates``."""
    return candidate_subsets(
        names,
        [costs.group(g).total_seconds_per_row for g in names],
        [importances[g] for g in names],
        exhaustive_max_groups=options.exhaustive_max_groups,
        budgets=options.budgets,
        max_candidates=options.max_candidates,
    )
