"""Calibrate a cascade: split, measure, choose, tune and prove.

This is the driver that strings the cascade stages together on a traced pipeline:

1. split the calibration rows into train / tune / holdout (seeded, every copy of one input in the
   same part; tune and holdout count each distinct input once, see :mod:`willow.cascades.splits`);
2. measure every statement's cost on the tune split (:mod:`willow.compiler.profiling`);
3. measure every group's value by permutation importance on the tune split;
4. fit an approximate model for each candidate subset of groups on the train split, tune its
   threshold on the tune split, and estimate its expected cost per row;
5. generate the cheapest candidate's cascaded function and verify it once on the holdout split,
   comparing its real output with the original function's.

A plan whose holdout lower bound misses the target becomes "no cascade"; nothing is retried on
the holdout rows, so the reported bound is an honest one.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np

from willow import fingerprints, progress
from willow.cascades.approximate import ApproximateModel, fit_approximate_model
from willow.cascades.bounds import clopper_pearson_lower
from willow.cascades.duplicates import row_groups
from willow.cascades.importance import permutation_importance
from willow.cascades.outputs import OutputSpec, find_margin, same_output
from willow.cascades.plan import CandidateResult, CascadePlan
from willow.cascades.runtime import ModelGuard, ServingRuntime, with_original_errors
from willow.cascades.selection import DEFAULT_BUDGETS, candidates_for
from willow.cascades.splits import split_rows
from willow.cascades.threshold import tune_threshold
from willow.cascades.tolerance import describe_tolerance, fit_numeric_model, with_tolerance
from willow.compiler.codegen import (
    CascadeLayout,
    build_cascade_source,
    build_compiled_source,
    layout_cascade,
    materialize,
    stack_expression,
)
from willow.compiler.compile_budget import CompileBudget, current_budget
from willow.compiler.compile_pass import (
    RUNTIME,
    CompilationResult,
    compile_graph,
    fuse_text_pipeline,
    keep_faster,
)
from willow.compiler.execution import StatementRunner
from willow.compiler.graph import PipelineGraph
from willow.compiler.profiling import CostProfile, interleaved_seconds, median_seconds, profile_costs
from willow.compiler.speed_gate import GATE_REPEATS, GATE_ROUNDS, measure_speed
from willow.errors import UnsupportedPipelineError
from willow.gpu.residency import resident_operators
from willow.rows import n_rows, take_rows

__all__ = [
    "CascadeOptions",
    "CalibrationResult",
    "calibrate_cascade",
    "calibrate_targets",
    "compile_for_calibration",
    "build_cascade",
    "call_with",
    "count_row_inputs",
    "check_stacker",
    "check_row_aligned",
]


@dataclass(frozen=True)
class CascadeOptions:
    """Knobs of cascade calibration (documented on :func:`willow.optimize`)."""

    accuracy_target: float = 0.99
    confidence: float = 0.95
    approximate_model: Any = None
    split: tuple[float, float, float] = (0.5, 0.25, 0.25)
    random_state: int | None = 0
    cost_repeats: int = 5
    importance_repeats: int = 3
    exhaustive_max_groups: int = 4
    max_candidates: int = 16
    budgets: tuple[float, ...] = DEFAULT_BUDGETS
    pass_probability: float = 0.8
    compile: bool | str = True
    cascade: bool = True
    require_faster: bool = True
    tolerance: Any = None  # numeric outputs: agreement within it (willow.cascades.tolerance)
    early_exit: bool | str = "exact"  # model cascades inside tree ensembles (willow.early_exit)


@dataclass
class CalibrationResult:
    """Everything calibration produced; the plan is the readable part."""

    plan: CascadePlan
    costs: CostProfile
    output: OutputSpec
    model_fingerprint: str
    approximate: ApproximateModel | None = None
    layout: CascadeLayout | None = None
    function: Callable | None = None
    source: str | None = None
    compilation: CompilationResult | None = None


def _stacking_functions() -> dict[int, str]:
    import pandas as pd
    import scipy.sparse as sp

    return {
        id(sp.hstack): "scipy.sparse.hstack",
        id(np.hstack): "numpy.hstack",
        id(np.column_stack): "numpy.column_stack",
        id(np.concatenate): "numpy.concatenate",
        id(pd.concat): "pandas.concat",
    }


def call_with(fn: Callable, arguments: dict[str, Any]) -> Any:
    """Call ``fn`` with parameter values given by name (as bound by ``inspect.signature.bind``)."""
    bound = inspect.BoundArguments(inspect.signature(fn), arguments)  # type: ignore[arg-type]
    return fn(*bound.args, **bound.kwargs)


def count_row_inputs(graph: PipelineGraph, arguments: dict[str, Any]) -> int:
    """Rows in the call's row inputs, which must agree."""
    counts = {}
    for name in graph.row_parameters:
        try:
            counts[name] = n_rows(arguments[name])
        except TypeError as exc:
            raise TypeError(f"Argument {name!r}: {exc}") from exc
    if len(set(counts.values())) > 1:
        found = ", ".join(f"{k}: {v} rows" for k, v in counts.items())
        raise ValueError(
            f"Found row inputs with inconsistent numbers of rows ({found}). Every argument that "
            "feeds the features must hold the same rows; if one of them is a table rather than "
            "rows, name the row inputs with willow.optimize(..., row_args=[...])."
        )
    return next(iter(counts.values()))


