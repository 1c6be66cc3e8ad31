"""Elementwise numpy arithmetic and key lookups fused into one generated Numba kernel.

An expression such as::

    np.maximum(user_table.reindex(rows["userId"]).to_numpy(dtype=float) - 3.0, 0) * weights[:, None]

is read into a small tree (:func:`analyze`): *operands* are lookups into fitted tables
(:mod:`willow.compiler.lowering.lookups`), float64/bool ``ndarray`` sub-expressions evaluated by
Python (``rows["t"].to_numpy(dtype=float)``) and numeric scalars; *operations* are ``+ - * / **``,
unary ``-``, comparisons, ``& | ~`` on booleans, ``x[:, None]`` and the numpy functions in
:data:`FUNCTIONS`. :mod:`willow.compiler.lowering.arithmetic_codegen` generates one kernel for it
(Python AST rendered with astor) that loops over rows (and columns), gathers each lookup's row
(NaN for a missing key) and evaluates the whole tree per element, without temporaries.

Exactness: every operation compiled is bit-identical to numpy: ``+ - * /``, ``sqrt``,
comparisons, ``abs``, ``sign``, ``floor``/``ceil``/``trunc``/``rint``, ``minimum``/``maximum``/
``fmin``/``fmax``/``where``/``clip`` and ``** 2``/``** 0.5``/``** -1``/``** 1``/``** 0``
(numpy's fast paths), NaN/inf propagation and division by zero included (the kernel uses
numpy's error model, so it never raises; numpy's RuntimeWarnings are not emitted). Transcendental
functions (log, log1p, exp, expm1, tanh, arctan...) and other powers are *not* fused: numba calls
the C library where numpy 2 uses its own SIMD routines, which differ by 1-3 ulp and are up to
19x slower per element (``python -m benchmarks.compiler_lookups --ulps``: log, log1p, log2, exp,
expm1, arctan, pow 1 ulp; log10 2 ulp; tanh, cbrt 3 ulp; log1p 26 vs 9 ns, tanh 41 vs 2 ns). A
feature 1 ulp off can flip a tree split, so numpy computes them, around compiled sub-expressions
(``np.log1p(<compiled lookup>)``).

Row reductions ``np.sum``/``np.nansum``/``np.mean``/``np.nanmean``/``np.nanmax``/``np.nanmin`` with
``axis=1`` (and ``keepdims``) of a computed 2-D float64 expression are compiled as the kernel's
root (:data:`REDUCTIONS`): each row is reduced as numpy reduces that row of the array it would
have built, whose memory order the kernel knows (pairwise summation for a C-ordered array, in
order for an F-ordered one; see :mod:`willow.compiler.lowering.arithmetic_runtime`), so sums and
means are bit-identical; rows wider than :data:`PAIRWISE_COLUMNS` summed pairwise, and empty rows
of means/max/min, run numpy. ``nanmax``/``nanmin`` are equal as numbers (the sign of a zero
maximum follows numpy's scalar rule, not its SIMD loops) and emit no "All-NaN slice" warning.

Series operands: arithmetic on float64/bool ``Series`` (``rows["a"] / rows["b"]``) is compiled
only where its result is read as an array (pandas would build a ``Series``, the kernel an
ndarray): inside ``.to_numpy(dtype=float)``, ``.to_numpy()``, ``.values`` or
``np.asarray(..., dtype=float)``, or as an element of the list given to ``np.column_stack`` /
``np.hstack`` (``stacked``, which convert each element with ``np.asarray``). A ``np.column_stack``
whose elements are all 1-D trees of one kind is one kernel (:class:`Stack`) writing a column per
element, its operands read once for all columns. pandas aligns Series on
their index: a call runs the kernel only when all its Series share one index (``Index.equals``, as
column selections of one frame do; then pandas aligns nothing), else pandas. A Series result read
as a Series (``(rows["a"] / 2).round()``), ``np.clip`` of a Series (``Series.clip``) and
``s[:, None]`` stay Python.

Shapes follow numpy broadcasting for the forms pipelines use: all operands 1-D (length ``n``), or
all 2-D ``(n, c)`` with ``c`` equal or 1 (``x[:, None]`` makes a column). Anything else, and any
call whose operands differ from what the kernel was compiled for (dtype, dimensions, a ``Series``
instead of an array or Series that pandas would align, keys a lookup cannot match exactly, a ``.loc`` key that is missing), runs
the original expression in Python instead, so results (and pandas' errors) are always the
original's.
"""

