"""The public surface: ``@willow.optimize``, :class:`OptimizedPipeline` and :func:`load`.

The decorator only validates options and builds an :class:`OptimizedPipeline`; tracing,
calibration and code generation live in :mod:`willow.compiler` and :mod:`willow.cascades`.
"""

from __future__ import annotations

import ast
import functools
import inspect
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from willow import planfile
from willow._version import __version__
from willow.cascades import tiers
from willow.cascades.approximate import ApproximateModel
from willow.cascades.calibration import CascadeOptions, build_cascade
from willow.cascades.outputs import OutputSpec
from willow.cascades.plan import CascadePlan
from willow.cascades.runtime import ModelGuard
from willow.compiler.background import BackgroundCompile
from willow.compiler.codegen import layout_cascade
from willow.compiler.compile_budget import calibration_budget
from willow.compiler.compile_pass import CompilationResult, apply_compilation
from willow.compiler.execution import bind_arguments
from willow.compiler.graph import PipelineGraph
from willow.compiler.profiling import CostProfile
from willow.compiler.tracing import source_fingerprint, trace_pipeline
from willow.early_exit import planner as early_exit_planner
from willow.early_exit import tiers as early_exit_tiers
from willow.errors import (
    ModelChangedWarning,
    NotCalibratedError,
    PlanMismatchError,
    UnsupportedPipelineError,
    UnsupportedPipelineWarning,
)
from willow.frontend.arguments import classify_arguments
from willow.frontend.driver import FrontEnd, normalize, parse_function
from willow.frontend.guards import ArgumentGuards
from willow.frontend.methods import BoundPipeline
from willow.gpu.device import on_device_of, on_pipeline_device
from willow.gpu.explain import device_lines
from willow.options import Options
from willow.pickling import portable_function, restore_function
from willow.progress import calibration_progress, stage
from willow.topk import query as topk_query
from willow.topk.plan import TopKPlan

__all__ = ["optimize", "OptimizedPipeline", "Options", "load"]

