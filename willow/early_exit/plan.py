"""The result of early-exit planning: :class:`EarlyExitPlan`, plain data with a readable table."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["EarlyExitPlan"]


@dataclass(frozen=True)
class EarlyExitPlan:
    """A calibrated model cascade inside a tree ensemble (staged early exit).

    Rows run the trees stage by stage; after stage ``s`` (the first ``stops[s]`` trees) a row
    leaves when the remaining trees' leaf-value bounds prove its decision (exact exits) or, in
    approximate mode, when its margin exceeds ``thresholds[s]`` (raw-score units; ``inf``: exact
    exits only). ``exact``: every threshold is ``inf``, so outputs equal the full ensemble's
    decisions by construction (checked on the holdout rows). Otherwise ``agreement`` and
    ``lower_bound`` (one-sided Clopper-Pearson at ``confidence``) were measured on holdout rows
    that played no part in choosing the plan. ``exit_fractions[s]``: holdout rows leaving after
    stage ``s``; ``trees_per_row``: their mean number of trees evaluated.

    ``regression``: a regressor's ``predict`` judged within a tolerance (``tolerance``: the float
    one, ``None`` for a callable; ``tolerance_text`` says which): exact exits are stages after
    which the bounds keep every row within ``tolerance``, approximate ones rows whose score moved
    at most ``thresholds[s]`` over stage ``s``'s last kernel group; an exiting row's value is its
    partial raw score plus ``offsets[s] + slopes[s] * moved`` (``moved``: that change).
    ``agreement`` then counts rows within tolerance of the full ensemble.

    ``decision = (column, t)``: the function decides by ``method``'s ``output[:, column] > t``
    (``predict_proba(X)[:, 1] > t``; ``column`` ``None`` for a 1-D output): rows decide by one
    raw column against ``cut`` (raw units before the divisor; the only column of boosting, the
    class's own of a forest), and ``agreement`` counts rows on the same side of ``t`` as the full
    ensemble.
    """

    model: str
    n_trees: int
    stops: tuple[int, ...]
    thresholds: tuple[float, ...]
    exact: bool
    accuracy_target: float
    confidence: float
    exit_fractions: tuple[float, ...]
    trees_per_row: float
    agreement: float
    lower_bound: float | None
    tune_rows: int
    holdout_rows: int
    seconds_per_row: float | None = None
    full_seconds_per_row: float | None = None
    reason: str = ""
    regression: bool = False
    tolerance: float | None = None
    tolerance_text: str = ""
    offsets: tuple[float, ...] = ()
    slopes: tuple[float, ...] = ()
    cut: float = 0.0
    decision: tuple[int | None, float] | None = None
    method: str = "predict"

    @property
    def within(self) -> str:
        """ "within tolerance t" (regression) or "" (decisions)."""
        if not self.regression:
            return ""
        return f"within tolerance {self.tolerance:g}" if self.tolerance is not None else "within tolerance"

    @property
    def expected_speedup(self) -> float | None:
        """Full ensemble over staged seconds per row, measured on the tune rows."""
        if not self.seconds_per_row or self.full_seconds_per_row is None:
            return None
        return self.full_seconds_per_row / self.seconds_per_row

    def table(self) -> str:
        """The plan as text: stages, thresholds, exit fractions and the guarantee."""
        if self.regression:
            kind = "exact (leaf-value bounds)" if self.exact else "approximate (settled-score thresholds)"
            kind += f", {self.within}"
        else:
            kind = "exact (leaf-value bounds)" if self.exact else "approximate (margin thresholds)"
        lines = [f"Model cascade inside {self.model}: staged early exit, {kind}."]
        if self.regression:
            lines.append(f"  agreement: {self.tolerance_text}")
        if self.decision is not None:
            column, threshold = self.decision
            picked = "" if column is None else f"[:, {column}]"
            lines.append(
                f"  decision: {self.method}(X){picked} > {threshold:g}, a raw score above or below "
                f"{self.cut:.6g} (exits keep that side)"
            )
        if self.reason:
            lines.append(self.reason)
        lines.append(f"  {'stage':>5} {'trees':>7} {'threshold':>11} {'exits':>8}")
        for s, stop in enumerate(self.stops):
            if s < len(self.thresholds):
                threshold = "exact only" if math.isinf(self.thresholds[s]) else f"{self.thresholds[s]:.4g}"
            else:
                threshold = "all trees"
            lines.append(f"  {s + 1:>5} {stop:>7} {threshold:>11} {self.exit_fractions[s]:>8.2%}")
        lines.append(
            f"  mean trees per row {self.trees_per_row:.1f} of {self.n_trees} "
            f"({self.trees_per_row / self.n_trees:.1%}) on {self.holdout_rows} holdout rows"
        )
        if self.seconds_per_row is not None and self.full_seconds_per_row is not None:
            lines.append(
                f"  staged {self.seconds_per_row * 1e6:.2f} us/row vs full ensemble "
                f"{self.full_seconds_per_row * 1e6:.2f} us/row on {self.tune_rows} tune rows "
                f"({self.expected_speedup:.2f}x)"
            )
        if self.exact and self.regression:
            lines.append(
                f"  exact: the bounds keep every row {self.within} of the full ensemble (holdout "
                f"{self.agreement:.4f})"
            )
        elif self.exact:
            lines.append(f"  exact: holdout decisions identical to the full ensemble ({self.agreement:.4f})")
        else:
            lines.append(
                f"  agreement{' ' + self.within if self.regression else ''} with the full ensemble "
                f"{self.agreement:.4f} on {self.holdout_rows} holdout "
                f"rows; lower {self.confidence:.0%} bound {self.lower_bound:.4f} "
                f"(target {self.accuracy_target})"
            )
        return "\n".join(lines)