from __future__ import annotations

import ast
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from willow.compiler.lowering.base import NotLowerable
from willow.compiler.lowering.lookups import Lookup, match_lookup, unwrap_float

__all__ = [
    "FUNCTIONS",
    "REDUCTIONS",
    "PAIRWISE_COLUMNS",
    "Reduce",
    "Stack",
    "Operand",
    "Apply",
    "Literal",
    "Expression",
    "analyze",
    "signature",
    "stand_in",
    "find_expressions",
    "is_stacked",
    "node_at",
    "replace_at",
]

# numpy function -> (arity, element template, result kind); ``{0}``... are the operands' elements.
# Only functions whose float64 result is exactly numpy's: transcendental functions (log, exp,
# tanh...) are left to numpy itself, around compiled sub-expressions (see the module docstring).
FUNCTIONS: dict[Any, tuple[int, str, str]] = {
    np.sqrt: (1, "np.sqrt({0})", "f"),
    np.square: (1, "({0} * {0})", "f"),
    np.abs: (1, "abs({0})", "f"),
    np.fabs: (1, "abs({0})", "f"),
    np.sign: (1, "sign({0})", "f"),
    np.floor: (1, "np.floor({0})", "f"),
    np.ceil: (1, "np.ceil({0})", "f"),
    np.trunc: (1, "np.trunc({0})", "f"),
    np.rint: (1, "np.rint({0})", "f"),
    np.minimum: (2, "minimum({0}, {1})", "f"),
    np.maximum: (2, "maximum({0}, {1})", "f"),
    np.fmin: (2, "fmin({0}, {1})", "f"),
    np.fmax: (2, "fmax({0}, {1})", "f"),
    np.clip: (3, "clip({0}, {1}, {2})", "f"),
    np.isnan: (1, "({0} != {0})", "b"),
    np.isfinite: (1, "np.isfinite({0})", "b"),
    np.isinf: (1, "np.isinf({0})", "b"),
}
# numpy's fast paths for ``array ** scalar`` (square, sqrt, reciprocal, copy, ones): exact.
# Row reductions of a 2-D float64 expression (``axis=1``) -> the runtime helper that reduces one
# row as numpy does (see :mod:`willow.compiler.lowering.arithmetic_runtime`).
REDUCTIONS: dict[Any, str] = {
    np.sum: "row_sum",
    np.nansum: "row_nansum",
    np.mean: "row_mean",
    np.nanmean: "row_nanmean",
    np.nanmax: "row_nanmax",
    np.nanmin: "row_nanmin",
}
PAIRWISE_COLUMNS = 128
"""Widest row whose pairwise sum the kernel reproduces: numpy sums a contiguous row of up to 128
elements in 8 interleaved partial sums, wider rows recursively in halves (not compiled)."""
_FAST_POWERS = {2.0: "({0} * {0})", 0.5: "np.sqrt({0})", -1.0: "(1.0 / {0})", 1.0: "(+{0})", 0.0: "1.0"}
_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_COMPARE = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}


class Opaque(Exception):
    """A sub-expression the kernel cannot evaluate; the reason says why."""


class _ScalarOnly(Exception):
    """A sub-expression without arrays: Python evaluates it and passes the number in."""


@dataclass(eq=False)
class Operand:
    """An input of the kernel: an array or scalar evaluated by Python, or a lookup."""

    expr: ast.expr
    kind: str  # "f" float64, "b" bool
    ndim: int  # 0 scalar, 1, 2
    width: int = 1
    lookup: Lookup | None = None
    slot: int = -1
    integer: bool = False  # a scalar holding an integer
    series: bool = False  # a pandas Series (passed to the kernel as its values)
    aliases: list[ast.expr] = field(default_factory=list)  # other places of the same value


@dataclass(eq=False)
class Apply:
    """An elementwise operation: ``template`` formats the operands' element expressions."""

    template: str
    args: list[Any]
    kind: str
    ndim: int
    width: int = 1
    series: bool = False  # pandas would give a Series here


@dataclass(eq=False)
class Reduce:
    """A row reduction (``np.nansum(child, axis=1[, keepdims=True])``): the root of a kernel."""

    helper: str  # the runtime function reducing one row
    child: Any  # a 2-D float64 tree
    keepdims: bool
    kind: str = "f"
    series: bool = False

    @property
    def ndim(self) -> int:
        return 2 if self.keepdims else 1

    @property
    def width(self) -> int:
        return 1


