"""The result of top-K planning: :class:`TopKPlan`, its ratio table and its candidates."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from willow.plans import FeaturePlan

__all__ = ["RatioRow", "TopKCandidate", "TopKPlan"]


@dataclass(frozen=True)
class RatioRow:
    """The candidate ratio tuned for one K/N fraction, and how it did.

    ``ratio`` is ``c``: a query of ``query_size`` rows for this ``k`` keeps ``ceil(c * K)``
    candidates. ``tune_pass_rate`` and
    ``holdout_pass_rate`` are the fractions of bootstrap queries (of ``query_size`` rows) whose
    precision@K reached the target; ``holdout_precision`` is their mean precision@K on the
    holdout rows, and ``holdout_run_precision`` the precision@K of the real generated function run
    once on all holdout rows (K = fraction * holdout rows), NaN when not run.
    """

    fraction: float
    k: int
    ratio: float
    tune_pass_rate: float
    holdout_pass_rate: float = float("nan")
    holdout_precision: float = float("nan")
    holdout_min_precision: float = float("nan")
    holdout_run_precision: float = float("nan")


@dataclass(frozen=True)
class TopKCandidate:
    """One candidate subset of feature groups, as fitted and tuned on the tune split."""

    groups: tuple[str, ...]
    ratio_at_reference: float
    expected_seconds_per_row: float
    expected_speedup: float
    approximate_seconds_per_row: float
    note: str = ""
    trees: int = 0  # an ensemble-prefix filter: the first ``trees`` trees of the model (no groups)

    @property
    def label(self) -> str:
        """The groups joined by ``+``, or ``prefix <trees> trees``."""
        return f"prefix {self.trees} trees" if self.trees else "+".join(self.groups)


@dataclass(frozen=True)
class TopKPlan(FeaturePlan):
    """A calibrated top-K plan.

    With ``approximate`` True, a query over N rows for K scores every row with the approximate
    model on ``selected`` groups, keeps the best rows as candidates (how many:
    :meth:`candidate_count`, from the ``ratios`` tuned on a grid of K/N fractions), runs the full
    pipeline on them and returns their exact top K; whenever the candidates would be all N rows,
    every row is scored exactly. With ``prefix_trees`` > 0 the approximate score is the model's
    own, from its first ``prefix_trees`` of ``model_trees`` trees on every feature
    (:mod:`willow.topk.prefix`), and ``selected`` is empty. With ``approximate`` False every query is
    answered exactly and ``reason`` says why. Costs are seconds per row.

    The guarantee (``guarantee``, in words) holds for queries of ``query_size`` rows drawn like
    the calibration rows, at the tuned K (see :attr:`guarantee` for the exact wording). The
    fields it shares with :class:`~willow.cascades.plan.CascadePlan` (groups, costs, importances,
    split sizes) are declared on :class:`~willow.plans.FeaturePlan`.
    """

    approximate: bool
    score: str
    ratios: tuple[RatioRow, ...]
    precision_target: float
    query_size: int
    reference_fraction: float
    bootstrap_repeats: int
    verified: bool
    candidates: tuple[TopKCandidate, ...] = field(default_factory=tuple)
    approximate_kernel: str = "python"
    prefix_trees: int = 0
    model_trees: int = 0

    @property
    def fractions(self) -> tuple[float, ...]:
        """The K/N grid the ratios were tuned on."""
        return tuple(r.fraction for r in self.ratios)

    def candidate_count(self, k: int, n: int) -> int:
        """How many candidates a query for ``k`` of ``n`` rows keeps (``>= n``: answer exactly).

        The grid was tuned at ``K_i = round(fraction_i * query_size)`` with candidate counts
        ``m_i = c_i * K_i`` that never decrease with ``K``. A query's ``K' = K * query_size / n``
        (its K rescaled to the tuned query size) between two grid points ``K_i < K' <= K_j``
        takes the candidate count interpolated linearly between ``m_i`` and ``m_j`` (monotone,
        since the counts are), rescaled back to ``n`` rows. Below the grid the first ratio is
        used; above it the last ratio.
        """
        if n <= 0:
            return 0
        if not self.approximate or not self.ratios:
            return n
        scaled = k * self.query_size / n
        rows = self.ratios
        if scaled <= rows[0].k:
            count = rows[0].ratio * k
        elif scaled > rows[-1].k:
            count = rows[-1].ratio * k
        else:
            j = next(i for i, r in enumerate(rows) if r.k >= scaled)
            low, high = rows[j - 1], rows[j]
            m_low, m_high = low.ratio * low.k, high.ratio * high.k
            weight = (scaled - low.k) / (high.k - low.k)
            count = (m_low + weight * (m_high - m_low)) * n / self.query_size
        return max(k, math.ceil(count - 1e-9))

    def ratio_for(self, fraction: float) -> float:
        """Effective candidate ratio ``c`` of a query with K/N = ``fraction`` on ``query_size`` rows."""
        if not self.approximate or not self.ratios:
            return math.inf
        k = max(1, round(fraction * self.query_size))
        return self.candidate_count(k, self.query_size) / k

    @property
    def guarantee(self) -> str:
        """What the plan promises, in words."""
        if not self.approximate:
            return "exact: every query scores every row with the full pipeline (precision@K = 1)."
        low, high = self.ratios[0], self.ratios[-1]
        text = (
            f"precision@K >= {self.precision_target} (overlap with the original pipeline's own top K, "
            f"divided by K) with probability >= {self.confidence} per query, tuned for queries of "
            f"{self.query_size} rows drawn like the calibration rows at K = "
            f"{', '.join(str(r.k) for r in self.ratios)} (K/N {low.k / self.query_size:.4g}.."
            f"{high.k / self.query_size:.4g}); K between those interpolates the candidate count linearly "
            "(monotone, not separately verified). Other K/N or query sizes "
            "reuse the nearest tuned ratio without a guarantee. Queries that would keep every row "
            "as a candidate, and K >= N, are exact."
        )
        if not self.verified:
            text += " NOT confirmed on the holdout split (see the holdout pass rates below)."
        return text

    def table(self) -> str:
        """The plan as readable text: groups, costs, importances, the ratio table, the guarantee."""
        lines = []
        if self.approximate and self.prefix_trees:
            lines.append(
                f"Top-K plan: approximate scores from the model's first {self.prefix_trees} of "
                f"{self.model_trees} trees on every feature (ensemble prefix); keep ceil(c*K) "
                "candidates, score them with the full model, return their exact top K."
            )
        elif self.approximate:
            lines.append(
                f"Top-K plan: approximate scores from {', '.join(self.selected)}; keep ceil(c*K) "
                "candidates, score them with the full pipeline, return their exact top K."
            )
        else:
            lines.append(f"Top-K plan: exact ({self.reason})")
        lines.append(f"  score: {self.score}")
        if self.groups:
            lines += self.group_lines(".4g")
        if self.ratios:
            lines.append("")
            lines.append(
                f"  candidate ratio c by K/N (queries of {self.query_size} rows, {self.bootstrap_repeats} "
                "bootstrap queries per split):"
            )
            lines.append(
                f"    {'K/N':>8} {'K':>7} {'c':>8} {'tune pass':>10} {'hold pass':>10} "
                f"{'hold mean':>10} {'hold min':>9} {'hold run':>9}"
            )
            for r in self.ratios:
                lines.append(
                    f"    {r.fraction:>8.4g} {r.k:>7d} {r.ratio:>8.3g} {r.tune_pass_rate:>10.3f} "
                    f"{r.holdout_pass_rate:>10.3f} {r.holdout_precision:>10.4f} "
                    f"{r.holdout_min_precision:>9.4f} {r.holdout_run_precision:>9.4f}"
                )
        lines.append("")
        lines.append(f"  guarantee: {self.guarantee}")
        lines.append("")
        lines.append(
            f"  original cost (score all + sort)  {self.original_seconds_per_row * 1e6:10.2f} us/row"
        )
        if self.approximate:
            lines.append(
                f"  expected top-K cost at K/N={self.reference_fraction:.4g}  "
                f"{self.expected_seconds_per_row * 1e6:10.2f} us/row ({self.expected_speedup:.2f}x)"
            )
        if self.approximate and self.prefix_trees:
            lines.append(
                f"  approximate model {self.approximate_model}: not trained, the ensemble's own first "
                f"trees ({self.tune_rows} tune / {self.holdout_rows} holdout rows)"
            )
        else:
            lines.append(
                f"  approximate model {self.approximate_model}, trained on the full model's scores "
                f"({self.train_rows} train / {self.tune_rows} tune / {self.holdout_rows} holdout rows)"
            )
        if self.duplicate_rows:
            lines.append(
                f"  duplicate rows: {self.duplicate_rows} calibration rows repeat another row's inputs; "
                "each input's copies stay in one split part and tune/holdout count it once"
            )
        if self.approximate:
            lines.append(
                f"  compiled: {self.compiled_nodes} pipeline node(s) run as generated kernels; the "
                f"approximate model runs as {self.approximate_kernel}"
                + (" (one kernel from the raw text)" if self.approximate_kernel == "fused" else "")
            )
        if self.candidates:
            lines.append("")
            lines.append("  candidates (tune split):")
            lines.append(f"    {'groups':<36} {'c@ref':>8} {'us/row':>9} {'speedup':>8}")
            for c in self.candidates:
                name = c.label
                name = name if len(name) <= 36 else name[:33] + "..."
                lines.append(
                    f"    {name:<36} {c.ratio_at_reference:>8.3g} {c.expected_seconds_per_row * 1e6:>9.2f} "
                    f"{c.expected_speedup:>7.2f}x{('  ' + c.note) if c.note else ''}"
                )
        return "\n".join(lines)
