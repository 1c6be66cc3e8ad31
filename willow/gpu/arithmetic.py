"""Elementwise array expressions as CUDA kernels: one thread per row, the CPU kernel's element code.

Under ``device="cuda"`` :func:`~willow.compiler.lowering.arithmetic_codegen.compile_expression`
asks :func:`compile_expression_cuda` first (installed by :func:`willow.gpu.device.use_device`).
The expression is the one the CPU lowering analysed (:mod:`willow.compiler.lowering.arithmetic`),
and the kernel is generated the same way: each element is the CPU code generator's own element
source (:func:`~willow.compiler.lowering.arithmetic_codegen._element`: lookups' missing keys as
NaN, ``minimum``/``maximum``/``fmin``/``fmax``/``clip``/``sign``/``truth`` with numpy's NaN rules),
the scalar helpers are the CPU runtime's functions (:mod:`~willow.compiler.lowering.arithmetic_runtime`)
re-decorated as ``@cuda.jit(device=True)``, numpy's ``sqrt``/``floor``/``ceil``/``trunc``/``rint``/
``isinf``/``isfinite`` (which Numba's CUDA target does not compile) are device functions written
to give numpy's result (:mod:`willow.gpu.templates`), and the module is built as Python AST and rendered
with astor. A call is checked exactly as on the CPU (the CPU's ``prepare``: any dtype, shape,
Series index or key the kernel was not compiled for runs the original expression, so results and
errors are numpy's and pandas' own); the operands move host -> device (a lookup's fitted table
once, when the operator is built), one thread fills row ``cuda.grid(1)`` (all its columns), and
the result is copied into a host array of numpy's memory order.

Row reductions (``np.sum(..., axis=1)``...) stay on the CPU: their per-row scratch buffer has the
row's width, which a CUDA thread cannot allocate.

Exactness: under the simulator results are bit-identical to the CPU kernel's and numpy's (NaN,
infinities and division by zero included; Numba's CUDA target uses numpy's error model, so a
division by zero gives inf/NaN and never raises). On a GPU, NVVM may contract ``a * b + c`` into
one fused multiply-add (one rounding fewer), so such expressions can differ from numpy in the
last bit; this has not been measured on a device (none was lent).
"""

from __future__ import annotations

import ast
import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

from willow.compiler.backend import load_generated_module, render_module
from willow.compiler.lowering import arithmetic_runtime
from willow.compiler.lowering.arithmetic import Expression, Reduce, Stack
from willow.compiler.lowering.arithmetic_codegen import (
    _element,
    _fallback,
    _prepare,
    call_arguments,
)
from willow.compiler.lowering.astgen import specialize
from willow.gpu import runtime, templates

__all__ = ["CudaExpressionOperator", "build_cuda_expression_source", "compile_expression_cuda"]

HELPERS = ("minimum", "maximum", "fmin", "fmax", "clip", "sign", "truth")
"""The CPU runtime's scalar helpers the element code may call, compiled as CUDA device functions."""

NUMPY_FUNCTIONS = {
    name: f"np_{name}" for name in ("sqrt", "trunc", "floor", "ceil", "rint", "isinf", "isfinite")
}
"""numpy functions the element code calls -> their device functions in :mod:`willow.gpu.templates`
(Numba's CUDA target has no loops for them), in definition order."""
_NEEDS = {"np_floor": ("np_trunc",), "np_ceil": ("np_trunc",), "np_rint": ("np_trunc", "np_floor")}


class _DeviceNumpy(ast.NodeTransformer):
    """``np.sqrt(x)`` -> ``np_sqrt(x)``... for the functions in :data:`NUMPY_FUNCTIONS`."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id == "np"
            and func.attr in NUMPY_FUNCTIONS
        ):
            name = NUMPY_FUNCTIONS[func.attr]
            self.used.update((name, *_NEEDS.get(name, ())))
            node.func = ast.Name(id=name, ctx=ast.Load())
        return node


def _parameters(expression: Expression) -> list[str]:
    """The kernel's parameters after ``out, n, width``: per operand, what the CPU kernel takes."""
    params: list[str] = []
    for op in expression.operands:
        if op.lookup is not None:
            params += [f"rows{op.slot}", f"v{op.slot}"]
            if op.lookup.left_width:
                params.append(f"l{op.slot}")
        else:
            params.append(f"a{op.slot}")
    return params