@dataclass(eq=False)
class Stack:
    """``np.column_stack([e0, e1, ...])`` of 1-D trees: column ``k`` of the result is ``ek``."""

    columns: list[Any]
    kind: str
    series: bool = False
    ndim: int = 2

    @property
    def width(self) -> int:
        return len(self.columns)


@dataclass(eq=False)
class Literal:
    value: float
    integer: bool = False
    kind: str = "f"
    ndim: int = 0
    width: int = 1
    series: bool = False


@dataclass(eq=False)
class Expression:
    """An analysed expression: its tree, its operands in call order and what they evaluate."""

    root: Any
    operands: list[Operand]
    source: str
    objects: dict[str, Any] = field(default_factory=dict)
    stacked: bool = False  # consumed by np.column_stack/np.hstack: an ndarray may stand for a Series

    @property
    def lookups(self) -> list[Lookup]:
        return [o.lookup for o in self.operands if o.lookup is not None]


def _combine_shapes(args: list[Any]) -> tuple[int, int]:
    arrays = [a for a in args if a.ndim > 0]
    if not arrays:
        raise Opaque("no array operand")
    ndims = {a.ndim for a in arrays}
    if ndims == {1, 2}:
        raise Opaque("1-D and 2-D operands broadcast against each other's columns")
    ndim = ndims.pop()
    widths = {a.width for a in arrays} - {1} if ndim == 2 else set()
    if len(widths) > 1:
        raise Opaque(f"operands with {sorted(widths)} columns do not broadcast")
    return ndim, (widths.pop() if widths else 1)


