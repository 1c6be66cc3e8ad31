"""Staged evaluation of a compiled tree ensemble: partial raw scores, and per-row early exit.

A :class:`StagedTreeModel` runs the very group kernels :mod:`willow.compiler.lowering.trees`
compiles (same ``group_trees`` cut, same generated sources, so they load from the kernel cache)
stage by stage: after stage ``s`` every still-active row holds the raw score of the first
``stops[s]`` trees, summed in tree order from the base score. A row whose decision is settled
leaves; the others, gathered into a smaller C-ordered batch, run the next stage's kernels. A row
that reaches the last stage has the full raw score, bit for bit what the compiled operator (and
the library) computes, because the kernels add leaf values to the row's running sums in order.

When a row exits after stage ``s`` it is given the estimate ``partial + center[s]`` (``center``:
the midpoint of what the remaining trees can add to each output column, from their leaf-value
bounds), which has the decided sign (binary) or arg-max (multiclass); the operator's own output
conversion (``finish``) then turns those scores into labels or probabilities.

Exit rules after stage ``s`` (raw scores before the ensemble's positive ``divisor``, which moves
no decision):

* exact: the remaining trees' leaf-value bounds prove the decision cannot change. Binary (one
  output, decision threshold 0): ``partial + min_rest > delta`` or ``partial + max_rest < -delta``.
  Multiclass (or a forest's class columns): the top class's lower bound beats every other class's
  upper bound by ``delta``. ``delta`` (:data:`EXACT_GUARD` plus a relative term) keeps rows
  within rounding of a tie on the full path, where the library's own tie rule decides.
* approximate: the margin of the estimate (``|estimate|`` for binary, the gap between the top two
  for multiclass) exceeds the stage's threshold ``thresholds[s]`` (``inf``: exact exits only).

**A thresholded output** (:meth:`StagedTreeModel.with_cut`: a function returning
``model.predict_proba(X)[:, c] > t``, ``model.decision_function(X) > t`` or, for a model without
classes, ``model.predict(X) > t``) is decided by one raw
column against ``cut``, the raw score at which the output conversion crosses ``t``
(:meth:`StagedTreeModel.cut_for`, by bisection on the conversion itself): column 0 of a
one-output ensemble (binary boosting, whatever ``c``), or column ``c`` of an ensemble whose
conversion treats each column alone (a random forest's averaged class votes; never a softmax).
The binary rules above then apply to that column, comparing ``partial - cut``; an approximate exit
also needs ``|estimate - cut| > guard``, so an exited row's estimate converts to a value on its
decided side of ``t``.

**Regression** (:meth:`StagedTreeModel.with_regression`: a regressor's ``predict``, one output
column whose value is the answer, judged within a ``tolerance``). A row leaving after stage ``s``
is given ``partial + offsets[s] + slopes[s] * moved`` (``moved = partial - previous``,
``previous``: its partial score before the stage's last kernel group, :meth:`StagedTreeModel.
lookback`; defaults ``center`` and 0: the calibration fits both on tune rows, extrapolating how
far a row still moving keeps moving) and the rules are:

* exact (stage-level, the same for every row; a float tolerance and an identity output
  conversion): every row leaves after the first stage where the remaining trees' leaf-value
  bounds keep the final value within ``tolerance`` of the estimate,
  ``(rest_high - rest_low) / 2 / divisor + guard <= tolerance``. A proof: no statistics.
* approximate: the row's score has settled, ``|moved| <= thresholds[s]`` (how far it moved over
  the stage's last kernel group, a few trees), run by :func:`_settle_rows`, a separate compiled
  pass so the classifier rule stays as it was. Why this signal and this estimate, measured at
  0.99 within the tolerance (``benchmarks.early_exit``; full ensemble 200 trees): a boosted
  regressor's late trees keep adding a fraction of each row's residual, so a row's recent
  movement predicts what is left (least squares slopes 1.7-2.8 per group of trees on price and
  make_regression). Exit estimates tried: the leaf-bound center (price 100 trees per row,
  make_regression 96.8), the tune rows' median of what the rest added (53.6; 79.9),
  ``offset + slope * moved`` with movement over the whole previous stage (52.4; 64.7) and over
  the last group (52.6; 50.0, fewer stages): the last is what serves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numba
import numpy as np

from willow.compiler.lowering import chunks
from willow.compiler.lowering.base import NotLowerable
from willow.compiler.lowering.trees import DEFAULT_GROUP_NODES, lower_tree_model, parallel_min_rows
from willow.compiler.lowering.trees_build import build_kernels
from willow.compiler.lowering.trees_codegen import _count_nodes, build_group_source, group_trees
from willow.compiler.lowering.trees_ir import Leaf, Node, TreeEnsemble

__all__ = ["StagedTreeModel", "stage_tree_model", "EXACT_GUARD", "leaf_bounds", "margins", "decisions"]

# Rows whose full raw score could lie within this of the decision threshold (or of a tie between
# classes) never exit exactly: sigmoid(1e-6) is 0.50000025, clear of LightGBM's p > 0.5 rule.
EXACT_GUARD = 1e-6
_RELATIVE_GUARD = 1e-12  # times the ensemble's largest possible |raw|: summation rounding
MIN_STAGE_GROUPS = 16  # small ensembles get smaller kernel groups, so stages can be this fine
MIN_GROUP_NODES = 16


def leaf_bounds(ensemble: TreeEnsemble) -> tuple[np.ndarray, np.ndarray]:
    """Per tree and output column, the smallest and largest leaf value it can add (0 for columns
    the tree does not write): two arrays of shape (n_trees, n_outputs)."""
    n_trees, width = len(ensemble.trees), ensemble.n_outputs
    low, high = np.zeros((n_trees, width)), np.zeros((n_trees, width))
    for t, (tree, columns) in enumerate(zip(ensemble.trees, ensemble.tree_outputs)):
        values = []
        stack: list[Node | Leaf] = [tree]
        while stack:
            node = stack.pop()
            if isinstance(node, Leaf):
                values.append(node.values)
            else:
                stack.extend((node.left, node.right))
        leaves = np.asarray(values, dtype=np.float64)
        for j, c in enumerate(columns):
            low[t, c] += leaves[:, j].min()
            high[t, c] += leaves[:, j].max()
    return low, high


def _decided_column(width: int, column: int | None) -> int | None:
    """The raw column a decision compares with a cut: ``column`` when given, column 0 of one
    output, else ``None`` (the arg-max decides)."""
    return column if column is not None else (0 if width == 1 else None)


def margins(
    estimate: np.ndarray, cut: float = 0.0, guard: float = 0.0, column: int | None = None
) -> np.ndarray:
    """How far each row's raw-score estimate is from changing its decision: ``|score - cut|``
    of the decided column (``column``; column 0 for one output; 0 where it is at most ``guard``:
    such a row never exits on its margin), else the gap between the two largest scores."""
    decided = _decided_column(estimate.shape[1], column)
    if decided is not None:
        distance = np.abs(estimate[:, decided] - cut)
        return np.where(distance > guard, distance, 0.0) if guard > 0 else distance
    top_two = np.partition(estimate, -2, axis=1)[:, -2:]
    return top_two[:, 1] - top_two[:, 0]


def decisions(scores: np.ndarray, cut: float = 0.0, column: int | None = None) -> np.ndarray:
    """The decision a raw score implies: ``score > cut`` of the decided column (``column``;
    column 0 for one output), the arg-max otherwise."""
    decided = _decided_column(scores.shape[1], column)
    if decided is not None:
        return (scores[:, decided] > cut).astype(np.int64)
    return np.argmax(scores, axis=1)


class StagedTreeModel:
    """A compiled ensemble evaluated in stages, with per-row early exit.

    ``stops``: trees evaluated after each stage, increasing, the last one every tree (requested
    stops are rounded up to the end of a kernel group). ``thresholds`` (one per stage but the
    last; set by :meth:`with_stages`): a row exits after stage ``s`` when the exact rule
    proves its decision or its margin exceeds ``thresholds[s]``. ``model(X)`` returns what the
    lowered ``model.method(X)`` returns; ``model.run(X)`` also says at which stage each row left.
    """

    def __init__(
        self,
        name: str,
        ensemble: TreeEnsemble,
        prepare: Callable[[Any], np.ndarray],
        finish: Callable[[np.ndarray], np.ndarray],
        *,
        group_nodes: int = DEFAULT_GROUP_NODES,
        n_jobs: int | None = None,
        n_threads: int | None = None,
    ) -> None:
        if not ensemble.trees:
            raise NotLowerable(f"{name}: the model has no trees.")
        self.name = name
        self.ensemble = ensemble
        self._prepare = prepare
        self._finish = finish
        self._n_threads = n_threads
        self.groups = group_trees(ensemble, group_nodes)
        self.sources = [build_group_source(ensemble, g) for g in self.groups]
        self.source = "\n\n# ---- next group module ----\n\n".join(self.sources)
        dtype = np.dtype(np.float32 if ensemble.float32_input else np.float64)
        self._kernels, _ = build_kernels(
            self.sources, "trees", dtype, ensemble.n_features, ensemble.n_outputs, n_jobs=n_jobs, driver=False
        )
        self.group_ends = tuple(g.stop for g in self.groups)
        low, high = leaf_bounds(ensemble)
        # rest_low[k] / rest_high[k]: what trees k.. can still add, per output column
        self._rest_low = np.vstack([np.cumsum(low[::-1], axis=0)[::-1], np.zeros((1, ensemble.n_outputs))])
        self._rest_high = np.vstack([np.cumsum(high[::-1], axis=0)[::-1], np.zeros((1, ensemble.n_outputs))])
        scale = float(np.abs(ensemble.base).sum() + np.maximum(np.abs(low), np.abs(high)).sum())
        self.guard = EXACT_GUARD + _RELATIVE_GUARD * scale
        self._base = np.asarray(ensemble.base, dtype=np.float64)
        self.stops: tuple[int, ...] = (len(ensemble.trees),)
        self.thresholds: tuple[float, ...] = ()
        self.cut = 0.0  # the decided column's raw score (see with_cut)
        self.cut_column: int | None = None  # None: column 0 of one output, else the arg-max
        # regression (see the module doc): the tolerance exact exits keep, the exit estimates' offsets
        self.regression = False
        self.tolerance: float | None = None
        self.offsets: tuple[float, ...] = ()
        self.slopes: tuple[float, ...] = ()

    def __repr__(self) -> str:
        return (
            f"StagedTreeModel({self.name!r}, trees={len(self.ensemble.trees)}, stops={self.stops}, "
            f"thresholds={tuple(round(t, 6) for t in self.thresholds)})"
        )

    @property
    def n_trees(self) -> int:
        return len(self.ensemble.trees)

    def snap(self, stops: Sequence[int]) -> tuple[int, ...]:
        """``stops`` rounded up to group ends, deduplicated, sorted, ending with every tree."""
        ends = np.asarray(self.group_ends)
        snapped = {int(ends[min(np.searchsorted(ends, max(int(k), 1)), len(ends) - 1)]) for k in stops}
        snapped.add(self.n_trees)
        return tuple(sorted(snapped))

    def with_stages(
        self,
        stops: Sequence[int],
        thresholds: Sequence[float] | None = None,
        offsets: Sequence[float] | None = None,
        slopes: Sequence[float] | None = None,
    ) -> StagedTreeModel:
        """Set the stage stops (snapped, see :meth:`snap`) and thresholds (default: exact exits
        only); for regression also the exit estimates' offsets and slopes (raw units, one per
        stage but the last; default the remaining trees' leaf-bound centers and 0); returns
        ``self``."""
        snapped = self.snap(stops)
        if thresholds is None:
            thresholds = (float("inf"),) * (len(snapped) - 1)
        if len(thresholds) != len(snapped) - 1:
            raise ValueError(
                f"Expected one threshold per stage but the last ({len(snapped) - 1} for stops {snapped}), "
                f"got {len(thresholds)}."
            )
        if offsets is None:
            offsets = tuple(float(self.center(stop)[0]) for stop in snapped[:-1]) if self.regression else ()
        if slopes is None:
            slopes = (0.0,) * len(offsets)
        if self.regression and not len(offsets) == len(slopes) == len(snapped) - 1:
            raise ValueError(
                f"Expected one offset and slope per stage but the last, got {len(offsets)} and {len(slopes)}."
            )
        self.stops = snapped
        self.thresholds = tuple(float(t) for t in thresholds)
        self.offsets = tuple(float(o) for o in offsets)
        self.slopes = tuple(float(o) for o in slopes)
        return self

    def with_regression(self, tolerance: float | None) -> StagedTreeModel:
        """Use the regression rules (module doc) for one output column judged within
        ``tolerance`` (a float: exact exits where the bounds prove it; ``None``: a callable
        tolerance, settled-score exits only); returns ``self``. Call before :meth:`with_stages`."""
        if self.ensemble.n_outputs != 1:
            raise NotLowerable(
                f"{self.name}: regression early exit needs one output column, the ensemble has "
                f"{self.ensemble.n_outputs}."
            )
        self.regression = True
        self.tolerance = None if tolerance is None else float(tolerance)
        self._linear = self.linear_output
        return self

    def raw_column(self, column: int | None) -> int:
        """The raw column that output ``column`` (``None``: a 1-D output) is computed from
        alone: 0 for one output; column ``column`` of several when the conversion treats each
        column alone (a forest's averaged votes). Raises :class:`NotLowerable` for a conversion
        mixing columns (a softmax)."""
        width = self.ensemble.n_outputs
        if width == 1:
            return 0
        if column is None or not 0 <= column < width:
            raise NotLowerable(f"{self.name}: output column {column} is not one of its {width} raw columns.")
        rng = np.random.default_rng(0)
        probe = rng.uniform(-2.0, 2.0, size=(4, width))
        moved = probe.copy()
        others = [c for c in range(width) if c != column]
        moved[:, others] += rng.uniform(-2.0, 2.0, size=(4, len(others)))
        with np.errstate(all="ignore"):
            a = np.asarray(self._finish(probe.copy()), dtype=np.float64)
            b = np.asarray(self._finish(moved), dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != width or not np.array_equal(a[:, column], b[:, column]):
            raise NotLowerable(
                f"{self.name}: its output column {column} depends on every class's score (a softmax), "
                "so no single raw score decides a threshold on it: return model.predict(X) instead."
            )
        return column

    def cut_for(self, column: int | None, threshold: float) -> float:
        """The raw score (before the divisor) of :meth:`raw_column` at which output ``column``
        (``None``: a 1-D output) of the conversion crosses ``threshold``: rows above it and rows
        below it fall on either side of ``output > threshold``. Found by bisection on the
        conversion itself (a sigmoid of any scale, an identity, a forest's average), so the
        conversion must be monotonic in that raw score; raises :class:`NotLowerable` otherwise,
        or when no raw score reaches ``threshold`` (every row then makes the same decision)."""
        raw = self.raw_column(column)
        width = self.ensemble.n_outputs
        divisor = float(self.ensemble.divisor)

        def value(score: float) -> float:  # the conversion of a raw score after the divisor
            row = np.zeros((1, width), dtype=np.float64)
            row[0, raw] = score
            with np.errstate(over="ignore"):  # a sigmoid far out: exp overflows to 0 or 1, as meant
                out = np.asarray(self._finish(row), dtype=np.float64)
            return float(out.reshape(-1)[0] if column is None else out.reshape(1, -1)[0, column])

        low, high = -1.0, 1.0
        ends = (value(low), value(high))
        while not min(ends) < threshold < max(ends) and high < 1e6:
            low, high = low * 4, high * 4
            ends = (value(low), value(high))
        rising = ends[1] > ends[0]
        probes = np.linspace(low, high, 9)
        values = [value(r) for r in probes]
        if not all((b >= a) if rising else (b <= a) for a, b in zip(values, values[1:])):
            raise NotLowerable(f"{self.name}: its output conversion is not monotonic in the raw score.")
        if not min(values[0], values[-1]) < threshold < max(values[0], values[-1]):
            raise NotLowerable(
                f"{self.name}: no raw score within +-{high:g} puts column {column} across the threshold "
                f"{threshold:g}, so every row decides the same way."
            )
        # invariant: value(below) <= threshold < value(above) (below > above when falling)
        below, above = (low, high) if rising else (high, low)
        for _ in range(200):
            middle = (below + above) / 2.0
            if middle in (below, above):
                break
            if value(middle) > threshold:
                above = middle
            else:
                below = middle
        return float(above) * divisor

    def with_cut(self, cut: float, column: int | None = None) -> StagedTreeModel:
        """Decide rows by ``raw[:, raw_column(column)] > cut`` (raw units before the divisor,
        from :meth:`cut_for`; ``column``: the thresholded output column) instead of the default
        rule (``raw > 0`` for one output, the arg-max otherwise); ``with_cut(0.0)`` restores the
        default. Returns ``self``."""
        width = self.ensemble.n_outputs
        self.cut = float(cut)
        self.cut_column = None if width == 1 or (column is None and cut == 0.0) else self.raw_column(column)
        return self

    @property
    def linear_output(self) -> bool:
        """Whether the output conversion is the identity on raw scores (so a bound on the raw
        score is a bound on the output: exact regression exits need it)."""
        probe = np.array([[-1.5], [0.0], [2.25]])
        try:
            converted = np.asarray(self._finish(probe.copy()), dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            return False
        return bool(np.array_equal(converted, probe.reshape(-1)))

    def lookback(self, stop: int) -> int:
        """Regression: the trees after which a row's score is compared with its score after
        ``stop`` (how far it moved): the kernel group before the one ending at ``stop`` (0: the
        base score)."""
        index = self.group_ends.index(stop)
        return self.group_ends[index - 1] if index else 0

    def settled_stop(self, stop: int) -> bool:
        """Regression, exact: whether the trees after ``stop`` provably keep every row's output
        within ``tolerance`` of ``partial + center`` (the same for every row)."""
        if self.tolerance is None or stop >= self.n_trees:
            return stop >= self.n_trees
        half = float(self._rest_high[stop, 0] - self._rest_low[stop, 0]) / 2.0
        divisor = float(self.ensemble.divisor)
        return self._linear and (half + self.guard) / divisor <= self.tolerance

    # ------------------------------------------------------------------ rules

    def center(self, stop: int) -> np.ndarray:
        """Midpoint of what the trees after ``stop`` can add, per output column."""
        return (self._rest_low[stop] + self._rest_high[stop]) / 2.0

    def exact_exits(self, partial: np.ndarray, stop: int) -> np.ndarray:
        """Rows whose decision the trees after ``stop`` provably cannot change."""
        low = partial + self._rest_low[stop]
        high = partial + self._rest_high[stop]
        decided = _decided_column(partial.shape[1], self.cut_column)
        if decided is not None:
            return (low[:, decided] - self.cut > self.guard) | (high[:, decided] - self.cut < -self.guard)
        top = np.argmax(low, axis=1)
        rows = np.arange(partial.shape[0])
        best_low = low[rows, top]
        high[rows, top] = -np.inf
        return best_low > high.max(axis=1) + self.guard

    # ------------------------------------------------------------------ evaluation

    def partial_scores(self, X: Any, stops: Sequence[int]) -> np.ndarray:
        """Raw scores (before the divisor) of every row after each of ``stops`` (group ends, see
        :meth:`snap`), without exits: shape (len(stops), n_rows, n_outputs). For tuning."""
        data = self._prepare(X)
        wanted = set(stops)
        out = np.empty((data.shape[0], self.ensemble.n_outputs))
        out[:] = self._base
        snapshots = []
        for group, kernel in zip(self.groups, self._kernels):
            kernel(data, out)
            if group.stop in wanted:
                snapshots.append(out.copy())
        return np.stack(snapshots)

    def run(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(output, exit_stage)``: what ``model.method(X)`` returns (exited rows from their
        estimates) and the stage index after which each row left (the last stage: every tree)."""
        raw, stage = self._raw(X)
        return self._finish(raw), stage

    def __call__(self, X: Any) -> np.ndarray:
        return self._finish(self._raw(X)[0])

    def _raw(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        data = self._prepare(X)
        n = data.shape[0]
        out = np.empty((n, self.ensemble.n_outputs))
        stage = np.empty(n, dtype=np.int64)
        workers = self._n_threads if self._n_threads is not None else chunks.worker_threads()
        if workers > 1 and n >= parallel_min_rows(self.n_trees):  # as the compiled operator
            chunks.map_row_chunks(lambda a, b: self._run_chunk(data[a:b], out[a:b], stage[a:b]), n, workers)
        else:
            self._run_chunk(data, out, stage)
        if self.ensemble.divisor != 1.0:
            out /= self.ensemble.divisor
        return out, stage

    def _run_chunk(self, data: np.ndarray, out: np.ndarray, stage: np.ndarray) -> None:
        """Evaluate ``data`` stage by stage into ``out`` (raw, before the divisor) and ``stage``.

        The rows still running are kept at the front of ``buffer`` (a copy made at the first
        exit: ``data`` is the caller's), so every stage's kernels read one C-ordered prefix."""
        n = data.shape[0]
        active = np.arange(n)
        rows, buffer = data, None
        scores = np.empty((n, self.ensemble.n_outputs))
        scores[:] = self._base
        previous = np.full(n, self._base[0]) if self.regression else None
        group, m = 0, n
        last = len(self.stops) - 1
        for s, stop in enumerate(self.stops):
            while group < len(self.groups) and self.groups[group].stop <= stop:
                if previous is not None and self.groups[group].stop == stop:  # see lookback()
                    previous[:m] = scores[:m, 0]
                self._kernels[group](rows, scores[:m])
                group += 1
            if s == last:
                out[active[:m]] = scores[:m]
                stage[active[:m]] = s
                return
            if buffer is None:
                buffer = np.empty_like(data)
            if self.regression:
                m = self._settle(rows, buffer, scores, previous, active, m, out, stage, s, stop, rows is data)
                rows = buffer[:m]
                if m == 0:
                    return
                continue
            m = _exit_rows(
                rows, buffer, scores, active, m, out, stage, s, self._rest_low[stop], self._rest_high[stop],
                self.guard, self.thresholds[s], self.cut, _column_code(self.ensemble.n_outputs, self.cut_column), rows is data,
            )  # fmt: skip
            rows = buffer[:m]
            if m == 0:
                return

    def _settle(self, rows, buffer, scores, previous, active, m, out, stage, s, stop, fresh) -> int:  # noqa: ANN001
        """One regression stage's exits (:func:`_settle_rows`): everyone after a settled stop,
        whose estimate is then always ``partial + center`` (what the bounds' proof is about)."""
        threshold = self.thresholds[s]
        settled = self.settled_stop(stop)
        offset = float(self.center(stop)[0]) if settled else self.offsets[s]
        return _settle_rows(
            rows, buffer, scores, previous, active, m, out, stage, s, offset, 0.0 if settled else self.slopes[s],
            threshold if np.isfinite(threshold) else -1.0, settled, fresh,
        )  # fmt: skip


@numba.njit(cache=True, nogil=True)
def _settle_rows(
    rows, buffer, scores, previous, active, m, out, stage, s, offset, slope, threshold, everyone, fresh
):
    """One regression stage's exits over the first ``m`` running rows: a row leaves when
    ``everyone`` (the bounds settle every row) or its score moved at most ``threshold`` since
    ``previous`` (before the stage's last group), with the estimate ``score + offset + slope * moved``
    (``everyone``: the caller passes the leaf-bound center and slope 0); the others move to
    the front as in :func:`_exit_rows`. Returns how many run."""
    kept = 0
    for i in range(m):
        p = scores[i, 0]
        moved = p - previous[i]
        if everyone or abs(moved) <= threshold:
            out[active[i], 0] = p + offset + slope * moved
            stage[active[i]] = s
        else:
            if kept != i or fresh:
                buffer[kept, :] = rows[i, :]
                scores[kept, 0] = p
                active[kept] = active[i]
            kept += 1
    return kept


@numba.njit(cache=True, nogil=True)
def _exit_rows(
    rows, buffer, scores, active, m, out, stage, s, rest_low, rest_high, guard, threshold, cut, column, fresh
):
    """One stage's exits over the first ``m`` running rows: a leaving row's estimate goes to
    ``out[active[i]]`` and ``s`` to ``stage[active[i]]``; the others move to the front of
    ``buffer``, ``scores`` and ``active`` (in order; ``fresh``: ``rows`` is not yet ``buffer``'s
    prefix, so every kept row is copied). Returns how many still run. The same rules
    as :meth:`StagedTreeModel.exact_exits` and :func:`margins`, row by row: ``column`` >= 0 is
    the raw column compared with ``cut``, -1 the arg-max rule."""
    width = scores.shape[1]
    kept = 0
    for i in range(m):
        leave = False
        if column >= 0:
            p = scores[i, column] - cut
            distance = abs(p + (rest_low[column] + rest_high[column]) / 2.0)
            leave = (
                p + rest_low[column] > guard
                or p + rest_high[column] < -guard
                or (distance > threshold and distance > guard)
            )
        else:
            top = 0
            for c in range(1, width):
                if scores[i, c] + rest_low[c] > scores[i, top] + rest_low[top]:
                    top = c
            rival = -np.inf
            first, second = -np.inf, -np.inf
            for c in range(width):
                if c != top:
                    rival = max(rival, scores[i, c] + rest_high[c])
                e = scores[i, c] + (rest_low[c] + rest_high[c]) / 2.0
                if e > first:
                    first, second = e, first
                elif e > second:
                    second = e
            leave = scores[i, top] + rest_low[top] > rival + guard or first - second > threshold
        if leave:
            row = active[i]
            for c in range(width):
                out[row, c] = scores[i, c] + (rest_low[c] + rest_high[c]) / 2.0
            stage[row] = s
        else:
            if kept != i or fresh:
                buffer[kept, :] = rows[i, :]
                for c in range(width):
                    scores[kept, c] = scores[i, c]
                active[kept] = active[i]
            kept += 1
    return kept


def _column_code(width: int, column: int | None) -> int:
    """:func:`_exit_rows`' ``column``: the decided raw column, or -1 for the arg-max rule."""
    decided = _decided_column(width, column)
    return -1 if decided is None else decided


def default_group_nodes(ensemble: TreeEnsemble) -> int:
    """Internal nodes per kernel group: the compiled operator's (``DEFAULT_GROUP_NODES``, whose
    cached kernels are then reused) unless that cuts the ensemble into fewer than
    :data:`MIN_STAGE_GROUPS` groups, the finest stages there can be."""
    nodes = sum(_count_nodes(tree) for tree in ensemble.trees)
    return min(DEFAULT_GROUP_NODES, max(MIN_GROUP_NODES, nodes // MIN_STAGE_GROUPS))


def stage_tree_model(model: Any, method: str = "predict", **options: Any) -> StagedTreeModel:
    """A :class:`StagedTreeModel` for ``getattr(model, method)`` (a model
    :func:`~willow.compiler.lowering.trees.lower_tree_model` compiles), with one stage (every
    tree) until :meth:`StagedTreeModel.with_stages` sets others.

    Options: ``group_nodes`` (default :func:`default_group_nodes`), ``n_jobs`` (as for
    ``lower_tree_model``), ``n_threads``. The input checks and output
    conversion are the compiled operator's, so outputs match the library's where rows run every
    tree. Raises :class:`NotLowerable` as ``lower_tree_model`` does.
    """
    build_options = {k: options.pop(k) for k in ("group_nodes", "n_jobs", "n_threads") if k in options}
    if options:
        raise TypeError(f"stage_tree_model got unexpected options {sorted(options)}.")

    def builder(name: str, ensemble: TreeEnsemble, prepare: Callable, finish: Callable) -> StagedTreeModel:
        build_options.setdefault("group_nodes", default_group_nodes(ensemble))
        return StagedTreeModel(name, ensemble, prepare, finish, **build_options)

    return lower_tree_model(model, method, builder=builder)  # type: ignore[return-value]
