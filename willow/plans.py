"""What cascade and top-K plans share: :class:`FeaturePlan`.

Both planners (:mod:`willow.cascades`, :mod:`willow.topk`) choose a subset of the pipeline's feature
groups for an approximate model, from measured per-group costs and permutation importances, on a
train / tune / holdout split of the calibration rows. The fields that describe that choice and its
measurements live here once; :class:`~willow.cascades.plan.CascadePlan` and
:class:`~willow.topk.plan.TopKPlan` add their own (a threshold and an accuracy bound; a ratio table
and a precision target). Staged early exit (:class:`~willow.early_exit.plan.EarlyExitPlan`) plans
inside one tree ensemble, with no feature groups, so it is not one of these.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FeaturePlan"]


@dataclass(frozen=True, kw_only=True)
class FeaturePlan:
    """The feature-group choice of a calibrated plan, and what was measured to make it.

    Costs are seconds per row. ``groups`` are every feature group the model reads,
    ``selected`` those the approximate model reads (empty when no approximate plan serves, and
    ``reason`` says why). Keyword-only: a subclass's own fields come first in its constructor.
    """

    reason: str
    groups: tuple[str, ...]
    group_seconds_per_row: dict[str, float]
    importances: dict[str, float]
    selected: tuple[str, ...]
    original_seconds_per_row: float
    expected_seconds_per_row: float
    expected_speedup: float
    confidence: float
    train_rows: int
    tune_rows: int
    holdout_rows: int
    #: The approximate model's class name.
    approximate_model: str
    #: Pipeline nodes that run as generated kernels.
    compiled_nodes: int = 0
    #: Calibration rows whose inputs repeat another row's: kept in the same split part as it, and
    #: counted once in tune and holdout (``tune_rows``/``holdout_rows`` are distinct inputs).
    duplicate_rows: int = 0

    def group_lines(self, importance_format: str) -> list[str]:
        """The per-group table (cost, importance, whether selected), as lines of text."""
        lines = ["", f"  {'group':<28} {'us/row':>10} {'importance':>11}  selected"]
        for g in self.groups:
            mark = "yes" if g in self.selected else ""
            imp = self.importances.get(g, float("nan"))
            lines.append(
                f"  {g:<28} {self.group_seconds_per_row[g] * 1e6:>10.2f} {imp:>11{importance_format}}  {mark}"
            )
        return lines
