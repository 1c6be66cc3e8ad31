"""Top-K queries on an :class:`~willow.OptimizedPipeline`: calibration, answers and reporting.

:mod:`willow.api` delegates here so that the pipeline class only gains a few small hooks.
A query returns the positions (0-based row numbers of the row inputs, not pandas index labels)
of the K highest-scoring rows, best first, ties broken by the lowest position; with
``return_scores=True`` it returns ``(positions, scores)``, the scores being the full model's.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from willow.cascades.runtime import ModelGuard
from willow.compiler.execution import bind_arguments
from willow.errors import UnsupportedPipelineError
from willow.topk.approximate import ApproximateScorer
from willow.topk.calibration import DEFAULT_FRACTIONS, TopKCalibration, TopKOptions, calibrate_topk
from willow.topk.plan import TopKPlan
from willow.topk.ranking import check_k
from willow.topk.runtime import ExactScorer, exact_top_k

if TYPE_CHECKING:
    from willow.api import OptimizedPipeline

__all__ = [
    "QUERIES",
    "DEFAULT_FRACTIONS",
    "topk_options",
    "calibrate_pipeline",
    "answer",
    "install",
    "saved_state",
    "restore",
    "explain_lines",
]

QUERIES = ("predict", "topk")


def topk_options(pipeline: OptimizedPipeline) -> TopKOptions:
    """The pipeline's options as top-K calibration knobs."""
    return pipeline.options.topk_options()


def calibrate_pipeline(
    pipeline: OptimizedPipeline,
    arguments: dict[str, Any],
    graph: Any = None,
    fn: Callable | None = None,
) -> TopKCalibration:
    """Calibrate a ``query="topk"`` pipeline on bound calibration ``arguments`` (``graph`` and
    ``fn``: the front end's normalized function and its graph, default the pipeline's own)."""
    graph = graph if graph is not None else pipeline.graph_
    assert graph is not None
    fn = fn if fn is not None else pipeline.__wrapped__
    return calibrate_topk(graph, fn, arguments, topk_options(pipeline))


RESERVED = ("k", "return_scores")
"""Keywords of ``top_k()`` itself: a function's own parameters of these names go positionally."""


def _reserved(fn: Callable) -> list[inspect.Parameter]:
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return []
    return [parameters[name] for name in RESERVED if name in parameters]


def check_signature(fn: Callable) -> None:
    """For ``query="topk"``: refuse a function whose keyword-only parameter is named like a
    ``top_k()`` keyword (``k``, ``return_scores``), since no call could ever pass it."""
    for parameter in _reserved(fn):
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY:
            raise TypeError(
                f"{fn.__qualname__} has a keyword-only parameter `{parameter.name}`, but in a "
                f'query="topk" pipeline `{parameter.name}=` is the top-K query\'s own keyword '
                "(k: how many rows to return; return_scores: also return their scores), so no call "
                f"could pass the function's `{parameter.name}`. Rename the parameter (e.g. "
                f"`{parameter.name}_`), or make it positional and pass it positionally."
            )