class _Analyzer:
    def __init__(
        self, evaluate: Callable[[ast.expr], Any], resolve: Callable[[ast.expr], Any], series: bool = False
    ):
        self.evaluate = evaluate
        self.resolve = resolve
        self.series = series  # whether a Series operand may be read: its result becomes an ndarray
        self.operands: list[Operand] = []
        self.objects: dict[str, Any] = {}
        self.refusals: list[str] = []

    def operand(self, node: ast.expr) -> Operand:
        source = ast.unparse(node)
        if not any(isinstance(n, (ast.Call, ast.NamedExpr)) for n in ast.walk(node)):
            for seen in self.operands:  # the same side-effect-free value: pass it once
                if seen.lookup is None and ast.unparse(seen.expr) == source:
                    seen.aliases.append(node)
                    return seen
        try:
            value = self.evaluate(node)
        except Exception as exc:  # noqa: BLE001 - not evaluable on its own: not an operand
            raise Opaque(f"`{ast.unparse(node)}` cannot be evaluated alone ({type(exc).__name__})") from exc
        if isinstance(value, np.ndarray) and type(value) is np.ndarray:
            if value.dtype == np.float64 and value.ndim in (1, 2):
                kind = "f"
            elif value.dtype == np.bool_ and value.ndim in (1, 2):
                kind = "b"
            else:
                raise Opaque(f"`{ast.unparse(node)}` is a {value.ndim}-D {value.dtype} array")
            width = value.shape[1] if value.ndim == 2 else 1
            op = Operand(node, kind, value.ndim, width)
        elif type(value) is pd.Series and _plain_dtype(value.dtype) in ("f", "b"):
            if not self.series:
                raise Opaque(f"`{ast.unparse(node)}` is a Series and the result is not converted to an array")
            op = Operand(node, "f" if value.dtype == np.float64 else "b", 1, series=True)
        elif isinstance(value, (numbers.Integral, numbers.Real)) and not isinstance(value, (bool, np.bool_)):
            if not isinstance(value, (int, float, np.integer, np.float64, np.float32)):
                raise Opaque(f"`{ast.unparse(node)}` is a {type(value).__name__}")
            op = Operand(node, "f", 0, integer=isinstance(value, (int, np.integer)))
        else:
            raise Opaque(f"`{ast.unparse(node)}` is a {type(value).__name__}, not a numpy array")
        self.operands.append(op)
        return op

    def function(self, node: ast.expr) -> Any:
        try:
            return self.resolve(node)
        except NotLowerable:
            return None

    def visit(self, node: ast.expr) -> Any:
        mark = len(self.operands)
        try:
            return self._visit(node)
        except _ScalarOnly:
            del self.operands[mark:]
            return self.operand(node)

    def _visit(self, node: ast.expr) -> Any:
        try:
            lookup = match_lookup(node, self.resolve, self.evaluate)
        except NotLowerable as exc:
            self.refusals.append(str(exc))
            raise Opaque(str(exc)) from exc
        if lookup is not None:
            op = Operand(lookup.keys, "f", lookup.ndim, lookup.width, lookup=lookup)
            self.operands.append(op)
            self.objects[lookup.table_expr] = self.resolve(ast.parse(lookup.table_expr, mode="eval").body)
            return op
        converted = self.conversion(node)
        if converted is not None:
            return converted
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise Opaque(f"literal {node.value!r}")
            return Literal(float(node.value), isinstance(node.value, int))
        if isinstance(node, ast.BinOp):
            left, right = self.visit(node.left), self.visit(node.right)
            if isinstance(node.op, (ast.BitAnd, ast.BitOr)):
                self.need(left, right, kind="b")
                symbol = "&" if isinstance(node.op, ast.BitAnd) else "|"
                return self.apply("({0} " + symbol + " {1})", [left, right], "b")
            self.need(left, right, kind="f")
            if type(node.op) in _BINARY:
                return self.apply("({0} " + _BINARY[type(node.op)] + " {1})", [left, right], "f")
            if isinstance(node.op, ast.Pow):
                if isinstance(right, Literal) and right.value in _FAST_POWERS:
                    return self.apply(_FAST_POWERS[right.value], [left], "f")
                raise Opaque("a power other than ** 2, ** 0.5, ** -1, ** 1, ** 0 (numpy computes it)")
            raise Opaque(f"operator {type(node.op).__name__}")
        if (
            isinstance(node, ast.UnaryOp)
            and isinstance(node.op, ast.USub)
            and isinstance(node.operand, ast.Constant)
            and type(node.operand.value) in (int, float)
        ):
            return Literal(-float(node.operand.value), isinstance(node.operand.value, int))
        if isinstance(node, ast.UnaryOp):
            operand = self.visit(node.operand)
            if isinstance(node.op, ast.USub):
                self.need(operand, kind="f")
                return self.apply("(-{0})", [operand], "f")
            if isinstance(node.op, ast.UAdd):
                self.need(operand, kind="f")
                return self.apply("(+{0})", [operand], "f")
            if isinstance(node.op, ast.Invert):
                self.need(operand, kind="b")
                return self.apply("(not {0})", [operand], "b")
            raise Opaque(f"operator {type(node.op).__name__}")
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _COMPARE:
            left, right = self.visit(node.left), self.visit(node.comparators[0])
            self.need(left, right, kind="f")
            return self.apply("({0} " + _COMPARE[type(node.ops[0])] + " {1})", [left, right], "b")
        if isinstance(node, ast.Subscript) and self.is_new_column(node.slice):
            inner = self.visit(node.value)
            if inner.ndim != 1:
                raise Opaque("x[:, None] of a value that is not 1-D")
            if inner.series:
                raise Opaque("x[:, None] of a Series (pandas refuses multi-dimensional indexing)")
            return Apply("{0}", [inner], inner.kind, 2, 1)
        if isinstance(node, ast.Call) and not node.keywords:
            function = self.function(node.func)
            if function is np.where and len(node.args) == 3:
                cond, a, b = (self.visit(arg) for arg in node.args)
                if a.kind != b.kind:
                    raise Opaque("np.where with a float and a bool branch")
                if a.ndim == 0 and b.ndim == 0 and (a.integer or b.integer):
                    raise Opaque("np.where between integer scalars gives an integer array")
                test = "{0}" if cond.kind == "b" else "truth({0})"
                result = self.apply("({1} if " + test + " else {2})", [cond, a, b], a.kind)
                result.series = False  # np.where gives an ndarray, whatever its operands
                return result
            entry = FUNCTIONS.get(function) if _hashable(function) else None
            if entry is not None and len(node.args) == entry[0]:
                args = [self.visit(arg) for arg in node.args]
                self.need(*args, kind="f")
                if function is np.clip and args[0].series:
                    raise Opaque("np.clip of a Series is Series.clip (pandas' own rule for signed zeros)")
                return self.apply(entry[1], args, entry[2])
            if isinstance(function, np.ufunc) and any(self.compiles_alone(arg) for arg in node.args):
                raise Opaque(f"numpy computes {function.__name__}; its argument is compiled on its own")
        return self.operand(node)

    def conversion(self, node: ast.expr) -> Any:
        """``<Series expression>.to_numpy(dtype=float)`` (or ``.values``, ``.to_numpy()``,
        ``np.asarray(..., dtype=float)``) as the kernel's ndarray; ``None`` when ``node`` is not
        such a conversion (or converts a lookup, or something the kernel cannot compute)."""
        unwrapped = unwrap_float(node, self.resolve)
        if unwrapped is None:
            return None
        inner, to_float = unwrapped
        is_asarray = isinstance(node, ast.Call) and not (
            isinstance(node.func, ast.Attribute) and node.func.attr == "to_numpy"
        )
        mark, outer = len(self.operands), self.series
        self.series = True
        try:
            tree = self.visit(inner)
        except (Opaque, NotLowerable):
            del self.operands[mark:]
            return None
        finally:
            self.series = outer
        if isinstance(tree, Operand) and tree.lookup is None and not tree.series:
            del self.operands[mark:]  # an array converted: an operand as a whole
            return None
        if (
            (not tree.series and not is_asarray)  # ndarray.to_numpy / .values do not exist
            or (to_float and tree.kind != "f")  # bool -> float conversion
            or tree.ndim != 1
        ):
            del self.operands[mark:]
            return None
        if isinstance(tree, Operand):
            tree = Apply("{0}", [tree], tree.kind, tree.ndim, tree.width)
        tree.series = False
        return tree

    def compiles_alone(self, node: ast.expr) -> bool:
        """Whether ``node`` holds a lookup or array operation of its own."""
        try:
            return _computes(_Analyzer(self.evaluate, self.resolve).visit(node))
        except (Opaque, NotLowerable):
            return False

    def is_new_column(self, index: ast.expr) -> bool:
        if not (isinstance(index, ast.Tuple) and len(index.elts) == 2):
            return False
        first, second = index.elts
        if not (
            isinstance(first, ast.Slice)
            and first.lower is None
            and first.upper is None
            and first.step is None
        ):
            return False
        if isinstance(second, ast.Constant):
            return second.value is None
        return self.function(second) is None and _is_newaxis(second, self.resolve)

    @staticmethod
    def need(*args: Any, kind: str) -> None:
        for arg in args:
            if arg.kind != kind:
                raise Opaque("a boolean operand in arithmetic" if kind == "f" else "a float operand of & | ~")

    @staticmethod
    def apply(template: str, args: list[Any], kind: str) -> Any:
        ndim, width = _combine_shapes(args) if any(a.ndim for a in args) else (0, 1)
        if ndim == 0:
            raise _ScalarOnly
        return Apply(template, args, kind, ndim, width, series=any(a.series for a in args))


