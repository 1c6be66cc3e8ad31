"""Run a traced pipeline statement by statement, for calibration.

Calibration needs what no single call of the original function gives: each statement's own run
time, every feature group's output, and the ability to re-run the stacking and model steps with
one group's rows shuffled. :class:`StatementRunner` executes the graph's statements (compiled
with their original file names and line numbers, so tracebacks point at the user's code) in a
namespace built from the function's globals, closure and arguments.
"""

from __future__ import annotations

import ast
import inspect
import time
from collections.abc import Callable, Iterable
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
        for i in range(len(self.graph.statements)) if indices is None else indices:
            exec(self._code[i], ns)
        return ns

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