def check_call(pipeline: OptimizedPipeline, args: tuple, kwargs: dict) -> None:
    """Explain, instead of a bare binding error, how to pass the function's own ``k`` or
    ``return_scores``: positionally, since ``k=`` and ``return_scores=`` belong to the query."""
    fn = pipeline.__wrapped__
    for name in RESERVED:
        if name in kwargs:
            raise TypeError(
                f"{pipeline.__qualname__}(...) answers its declared top-K query (k={pipeline.k}); "
                f"`{name}=` is a keyword of the query, not of the function. Use "
                f".top_k(..., k=<K>, return_scores=...) for another K or the scores, and pass the "
                f"function's own `{name}` (if it has one) positionally."
            )
    positional = [
        p
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    for parameter in _reserved(fn):
        if parameter.default is not inspect.Parameter.empty:
            continue
        index = next((i for i, p in enumerate(positional) if p.name == parameter.name), None)
        if index is None or len(args) <= index:
            raise TypeError(
                f"{fn.__qualname__} has its own parameter `{parameter.name}`, which a top-K query "
                f"cannot take by keyword: `{parameter.name}=` is the query's ("
                f"{'how many rows to return' if parameter.name == 'k' else 'also return the scores'}). "
                + (
                    f"Pass it positionally, as argument {index + 1}: e.g. "
                    f".top_k({', '.join(p.name for p in positional[: index + 1])}, k=100)."
                    if index is not None
                    else f"Rename the parameter (e.g. `{parameter.name}_`)."
                )
            )


def answer(
    pipeline: OptimizedPipeline, args: tuple, kwargs: dict, k: Any, return_scores: bool
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Answer a top-K query with the calibrated plan, or exactly when there is none."""
    k = check_k(k)
    check_call(pipeline, args, {})
    if pipeline._pending is not None:
        pipeline._restore_pending(args, kwargs)
    calibration: TopKCalibration | None = pipeline.__dict__.get("_topk")
    guards = pipeline._guards
    if calibration is not None and guards is not None and not guards.check(args, kwargs):
        calibration = None  # another object than the calibrated one: answer exactly, with it
    if calibration is not None and calibration.function is not None:
        positions, scores = calibration.function(k, *args, **kwargs)
    else:
        graph, fn = pipeline.exact_graph(args, kwargs)
        if graph is None:
            raise UnsupportedPipelineError(
                f"top_k() needs the model's scores, but willow could not trace {pipeline.__qualname__}: "
                f"{pipeline._unsupported or pipeline._deferred}"
            )
        scorer = calibration.scorer if calibration is not None else ExactScorer(graph, fn, pipeline.score)
        arguments = bind_arguments(pipeline.__wrapped__, args, kwargs)
        if scorer.count_rows(arguments) == 0:
            positions, scores = np.empty(0, dtype=np.intp), np.empty(0, dtype=np.float64)
        else:
            positions, scores = exact_top_k(scorer.scores(arguments), k)
    return (positions, scores) if return_scores else positions


def install(pipeline: OptimizedPipeline, calibration: TopKCalibration) -> None:
    """Make ``pipeline`` serve ``calibration`` (after calibrating or loading)."""
    pipeline.plan_, pipeline.costs_, pipeline._topk = calibration.plan, calibration.costs, calibration
    approximate = calibration.approximate
    pipeline.approximate_model_ = approximate.estimator_ if approximate is not None else None
    pipeline.generated_source_ = calibration.source
    pipeline._compilation, pipeline._approximate = calibration.compilation, approximate


def saved_state(pipeline: OptimizedPipeline) -> dict[str, Any]:
    """What :meth:`OptimizedPipeline.save` writes for a top-K plan, besides the common header.

    The plan, the cost profile, the score spec, the model fingerprint, the fitted approximate
    scorer (its kernels are compiled again on load) and the recipes of the compiled nodes (the
    full model, when compiled, is kept inside them, as for cascades).
    """
    calibration: TopKCalibration = pipeline._topk
    compilation = calibration.compilation
    served = calibration.function is not None and compilation is not None and bool(compilation.nodes)
    return {
        "plan": calibration.plan,
        "costs": calibration.costs,
        "score_spec": calibration.score,
        "model_fingerprint": calibration.model_fingerprint,
        "approximate": calibration.approximate,
        "compiled": compilation.recipes if served else [],
    }


def restore(pipeline: OptimizedPipeline, state: dict[str, Any], graph: Any = None, fn: Any = None) -> None:
    """Rebuild a saved top-K plan on a freshly traced ``pipeline`` (see :func:`willow.load`);
    ``graph`` and ``fn`` default to the pipeline's own (the front end passes its normalized ones).

    Raises :class:`~willow.PlanMismatchError` (from the compiler) when a fitted object the plan
    compiled is no longer the same.
    """
    from willow.compiler.compile_pass import apply_compilation
    from willow.topk.calibration import build_topk

    traced = graph if graph is not None else pipeline.graph_
    assert traced is not None
    fn = fn if fn is not None else pipeline.__wrapped__
    plan: TopKPlan = state["plan"]
    graph, compilation = traced, None
    if state["compiled"]:
        from willow.compiler.lowering import lower

        compilation = apply_compilation(graph, state["compiled"], lower, fn)
        graph = compilation.graph
    approximate: ApproximateScorer | None = state["approximate"]
    if approximate is not None:
        approximate.rebuild_kernels(
            [compilation.vectorizer(g) for g in plan.selected]
            if compilation is not None and compilation.fused is not None
            else None
        )
    scorer = ExactScorer(traced, fn, pipeline.score)
    function = source = None
    if plan.approximate:
        assert approximate is not None
        guard = ModelGuard(state["model_fingerprint"])
        function, source = build_topk(
            graph, fn, plan, approximate, state["score_spec"], scorer, guard, compilation
        )
    install(
        pipeline,
        TopKCalibration(
            plan,
            state["costs"],
            state["score_spec"],
            state["model_fingerprint"],
            scorer,
            approximate,
            function,
            source,
            compilation,
        ),
    )


def explain_lines(pipeline: OptimizedPipeline) -> list[str]:
    """What ``explain()`` says about top-K queries on a pipeline that is not ``query="topk"``."""
    return [
        "Top-K queries (.top_k(..., k=K)) on this pipeline are answered exactly, by scoring every "
        'row; optimize with query="topk" for an approximate plan tuned to a precision target.'
    ]