def _plain_dtype(dtype: Any) -> str:
    """``"f"`` for numpy float64, ``"b"`` for numpy bool, ``""`` for anything else."""
    if not isinstance(dtype, np.dtype):
        return ""
    return "f" if dtype == np.float64 else "b" if dtype == np.bool_ else ""


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _is_newaxis(node: ast.expr, resolve: Callable[[ast.expr], Any]) -> bool:
    try:
        return resolve(node) is None and isinstance(node, ast.Attribute) and node.attr == "newaxis"
    except NotLowerable:
        return False


def analyze(
    node: ast.expr,
    evaluate: Callable[[ast.expr], Any],
    resolve: Callable[[ast.expr], Any],
    stacked: bool = False,
) -> Expression:
    """Read ``node`` into an :class:`Expression` or raise :class:`NotLowerable` saying why not.

    ``evaluate(expr)`` gives a sub-expression's value on the calibration rows (to learn operand
    dtypes and shapes); ``resolve(expr)`` evaluates fitted state only (raising ``NotLowerable`` for
    anything row-dependent). The expression must contain a lookup or an array operation.
    ``stacked`` says that ``node``'s value is only read by ``np.column_stack``/``np.hstack``
    (:func:`is_stacked`), which convert a ``Series`` to its values: then arithmetic on ``Series``
    may give an ndarray in place of the ``Series`` pandas would build.
    """
    analyzer = _Analyzer(evaluate, resolve, series=stacked)
    try:
        reduction = _reduction(node, resolve)
        if _is_stacking_call(node, resolve, (np.column_stack,)):
            assert isinstance(node, ast.Call)
            analyzer.series = True  # column_stack reads each element with np.asarray
            columns = [analyzer.visit(element) for element in node.args[0].elts]  # type: ignore[attr-defined]
            kinds = {c.kind for c in columns}
            if not columns or any(c.ndim != 1 for c in columns) or len(kinds) != 1:
                raise Opaque("np.column_stack of other than 1-D columns of one kind")
            root = Stack(columns, kinds.pop())
        elif reduction is not None:
            helper, child, keepdims = reduction
            inner = analyzer.visit(child)
            if inner.ndim != 2 or inner.kind != "f" or not _computes(inner):
                raise Opaque("a row reduction of something other than a computed 2-D float64 expression")
            root = Reduce(helper, inner, keepdims)
        else:
            root = analyzer.visit(node)
    except Opaque as exc:
        error = NotLowerable(f"`{ast.unparse(node)}` is not a compilable array expression: {exc}")
        error.refusals = analyzer.refusals  # type: ignore[attr-defined]
        raise error from exc
    if not _computes(root) or root.ndim == 0:
        raise NotLowerable(f"`{ast.unparse(node)}` has no lookup or array operation to compile")
    for slot, operand in enumerate(analyzer.operands):
        operand.slot = slot
    return Expression(root, analyzer.operands, ast.unparse(node), analyzer.objects, stacked)


