"""``DictVectorizer`` over ``frame.to_dict(orient="records")``: one call on the frame.

Willump's price pipeline builds the ``DictVectorizer`` input from frame columns::

    df = model_input[["households", "housing_median_age"]]      # optional column selection
    valid_records = df.to_dict(orient="records")
    dict_vec = dict_vectorizer.transform(valid_records)

Building one dict per row costs more than vectorizing it, and a list of dicts cannot be compiled.
This pass replaces such adjacent statements (the records read nowhere else, the selection too)
by ``dict_vec = <FrameRecordsVectorizer>.transform(model_input)``: a bound
:class:`~willow.compiler.lowering.records.FrameRecordsVectorizer` whose ``transform`` runs
exactly the replaced statements, and which the compile pass lowers column-wise
(:mod:`willow.compiler.lowering.records`). The vectorizer's own expression is guarded at every
call (a parameter, ``self.dv`` or a global), so another vectorizer runs the original with a
:class:`~willow.ModelChangedWarning`.
"""

from __future__ import annotations

import ast
from typing import Any

from willow.frontend.context import UNRESOLVED, FrontEndContext, ObjectGuard

__all__ = ["fuse_frame_records"]


def _to_records(stmt: ast.stmt) -> tuple[str, ast.expr] | None:
    """``(R, F)`` for ``R = F.to_dict(orient="records")`` (or ``F.to_dict("records")``)."""
    if not (
        isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
    ):
        return None
    call = stmt.value
    if not (
        isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "to_dict"
    ):
        return None
    records = ast.Constant("records")
    positional = len(call.args) == 1 and not call.keywords and ast.dump(call.args[0]) == ast.dump(records)
    keyword = (
        not call.args
        and len(call.keywords) == 1
        and call.keywords[0].arg == "orient"
        and ast.dump(call.keywords[0].value) == ast.dump(records)
    )
    return (stmt.targets[0].id, call.func.value) if positional or keyword else None


def _selection(expr: ast.expr) -> tuple[ast.expr, list[Any]] | None:
    """``(X, [columns])`` for ``X[["a", "b"]]`` with literal labels, where X reads no call."""
    if not (isinstance(expr, ast.Subscript) and isinstance(expr.slice, ast.List) and expr.slice.elts):
        return None
    if not all(isinstance(e, ast.Constant) for e in expr.slice.elts):
        return None
    if any(isinstance(n, (ast.Call, ast.NamedExpr, ast.Lambda)) for n in ast.walk(expr.value)):
        return None
    return expr.value, [e.value for e in expr.slice.elts]  # type: ignore[attr-defined]


def _counts(tree: ast.AST) -> tuple[dict[str, int], dict[str, int]]:
    loads: dict[str, int] = {}
    stores: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            table = loads if isinstance(node.ctx, ast.Load) else stores
            table[node.id] = table.get(node.id, 0) + 1
    return loads, stores


def _dict_vectorizer(expr: ast.expr, ctx: FrontEndContext) -> Any:
    from sklearn.feature_extraction import DictVectorizer

    obj = ctx.resolve(expr)
    return obj if obj is not UNRESOLVED and type(obj) is DictVectorizer else None


def _guard_path(expr: ast.expr, ctx: FrontEndContext) -> str | None:
    """The user's expression for the vectorizer when a call can reach it (not a front-end binding)."""
    node = expr
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    if not isinstance(node, ast.Name) or node.id in ctx.bindings:
        return None
    return ast.unparse(expr)


def _fuse(body: list[ast.stmt], tree: ast.FunctionDef, ctx: FrontEndContext) -> list[ast.stmt]:
    from willow.compiler.lowering.records import FrameRecordsVectorizer

    out = list(body)
    i = 0
    while i + 1 < len(out):
        found = _to_records(out[i])
        after = out[i + 1]
        if found is None or not (
            isinstance(after, ast.Assign)
            and isinstance(after.value, ast.Call)
            and isinstance(after.value.func, ast.Attribute)
            and after.value.func.attr == "transform"
            and len(after.value.args) == 1
            and not after.value.keywords
            and isinstance(after.value.args[0], ast.Name)
            and after.value.args[0].id == found[0]
        ):
            i += 1
            continue
        records, frame = found
        receiver = after.value.func.value
        vectorizer = _dict_vectorizer(receiver, ctx)
        loads, stores = _counts(tree)
        if vectorizer is None or loads.get(records) != 1 or stores.get(records) != 1:
            i += 1
            continue
        start, columns = i, None
        selected = _selection(frame)
        if selected is None and isinstance(frame, ast.Name) and i > 0:
            before = out[i - 1]
            if (
                isinstance(before, ast.Assign)
                and len(before.targets) == 1
                and isinstance(before.targets[0], ast.Name)
                and before.targets[0].id == frame.id
                and loads.get(frame.id) == 1
                and stores.get(frame.id) == 1
            ):
                selected = _selection(before.value)
                start = i - 1 if selected is not None else i
        if selected is not None:
            frame, columns = selected
        wrapper = FrameRecordsVectorizer(vectorizer, columns)
        hint = ast.unparse(receiver).split(".")[-1]
        binding = ctx.bind(wrapper, f"{hint}_records")
        call = ast.Call(
            func=ast.Attribute(value=binding, attr="transform", ctx=ast.Load()), args=[frame], keywords=[]
        )
        fused = ast.Assign(targets=after.targets, value=ast.copy_location(call, after.value))
        ast.copy_location(fused, after)
        path = _guard_path(receiver, ctx)
        if path is not None and all(g.path != path for g in ctx.guards):
            ctx.guards.append(ObjectGuard(ctx.bind(vectorizer, hint).id, path, after.lineno))
        ctx.note(
            f"line {after.lineno}: `{ast.unparse(receiver)}.transform(...)` of "
            f"`{ast.unparse(frame)}{'' if columns is None else f'[{columns!r}]'}.to_dict(orient='records')` "
            "runs as one call on the frame's columns (no records are built)"
        )
        out[start : i + 2] = [fused]
        i = start + 1
    return out


def fuse_frame_records(tree: ast.FunctionDef, ctx: FrontEndContext) -> ast.FunctionDef:
    """Replace adjacent ``to_dict(orient="records")`` + ``DictVectorizer.transform`` statements in
    every statement list of ``tree`` (see the module doc)."""
    for node in list(ast.walk(tree)):
        for field in ("body", "orelse", "finalbody"):
            statements = getattr(node, field, None)
            if isinstance(statements, list) and statements and isinstance(statements[0], ast.stmt):
                setattr(node, field, _fuse(statements, tree, ctx))
    return ast.fix_missing_locations(tree)
