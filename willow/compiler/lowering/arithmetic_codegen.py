"""Generated Numba kernels for analysed array expressions (:mod:`willow.compiler.lowering.arithmetic`).

:func:`compile_expression` renders an :class:`~willow.compiler.lowering.arithmetic.Expression` as
one kernel ``kernel(out, first, last, width, <per operand: rows, table values | array | scalar>)``
that fills rows ``first..last-1`` of ``out`` element by element, and wraps it in a call that checks
its operands first: any call the kernel was not compiled for (another dtype or shape, keys a lookup
cannot match exactly, a missing ``.loc`` key) runs the original expression instead, so results and
errors are pandas' and numpy's own. ``out`` gets numpy's memory order for the result (see
:func:`_prepare`). A batch that reads and writes at least :data:`PARALLEL_MIN_VALUES` values is
filled in row chunks on the shared worker threads (:mod:`~willow.compiler.lowering.chunks`), as the text and
tree kernels are; each row's elements are computed the same way, so results are identical.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from willow.compiler.lowering import arithmetic_runtime, chunks
from willow.compiler.lowering.arithmetic import (
    PAIRWISE_COLUMNS,
    Expression,
    Literal,
    Operand,
    Reduce,
    Stack,
    analyze,
)
from willow.compiler.lowering.astgen import call, compile_module, const, name, runtime_digest
from willow.compiler.lowering.base import CompiledOperator, device_expression_compiler
from willow.compiler.lowering.signatures import LayoutKernel

__all__ = ["lower_expression", "compile_expression", "call_arguments", "values_per_row"]

RUNTIME_MODULE = "willow.compiler.lowering.arithmetic_runtime"
# Reductions of an empty row that numpy answers itself: max/min raise, means warn "Mean of empty
# slice" (and the NaN of 0/0 may carry another sign bit than the kernel's).
_EMPTY_ROW_TO_NUMPY = ("row_nanmax", "row_nanmin", "row_mean", "row_nanmean")

PARALLEL_MIN_VALUES = 1 << 21
"""Values a call reads and writes (rows x (operand columns + output columns)) from which it fills
row chunks on the worker threads. ``python -m benchmarks.compiler_lookups --threads`` on the 2-core
development machine: below ~1M values the hand-off to the pool (~150 us) costs more than the
second thread saves (0.16-0.95x at 16k-64k rows); from 2M, two threads measured 1.29-1.72x for
merges, lookup products, row reductions and lookup arithmetic, and 0.97-1.07x for a bare reindex,
whose time is mostly matching keys, which stays on the calling thread."""


def values_per_row(expression: Expression, width: int) -> int:
    """Values a call reads and writes per row: its operands' columns plus ``width`` output columns
    (what :data:`PARALLEL_MIN_VALUES` counts)."""
    return sum(op.width for op in expression.operands if op.ndim > 0) + max(width, 1)


def _element(node: Any, two_d: bool) -> str:
    """Source of ``node``'s element at row ``i`` (and column ``j``)."""
    if isinstance(node, Literal):
        return repr(node.value)
    if isinstance(node, Operand):
        s = node.slot
        if node.lookup is not None:
            if node.ndim == 1:
                return f"(v{s}[r{s}] if r{s} >= 0 else np.nan)"
            column = "j" if node.width > 1 or not two_d else "0"
            left = node.lookup.left_width
            if left:  # a merge keeping left columns: those first, then the table's
                right = f"(v{s}[r{s}, {column} - {left}] if r{s} >= 0 else np.nan)"
                return f"(l{s}[i, {column}] if {column} < {left} else {right})"
            return f"(v{s}[r{s}, {column}] if r{s} >= 0 else np.nan)"
        if node.ndim == 0:
            return f"a{s}"
        if node.ndim == 1:
            return f"a{s}[i]"
        return f"a{s}[i, {'j' if node.width > 1 else '0'}]"
    return node.template.format(*(_element(a, two_d) for a in node.args))


