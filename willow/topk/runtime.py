"""The helpers a generated top-K function calls as ``_willow.<name>(...)`` while serving.

One :class:`TopKRuntime` belongs to one calibrated plan; it keeps no per-call state.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Any

import numpy as np

from willow.cascades.runtime import ModelGuard, ServingRuntime
from willow.compiler.execution import StatementRunner, bind_arguments
from willow.compiler.graph import PipelineGraph
from willow.gpu.runtime import current_device
from willow.topk.approximate import ApproximateScorer
from willow.topk.plan import TopKPlan
from willow.topk.ranking import check_k, top_positions
from willow.topk.scores import ScoreSpec

__all__ = ["TopKRuntime", "ExactScorer", "exact_top_k"]


class ExactScorer:
    """Scores every row with the full pipeline: the original statements, then the score.

    This is the reference the optimized path is measured against, and what answers queries that
    must be exact (``c * K >= N``, a changed model, an uncalibrated pipeline).
    """

    def __init__(self, graph: PipelineGraph, fn: Callable, score: Any = None) -> None:
        self.graph = graph
        self.fn = fn
        self.score_option = score
        self._runner = StatementRunner(graph, fn)
        self._model = compile(ast.Expression(body=graph.model_call.model), graph.filename, "eval")

    def model_and_features(self, arguments: dict[str, Any]) -> tuple[Any, Any]:
        """Run every statement on ``arguments``; return the model and its feature matrix."""
        ns = self._runner.run(self._runner.namespace(arguments))
        return eval(self._model, ns), ns[self.graph.model_call.feature_variable]

    def scores(self, arguments: dict[str, Any]) -> np.ndarray:
        """The full model's score of every row of ``arguments`` (the score spec is derived from
        the model passed in this call, so a changed model is scored correctly)."""
        model, features = self.model_and_features(arguments)
        return ScoreSpec.for_model(model, self.score_option)(model, features)

    def count_rows(self, arguments: dict[str, Any]) -> int:
        return ServingRuntime.count_rows(**{p: arguments[p] for p in self.graph.row_parameters})


def exact_top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best positions of ``scores`` (ties: lowest position first) and their scores."""
    best = top_positions(scores, k)
    return best, np.asarray(scores, dtype=np.float64)[best]


class TopKRuntime:
    """Serving-time helpers of one calibrated top-K plan.

    ``device`` is where candidates are selected: ``"cpu"`` (NumPy) or ``"cuda"``
    (:mod:`willow.gpu.selection`, the same rows in the same order, ties included; the final K too
    when the candidates' scores are on the device); by default the device operators are being
    lowered for (the pipeline's ``device=``).
    """

    device = "cpu"

    def __init__(
        self,
        plan: TopKPlan,
        approximate: ApproximateScorer,
        score: ScoreSpec,
        scorer: ExactScorer,
        guard: ModelGuard,
        operators: Any = None,
        objects: tuple[Any, ...] = (),
        device: str | None = None,
    ) -> None:
        self.device = current_device() if device is None else device
        self.plan = plan
        self.approximate_model = approximate
        self.score_spec = score
        self.scorer = scorer
        self.same_model = guard
        self.ops = operators  # the compiled operators the generated code calls as _willow.ops.<name>
        self._objects = objects
        self._fingerprints: tuple[str, ...] | None = None  # see ServingRuntime.same_objects
        self._rejected: tuple[Any, ...] = ()

    count_rows = staticmethod(ServingRuntime.count_rows)
    take_rows = staticmethod(ServingRuntime.take_rows)
    same_objects = ServingRuntime.same_objects  # compiled fitted objects still the calibrated ones

    def candidate_count(self, k: Any, n_rows: int) -> int:
        """Validate ``k``; the number of candidates to keep (``>= n_rows``: answer exactly)."""
        return self.plan.candidate_count(check_k(k), n_rows)

    def exact(self, k: int, /, *args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        """Answer the query exactly: score every row with the full pipeline."""
        arguments = bind_arguments(self.scorer.fn, args, kwargs)
        if self.scorer.count_rows(arguments) == 0:
            return np.empty(0, dtype=np.intp), np.empty(0, dtype=np.float64)
        return exact_top_k(self.scorer.scores(arguments), k)

    def approximate_scores(self, features: Any) -> np.ndarray:
        """The approximate model's score of every row (only its ranking matters); with
        ``device="cuda"`` left on the device when its kernel runs there."""
        if self.device == "cuda":
            return self.approximate_model.scores_on_device(features)
        return self.approximate_model.scores(features)

    def approximate_text(self, texts: Any) -> np.ndarray:
        """The approximate score of every text, through the fused kernel."""
        return self.approximate_model.scores_text(texts)

    def candidates(self, approx_scores: np.ndarray, n_candidates: int) -> np.ndarray:
        """Positions of the ``n_candidates`` best approximate scores, in ascending position order."""
        if self.device == "cuda":
            from willow.gpu.selection import sorted_top_positions

            return sorted_top_positions(approx_scores, n_candidates)
        return np.sort(top_positions(approx_scores, n_candidates))

    def score(self, model: Any, features: Any) -> np.ndarray:
        """The full model's score of each candidate row."""
        return self.score_spec(model, features)

    def score_output(self, output: Any) -> np.ndarray:
        """The full model's score of each candidate row, from its (compiled) model call's output."""
        return self.score_spec.of_output(output)

    def best_of(self, candidates: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The exact top ``k`` among the candidates, as positions in the whole batch, best first.

        ``candidates`` is ascending, so ranking its positions with ties by lowest local position
        breaks ties by lowest batch position, exactly like the original ranking.
        """
        if self.device == "cuda" and hasattr(scores, "__cuda_array_interface__"):
            # the candidates' scores are on the device only when the full model's head left them
            # there; host scores (the usual case) are not sent over for a selection among c * K
            from willow.gpu import runtime, selection

            best = selection.top_positions(scores, k)
            scores = runtime.to_host(scores)  # c * K values
        else:
            best = top_positions(scores, k)
        return candidates[best], np.asarray(scores, dtype=np.float64)[best]
