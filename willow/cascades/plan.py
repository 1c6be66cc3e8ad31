"""The result of cascade planning: :class:`CascadePlan` and the candidates it was chosen from."""

from __future__ import annotations

from dataclasses import dataclass, field

from willow.plans import FeaturePlan

__all__ = ["CandidateResult", "CascadePlan"]


@dataclass(frozen=True)
class CandidateResult:
    """One candidate subset of groups, as fitted and tuned on the tune split."""

    groups: tuple[str, ...]
    expected_seconds_per_row: float
    expected_speedup: float
    threshold: float
    confident_fraction: float
    tune_agreement: float
    tune_lower_bound: float
    approximate_seconds_per_row: float
    note: str = ""


@dataclass(frozen=True)
class CascadePlan(FeaturePlan):
    """A calibrated cascade: which groups the approximate model reads, its threshold, its cost and
    its proven agreement with the original pipeline.

    ``cascade`` is False when no candidate met the target (or none was cheaper than the
    original); ``reason`` then says why and the pipeline runs unchanged. Costs are seconds per row.
    ``agreement`` and ``lower_bound`` are measured on the holdout split, which played no part in
    choosing the plan: the one-sided Clopper-Pearson bound at ``confidence``. The fields it
    shares with :class:`~willow.topk.plan.TopKPlan` (groups, costs, importances, split sizes) are
    declared on :class:`~willow.plans.FeaturePlan`.
    """

    cascade: bool
    method: str
    threshold: float
    confident_fraction: float
    agreement: float
    lower_bound: float
    accuracy_target: float
    trained_on: str
    candidates: tuple[CandidateResult, ...] = field(default_factory=tuple)
    compiled_seconds_per_row: float | None = None
    rejected_agreement: float | None = None
    rejected_lower_bound: float | None = None
    measured_speedup: float | None = None
    #: With ``tolerance=`` (numeric outputs): what agreement with the original means, in words.
    tolerance: str = ""

    def table(self) -> str:
        """The plan as readable text: groups, costs, importances, the choice and its guarantee."""
        lines = []
        if self.cascade:
            lines.append(
                f"Cascade: approximate model on {', '.join(self.selected)}; rows with confidence "
                f">= {self.threshold:.6g} are answered by it, the rest run the full pipeline."
            )
            if ", judged on " in self.reason:
                lines.append(f"Agreement is judged on {self.reason.split(', judged on ', 1)[1]}.")
        else:
            lines.append(f"No cascade: {self.reason}")
        if self.tolerance:
            lines.append(f"Tolerance: a row agrees with the original when {self.tolerance}.")
        if self.groups:
            lines += self.group_lines(".4f")
        lines.append("")
        lines.append(f"  original cost            {self.original_seconds_per_row * 1e6:10.2f} us/row")
        if self.compiled_seconds_per_row is not None:
            lines.append(
                f"  compiled, no cascade     {self.compiled_seconds_per_row * 1e6:10.2f} us/row "
                f"({self.compiled_nodes} compiled nodes)"
            )
        if self.cascade:
            lines.append(f"  expected cascade cost    {self.expected_seconds_per_row * 1e6:10.2f} us/row")
        lines.append(f"  expected speedup         {self.expected_speedup:10.2f}x")
        if self.measured_speedup is not None:
            what = "cascade" if self.cascade else "compiled pipeline"
            lines.append(
                f"  measured speedup         {self.measured_speedup:10.2f}x ({what} on the holdout rows)"
            )
        if self.cascade:
            lines.append(f"  answered approximately   {self.confident_fraction:10.2%} of holdout rows")
        if self.holdout_rows:
            what = "cascade" if self.cascade else "compiled pipeline"
            lines.append(
                f"  {what} agreement with original {self.agreement:.4f} on {self.holdout_rows} holdout rows; "
                f"lower {self.confidence:.0%} bound {self.lower_bound:.4f} (target {self.accuracy_target})"
            )
        if self.rejected_agreement is not None:
            lines.append(
                f"  rejected cascade: agreement {self.rejected_agreement:.4f}, lower {self.confidence:.0%} "
                f"bound {self.rejected_lower_bound:.4f} on the holdout rows"
            )
        lines.append(
            f"  approximate model        {self.approximate_model}, trained on {self.trained_on} "
            f"({self.train_rows} train / {self.tune_rows} tune / {self.holdout_rows} holdout rows)"
        )
        if self.duplicate_rows:
            lines.append(
                f"  duplicate rows           {self.duplicate_rows} calibration rows repeat another row's "
                "inputs; each input's copies stay in one split part and tune/holdout count it once"
            )
        if self.candidates:
            lines.append("")
            lines.append("  candidates (tune split):")
            lines.append(
                f"    {'groups':<36} {'threshold':>10} {'confident':>9} {'bound':>7} {'us/row':>9} {'speedup':>8}"
            )
            for c in self.candidates:
                name = "+".join(c.groups)
                name = name if len(name) <= 36 else name[:33] + "..."
                lines.append(
                    f"    {name:<36} {c.threshold:>10.4g} {c.confident_fraction:>9.2%} "
                    f"{c.tune_lower_bound:>7.4f} {c.expected_seconds_per_row * 1e6:>9.2f} "
                    f"{c.expected_speedup:>7.2f}x{('  ' + c.note) if c.note else ''}"
                )
        return "\n".join(lines)
