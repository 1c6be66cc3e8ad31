"""Value of each feature group: grouped permutation importance with the full model.

A group matters as much as the full model's output moves when that group's rows are shuffled
(all of its columns together, so the rows stay internally consistent) while the other groups stay
put. Importance is measured against the full model's own output, not labels, because a cascade
must reproduce the model, not the ground truth: it is the mean half-L1 change of the predicted
class probabilities for ``predict_proba`` pipelines and the fraction of changed labels for
``predict`` pipelines, averaged over ``repeats`` seeded shuffles.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from willow.cascades.outputs import OutputSpec
from willow.compiler.execution import StatementRunner
from willow.compiler.graph import PipelineGraph
from willow.rows import n_rows, permute_rows

__all__ = ["permutation_importance"]


def _output_change(spec: OutputSpec, output: np.ndarray, baseline: np.ndarray) -> float:
    if hasattr(spec, "output_change"):  # numbers judged within a tolerance (cascades.tolerance)
        return spec.output_change(output, baseline)
    if spec.method == "predict_proba":
        return float(
            np.mean(0.5 * np.abs(np.asarray(output, float) - np.asarray(baseline, float)).sum(axis=1))
        )
    return float(np.mean(spec.labels(output) != spec.labels(baseline)))


def permutation_importance(
    graph: PipelineGraph,
    runner: StatementRunner,
    ns: dict[str, Any],
    baseline: np.ndarray,
    spec: OutputSpec,
    repeats: int,
    random_state: int | None,
) -> dict[str, float]:
    """Importance of every group of ``graph`` on the rows held in ``ns`` (a completed run)."""
    if repeats < 1:
        raise ValueError(f"importance_repeats must be at least 1, got {repeats}.")
    assert graph.stack is not None
    restack = [graph.stack.statement, *graph.tail]
    rng = np.random.default_rng(random_state)
    importances: dict[str, float] = {}
    for group in graph.groups:
        values = ns[group.variable]
        rows = n_rows(values)
        changes = []
        for _ in range(repeats):
            shuffled_ns = dict(ns)
            shuffled_ns[group.variable] = permute_rows(values, rng.permutation(rows))
            runner.run(shuffled_ns, restack)
            changes.append(_output_change(spec, runner.model_output(shuffled_ns), baseline))
        importances[group.name] = float(np.mean(changes))
    return importances
