"""Column selections by a literal label list, ``X[["a", "b"]]``, as a take by position.

Under pandas 3 ``frame[list_of_labels]`` builds an index engine of the labels at every call:
~0.35 ms on a 500-row frame of four columns (Willump's price ``preprocess`` ends with one), more
than the compiled vectorizers that read the result. This pass rewrites every such subscript (a
list of distinct string literals, read, not assigned) into :func:`select_frame_columns`, which
runs :func:`willow.frontend.frames.select_columns` (a ``take`` by position when the frame's labels
are unique: the same columns, order, dtypes, values and index) on a ``DataFrame`` and the
original subscript on anything else (a Series, a dict, an array), so the result is always the
original's.
"""

from __future__ import annotations

import ast
from typing import Any

from willow.frontend.context import FrontEndContext
from willow.frontend.frames import select_columns

__all__ = ["select_frame_columns", "select_columns_by_position"]


def select_frame_columns(obj: Any, columns: list[Any]) -> Any:
    """``obj[columns]``: through :func:`select_columns` for a ``DataFrame``, else the subscript."""
    import pandas as pd

    if isinstance(obj, pd.DataFrame):
        return select_columns(obj, columns)
    return obj[columns]


def _labels(node: ast.expr) -> bool:
    """Whether ``node`` is a list of distinct string literals."""
    if not isinstance(node, ast.List) or not node.elts:
        return False
    values = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return len(values) == len(node.elts) and len(set(values)) == len(values)


class _Rewrite(ast.NodeTransformer):
    def __init__(self, ctx: FrontEndContext) -> None:
        self.ctx = ctx
        self.count = 0

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        node = self.generic_visit(node)  # type: ignore[assignment]
        if not isinstance(node.ctx, ast.Load) or not _labels(node.slice):
            return node
        helper = self.ctx.bind(select_frame_columns, "select_frame_columns")
        self.count += 1
        return ast.copy_location(ast.Call(func=helper, args=[node.value, node.slice], keywords=[]), node)


def select_columns_by_position(tree: ast.FunctionDef, ctx: FrontEndContext) -> ast.FunctionDef:
    """Rewrite ``X[[<string literals>]]`` reads into :func:`select_frame_columns` calls."""
    rewrite = _Rewrite(ctx)
    tree = rewrite.visit(tree)
    if rewrite.count:
        ctx.note(
            f"{rewrite.count} selection(s) of columns by a list of labels run as a take by "
            "position (pandas' own selection where the labels are not unique)"
        )
    return ast.fix_missing_locations(tree)
