"""Compiling a traced pipeline in tests: every verified kernel kept, no timing involved."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from willow.compiler.compile_pass import RUNTIME, CompilationResult, compile_graph
from willow.compiler.execution import StatementRunner
from willow.compiler.graph import PipelineGraph
from willow.compiler.lowering import lower
from willow.compiler.tracing import trace_pipeline


def compile_traced(
    fn: Callable[..., Any], arguments: dict[str, Any]
) -> tuple[PipelineGraph, StatementRunner, CompilationResult]:
    """``fn``'s traced graph, a runner of its original statements, and ``compile_graph``'s result
    on ``arguments`` (kernels verified against the original statements)."""
    graph = trace_pipeline(fn)
    runner = StatementRunner(graph, fn)
    return graph, runner, compile_graph(graph, runner, arguments, lower)


def compiled_runner(result: CompilationResult, fn: Callable[..., Any]) -> StatementRunner:
    """A runner of ``result.graph`` whose ``_willow.ops`` are the compiled operators."""

    class Holder:
        ops = result.operators

    return StatementRunner(result.graph, fn, extra={RUNTIME: Holder})