def check_stacker(graph: PipelineGraph, ns: dict[str, Any]) -> None:
    assert graph.stack is not None
    func = eval(compile(ast.Expression(body=graph.stack.function), graph.filename, "eval"), ns)
    if id(func) not in _stacking_functions():
        st = graph.statements[graph.stack.statement]
        raise UnsupportedPipelineError(
            f"{graph.filename}:{st.lineno}: `{ast.unparse(graph.stack.function)}` is "
            f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', func)}, not one of "
            f"the stacking functions willow recognises ({', '.join(sorted(_stacking_functions().values()))}). "
            "Pass strict=False to willow.optimize to run this function unoptimized."
        )


def check_row_aligned(graph: PipelineGraph, ns: dict[str, Any], names: Sequence[str], rows: int) -> None:
    for name in names:
        try:
            found = n_rows(ns[name])
        except TypeError:
            found = None
        if found != rows:
            definition = None
            for st in graph.statements:
                if name in st.defines:
                    definition = st
            where = f"{graph.filename}:{definition.lineno}: " if definition else ""
            raise UnsupportedPipelineError(
                f"{where}`{name}` depends on the input rows, but on a batch of {rows} rows it "
                f"holds {found if found is not None else 'no'} rows ({type(ns[name]).__name__}); "
                "a cascade narrows such values to the uncertain rows, so they must have one entry "
                "per row. If an argument is a table rather than rows, name the row inputs with "
                "willow.optimize(..., row_args=[...]); otherwise pass strict=False."
            )


def _labels(y: Any, n: int, output: OutputSpec) -> np.ndarray | None:
    if y is None:
        return None
    labels = np.asarray(y)
    if labels.ndim != 1 or len(labels) != n:
        raise ValueError(
            f"y must hold one label per calibration row: expected shape ({n},), got {labels.shape}."
        )
    if output.classes is not None:
        unknown = sorted(set(np.unique(labels).tolist()) - set(output.classes.tolist()), key=str)
        if unknown:
            raise ValueError(
                f"y contains labels {unknown[:10]} that the model does not predict (model.classes_: "
                f"{output.classes.tolist()[:20]}). Pass labels in the model's own classes."
            )
    return labels


def _node_budget(options: CascadeOptions) -> CompileBudget:
    """The calibration run's compile-time budget (``compile=True``; none for ``"eager"``/``"all"``)."""
    return current_budget(options.compile)


class _OpsHolder:
    """What ``_willow`` is while calibration runs the compiled graph: just the operators."""

    def __init__(self, operators: Any) -> None:
        self.ops = operators


def compile_for_calibration(
    graph: PipelineGraph,
    fn: Callable,
    runner: StatementRunner,
    tune_arguments: dict[str, Any],
    python_costs: CostProfile,
    options: Any,
) -> tuple[CompilationResult | None, CostProfile, tuple[PipelineGraph, StatementRunner, dict, Any] | None]:
    """Run the compiler pass on ``graph`` for calibration (cascades and top-K plans alike).

    Compiles what can be lowered (verified on the tune rows), keeps the kernels that measured
    faster than Python (``options.cost_repeats`` timed runs) and fuses a text pipeline when it
    can. Returns the compilation (``None`` when nothing was even tried), the cost profile of the
    kept version of every statement and, when some kernel is kept, ``(compiled graph, its
    runner, its namespace and model output on the tune rows)``.
    """
    from willow.compiler.lowering import lower

    n_tune = python_costs.n_rows
    compilation = compile_graph(graph, runner, tune_arguments, lower, _node_budget(options))
    costs = python_costs
    if compilation.nodes:
        compiled_runner = StatementRunner(
            compilation.graph, fn, extra={RUNTIME: _OpsHolder(compilation.operators)}
        )
        compiled_costs, _, _ = profile_costs(
            compilation.graph, compiled_runner, tune_arguments, n_tune, repeats=options.cost_repeats
        )
        every_node = compilation
        compilation, costs = keep_faster(compilation, graph, python_costs, compiled_costs)
        if _dropped_a_vectorizer(every_node, compilation):
            # a vectorizer whose own kernel timed slower than scikit-learn (small, noisy
            # calibration batches) still belongs in a fused kernel, which never runs it alone
            fused, run = _run_and_fuse(every_node, fn, tune_arguments)
            if fused.fused is not None:
                return fused, compiled_costs, run
    if not compilation.nodes:
        return (compilation if compilation.skipped else None), costs, None
    compilation, run = _run_and_fuse(compilation, fn, tune_arguments)
    return compilation, costs, run


def _dropped_a_vectorizer(every_node: CompilationResult, kept: CompilationResult) -> bool:
    """Whether keep_faster dropped the kernel of a text vectorizer (which fusion may still use)."""
    from sklearn.feature_extraction.text import CountVectorizer, HashingVectorizer

    kept_ids = {id(n) for n in kept.nodes}
    dropped = [n for n in every_node.nodes if id(n) not in kept_ids]
    return any(isinstance(n.recipe[0], (CountVectorizer, HashingVectorizer)) for n in dropped)


