"""The compiler pass: swap recognised operator calls in a traced graph for generated kernels.

A statement ``v = <fitted object>.<method>(args)`` whose object is a global or closure variable,
and the final ``<model>.<method>(X)``, are lowered with :func:`willow.compiler.lowering.lower`.
Each compiled operator is checked against the original call on real calibration rows before it is
used; one that cannot be lowered, fails to compile or disagrees keeps running as Python, and the
reason is recorded for ``explain()`` (a failed compilation also warns). The result is a new
:class:`PipelineGraph` whose statements call ``_willow.ops.<name>(...)``, so every later stage
(cost probes, cascade planning, code generation) works on the compiled pipeline unchanged.
"""

from __future__ import annotations

import ast
import copy
import inspect
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np

from willow.compiler.compile_budget import CompileBudget, budget_refusal, timed_lower
from willow.compiler.execution import StatementRunner
from willow.compiler.graph import ModelCall, PipelineGraph, Statement
from willow.compiler.lowering.arithmetic import node_at, replace_at
from willow.compiler.profiling import group_costs
from willow.compiler.verify import reproduces

__all__ = [
    "CompiledNode",
    "SkippedNode",
    "Operators",
    "CompilationResult",
    "compile_graph",
    "keep_faster",
    "apply_compilation",
]

RUNTIME = "_willow"
MODEL_TARGET = "<model>"


class CompilationWarning(UserWarning):
    """A kernel failed to compile or to reproduce the original; the Python call keeps running."""


@dataclass(frozen=True)
class CompiledNode:
    """One call replaced by a compiled operator.

    ``recipe`` is ``(object, method)``: enough to compile the operator again after loading a plan.
    The call sits at ``call_path`` of its statement: the assigned value, or the receiver of a
    method called on its result (``enc.transform(df).toarray()``). An array expression (lookups
    and elementwise arithmetic) replaces the sub-tree at ``path`` of its statement by
    ``_willow.ops.<attribute>(*arguments)``; ``objects`` are the fitted tables it captured (by
    expression) and ``signature`` what it assumes of its array operands.
    """

    statement: int | None  # None for the model call
    lineno: int
    original: str
    attribute: str
    operator: Any
    recipe: tuple[Any, str]
    path: tuple[Any, ...] | None = None
    arguments: tuple[ast.expr, ...] = ()
    call_path: tuple[str, ...] = ("value",)
    objects: tuple[tuple[str, Any], ...] = ()
    signature: dict[str, Any] | None = None


@dataclass(frozen=True)
class SkippedNode:
    """A call that keeps running as Python, and why."""

    lineno: int
    original: str
    reason: str


@dataclass(frozen=True)
class FusedText:
    """Text vectorizers stacked into a linear model, compiled as one kernel from raw strings.

    ``text`` is the variable every vectorizer transforms; ``vectorizers`` maps each feature
    group to the expression of its fitted vectorizer; ``attribute`` names the fused full-model
    operator in ``_willow.ops``.
    """

    text: str
    vectorizers: dict[str, str]
    attribute: str
    operator: Any
    statements: tuple[int, ...]
    model: Any


class Operators:
    """The compiled operators of one pipeline, as attributes (``_willow.ops.words_transform``)."""

    def __init__(self, operators: dict[str, Any]) -> None:
        self.__dict__.update(operators)

    def __repr__(self) -> str:
        return f"Operators({', '.join(sorted(self.__dict__))})"


