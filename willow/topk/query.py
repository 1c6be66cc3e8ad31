"""Top-K queries on an :class:`~willow.OptimizedPipeline`: calibration, answers and reporting.

:mod:`willow.api` delegates here so that the pipeline class only gains a few small hooks.
A query returns the positions (0-based row numbers of the row inputs, not pandas index labels)
of the K highest-scoring rows, best first, ties broken by the lowest position; with
``return_scores=True`` it returns ``(positions, scores)``, the scores being the full model's.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from willow.cascades.runtime import ModelGuard
from willow.compiler.execution import bind_arguments
from willow.errors import UnsupportedPipelineError
from willow.topk.calibration import (
    DEFAULT_FRACTIONS,
    TopKCalibration,
    TopKOptions,
    build_topk,
    calibrate_topk,
)
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
    "explain_lines",
    "portable",
    "restore",
]

QUERIES = ("predict", "topk")


def topk_options(pipeline: OptimizedPipeline) -> TopKOptions:
    """The pipeline's options as top-K calibration knobs."""
    return TopKOptions(
        k=pipeline.k,
        precision_target=pipeline.precision_target,
        confidence=pipeline.confidence,
        query_size=pipeline.query_size,
        score=pipeline.score,
        approximate_model=pipeline.approximate_model,
        split=pipeline.split,  # type: ignore[arg-type]
        random_state=pipeline.random_state,
        cost_repeats=pipeline.cost_repeats,
        importance_repeats=pipeline.importance_repeats,
        exhaustive_max_groups=pipeline.exhaustive_max_groups,
        max_candidates=pipeline.max_candidates,
        fractions=pipeline.k_fractions,
    )


def calibrate_pipeline(pipeline: OptimizedPipeline, arguments: dict[str, Any]) -> TopKCalibration:
    """Calibrate a ``query="topk"`` pipeline on bound calibration ``arguments``."""
    assert pipeline.graph_ is not None
    return calibrate_topk(pipeline.graph_, pipeline.__wrapped__, arguments, topk_options(pipeline))


def answer(
    pipeline: OptimizedPipeline, args: tuple, kwargs: dict, k: Any, return_scores: bool
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Answer a top-K query with the calibrated plan, or exactly when there is none."""
    k = check_k(k)
    calibration: TopKCalibration | None = pipeline.__dict__.get("_topk")
    if calibration is not None and calibration.function is not None:
        positions, scores = calibration.function(k, *args, **kwargs)
    else:
        if pipeline.graph_ is None:
            raise UnsupportedPipelineError(
                f"top_k() needs the model's scores, but willow could not trace {pipeline.__qualname__}: "
                f"{pipeline._unsupported}"
            )
        scorer = (
            calibration.scorer
            if calibration is not None
            else ExactScorer(pipeline.graph_, pipeline.__wrapped__, pipeline.score)
        )
        arguments = bind_arguments(pipeline.__wrapped__, args, kwargs)
        if scorer.count_rows(arguments) == 0:
            positions, scores = np.empty(0, dtype=np.intp), np.empty(0, dtype=np.float64)
        else:
            positions, scores = exact_top_k(scorer.scores(arguments), k)
    return (positions, scores) if return_scores else positions


def portable(calibration: TopKCalibration) -> TopKCalibration:
    """``calibration`` without its generated function and statement runner, for pickling."""
    return replace(calibration, scorer=None, function=None)


def restore(pipeline: OptimizedPipeline, calibration: TopKCalibration) -> TopKCalibration:
    """A :func:`portable` calibration with its scorer and top-K function generated again for
    ``pipeline`` (after unpickling)."""
    assert pipeline.graph_ is not None
    graph, fn = pipeline.graph_, pipeline.__wrapped__
    scorer = ExactScorer(graph, fn, pipeline.score)
    function = source = None
    if calibration.approximate is not None:
        guard = ModelGuard(calibration.model_fingerprint)
        function, source = build_topk(
            graph, fn, calibration.plan, calibration.approximate, calibration.score, scorer, guard
        )
    return replace(calibration, scorer=scorer, function=function, source=source)


def explain_lines(pipeline: OptimizedPipeline) -> list[str]:
    """What ``explain()`` says about top-K queries on a pipeline that is not ``query="topk"``."""
    return [
        "Top-K queries (.top_k(..., k=K)) on this pipeline are answered exactly, by scoring every "
        'row; optimize with query="topk" for an approximate plan tuned to a precision target.'
    ]