def _run_and_fuse(
    compilation: CompilationResult, fn: Callable, tune_arguments: dict[str, Any]
) -> tuple[CompilationResult, tuple[PipelineGraph, StatementRunner, dict, Any]]:
    """Run the compiled graph on the tune rows and fuse its text pipeline where it can."""
    compiled_graph = compilation.graph
    compiled_runner = StatementRunner(compiled_graph, fn, extra={RUNTIME: _OpsHolder(compilation.operators)})
    ns_tune, out_tune = compiled_runner.run_all(tune_arguments)
    compilation = fuse_text_pipeline(compilation, compiled_graph, ns_tune, out_tune)
    return compilation, (compiled_graph, compiled_runner, ns_tune, out_tune)


def calibrate_cascade(
    graph: PipelineGraph,
    fn: Callable,
    arguments: dict[str, Any],
    y: Any,
    options: CascadeOptions,
) -> CalibrationResult:
    """Calibrate ``graph`` on the calibration call ``arguments`` (and labels ``y``)."""
    return calibrate_targets(graph, fn, arguments, y, options, (options.accuracy_target,))[0]


def calibrate_targets(
    graph: PipelineGraph,
    fn: Callable,
    arguments: dict[str, Any],
    y: Any,
    options: CascadeOptions,
    targets: Sequence[float],
) -> list[CalibrationResult]:
    """Calibrate once, then choose, tune and prove one plan per accuracy target in ``targets``.

    The split, costs, importances and the candidates' fitted approximate models are shared; each
    target gets its own thresholds (tuned on the tune split), its own cheapest feasible candidate
    and its own holdout proof, exactly as a single target would (:meth:`_Context.finish`). The
    split is sized for ``options.accuracy_target``, which callers set to the strictest target.
    Returns one result per target, in the order of ``targets``.

    The passes, in order: :func:`_measure` (split, costs, output, compile), :func:`_cascade_refusal`
    (why no cascade can serve, if so), permutation importance, :func:`_fit_candidates` (one
    approximate model per candidate subset) and, per target, :func:`_plan_for` (tune, choose,
    build, prove).
    """
    if not 0.0 < options.accuracy_target <= 1.0:
        raise ValueError(f"accuracy_target must be in (0, 1], got {options.accuracy_target!r}.")
    if not 0.0 < options.confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {options.confidence!r}.")
    measured = _measure(graph, fn, arguments, y, options)
    plan = _initial_plan(measured, options)
    context = _Context(
        measured.graph,
        fn,
        measured.runner,
        options,
        measured.split,
        measured.arguments_for,
        measured.costs,
        measured.output,
        measured.fingerprint,
        measured.model,
        measured.compilation,
    )
    refusal = _cascade_refusal(measured, options, targets)
    if refusal is not None:
        result = context.finish(replace(plan, reason=refusal), None, None)
        return [replace(result, plan=replace(result.plan, accuracy_target=t)) for t in targets]

    progress.stage("importance")
    importances = permutation_importance(
        measured.graph,
        measured.runner,
        measured.ns_tune,
        measured.out_tune,
        measured.output,
        options.importance_repeats,
        options.random_state,
    )
    plan = replace(plan, importances=importances)
    subsets = candidates_for(list(measured.graph.group_names), measured.costs, importances, options)
    progress.stage("candidates")
    candidates = _fit_candidates(measured, options, subsets)
    prepared: set[tuple[str, ...]] = set()  # candidates whose approximate model is compiled
    return [_plan_for(target, measured, options, plan, context, candidates, prepared) for target in targets]


@dataclass
class _Measured:
    """What the shared measurements of :func:`calibrate_targets` produced: the split, the graph
    that serves (compiled when compiling kept a kernel), its run on the tune rows, its costs and
    the output's meaning."""

    graph: PipelineGraph
    runner: StatementRunner
    split: Any
    arguments_for: Callable[[np.ndarray], dict[str, Any]]
    n_tune: int
    python_costs: CostProfile
    costs: CostProfile
    ns_tune: dict[str, Any]
    out_tune: Any
    model: Any
    template: Any  # the estimator the approximate models clone
    output: OutputSpec
    labels: np.ndarray | None
    fingerprint: str
    compilation: CompilationResult | None


def _rows_of(row_parameters: tuple[str, ...], arguments: dict[str, Any], rows: np.ndarray) -> dict[str, Any]:
    """The calibration call's ``arguments`` restricted to ``rows`` of its row inputs."""
    subset = dict(arguments)
    for name in row_parameters:
        subset[name] = take_rows(arguments[name], rows)
    return subset


def calibration_split(
    graph: PipelineGraph, arguments: dict[str, Any], options: CascadeOptions
) -> tuple[Any, Callable[[np.ndarray], dict[str, Any]]]:
    """The calibration call's train/tune/holdout split (duplicate rows kept in one part) and a
    function giving the call's ``arguments`` restricted to some rows. A pure function of the
    call and ``options``, so a later stage (:mod:`willow.early_exit.behind`) recomputes the very
    split calibration used."""
    n = count_row_inputs(graph, arguments)
    groups = row_groups([arguments[name] for name in graph.row_parameters], n)
    split = split_rows(
        n, options.split, options.accuracy_target, options.confidence, options.random_state, groups
    )
    return split, partial(_rows_of, graph.row_parameters, arguments)