_FORMAT = "willow-plan/1"
_FITTED = ("plan_", "costs_", "approximate_model_", "generated_source_", "tiers_")
# Rebuilt from the plan state when a pipeline is unpickled, never pickled themselves.
_DERIVED = _FITTED + (
    "_serving",
    "_compilation",
    "_topk",
    "_approximate",
    "_output",
    "_fingerprint",
    "_background",
    "_frontend",
    "_guards",
    "_pending",
    "_lock",
    "_monitor",
    "_tiers",
)


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

    Its options (the keyword arguments of :func:`optimize`, or ``options=``) are one
    :class:`~willow.options.Options`, ``options``, checked when it is built; each can also be read
    as an attribute (``pipeline.compile`` is ``pipeline.options.compile``).
    """

    def __init__(self, fn: Callable, *, options: Options | None = None, **keywords: Any) -> None:
        if not callable(fn):
            raise TypeError(f"willow.optimize expects a function, got {type(fn).__name__} {fn!r}.")
        if isinstance(fn, OptimizedPipeline):
            fn = fn.__wrapped__
        functools.update_wrapper(self, fn)
        # Every knob, checked (willow.options); read as self.options.<name> or self.<name>.
        self.options = Options.build(options, **keywords)
        if self.options.query == "topk":
            topk_query.check_signature(fn)
        self._compilation: CompilationResult | None = None
        self._monitor: Any = None
        self._serving: Callable | None = None
        self._tiers: tuple[tiers.ServedTier, ...] = ()
        self._unsupported: str | None = None
        # The function as written, traced at decoration (None when it is not in willow's idiom:
        # then ``_deferred`` holds why, and calibrate() runs the front end on the real objects).
        self.graph_: PipelineGraph | None = None
        self._traced: PipelineGraph | None = None
        self._deferred: UnsupportedPipelineError | None = None
        self._init_frontend_state()
        try:
            self.graph_ = self._traced = trace_pipeline(fn, self.row_args)
        except UnsupportedPipelineError as exc:
            if not _has_source(fn):
                self._fall_back(exc)
            else:
                self._deferred = exc

    def _init_frontend_state(self) -> None:
        self._frontend: FrontEnd | None = None
        self._guards: ArgumentGuards | None = None
        self._pending: dict[str, Any] | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ sklearn-style plumbing

    def get_params(self) -> dict[str, Any]:
        """The options this pipeline was built with (as passed to ``willow.optimize``)."""
        return self.options.params()

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
        return self if obj is None else BoundPipeline(self, obj)

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
        return self._serve(0, args, kwargs)

    def tier(self, target: float) -> Callable:
        """A function with the original's signature that serves the accuracy tier ``target``, one
        of those declared with ``accuracy_target=(...)`` (the plain call serves the strictest).

        Raises :class:`~willow.errors.UnknownTierError` (a ``KeyError`` and ``ValueError``) naming
        the declared tiers when ``target`` is not one of them. See :mod:`willow.cascades.tiers`.
        """
        return tiers.tier_callable(self, target)

    @property
    def tiers_(self) -> tuple[tiers.TierResult, ...]:
        """Every declared accuracy tier as calibrated, strictest first: its target, proven bound,
        measured speedup, fraction of rows answered early and plan (one entry for one target)."""
        return tiers.tier_results(self)

    def _serve(self, tier: int, args: tuple, kwargs: dict) -> Any:
        """Serve one call with accuracy tier number ``tier`` (0: the strictest, the plain call)."""
        serving = tiers.tier_serving(self, tier)
        if serving is None:
            if self._pending is None or not self._restore_pending(args, kwargs):
                return self.__wrapped__(*args, **kwargs)
            serving = tiers.tier_serving(self, tier)
            if serving is None:
                return self.__wrapped__(*args, **kwargs)
        guards = self._guards
        if guards is not None and not guards.check(args, kwargs):
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
        return self.options.cascade_options()

    @on_pipeline_device
    def calibrate(
        self, *args: Any, y: Any = None, progress: bool | None = None, **kwargs: Any
    ) -> OptimizedPipeline:
        """Plan and prove a cascade on calibration data; return ``self``.

        Call it with the same arguments as the function itself, holding calibration rows (the
        more rows, the tighter the proof: the error message says how many are needed), and
        optionally ``y``, one label per row. Without ``y`` the approximate model learns the full
        model's own predictions, so no labelled data is needed.

        ``progress``: a progress bar naming the stage that runs (tracing, costing, compiling,
        importance, candidates, proof); by default shown in a terminal or notebook and never in
        CI (``CI`` set) or when stderr is not a terminal; ``True``/``False`` forces it (see
        :mod:`willow.progress`). With ``compile=True``, what does not fit the compile-time budget
        is compiled in the background after this returns (see :meth:`wait_compiled`).
        """
        previous = self.__dict__.get("_background")
        if previous is not None:
            previous.cancel()
            self._background = None
        with (
            calibration_progress(progress, self.__qualname__),
            calibration_budget(self.compile) as budget,
        ):
            stage("tracing")
            self._calibrate(args, y, kwargs)
        if budget.deferred and self.is_calibrated and not self._unsupported:
            self._compile_in_background(args, y, kwargs, budget.deferred)
        return self

    def _compile_in_background(self, args: tuple, y: Any, kwargs: dict, deferred: list[str]) -> None:
        """Calibrate again with ``compile="eager"`` on a background thread and serve that plan
        once it is built and verified (:mod:`willow.compiler.background`)."""
        arguments = bind_arguments(self.__wrapped__, args, kwargs)
        graph, fn = self.graph_, self.traced_function
        assert graph is not None
        if self.query == "topk":
            from willow.topk.calibration import calibrate_topk

            options = replace(topk_query.topk_options(self), compile="eager")

            def job() -> Any:
                return calibrate_topk(graph, fn, arguments, options)

            def install(result: Any) -> None:
                topk_query.install(self, result)

        else:
            cascade_options = replace(self._options(), compile="eager")

            def job() -> Any:
                results = tiers.calibrate(graph, fn, arguments, y, cascade_options, self.accuracy_target)
                return early_exit_tiers.consider_model_cascades(
                    results, fn, arguments, cascade_options, graph
                )

            def install(result: Any) -> None:
                self._install_result(result)

        what = ", ".join(dict.fromkeys(deferred))
        self._background = BackgroundCompile(on_device_of(self, job), install, what).start()

    def wait_compiled(self, timeout: float | None = None) -> bool:
        """Wait for the background compilation that ``compile=True`` started after calibration
        (models whose estimated compile time exceeded the budget), at most ``timeout`` seconds.

        Returns ``True`` once nothing is compiling (the compiled plan serves, or a failure left
        the calibrated plan serving: see :meth:`explain`), ``False`` on timeout.
        """
        background = self.__dict__.get("_background")
        return True if background is None else background.wait(timeout)

    def _calibrate(self, args: tuple, y: Any, kwargs: dict) -> OptimizedPipeline:
        if self.graph_ is None and self._deferred is None:  # no source: no front end can help
            warnings.warn(
                f"calibrate() does nothing: {self._unsupported}", UnsupportedPipelineWarning, stacklevel=3
            )
            return self
        arguments = bind_arguments(self.__wrapped__, args, kwargs)
        if self.query == "topk":
            if y is not None:
                warnings.warn(
                    'calibrate(y=...) is ignored for query="topk": the approximate model learns the '
                    "full model's own scores, since precision is measured against its ranking.",
                    UserWarning,
                    stacklevel=3,
                )
            try:
                graph, front = self._front_end(arguments)
                fn = front.function if front is not None else self.__wrapped__
                topk = topk_query.calibrate_pipeline(self, arguments, graph, fn)
            except UnsupportedPipelineError as exc:
                self._fall_back(exc)
                return self
            self.graph_ = graph
            self._unsupported = None
            self._set_frontend(front)
            topk_query.install(self, topk)
            return self
        try:
            graph, front = self._front_end(arguments)
            fn = front.function if front is not None else self.__wrapped__
            result = tiers.calibrate(graph, fn, arguments, y, self._options(), self.accuracy_target)
            result = early_exit_tiers.consider_model_cascades(result, fn, arguments, self._options(), graph)
        except UnsupportedPipelineError as exc:
            self._fall_back(exc)
            return self
        self.graph_ = graph
        self._unsupported = None
        self._set_frontend(front)
        self._install_result(result)
        return self

    def _install_result(self, results: Any) -> None:
        """Serve a cascade calibration's results (:class:`~willow.cascades.calibration.CalibrationResult`,
        one per accuracy tier, strictest first: the plain call serves the first)."""
        result = results[0]
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
        self._tiers = tiers.serve_tiers(
            self, [(r.plan, r.approximate, r.function, r.source, r.compilation) for r in results[1:]]
        )

    def _front_end(self, arguments: dict[str, Any]) -> tuple[PipelineGraph, FrontEnd | None]:
        """The graph to calibrate, traced from the function the front end normalized for these
        calibration ``arguments`` (``None`` for the front end when it changed nothing).

        The arguments are classified (rows vs. constants); the front end's passes rewrite the
        function; tracing reads the rewritten tree. When the front end refuses but the function as
        written was traced at decoration (its row inputs really hold rows), that graph is used.
        """
        fn = self.__wrapped__
        tree, _ = parse_function(fn)
        row_parameters = classify_arguments(fn, tree, arguments, self.row_args)
        try:
            front = normalize(fn, arguments, row_parameters)
            if not front.rewritten:
                return trace_pipeline(fn, row_parameters), None
            return (
                trace_pipeline(front.function, row_parameters, tree=front.tree, filename=front.filename),
                front,
            )
        except UnsupportedPipelineError:
            plain = self._traced
            if plain is None or not set(plain.row_parameters) <= set(row_parameters):
                raise
            return plain, None

    def _restore_pending(self, args: tuple, kwargs: dict) -> bool:
        """Build serving for a loaded plan whose function the front end rewrote, from this first
        call's objects: normalize and trace again, check the result and the guarded objects
        against what was calibrated, then restore the plan. Returns whether it is served; when
        this call's objects differ, warns and leaves the plan pending (the original runs)."""
        with self._lock:
            state = self._pending
            if state is None:
                return self._serving is not None
            fn = self.__wrapped__
            saved = state["frontend"]
            rows = tuple(state["row_parameters"])
            try:
                arguments = bind_arguments(fn, args, kwargs)
                front = normalize(fn, arguments, rows)
                graph = trace_pipeline(front.function, rows, tree=front.tree, filename=front.filename)
            except (TypeError, ValueError) as exc:
                reason = f"the front end could not rewrite it for this call ({type(exc).__name__}: {exc})"
            else:
                guards = ArgumentGuards(fn, front.guards, front.bindings)
                if source_fingerprint(graph.source) != saved["normalized"]:
                    reason = "rewritten for this call's objects, it differs from the calibrated form"
                elif dict(zip(guards.paths, guards.fingerprints)) != saved["guards"]:
                    changed = [
                        p for p, f in zip(guards.paths, guards.fingerprints) if saved["guards"].get(p) != f
                    ]
                    reason = f"argument(s) {', '.join(f'`{p}`' for p in changed) or '?'} differ from the calibrated ones"
                else:
                    _restore_plan(self, graph, front.function, state)
                    self.graph_ = graph
                    self._set_frontend(front)
                    return True
        warnings.warn(
            f"The loaded plan of {self.__qualname__} does not fit this call: {reason}; running the "
            "original function instead. Call calibrate() with these objects to optimize them.",
            ModelChangedWarning,
            stacklevel=3,
        )
        return False

    def _set_frontend(self, front: FrontEnd | None) -> None:
        self._frontend = front
        self._guards = (
            ArgumentGuards(self.__wrapped__, front.guards, front.bindings, front.type_guards)
            if front
            else None
        )
        self._pending = None

    @property
    def traced_function(self) -> Callable:
        """The function ``graph_`` was traced from: the front end's normalized function after a
        calibration that rewrote the function, otherwise the original."""
        front = self._frontend
        return front.function if front is not None else self.__wrapped__

    def exact_graph(self, args: tuple, kwargs: dict) -> tuple[PipelineGraph | None, Callable]:
        """A graph and function that compute exactly what the original computes on this call (for
        exact top-K answers): the calibrated ones when this call's guarded objects are the
        calibrated ones, otherwise the front end run again on this call's objects (``None`` for
        the graph when the function cannot be traced at all)."""
        front = self._frontend
        if front is not None and (self._guards is None or self._guards.check(args, kwargs, warn=False)):
            return self.graph_, front.function
        if front is None and self._pending is None and self.graph_ is not None:
            return self.graph_, self.__wrapped__
        if self.graph_ is None and self._deferred is None and self._pending is None:
            return None, self.__wrapped__
        arguments = bind_arguments(self.__wrapped__, args, kwargs)
        graph, fresh = self._front_end(arguments)
        return graph, fresh.function if fresh is not None else self.__wrapped__

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
        self._monitor = None
        if self.monitor is not None and plan.cascade and function is not None:
            from willow import monitor

            self._monitor = monitor.attach(self, plan, output, fingerprint, function, compilation)
            self._serving = self._monitor

    @property
    def monitor_(self) -> Any:
        """What the serving-time monitor (``monitor=``) has seen: a :class:`willow.monitor.MonitorState`
        (rows seen, sampled, agreement, its confidence sequence, state, since when), or ``None``
        when no monitored cascade serves."""
        monitor = self.__dict__.get("_monitor")
        return None if monitor is None else monitor.state

    def recalibrate_from_monitor(self) -> OptimizedPipeline:
        """Calibrate again on the rows the monitor kept (its most recent samples, with the other
        arguments of the last checked call), without labels; return ``self``."""
        monitor = self.__dict__.get("_monitor")
        if monitor is None:
            raise NotCalibratedError(
                f"{self.__qualname__} has no serving monitor: optimize it with monitor=<fraction> "
                "and serve calls through its cascade before recalibrate_from_monitor()."
            )
        return self.calibrate(**monitor.kept_arguments())

    # ------------------------------------------------------------------ reporting

    def explain(self) -> str:
        """The traced graph, the measured costs, the plan and the generated source, as text."""
        lines = [f"willow {__version__}: {self.__qualname__}"]
        if self._unsupported:
            lines.append(f"Runs unoptimized: {self._unsupported}")
            return "\n".join(lines)
        if self._pending is not None:
            lines += [
                "",
                "Plan loaded; the front end rewrote this function for its calibration objects, so "
                "serving is rebuilt at the first call, from that call's objects (checked against the "
                "calibrated ones).",
            ]
        if self.graph_ is None:
            lines += [
                "",
                f"Not traced yet: as written, {self._deferred}",
                "",
                "calibrate() runs willow's front end on the real arguments and traces the result.",
            ]
            return "\n".join(lines)
        lines += self._frontend_lines()
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
        if isinstance(self.accuracy_target, tuple):
            lines += [tiers.table(self), ""]
        lines += early_exit_tiers.explain_lines(self)
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
        lines += device_lines(self)  # where a device="cuda" pipeline runs each part
        background = self.__dict__.get("_background")
        if background is not None:
            lines += ["", background.status()]
        approximate = self.__dict__.get("_approximate")
        if approximate is not None and getattr(approximate, "kernel_source", None):
            lines += [
                "",
                f"Generated kernel for the approximate model ({approximate.score_method}):",
                "",
                approximate.kernel_source,
            ]
        return "\n".join(lines)

    def _frontend_lines(self) -> list[str]:
        front = self._frontend
        if front is None:
            return []
        lines = ["", "Front end (the function as written, rewritten before tracing):"]
        lines += [f"  - {note}" for note in front.notes]
        if front.guards:
            paths = ", ".join(f"`{g.path}`" for g in front.guards)
            lines.append(f"  Checked at every call (identity, else content fingerprint): {paths}")
        lines += ["", "Normalized source (what is traced):", "", ast.unparse(front.tree)]
        return lines

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike, *, key: bytes | str | None = None) -> None:
        """Write the calibrated plan to ``path`` (reload it with :func:`willow.load`).

        The file holds the plan, the cost profile and the fitted approximate model, not the full
        model: pass that at call time as before. It is not a pickle (see :mod:`willow.planfile`):
        a JSON manifest, arrays, skops / LightGBM model files and a SHA-256 seal that loading
        checks. With ``key=`` (bytes or str) the seal also carries an HMAC-SHA256, and
        ``willow.load(path, fn, key=...)`` refuses any file not signed with that key.
        """
        if not self.is_calibrated:
            raise NotCalibratedError(
                f"Cannot save {self.__qualname__}: it is not calibrated. Call .calibrate(...) first."
            )
        planfile.write_plan(path, self._plan_state(), key=key)

    def _plan_state(self) -> dict[str, Any]:
        """The calibrated plan (cascade, compiled or top-K) as plain picklable data (what
        :meth:`save` writes and a pickled pipeline carries); :func:`_restore_plan` rebuilds serving
        from it."""
        if self._pending is not None:
            return dict(self._pending)
        assert self.graph_ is not None
        state = {
            "format": _FORMAT,
            "willow_version": __version__,
            "function": self.__qualname__,
            "source_fingerprint": _source_fingerprint(self.__wrapped__),
            "params": self.get_params(),
            "row_parameters": self.graph_.row_parameters,
        }
        if self._frontend is not None:
            guards = self._guards
            state["frontend"] = {
                "normalized": source_fingerprint(self.graph_.source),
                "guards": dict(zip(guards.paths, guards.fingerprints)) if guards is not None else {},
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
                **tiers.saved_state(self),
            )
            if self._serving:
                state.update(early_exit_planner.saved_state(self._compilation))
                state.update(early_exit_tiers.saved_state(self))
        return state

    def __getstate__(self) -> dict[str, Any]:
        """Pickle support (``pickle``, ``cloudpickle``, Dask): the options, the traced graph, the
        original function (by reference when importable, by value with cloudpickle otherwise, see
        :mod:`willow.pickling`) and the calibrated plan. Generated functions and compiled kernels
        are not pickled: unpickling generates them again and loads the kernels from the
        receiving machine's kernel cache (compiling them there once)."""
        attributes = {k: v for k, v in self.__dict__.items() if k not in _DERIVED}
        attributes["__wrapped__"] = portable_function(self.__wrapped__)
        attributes["graph_"] = self._traced  # a normalized graph is rebuilt from the arguments
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
        if "options" not in attributes:  # pickled before the knobs became one Options
            known = [name for name in Options.names() if name in attributes]
            attributes["options"] = Options(**{name: attributes.pop(name) for name in known})
        self.__dict__.update(attributes)
        self._serving = None
        self._compilation = None
        self._init_frontend_state()
        plan = state["plan"]
        if plan is None:
            return
        _restore_or_defer(self, self.__wrapped__, plan)


