"""Cost probes: how much each statement, feature group and the model cost per row.

Costs are measured on real calibration batches, not estimated from the code: every statement is
timed on its own (so lookups and other I/O count), after a warm-up run, as the median of several
repeats, and divided by the batch's row count. Work shared by several groups is measured once and
kept as its own line, attributed to the set of groups that need it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from willow.compiler.execution import StatementRunner
from willow.compiler.graph import PipelineGraph

__all__ = [
    "StatementCost",
    "GroupCost",
    "CostProfile",
    "profile_costs",
    "group_costs",
    "median_seconds",
    "interleaved_seconds",
]


@dataclass(frozen=True)
class StatementCost:
    """Measured cost of one statement. ``groups`` lists the feature groups that need it."""

    index: int
    lineno: int
    source: str
    seconds_per_row: float
    groups: frozenset[str]
    role: str  # "group", "shared", "stack", "tail" or "kept"


@dataclass(frozen=True)
class GroupCost:
    """A feature group's cost per row: its own statements, plus an even share of shared work."""

    name: str
    seconds_per_row: float
    shared_seconds_per_row: float

    @property
    def total_seconds_per_row(self) -> float:
        return self.seconds_per_row + self.shared_seconds_per_row


@dataclass(frozen=True)
class CostProfile:
    """Per-row costs of a pipeline, measured by :func:`profile_costs`."""

    statements: tuple[StatementCost, ...]
    groups: tuple[GroupCost, ...]
    model_seconds_per_row: float
    n_rows: int
    repeats: int

    @property
    def total_seconds_per_row(self) -> float:
        """Cost of one row through the original function."""
        return sum(s.seconds_per_row for s in self.statements) + self.model_seconds_per_row

    def group(self, name: str) -> GroupCost:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def features_cost(self, groups: Iterable[str]) -> float:
        """Per-row cost of computing ``groups``: every statement any of them needs, once."""
        wanted = set(groups)
        return sum(s.seconds_per_row for s in self.statements if s.groups & wanted)

    def remaining_cost(self, selected: Iterable[str]) -> float:
        """Per-row cost of the groups not in ``selected``, given that ``selected`` already ran."""
        chosen = set(selected)
        return sum(s.seconds_per_row for s in self.statements if s.groups and not s.groups & chosen)

    @property
    def kept_seconds_per_row(self) -> float:
        """Statements outside every group and outside the stacking step, run on every row."""
        return sum(s.seconds_per_row for s in self.statements if s.role == "kept")

    @property
    def stack_seconds_per_row(self) -> float:
        """The stacking statement and the statements that transform ``X`` before the model."""
        return sum(s.seconds_per_row for s in self.statements if s.role in ("stack", "tail"))

    def table(self) -> str:
        """The profile as a readable text table (microseconds per row)."""
        lines = [f"Cost per row (median of {self.repeats} runs on {self.n_rows} rows):"]
        lines.append(f"  {'line':>5}  {'us/row':>10}  {'role':<7} {'groups':<24} statement")
        for s in self.statements:
            text = s.source.splitlines()[0]
            text = text if len(text) <= 60 else text[:57] + "..."
            groups = ",".join(sorted(s.groups)) or "-"
            lines.append(
                f"  {s.lineno:>5}  {s.seconds_per_row * 1e6:>10.2f}  {s.role:<7} {groups:<24} {text}"
            )
        lines.append(f"  {'':>5}  {self.model_seconds_per_row * 1e6:>10.2f}  model")
        lines.append(f"  {'':>5}  {self.total_seconds_per_row * 1e6:>10.2f}  total")
        return "\n".join(lines)


def group_costs(names: tuple[str, ...], statements: tuple[StatementCost, ...]) -> tuple[GroupCost, ...]:
    """Each group's own cost and its even share of the statements it shares with other groups."""
    groups = []
    for name in names:
        own = sum(s.seconds_per_row for s in statements if s.groups == frozenset({name}))
        shared = sum(
            s.seconds_per_row / len(s.groups) for s in statements if len(s.groups) > 1 and name in s.groups
        )
        groups.append(GroupCost(name, own, shared))
    return tuple(groups)


def _role(graph: PipelineGraph, index: int) -> str:
    if graph.stack is not None and index == graph.stack.statement:
        return "stack"
    if index in graph.tail:
        return "tail"
    owners = graph.consumers.get(index, frozenset())
    if len(owners) > 1:
        return "shared"
    return "group" if owners else "kept"


def profile_costs(
    graph: PipelineGraph,
    runner: StatementRunner,
    arguments: dict[str, Any],
    n_rows: int,
    repeats: int = 5,
) -> tuple[CostProfile, dict[str, Any], Any]:
    """Measure ``graph``'s per-row costs on one calibration batch.

    Returns the profile plus the namespace and model output of the last timed run, so that
    calibration can reuse the computed features instead of running the pipeline again.
    """
    if repeats < 1:
        raise ValueError(f"cost_repeats must be at least 1, got {repeats}.")
    times, ns, output = runner.time_statements(arguments, repeats=repeats)
    per_row = 1.0 / max(n_rows, 1)
    statements = tuple(
        StatementCost(
            index=st.index,
            lineno=st.lineno,
            source=st.source,
            seconds_per_row=times.statement_seconds[st.index] * per_row,
            groups=graph.consumers.get(st.index, frozenset()),
            role=_role(graph, st.index),
        )
        for st in graph.statements
    )
    profile = CostProfile(
        statements=statements,
        groups=group_costs(graph.group_names, statements),
        model_seconds_per_row=times.model_seconds * per_row,
        n_rows=n_rows,
        repeats=repeats,
    )
    return profile, ns, output


def interleaved_seconds(fns: list[Callable[[], Any]], repeats: int) -> list[float]:
    """The fastest of ``repeats`` timed runs of each of ``fns``, run in turn so that a change in
    machine load affects them alike (one warm-up run each first)."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def median_seconds(fn: Callable[[], Any], repeats: int = 3) -> float:
    """The median of ``repeats`` timed runs of ``fn`` after one warm-up run."""
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return float(np.median(samples))