def _measure(
    graph: PipelineGraph, fn: Callable, arguments: dict[str, Any], y: Any, options: CascadeOptions
) -> _Measured:
    """Split the rows, run and time the graph on the tune rows, read the output's meaning and the
    labels, and compile (``options.compile``): the measurements every target shares."""
    n = count_row_inputs(graph, arguments)
    split, arguments_for = calibration_split(graph, arguments, options)
    n_tune = len(split.tune)
    tune_arguments = arguments_for(split.tune)
    runner = StatementRunner(graph, fn)
    check_prologue(graph, runner, [arguments, tune_arguments, arguments_for(split.holdout)])
    progress.stage("costing")
    python_costs, ns_tune, out_tune = profile_costs(
        graph, runner, tune_arguments, n_tune, repeats=options.cost_repeats
    )
    model = eval(compile(ast.Expression(body=graph.model_call.model), graph.filename, "eval"), ns_tune)
    output = with_tolerance(
        describe_output(graph, runner, ns_tune, out_tune, model), options.tolerance, _returned(graph)
    )
    labels = _labels(y, n, output)
    fingerprint = fingerprints.fingerprint(model)

    compilation = None
    costs = python_costs
    if options.compile:
        progress.stage("compiling")
        compilation, costs, compiled_run = compile_for_calibration(
            graph, fn, runner, tune_arguments, python_costs, options
        )
        if compiled_run is not None:
            graph, runner, ns_tune, out_tune = compiled_run
    return _Measured(
        graph=graph,
        runner=runner,
        split=split,
        arguments_for=arguments_for,
        n_tune=n_tune,
        python_costs=python_costs,
        costs=costs,
        ns_tune=ns_tune,
        out_tune=out_tune,
        model=model,
        template=options.approximate_model if options.approximate_model is not None else model,
        output=output,
        labels=labels,
        fingerprint=fingerprint,
        compilation=compilation,
    )


def _initial_plan(measured: _Measured, options: CascadeOptions) -> CascadePlan:
    """The plan before any candidate: no cascade, with the measured costs and the split's sizes."""
    m = measured
    costs, python_costs, compilation = m.costs, m.python_costs, m.compilation
    return CascadePlan(
        cascade=False,
        reason="",
        method=m.graph.model_call.method,
        groups=m.graph.group_names,
        group_seconds_per_row={g.name: g.total_seconds_per_row for g in costs.groups},
        importances={},
        selected=(),
        threshold=float("inf"),
        original_seconds_per_row=python_costs.total_seconds_per_row,
        expected_seconds_per_row=costs.total_seconds_per_row,
        expected_speedup=python_costs.total_seconds_per_row / costs.total_seconds_per_row,
        confident_fraction=0.0,
        agreement=1.0,
        lower_bound=0.0,
        accuracy_target=options.accuracy_target,
        confidence=options.confidence,
        train_rows=len(m.split.train),
        tune_rows=m.n_tune,
        holdout_rows=0,
        duplicate_rows=m.split.duplicate_rows,
        tolerance=describe_tolerance(options.tolerance) if options.tolerance is not None else "",
        approximate_model=type(m.template).__name__,
        trained_on="labels y" if m.labels is not None else "the full model's predictions (distillation)",
        compiled_nodes=len(compilation.nodes) if compilation else 0,
        compiled_seconds_per_row=costs.total_seconds_per_row if compilation and compilation.nodes else None,
    )


def _cascade_refusal(measured: _Measured, options: CascadeOptions, targets: Sequence[float]) -> str | None:
    """Why no cascade can serve this pipeline (then the pipeline without one is proven and
    served), or ``None``. Raises when the feature groups are not row-aligned."""
    graph, ns_tune = measured.graph, measured.ns_tune
    if not options.cascade:
        return "cascades are disabled (cascade=False)."
    if measured.output.decision == "numbers" and options.tolerance is None:
        return (
            f"the function returns numbers ({_returned(graph)}), not a decision per row: a cascade "
            "would change those values, so the compiled pipeline serves every row (exactly). "
            "Pass tolerance= to cascade it with agreement meaning 'within tolerance of the original'."
        )
    if graph.post is not None:
        problem = post_rowwise_problem(
            graph, measured.runner, ns_tune, measured.out_tune, measured.n_tune, options.random_state
        )
        if problem:
            return problem
    if measured.output.classes is None and options.tolerance is None:
        if measured.output.decision == "post" and measured.output.margin_threshold is not None:
            return (
                f"the model ({type(measured.model).__name__}) has no classes_, and feature cascades "
                "approximate a classifier: a thresholded prediction of a model without classes gets "
                "none (a model cascade inside a tree ensemble may still keep its decision, "
                "willow.early_exit)."
            )
        return (
            f"the model ({type(measured.model).__name__}) has no classes_: classification cascades need a "
            "classifier. For a regressor, pass tolerance= to cascade it within a tolerance of the "
            "original (willow.cascades.tolerance); top-K queries are the other approximate path."
        )
    if graph.stack is None:
        return " ".join(graph.notes) or "the model reads a single feature group."
    check_stacker(graph, ns_tune)
    check_row_aligned(graph, ns_tune, [g.variable for g in graph.groups], measured.n_tune)
    if min(targets) >= 1.0:
        return _EXACT_TARGET
    return None