def _option(name: str) -> property:
    return property(
        lambda self: getattr(self.options, name),
        doc=f"The ``{name}`` option this pipeline was built with (read-only: ``self.options.{name}``).",
    )


# Every knob reads through from ``options`` (``pipeline.compile`` is ``pipeline.options.compile``).
for _name in Options.names():
    setattr(OptimizedPipeline, _name, _option(_name))


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
    monitor: float | None = None,
    device: str = "cpu",
    tolerance: float | Callable | None = None,
    early_exit: bool | str = "exact",
    options: Options | None = None,
) -> Any:
    """Decorate an inference function so willow can serve it faster.

    Use as ``@willow.optimize`` or ``@willow.optimize(accuracy_target=0.99, ...)``.

    Parameters
    ----------
    accuracy_target : minimum fraction of rows on which the optimized pipeline must return the
        same prediction as the original (for ``predict_proba``: the same most likely class). A
        sequence, strictest first (``(0.999, 0.99, 0.95)``), declares accuracy tiers: one
        calibration proves a plan per target, the plain call serves the strictest and
        ``pipeline.tier(0.95)`` another (see :mod:`willow.cascades.tiers`).
    confidence : level of the one-sided Clopper-Pearson lower bound that must reach the target on
        held-out calibration rows.
    approximate_model : unfitted estimator for the cascade's cheap model; default
        ``sklearn.base.clone`` of the pipeline's own model. For ``query="topk"``, ``"prefix"``
        makes the filter the first trees of the model's own ensemble (:mod:`willow.topk.prefix`),
        served even when not expected faster; by default such filters compete on expected cost.
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
        only where it measured faster. ``True`` compiles within a time budget during calibration
        (10 s, estimated from each tree ensemble's split nodes and the compile rate measured on
        this machine; kernels are cached on disk, so a second run is a warm load) and compiles
        the rest in the background after calibration returns, serving the verified plan
        meanwhile and switching to the compiled one once it is built and verified
        (:meth:`OptimizedPipeline.wait_compiled` waits for it); ``"eager"`` (or ``"all"``)
        compiles everything during calibration; ``False`` keeps every statement as Python.
    cascade : plan a cascade (default); ``False`` serves the (compiled) full pipeline only.
    require_faster : serve a proven cascade only if it also measured faster than the pipeline
        without it (the compiled pipeline, or the original) on the holdout rows, and a compiled
        pipeline without a cascade only if it measured faster than the original beyond the
        timing noise (a sign test on per-pair time ratios of interleaved runs, each pair at least
        5% faster, more rounds while undecided: see :mod:`willow.compiler.speed_gate`). The plan's cost
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
    monitor : ``None`` (default: off) or the fraction of served rows (e.g. ``0.01``) on which a
        cascade is checked against the pipeline without it while serving (see
        :mod:`willow.monitor`). When an anytime-valid confidence sequence shows the cascade below
        ``accuracy_target`` at ``confidence``, serving switches to the pipeline without the
        cascade and warns; ``pipeline.monitor_`` shows the state and
        ``pipeline.recalibrate_from_monitor()`` plans again on the rows it kept.
    device : ``"cpu"`` (default) or ``"cuda"``: compiled operators that have a CUDA lowering (tree
        ensembles, linear models) run on the GPU, one thread per row, everything else on the CPU
        (see :mod:`willow.gpu`; GPU speed not measured yet). Needs CuPy and
        an NVIDIA GPU (``pip install willow[gpu]``), or Numba's CUDA simulator
        (``NUMBA_ENABLE_CUDASIM=1``, for tests); otherwise raises
        :class:`~willow.errors.DeviceUnavailableError` here, at decoration.
    tolerance : for functions that return numbers (a regressor's predictions, probabilities,
        scores), which are otherwise served exactly by the compiled pipeline: cascade them, a row
        agreeing when it is within ``tolerance`` of the original's (a float > 0: absolute, in
        every column; or a callable ``(original, approx) -> one bool per row``), with the same
        holdout proof. Refused (:class:`~willow.cascades.tolerance.ToleranceError`) for functions
        that return labels. A callable is saved by name (define it at module level); see
        :mod:`willow.cascades.tolerance`.
    early_exit : when the model is a compiled tree ensemble whose labels the function returns,
        or whose output it compares once with a threshold (``predict_proba(X)[:, 1] > t``,
        ``regressor.predict(X) > t``: exits keep each row's side of ``t``), or a tree regressor
        whose ``predict`` the function returns, with ``tolerance=``, a model
        cascade inside the ensemble (staged early exit, :mod:`willow.early_exit`) may serve
        instead of the full ensemble (alone if it measured at least 1.2x faster, or behind a
        feature cascade if the pipeline measured faster beyond the timing noise):
        ``"exact"`` (default) exits a row only where the remaining trees cannot change its
        decision (a regressor's value: move it by more than the tolerance), so outputs stay
        identical (within the tolerance); ``True`` also exits on margins (a regressor: settled
        scores) tuned to ``accuracy_target`` and proven on holdout rows, like a cascade, and for
        classifiers also tries a distilled cheap model first (:mod:`willow.early_exit.distilled`),
        serving whichever measured fastest; ``False`` never. Accuracy tiers each get their own, at
        their own target (:mod:`willow.early_exit.tiers`). With ``compile=False``, ``True`` puts
        the staged model (its own compiled kernels) in place of the library's model call where no
        feature cascade serves (:mod:`willow.early_exit.uncompiled`).
    options : all of the above as one :class:`willow.options.Options` (checked when built), in
        place of the keyword arguments: pass one or the other.
    """
    keywords = {name: value for name, value in locals().items() if name not in ("fn", "options")}
    if options is not None:  # then only the keywords the caller passed (not left at their default)
        defaults = inspect.signature(optimize).parameters
        keywords = {name: value for name, value in keywords.items() if value is not defaults[name].default}
    checked = Options.build(options, **keywords)
    if fn is None:
        return lambda f: OptimizedPipeline(f, options=checked)
    return OptimizedPipeline(fn, options=checked)