@dataclass
class CompilationResult:
    """The compiled graph, its operators and a record of what was and was not compiled."""

    graph: PipelineGraph
    nodes: tuple[CompiledNode, ...]
    skipped: tuple[SkippedNode, ...]
    operators: Operators
    guarded: tuple[tuple[str, Any], ...]
    fused: FusedText | None = None
    # (object, method) pairs whose compilation did not fit calibration's time budget: compiled in
    # the background after calibration (willow.compiler.background)
    deferred: tuple[tuple[Any, str], ...] = ()

    def vectorizer(self, group: str) -> Any:
        """The fitted vectorizer object behind ``group`` in a fused pipeline."""
        assert self.fused is not None
        expression = self.fused.vectorizers[group]
        return next(obj for expr, obj in self.guarded if expr == expression)

    @property
    def recipes(self) -> list[dict[str, Any]]:
        """What a saved plan keeps to compile each node again after loading.

        Fitted objects that the function reads from its globals or closure are saved as their
        expression plus a content fingerprint (the live object is looked up again at load time
        and must match); the model's compiled call keeps the model itself.
        """
        from willow.fingerprints import fingerprint

        recipes = []
        for node in self.nodes:
            if node.path is not None:
                recipes.append(
                    {
                        "statement": node.statement,
                        "attribute": node.attribute,
                        "path": node.path,
                        "signature": node.signature,
                        "fingerprints": {expr: fingerprint(obj) for expr, obj in node.objects},
                    }
                )
                continue
            obj, method = node.recipe
            recipe: dict[str, Any] = {
                "statement": node.statement,
                "attribute": node.attribute,
                "method": method,
                "call_path": node.call_path,
            }
            if node.statement is None:
                recipe["object"] = obj
            else:
                recipe["expression"] = next(expr for expr, guarded in self.guarded if guarded is obj)
                recipe["fingerprint"] = fingerprint(obj)
            recipes.append(recipe)
        if self.fused is not None:
            recipes.append(
                {
                    "fused": True,
                    "text": self.fused.text,
                    "vectorizers": dict(self.fused.vectorizers),
                    "attribute": self.fused.attribute,
                    "statements": self.fused.statements,
                    "model": self.fused.model,
                }
            )
        return recipes

    def report(self) -> str:
        """Which calls run as generated kernels, which stay Python and why, and the kernels' source."""
        lines = ["Compiled nodes:"]
        if not self.nodes:
            lines.append("  (none)")
        for node in self.nodes:
            lines.append(
                f"  line {node.lineno:>4}  {node.original}  ->  _willow.ops.{node.attribute}  [{node.operator.name}]"
            )
        if self.skipped:
            lines.append("Kept as Python:")
            for skip in self.skipped:
                lines.append(f"  line {skip.lineno:>4}  {skip.original}: {skip.reason}")
        on_device = [n for n in self.nodes if getattr(n.operator, "device", "cpu") != "cpu"]
        if on_device:
            names = ", ".join(f"_willow.ops.{n.attribute} ({n.operator.device})" for n in on_device)
            lines.append(f"On the device: {names}; every other statement runs on the CPU.")
        if self.fused is not None:
            lines.append(
                f"Fused: {' + '.join(self.fused.vectorizers.values())} -> model, from `{self.fused.text}` "
                f"as one kernel (_willow.ops.{self.fused.attribute}); the matrices are never built."
            )
        for node in self.nodes:
            what = "Generated kernel" if getattr(node.operator, "generated", True) else "Compiled operator"
            lines += [
                "",
                f"{what} for _willow.ops.{node.attribute} ({node.operator.name}):",
                "",
                node.operator.source,
            ]
        if self.fused is not None:
            lines += [
                "",
                f"Generated kernel for _willow.ops.{self.fused.attribute} (fused):",
                "",
                self.fused.operator.source,
            ]
        return "\n".join(lines)


CHAINED_CALL = ("value", "func", "value")
"""Where the call sits in ``target = obj.method(*args).other()``: ``other``'s receiver."""


def _call_path(node: ast.stmt) -> tuple[str, ...] | None:
    """Where a candidate ``obj.method(*args)`` call sits in an assignment: its value, or the
    receiver of an argument-less method called on its result (``.toarray()``, ``.tocsr()``)."""
    if not (
        isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
    ):
        return None
    value = node.value
    if (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Attribute)
        and isinstance(value.func.value, ast.Call)
        and not value.args
        and not value.keywords
    ):
        return CHAINED_CALL
    return ("value",)


def _candidate_call(
    graph: PipelineGraph, st: Statement
) -> tuple[str, ast.expr, str, list[ast.expr], tuple[str, ...]] | None:
    """``(target, object expression, method, args, call path)`` for ``target = obj.method(*args)``
    statements (or ``obj.method(*args).other()``, see :func:`_call_path`) whose object comes from
    outside the function body (a global or closure variable)."""
    node = st.node
    path = _call_path(node)
    if path is None:
        return None
    call = node_at(node, path)
    if not (
        isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and not call.keywords
        and not any(isinstance(a, ast.Starred) for a in call.args)
    ):
        return None
    obj = call.func.value
    root = obj
    while isinstance(root, ast.Attribute):
        root = root.value
    if not isinstance(root, ast.Name) or st.reads.get(root.id, 0) is not None or root.id in graph.parameters:
        return None
    return node.targets[0].id, obj, call.func.attr, list(call.args), path


def _ops_call(attribute: str, args: list[ast.expr]) -> ast.Call:
    ops = ast.Attribute(value=ast.Name(id=RUNTIME, ctx=ast.Load()), attr="ops", ctx=ast.Load())
    return ast.Call(func=ast.Attribute(value=ops, attr=attribute, ctx=ast.Load()), args=args, keywords=[])


