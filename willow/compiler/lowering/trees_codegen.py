"""Tree ensembles to Numba kernel source: every tree becomes nested ``if`` statements.

Each group of consecutive trees becomes its own generated module with one kernel,
``kernel(X, out)``, that loops over the rows of ``X`` and adds the group's leaf values to ``out``
in tree order (so sums are bit-identical to the libraries' sequential sums). Splitting the model
into groups keeps every function small, which is what keeps LLVM's compile time linear in the
number of trees, lets groups compile in parallel worker processes, and lets each group be cached
on disk by ``numba.njit(cache=True)`` on its own.

The kernels are built as ``ast`` nodes and rendered with astor; the rendered text is exactly
what is imported and compiled (``willow.compiler.backend.load_generated_module``).
"""

from __future__ import annotations

import ast
from collections.abc import Sequence

import numpy as np

from willow.compiler.backend import render_module
from willow.compiler.lowering.base import NotLowerable
from willow.compiler.lowering.trees_ir import (
    LGBM_ZERO_THRESHOLD,
    CategoricalSplit,
    Leaf,
    Node,
    NumericSplit,
    TreeEnsemble,
    tree_depth,
)

__all__ = ["MAX_TREE_DEPTH", "group_trees", "build_group_source"]

# CPython refuses more than 100 nested indentation levels; the kernel body starts at level 3.
MAX_TREE_DEPTH = 90

_HEADER = """
import numba
import numpy as np
from willow.compiler.lowering.trees_pipeline import TreeKernelPipeline


@numba.njit(cache=True, nogil=True, pipeline_class=TreeKernelPipeline)
def in_bitset(bits, category):
    word = category >> 5
    return word < bits.shape[0] and (bits[word] >> (category & 31)) & 1 == 1
"""


def group_trees(ensemble: TreeEnsemble, max_nodes: int) -> list[range]:
    """Consecutive tree ranges of at most ``max_nodes`` internal nodes each (at least one tree)."""
    groups: list[range] = []
    start, size = 0, 0
    for index, tree in enumerate(ensemble.trees):
        depth = tree_depth(tree)
        if depth > MAX_TREE_DEPTH:
            raise NotLowerable(
                f"Tree {index} is {depth} levels deep; the nested-if kernel supports at most "
                f"{MAX_TREE_DEPTH}. Limit max_depth when training."
            )
        nodes = _count_nodes(tree)
        if index > start and size + nodes > max_nodes:
            groups.append(range(start, index))
            start, size = index, 0
        size += nodes
    if start < len(ensemble.trees):
        groups.append(range(start, len(ensemble.trees)))
    return groups


def _count_nodes(tree: Node | Leaf) -> int:
    count, stack = 0, [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, Node):
            count += 1
            stack.extend((node.left, node.right))
    return count


def _name(id_: str, ctx: ast.expr_context | None = None) -> ast.Name:
    return ast.Name(id=id_, ctx=ctx or ast.Load())


def _number(value: float) -> ast.expr:
    """A float literal; infinities become ``np.inf`` (astor cannot render them as literals)."""
    if np.isinf(value):
        inf = ast.Attribute(value=_name("np"), attr="inf", ctx=ast.Load())
        return inf if value > 0 else ast.UnaryOp(op=ast.USub(), operand=inf)
    return ast.Constant(value=float(value))


def _compare(left: ast.expr, op: ast.cmpop, right: ast.expr) -> ast.Compare:
    return ast.Compare(left=left, ops=[op], comparators=[right])