def load(path: str | os.PathLike, fn: Callable, *, key: bytes | str | None = None) -> OptimizedPipeline:
    """Reload a plan saved by :meth:`OptimizedPipeline.save` for the function ``fn``.

    ``fn`` is the original function (or an ``OptimizedPipeline`` wrapping it). Raises
    :class:`~willow.PlanMismatchError` when the file was written by another willow version or for
    a function whose source differs from ``fn``'s, and when it is not an intact plan file (damaged,
    truncated, edited after saving) or, with ``key=``, not signed with that key. Nothing in the
    file is executed (see :mod:`willow.planfile`).
    """
    original = fn.__wrapped__ if isinstance(fn, OptimizedPipeline) else fn
    state = planfile.read_plan(path, key=key, namespace=planfile.loader_namespace(original))
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise PlanMismatchError(f"{os.fspath(path)!r} is not a willow plan file (expected format {_FORMAT}).")
    if state["willow_version"] != __version__:
        raise PlanMismatchError(
            f"{os.fspath(path)!r} was saved by willow {state['willow_version']}, but this is willow "
            f"{__version__}. Recalibrate the pipeline with this version and save it again."
        )
    params = dict(state["params"])
    pipeline = OptimizedPipeline(original, **params)
    if _source_fingerprint(original) != state["source_fingerprint"]:
        raise PlanMismatchError(
            f"{os.fspath(path)!r} holds a plan for {state['function']} as it was when saved, but the "
            f"source of {getattr(original, '__qualname__', original)} differs from it. Recalibrate "
            "the edited function and save it again."
        )
    _restore_or_defer(pipeline, original, state)
    return pipeline