# Calls that read each element of their list argument as ``np.asarray(element)`` would.
_STACKING = (np.column_stack, np.hstack)


def _is_stacking_call(
    node: ast.AST, resolve: Callable[[ast.expr], Any], functions: tuple[Any, ...] = _STACKING
) -> bool:
    """``np.column_stack([...])``/``np.hstack((...))`` (of ``functions``): one literal list or
    tuple, no keywords, no ``*`` elements."""
    if not (
        isinstance(node, ast.Call)
        and len(node.args) == 1
        and not node.keywords
        and isinstance(node.args[0], (ast.List, ast.Tuple))
        and not any(isinstance(e, ast.Starred) for e in node.args[0].elts)
    ):
        return False
    try:
        function = resolve(node.func)
    except NotLowerable:
        return False
    return any(function is f for f in functions)


def is_stacked(root: ast.AST, path: tuple[Any, ...], resolve: Callable[[ast.expr], Any]) -> bool:
    """Whether the node at ``path`` inside ``root`` is an element of a stacking call's list."""
    if len(path) < 4 or path[-4:-2] != ("args", 0) or path[-2] != "elts":
        return False
    return _is_stacking_call(node_at(root, path[:-4]), resolve)


def _reduction(node: ast.expr, resolve: Callable[[ast.expr], Any]) -> tuple[str, ast.expr, bool] | None:
    """``(helper, child, keepdims)`` for ``np.nansum(child, axis=1[, keepdims=<bool>])`` and the
    other :data:`REDUCTIONS`; ``None`` for anything else."""
    if not (isinstance(node, ast.Call) and len(node.args) == 1 and node.keywords):
        return None
    try:
        function = resolve(node.func)
    except NotLowerable:
        return None
    if not _hashable(function) or function not in REDUCTIONS:
        return None
    options = {}
    for keyword in node.keywords:
        if keyword.arg not in ("axis", "keepdims") or not isinstance(keyword.value, ast.Constant):
            return None
        options[keyword.arg] = keyword.value.value
    if options.get("axis") not in (1, -1) or type(options["axis"]) is not int:
        return None
    keepdims = options.get("keepdims", False)
    if type(keepdims) is not bool:
        return None
    return REDUCTIONS[function], node.args[0], keepdims


def _computes(node: Any) -> bool:
    """Whether the tree does real work (a lookup or an operation, not just ``x[:, None]``)."""
    if isinstance(node, Reduce):
        return True
    if isinstance(node, Stack):
        return any(_computes(c) for c in node.columns)
    if isinstance(node, Operand):
        return node.lookup is not None
    if isinstance(node, Apply):
        return node.template != "{0}" or any(_computes(a) for a in node.args)
    return False


def signature(expression: Expression) -> dict[str, tuple[Any, ...]]:
    """What the kernel assumes of each Python-evaluated operand: ``source -> (kind, ndim, width,
    integer, series)`` (a merge's left frame: ``("frame", 2, width, False, False, [(column,
    dtype)...])``); with :func:`stand_in` it lets a loaded plan recompile without calibration
    rows."""
    known: dict[str, Any] = {
        ast.unparse(op.expr): (op.kind, op.ndim, op.width, op.integer, op.series)
        for op in expression.operands
        if op.lookup is None
    }
    for op in expression.operands:  # a merge's left frame: its columns fix the result's layout
        lookup = op.lookup
        if lookup is not None and lookup.left_columns is not None:
            columns = list(zip(lookup.left_columns, lookup.left_dtypes))
            known[ast.unparse(lookup.keys)] = ("frame", 2, len(columns), False, False, columns)
    return known


