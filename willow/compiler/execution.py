"""Run a traced pipeline statement by statement, for calibration.

Calibration needs what no single call of the original function gives: each statement's own run
time, every feature group's output, and the ability to re-run the stacking and model steps with
one group's rows shuffled. :class:`StatementRunner` executes the graph's statements (compiled
with their original file names and line numbers, so tracebacks point at the user's code) in a
namespace built from the function's globals, closure and arguments.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import time
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import CodeType
from typing import Any

import numpy as np

from willow.compiler.graph import PipelineGraph

__all__ = ["StatementRunner", "bind_arguments", "closure_values"]


def closure_values(fn: Callable) -> dict[str, Any]:
    """The current values of ``fn``'s closure variables (unset cells are skipped)."""
    values: dict[str, Any] = {}
    code = fn.__code__
    for name, cell in zip(code.co_freevars, fn.__closure__ or ()):
        try:
            values[name] = cell.cell_contents
        except ValueError:
            continue
    return values


def bind_arguments(fn: Callable, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Bind call arguments to ``fn``'s parameters exactly as a call would (TypeError otherwise)."""
    bound = inspect.signature(fn).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


@dataclass
class StatementTimes:
    """Median wall time of each statement and of the model call over repeated runs."""

    statement_seconds: dict[int, float]
    model_seconds: float
    repeats: int


class StatementRunner:
    """Executes a :class:`PipelineGraph` one statement at a time."""

    def __init__(self, graph: PipelineGraph, fn: Callable, extra: dict[str, Any] | None = None) -> None:
        self.graph = graph
        self.fn = fn
        self.extra = dict(extra or {})
        self._code: dict[int, CodeType] = {
            st.index: compile(ast.Module(body=[st.node], type_ignores=[]), graph.filename, "exec")
            for st in graph.statements
        }
        model_call = graph.model_call.node.value
        assert model_call is not None
        self._model_code = compile(ast.Expression(body=model_call), graph.filename, "eval")
        self._contexts = [
            (compile(ast.Expression(body=item.context_expr), graph.filename, "eval"), item.optional_vars)
            for item in graph.contexts
        ]
        # Names the post-processing assigns (``y = f(y)``, ``y[y < 0] = 0``) are parameters of its
        # code, given their values from the completed run, so a statement may read one before
        # assigning it, as in the function itself.
        self._post_parameters: tuple[str, ...] = ()
        if graph.post:
            stored = {
                n.id
                for st in graph.post.statements
                for n in ast.walk(st)
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
            }
            self._post_parameters = tuple(sorted(stored | {graph.post.variable}))
        self._post = (
            _function_code(
                "__willow_post__", list(graph.post.statements), graph.filename, self._post_parameters
            )
            if graph.post
            else None
        )
        self._prologue = (
            _function_code(
                "__willow_prologue__",
                [*graph.prologue, ast.Return(value=ast.Name(id="__willow_no_return__", ctx=ast.Load()))],
                graph.filename,
            )
            if graph.prologue
            else None
        )

    @contextlib.contextmanager
    def entered(self, ns: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Enter the function's unwrapped ``with`` contexts (``timer()``...) in ``ns``, as the
        original runs its statements inside them."""
        with contextlib.ExitStack() as stack:
            for code, target in self._contexts:
                value = stack.enter_context(eval(code, ns))
                if isinstance(target, ast.Name):
                    ns[target.id] = value
            yield ns

    def namespace(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """A fresh namespace: the function's globals, then its closure, willow's own names (the
        compiled operators), then the arguments."""
        ns = dict(self.fn.__globals__)
        ns.update(closure_values(self.fn))
        ns.update(self.extra)
        ns.update(arguments)
        return ns

    def run(self, ns: dict[str, Any], indices: Iterable[int] | None = None) -> dict[str, Any]:
        """Execute the given statements (all, in order, by default) in ``ns``; return ``ns``."""
        with self.entered(ns):
            for i in range(len(self.graph.statements)) if indices is None else indices:
                exec(self._code[i], ns)
        return ns

    def post(self, ns: dict[str, Any], output: Any) -> Any:
        """What the function returns when the model's output is ``output``: the graph's
        post-processing run in (a copy of) the completed namespace ``ns``; ``output`` itself when
        the function returns the model's output as it is."""
        if self._post is None:
            return output
        assert self.graph.post is not None
        scope = dict(ns)
        scope[self.graph.post.variable] = output
        with self.entered(scope):
            return _call_code(self._post, scope, *(scope.get(n) for n in self._post_parameters))

    def prologue_returns(self, arguments: dict[str, Any]) -> bool:
        """Whether the function's leading early-return guards answer this call themselves."""
        if self._prologue is None:
            return False
        marker = object()
        scope = self.namespace(arguments)
        scope["__willow_no_return__"] = marker
        return _call_code(self._prologue, scope) is not marker

    def model_output(self, ns: dict[str, Any]) -> Any:
        """Evaluate the final ``<model>.<method>(X)`` in ``ns``."""
        return eval(self._model_code, ns)

    def run_all(self, arguments: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        """Run the whole function on ``arguments``; return the namespace and the model output."""
        ns = self.run(self.namespace(arguments))
        return ns, self.model_output(ns)

    def time_statements(
        self, arguments: dict[str, Any], repeats: int, warmup: int = 1
    ) -> tuple[StatementTimes, dict[str, Any], Any]:
        """Time every statement and the model call: ``warmup`` untimed runs, then the median of
        ``repeats`` timed runs. Returns the times and the last run's namespace and output."""
        samples: dict[int, list[float]] = {st.index: [] for st in self.graph.statements}
        model_samples: list[float] = []
        ns: dict[str, Any] = {}
        output: Any = None
        for run in range(warmup + repeats):
            ns = self.namespace(arguments)
            with self.entered(ns):
                for st in self.graph.statements:
                    start = time.perf_counter()
                    exec(self._code[st.index], ns)
                    elapsed = time.perf_counter() - start
                    if run >= warmup:
                        samples[st.index].append(elapsed)
            start = time.perf_counter()
            output = self.model_output(ns)
            if run >= warmup:
                model_samples.append(time.perf_counter() - start)
        times = StatementTimes(
            statement_seconds={i: float(np.median(s)) for i, s in samples.items()},
            model_seconds=float(np.median(model_samples)),
            repeats=repeats,
        )
        return times, ns, output


def _function_code(
    name: str, body: list[ast.stmt], filename: str, parameters: tuple[str, ...] = ()
) -> CodeType:
    """The code object of ``def <name>(<parameters>): <body>`` (its free names are looked up as
    globals)."""
    func = ast.FunctionDef(
        name=name,
        args=ast.arguments(
            posonlyargs=[],
            args=[ast.arg(arg=p) for p in parameters],
            vararg=None,
            kwonlyargs=[],
            kw_defaults=[],
            kwarg=None,
            defaults=[],
        ),
        body=body,
        decorator_list=[],
        returns=None,
        type_comment=None,
        type_params=[],
    )
    ast.copy_location(func, body[0])
    module = ast.Module(body=[func], type_ignores=[])
    ast.fix_missing_locations(module)
    code = compile(module, filename, "exec")
    return next(c for c in code.co_consts if isinstance(c, CodeType) and c.co_name == name)


def _call_code(code: CodeType, scope: dict[str, Any], *arguments: Any) -> Any:
    """Run a code object from :func:`_function_code` with ``scope`` as its globals."""
    return types.FunctionType(code, scope)(*arguments)
