"""Compile a generated tree function's nested ``if`` statements straight to LLVM IR.

A tree group's kernel body (see :mod:`trees_codegen`) is a plain Python function, readable and
runnable as Python, that adds one row's leaf values to ``out[i, :]``::

    @nested_ifs
    def add_leaf_values(X, out, i):
        x = X[i]
        acc0 = out[i, 0]
        feature_3 = x[3]
        if feature_3 <= 0.5:
            acc0 += 0.25
        else:
            ...
        out[i, 0] = acc0

Numba's own front end (bytecode analysis, type inference, lowering) spends about 1.3 s of CPU on
each 320-node group, 130 s for 500 trees x 63 leaves. Those functions use a tiny, fixed subset of
Python, so :func:`nested_ifs` translates the function's syntax tree to LLVM IR itself, inside a
Numba ``intrinsic``: the jitted ``kernel(X, out)`` only loops over rows and calls it, Numba's
LLVM pipeline optimises and caches the result as usual (``cache=True``), and the group costs a
fraction of the time to compile.

The translation keeps Python's (and the previous Numba code's) semantics exactly: ordered
``fcmp`` for ``<=``/``>``/``<``/``>=`` (false on NaN), ``float32`` values widened to ``float64``
before comparing, ``int()`` as a truncating ``fptosi``, ``and``/``or`` as ``select`` so that an
operand not evaluated in Python (an ``int()`` of NaN) never reaches the result, and leaf values
added to the accumulators one at a time in statement order (no reassociation).
Anything outside the subset raises :class:`UnsupportedTreeSyntax` while compiling.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import textwrap
from collections.abc import Callable
from typing import Any

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["nested_ifs", "in_bitset", "UnsupportedTreeSyntax"]

_DOUBLE = ir.DoubleType()
_BOOL = ir.IntType(1)
_I64 = ir.IntType(64)
_TRUE = ir.Constant(_BOOL, 1)
_FALSE = ir.Constant(_BOOL, 0)


class UnsupportedTreeSyntax(ValueError):
    """A statement or expression outside the nested-``if`` subset :func:`nested_ifs` compiles."""


def in_bitset(bits: np.ndarray, category: int) -> bool:
    """Whether bit ``category`` is set in ``bits`` (32 categories per int64 word); Python semantics
    of the compiled test, for running a generated function as plain Python."""
    word = category >> 5
    return word < bits.shape[0] and (bits[word] >> (category & 31)) & 1 == 1


def nested_ifs(function: Callable[..., None]) -> Any:
    """A Numba intrinsic ``function(X, out, i)`` compiled from ``function``'s syntax tree.

    ``X`` is a 2-D float32/float64 array of rows, ``out`` a 2-D float64 array of accumulated
    scores and ``i`` the row. Module-level arrays the function names (category bitsets) are read
    from ``function``'s globals when the kernel is compiled.
    """
    name = function.__name__
    state: dict[str, Any] = {}

    def body() -> ast.FunctionDef:
        if "tree" not in state:
            source = textwrap.dedent(inspect.getsource(function))
            state["tree"] = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef))
        return state["tree"]

    def typer(typingctx, X, out, i):
        if not (isinstance(X, types.Array) and X.ndim == 2 and X.dtype in (types.float32, types.float64)):
            raise UnsupportedTreeSyntax(f"{name}: X must be a 2-D float32/float64 array, found {X}.")
        if not (isinstance(out, types.Array) and out.ndim == 2 and out.dtype == types.float64):
            raise UnsupportedTreeSyntax(f"{name}: out must be a 2-D float64 array, found {out}.")
        if not isinstance(i, types.Integer):
            raise UnsupportedTreeSyntax(f"{name}: i must be an integer, found {i}.")

        def codegen(context, builder, signature, args):
            _Translator(context, builder, signature, args, function.__globals__).function(body())
            return context.get_dummy_value()

        return types.void(X, out, i), codegen

    typer.__name__ = name
    return intrinsic(typer)


class _Array:
    """Element pointers of a Numba array argument."""

    def __init__(self, context, builder, array_type, value):
        self.context, self.builder, self.type = context, builder, array_type
        self.array = context.make_array(array_type)(context, builder, value)
        self.shape = cgutils.unpack_tuple(builder, self.array.shape, array_type.ndim)
        self.strides = cgutils.unpack_tuple(builder, self.array.strides, array_type.ndim)

    def pointer(self, indices: list[ir.Value]) -> ir.Value:
        return cgutils.get_item_pointer2(
            self.context,
            self.builder,
            data=self.array.data,
            shape=self.shape,
            strides=self.strides,
            layout=self.type.layout,
            inds=indices,
        )


class _Translator:
    """Emits one ``nested_ifs`` function body into the builder of the calling kernel."""

    def __init__(self, context, builder, signature, args, namespace: dict[str, Any]):
        self.context, self.builder, self.namespace = context, builder, namespace
        X_type, out_type, i_type = signature.args
        self.X = _Array(context, builder, X_type, args[0])
        self.out = _Array(context, builder, out_type, args[1])
        self.i = context.cast(builder, args[2], i_type, types.intp)
        self.row_name: str | None = None
        self.values: dict[str, ir.Value] = {}  # SSA names: features read once
        self.slots: dict[str, ir.Value] = {}  # accumulators (allocas, promoted by mem2reg)
        self.input_is_float32 = X_type.dtype == types.float32

    # -- statements ---------------------------------------------------------------------------

    def function(self, node: ast.FunctionDef) -> None:
        names = [a.arg for a in node.args.args]
        if len(names) != 3:
            raise UnsupportedTreeSyntax(f"{node.name}: expected parameters (X, out, i), found {names}.")
        self.X_name, self.out_name, self.i_name = names
        body = [s for s in node.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
        self.statements(body)

    def statements(self, body: list[ast.stmt]) -> None:
        for statement in body:
            self.statement(statement)

    def statement(self, node: ast.stmt) -> None:
        builder = self.builder
        if isinstance(node, ast.If):
            condition = self.condition(node.test)
            with builder.if_else(condition) as (then, otherwise):
                with then:
                    self.statements(node.body)
                with otherwise:
                    self.statements(node.orelse)
            return
        if (
            isinstance(node, ast.AugAssign)
            and isinstance(node.op, ast.Add)
            and isinstance(node.target, ast.Name)
        ):
            slot = self.slots.get(node.target.id)
            if slot is None:
                raise UnsupportedTreeSyntax(f"line {node.lineno}: {node.target.id} is not an accumulator.")
            builder.store(builder.fadd(builder.load(slot), self.number(node.value)), slot)
            return
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
            if isinstance(target, ast.Name):
                self.assign(target.id, value, node.lineno)
                return
            if isinstance(target, ast.Subscript) and isinstance(value, ast.Name) and value.id in self.slots:
                builder.store(builder.load(self.slots[value.id]), self.out_cell(target))
                return
        raise UnsupportedTreeSyntax(f"line {node.lineno}: unsupported statement {ast.unparse(node)!r}.")

    def assign(self, name: str, value: ast.expr, lineno: int) -> None:
        if (
            isinstance(value, ast.Subscript)
            and isinstance(value.value, ast.Name)
            and value.value.id == self.X_name
            and isinstance(value.slice, ast.Name)
            and value.slice.id == self.i_name
        ):
            self.row_name = name  # x = X[i]: features are read through X and i
            return
        if (
            isinstance(value, ast.Subscript)
            and isinstance(value.value, ast.Name)
            and value.value.id == self.out_name
        ):
            slot = cgutils.alloca_once(self.builder, _DOUBLE, name=name)
            self.builder.store(self.builder.load(self.out_cell(value)), slot)
            self.slots[name] = slot
            return
        if isinstance(value, ast.Subscript):
            self.values[name] = self.feature(value)
            return
        raise UnsupportedTreeSyntax(f"line {lineno}: unsupported assignment to {name}.")

    def out_cell(self, node: ast.Subscript) -> ir.Value:
        index = node.slice
        if not (
            isinstance(index, ast.Tuple)
            and len(index.elts) == 2
            and isinstance(index.elts[0], ast.Name)
            and index.elts[0].id == self.i_name
            and isinstance(index.elts[1], ast.Constant)
        ):
            raise UnsupportedTreeSyntax(f"line {node.lineno}: expected out[i, <column>].")
        return self.out.pointer([self.i, ir.Constant(_I64, int(index.elts[1].value))])

    def feature(self, node: ast.Subscript) -> ir.Value:
        """``x[k]`` (``x = X[i]``) as a float64 value."""
        if not (
            isinstance(node.value, ast.Name)
            and node.value.id == self.row_name
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, int)
        ):
            raise UnsupportedTreeSyntax(f"line {node.lineno}: expected a feature read x[<column>].")
        value = self.builder.load(self.X.pointer([self.i, ir.Constant(_I64, node.slice.value)]))
        return self.builder.fpext(value, _DOUBLE) if self.input_is_float32 else value

    # -- expressions --------------------------------------------------------------------------

    def number(self, node: ast.expr) -> ir.Value:
        """A float literal (``np.inf`` and ``-np.inf`` included)."""
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, (int, float))
            and not isinstance(node.value, bool)
        ):
            return ir.Constant(_DOUBLE, float(node.value))
        if isinstance(node, ast.Attribute) and node.attr == "inf":
            return ir.Constant(_DOUBLE, float("inf"))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            inner = self.number(node.operand)
            return ir.Constant(_DOUBLE, -float(inner.constant))
        raise UnsupportedTreeSyntax(f"line {node.lineno}: expected a number, found {ast.unparse(node)!r}.")

    def value(self, node: ast.expr) -> tuple[ir.Value, str]:
        """A float64 (``"f"``) or int64 (``"i"``) value."""
        builder = self.builder
        if isinstance(node, ast.Name) and node.id in self.values:
            return self.values[node.id], "f"
        if isinstance(node, ast.Subscript):
            return self.feature(node), "f"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) == 1:
            argument, kind = self.value(node.args[0])
            if node.func.id == "abs" and kind == "f":
                fabs = builder.module.declare_intrinsic("llvm.fabs", [_DOUBLE])
                return builder.call(fabs, [argument]), "f"
            if node.func.id == "int" and kind == "f":
                return builder.fptosi(argument, _I64), "i"
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitAnd):
            left, kind = self.value(node.left)
            if kind == "i" and isinstance(node.right, ast.Constant) and isinstance(node.right.value, int):
                return builder.and_(left, ir.Constant(_I64, node.right.value)), "i"
        try:
            return self.number(node), "f"
        except UnsupportedTreeSyntax:
            raise UnsupportedTreeSyntax(
                f"line {node.lineno}: unsupported expression {ast.unparse(node)!r}."
            ) from None

    def condition(self, node: ast.expr) -> ir.Value:
        builder = self.builder
        if isinstance(node, ast.BoolOp):
            result = self.condition(node.values[0])
            for operand in node.values[1:]:
                value = self.condition(operand)
                # select, not and/or: Python would not have evaluated `value` (it may be poison)
                if isinstance(node.op, ast.And):
                    result = builder.select(result, value, _FALSE)
                else:
                    result = builder.select(result, _TRUE, value)
            return result
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return builder.not_(self.condition(node.operand))
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            left, left_kind = self.value(node.left)
            right, right_kind = self.value(node.comparators[0])
            if left_kind != "f" or right_kind != "f":
                raise UnsupportedTreeSyntax(f"line {node.lineno}: only float comparisons are compiled.")
            operator = _COMPARISONS.get(type(node.ops[0]))
            if operator is None:
                raise UnsupportedTreeSyntax(
                    f"line {node.lineno}: unsupported comparison {ast.unparse(node)!r}."
                )
            return builder.fcmp_ordered(operator, left, right)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "in_bitset"
            and len(node.args) == 2
            and isinstance(node.args[0], ast.Name)
        ):
            category, kind = self.value(node.args[1])
            if kind != "i":
                raise UnsupportedTreeSyntax(f"line {node.lineno}: in_bitset needs an integer category.")
            return self.bitset_test(np.asarray(self.namespace[node.args[0].id], dtype=np.int64), category)
        raise UnsupportedTreeSyntax(f"line {node.lineno}: unsupported condition {ast.unparse(node)!r}.")

    def bitset_test(self, bits: np.ndarray, category: ir.Value) -> ir.Value:
        """``in_bitset(bits, category)`` for a constant ``bits``: a load from a constant global,
        at a clamped index so that an out-of-range category never reads out of bounds."""
        builder = self.builder
        module = builder.module
        name = f"willow_bitset_{hashlib.sha256(bits.tobytes()).hexdigest()[:16]}_{len(bits)}"
        table_type = ir.ArrayType(_I64, len(bits))
        table = module.globals.get(name)
        if table is None:
            table = ir.GlobalVariable(module, table_type, name=name)
            table.initializer = ir.Constant(table_type, [int(w) for w in bits])
            table.global_constant = True
            table.linkage = "internal"
        word = builder.ashr(category, ir.Constant(_I64, 5))
        # categories here are never negative (guarded by the caller's range test), as in Python
        in_range = builder.icmp_unsigned("<", word, ir.Constant(_I64, len(bits)))
        index = builder.select(in_range, word, ir.Constant(_I64, 0))
        loaded = builder.load(builder.gep(table, [ir.Constant(_I64, 0), index]))
        bit = builder.and_(
            builder.ashr(loaded, builder.and_(category, ir.Constant(_I64, 31))), ir.Constant(_I64, 1)
        )
        return builder.select(in_range, builder.icmp_signed("==", bit, ir.Constant(_I64, 1)), _FALSE)


_COMPARISONS = {ast.LtE: "<=", ast.Lt: "<", ast.Gt: ">", ast.GtE: ">="}