def _kernel_source(expression: Expression) -> str:
    root = expression.root
    two_d = root.ndim == 2
    params = ["out", "first", "last", "width"]
    row_reads = []
    for op in expression.operands:
        if op.lookup is not None:
            params += [f"rows{op.slot}", f"v{op.slot}"]
            if op.lookup.left_width:
                params.append(f"l{op.slot}")
            row_reads.append(f"r{op.slot} = rows{op.slot}[i]")
        else:
            params.append(f"a{op.slot}")
    body = ["for i in range(first, last):"]
    body += [f"    {line}" for line in row_reads]
    if isinstance(root, Reduce):
        # the row's elements into buf, then reduced as numpy reduces a row of that layout
        params += ["pairwise", "buf"]
        target = "out[i, 0]" if root.keepdims else "out[i]"
        body += [
            "    for j in range(width):",
            f"        buf[j] = {_element(root.child, True)}",
            f"    {target} = {root.helper}(buf, width, pairwise)",
        ]
    elif isinstance(root, Stack):  # np.column_stack: one column per element
        body += [f"    out[i, {k}] = {_element(column, False)}" for k, column in enumerate(root.columns)]
    elif two_d:
        body += ["    for j in range(width):", f"        out[i, j] = {_element(root, two_d)}"]
    else:
        body += [f"    out[i] = {_element(root, two_d)}"]
    body.append("return out")
    function = ast.parse(f"def kernel({', '.join(params)}):\n" + "\n".join("    " + b for b in body)).body[0]
    assert isinstance(function, ast.FunctionDef)
    function.decorator_list = [
        call("numba.njit", cache=const(True), nogil=const(True), error_model=const("numpy"))
    ]
    doc = (
        f"Generated by willow: `{expression.source}` as one elementwise kernel; "
        f"runtime {runtime_digest(arithmetic_runtime)}."
    )
    helpers = ["minimum", "maximum", "fmin", "fmax", "clip", "sign", "truth"]
    if isinstance(root, Reduce):
        helpers.append(root.helper)
    module = ast.Module(
        body=[
            ast.Expr(value=ast.Constant(value=doc)),
            ast.Import(names=[ast.alias(name="numba")]),
            ast.Import(names=[ast.alias(name="numpy", asname="np")]),
            ast.ImportFrom(module=RUNTIME_MODULE, names=[ast.alias(name=h) for h in helpers], level=0),
            function,
        ],
        type_ignores=[],
    )
    return module  # type: ignore[return-value]


def _substitute(node: Any, replaced: dict[int, str]) -> Any:
    """A copy of ``node`` with the sub-trees in ``replaced`` (by identity) swapped for names."""
    if id(node) in replaced:
        return name(replaced[id(node)])
    if not isinstance(node, ast.AST):
        return node
    fields = {}
    for key, value in ast.iter_fields(node):
        if isinstance(value, list):
            fields[key] = [_substitute(v, replaced) for v in value]
        else:
            fields[key] = _substitute(value, replaced)
    return ast.copy_location(type(node)(**fields), node)


def _fallback(expression: Expression, node: ast.expr, namespace: dict[str, Any]) -> Callable[..., Any]:
    """The original expression as a function of the operands' values: what a call runs when the
    kernel does not apply. Lookups take their keys (or left frame) as the operand."""
    replaced = {
        id(expr): f"_operand{op.slot}"
        for op in expression.operands
        if op.lookup is None
        for expr in (op.expr, *op.aliases)
    }
    lookups = {id(op.lookup.keys): f"_operand{op.slot}" for op in expression.operands if op.lookup}
    body = _substitute(node, {**replaced, **lookups})
    args = ast.arguments(
        posonlyargs=[],
        args=[ast.arg(arg=f"_operand{op.slot}") for op in expression.operands],
        kwonlyargs=[],
        kw_defaults=[],
        defaults=[],
    )
    lam = ast.fix_missing_locations(ast.Expression(body=ast.Lambda(args=args, body=body)))
    return eval(compile(lam, "<willow expression fallback>", "eval"), namespace)