@dataclass
class _Candidates:
    """The candidate subsets of groups and, for each, its approximate model as fitted on the
    train rows and measured on the tune rows (or why it failed to fit)."""

    subsets: list[tuple[str, ...]]
    failures: dict[tuple[str, ...], CandidateResult]
    # subset -> (confidence per tune row, agreement per tune row, approximate seconds per row)
    tuned: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray, float]]
    fitted: dict[tuple[str, ...], tuple[ApproximateModel, CascadeLayout]]


def _fit_candidates(
    measured: _Measured, options: CascadeOptions, subsets: list[tuple[str, ...]]
) -> _Candidates:
    """Fit an approximate model per candidate subset on the train rows (on labels ``y`` or the
    full model's own outputs), and measure its confidence, agreement and cost on the tune rows."""
    m = measured
    graph, runner, ns_tune, output = m.graph, m.runner, m.ns_tune, m.output
    ns_train, out_train = runner.run_all(m.arguments_for(m.split.train))
    train_labels = m.labels[m.split.train] if m.labels is not None else output.labels(out_train)
    tune_returned = runner.post(ns_tune, m.out_tune)
    tune_reference = output.decisions(tune_returned)
    candidates = _Candidates(list(subsets), {}, {}, {})
    for subset in subsets:
        layout = layout_cascade(graph, subset)
        check_row_aligned(
            graph, ns_tune, [v for v in layout.row_subsets if v not in graph.row_parameters], m.n_tune
        )
        expression = compile(ast.Expression(body=stack_expression(graph, subset)), graph.filename, "eval")
        try:
            features = eval(expression, ns_train)
            if options.tolerance is None:
                approx = fit_approximate_model(m.template, features, train_labels, output)
            else:
                approx = fit_numeric_model(m.template, features, train_labels, output, options.random_state)
        except Exception as exc:  # noqa: BLE001 - any fitting failure just rules the candidate out
            note = f"approximate model failed to fit: {type(exc).__name__}: {exc}"[:160]
            candidates.failures[subset] = CandidateResult(
                subset, float("inf"), 0.0, float("inf"), 0.0, 0.0, 0.0, 0.0, note=note
            )
            continue
        rows, confidence = approx.predict_with_confidence(eval(expression, ns_tune))
        if options.tolerance is None:
            agrees = _row_equal(output.decisions(runner.post(ns_tune, rows)), tune_reference)
        else:
            agrees = output.agreement(runner.post(ns_tune, rows), tune_returned)
        approx_seconds = (
            median_seconds(
                lambda approx=approx, expression=expression: approx.predict_with_confidence(
                    eval(expression, ns_tune)
                )
            )
            / m.n_tune
        )
        candidates.tuned[subset] = (confidence, agrees, approx_seconds)
        candidates.fitted[subset] = (approx, layout)
    return candidates


def _tuned_for(
    target: float, measured: _Measured, options: CascadeOptions, candidates: _Candidates
) -> list[CandidateResult]:
    """Every candidate with its threshold tuned to ``target`` on the tune split."""
    costs = measured.costs
    full_path = costs.stack_seconds_per_row + costs.model_seconds_per_row
    results: list[CandidateResult] = []
    for subset in candidates.subsets:
        if subset in candidates.failures:
            results.append(candidates.failures[subset])
            continue
        confidence, agrees, approx_seconds = candidates.tuned[subset]
        choice = tune_threshold(
            confidence,
            agrees,
            target,
            options.confidence,
            len(measured.split.holdout),
            options.pass_probability,
        )
        expected = (
            costs.kept_seconds_per_row
            + costs.features_cost(subset)
            + approx_seconds
            + (1.0 - choice.confident_fraction) * (costs.remaining_cost(subset) + full_path)
        )
        results.append(
            CandidateResult(
                groups=subset,
                expected_seconds_per_row=expected,
                expected_speedup=measured.python_costs.total_seconds_per_row / expected
                if expected > 0
                else float("inf"),
                threshold=choice.threshold,
                confident_fraction=choice.confident_fraction,
                tune_agreement=choice.agreement,
                tune_lower_bound=choice.lower_bound,
                approximate_seconds_per_row=approx_seconds,
                note="" if np.isfinite(choice.threshold) else "no threshold meets the target",
            )
        )
    return results


