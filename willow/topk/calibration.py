"""Calibrate a top-K plan: split, measure, choose, tune the candidate ratio, verify.

1. split the calibration rows into train / tune / holdout (seeded);
2. measure every statement's cost on the tune split (:func:`willow.compiler.profiling.profile_costs`)
   and each group's value: the mean absolute change of the full model's score when the group's
   rows are shuffled (grouped permutation importance);
   With ``compile=`` on, the compiler pass runs first and everything below measures and runs
   the compiled graph (kernels kept only where verified and faster);
3. for each candidate subset of groups (:func:`willow.cascades.selection.candidates_for`) fit
   an approximate regressor on the train split's full-model scores, and tune the candidate ratio
   ``c`` for every K/N fraction of the grid on bootstrap queries drawn from the tune split: the
   smallest ``c`` whose precision@K reaches ``precision_target`` in at least ``confidence`` of
   the queries;
   when the model is a tree ensemble the compiler lowers (and ``compile=`` is on), prefixes of
   that ensemble on every feature are candidates too (:mod:`willow.topk.prefix`), tuned and priced
   the same way (``approximate_model="prefix"``: only they, served even when not expected
   faster); a pipeline whose model reads one feature matrix has only these;
4. keep the subset with the lowest expected cost per row at the declared K/N (or exact, if none
   is cheaper than scoring every row), compile its approximate model, generate its top-K
   function, and check it on the holdout split, which played no part in the choice: bootstrap
   precision@K with the tuned ratios, and one real run of the generated function per grid
   fraction against the exact answer.
"""

from __future__ import annotations

import ast
import inspect
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.stats import binom
from sklearn.base import clone

from willow import fingerprints, progress
from willow.cascades.calibration import (
    _node_budget,
    _OpsHolder,
    check_row_aligned,
    check_stacker,
    compile_for_calibration,
    count_row_inputs,
)
from willow.cascades.duplicates import row_groups
from willow.cascades.runtime import ModelGuard
from willow.cascades.selection import DEFAULT_BUDGETS, candidates_for
from willow.cascades.splits import cut_distinct
from willow.compiler.codegen import RUNTIME, layout_cascade, materialize, stack_expression
from willow.compiler.compile_budget import budget_refusal
from willow.compiler.compile_pass import CompilationResult
from willow.compiler.execution import StatementRunner
from willow.compiler.graph import PipelineGraph
from willow.compiler.profiling import CostProfile, median_seconds, profile_costs
from willow.errors import CalibrationError
from willow.gpu.residency import resident_operators
from willow.rows import permute_rows, take_rows
from willow.topk.approximate import ApproximateScorer
from willow.topk.codegen import build_prefix_source, build_topk_source
from willow.topk.plan import RatioRow, TopKCandidate, TopKPlan
from willow.topk.prefix import PREFIX, PrefixChoice, prefix_candidates
from willow.topk.ranking import (
    bootstrap_precision,
    bootstrap_weights,
    precision_at_k,
    required_ratios,
    top_positions,
)
from willow.topk.runtime import ExactScorer, TopKRuntime
from willow.topk.scores import ScoreSpec, default_approximate_model, training_target

__all__ = ["DEFAULT_FRACTIONS", "TopKOptions", "TopKCalibration", "calibrate_topk", "build_topk"]

DEFAULT_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
MIN_SPLIT_ROWS = 10
TOP_WEIGHT = 5.0


@dataclass(frozen=True)
class TopKOptions:
    """Knobs of top-K calibration (documented on :func:`willow.optimize`)."""

    k: int | None = None
    precision_target: float = 0.95
    confidence: float = 0.95
    query_size: int | None = None
    score: Any = None
    approximate_model: Any = None
    split: tuple[float, float, float] = (0.5, 0.25, 0.25)
    random_state: int | None = 0
    cost_repeats: int = 5
    importance_repeats: int = 3
    exhaustive_max_groups: int = 4
    max_candidates: int = 16
    budgets: tuple[float, ...] = DEFAULT_BUDGETS
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    bootstrap_repeats: int = 200
    compile: bool | str = True