def _prepare(expression: Expression) -> Callable[..., tuple | None]:
    """Checks the operands of one call against what the kernel was compiled for and builds its
    arguments; ``None`` sends the call to the fallback.

    2-D operands that had more than one column at compile time must share one width (numpy's
    broadcasting); those that had one column must still have one.
    """
    operands = expression.operands
    root = expression.root
    reduce = isinstance(root, Reduce)
    stack = isinstance(root, Stack)
    two_d = (root.child.ndim if reduce else root.ndim) == 2 and not stack  # a stack's operands are 1-D
    dtype = np.float64 if root.kind == "f" else np.bool_

    def prepare(*values: Any) -> tuple | None:
        args: list[Any] = []
        n = -1
        width: int | None = None
        votes: set[str] = set()
        index = None  # the Series operands' shared index
        for op, value in zip(operands, values):
            if op.series:
                # pandas aligns Series on their index: equal indexes (as column selections of one
                # frame have) align nothing; any other call runs pandas
                if type(value) is not pd.Series or not isinstance(value.dtype, np.dtype):
                    return None
                if index is None:
                    index = value.index
                elif value.index is not index and not value.index.equals(index):
                    return None
                value = value.to_numpy()
            if op.lookup is not None:
                rows = op.lookup.rows(value)
                if rows is None:
                    return None
                length, columns = rows.shape[0], op.lookup.width
                args += [rows, op.lookup.values]
                if op.lookup.left_width:
                    left = op.lookup.left_values(value)
                    if left is None:
                        return None
                    args.append(left)
                if op.ndim == 2 and length > 1 and columns > 1:
                    votes.add("F")  # pandas' to_numpy of a frame is Fortran-ordered
            elif op.ndim == 0:
                if isinstance(value, (bool, np.bool_)) or not isinstance(
                    value, (int, float, np.integer, np.float64, np.float32)
                ):
                    return None
                try:
                    args.append(float(value))
                except OverflowError:
                    return None
                continue
            else:
                if type(value) is not np.ndarray or value.ndim != op.ndim:
                    return None
                if value.dtype != (np.float64 if op.kind == "f" else np.bool_):
                    return None
                length = value.shape[0]
                columns = value.shape[1] if op.ndim == 2 else 1
                args.append(value)
                if op.ndim == 2 and length > 1 and columns > 1 and value.strides[0] != value.strides[1]:
                    votes.add("F" if abs(value.strides[0]) < abs(value.strides[1]) else "C")
            if op.ndim == 2:
                if op.width > 1:
                    if width is None:
                        width = columns
                    elif columns != width:
                        return None
                elif columns != 1:
                    return None
            if n < 0:
                n = length
            elif length != n:
                return None
        if n < 0:
            return None
        width = (1 if width is None else width) if two_d else 1  # 0 columns stay 0
        # numpy's result layout (order="K"): Fortran when every operand that orders its two axes
        # is Fortran-ordered, C otherwise; downstream reductions sum in memory order, so it matters.
        order = "F" if votes == {"F"} else "C"
        if stack:  # np.column_stack's result: C order
            return (np.empty((n, root.width), dtype=dtype), n, root.width, *args)
        if reduce:
            # numpy reduces a C-ordered row (or a lone row) pairwise, an F-ordered one in order
            pairwise = order == "C" or n == 1
            if (pairwise and width > PAIRWISE_COLUMNS) or (width == 0 and root.helper in _EMPTY_ROW_TO_NUMPY):
                return None
            out = np.empty((n, 1) if root.keepdims else n, dtype=np.float64)
            return (out, n, width, *args, pairwise, np.empty(width, dtype=np.float64))
        out = np.empty((n, width) if two_d else n, dtype=dtype, order=order)
        return (out, n, width, *args)

    return prepare


def lower_expression(
    node: ast.expr,
    evaluate: Callable[[ast.expr], Any],
    resolve: Callable[[ast.expr], Any],
    namespace: dict[str, Any],
) -> tuple[CompiledOperator, list[ast.expr], dict[str, Any]]:
    """Compile the array expression ``node`` into one kernel.

    Returns the operator, the expressions its call takes (each operand's expression; a lookup's
    keys or left frame) and the fitted tables it captured, by expression. ``namespace`` resolves
    the names of the Python fallback. Raises :class:`NotLowerable` when ``node`` cannot be
    compiled.
    """
    expression = analyze(node, evaluate, resolve)
    return compile_expression(expression, node, namespace)


def compile_expression(
    expression: Expression, node: ast.expr, namespace: dict[str, Any]
) -> tuple[CompiledOperator, list[ast.expr], dict[str, Any]]:
    """Generate and compile the kernel of an analysed expression; see :func:`lower_expression`."""
    for_device = device_expression_compiler()  # device="cuda": willow.gpu.arithmetic
    if for_device is not None:
        compiled = for_device(expression, node, namespace)
        if compiled is not None:
            return compiled
    module_ast = _kernel_source(expression)
    module, source = compile_module(module_ast, "expression")
    prepare = _prepare(expression)
    fallback = _fallback(expression, node, namespace)

    scratch_row = isinstance(expression.root, Reduce)  # the last argument: one row's elements
    # one signature per combination of C/F layouts, read-only operands (see LayoutKernel): the
    # kernel writes ``out`` and the scratch row, and reads everything else
    kernel = LayoutKernel(module.kernel, written=(0, -1) if scratch_row else (0,))

    def run(*values: Any) -> Any:
        args = prepare(*values)
        if args is None:
            return fallback(*values)
        out, n, width, *rest = args
        workers = chunks.worker_threads()
        if workers > 1 and n * values_per_row(expression, width) >= PARALLEL_MIN_VALUES:

            def fill(first: int, last: int) -> None:
                if scratch_row:  # each thread its own
                    kernel(out, first, last, width, *rest[:-1], np.empty(width, dtype=np.float64))
                else:
                    kernel(out, first, last, width, *rest)

            chunks.map_row_chunks(fill, n, workers)
            return out
        return kernel(out, 0, n, width, *rest)

    notes = [
        f"#   operand {op.slot}: " + (op.lookup.describe() if op.lookup else ast.unparse(op.expr))
        for op in expression.operands
    ]
    operator = CompiledOperator(
        name=f"array expression ({len(expression.lookups)} lookups)",
        source="\n".join(notes) + "\n" + source,
        function=run,
    )
    return operator, call_arguments(expression), expression.objects


def call_arguments(expression: Expression) -> list[ast.expr]:
    """The expressions a call of the compiled operator passes: each operand's, a lookup's keys."""
    return [op.lookup.keys if op.lookup is not None else op.expr for op in expression.operands]