class _GroupBuilder:
    """Builds one group's kernel; collects the category bitsets it needs as module constants."""

    def __init__(self, ensemble: TreeEnsemble, preload: bool = False) -> None:
        self.ensemble = ensemble
        self.preload = preload
        self.used: set[int] = set()
        self.bitsets: list[tuple[str, tuple[int, ...]]] = []
        self._bitset_names: dict[tuple[int, ...], str] = {}

    def feature(self, index: int) -> ast.expr:
        if self.preload:
            self.used.add(index)
            return _name(f"feature_{index}")
        return ast.Subscript(value=_name("x"), slice=ast.Constant(value=index), ctx=ast.Load())

    def bitset(self, categories: tuple[int, ...]) -> ast.Name:
        name = self._bitset_names.get(categories)
        if name is None:
            name = f"CATEGORIES_{len(self.bitsets)}"
            self._bitset_names[categories] = name
            self.bitsets.append((name, categories))
        return _name(name)

    def goes_left(self, split: NumericSplit | CategoricalSplit) -> ast.expr:
        """Boolean expression that is True exactly when the library sends the row left."""
        x = self.feature(split.feature)
        if isinstance(split, NumericSplit):
            below = _compare(x, ast.LtE(), _number(split.threshold))
            if split.zero_missing:
                # missing = NaN or |x| <= 1e-35  <=>  not (|x| > 1e-35)
                present = _compare(
                    ast.Call(func=_name("abs"), args=[x], keywords=[]), ast.Gt(), _number(LGBM_ZERO_THRESHOLD)
                )
                if split.nan_left:
                    return ast.BoolOp(op=ast.Or(), values=[ast.UnaryOp(op=ast.Not(), operand=present), below])
                return ast.BoolOp(op=ast.And(), values=[present, below])
            if split.nan_left:  # NaN > t is False, so "not x > t" sends NaN left
                return ast.UnaryOp(op=ast.Not(), operand=_compare(x, ast.Gt(), _number(split.threshold)))
            return below  # NaN <= t is False: NaN goes right
        category = ast.Call(func=_name("int"), args=[x], keywords=[])
        if split.style == "lightgbm":
            # static_cast<int>: (-1, 0) truncates to 0; NaN / <= -1 / >= 2**31 go right.
            return ast.BoolOp(
                op=ast.And(),
                values=[
                    _compare(x, ast.Gt(), ast.Constant(value=-1.0)),
                    _compare(x, ast.Lt(), ast.Constant(value=2147483648.0)),
                    ast.Call(func=_name("in_bitset"), args=[self.bitset(split.left), category], keywords=[]),
                ],
            )
        # HistGradientBoosting: cast to uint8; NaN, negative and unknown categories are missing.
        byte = ast.BinOp(left=category, op=ast.BitAnd(), right=ast.Constant(value=255))
        in_left = ast.Call(func=_name("in_bitset"), args=[self.bitset(split.left), byte], keywords=[])
        non_negative = _compare(x, ast.GtE(), ast.Constant(value=0.0))
        if split.nan_left:
            unknown = ast.UnaryOp(
                op=ast.Not(),
                operand=ast.Call(func=_name("in_bitset"), args=[self.bitset(split.known), byte], keywords=[]),
            )
            return ast.BoolOp(
                op=ast.Or(), values=[ast.UnaryOp(op=ast.Not(), operand=non_negative), in_left, unknown]
            )
        return ast.BoolOp(op=ast.And(), values=[non_negative, in_left])

    def tree(self, tree: Node | Leaf, columns: Sequence[int]) -> list[ast.stmt]:
        if isinstance(tree, Leaf):
            return [
                ast.AugAssign(target=_name(f"acc{c}", ast.Store()), op=ast.Add(), value=_number(v))
                for c, v in zip(columns, tree.values)
            ]
        test = self.goes_left(tree.split)
        left, right = self.tree(tree.left, columns), self.tree(tree.right, columns)
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            # "if not c: L else: R" as "if c: R else: L": one operation less per node to compile
            return [ast.If(test=test.operand, body=right, orelse=left)]
        return [ast.If(test=test, body=left, orelse=right)]

    def kernel(self, trees: range, name: str) -> ast.FunctionDef:
        columns = sorted({c for t in trees for c in self.ensemble.tree_outputs[t]})
        out_cell = [
            ast.Subscript(
                value=_name("out"),
                slice=ast.Tuple(elts=[_name("i"), ast.Constant(value=c)], ctx=ast.Load()),
                ctx=ast.Load(),
            )
            for c in columns
        ]
        row = ast.Subscript(value=_name("X"), slice=_name("i"), ctx=ast.Load())
        loop_body: list[ast.stmt] = [ast.Assign(targets=[_name("x", ast.Store())], value=row)]
        loop_body += [
            ast.Assign(targets=[_name(f"acc{c}", ast.Store())], value=cell)
            for c, cell in zip(columns, out_cell)
        ]
        trees_body: list[ast.stmt] = []
        for t in trees:
            trees_body.extend(self.tree(self.ensemble.trees[t], self.ensemble.tree_outputs[t]))
        for f in sorted(self.used):
            value = ast.Subscript(value=_name("x"), slice=ast.Constant(value=f), ctx=ast.Load())
            loop_body.append(ast.Assign(targets=[_name(f"feature_{f}", ast.Store())], value=value))
        loop_body.extend(trees_body)
        for c in columns:
            store = ast.Subscript(
                value=_name("out"),
                slice=ast.Tuple(elts=[_name("i"), ast.Constant(value=c)], ctx=ast.Load()),
                ctx=ast.Store(),
            )
            loop_body.append(ast.Assign(targets=[store], value=_name(f"acc{c}")))
        loop = ast.For(
            target=_name("i", ast.Store()),
            iter=ast.Call(
                func=_name("range"),
                args=[
                    ast.Subscript(
                        value=ast.Attribute(value=_name("X"), attr="shape", ctx=ast.Load()),
                        slice=ast.Constant(value=0),
                        ctx=ast.Load(),
                    )
                ],
                keywords=[],
            ),
            body=loop_body,
            orelse=[],
        )
        doc = ast.Expr(
            value=ast.Constant(
                value=f"Add the leaf values of trees {trees.start}..{trees.stop - 1} to out[i, :], in tree order."
            )
        )
        decorator = ast.parse(
            "numba.njit(cache=True, nogil=True, pipeline_class=TreeKernelPipeline)", mode="eval"
        ).body
        return ast.FunctionDef(
            name=name,
            args=ast.arguments(
                posonlyargs=[],
                args=[ast.arg(arg="X"), ast.arg(arg="out")],
                kwonlyargs=[],
                kw_defaults=[],
                defaults=[],
            ),
            body=[doc, loop],
            decorator_list=[decorator],
            returns=None,
            type_params=[],
        )