def stand_in(known: dict[str, Any]) -> Callable[[ast.expr], Any]:
    """An ``evaluate`` that gives placeholder values with the recorded kinds and shapes (a plan
    saved before Series operands were compiled records four fields: no Series)."""

    def evaluate(node: ast.expr) -> Any:
        source = ast.unparse(node)
        if source not in known:
            raise KeyError(source)
        kind, ndim, width, integer, *rest = known[source]
        if kind == "frame":  # a merge's left frame: its columns and dtypes, no rows
            return pd.DataFrame({c: pd.Series(dtype=dtype) for c, dtype in rest[1]})
        if ndim == 0:
            return 1 if integer else 1.0
        shape = (1,) if ndim == 1 else (1, width)
        value = np.zeros(shape, dtype=np.float64 if kind == "f" else np.bool_)
        return pd.Series(value) if rest and rest[0] else value

    return evaluate


def find_expressions(
    node: ast.expr, evaluate: Callable[[ast.expr], Any], resolve: Callable[[ast.expr], Any]
) -> tuple[list[tuple[tuple[Any, ...], Expression]], list[str]]:
    """The largest compilable array expressions inside ``node`` (top-down: the whole expression if
    it compiles, else the largest ones among its parts), each with its path from ``node``
    (:func:`node_at`), and the reasons lookups found on the way were refused."""
    found: list[tuple[tuple[Any, ...], Expression]] = []
    refusals: list[str] = []

    def search(current: ast.AST, path: tuple[Any, ...], stacked: bool = False) -> None:
        if isinstance(current, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            return
        if _is_stacking_call(current, resolve):
            assert isinstance(current, ast.Call)
            if _is_stacking_call(current, resolve, (np.column_stack,)):
                try:  # the whole stack as one kernel writing its columns
                    found.append((path, analyze(current, evaluate, resolve)))
                    return
                except NotLowerable:
                    pass
            for k, item in enumerate(current.args[0].elts):  # type: ignore[attr-defined]
                search(item, (*path, "args", 0, "elts", k), stacked=True)
            return
        if isinstance(current, ast.expr) and _worth_trying(current, resolve):
            try:
                found.append((path, analyze(current, evaluate, resolve, stacked=stacked)))
                return
            except NotLowerable as exc:
                for reason in getattr(exc, "refusals", ()):
                    if reason not in refusals:
                        refusals.append(reason)
        for key, value in ast.iter_fields(current):
            if isinstance(value, list):
                for k, item in enumerate(value):
                    if isinstance(item, ast.AST):
                        search(item, (*path, key, k))
            elif isinstance(value, ast.AST):
                search(value, (*path, key))

    search(node, ())
    return found, refusals


def _worth_trying(node: ast.expr, resolve: Callable[[ast.expr], Any]) -> bool:
    """Whether ``node`` can be the root of a compiled expression, judged from its syntax (so that
    other calls, which may be costly, are not evaluated at calibration just to be refused)."""
    if isinstance(node, (ast.BinOp, ast.UnaryOp, ast.Compare)):
        return True
    if isinstance(node, ast.Attribute):
        return node.attr == "values"
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Tuple)
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Attribute) and node.func.attr == "to_numpy":
            return True
        try:
            function = resolve(node.func)
        except NotLowerable:
            return False
        return (
            function is np.where
            or function is np.asarray
            or (_hashable(function) and (function in FUNCTIONS or function in REDUCTIONS))
        )
    return False


def node_at(root: ast.AST, path: tuple[Any, ...]) -> Any:
    """The sub-tree of ``root`` at ``path`` (field names and list positions)."""
    node: Any = root
    for step in path:
        node = node[step] if isinstance(step, int) else getattr(node, step)
    return node


def replace_at(root: ast.AST, path: tuple[Any, ...], new: ast.expr) -> None:
    """Put ``new`` at ``path`` inside ``root`` (``path`` must not be empty)."""
    parent = node_at(root, path[:-1])
    if isinstance(path[-1], int):
        parent[path[-1]] = new
    else:
        setattr(parent, path[-1], new)