def _plan_for(
    target: float,
    measured: _Measured,
    options: CascadeOptions,
    plan: CascadePlan,
    context: _Context,
    candidates: _Candidates,
    prepared: set[tuple[str, ...]],
) -> CalibrationResult:
    """Choose, build and prove the cascade for one accuracy target (``prepared``: the candidates
    whose approximate model is already compiled, since one can serve many tiers)."""
    costs, graph, ns_tune, compilation = (
        measured.costs,
        measured.graph,
        measured.ns_tune,
        measured.compilation,
    )
    tier_options = replace(options, accuracy_target=target)
    tier = replace(context, options=tier_options)
    tier_plan = replace(plan, accuracy_target=target)
    if target >= 1.0:
        return tier.finish(replace(tier_plan, reason=_EXACT_TARGET), None, None)
    results = _tuned_for(target, measured, options, candidates)
    tier_plan = replace(tier_plan, candidates=tuple(results))
    feasible = [r for r in results if np.isfinite(r.threshold) and r.confident_fraction > 0]
    if not feasible:
        reason = (
            f"no candidate's approximate model reached a lower {options.confidence:.0%} bound of "
            f"{target} agreement on the tune split ({measured.n_tune} rows)."
        )
        return tier.finish(replace(tier_plan, reason=reason), None, None)
    best = min(feasible, key=lambda r: r.expected_seconds_per_row)
    if best.expected_seconds_per_row >= costs.total_seconds_per_row:
        reason = (
            "no candidate is expected to be cheaper than the pipeline without a cascade "
            f"(best {best.expected_seconds_per_row * 1e6:.2f} vs {costs.total_seconds_per_row * 1e6:.2f} us/row)."
        )
        return tier.finish(replace(tier_plan, reason=reason), None, None)
    approx, layout = candidates.fitted[best.groups]
    if options.compile and best.groups not in prepared:  # one approximate model serves many tiers
        prepared.add(best.groups)
        from willow.compiler.lowering import lower

        tune_features = eval(
            compile(ast.Expression(body=stack_expression(graph, best.groups)), graph.filename, "eval"),
            ns_tune,
        )
        approx.compile(lower, tune_features, _node_budget(options))
        if compilation is not None and compilation.fused is not None:
            vectorizers = [compilation.vectorizer(g) for g in best.groups]
            approx.fuse(vectorizers, ns_tune[compilation.fused.text], tune_features)
    chosen = replace(tier_plan, selected=best.groups, threshold=best.threshold)
    return tier.finish(chosen, approx, layout)


_EXACT_TARGET = (
    "accuracy_target=1.0 asks for every prediction to match the original, which no finite "
    "sample can prove; the original pipeline runs unchanged."
)