def _unique(base: str, taken: set[str]) -> str:
    name = "".join(c if c.isalnum() or c == "_" else "_" for c in base)
    candidate, k = name, 1
    while candidate in taken:
        k += 1
        candidate = f"{name}_{k}"
    taken.add(candidate)
    return candidate


def _rewrite(graph: PipelineGraph, nodes: list[CompiledNode]) -> PipelineGraph:
    """``graph`` with each compiled node's call replaced by ``_willow.ops.<attribute>(...)``."""
    statements = list(graph.statements)
    model_call = graph.model_call
    for node in nodes:
        if node.statement is None:
            ret = copy.deepcopy(model_call.node)
            call = ret.value
            assert isinstance(call, ast.Call)
            ret.value = ast.copy_location(_ops_call(node.attribute, list(call.args)), call)
            ast.fix_missing_locations(ret)
            model_call = ModelCall(
                lineno=model_call.lineno,
                node=ret,
                model=model_call.model,
                method=model_call.method,
                feature_variable=model_call.feature_variable,
                model_parameter=model_call.model_parameter,
            )
            continue
        st = statements[node.statement]
        assign = copy.deepcopy(st.node)
        if node.path is not None:
            old = node_at(assign, node.path)
            call = _ops_call(node.attribute, [copy.deepcopy(a) for a in node.arguments])
            replace_at(assign, node.path, ast.copy_location(call, old))
        else:
            call = node_at(assign, node.call_path)
            assert isinstance(call, ast.Call)
            replace_at(
                assign, node.call_path, ast.copy_location(_ops_call(node.attribute, list(call.args)), call)
            )
        ast.fix_missing_locations(assign)
        reads = {name: d for name, d in st.reads.items() if name in _loaded(assign)}
        statements[node.statement] = replace(st, node=assign, reads=reads)
    return replace(graph, statements=tuple(statements), model_call=model_call)


def _loaded(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _is_table(obj: Any) -> bool:
    import pandas as pd

    return isinstance(obj, (pd.DataFrame, pd.Series, dict))


def _resolve_fitted(expr: ast.expr, local_names: set[str], evaluate: Any) -> Any:
    """Evaluate ``expr`` if it reads only fitted state (no parameter or body variable), else raise
    ``NotLowerable``."""
    from willow.compiler.lowering.base import NotLowerable

    if any(isinstance(n, ast.Name) and n.id in local_names for n in ast.walk(expr)):
        raise NotLowerable(f"`{ast.unparse(expr)}` depends on the rows")
    if any(isinstance(n, (ast.Call, ast.NamedExpr, ast.Lambda)) for n in ast.walk(expr)):
        raise NotLowerable(f"`{ast.unparse(expr)}` calls a function")
    return evaluate(expr)


def compile_graph(
    graph: PipelineGraph,
    runner: StatementRunner,
    arguments: dict[str, Any],
    lower: Any,
    budget: CompileBudget | None = None,
) -> CompilationResult:
    """Lower what can be lowered in ``graph``, verified on one run over ``arguments`` (calibration rows).

    ``lower(obj, method)`` returns a compiled operator or raises ``NotLowerable``; an object
    whose estimated compile time exceeds what is left of ``budget`` stays Python and is listed in
    the result's ``deferred`` (``None``: no limit).

    The pass runs the graph once, statement by statement: a fitted object's call is offered to
    ``lower`` (:func:`_compile_fitted_call`), any other statement's array expressions to the
    expression compiler (:func:`_compile_expressions`), then the model call
    (:func:`_compile_model_call`); every kernel is checked against the original's value on the
    same rows (:func:`_kernel_agrees`) before it replaces the call.
    """
    state = _PassState.start(graph, runner, arguments, lower, budget)
    for st in graph.statements:
        found = _fitted_call(state, st)
        if found is None:
            _compile_expressions(state, st)
        else:
            _compile_fitted_call(state, st, found)
    _compile_model_call(state)
    return CompilationResult(
        graph=_rewrite(graph, state.nodes),
        nodes=tuple(state.nodes),
        skipped=tuple(state.skipped),
        operators=Operators({n.attribute: n.operator for n in state.nodes}),
        guarded=tuple(state.guarded.items()),
        deferred=tuple(state.deferred),
    )


@dataclass
class _PassState:
    """What one run of the compile pass reads (the graph, its namespace on the calibration rows)
    and what it gathers (compiled nodes, skipped calls, guarded objects, deferred compilations)."""

    graph: PipelineGraph
    runner: StatementRunner
    lower: Any
    budget: CompileBudget | None
    ns: dict[str, Any]  # the graph's variables, as the run has reached them
    taken: set[str]  # names the function already uses: a kernel's attribute avoids them
    local_names: set[str]  # parameters and body variables (what depends on the rows)
    fallback_namespace: dict[str, Any]  # the function's globals, no arguments
    attributes: set[str] = field(default_factory=set)
    nodes: list[CompiledNode] = field(default_factory=list)
    skipped: list[SkippedNode] = field(default_factory=list)
    guarded: dict[str, Any] = field(default_factory=dict)
    deferred: list[tuple[Any, str]] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        graph: PipelineGraph,
        runner: StatementRunner,
        arguments: dict[str, Any],
        lower: Any,
        budget: CompileBudget | None,
    ) -> _PassState:
        taken = set(graph.parameters) | {
            n.id for n in ast.walk(ast.parse(graph.source)) if isinstance(n, ast.Name)
        }
        return cls(
            graph=graph,
            runner=runner,
            lower=lower,
            budget=budget,
            ns=runner.namespace(arguments),
            taken=taken,
            local_names=set(graph.parameters) | {name for st in graph.statements for name in st.defines},
            fallback_namespace=runner.namespace({}),
        )

    def evaluate(self, expr: ast.expr) -> Any:
        return eval(compile(ast.Expression(body=expr), self.graph.filename, "eval"), self.ns)

    def resolve(self, expr: ast.expr) -> Any:
        """Fitted state only: an expression reading no parameter or body variable."""
        return _resolve_fitted(expr, self.local_names, self.evaluate)

    def name(self, label: str) -> str:
        """A fresh ``_willow.ops`` attribute for ``label``."""
        attribute = _unique(label, self.attributes | self.taken)
        self.attributes.add(attribute)
        return attribute


