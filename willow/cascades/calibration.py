"""Calibrate a cascade: split, measure, choose, tune and prove.

This is the driver that strings the cascade stages together on a traced pipeline:

1. split the calibration rows into train / tune / holdout (seeded);
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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from willow.cascades.approximate import ApproximateModel, fit_approximate_model
from willow.cascades.bounds import clopper_pearson_lower
from willow.cascades.importance import permutation_importance
from willow.cascades.outputs import OutputSpec
from willow.cascades.plan import CandidateResult, CascadePlan
from willow.cascades.runtime import CascadeRuntime, ModelGuard, model_fingerprint
from willow.cascades.selection import DEFAULT_BUDGETS, candidate_subsets
from willow.cascades.splits import split_rows
from willow.cascades.threshold import tune_threshold
from willow.compiler.codegen import (
    CascadeLayout,
    build_cascade_source,
    layout_cascade,
    materialize,
    stack_expression,
)
from willow.compiler.execution import StatementRunner
from willow.compiler.graph import PipelineGraph
from willow.compiler.profiling import CostProfile, profile_costs
from willow.errors import UnsupportedPipelineError
from willow.rows import n_rows, take_rows

__all__ = [
    "CascadeOptions",
    "CalibrationResult",
    "calibrate_cascade",
    "build_cascade",
    "call_with",
    "count_row_inputs",
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


def _check_stacker(graph: PipelineGraph, ns: dict[str, Any]) -> None:
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


def _check_row_aligned(graph: PipelineGraph, ns: dict[str, Any], names: Sequence[str], rows: int) -> None:
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


def _median_seconds(fn: Callable[[], Any], repeats: int = 3) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return float(np.median(samples))


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


def calibrate_cascade(
    graph: PipelineGraph,
    fn: Callable,
    arguments: dict[str, Any],
    y: Any,
    options: CascadeOptions,
) -> CalibrationResult:
    """Calibrate a cascade for ``graph`` on the calibration call ``arguments`` (and labels ``y``)."""
    if not 0.0 < options.accuracy_target <= 1.0:
        raise ValueError(f"accuracy_target must be in (0, 1], got {options.accuracy_target!r}.")
    if not 0.0 < options.confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {options.confidence!r}.")
    n = count_row_inputs(graph, arguments)
    split = split_rows(n, options.split, options.accuracy_target, options.confidence, options.random_state)

    def arguments_for(rows: np.ndarray) -> dict[str, Any]:
        subset = dict(arguments)
        for name in graph.row_parameters:
            subset[name] = take_rows(arguments[name], rows)
        return subset

    runner = StatementRunner(graph, fn)
    n_tune = len(split.tune)
    costs, ns_tune, out_tune = profile_costs(
        graph, runner, arguments_for(split.tune), n_tune, repeats=options.cost_repeats
    )
    model = eval(compile(ast.Expression(body=graph.model_call.model), graph.filename, "eval"), ns_tune)
    output = OutputSpec.from_output(graph.model_call.method, out_tune, model)
    labels = _labels(y, n, output)
    fingerprint = model_fingerprint(model)
    template = options.approximate_model if options.approximate_model is not None else model
    plan = CascadePlan(
        cascade=False,
        reason="",
        method=graph.model_call.method,
        groups=graph.group_names,
        group_seconds_per_row={g.name: g.total_seconds_per_row for g in costs.groups},
        importances={},
        selected=(),
        threshold=float("inf"),
        original_seconds_per_row=costs.total_seconds_per_row,
        expected_seconds_per_row=costs.total_seconds_per_row,
        expected_speedup=1.0,
        confident_fraction=0.0,
        agreement=1.0,
        lower_bound=0.0,
        accuracy_target=options.accuracy_target,
        confidence=options.confidence,
        train_rows=len(split.train),
        tune_rows=n_tune,
        holdout_rows=0,
        approximate_model=type(template).__name__,
        trained_on="labels y" if labels is not None else "the full model's predictions (distillation)",
    )

    def no_cascade(reason: str, **changes: Any) -> CalibrationResult:
        return CalibrationResult(replace(plan, reason=reason, **changes), costs, output, fingerprint)

    if graph.stack is None:
        return no_cascade(" ".join(graph.notes) or "the model reads a single feature group.")
    _check_stacker(graph, ns_tune)
    _check_row_aligned(graph, ns_tune, [g.variable for g in graph.groups], n_tune)
    if options.accuracy_target >= 1.0:
        return no_cascade(
            "accuracy_target=1.0 asks for every prediction to match the original, which no finite "
            "sample can prove; the original pipeline runs unchanged."
        )

    importances = permutation_importance(
        graph, runner, ns_tune, out_tune, output, options.importance_repeats, options.random_state
    )
    plan = replace(plan, importances=importances)
    names = list(graph.group_names)
    subsets = candidate_subsets(
        names,
        [costs.group(g).total_seconds_per_row for g in names],
        [importances[g] for g in names],
        exhaustive_max_groups=options.exhaustive_max_groups,
        budgets=options.budgets,
        max_candidates=options.max_candidates,
    )
    ns_train, out_train = runner.run_all(arguments_for(split.train))
    train_labels = labels[split.train] if labels is not None else output.labels(out_train)
    tune_reference = output.labels(out_tune)
    full_path = costs.stack_seconds_per_row + costs.model_seconds_per_row

    results: list[CandidateResult] = []
    fitted: dict[tuple[str, ...], tuple[ApproximateModel, CascadeLayout]] = {}
    for subset in subsets:
        layout = layout_cascade(graph, subset)
        _check_row_aligned(
            graph, ns_tune, [v for v in layout.row_subsets if v not in graph.row_parameters], n_tune
        )
        expression = compile(ast.Expression(body=stack_expression(graph, subset)), graph.filename, "eval")
        try:
            approx = fit_approximate_model(template, eval(expression, ns_train), train_labels, output)
        except Exception as exc:  # noqa: BLE001 - any fitting failure just rules the candidate out
            results.append(
                CandidateResult(
                    subset,
                    float("inf"),
                    0.0,
                    float("inf"),
                    0.0,
                    0.0,
                    0.0,
                    0.0,
                    note=f"approximate model failed to fit: {type(exc).__name__}: {exc}"[:160],
                )
            )
            continue
        rows, confidence = approx.predict_with_confidence(eval(expression, ns_tune))
        agrees = output.labels(rows) == tune_reference
        choice = tune_threshold(
            confidence,
            agrees,
            options.accuracy_target,
            options.confidence,
            len(split.holdout),
            options.pass_probability,
        )
        approx_seconds = (
            _median_seconds(
                lambda approx=approx, expression=expression: approx.predict_with_confidence(
                    eval(expression, ns_tune)
                )
            )
            / n_tune
        )
        expected = (
            costs.kept_seconds_per_row
            + costs.features_cost(subset)
            + approx_seconds
            + (1.0 - choice.confident_fraction) * (costs.remaining_cost(subset) + full_path)
        )
        note = "" if np.isfinite(choice.threshold) else "no threshold meets the target"
        results.append(
            CandidateResult(
                groups=subset,
                expected_seconds_per_row=expected,
                expected_speedup=costs.total_seconds_per_row / expected if expected > 0 else float("inf"),
                threshold=choice.threshold,
                confident_fraction=choice.confident_fraction,
                tune_agreement=choice.agreement,
                tune_lower_bound=choice.lower_bound,
                approximate_seconds_per_row=approx_seconds,
                note=note,
            )
        )
        fitted[subset] = (approx, layout)
    plan = replace(plan, candidates=tuple(results))
    feasible = [r for r in results if np.isfinite(r.threshold) and r.confident_fraction > 0]
    if not feasible:
        return no_cascade(
            f"no candidate's approximate model reached a lower {options.confidence:.0%} bound of "
            f"{options.accuracy_target} agreement on the tune split ({n_tune} rows)."
        )
    best = min(feasible, key=lambda r: r.expected_seconds_per_row)
    if best.expected_seconds_per_row >= costs.total_seconds_per_row:
        return no_cascade(
            "no candidate is expected to be cheaper than the original pipeline "
            f"(best {best.expected_seconds_per_row * 1e6:.2f} vs "
            f"{costs.total_seconds_per_row * 1e6:.2f} us/row)."
        )
    approx, layout = fitted[best.groups]
    function, source = build_cascade(
        graph, fn, layout, best.threshold, approx, output, ModelGuard(fingerprint, model)
    )

    # Holdout: run the real generated cascade and the real original on rows nothing else saw.
    holdout_arguments = arguments_for(split.holdout)
    original_out = call_with(fn, holdout_arguments)
    cascade_out = call_with(function, holdout_arguments)
    ns_holdout = runner.run(runner.namespace(holdout_arguments))
    expression = compile(ast.Expression(body=stack_expression(graph, best.groups)), graph.filename, "eval")
    _, holdout_confidence = approx.predict_with_confidence(eval(expression, ns_holdout))
    uncertain = ~(holdout_confidence >= best.threshold)
    n_holdout = len(split.holdout)
    agreement_rows = output.agreement(cascade_out, original_out)
    agreements = int(agreement_rows.sum())
    lower = float(clopper_pearson_lower(agreements, n_holdout, options.confidence))
    confident_fraction = 1.0 - float(uncertain.mean())
    expected = (
        costs.kept_seconds_per_row
        + costs.features_cost(best.groups)
        + best.approximate_seconds_per_row
        + (1.0 - confident_fraction) * (costs.remaining_cost(best.groups) + full_path)
    )
    proven = replace(
        plan,
        selected=best.groups,
        threshold=best.threshold,
        expected_seconds_per_row=expected,
        expected_speedup=costs.total_seconds_per_row / expected,
        confident_fraction=confident_fraction,
        agreement=agreements / n_holdout,
        lower_bound=lower,
        holdout_rows=n_holdout,
    )
    full_rows_match = _same_rows(output, cascade_out[uncertain], np.asarray(original_out)[uncertain])
    if not full_rows_match:
        return CalibrationResult(
            replace(
                proven,
                cascade=False,
                reason="on the holdout rows the full pipeline gave different outputs for a subset "
                "of rows than for the whole batch, so this function does not compute its rows "
                "independently and cannot be cascaded.",
            ),
            costs,
            output,
            fingerprint,
        )
    if lower < options.accuracy_target:
        return CalibrationResult(
            replace(
                proven,
                cascade=False,
                reason=f"the best candidate ({'+'.join(best.groups)}) agreed with the original on "
                f"{agreements}/{n_holdout} holdout rows, a lower {options.confidence:.0%} bound of "
                f"{lower:.4f}, below accuracy_target={options.accuracy_target}. More calibration "
                "rows or a lower target may allow a cascade.",
            ),
            costs,
            output,
            fingerprint,
        )
    return CalibrationResult(
        replace(proven, cascade=True, reason="cascade proven on the holdout split"),
        costs,
        output,
        fingerprint,
        approximate=approx,
        layout=layout,
        function=function,
        source=source,
    )


def build_cascade(
    graph: PipelineGraph,
    fn: Callable,
    layout: CascadeLayout,
    threshold: float,
    approximate: ApproximateModel,
    output: OutputSpec,
    guard: ModelGuard,
) -> tuple[Callable, str]:
    """Generate and compile the cascaded function; return it and its rendered source."""
    runtime = CascadeRuntime(approximate, output, fn, guard)
    func_ast = build_cascade_source(graph, layout, threshold)
    return materialize(func_ast, fn, runtime, graph.function_name)


def _same_rows(output: OutputSpec, a: np.ndarray, b: np.ndarray) -> bool:
    if output.method == "predict":
        return bool(np.array_equal(a, b))
    return bool(np.allclose(a, b, rtol=1e-9, atol=1e-12))