@dataclass
class _Context:
    """What the last step needs: build the serving function and prove it on the holdout rows."""

    graph: PipelineGraph
    fn: Callable
    runner: StatementRunner
    options: CascadeOptions
    split: Any
    arguments_for: Callable[[np.ndarray], dict[str, Any]]
    costs: CostProfile
    output: OutputSpec
    fingerprint: str
    model: Any
    compilation: CompilationResult | None

    def finish(
        self, plan: CascadePlan, approx: ApproximateModel | None, layout: CascadeLayout | None
    ) -> CalibrationResult:
        """Generate the serving function for ``plan`` and verify it on the holdout split.

        A cascade must reach the agreement bound; a compiled pipeline without a cascade must
        reproduce the original exactly (probabilities to 1e-9). Otherwise the original serves.
        """
        progress.stage("proof")
        compiled = self.compilation is not None and bool(self.compilation.nodes)
        cascade = approx is not None and layout is not None
        base = CalibrationResult(
            plan, self.costs, self.output, self.fingerprint, compilation=self.compilation
        )
        if not cascade and not compiled:
            return base
        guard = ModelGuard(self.fingerprint, self.model)
        function, source = build_cascade(
            self.graph, self.fn, layout, plan.threshold, approx, self.output, guard, self.compilation
        )
        holdout = self.arguments_for(self.split.holdout)
        original_out = call_with(self.fn, holdout)
        optimized_out = call_with(function.__wrapped__, holdout)  # its own errors surface here
        n_holdout = len(self.split.holdout)
        agreements = int(self.output.agreement(optimized_out, original_out).sum())
        lower = float(clopper_pearson_lower(agreements, n_holdout, self.options.confidence))
        measured = replace(plan, agreement=agreements / n_holdout, lower_bound=lower, holdout_rows=n_holdout)
        if not cascade:
            if not same_output(optimized_out, original_out):
                return replace(
                    base,
                    plan=replace(
                        measured,
                        reason=plan.reason + " The compiled pipeline did not reproduce the original on the "
                        "holdout rows, so the original runs.",
                        compiled_nodes=0,
                        compiled_seconds_per_row=None,
                        measured_speedup=None,
                    ),
                )
            # serve the compiled pipeline only when it measured faster beyond the timing noise
            # (willow.compiler.speed_gate); require_faster=False serves it whenever it is exact
            # against what runs when the gate refuses: the function as written (the front end's
            # rewrite alone may be faster, e.g. fitted models handed to helpers as fast views)
            as_written = getattr(self.fn, "__willow_original__", self.fn)
            verdict = measure_speed(
                lambda: call_with(as_written, holdout),
                lambda: call_with(function, holdout),
                max(GATE_REPEATS, self.options.cost_repeats),
                max_rounds=GATE_ROUNDS if self.options.require_faster else 1,
            )
            measured = replace(measured, measured_speedup=verdict.speedup)
            if self.options.require_faster and not verdict.faster:
                reason = (
                    f"{plan.reason} The compiled pipeline reproduced the original on the holdout rows, "
                    f"but {verdict.describe()}, so the original runs (require_faster=False serves it "
                    "anyway)."
                ).strip()
                return replace(
                    base,
                    plan=replace(
                        measured,
                        reason=reason,
                        compiled_nodes=0,
                        compiled_seconds_per_row=None,
                        measured_speedup=None,
                    ),
                )
            if self.options.require_faster:
                measured = replace(
                    measured,
                    reason=f"{plan.reason} The compiled pipeline is served: {verdict.describe()}.".strip(),
                )
            return replace(base, plan=measured, function=function, source=source)
        assert approx is not None
        ns_holdout = self.runner.run(self.runner.namespace(holdout))
        expression = compile(
            ast.Expression(body=stack_expression(self.graph, plan.selected)), self.graph.filename, "eval"
        )
        _, holdout_confidence = approx.predict_with_confidence(eval(expression, ns_holdout))
        uncertain = ~(holdout_confidence >= plan.threshold)
        confident_fraction = 1.0 - float(uncertain.mean())
        best = next(c for c in plan.candidates if c.groups == plan.selected)
        full_path = self.costs.stack_seconds_per_row + self.costs.model_seconds_per_row
        expected = (
            self.costs.kept_seconds_per_row
            + self.costs.features_cost(plan.selected)
            + best.approximate_seconds_per_row
            + (1.0 - confident_fraction) * (self.costs.remaining_cost(plan.selected) + full_path)
        )
        measured = replace(
            measured,
            expected_seconds_per_row=expected,
            expected_speedup=plan.original_seconds_per_row / expected,
            confident_fraction=confident_fraction,
        )
        rows = np.flatnonzero(uncertain)
        if not same_output(take_rows(optimized_out, rows), take_rows(original_out, rows)):
            reason = (
                "on the holdout rows the full pipeline gave different outputs for a subset of rows "
                "than for the whole batch, so this function does not compute its rows independently "
                "and cannot be cascaded."
            )
            return self.finish(_without_cascade(measured, reason, self.costs), None, None)
        if lower < self.options.accuracy_target:
            reason = (
                f"the best candidate ({'+'.join(plan.selected)}) agreed with the original on "
                f"{agreements}/{n_holdout} holdout rows, a lower {self.options.confidence:.0%} bound of "
                f"{lower:.4f}, below accuracy_target={self.options.accuracy_target}. More calibration "
                "rows or a lower target may allow a cascade."
            )
            return self.finish(_without_cascade(measured, reason, self.costs), None, None)
        timed = [lambda: call_with(self.fn, holdout), lambda: call_with(function, holdout)]
        if compiled:
            without, _ = build_cascade(
                self.graph, self.fn, None, 0.0, None, self.output, guard, self.compilation
            )
            timed.append(lambda: call_with(without, holdout))
        seconds = interleaved_seconds(timed, max(3, self.options.cost_repeats))
        measured = replace(measured, measured_speedup=seconds[0] / seconds[1])
        alternative = "compiled pipeline" if compiled else "original pipeline"
        alternative_seconds = seconds[2] if compiled else seconds[0]
        if self.options.require_faster and seconds[1] >= alternative_seconds:
            reason = (
                f"the cascade ({'+'.join(plan.selected)}) met the accuracy target on the holdout rows "
                f"(lower bound {lower:.4f}) but measured slower there than the {alternative} "
                f"({seconds[1] * 1e3:.2f} ms vs {alternative_seconds * 1e3:.2f} ms for "
                f"{n_holdout} rows): per-call overheads the per-row cost model does not see outweigh "
                f"what it saves, so the {alternative} runs (require_faster=False serves it anyway)."
            )
            dropped = _without_cascade(measured, reason, self.costs)
            if compiled:  # the compiled pipeline was just timed on these rows: keep that figure
                dropped = replace(dropped, measured_speedup=seconds[0] / seconds[2])
            return self.finish(dropped, None, None)
        return replace(
            base,
            plan=replace(
                measured,
                cascade=True,
                reason=f"cascade proven on the holdout split, judged on {self.output.describe()}",
            ),
            approximate=approx,
            layout=layout,
            function=function,
            source=source,
        )


def _without_cascade(plan: CascadePlan, reason: str, costs: CostProfile) -> CascadePlan:
    """``plan`` turned into "no cascade", keeping the holdout figures that explain why."""
    return replace(
        plan,
        reason=reason,
        rejected_agreement=plan.agreement,
        rejected_lower_bound=plan.lower_bound,
        agreement=1.0,
        lower_bound=0.0,
        holdout_rows=0,
        expected_seconds_per_row=costs.total_seconds_per_row,
        expected_speedup=plan.original_seconds_per_row / costs.total_seconds_per_row,
        confident_fraction=0.0,
        measured_speedup=None,
    )


