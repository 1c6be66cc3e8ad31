"""The public surface: ``@willow.optimize``, :class:`OptimizedPipeline` and :func:`load`.

The decorator only validates options and builds an :class:`OptimizedPipeline`; tracing,
calibration and code generation live in :mod:`willow.compiler` and :mod:`willow.cascades`.
"""

from __future__ import annotations

import functools
import os
import pickle
import types
import warnings
from collections.abc import Callable
from typing import Any

from willow._version import __version__
from willow.cascades.approximate import ApproximateModel
from willow.cascades.calibration import CascadeOptions, build_cascade, calibrate_cascade
from willow.cascades.outputs import OutputSpec
from willow.cascades.plan import CascadePlan
from willow.cascades.runtime import ModelGuard
from willow.cascades.selection import DEFAULT_BUDGETS
from willow.compiler.codegen import layout_cascade
from willow.compiler.compile_pass import CompilationResult, apply_compilation
from willow.compiler.execution import bind_arguments
from willow.compiler.graph import PipelineGraph
from willow.compiler.profiling import CostProfile
from willow.compiler.tracing import source_fingerprint, trace_pipeline
from willow.errors import (
    NotCalibratedError,
    PlanMismatchError,
    UnsupportedPipelineError,
    UnsupportedPipelineWarning,
)
from willow.gpu.runtime import check_device, on_pipeline_device
from willow.pickling import portable_function, restore_function
from willow.topk import query as topk_query
from willow.topk.plan import TopKPlan

__all__ = ["optimize", "OptimizedPipeline", "load"]

_FORMAT = "willow-plan/1"
_FITTED = ("plan_", "costs_", "approximate_model_", "generated_source_")
# Rebuilt from the plan state when a pipeline is unpickled, never pickled themselves.
_DERIVED = _FITTED + ("_serving", "_compilation", "_topk", "_approximate", "_output", "_fingerprint")


def _check_fraction(name: str, value: Any, *, upper_inclusive: bool) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}.") from None
    ok = 0.0 < number <= 1.0 if upper_inclusive else 0.0 < number < 1.0
    if not ok:
        bounds = "(0, 1]" if upper_inclusive else "(0, 1)"
        raise ValueError(f"{name} must be in {bounds}, got {value!r}.")
    return number


def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return value