def build_group_source(ensemble: TreeEnsemble, trees: range, preload: bool = True) -> str:
    """Rendered source of the module whose ``kernel(X, out)`` evaluates ``trees``.

    ``preload`` reads every feature the group uses into a local once per row.
    """
    builder = _GroupBuilder(ensemble, preload)
    kernel = builder.kernel(trees, "kernel")
    module = ast.parse(_HEADER)
    for name, categories in builder.bitsets:
        words = [0] * (max(categories, default=0) // 32 + 1)
        for c in categories:
            words[c >> 5] |= 1 << (c & 31)
        value = ast.Call(
            func=ast.Attribute(value=_name("np"), attr="array", ctx=ast.Load()),
            args=[ast.List(elts=[ast.Constant(value=w) for w in words], ctx=ast.Load())],
            keywords=[
                ast.keyword(arg="dtype", value=ast.Attribute(value=_name("np"), attr="int64", ctx=ast.Load()))
            ],
        )
        module.body.append(ast.Assign(targets=[_name(name, ast.Store())], value=value))
    module.body.append(kernel)
    return render_module(module)


def build_driver_source(group_modules: Sequence[str]) -> str:
    """Source of a module whose ``predict(X, out)`` runs every group kernel in order.

    One compiled call per batch instead of one Python-level call per group (what keeps
    single-row latency low). The group modules must already be imported (they are looked up in
    ``sys.modules`` by name); Numba links their cached machine code into the driver.
    """
    module = ast.parse("import sys\n\nimport numba\n")
    calls: list[ast.stmt] = []
    for index, name in enumerate(group_modules):
        lookup = ast.Attribute(
            value=ast.Subscript(
                value=ast.Attribute(value=_name("sys"), attr="modules", ctx=ast.Load()),
                slice=ast.Constant(value=name),
                ctx=ast.Load(),
            ),
            attr="kernel",
            ctx=ast.Load(),
        )
        module.body.append(ast.Assign(targets=[_name(f"trees_group_{index}", ast.Store())], value=lookup))
        call = ast.Call(func=_name(f"trees_group_{index}"), args=[_name("X"), _name("out")], keywords=[])
        calls.append(ast.Expr(value=call))
    doc = ast.Expr(value=ast.Constant(value="Add every tree group's leaf values to out, group by group."))
    module.body.append(
        ast.FunctionDef(
            name="predict",
            args=ast.arguments(
                posonlyargs=[],
                args=[ast.arg(arg="X"), ast.arg(arg="out")],
                kwonlyargs=[],
                kw_defaults=[],
                defaults=[],
            ),
            body=[doc, *calls],
            decorator_list=[ast.parse("numba.njit(cache=True, nogil=True)", mode="eval").body],
            returns=None,
            type_params=[],
        )
    )
    return render_module(module)