def build_cuda_expression_source(expression: Expression) -> str:
    """Rendered source of the module whose ``kernel(out, n, width, ...)`` fills row ``cuda.grid(1)``
    of ``out`` with the expression's elements."""
    root = expression.root
    if isinstance(root, Reduce):
        raise ValueError("row reductions have no CUDA kernel (they stay on the CPU)")
    two_d = root.ndim == 2
    reads = [f"r{op.slot} = rows{op.slot}[i]" for op in expression.operands if op.lookup is not None]
    if isinstance(root, Stack):  # np.column_stack: one column per element
        writes = [f"out[i, {k}] = {_element(column, False)}" for k, column in enumerate(root.columns)]
    elif two_d:
        writes = ["for j in range(width):", f"    out[i, j] = {_element(root, True)}"]
    else:
        writes = [f"out[i] = {_element(root, False)}"]
    lines = [
        f"def kernel(out, n, width, {', '.join(_parameters(expression))}):",
        "    i = cuda.grid(1)",
        "    if i < n:",
        *(f"        {line}" for line in reads + writes),
    ]
    kernel = ast.parse("\n".join(lines)).body[0]
    assert isinstance(kernel, ast.FunctionDef)
    numpy_calls = _DeviceNumpy()
    numpy_calls.visit(kernel)
    kernel.body.insert(0, ast.Expr(value=ast.Constant(value="Row cuda.grid(1) of the expression.")))
    kernel.decorator_list = [ast.parse("cuda.jit(cache=True)", mode="eval").body]
    doc = f"Generated by willow: `{expression.source}` as one elementwise CUDA kernel, one thread per row."
    module = ast.parse("import math\n\nimport numpy as np\nfrom numba import cuda\n")
    module.body.insert(0, ast.Expr(value=ast.Constant(value=doc)))
    for name in (n for n in NUMPY_FUNCTIONS.values() if n in numpy_calls.used):
        function = specialize(getattr(templates, name), name, {"TWO_POW_52": templates.TWO_POW_52})
        function.decorator_list = [ast.parse("cuda.jit(device=True)", mode="eval").body]
        module.body.append(function)
    called = {n.func.id for n in ast.walk(kernel) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    for helper in (h for h in HELPERS if h in called):  # only those the elements call
        function = specialize(getattr(arithmetic_runtime, helper).py_func, helper, {})
        function.decorator_list = [ast.parse("cuda.jit(device=True)", mode="eval").body]
        module.body.append(function)
    module.body.append(kernel)
    return render_module(module)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Under the simulator, silence the RuntimeWarnings its numpy scalars emit (a division by zero)
    in its kernel threads, which ``np.errstate`` does not reach: the CPU and CUDA kernels emit none."""
    if not runtime.simulator_active():
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


class CudaExpressionOperator:
    """An analysed elementwise expression run on the device: ``op(*operands)`` returns what the
    expression returns (the original expression runs for calls the kernel does not apply to).

    Follows the :class:`~willow.compiler.lowering.base.CompiledOperator` contract (``name``,
    ``source``, ``generated``, call) and adds ``device = "cuda"``.
    """

    device = "cuda"
    generated = True

    def __init__(self, expression: Expression, node: ast.expr, namespace: dict[str, Any]) -> None:
        self.expression = expression
        self.name = f"array expression ({len(expression.lookups)} lookups) on cuda"
        source = build_cuda_expression_source(expression)
        notes = [
            f"#   operand {op.slot}: " + (op.lookup.describe() if op.lookup else ast.unparse(op.expr))
            for op in expression.operands
        ]
        self.source = "\n".join(notes) + "\n" + source
        self._kernel = load_generated_module(source, "cuda_expression").kernel
        self._prepare = _prepare(expression)
        self._fallback = _fallback(expression, node, namespace)
        # fitted tables cross to the device once; a call's keys and arrays cross per call
        self._tables = {
            op.slot: (op.lookup.values, runtime.to_device(op.lookup.values, what="lookup table"))
            for op in expression.operands
            if op.lookup is not None
        }

    def __repr__(self) -> str:
        return f"CudaExpressionOperator({self.expression.source!r})"

    def _device_arguments(self, args: list[Any]) -> list[Any]:
        """The CPU kernel's arguments (from ``prepare``) as the device kernel takes them."""
        moved: list[Any] = []
        position = 0
        for op in self.expression.operands:
            if op.lookup is not None:
                host, device = self._tables[op.slot]
                values = args[position + 1]
                moved += [
                    runtime.to_device(args[position], what="lookup keys"),
                    device if values is host else runtime.to_device(values, what="lookup table"),
                ]
                position += 2
                if op.lookup.left_width:
                    moved.append(runtime.to_device(args[position], what="lookup operand"))
                    position += 1
            elif op.ndim == 0:
                moved.append(args[position])
                position += 1
            else:
                moved.append(runtime.to_device(args[position], what="expression operand"))
                position += 1
        assert position == len(args)
        return moved

    device_inputs = False  # operands are checked on the host (dtype, shape, a Series' index)

    def _run(self, values: tuple[Any, ...]) -> tuple[Any, Any]:
        """``(host result, None)`` when the kernel does not apply (the original expression ran, or
        0 rows), else ``(prepared host buffer, device result)``."""
        prepared = self._prepare(*values)
        if prepared is None:
            return self._fallback(*values), None
        out, n, width, *args = prepared
        if n == 0:
            return out, None
        device_out = runtime.empty(out.shape, out.dtype)
        threads = runtime.threads_per_block()
        with _quiet():
            self._kernel[(n + threads - 1) // threads, threads](
                device_out, n, width, *self._device_arguments(args)
            )
        return out, device_out

    def __call__(self, *values: Any) -> Any:
        out, device_out = self._run(values)
        if device_out is not None:
            out[...] = runtime.to_host(device_out, "expression result")  # numpy's memory order
        return out

    def output_device(self, *values: Any) -> Any:
        """What a call returns, left on the device (C order) when the kernel computed it: for a
        device operator that reads it next (:mod:`willow.gpu.residency`). Calls the kernel does
        not apply to return the host result, which the next operator copies over itself."""
        out, device_out = self._run(values)
        return out if device_out is None else device_out


def compile_expression_cuda(
    expression: Expression, node: ast.expr, namespace: dict[str, Any]
) -> tuple[CudaExpressionOperator, list[ast.expr], dict[str, Any]] | None:
    """The CUDA counterpart of :func:`~willow.compiler.lowering.arithmetic_codegen.compile_expression`
    (same returned triple), or ``None`` for a row reduction, which stays on the CPU."""
    if isinstance(expression.root, Reduce):
        return None
    return CudaExpressionOperator(expression, node, namespace), call_arguments(expression), expression.objects