def _warn(message: str) -> None:
    """Warn at the first caller outside this module (the stage that asked for compilation)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, CompilationWarning, stacklevel=level)


def _compilation_failed(state: _PassState, lineno: int, original: str, exc: Exception) -> None:
    _warn(
        f"line {lineno}: compiling `{original}` failed ({type(exc).__name__}: {exc}); it keeps running as Python."
    )
    state.skipped.append(SkippedNode(lineno, original, f"compilation failed: {type(exc).__name__}: {exc}"))


def _kernel_agrees(
    state: _PassState, lineno: int, original: str, operator: Any, args: list[Any], expected: Callable[[], Any]
) -> bool:
    """Run ``operator`` on ``args`` and compare with ``expected()`` (the original's result, asked
    for only once the kernel ran); on a failure or a difference, warn and record why."""
    try:
        result = operator(*args)
    except Exception as exc:  # noqa: BLE001 - a lowering bug must never break the pipeline
        _warn(
            f"line {lineno}: the kernel for `{original}` raised {type(exc).__name__}: {exc}; it keeps running as Python."
        )
        state.skipped.append(SkippedNode(lineno, original, f"kernel raised {type(exc).__name__}: {exc}"))
        return False
    if not reproduces(result, expected()):
        _warn(
            f"line {lineno}: the kernel for `{original}` did not reproduce the original on the calibration rows; it keeps running as Python."
        )
        state.skipped.append(
            SkippedNode(lineno, original, "kernel output differed from the original on calibration rows")
        )
        return False
    return True


def _attempt(
    state: _PassState,
    statement: int | None,
    lineno: int,
    original: str,
    obj: Any,
    method: str,
    args: list[Any],
    expected: Callable[[], Any],
    label: str,
    call_path: tuple[str, ...] = ("value",),
) -> Any:
    """Lower ``obj.method``, check it on ``args`` against ``expected`` (a zero-argument callable
    giving the original's result, only called once the object is known to be lowerable) and
    record the node; ``None`` when it stays Python."""
    from willow.compiler.lowering.base import NotLowerable

    if inspect.ismodule(obj):  # np.hstack(...), pd.concat(...): functions, not fitted operators
        return None
    refusal = budget_refusal(obj, state.budget)
    if refusal is not None:
        state.skipped.append(SkippedNode(lineno, original, refusal))
        state.deferred.append((obj, method))
        return None
    try:
        operator = timed_lower(state.lower, obj, method)
    except NotLowerable as exc:
        state.skipped.append(SkippedNode(lineno, original, str(exc)))
        return None
    except Exception as exc:  # noqa: BLE001 - a lowering bug must never break the pipeline
        _compilation_failed(state, lineno, original, exc)
        return None
    if not _kernel_agrees(state, lineno, original, operator, args, expected):
        return None
    attribute = state.name(label)
    state.nodes.append(
        CompiledNode(statement, lineno, original, attribute, operator, (obj, method), call_path=call_path)
    )
    return operator


def _fitted_call(
    state: _PassState, st: Statement
) -> tuple[str, ast.expr, str, list[ast.expr], tuple[str, ...]] | None:
    """``st``'s call on a fitted object (:func:`_candidate_call`), or ``None`` when its receiver
    is a module (``np.column_stack(...)``: its arguments may hold array expressions) or a table
    (whose own methods are lowered as array expressions)."""
    found = _candidate_call(state.graph, st)
    receiver = state.evaluate(found[1]) if found is not None else None
    if found is not None and inspect.ismodule(receiver):
        found = None  # np.column_stack(...): a function, whose arguments may hold array expressions
    if found is not None and _is_table(receiver):
        if found[2] in ("reindex", "merge") and found[4] != CHAINED_CALL:
            state.skipped.append(
                SkippedNode(
                    st.lineno,
                    st.source,
                    "a lookup whose result stays a pandas object (its dtypes depend on which keys "
                    "are missing); lookups are compiled when converted with .to_numpy(dtype=float)",
                )
            )
        found = None  # a table's own methods (reindex...) are lowered as array expressions
    return found


def _compile_fitted_call(
    state: _PassState, st: Statement, found: tuple[str, ast.expr, str, list[ast.expr], tuple[str, ...]]
) -> None:
    """Run ``st`` (``target = obj.method(*args)``) and try to replace its call by a kernel."""
    target, obj_expr, method, arg_exprs, call_path = found
    ns = state.ns
    obj = state.evaluate(obj_expr)
    args = [state.evaluate(a) for a in arg_exprs]
    state.runner.run(ns, [st.index])
    if call_path == CHAINED_CALL:  # the call's own result (before `.toarray()`...), on the same args
        original_result = partial(getattr(obj, method), *args)
    else:
        original_result = partial(lambda value: value, ns[target])
    label = f"{target}_{method}"
    if (
        _attempt(state, st.index, st.lineno, st.source, obj, method, args, original_result, label, call_path)
        is not None
    ):
        state.guarded[ast.unparse(obj_expr)] = obj


def _compile_expressions(state: _PassState, st: Statement) -> None:
    """Compile the array expressions (lookups, arithmetic) in ``st``; runs ``st``."""
    from willow.compiler.lowering.arithmetic import find_expressions

    value = st.node.value if isinstance(st.node, ast.Assign) and len(st.node.targets) == 1 else None
    if value is None:
        state.runner.run(state.ns, [st.index])
        return
    found, refusals = find_expressions(value, state.evaluate, state.resolve)
    pending = _expression_operands(state, value, found)
    state.runner.run(state.ns, [st.index])
    for reason in refusals:
        state.skipped.append(SkippedNode(st.lineno, st.source, reason))
    for path, expression, sub, expected, values in pending:
        _compile_expression(state, st, path, expression, sub, expected, values)


def _expression_operands(state: _PassState, value: ast.expr, found: list) -> list:
    """For each found expression, ``(path, expression, sub-tree, original value, operand values)``,
    evaluated before the statement runs (it may rebind names its operands read)."""
    from willow.compiler.lowering.arithmetic_codegen import call_arguments

    pending = []
    for path, expression in found:
        sub = node_at(value, path)
        try:  # before the statement runs: it may rebind names its operands read
            values = [state.evaluate(a) for a in call_arguments(expression)]
            expected = state.evaluate(sub)
            if expression.stacked:  # the stacking call reads it as an array
                expected = np.asarray(expected)
            pending.append((path, expression, sub, expected, values))
        except Exception:  # noqa: BLE001 - the statement itself will raise, as the original
            continue
    return pending


def _compile_expression(
    state: _PassState,
    st: Statement,
    path: tuple[Any, ...],
    expression: Any,
    sub: ast.expr,
    expected: Any,
    values: list[Any],
) -> None:
    """Compile one array expression of ``st`` and keep it when it reproduces ``expected``."""
    from willow.compiler.lowering.arithmetic import signature
    from willow.compiler.lowering.arithmetic_codegen import compile_expression

    original = ast.unparse(sub)
    try:
        operator, arguments, objects = compile_expression(expression, sub, state.fallback_namespace)
    except Exception as exc:  # noqa: BLE001 - a lowering bug must never break the pipeline
        _compilation_failed(state, st.lineno, original, exc)
        return
    if not _kernel_agrees(state, st.lineno, original, operator, values, lambda: expected):
        return
    target = "_".join(sorted(st.defines)) or "expression"
    attribute = state.name(f"{target}_expr")
    state.nodes.append(
        CompiledNode(
            st.index,
            st.lineno,
            original,
            attribute,
            operator,
            (None, "<expression>"),
            path=("value", *path),
            arguments=tuple(arguments),
            objects=tuple(objects.items()),
            signature=signature(expression),
        )
    )
    state.guarded.update(objects)


def _compile_model_call(state: _PassState) -> None:
    """Offer the model call (one positional argument: the feature matrix) to ``lower``."""
    model_output = state.runner.model_output(state.ns)
    model_call = state.graph.model_call
    call = model_call.node.value
    assert isinstance(call, ast.Call)
    if not call.keywords and len(call.args) == 1:
        model = state.evaluate(model_call.model)
        X = state.ns[model_call.feature_variable]
        _attempt(
            state,
            None,
            model_call.lineno,
            ast.unparse(call),
            model,
            model_call.method,
            [X],
            lambda: model_output,
            f"model_{model_call.method}",
        )
    else:
        state.skipped.append(
            SkippedNode(model_call.lineno, ast.unparse(call), "the model call passes extra arguments")
        )


def fuse_text_pipeline(
    compilation: CompilationResult, graph: PipelineGraph, ns: dict[str, Any], expected: Any
) -> CompilationResult:
    """Fuse ``X = sp.hstack([v1.transform(t), v2.transform(t), ...])`` + a linear model into one kernel.

    Applies when every feature group is exactly one compiled vectorizer ``transform`` of the same
    variable, the groups and ``X`` are read by nothing else, ``X`` goes straight to the model and
    the fused kernel reproduces the model's output ``expected`` on the calibration rows (``ns`` holds a
    completed run of the compiled graph). Otherwise ``compilation`` is returned unchanged.
    """
    import scipy.sparse as _sp

    from willow.compiler.lowering.base import NotLowerable
    from willow.compiler.lowering.fused import fuse_text_linear

    stack = graph.stack
    if stack is None or graph.tail:
        return compilation
    try:
        stacker = eval(compile(ast.Expression(body=stack.function), graph.filename, "eval"), ns)
    except Exception:  # noqa: BLE001
        return compilation
    if stacker is not _sp.hstack:
        return compilation
    by_statement = {n.statement: n for n in compilation.nodes}
    vectorizers: dict[str, str] = {}
    objects = []
    text: str | None = None
    text_def: int | None = None
    statements = []
    for group in graph.groups:
        # the vectorizer statement, after at most the statement that defines the text it reads
        # (`texts = list(frame.values)`, shared by every group: it stays, the fused kernel reads it)
        own = [i for i in group.slice if i not in graph.shared_statements]
        if len(own) != 1 or own[0] not in by_statement:
            return compilation
        index = own[0]
        node = by_statement[index]
        original = ast.parse(node.original).body[0]
        if not (isinstance(original, ast.Assign) and isinstance(original.value, ast.Call)):
            return compilation
        args = original.value.args
        obj, method = node.recipe
        if method != "transform" or len(args) != 1 or not isinstance(args[0], ast.Name):
            return compilation
        reads = graph.statements[index].reads
        if text is None:
            text, text_def = args[0].id, reads.get(args[0].id)
        elif args[0].id != text or reads.get(args[0].id) != text_def:
            return compilation
        if set(group.slice) - {index, text_def}:
            return compilation
        vectorizers[group.name] = ast.unparse(original.value.func.value)
        objects.append(obj)
        statements.append(index)
    assert text is not None
    group_vars = {g.variable for g in graph.groups} | {graph.model_call.feature_variable}
    for st in graph.statements:
        if st.index not in statements and st.index != stack.statement and group_vars & set(st.reads):
            return compilation
    model = eval(compile(ast.Expression(body=graph.model_call.model), graph.filename, "eval"), ns)
    try:
        operator = fuse_text_linear(objects, model, graph.model_call.method)
    except NotLowerable:
        return compilation
    except Exception as exc:  # noqa: BLE001 - a lowering bug must never break the pipeline
        warnings.warn(
            f"fusing the text pipeline failed ({type(exc).__name__}: {exc}); it runs unfused.",
            CompilationWarning,
            stacklevel=3,
        )
        return compilation
    try:
        fused_output = operator(ns[text])
    except Exception as exc:  # noqa: BLE001
        warnings.warn(
            f"the fused text kernel raised {type(exc).__name__}: {exc}; it runs unfused.",
            CompilationWarning,
            stacklevel=3,
        )
        return compilation
    if not reproduces(fused_output, expected):
        warnings.warn(
            "the fused text kernel did not reproduce the model on calibration rows; it runs unfused.",
            CompilationWarning,
            stacklevel=3,
        )
        return compilation
    taken = set(compilation.operators.__dict__) | {
        n.id for n in ast.walk(ast.parse(graph.source)) if isinstance(n, ast.Name)
    }
    attribute = _unique(f"fused_{graph.model_call.method}", taken)
    operators = Operators({**compilation.operators.__dict__, attribute: operator})
    fused = FusedText(text, vectorizers, attribute, operator, tuple(statements), model)
    return replace(compilation, operators=operators, fused=fused)


def keep_faster(
    compilation: CompilationResult, original: PipelineGraph, python_costs: Any, compiled_costs: Any
) -> tuple[CompilationResult, Any]:
    """Keep only the compiled nodes that measured faster than the Python they replace.

    Per-call overheads can make a kernel slower than the library on small inputs; such nodes go
    back to Python, with the measured costs as the reason. Returns the trimmed compilation and a
    cost profile that takes each statement's cost from whichever version is kept.
    """
    python_by_index = {s.index: s for s in python_costs.statements}
    compiled_by_index = {s.index: s for s in compiled_costs.statements}
    kept: list[CompiledNode] = []
    skipped = list(compilation.skipped)
    for node in compilation.nodes:
        if node.statement is None:
            before, after = python_costs.model_seconds_per_row, compiled_costs.model_seconds_per_row
        else:
            before = python_by_index[node.statement].seconds_per_row
            after = compiled_by_index[node.statement].seconds_per_row
        # a node lowered for the GPU was asked for with device="cuda": calibration batches time
        # per-call transfers and launches, not the large batches it is for (nor anything under
        # the CUDA simulator), so it is kept whatever they measured
        if after < before or getattr(node.operator, "device", "cpu") != "cpu":
            kept.append(node)
        else:
            skipped.append(
                SkippedNode(
                    node.lineno,
                    node.original,
                    f"the kernel measured slower than Python on calibration batches "
                    f"({after * 1e6:.2f} vs {before * 1e6:.2f} us/row)",
                )
            )
    kept_statements = {n.statement for n in kept}
    statements = tuple(
        compiled_by_index[s.index] if s.index in kept_statements else python_by_index[s.index]
        for s in python_costs.statements
    )
    model_seconds = (
        compiled_costs.model_seconds_per_row
        if None in kept_statements
        else python_costs.model_seconds_per_row
    )
    groups = group_costs(tuple(g.name for g in python_costs.groups), statements)
    costs = replace(compiled_costs, statements=statements, groups=groups, model_seconds_per_row=model_seconds)
    guarded_exprs: list[str] = []  # in node order, as apply_compilation rebuilds them
    for n in kept:
        if n.path is not None:
            guarded_exprs += [expr for expr, _ in n.objects if expr not in guarded_exprs]
        elif n.statement is not None:
            found = _candidate_call(original, original.statements[n.statement])
            if found is not None and ast.unparse(found[1]) not in guarded_exprs:
                guarded_exprs.append(ast.unparse(found[1]))
    objects = dict(compilation.guarded)
    trimmed = CompilationResult(
        graph=_rewrite(original, kept),
        nodes=tuple(kept),
        skipped=tuple(skipped),
        operators=Operators({n.attribute: n.operator for n in kept}),
        guarded=tuple((expr, objects[expr]) for expr in guarded_exprs if expr in objects),
        deferred=compilation.deferred,
    )
    return trimmed, costs


def _reload_expression(
    graph: PipelineGraph, recipe: dict[str, Any], namespace: dict[str, Any], fn: Any
) -> CompiledNode:
    """Compile a saved array expression again from the graph, checking its tables' content."""
    from willow.compiler.lowering.arithmetic import analyze, is_stacked, stand_in
    from willow.compiler.lowering.arithmetic_codegen import compile_expression
    from willow.errors import PlanMismatchError
    from willow.fingerprints import fingerprint

    st = graph.statements[recipe["statement"]]
    sub = node_at(st.node, recipe["path"])
    local_names = set(graph.parameters) | {name for s in graph.statements for name in s.defines}

    def evaluate(expr: ast.expr) -> Any:
        return eval(compile(ast.Expression(body=expr), "<willow plan>", "eval"), namespace)

    def resolve(expr: ast.expr) -> Any:
        return _resolve_fitted(expr, local_names, evaluate)

    try:
        stacked = is_stacked(st.node, tuple(recipe["path"]), resolve)
        expression = analyze(sub, stand_in(recipe["signature"]), resolve, stacked=stacked)
    except Exception as exc:
        raise PlanMismatchError(
            f"The saved plan compiled `{ast.unparse(sub)}`, which cannot be compiled again in "
            f"{fn.__qualname__} ({type(exc).__name__}: {exc}). Recalibrate the pipeline."
        ) from exc
    for expr, obj in expression.objects.items():
        if fingerprint(obj) != recipe["fingerprints"].get(expr):
            raise PlanMismatchError(
                f"`{expr}` is not the table the saved plan was calibrated with (its content differs). "
                "Recalibrate the pipeline with the current table and save it again."
            )
    operator, arguments, objects = compile_expression(expression, sub, namespace)
    return CompiledNode(
        st.index,
        st.lineno,
        ast.unparse(sub),
        recipe["attribute"],
        operator,
        (None, "<expression>"),
        path=tuple(recipe["path"]),
        arguments=tuple(arguments),
        objects=tuple(objects.items()),
        signature=recipe["signature"],
    )