def _has_source(fn: Callable) -> bool:
    """Whether ``fn`` is a ``def`` whose source willow can read (else no front end can help)."""
    try:
        parse_function(fn)
    except UnsupportedPipelineError:
        return False
    return True


def _source_fingerprint(fn: Callable) -> str | None:
    """The fingerprint of ``fn``'s source as written (what a saved plan is matched against)."""
    try:
        return source_fingerprint("".join(inspect.getsourcelines(fn)[0]))
    except (OSError, TypeError):
        return None


def _restore_or_defer(pipeline: OptimizedPipeline, original: Callable, state: dict) -> None:
    """Install a saved plan now, or, when the front end rewrote the function for its calibration
    objects, keep it until the first call brings those objects (:meth:`_restore_pending`)."""
    if state.get("frontend") is not None:
        if pipeline.query == "topk":
            pipeline.plan_, pipeline.costs_ = state["plan"], state["costs"]
            approximate = state["approximate"]
            pipeline.approximate_model_ = approximate.estimator_ if approximate is not None else None
            pipeline.generated_source_ = None
        else:
            pipeline._install(
                state["plan"],
                state["costs"],
                state["approximate"],
                state["output"],
                state["model_fingerprint"],
                None,
                None,
                None,
            )
            tiers.restore(pipeline, state, None, None, None)
        pipeline._pending = state
        return
    graph = pipeline.graph_
    rows = tuple(state.get("row_parameters") or ())
    if graph is None or (rows and graph.row_parameters != rows):
        try:
            graph = trace_pipeline(original, rows or None)
        except UnsupportedPipelineError as exc:
            raise PlanMismatchError(
                f"The saved plan for {state['function']} cannot be applied: {exc}"
            ) from exc
        pipeline.graph_ = graph
    _restore_plan(pipeline, graph, original, state)


@on_pipeline_device
def _restore_plan(pipeline: OptimizedPipeline, graph: PipelineGraph, original: Callable, state: dict) -> None:
    """Install the plan ``state`` (from :meth:`OptimizedPipeline._plan_state`) on ``pipeline``:
    compile the saved operators again (kernels come from the on-disk cache) and generate the
    serving function. Shared by :func:`load` and unpickling."""
    if pipeline.query == "topk":
        topk_query.restore(pipeline, state, graph, original)
        return
    plan: CascadePlan = state["plan"]
    function = source = compilation = None
    if state["compiled"]:
        from willow.compiler.lowering import lower

        compilation = early_exit_planner.restore(
            apply_compilation(graph, state["compiled"], lower, original), state
        )
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
    tiers.restore(
        pipeline, state, graph, original, compilation, early_exit_tiers.compilations(state, compilation)
    )