def build_cascade(
    graph: PipelineGraph,
    fn: Callable,
    layout: CascadeLayout | None,
    threshold: float,
    approximate: ApproximateModel | None,
    output: OutputSpec,
    guard: ModelGuard,
    compilation: CompilationResult | None = None,
) -> tuple[Callable, str]:
    """Generate and compile the serving function (a cascade when ``layout`` is given, otherwise
    the compiled pipeline); return it and its rendered source. The function fails the way ``fn``
    does: on 0 rows it runs ``fn``, and when it raises, ``fn``'s own error is raised
    (:func:`~willow.cascades.runtime.with_original_errors`)."""
    objects = compilation.guarded if compilation is not None else ()
    original = getattr(fn, "__willow_original__", fn)  # the function as written (see frontend.driver)
    runtime = ServingRuntime(
        approximate,
        output,
        original,
        guard,
        operators=compilation.operators if compilation is not None else None,
        objects=tuple(obj for _, obj in objects),
    )
    exprs = [expr for expr, _ in objects]
    fused = compilation.fused if compilation is not None else None
    threshold_source = getattr(output, "threshold_source", None)
    if layout is not None:
        use_fused = fused if approximate is not None and approximate.fused else None
        func_ast = build_cascade_source(graph, layout, threshold, exprs, use_fused, threshold_source)
    else:
        # an operator calibrated for the output's threshold (a thresholded model cascade) holds
        # only while the threshold does
        reads = compilation is not None and any(
            getattr(op, "reads_threshold", False) for op in vars(compilation.operators).values()
        )
        func_ast = build_compiled_source(graph, exprs, fused, threshold_source if reads else None)
    runtime.ops = resident_operators(func_ast, runtime.ops)  # device values between device nodes
    function, source = materialize(func_ast, fn, runtime, graph.function_name)
    return with_original_errors(function, original), source


def _row_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    same = np.asarray(a == b)
    return same.reshape(len(a), -1).all(axis=1) if same.ndim > 1 else same


def _returned(graph: PipelineGraph) -> str:
    node = graph.post.statements[-1] if graph.post is not None else graph.model_call.node
    return f"line {node.lineno}: `{ast.unparse(node).splitlines()[0]}`"


def describe_output(
    graph: PipelineGraph, runner: StatementRunner, ns: dict[str, Any], raw: Any, model: Any
) -> OutputSpec:
    """The :class:`OutputSpec` of the model's raw output ``raw`` (a completed run in ``ns``), with
    what the cascade is judged on: what the function returns from it."""
    output = OutputSpec.from_output(graph.model_call.method, raw, model)
    margin = None
    # a threshold on probabilities or scores, or on the numbers of a model without classes (a
    # regressor's, a LightGBM Booster's probabilities): what model cascades may keep the side of
    thresholdable = output.method in ("predict_proba", "decision_function") or (
        output.method == "predict" and output.classes is None
    )
    if graph.post is not None and thresholdable:
        assigned = set().union(*(st.defines for st in graph.statements)) if graph.statements else set()
        margin = find_margin(graph.post.statements, graph.post.variable, ns, output.n_columns, assigned)
    return output.judged_on(runner.post(ns, raw), raw, margin)


def check_prologue(graph: PipelineGraph, runner: StatementRunner, batches: Sequence[dict[str, Any]]) -> None:
    """The function's leading early-return guards must let calibration batches through."""
    for batch in batches:
        if runner.prologue_returns(batch):
            node = graph.prologue[-1]
            raise UnsupportedPipelineError(
                f"{graph.filename}:{node.lineno}: the early return `{ast.unparse(node).splitlines()[0]}` "
                "answers a calibration batch itself, so willow cannot measure the pipeline behind it. "
                "Calibrate on a batch the guard lets through (more rows), or pass strict=False."
            )


def post_rowwise_problem(
    graph: PipelineGraph,
    runner: StatementRunner,
    ns: dict[str, Any],
    raw: Any,
    n: int,
    random_state: int | None,
) -> str:
    """Why the post-processing is not row by row ("" when it is): a cascade applies it to the
    merged output of two row sets, which is only right when ``post(rows)`` equals ``post(all)``
    restricted to those rows. Checked on a seeded half of the calibration rows."""
    assert graph.post is not None
    try:
        everything = runner.post(ns, raw)
        rows = np.sort(np.random.default_rng(random_state).permutation(n)[: max(1, n // 2)])
        narrowed = dict(ns)
        for name in graph.post.reads:
            definition = next((st.index for st in reversed(graph.statements) if name in st.defines), None)
            row_aligned = (definition is None and name in graph.row_parameters) or (
                definition is not None and definition in graph.row_dependent
            )
            if row_aligned:
                narrowed[name] = take_rows(ns[name], rows)
        part = runner.post(narrowed, take_rows(raw, rows))
        same = n_rows(everything) == n and same_output(part, take_rows(everything, rows))
    except Exception as exc:  # noqa: BLE001 - whatever fails here, the output is not row by row
        same, detail = False, f" ({type(exc).__name__}: {exc})"
    else:
        detail = ""
    if same:
        return ""
    return (
        f"what the function does with the model's output (line {graph.post.lineno}) is not row by row"
        f"{detail}: on half of the calibration rows it did not return those rows' part of the result "
        "on all of them, so a cascade could not merge its two row sets; the compiled pipeline serves "
        "every row (exactly)."
    )