class OptimizedPipeline:
    """An inference function that willow serves faster once calibrated.

    Until :meth:`calibrate` is called it runs the original function unchanged. Calibration traces
    how the function builds its features, measures what each feature group costs and how much it
    matters, and, when a cascade can be proven to agree with the original on at least
    ``accuracy_target`` of rows (a one-sided Clopper-Pearson bound at ``confidence`` on held-out
    rows), serves a generated cascaded function instead. :meth:`explain` shows the plan and the
    generated source.

    Fitted attributes (after :meth:`calibrate`): ``plan_`` (:class:`~willow.CascadePlan`),
    ``costs_`` (:class:`~willow.CostProfile`), ``approximate_model_`` (the fitted approximate
    estimator, or ``None``) and ``generated_source_`` (the cascaded function's source, or ``None``).
    """

    def __init__(
        self,
        fn: Callable,
        *,
        accuracy_target: float = 0.99,
        confidence: float = 0.95,
        approximate_model: Any = None,
        split: tuple[float, float, float] = (0.5, 0.25, 0.25),
        random_state: int | None = 0,
        strict: bool = True,
        row_args: tuple[str, ...] | list[str] | None = None,
        cost_repeats: int = 5,
        importance_repeats: int = 3,
        exhaustive_max_groups: int = 4,
        max_candidates: int = 16,
        compile: bool | str = True,
        cascade: bool = True,
        require_faster: bool = True,
        query: str = "predict",
        k: int | None = None,
        precision_target: float = 0.95,
        query_size: int | None = None,
        score: Any = None,
        k_fractions: tuple[float, ...] = topk_query.DEFAULT_FRACTIONS,
        device: str = "cpu",
    ) -> None:
        if not callable(fn):
            raise TypeError(f"willow.optimize expects a function, got {type(fn).__name__} {fn!r}.")
        if isinstance(fn, OptimizedPipeline):
            fn = fn.__wrapped__
        functools.update_wrapper(self, fn)
        self.accuracy_target = _check_fraction("accuracy_target", accuracy_target, upper_inclusive=True)
        self.confidence = _check_fraction("confidence", confidence, upper_inclusive=False)
        if approximate_model is not None and not hasattr(approximate_model, "fit"):
            raise TypeError(
                "approximate_model must be an unfitted scikit-learn-style estimator with fit(), got "
                f"{type(approximate_model).__name__}."
            )
        self.approximate_model = approximate_model
        self.split = tuple(split)
        self.random_state = random_state
        self.strict = bool(strict)
        self.row_args = tuple(row_args) if row_args is not None else None
        self.cost_repeats = _check_count("cost_repeats", cost_repeats, 1)
        self.importance_repeats = _check_count("importance_repeats", importance_repeats, 1)
        self.exhaustive_max_groups = _check_count("exhaustive_max_groups", exhaustive_max_groups, 0)
        self.max_candidates = _check_count("max_candidates", max_candidates, 1)
        if compile not in (True, False, "all"):
            raise ValueError(f"compile must be True, False or 'all', got {compile!r}.")
        self.compile = compile
        self.cascade = bool(cascade)
        self.require_faster = bool(require_faster)
        self._compilation: CompilationResult | None = None
        if query not in topk_query.QUERIES:
            raise ValueError(f"query must be one of {topk_query.QUERIES}, got {query!r}.")
        self.query = query
        if query == "topk" and k is None:
            raise TypeError('query="topk" needs k=<the number of rows a call returns>, e.g. k=100.')
        if query == "topk":
            topk_query.check_signature(fn)
        self.k = topk_query.check_k(k) if k is not None else None
        self.precision_target = _check_fraction("precision_target", precision_target, upper_inclusive=True)
        self.query_size = _check_count("query_size", query_size, 1) if query_size is not None else None
        self.score = score
        self.k_fractions = tuple(k_fractions)
        self.device = check_device(device)
        self._serving: Callable | None = None
        self._unsupported: str | None = None
        self.graph_: PipelineGraph | None = None
        try:
            self.graph_ = trace_pipeline(fn, self.row_args)
        except UnsupportedPipelineError as exc:
            self._fall_back(exc)

    # ------------------------------------------------------------------ sklearn-style plumbing

    def get_params(self) -> dict[str, Any]:
        """The options this pipeline was built with (as passed to ``willow.optimize``)."""
        return {
            "accuracy_target": self.accuracy_target,
            "confidence": self.confidence,
            "approximate_model": self.approximate_model,
            "split": self.split,
            "random_state": self.random_state,
            "strict": self.strict,
            "row_args": self.row_args,
            "cost_repeats": self.cost_repeats,
            "importance_repeats": self.importance_repeats,
            "exhaustive_max_groups": self.exhaustive_max_groups,
            "max_candidates": self.max_candidates,
            "compile": self.compile,
            "cascade": self.cascade,
            "require_faster": self.require_faster,
            "query": self.query,
            "k": self.k,
            "precision_target": self.precision_target,
            "query_size": self.query_size,
            "score": self.score,
            "k_fractions": self.k_fractions,
            "device": self.device,
        }

    def __getattr__(self, name: str) -> Any:
        if name in _FITTED:
            raise NotCalibratedError(
                f"This OptimizedPipeline ({self.__dict__.get('__name__', '?')}) is not calibrated "
                f"yet, so it has no {name}. Call .calibrate(<the function's arguments>, y=...) first."
            )
        raise AttributeError(f"{type(self).__name__!s} object has no attribute {name!r}")

    def __repr__(self) -> str:
        state = "not calibrated"
        if "plan_" in self.__dict__ and isinstance(self.plan_, TopKPlan):
            state = "top-K, approximate" if self.plan_.approximate else "top-K, exact"
        elif "plan_" in self.__dict__:
            state = "cascade" if self.plan_.cascade else "no cascade"
        return f"<OptimizedPipeline {self.__qualname__} ({state})>"

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        return self if obj is None else types.MethodType(self, obj)

    @property
    def is_calibrated(self) -> bool:
        """Whether :meth:`calibrate` has run (successfully) on this pipeline."""
        return "plan_" in self.__dict__

    def _fall_back(self, exc: UnsupportedPipelineError) -> None:
        if self.strict:
            raise exc
        self._unsupported = str(exc)
        warnings.warn(
            f"willow runs {self.__qualname__} unoptimized: {exc}", UnsupportedPipelineWarning, stacklevel=3
        )

    # ------------------------------------------------------------------ serving

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.query == "topk":
            topk_query.check_call(self, args, kwargs)
            return self.top_k(*args, k=self.k, **kwargs)
        serving = self._serving
        if serving is None:
            return self.__wrapped__(*args, **kwargs)
        return serving(*args, **kwargs)

    def top_k(self, *args: Any, k: int, return_scores: bool = False, **kwargs: Any) -> Any:
        """Positions of the ``k`` highest-scoring rows, best first (with their scores on request).

        Call it with the function's own arguments. The score of a row is the model's probability
        of the positive class (``score=`` picks the class, or is a callable on ``predict_proba``'s
        output) or, for a regressor, its prediction. Positions are 0-based row numbers of the row
        inputs (not pandas index labels); ties are broken by the lowest position. ``k >= N``
        returns every row, sorted. With ``return_scores=True`` it returns ``(positions, scores)``,
        the full model's scores of those rows. ``k=`` and ``return_scores=`` are the query's own
        keywords: a function parameter of the same name is passed positionally
        (``.top_k(model, X, 3, k=100)`` for ``def f(model, X, k)``).

        A ``query="topk"`` pipeline answers with its calibrated plan (see :meth:`explain` for
        what it guarantees); any other pipeline answers exactly, by scoring every row.
        """
        return topk_query.answer(self, args, kwargs, k, return_scores)

    # ------------------------------------------------------------------ calibration

    def _options(self) -> CascadeOptions:
        return CascadeOptions(
            accuracy_target=self.accuracy_target,
            confidence=self.confidence,
            approximate_model=self.approximate_model,
            split=self.split,  # type: ignore[arg-type]
            random_state=self.random_state,
            cost_repeats=self.cost_repeats,
            importance_repeats=self.importance_repeats,
            exhaustive_max_groups=self.exhaustive_max_groups,
            max_candidates=self.max_candidates,
            budgets=DEFAULT_BUDGETS,
            compile=self.compile,
            cascade=self.cascade,
            require_faster=self.require_faster,
        )

    @on_pipeline_device
    def calibrate(self, *args: Any, y: Any = None, **kwargs: Any) -> OptimizedPipeline:
        """Plan and prove a cascade on calibration data; return ``self``.

        Call it with the same arguments as the function itself, holding calibration rows (the
        more rows, the tighter the proof: the error message says how many are needed), and
        optionally ``y``, one label per row. Without ``y`` the approximate model learns the full
        model's own predictions, so no labelled data is needed.
        """
        if self.graph_ is None:
            warnings.warn(
                f"calibrate() does nothing: {self._unsupported}", UnsupportedPipelineWarning, stacklevel=2
            )
            return self
        arguments = bind_arguments(self.__wrapped__, args, kwargs)
        if self.query == "topk":
            if y is not None:
                warnings.warn(
                    'calibrate(y=...) is ignored for query="topk": the approximate model learns the '
                    "full model's own scores, since precision is measured against its ranking.",
                    UserWarning,
                    stacklevel=2,
                )
            try:
                topk = topk_query.calibrate_pipeline(self, arguments)
            except UnsupportedPipelineError as exc:
                self._fall_back(exc)
                return self
            topk_query.install(self, topk)
            return self
        try:
            result = calibrate_cascade(self.graph_, self.__wrapped__, arguments, y, self._options())
        except UnsupportedPipelineError as exc:
            self._fall_back(exc)
            return self
        self._install(
            result.plan,
            result.costs,
            result.approximate,
            result.output,
            result.model_fingerprint,
            result.function,
            result.source,
            result.compilation,
        )
        return self

    def _install(
        self,
        plan: CascadePlan,
        costs: CostProfile,
        approximate: ApproximateModel | None,
        output: OutputSpec,
        fingerprint: str,
        function: Callable | None,
        source: str | None,
        compilation: CompilationResult | None = None,
    ) -> None:
        self.plan_ = plan
        self.costs_ = costs
        self.approximate_model_ = approximate.estimator_ if approximate is not None else None
        self.generated_source_ = source
        self._approximate = approximate
        self._output = output
        self._fingerprint = fingerprint
        self._compilation = compilation
        self._serving = function

    # ------------------------------------------------------------------ reporting

    def explain(self) -> str:
        """The traced graph, the measured costs, the plan and the generated source, as text."""
        lines = [f"willow {__version__}: {self.__qualname__}"]
        if self._unsupported:
            lines.append(f"Runs unoptimized: {self._unsupported}")
            return "\n".join(lines)
        assert self.graph_ is not None
        lines += ["", self.graph_.describe()]
        if not self.is_calibrated:
            lines += [
                "",
                "Not calibrated: call .calibrate(...) to plan a top-K query; queries score every row."
                if self.query == "topk"
                else "Not calibrated: call .calibrate(...) to plan a cascade; calls run the original.",
            ]
            return "\n".join(lines)
        lines += ["", self.costs_.table(), "", self.plan_.table(), ""]
        if self.query != "topk":
            lines += topk_query.explain_lines(self) + [""]
        if self.generated_source_:
            lines += ["Generated source (this is what runs):", "", self.generated_source_]
        else:
            lines.append(
                "No generated source: top-K queries score every row with the original pipeline."
                if self.query == "topk"
                else "No generated source: calls run the original function unchanged."
            )
        if self._compilation is not None:
            lines += ["", self._compilation.report()]
        approximate = self.__dict__.get("_approximate")
        if approximate is not None and getattr(approximate, "kernel_source", None):
            lines += [
                "",
                f"Generated kernel for the approximate model ({approximate.score_method}):",
                "",
                approximate.kernel_source,
            ]
        return "\n".join(lines)

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike) -> None:
        """Write the calibrated plan to ``path`` (reload it with :func:`willow.load`).

        The file holds the plan, the cost profile and the fitted approximate model, not the full
        model: pass that at call time as before. It is a pickle; load only files you trust.
        """
        if not self.is_calibrated:
            raise NotCalibratedError(
                f"Cannot save {self.__qualname__}: it is not calibrated. Call .calibrate(...) first."
            )
        with open(path, "wb") as fh:
            pickle.dump(self._plan_state(), fh, protocol=pickle.HIGHEST_PROTOCOL)

    def _plan_state(self) -> dict[str, Any]:
        """The calibrated plan (cascade, compiled or top-K) as plain picklable data (what
        :meth:`save` writes and a pickled pipeline carries); :func:`_restore_plan` rebuilds serving
        from it."""
        assert self.graph_ is not None
        state = {
            "format": _FORMAT,
            "willow_version": __version__,
            "function": self.__qualname__,
            "source_fingerprint": source_fingerprint(self.graph_.source),
            "params": self.get_params(),
        }
        if self.query == "topk":
            state.update(topk_query.saved_state(self))
        else:
            state.update(
                plan=self.plan_,
                costs=self.costs_,
                approximate=self._approximate,
                output=self._output,
                model_fingerprint=self._fingerprint,
                compiled=self._compilation.recipes if self._compilation and self._serving else [],
            )
        return state

    def __getstate__(self) -> dict[str, Any]:
        """Pickle support (``pickle``, ``cloudpickle``, Dask): the options, the traced graph, the
        original function (by reference when importable, by value with cloudpickle otherwise, see
        :mod:`willow.pickling`) and the calibrated plan. Generated functions and compiled kernels
        are not pickled: unpickling generates them again and loads the kernels from the
        receiving machine's kernel cache (compiling them there once)."""
        attributes = {k: v for k, v in self.__dict__.items() if k not in _DERIVED}
        attributes["__wrapped__"] = portable_function(self.__wrapped__)
        plan = None
        if self.is_calibrated:
            plan = self._plan_state()
        return {"willow_version": __version__, "attributes": attributes, "plan": plan}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state["willow_version"] != __version__:
            raise PlanMismatchError(
                f"This pickled willow pipeline was made by willow {state['willow_version']}, but this "
                f"process runs willow {__version__}; install the same willow version on every machine "
                "that unpickles it (e.g. every Dask worker)."
            )
        attributes = dict(state["attributes"])
        attributes["__wrapped__"] = restore_function(attributes["__wrapped__"])
        self.__dict__.update(attributes)
        self._serving = None
        self._compilation = None
        plan = state["plan"]
        if plan is None:
            return
        assert self.graph_ is not None
        _restore_plan(self, self.graph_, self.__wrapped__, plan)