@dataclass
class TopKCalibration:
    """Everything top-K calibration produced; the plan is the readable part."""

    plan: TopKPlan
    costs: CostProfile
    score: ScoreSpec
    model_fingerprint: str
    scorer: ExactScorer
    approximate: ApproximateScorer | None = None
    function: Callable | None = None
    source: str | None = None
    compilation: CompilationResult | None = None


def _split(
    n: int, split: tuple[float, float, float], random_state: int | None, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Train / tune / holdout positions over distinct inputs (every copy of one input in one part,
    one row per input in tune and holdout: :func:`willow.cascades.splits.cut_distinct`), and the
    number of rows repeating another row's input."""
    try:
        parts = [float(p) for p in split]
    except TypeError as exc:
        raise ValueError(f"split must be three fractions (train, tune, holdout), got {split!r}.") from exc
    if len(parts) != 3 or any(p <= 0 for p in parts):
        raise ValueError(f"split must be three positive fractions (train, tune, holdout), got {split!r}.")
    total = sum(parts)
    n_tune = int(round(n * parts[1] / total))
    n_holdout = int(round(n * parts[2] / total))
    n_train = n - n_tune - n_holdout
    if min(n_train, n_tune, n_holdout) < MIN_SPLIT_ROWS:
        needed = math.ceil(MIN_SPLIT_ROWS * total / min(parts)) + 2
        raise CalibrationError(
            f"Calibration data too small for a top-K plan: got {n} rows, which split={split} cuts into "
            f"{n_train} train, {n_tune} tune and {n_holdout} holdout rows; each part needs at least "
            f"{MIN_SPLIT_ROWS}. Calibrate with at least {needed} rows (many more give tighter ratios)."
        )
    train, tune, holdout, duplicates = cut_distinct(n, n_train, n_tune, random_state, groups)
    if min(len(train), len(tune), len(holdout)) < MIN_SPLIT_ROWS:
        raise CalibrationError(
            f"Calibration data too small for a top-K plan: got {n} rows, {duplicates} of them repeating "
            f"another row's inputs, which split={split} cuts into {len(train)} train rows and "
            f"{len(tune)} tune and {len(holdout)} holdout rows with distinct inputs; each part needs "
            f"at least {MIN_SPLIT_ROWS}. Calibrate with more distinct rows."
        )
    return train, tune, holdout, duplicates


def _score_importance(
    graph: PipelineGraph,
    runner: StatementRunner,
    ns: dict[str, Any],
    model: Any,
    spec: ScoreSpec,
    baseline: np.ndarray,
    repeats: int,
    random_state: int | None,
) -> dict[str, float]:
    """Mean absolute change of the score when each group's rows are shuffled (all columns together)."""
    assert graph.stack is not None
    restack = [graph.stack.statement, *graph.tail]
    rng = np.random.default_rng(random_state)
    importances = {}
    for group in graph.groups:
        values = ns[group.variable]
        changes = []
        for _ in range(repeats):
            shuffled = dict(ns)
            shuffled[group.variable] = permute_rows(values, rng.permutation(len(baseline)))
            runner.run(shuffled, restack)
            scores = spec(model, shuffled[graph.model_call.feature_variable])
            changes.append(float(np.nanmean(np.abs(scores - baseline))))
        importances[group.name] = float(np.mean(changes))
    return importances


def tune_ratios(
    full_scores: np.ndarray,
    approx_scores: np.ndarray,
    weights: np.ndarray,
    fractions: tuple[float, ...],
    precision_target: float,
    confidence: float,
) -> list[RatioRow]:
    """The cheapest candidate ratio per fraction that meets the target in ``confidence`` of queries.

    "At least ``confidence`` of queries" is read off the bootstrap conservatively: the order
    statistic that bounds the ``confidence`` quantile from above with 95% probability. The ratios
    are then raised where needed so that the number of candidates never decreases as K
    grows, and capped at ``N / K`` (every row: exact).
    """
    query_size = int(weights[0].sum())
    repeats = len(weights)
    needed = np.sort(
        required_ratios(full_scores, approx_scores, weights, fractions, precision_target), axis=1
    )
    # An upper 95% confidence bound of the ``confidence`` quantile (distribution-free, by order
    # statistics) rather than the bare quantile, so that bootstrap noise errs on the safe side.
    order_statistic = min(repeats - 1, int(binom.ppf(0.95, repeats, confidence)))
    ks = [max(1, int(round(f * query_size))) for f in fractions]
    ratios = []
    most_candidates = 0.0
    for i, k in enumerate(ks):
        ratio = max(1.0, float(needed[i, order_statistic]), most_candidates / k)
        ratio = min(ratio, query_size / k)
        most_candidates = max(most_candidates, ratio * k)
        ratios.append(ratio)
    precision = bootstrap_precision(full_scores, approx_scores, weights, fractions, ratios)
    return [
        RatioRow(fraction=f, k=k, ratio=r, tune_pass_rate=float(np.mean(p >= precision_target - 1e-12)))
        for f, k, r, p in zip(fractions, ks, ratios, precision)
    ]


def fit_ranker(template: Any, features: Any, target: np.ndarray, top_fraction: float) -> Any:
    """Fit ``clone(template)`` to ``target``, weighting the rows that can reach a top K more.

    A top-K query only needs the ranking right near the top, so rows in the top
    ``2 * top_fraction`` of the target get ``TOP_WEIGHT`` times the weight of the others (when the
    estimator's ``fit`` takes ``sample_weight``; otherwise all rows weigh the same).
    """
    estimator = clone(template)
    cut = np.quantile(target, max(0.0, 1.0 - 2.0 * top_fraction))
    weight = np.where(target >= cut, TOP_WEIGHT, 1.0)
    try:
        return estimator.fit(features, target, sample_weight=weight)
    except TypeError:
        return clone(template).fit(features, target)


def _expected_cost(
    costs: CostProfile,
    groups: tuple[str, ...],
    approx_seconds: float,
    candidate_fraction: float,
    score_seconds: float,
    original: float,
    fused_seconds: float | None = None,
    approx_fused: bool = False,
) -> float:
    """Seconds per row of a top-K query keeping ``candidate_fraction`` of the rows.

    ``fused_seconds``: per-row cost of the fused full-model kernel, which replaces the remaining
    groups, the stacking and the model on the candidates; with ``approx_fused`` the approximate
    cost already includes building the selected groups' features.
    """
    if candidate_fraction >= 1.0:
        return original
    if fused_seconds is not None:
        full_path = fused_seconds
    else:
        full_path = costs.remaining_cost(groups) + costs.stack_seconds_per_row + score_seconds
    features = 0.0 if approx_fused else costs.features_cost(groups)
    return costs.kept_seconds_per_row + features + approx_seconds + candidate_fraction * full_path


def _model_deferred(compilation: CompilationResult | None, model: Any, options: TopKOptions) -> str | None:
    """Why the prefix filter's kernels must wait (compile=True's budget deferred the model to the
    background, whose ``compile="eager"`` calibration then considers the prefix), else ``None``.
    A model compiled during calibration shares its kernels (the same groups for large models)."""
    if not options.compile:
        return None
    if compilation is not None:
        if any(obj is model for obj, _ in compilation.deferred):
            return "deferred past compile=True's time budget (compiled in the background)"
        if any(node.statement is None and node.recipe[0] is model for node in compilation.nodes):
            return None
    return budget_refusal(model, _node_budget(options))


def _key(candidate: TopKCandidate) -> tuple[tuple[str, ...], int]:
    """A candidate's key among the fitted filters: its groups and prefix trees."""
    return candidate.groups, candidate.trees


def _scores_from_call(graph: PipelineGraph, spec: ScoreSpec) -> bool:
    """Whether the candidates' scores can come from the graph's own model call (compiled or
    not): it calls the method the score needs, with the features as its only argument."""
    call = graph.model_call.node.value
    return (
        isinstance(call, ast.Call)
        and graph.model_call.method == spec.method
        and len(call.args) == 1
        and not call.keywords
    )


def calibrate_topk(
    graph: PipelineGraph, fn: Callable, arguments: dict[str, Any], options: TopKOptions
) -> TopKCalibration:
    """Calibrate a top-K plan for ``graph`` on the calibration call ``arguments``."""
    n = count_row_inputs(graph, arguments)
    groups = row_groups([arguments[name] for name in graph.row_parameters], n)
    train, tune, holdout, duplicate_rows = _split(n, options.split, options.random_state, groups)
    fractions = tuple(sorted(float(f) for f in options.fractions))
    if not fractions or fractions[0] <= 0 or fractions[-1] >= 1:
        raise ValueError(f"k_fractions must be fractions in (0, 1), got {options.fractions!r}.")
    query_size = int(options.query_size) if options.query_size is not None else len(tune)

    def arguments_for(rows: np.ndarray) -> dict[str, Any]:
        subset = dict(arguments)
        for name in graph.row_parameters:
            subset[name] = take_rows(arguments[name], rows)
        return subset

    runner = StatementRunner(graph, fn)
    n_tune = len(tune)
    tune_arguments = arguments_for(tune)
    progress.stage("costing")
    python_costs, ns_tune, _ = profile_costs(
        graph, runner, tune_arguments, n_tune, repeats=options.cost_repeats
    )
    model = eval(compile(ast.Expression(body=graph.model_call.model), graph.filename, "eval"), ns_tune)
    spec = ScoreSpec.for_model(model, options.score)
    features_tune = ns_tune[graph.model_call.feature_variable]
    full_tune = spec(model, features_tune)
    score_seconds = median_seconds(lambda: spec(model, features_tune)) / n_tune
    original = python_costs.total_seconds_per_row - python_costs.model_seconds_per_row + score_seconds
    fingerprint = fingerprints.fingerprint(model)
    scorer = ExactScorer(graph, fn, options.score)  # the reference: always the original statements
    costs, compilation = python_costs, None
    if options.compile:
        progress.stage("compiling")
        compilation, costs, compiled_run = compile_for_calibration(
            graph, fn, runner, tune_arguments, python_costs, options
        )
        if compiled_run is not None:
            graph, runner, ns_tune, _ = compiled_run
            if _scores_from_call(graph, spec):
                features_tune = ns_tune[graph.model_call.feature_variable]
                score_seconds = median_seconds(lambda: spec.of_output(runner.model_output(ns_tune))) / n_tune
    if options.k is not None:
        reference = min(max(options.k / query_size, fractions[0]), fractions[-1])
    else:
        reference = min(max(0.01, fractions[0]), fractions[-1])
    plan = TopKPlan(
        approximate=False,
        reason="",
        score=spec.description,
        groups=graph.group_names,
        group_seconds_per_row={g.name: g.total_seconds_per_row for g in costs.groups},
        importances={},
        selected=(),
        ratios=(),
        precision_target=options.precision_target,
        confidence=options.confidence,
        query_size=query_size,
        reference_fraction=reference,
        original_seconds_per_row=original,
        expected_seconds_per_row=original,
        expected_speedup=1.0,
        train_rows=len(train),
        tune_rows=n_tune,
        holdout_rows=len(holdout),
        duplicate_rows=duplicate_rows,
        bootstrap_repeats=options.bootstrap_repeats,
        approximate_model="-",
        verified=True,
    )

    def exact(reason: str, **changes: Any) -> TopKCalibration:
        # An exact plan runs the original statements: report their (Python) costs.
        python_groups = {g.name: g.total_seconds_per_row for g in python_costs.groups}
        changes = {"group_seconds_per_row": python_groups, **changes}
        return TopKCalibration(
            replace(plan, reason=reason, **changes), python_costs, spec, fingerprint, scorer
        )

    rng = np.random.default_rng(options.random_state)
    tune_weights = bootstrap_weights(n_tune, query_size, options.bootstrap_repeats, rng)

    def tune(approx_scores: np.ndarray) -> list[RatioRow]:
        return tune_ratios(
            full_tune, approx_scores, tune_weights, fractions, options.precision_target, options.confidence
        )

    only_prefix = isinstance(options.approximate_model, str) and options.approximate_model == PREFIX
    prefixes: list[PrefixChoice] = []
    prefix_note = "approximate_model= is a fitted-model template: no ensemble-prefix filter."
    deferred = _model_deferred(compilation, model, options)
    if deferred:
        prefix_note = f"no ensemble-prefix filter during calibration: the model's kernels are {deferred}"
    elif options.compile and (options.approximate_model is None or only_prefix):
        progress.stage("prefix")
        prefixes, prefix_note = prefix_candidates(
            model, spec, features_tune, full_tune, tune, plan, costs, score_seconds
        )
    elif not options.compile:
        prefix_note = "compile=False: no ensemble-prefix filter (its kernels are compiled)."
    results: list[TopKCandidate] = [p.candidate for p in prefixes]
    fitted: dict[Any, tuple[Any, Any, list[RatioRow]]] = {
        _key(p.candidate): (p.estimator, None, p.rows) for p in prefixes
    }
    if only_prefix and not prefixes:
        return exact(f"approximate_model='prefix': {prefix_note}")
    if graph.stack is None and not prefixes:
        return exact(" ".join([*graph.notes, prefix_note]))
    subsets: list[tuple[str, ...]] = []
    fused_seconds = None
    if graph.stack is not None and not only_prefix:
        check_stacker(graph, ns_tune)
        check_row_aligned(graph, ns_tune, [g.variable for g in graph.groups], n_tune)
        progress.stage("importance")
        importances = _score_importance(
            graph, runner, ns_tune, model, spec, full_tune, options.importance_repeats, options.random_state
        )
        plan = replace(plan, importances=importances)
        progress.stage("candidates")
        subsets = candidates_for(list(graph.group_names), costs, importances, options)
        ns_train, _ = runner.run_all(arguments_for(train))
        target = training_target(spec, spec(model, ns_train[graph.model_call.feature_variable]))
        fused = _fused_full(compilation, graph, spec)
        if fused is not None:
            fused_seconds = median_seconds(lambda: fused.operator(ns_tune[fused.text])) / n_tune
    template_name = "-"
    for subset in subsets:
        layout = layout_cascade(graph, subset)
        check_row_aligned(
            graph, ns_tune, [v for v in layout.row_subsets if v not in graph.row_parameters], n_tune
        )
        expression = compile(ast.Expression(body=stack_expression(graph, subset)), graph.filename, "eval")
        train_features = eval(expression, ns_train)
        template = options.approximate_model
        if template is None:
            template = default_approximate_model(model, train_features)
        template_name = type(template).__name__
        try:
            estimator = fit_ranker(template, train_features, target, fractions[-1])
        except Exception as exc:  # noqa: BLE001 - a fitting failure rules the candidate out
            results.append(
                TopKCandidate(
                    subset,
                    math.inf,
                    math.inf,
                    0.0,
                    math.inf,
                    note=f"fit failed: {type(exc).__name__}: {exc}"[:160],
                )
            )
            continue
        tune_features = eval(expression, ns_tune)
        approx_tune = np.asarray(estimator.predict(tune_features), dtype=np.float64).reshape(-1)
        rows = tune(approx_tune)
        candidate_plan = replace(plan, approximate=True, ratios=tuple(rows))
        ratio = candidate_plan.ratio_for(reference)
        approx_seconds = (
            median_seconds(
                lambda e=estimator, x=tune_features: top_positions(
                    e.predict(x), max(1, int(reference * n_tune))
                )
            )
            / n_tune
        )
        expected = _expected_cost(
            costs, subset, approx_seconds, ratio * reference, score_seconds, original, fused_seconds
        )
        results.append(
            TopKCandidate(
                subset, ratio, expected, original / expected if expected > 0 else math.inf, approx_seconds
            )
        )
        fitted[(subset, 0)] = (estimator, layout, rows)
    plan = replace(plan, candidates=tuple(results), approximate_model=template_name)
    usable = [r for r in results if _key(r) in fitted]
    if not usable:
        return exact("no candidate's approximate model could be fitted.")
    best = min(usable, key=lambda r: r.expected_seconds_per_row)
    if best.expected_seconds_per_row >= original and not (
        only_prefix and best.ratio_at_reference * reference < 1
    ):
        return exact(
            f"no candidate is expected to be cheaper than scoring every row at K/N={reference:.4g} "
            f"(best {best.expected_seconds_per_row * 1e6:.2f} vs {original * 1e6:.2f} us/row)."
        )
    estimator, layout, rows = fitted[_key(best)]
    approximate = ApproximateScorer(estimator)
    expected = best.expected_seconds_per_row
    if best.trees:
        plan = replace(
            plan,
            prefix_trees=best.trees,
            model_trees=estimator.model_trees,
            approximate_model=f"ensemble prefix ({best.trees} of {estimator.model_trees} trees)",
        )
    elif options.compile:
        expected = _compile_filter(
            approximate, graph, fn, compilation, spec, ns_tune, best, costs, options, reference, score_seconds
        )
    plan = replace(
        plan,
        approximate=True,
        reason="approximate candidates, tuned on the tune split",
        selected=best.groups,
        ratios=tuple(rows),
        expected_seconds_per_row=expected,
        expected_speedup=original / expected,
        compiled_nodes=len(compilation.nodes) if compilation is not None else 0,
        approximate_kernel=(
            "staged tree kernels"
            if best.trees
            else "fused"
            if approximate.fused
            else "compiled"
            if approximate.compiled
            else "python"
        ),
    )

    # Holdout: rows nothing above saw. Bootstrap queries with the tuned ratios, then real runs.
    progress.stage("proof")
    holdout_arguments = arguments_for(holdout)
    ns_holdout, _ = runner.run_all(holdout_arguments)
    full_holdout = spec(model, ns_holdout[graph.model_call.feature_variable])
    if best.trees:
        approx_holdout = approximate.scores(ns_holdout[graph.model_call.feature_variable])
    else:
        expression = compile(
            ast.Expression(body=stack_expression(graph, best.groups)), graph.filename, "eval"
        )
        approx_holdout = approximate.scores(eval(expression, ns_holdout))
    holdout_weights = bootstrap_weights(
        len(holdout), query_size, options.bootstrap_repeats, rng, double=False
    )
    precision = bootstrap_precision(
        full_holdout, approx_holdout, holdout_weights, fractions, [r.ratio for r in rows]
    )
    guard = ModelGuard(fingerprint, model)
    function, source = build_topk(graph, fn, plan, approximate, spec, scorer, guard, compilation)
    verified_rows = []
    bound = inspect.BoundArguments(inspect.signature(fn), holdout_arguments)  # type: ignore[arg-type]
    slack = 2.0 * math.sqrt(options.confidence * (1 - options.confidence) / options.bootstrap_repeats)
    verified = True
    for row, p in zip(rows, precision):
        pass_rate = float(np.mean(p >= options.precision_target - 1e-12))
        k = max(1, int(round(row.fraction * len(holdout))))
        found, _ = function(k, *bound.args, **bound.kwargs)
        run_precision = precision_at_k(found, top_positions(full_holdout, k), k)
        verified &= pass_rate >= options.confidence - slack
        verified_rows.append(
            replace(
                row,
                holdout_pass_rate=pass_rate,
                holdout_precision=float(np.mean(p)),
                holdout_min_precision=float(np.min(p)),
                holdout_run_precision=run_precision,
            )
        )
    plan = replace(plan, ratios=tuple(verified_rows), verified=bool(verified))
    if not verified:
        warnings.warn(
            f"The top-K plan of {graph.function_name} met precision_target={options.precision_target} "
            f"in fewer than {options.confidence:.0%} of bootstrap queries on the holdout split for some "
            "K/N (see explain()); it is served, but its guarantee is not confirmed. More calibration "
            "rows, a larger split for tuning or a lower target make it hold.",
            UserWarning,
            stacklevel=4,
        )
    # The runtime must see the final plan (same ratios; holdout figures added).
    function, source = build_topk(graph, fn, plan, approximate, spec, scorer, guard, compilation)
    return TopKCalibration(plan, costs, spec, fingerprint, scorer, approximate, function, source, compilation)


def _compile_filter(
    approximate: ApproximateScorer,
    graph: PipelineGraph,
    fn: Callable,
    compilation: CompilationResult | None,
    spec: ScoreSpec,
    ns_tune: dict[str, Any],
    best: TopKCandidate,
    costs: CostProfile,
    options: TopKOptions,
    reference: float,
    score_seconds: float,
) -> float:
    """Compile (or fuse) the chosen approximate model where it verifies and measures faster;
    return the plan's expected seconds per row with the kernels in use."""
    from willow.compiler.lowering import lower

    n_tune = costs.n_rows
    expression = compile(ast.Expression(body=stack_expression(graph, best.groups)), graph.filename, "eval")
    features = eval(expression, ns_tune)
    approximate.compile(lower, features, _node_budget(options))
    fused = _fused_full(compilation, graph, spec)
    fused_seconds = None
    if fused is not None:
        texts = ns_tune[fused.text]
        fused_seconds = median_seconds(lambda: fused.operator(texts)) / n_tune
        layout = layout_cascade(graph, best.groups)
        runner = StatementRunner(graph, fn, extra={RUNTIME: _OpsHolder(compilation.operators)})

        def unfused() -> Any:
            ns = dict(ns_tune)
            runner.run(ns, list(layout.selected_features))
            return approximate.scores(eval(expression, ns))

        approximate.fuse([compilation.vectorizer(g) for g in best.groups], texts, features, unfused)
    if approximate.fused:
        approx_seconds = median_seconds(lambda: approximate.scores_text(ns_tune[fused.text])) / n_tune
    else:
        approx_seconds = (
            median_seconds(
                lambda: top_positions(approximate.scores(features), max(1, int(reference * n_tune)))
            )
            / n_tune
        )
    return _expected_cost(
        costs,
        best.groups,
        approx_seconds,
        best.ratio_at_reference * reference,
        score_seconds,
        math.inf,
        fused_seconds,
        approximate.fused,
    )


def _fused_full(compilation: CompilationResult | None, graph: PipelineGraph, spec: ScoreSpec) -> Any:
    """The fused text kernel that scores the candidates from their raw texts, if there is one."""
    if compilation is None or compilation.fused is None or not _scores_from_call(graph, spec):
        return None
    return compilation.fused


def build_topk(
    graph: PipelineGraph,
    fn: Callable,
    plan: TopKPlan,
    approximate: ApproximateScorer,
    score: ScoreSpec,
    scorer: ExactScorer,
    guard: ModelGuard,
    compilation: CompilationResult | None = None,
) -> tuple[Callable, str]:
    """Generate and compile the top-K function of ``plan``; return it and its rendered source.

    With ``compilation``, ``graph`` is the compiled graph: its kernels (and a fused text kernel,
    when the score comes from the model call) serve the filter's groups and the candidates.
    """
    objects = compilation.guarded if compilation is not None else ()
    runtime = TopKRuntime(
        plan,
        approximate,
        score,
        scorer,
        guard,
        operators=compilation.operators if compilation is not None else None,
        objects=tuple(obj for _, obj in objects),
    )
    from_call = _scores_from_call(graph, score)
    fused = _fused_full(compilation, graph, score)
    if plan.prefix_trees:
        source = build_prefix_source(graph, [expr for expr, _ in objects], from_call)
    else:
        source = build_topk_source(
            graph,
            layout_cascade(graph, plan.selected),
            [expr for expr, _ in objects],
            fused,
            from_call,
            approximate.fused and fused is not None,
        )
    runtime.ops = resident_operators(source, runtime.ops)  # device values between device nodes
    return materialize(source, fn, runtime, f"{graph.function_name} top-k")
