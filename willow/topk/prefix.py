"""The "ensemble prefix" top-K filter: the first k trees of the pipeline's own tree ensemble.

When the model is a large tree ensemble on cheap features, the model itself is the cost and no
cheap feature group helps. The cheap model is then a prefix of the same ensemble: every feature,
the first ``k`` trees, evaluated by the compiled group kernels of
:func:`willow.early_exit.staged.stage_tree_model`. A :class:`PrefixFilter` scores a row as the full
pipeline's score would be computed from the truncated ensemble: the partial raw score, plus the
midpoint of what the remaining trees can add (a constant per output column), through the
operator's own output conversion (sigmoid / softmax / identity) and the same
:class:`~willow.topk.scores.ScoreSpec` (the class's probability, or a ``score=`` callable). So the
ranking is the truncated model's ranking of the very score the query ranks by, whether or not that
score is monotone in the raw score; the candidate ratio is tuned on these scores like for any
filter, and the candidates are scored by the full model (their prefix trees run again: ``k / T`` of
the model's cost on ``c * K`` rows).

:func:`prefix_candidates` tries a few ``k`` (snapped to kernel-group ends) and prices each on the
tune split with the top-K cost model: every statement of the pipeline but the model, plus the
measured cost of the prefix scores and the candidate selection, plus the candidates' share of the
full model's cost.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from willow.compiler.profiling import CostProfile, median_seconds
from willow.topk.plan import RatioRow, TopKCandidate, TopKPlan
from willow.topk.ranking import top_positions
from willow.topk.scores import ScoreSpec

__all__ = ["PrefixFilter", "PrefixChoice", "prefix_candidates", "PREFIX", "PREFIX_FRACTIONS"]

PREFIX = "prefix"
"""``approximate_model="prefix"``: consider only ensemble-prefix filters."""

PREFIX_FRACTIONS = (0.05, 0.1, 0.2, 0.35)
"""The prefix lengths tried, as fractions of the ensemble's trees (rounded up to kernel groups)."""


class PrefixFilter:
    """The score of each row under the first ``trees`` trees of ``model`` (``model.<method>`` as
    :func:`~willow.early_exit.staged.stage_tree_model` compiles it), converted by ``spec``.

    ``predict(X)`` returns one float per row. The staged kernels are built on first use (and again
    after unpickling: they come from the kernel cache); the pickle holds the model, the method,
    the prefix length and the score spec.
    """

    def __init__(self, model: Any, method: str, trees: int, spec: ScoreSpec, staged: Any = None) -> None:
        self.model = model
        self.method = method
        self.trees = int(trees)
        self.spec = spec
        self._staged = staged

    def _stages(self) -> Any:
        if self._staged is None:
            from willow.early_exit.staged import stage_tree_model

            self._staged = _prefix_stage(stage_tree_model(self.model, self.method), self.trees)
        return self._staged

    @property
    def model_trees(self) -> int:
        """How many trees the whole ensemble has."""
        return int(self._stages().n_trees)

    def predict(self, X: Any) -> np.ndarray:
        """The prefix's score of every row of ``X`` (the model's feature matrix)."""
        return self.spec.of_output(self._stages()(X))

    def __getstate__(self) -> dict[str, Any]:
        return {"model": self.model, "method": self.method, "trees": self.trees, "spec": self.spec}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._staged = None

    def __repr__(self) -> str:
        return f"PrefixFilter({type(self.model).__name__}.{self.method}, first {self.trees} trees)"


def _prefix_stage(staged: Any, trees: int) -> Any:
    """A shallow copy of ``staged`` (sharing its kernels) whose every row leaves after ``trees``:
    a threshold of -1 is below any margin, so each row takes its estimate after that stage."""
    if trees >= staged.n_trees:
        raise ValueError(f"A prefix needs fewer trees than the ensemble's {staged.n_trees}, got {trees}.")
    return copy.copy(staged).with_stages((trees,), (-1.0,))


@dataclass
class PrefixChoice:
    """One priced prefix filter: its candidate row, its scorer and its tuned ratios."""

    candidate: TopKCandidate
    estimator: PrefixFilter
    rows: list[RatioRow]


def prefix_candidates(
    model: Any,
    spec: ScoreSpec,
    features: Any,
    full_scores: np.ndarray,
    tune: Any,
    plan: TopKPlan,
    costs: CostProfile,
    score_seconds: float,
) -> tuple[list[PrefixChoice], str]:
    """Price the ensemble-prefix filters of ``model`` on the tune split's ``features``.

    ``tune(approx_scores) -> list[RatioRow]`` tunes the candidate ratios against ``full_scores``
    (as for the feature-group filters). Returns the priced choices and, when there are none, why
    (the model is not a tree ensemble the compiler lowers, or too small to cut).
    """
    from willow.compiler.lowering.base import NotLowerable
    from willow.early_exit.staged import stage_tree_model

    try:
        staged = stage_tree_model(model, spec.method)
    except NotLowerable as exc:
        return [], f"no ensemble-prefix filter: {exc}"[:200]
    total = staged.n_trees
    stops = [s for s in staged.snap([max(1, round(f * total)) for f in PREFIX_FRACTIONS]) if s < total]
    if not stops:
        return [], f"no ensemble-prefix filter: the {total}-tree ensemble is one kernel group."
    n = len(full_scores)
    reference = plan.reference_fraction
    features_cost = costs.total_seconds_per_row - costs.model_seconds_per_row
    keep = max(1, int(reference * n))
    choices = []
    for trees in stops:
        estimator = PrefixFilter(model, spec.method, trees, spec, _prefix_stage(staged, trees))
        approx = estimator.predict(features)
        rows = tune(approx)
        ratio = replace(plan, approximate=True, ratios=tuple(rows)).ratio_for(reference)
        approx_seconds = median_seconds(lambda e=estimator: top_positions(e.predict(features), keep)) / n
        fraction = ratio * reference
        original = plan.original_seconds_per_row
        expected = original if fraction >= 1.0 else features_cost + approx_seconds + fraction * score_seconds
        candidate = TopKCandidate(
            groups=(),
            ratio_at_reference=ratio,
            expected_seconds_per_row=expected,
            expected_speedup=original / expected if expected > 0 else float("inf"),
            approximate_seconds_per_row=approx_seconds,
            note=f"first {trees} of {total} trees, every feature",
            trees=trees,
        )
        choices.append(PrefixChoice(candidate, estimator, rows))
    return choices, ""