def optimize(
    fn: Callable | None = None,
    /,
    *,
    accuracy_target: float = 0.99,
    confidence: float = 0.95,
    approximate_model: Any = None,
    split: tuple[float, float, float] = (0.5, 0.25, 0.25),
    random_state: int | None = 0,
    strict: bool = True,
    row_args: tuple[str, ...] | list[str] | None = None,
    cost_repeats: int = 5,
    importance_repeats: int = 3,
    exhaustive_max_groups: int = 4,
    max_candidates: int = 16,
    compile: bool | str = True,
    cascade: bool = True,
    require_faster: bool = True,
    query: str = "predict",
    k: int | None = None,
    precision_target: float = 0.95,
    query_size: int | None = None,
    score: Any = None,
    k_fractions: tuple[float, ...] = topk_query.DEFAULT_FRACTIONS,
    device: str = "cpu",
) -> Any:
    """Decorate an inference function so willow can serve it faster.

    Use as ``@willow.optimize`` or ``@willow.optimize(accuracy_target=0.99, ...)``.

    Parameters
    ----------
    accuracy_target : minimum fraction of rows on which the optimized pipeline must return the
        same prediction as the original (for ``predict_proba``: the same most likely class).
    confidence : level of the one-sided Clopper-Pearson lower bound that must reach the target on
        held-out calibration rows.
    approximate_model : unfitted estimator for the cascade's cheap model; default
        ``sklearn.base.clone`` of the pipeline's own model.
    split : fractions of calibration rows for (train, tune, holdout).
    random_state : seed of the split, the permutations and nothing else.
    strict : raise :class:`~willow.UnsupportedPipelineError` on a function willow cannot analyse
        (default), or, with ``False``, warn and run it unoptimized.
    row_args : names of the parameters holding one entry per row (default: those the features
        read, other than the model).
    cost_repeats, importance_repeats : timed runs per statement, shuffles per group.
    exhaustive_max_groups : up to this many groups every subset is a candidate; above it the
        candidates come from a knapsack over cost budgets.
    max_candidates : most candidate subsets fitted during calibration.
    compile : lower recognised operators (text vectorizers, linear models, tree ensembles...) to
        generated Numba kernels, each verified against the original on calibration rows and kept
        only where it measured faster; ``True`` skips tree ensembles over 20,000 split nodes (cold
        compilation runs at about 1,000 split nodes per second on 2 cores; kernels are cached on
        disk), ``"all"`` compiles them too, ``False`` keeps every statement as Python.
    cascade : plan a cascade (default); ``False`` serves the (compiled) full pipeline only.
    require_faster : serve a proven cascade only if it also measured faster than the pipeline
        without it (the compiled pipeline, or the original) on the holdout rows. The plan's cost
        model is per row and does not see per-call overheads (the approximate model's call, row
        selection, one call per remaining group), which can outweigh the saving on cheap
        pipelines. ``False`` serves every proven cascade.
    query : ``"predict"`` (default: a call returns the model's output for every row, served by a
        cascade) or ``"topk"``: a call returns the positions of the ``k`` highest-scoring rows,
        best first, served by a top-K plan (see :meth:`OptimizedPipeline.top_k`).
    k : for ``query="topk"``: how many rows a call returns (``.top_k(..., k=...)`` takes any K).
    precision_target : for ``query="topk"``: minimum precision@K (overlap with the original's own
        top K, divided by K) to reach with probability ``confidence`` per query.
    query_size : for ``query="topk"``: rows per query the guarantee is tuned for (default: the
        tune split's size); bootstrap queries of this size are drawn from calibration rows.
    score : what top-K queries rank by: ``None`` (the positive class's probability of a binary
        classifier, or a regressor's prediction), a class label, or a callable on the model's
        ``predict_proba`` (classifiers) or ``predict`` (regressors) output.
    k_fractions : the K/N grid the candidate ratio is tuned on (the guarantee covers its range).
    device : ``"cpu"`` (default) or ``"cuda"``: compiled operators that have a CUDA lowering (tree
        ensembles, linear models) run on the GPU, one thread per row, everything else on the CPU
        (see :mod:`willow.gpu`; GPU speed not measured yet). Needs CuPy and
        an NVIDIA GPU (``pip install willow[gpu]``), or Numba's CUDA simulator
        (``NUMBA_ENABLE_CUDASIM=1``, for tests); otherwise raises
        :class:`~willow.errors.DeviceUnavailableError` here, at decoration.
    """
    options = dict(
        accuracy_target=accuracy_target,
        confidence=confidence,
        approximate_model=approximate_model,
        split=split,
        random_state=random_state,
        strict=strict,
        row_args=row_args,
        cost_repeats=cost_repeats,
        importance_repeats=importance_repeats,
        exhaustive_max_groups=exhaustive_max_groups,
        max_candidates=max_candidates,
        compile=compile,
        cascade=cascade,
        require_faster=require_faster,
        query=query,
        k=k,
        precision_target=precision_target,
        query_size=query_size,
        score=score,
        k_fractions=k_fractions,
        device=device,
    )
    if fn is None:
        return lambda f: OptimizedPipeline(f, **options)
    return OptimizedPipeline(fn, **options)