def apply_compilation(
    graph: PipelineGraph, recipes: list[dict[str, Any]], lower: Any, fn: Any
) -> CompilationResult:
    """Rebuild a :class:`CompilationResult` from saved recipes (after :func:`willow.load`).

    Raises :class:`~willow.PlanMismatchError` when a fitted object the plan compiled is no longer
    the same (by content) in ``fn``'s globals or closure.
    """
    from willow.compiler.execution import closure_values
    from willow.errors import PlanMismatchError
    from willow.fingerprints import fingerprint

    namespace = {**fn.__globals__, **closure_values(fn)}
    nodes = []
    guarded: dict[str, Any] = {}
    fused_recipe = next((r for r in recipes if r.get("fused")), None)
    for recipe in recipes:
        if recipe.get("fused"):
            continue
        if "path" in recipe:
            node = _reload_expression(graph, recipe, namespace, fn)
            nodes.append(node)
            guarded.update(node.objects)
            continue
        statement = recipe["statement"]
        if statement is None:
            obj = recipe["object"]
            lineno, original = graph.model_call.lineno, ast.unparse(graph.model_call.node.value)
        else:
            expression = recipe["expression"]
            try:
                obj = eval(compile(expression, "<willow plan>", "eval"), namespace)
            except Exception as exc:
                raise PlanMismatchError(
                    f"The saved plan compiled `{expression}`, which {fn.__qualname__} cannot find any "
                    f"more ({type(exc).__name__}: {exc}). Define it before loading the plan."
                ) from exc
            if fingerprint(obj) != recipe["fingerprint"]:
                raise PlanMismatchError(
                    f"`{expression}` is not the fitted object the saved plan was calibrated with (its "
                    "content differs). Recalibrate the pipeline with the current object and save it again."
                )
            guarded[expression] = obj
            st = graph.statements[statement]
            lineno, original = st.lineno, st.source
        operator = lower(obj, recipe["method"])
        nodes.append(
            CompiledNode(
                statement,
                lineno,
                original,
                recipe["attribute"],
                operator,
                (obj, recipe["method"]),
                call_path=tuple(recipe.get("call_path", ("value",))),
            )
        )
    result = CompilationResult(
        graph=_rewrite(graph, nodes),
        nodes=tuple(nodes),
        skipped=(),
        operators=Operators({n.attribute: n.operator for n in nodes}),
        guarded=tuple(guarded.items()),
    )
    if fused_recipe is not None:
        from willow.compiler.lowering.fused import fuse_text_linear

        model = fused_recipe["model"]
        vectorizers = [guarded[expr] for expr in fused_recipe["vectorizers"].values()]
        operator = fuse_text_linear(vectorizers, model, graph.model_call.method)
        fused = FusedText(
            fused_recipe["text"],
            dict(fused_recipe["vectorizers"]),
            fused_recipe["attribute"],
            operator,
            tuple(fused_recipe["statements"]),
            model,
        )
        result = replace(
            result, fused=fused, operators=Operators({**result.operators.__dict__, fused.attribute: operator})
        )
    return result