def load(path: str | os.PathLike, fn: Callable) -> OptimizedPipeline:
    """Reload a plan saved by :meth:`OptimizedPipeline.save` for the function ``fn``.

    ``fn`` is the original function (or an ``OptimizedPipeline`` wrapping it). Raises
    :class:`~willow.PlanMismatchError` when the file was written by another willow version or for
    a function whose source differs from ``fn``'s.
    """
    with open(path, "rb") as fh:
        state = pickle.load(fh)
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise PlanMismatchError(f"{os.fspath(path)!r} is not a willow plan file (expected format {_FORMAT}).")
    if state["willow_version"] != __version__:
        raise PlanMismatchError(
            f"{os.fspath(path)!r} was saved by willow {state['willow_version']}, but this is willow "
            f"{__version__}. Recalibrate the pipeline with this version and save it again."
        )
    original = fn.__wrapped__ if isinstance(fn, OptimizedPipeline) else fn
    params = dict(state["params"])
    pipeline = OptimizedPipeline(original, **params)
    graph = pipeline.graph_
    if graph is None or source_fingerprint(graph.source) != state["source_fingerprint"]:
        raise PlanMismatchError(
            f"{os.fspath(path)!r} holds a plan for {state['function']} as it was when saved, but the "
            f"source of {getattr(original, '__qualname__', original)} differs from it. Recalibrate "
            "the edited function and save it again."
        )
    _restore_plan(pipeline, graph, original, state)
    return pipeline


@on_pipeline_device
def _restore_plan(pipeline: OptimizedPipeline, graph: PipelineGraph, original: Callable, state: dict) -> None:
    """Install the plan ``state`` (from :meth:`OptimizedPipeline._plan_state`) on ``pipeline``:
    compile the saved operators again (kernels come from the on-disk cache) and generate the
    serving function. Shared by :func:`load` and unpickling."""
    if pipeline.query == "topk":
        topk_query.restore(pipeline, state)
        return
    plan: CascadePlan = state["plan"]
    function = source = compilation = None
    if state["compiled"]:
        from willow.compiler.lowering import lower

        compilation = apply_compilation(graph, state["compiled"], lower, original)
        graph = compilation.graph
        approximate = state["approximate"]
        if plan.cascade and compilation.fused is not None and getattr(approximate, "fuse_on_load", False):
            approximate.fuse([compilation.vectorizer(g) for g in plan.selected])
    if plan.cascade or compilation is not None:
        layout = layout_cascade(graph, plan.selected) if plan.cascade else None
        function, source = build_cascade(
            graph,
            original,
            layout,
            plan.threshold,
            state["approximate"] if plan.cascade else None,
            state["output"],
            ModelGuard(state["model_fingerprint"]),
            compilation,
        )
    pipeline._install(
        plan,
        state["costs"],
        state["approximate"],
        state["output"],
        state["model_fingerprint"],
        function,
        source,
        compilation,
    )
