"""Whole-frame pandas: split one growing DataFrame into a feature group per column family.

People write tabular inference as one frame that grows column by column::

    df = df.merge(user_table, on="userId", how="left")
    df = df.merge(movie_table, on="movieId", how="left")
    df["ratio"] = df.user_mean / df.movie_mean
    df = df.assign(recent=lambda d: d.timestamp > 1.5e9)
    return model.predict(df[FEATURES])

Traced as written this is a single feature group (everything feeds ``df``): no cascade can skip
a join, and no lowering sees a lookup on its own. This pass follows *column lineage*: which
statement adds which column to the frame. Every column belongs to a *family*: the row input's own
columns, the columns one merge adds (the table's non-key columns), or derived columns, which join
the family they read, or form a family of their own when they read several. The function is then
rewritten into willow's idiom, one frame per family computed from the rows, stacked with
``pd.concat([...], axis=1)`` and re-selected with the user's own column list (not even that when
the stack is already in its order)::

    df_userId = df["userId"].to_frame()
    user_table_columns = pd.DataFrame(df_userId.merge(user_table, on="userId", how="left")
        .drop(columns="userId").to_numpy(dtype=float), columns=["user_mean", ...])
    ...
    ratio_columns = pd.DataFrame(index=user_table_columns.index).assign(
        ratio=user_table_columns.user_mean / movie_table_columns.movie_mean)
    df_columns = df.reset_index(drop=True).assign(recent=lambda d: d.timestamp > 1.5e9)
    stacked = pd.concat([user_table_columns, ..., df_columns[["timestamp", "recent"]]], axis=1)
    return model.predict(stacked[FEATURES])

What the rewritten function runs is kept to few pandas calls, since at serving sizes each costs
more than the arithmetic (pandas 3 builds an index engine of a label list at every ``df[cols]``):
frames the pass built are selected by position (``.take([...], axis=1)``, the stack too), the row
input's frame through :func:`select_columns` (a take when its labels are unique); a float-form
merge drops the table columns nothing reads, so the lookup gathers only those read; consecutive
``assign`` calls on one frame are fused into one when the second reads nothing the first adds.

A merge of a table whose columns are all numeric (float, or integers within 53 bits) is written
in the float form the lookup lowering compiles (:mod:`willow.compiler.lowering.lookups`), with
:func:`merged_frame` giving back the dtypes pandas' merge gives (integers stay integers when every
key matched); other merges stay pandas merges of the key column alone. The input family is the
row frame itself, and the rewritten function never changes it.

Exactness: the selected frame must equal the original's (columns, order, dtypes, values, index).
Merges on a key that repeats in the table would change the row count, merges whose columns
collide with the frame's would add suffixes, and a frame read in any way other than by column
name (``len(df)``, ``df.sum(axis=1)``, ``df.index``) has no column lineage: each of these leaves
the function as written, with a note for ``explain()``. The rewrite is checked at calibration
(:mod:`willow.frontend.frames_check`) against the original statements on the calibration rows (as
given, with another index, and 0 and 1 rows); any difference, or an error on one side only, also
leaves the function as written. Column lineage is read from the calibration frame's columns: a
serving frame with other columns that collide with a table's would make the original add
suffixes where the rewritten function does not.
The original mutates the caller's frame when it assigns a column to the row input itself
(``df["x"] = ...`` before any merge); the rewritten function does not.
"""

from __future__ import annotations

import ast
import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from willow.frontend.context import UNRESOLVED, FrontEndContext
from willow.frontend.frames_check import check_rewrite

__all__ = ["split_frame_groups", "merged_frame", "select_columns"]

# Frame methods that return the same columns and rows (a copy) and so change no lineage.
_NO_OP_METHODS = frozenset({"copy"})
# Methods that turn the selected frame into what the model reads, kept after the selection.
_SELECTION_SUFFIXES = frozenset({"values", "to_numpy", "copy", "astype"})


class _Refuse(Exception):
    """The function cannot be rewritten exactly; the message says why (with the line)."""

    def __init__(self, message: str, lineno: int | None, verification: bool = False) -> None:
        super().__init__(message)
        self.lineno = lineno
        self.verification = verification  # the calibration check failed (not the analysis)


@dataclass(eq=False)
class _Family:
    """Columns computed together in one frame of the rewritten function."""

    var: str  # the frame variable in the rewritten function (a new name for each new version)
    kind: str  # "input", "merge" or "derived"
    state: str  # the frame's index: "input" (the row input's) or "range" (RangeIndex(n))
    lineno: int
    hint: str = ""  # the name each version is derived from
    frame: list[Any] = field(default_factory=list)  # the columns its frame holds, in order (not known
    # for the input family: the row frame's own columns at serving)
    read: set[Any] = field(default_factory=set)  # its columns the rewritten function reads
    picked: bool = False  # a selection by position was written: its frame's layout is fixed
    # a merge in the float form: (its drop call, its column labels, its dtypes to restore or None)
    lookup: tuple[ast.Call, ast.List, ast.Dict | None] | None = None

    def __post_init__(self) -> None:
        self.hint = self.hint or self.var


def split_frame_groups(tree: ast.FunctionDef, ctx: FrontEndContext) -> ast.FunctionDef:
    """Rewrite a whole-frame pandas pipeline into one feature group per column family.

    Leaves ``tree`` unchanged (with a note when it looked like a frame pipeline) when no row input
    is a DataFrame, the model reads a single family, or the rewrite cannot be proven exact.
    """
    frames = [
        p
        for p in ctx.row_parameters
        if isinstance(ctx.arguments.get(p), pd.DataFrame) and p in ctx.parameters
    ]
    for parameter in frames:
        bindings, taken = dict(ctx.bindings), set(ctx.taken)
        refusal: _Refuse | None = None
        # first with the stacked groups as the model's frame when they are already in its column
        # order (no final selection), then with the user's own selection
        for stacked_as_is in (True, False):
            try:
                rewritten = _Rewriter(tree, ctx, parameter, stacked_as_is).run()
            except _Refuse as exc:
                refusal, rewritten = exc, None
            if rewritten is not None:
                return rewritten
            ctx.bindings.clear()
            ctx.bindings.update(bindings)  # nothing of a refused rewrite stays bound
            ctx.taken = set(taken)
            if refusal is None or not refusal.verification:
                break
        if refusal is not None:
            where = f"{ctx.filename}:{refusal.lineno}: " if refusal.lineno is not None else ""
            ctx.note(
                f"{where}whole-frame pandas on `{parameter}` left as written (one feature group): {refusal}"
            )
    return tree


def _columns_of(node: ast.expr, ctx: FrontEndContext) -> list[Any] | None:
    """The column labels a selection key denotes (a literal list or a constant list/tuple)."""
    if isinstance(node, (ast.List, ast.Tuple)) and all(isinstance(e, ast.Constant) for e in node.elts):
        return [e.value for e in node.elts]  # type: ignore[attr-defined]
    value = ctx.resolve(node)
    if isinstance(value, (list, tuple, pd.Index)) and all(isinstance(v, (str, int)) for v in value):
        return list(value)
    return None


def _column_of(node: ast.expr, ctx: FrontEndContext) -> Any:
    """The single column label ``node`` denotes, or ``UNRESOLVED``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int)):
        return node.value
    value = ctx.resolve(node)
    return value if isinstance(value, (str, int)) else UNRESOLVED


def _load(name: str) -> ast.Name:
    return ast.Name(id=name, ctx=ast.Load())


def _store(name: str) -> ast.Name:
    return ast.Name(id=name, ctx=ast.Store())


def _assign(name: str, value: ast.expr, where: ast.stmt) -> ast.Assign:
    node = ast.Assign(targets=[_store(name)], value=value)
    ast.copy_location(node, where)
    ast.fix_missing_locations(node)
    return node


def _method(value: ast.expr, name: str, /, *args: ast.expr, **keywords: ast.expr) -> ast.Call:
    return ast.Call(
        func=ast.Attribute(value=value, attr=name, ctx=ast.Load()),
        args=list(args),
        keywords=[ast.keyword(arg=k, value=v) for k, v in keywords.items()],
    )


class _Rewriter:
    """One lineage walk over the function body for one row-input frame ``parameter``."""

    def __init__(
        self, tree: ast.FunctionDef, ctx: FrontEndContext, parameter: str, stacked_as_is: bool
    ) -> None:
        self.tree = tree
        self.stacked_as_is = stacked_as_is
        self.ctx = ctx
        self.parameter = parameter
        self.frame: pd.DataFrame = ctx.arguments[parameter]
        self.current = parameter  # the name holding the frame as the original builds it
        self.stale: set[str] = set()  # names that held an earlier version of the frame
        self.parameter_mutated = False
        self.state = "input"  # the original frame's index
        self.columns: dict[Any, _Family] = {}  # the original frame's columns -> owning family
        self.families: list[_Family] = []
        self.key_frames: dict[tuple[str, Any], str] = {}  # (frame variable, key) -> its key frame
        self.changed = False
        self.groups = 0
        self.stored: set[str] = set()  # names the selection statement binds
        self.selections: tuple[ast.expr, ast.expr] | None = None  # (original, rewritten) selection
        self.group_names: list[str] = []

    # ------------------------------------------------------------------ driver

    def run(self) -> ast.FunctionDef | None:
        if self.frame.columns.has_duplicates:
            raise _Refuse("the row frame has duplicate column names", self.tree.lineno)
        body = list(self.tree.body)
        start = 1 if _is_docstring(body[0]) else 0
        # the input family starts as the row frame itself (the rewritten function never changes it)
        base = _Family(self.parameter, "input", "input", self.tree.lineno, hint=f"{self.parameter}_columns")
        self.base = base
        self.families.append(base)
        for column in self.frame.columns:
            self.columns[column] = base
        out: list[ast.stmt] = body[:start]
        selection_done = False
        for node in body[start:]:
            if selection_done:
                self._check_untouched(node)
                out.append(node)
                continue
            emitted = self._frame_statement(node)
            if emitted is not None:
                out.extend(emitted)
                continue
            selection = self._selection(node)
            if selection is not None:
                if not self.changed:
                    return None  # the model reads the row frame itself: nothing to split
                original_prefix = body[: body.index(node)]
                out.extend(selection)
                out = _fuse_assigns(out, body[body.index(node) + 1 :])
                rewritten_prefix = out[:-1]
                selection_done = True
                continue
            self._check_untouched(node)
            out.append(node)
        if not selection_done:
            if self.changed:
                raise _Refuse(
                    f"the frame `{self.current}` is never selected by a column list (`{self.current}[FEATURES]`)",
                    body[-1].lineno,
                )
            return None
        if self.groups < 2:
            if self.changed:
                self.ctx.note(
                    f"{self.ctx.filename}:{self.tree.lineno}: whole-frame pandas on `{self.parameter}`: the model "
                    "reads one column family, so the function is left as written."
                )
            return None
        rewritten = copy.copy(self.tree)
        rewritten.body = out
        ast.fix_missing_locations(rewritten)
        self._verify(original_prefix, rewritten_prefix)
        self.ctx.note(
            f"{self.ctx.filename}:{self.tree.lineno}: whole-frame pandas on `{self.parameter}` split into "
            f"{self.groups} feature groups by column family: {', '.join(self.group_names)}."
        )
        return rewritten

    # ------------------------------------------------------------------ names

    def _pd(self, attr: str) -> ast.expr:
        """``pd.<attr>`` when the function's module has pandas as ``pd``; otherwise a new name
        bound to the function or class itself (picklable by reference, unlike a module)."""
        if not self.ctx.is_local("pd") and self.ctx.resolve(_load("pd")) is pd:
            return ast.Attribute(value=_load("pd"), attr=attr, ctx=ast.Load())
        if attr == "concat":  # tracing finds the stack by the function's name
            name = self.ctx.bind(pd.concat, "concat")
            if name.id != "concat":
                raise _Refuse("`pd` is not pandas here and the name `concat` is taken", self.tree.lineno)
            return name
        return self.ctx.bind(getattr(pd, attr), f"pd_{attr}")

    def _check_untouched(self, node: ast.stmt) -> None:
        """A statement the rewrite keeps as written must not see the frame being built (the
        rewritten function never binds the original's intermediate frames)."""
        forbidden = set(self.stale)
        if self.changed or self.current != self.parameter:
            forbidden.add(self.current)
        if self.parameter_mutated:
            forbidden.add(self.parameter)
        else:
            forbidden.discard(self.parameter)
        forbidden -= self.stored  # rebound by the selection: they hold the selected frame now
        touched = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} & forbidden
        if touched:
            name = sorted(touched)[0]
            raise _Refuse(
                f"`{ast.unparse(node).splitlines()[0]}` uses the frame `{name}` other than by selecting "
                "columns, so its column lineage is unknown",
                node.lineno,
            )

    # ------------------------------------------------------------------ frame statements

    def _frame_statement(self, node: ast.stmt) -> list[ast.stmt] | None:
        """The rewritten statements for a statement that grows the frame, or ``None`` if it is not one."""
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            return None
        target = node.targets[0]
        # df["x"] = expr
        if (
            isinstance(target, ast.Subscript)
            and isinstance(target.value, ast.Name)
            and target.value.id == self.current
        ):
            column = _column_of(target.slice, self.ctx)
            if column is UNRESOLVED:
                raise _Refuse(
                    f"`{ast.unparse(target)}` assigns a column whose name is not a constant", node.lineno
                )
            out: list[ast.stmt] = []
            self._derive({column: node.value}, node, out, callables=False)
            if self.current == self.parameter:
                self.parameter_mutated = True
            self.changed = True
            return out
        if not isinstance(target, ast.Name):
            return None
        ops = self._chain(node.value)
        if ops is None:
            return None
        out = []
        for op in ops:
            self._operation(op, node, out)
        if target.id != self.current:
            if self.current != self.parameter:
                self.stale.add(self.current)
            self.stale.discard(target.id)
            self.current = target.id
        if target.id == self.parameter and ops:
            self.parameter_mutated = True  # rebound: later reads of the name see the new frame
        return out

    def _chain(self, value: ast.expr) -> list[ast.Call] | None:
        """``[call, ...]`` when ``value`` is ``<current>.m1(...).m2(...)`` with frame methods this
        pass follows (an alias ``<current>`` alone is ``[]``); ``None`` otherwise."""
        calls: list[ast.Call] = []
        node = value
        while isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if (
                node.func.attr not in ("merge", "assign", "reset_index")
                and node.func.attr not in _NO_OP_METHODS
            ):
                return None
            calls.append(node)
            node = node.func.value
        if not (isinstance(node, ast.Name) and node.id == self.current):
            return None
        return calls[::-1]

    def _operation(self, call: ast.Call, node: ast.stmt, out: list[ast.stmt]) -> None:
        method = call.func.attr  # type: ignore[attr-defined]
        if method in _NO_OP_METHODS:
            if call.args or call.keywords:
                raise _Refuse(f"`{method}` with arguments is not followed", node.lineno)
            return
        self.changed = True
        if method == "reset_index":
            options = {k.arg: k.value for k in call.keywords}
            if (
                call.args
                or set(options) != {"drop"}
                or not (isinstance(options["drop"], ast.Constant) and options["drop"].value is True)
            ):
                raise _Refuse("only `reset_index(drop=True)` is followed", node.lineno)
            self.state = "range"
            return
        if method == "assign":
            if call.args or any(k.arg is None for k in call.keywords):
                raise _Refuse("`assign` with positional or ** arguments is not followed", node.lineno)
            self._derive({k.arg: k.value for k in call.keywords}, node, out, callables=True)
            return
        self._merge(call, node, out)

    # ------------------------------------------------------------------ merges

    def _merge(self, call: ast.Call, node: ast.stmt, out: list[ast.stmt]) -> None:
        lineno = node.lineno
        args = list(call.args)
        keywords = {k.arg: k.value for k in call.keywords}
        if None in keywords:
            raise _Refuse("`merge` with ** arguments is not followed", lineno)
        if "right" in keywords:
            args.insert(0, keywords.pop("right"))
        if len(args) != 1:
            raise _Refuse("`merge` needs the table as its one positional argument", lineno)
        table_expr = args[0]
        table = self.ctx.resolve(table_expr)
        what = f"`{ast.unparse(table_expr)}`"
        if not isinstance(table, pd.DataFrame):
            raise _Refuse(f"the merged table {what} is not a fitted DataFrame known at calibration", lineno)
        options: dict[str, Any] = {}
        for key, value in keywords.items():
            if not isinstance(value, ast.Constant):
                resolved = self.ctx.resolve(value)
                if resolved is UNRESOLVED:
                    raise _Refuse(f"merge with {what}: option {key}= is not a constant", lineno)
                options[key] = resolved
            else:
                options[key] = value.value
        if options.get("how") != "left":
            raise _Refuse(f"merge with {what}: only how='left' keeps one row per input row", lineno)
        if options.get("sort") or options.get("indicator"):
            raise _Refuse(f"merge with {what}: sort= and indicator= are not followed", lineno)
        allowed = {"how", "on", "left_on", "right_index", "suffixes", "validate", "copy", "sort", "indicator"}
        if set(options) - allowed:
            raise _Refuse(
                f"merge with {what}: options {sorted(set(options) - allowed)} are not followed", lineno
            )
        if "on" in options and not ({"left_on", "right_index"} & set(options)):
            key = options["on"]
            if not isinstance(key, (str, int)) or key not in table.columns:
                raise _Refuse(f"merge with {what}: on= must name one column of the table", lineno)
            if not table[key].is_unique:
                raise _Refuse(
                    f"merge with {what}: its key column {key!r} repeats values, which changes the row count",
                    lineno,
                )
            added = [c for c in table.columns if c != key]
            right_index = False
        elif options.get("right_index") is True and set(options) & {"left_on"} and "on" not in options:
            key = options["left_on"]
            if not isinstance(key, (str, int)):
                raise _Refuse(f"merge with {what}: left_on= must name one column", lineno)
            if not table.index.is_unique:
                raise _Refuse(
                    f"merge with {what}: the table's index repeats labels, which changes the row count",
                    lineno,
                )
            added = list(table.columns)
            right_index = True
        else:
            raise _Refuse(
                f"merge with {what}: followed forms are on=<column> and left_on=<column>, right_index=True",
                lineno,
            )
        if key not in self.columns:
            raise _Refuse(f"merge with {what}: the frame has no column {key!r} at this point", lineno)
        if not isinstance(key, str):
            raise _Refuse(f"merge with {what}: the key {key!r} is not a string", lineno)
        collide = [c for c in added if c in self.columns]
        if collide or table.columns.has_duplicates:
            raise _Refuse(
                f"merge with {what}: its columns {collide} are already in the frame (suffixes)", lineno
            )
        owner = self.columns[key]
        if right_index:
            self._align(owner, out, node)  # the result keeps the left frame's index
        left = self._key_frame(owner, key, node, out)
        # options resolved to plain constants are written as literals (the lookup lowering compiles
        # only literal options); others are kept as written
        written = {
            k: ast.Constant(options[k]) if isinstance(options[k], (str, bool)) else copy.deepcopy(v)
            for k, v in keywords.items()
        }
        merged = _method(left, "merge", copy.deepcopy(table_expr), **written)
        family = _Family(
            self.ctx.fresh_name(f"{_hint(table_expr)}_columns"),
            "merge",
            owner.state if right_index else "range",
            lineno,
        )
        restore = _restorable(table[added]) if added and not right_index else None
        if restore is not None and all(isinstance(c, str) for c in added):
            # the form the lookup lowering compiles: the merged columns as float64, NaN for a missing
            # key; other numeric dtypes are given back as pandas gives them (merged_frame)
            dropped = _method(merged, "drop", columns=ast.Constant(key))
            values = _method(dropped, "to_numpy", dtype=_load("float"))
            labels = ast.List(elts=[ast.Constant(c) for c in added], ctx=ast.Load())
            dtypes = None
            if restore:
                dtypes = ast.Dict(
                    keys=[ast.Constant(c) for c in restore],
                    values=[ast.Constant(d) for d in restore.values()],
                )
                value = ast.Call(
                    func=self.ctx.bind(merged_frame, "merged_frame"),
                    args=[values, labels, dtypes],
                    keywords=[],
                )
            else:
                value = ast.Call(
                    func=self._pd("DataFrame"),
                    args=[values],
                    keywords=[ast.keyword(arg="columns", value=labels)],
                )
        else:
            value = merged
        out.append(_assign(family.var, value, node))
        family.frame = list(added) if value is not merged else [key, *added]
        if value is not merged:
            family.lookup = (dropped, labels, dtypes)
        self.families.append(family)
        for column in added:
            self.columns[column] = family
        if not right_index:
            self.state = "range"

    # ------------------------------------------------------------------ derived columns

    def _derive(
        self, assignments: dict[Any, ast.expr], node: ast.stmt, out: list[ast.stmt], callables: bool
    ) -> None:
        """Columns computed by expressions (``df[c] = e`` or ``assign(c=e, ...)``)."""
        before = dict(self.columns)
        assigned: list[Any] = []
        for column, expr in assignments.items():
            if isinstance(expr, ast.Lambda):
                if not callables:
                    raise _Refuse("a lambda assigned as a column is not followed", node.lineno)
                args = expr.args
                if len(args.args) != 1 or args.vararg or args.kwarg or args.kwonlyargs or args.posonlyargs:
                    raise _Refuse("`assign` lambdas must take the frame as their one argument", node.lineno)
                reads = self._reads(expr.body, args.args[0].arg, self.columns, node.lineno)
                frame_name = None
            else:
                reads = self._reads(expr, self.current, before, node.lineno)
                if set(reads) & set(assigned):
                    raise _Refuse(
                        f"`{column}` reads a column assigned earlier in the same `assign` call", node.lineno
                    )
                frame_name = self.current
            if not isinstance(column, str):
                raise _Refuse(f"column {column!r} is not a string", node.lineno)
            source = before if frame_name is not None else self.columns
            for c in reads:
                source[c].read.add(c)
            families = []
            for c in reads:
                if source[c] not in families:
                    families.append(source[c])
            rewritten = copy.deepcopy(expr)
            spans = frame_name is not None and any(
                len({source[c] for c in columns}) > 1 for columns in self._node_reads(expr, frame_name)
            )
            if len(families) > 1 and frame_name is not None and not spans:
                # each read goes to its family's frame (the frames share the original's index at
                # this point, so the Series are the original's); the column gets a frame of its own
                for family in families:
                    self._align(family, out, node)
                rewritten = self._redirect(expr, rewritten, frame_name, source)
                target = _Family(self.ctx.fresh_name(f"{column}_columns"), "derived", self.state, node.lineno)
                empty = ast.Call(
                    func=self._pd("DataFrame"),
                    args=[],
                    keywords=[
                        ast.keyword(
                            arg="index", value=ast.Attribute(_load(families[0].var), "index", ast.Load())
                        )
                    ],
                )
                holder = _method(empty, "assign", **{column: rewritten})
                out.append(_assign(target.var, holder, node))
                self.families.append(target)
            else:
                if not families:
                    target = self.base
                elif len(families) == 1:
                    target = families[0]
                else:
                    target = self._join(families, reads, source, node, out, column)
                self._align(target, out, node)
                if frame_name is not None:
                    rewritten = _Rename(frame_name, target.var).visit(rewritten)
                self._update(target, _method(_load(target.var), "assign", **{column: rewritten}), node, out)
            if column not in target.frame:
                target.frame.append(column)
            self.columns[column] = target
            assigned.append(column)

    def _node_reads(self, expr: ast.expr, frame: str) -> list[list[Any]]:
        """The columns each use of ``frame`` in ``expr`` selects (``_reads`` checked them)."""
        reads = []
        for sub in ast.walk(expr):
            if isinstance(sub, ast.Subscript) and isinstance(sub.value, ast.Name) and sub.value.id == frame:
                reads.append(self._selected(sub, 0))
            elif isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == frame:
                reads.append([sub.attr])
        return reads

    def _redirect(self, expr: ast.expr, copied: ast.expr, frame: str, source: dict[Any, _Family]) -> ast.expr:
        """``copied`` (a deep copy of ``expr``) with each use of ``frame`` reading from the frame
        of the family that owns the columns it selects."""
        for original, twin in zip(ast.walk(expr), ast.walk(copied)):
            if not (
                isinstance(original, (ast.Subscript, ast.Attribute)) and isinstance(original.value, ast.Name)
            ):
                continue
            if original.value.id != frame:
                continue
            column = original.attr if isinstance(original, ast.Attribute) else self._selected(original, 0)[0]
            twin.value.id = source[column].var  # type: ignore[attr-defined]
        return copied

    def _selected(self, sub: ast.Subscript, lineno: int | None) -> list[Any]:
        """The columns ``frame[key]`` selects."""
        names = _columns_of(sub.slice, self.ctx) if not isinstance(sub.slice, ast.Constant) else None
        single = _column_of(sub.slice, self.ctx)
        if single is not UNRESOLVED and not isinstance(sub.slice, (ast.List, ast.Tuple)):
            names = [single]
        if names is None:
            raise _Refuse(f"`{ast.unparse(sub)}` selects columns that are not constants", lineno)
        return names

    def _join(
        self,
        families: list[_Family],
        reads: list[Any],
        source: dict[Any, _Family],
        node: ast.stmt,
        out: list[ast.stmt],
        column: Any,
    ) -> _Family:
        """A new family holding the columns a derived column reads from several families."""
        parts = []
        for family in families:
            self._align(family, out, node)
            columns = [c for c in reads if source[c] is family]
            parts.append(self._pick(family, columns))
        joined = _Family(self.ctx.fresh_name(f"{column}_columns"), "derived", self.state, node.lineno)
        concat = ast.Call(
            func=self._pd("concat"),
            args=[ast.List(elts=parts, ctx=ast.Load())],
            keywords=[ast.keyword(arg="axis", value=ast.Constant(1))],
        )
        out.append(_assign(joined.var, concat, node))
        joined.frame = list(reads)
        self.families.append(joined)
        return joined

    def _reads(self, expr: ast.expr, frame: str, columns: dict[Any, _Family], lineno: int) -> list[Any]:
        """The columns ``expr`` reads from ``frame``: every use of the name must select a column
        (``frame["c"]``, ``frame[["a", "b"]]``, ``frame.c``)."""
        found: list[Any] = []
        allowed: set[int] = set()
        for sub in ast.walk(expr):
            if (
                isinstance(sub, (ast.Lambda, ast.FunctionDef))
                and any(isinstance(n, ast.Name) and n.id == frame for n in ast.walk(sub))
                and sub is not expr
            ):
                raise _Refuse(f"a nested function reads `{frame}`", lineno)
            if isinstance(sub, ast.Subscript) and isinstance(sub.value, ast.Name) and sub.value.id == frame:
                found.extend(self._selected(sub, lineno))
                allowed.add(id(sub.value))
            elif isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == frame:
                if hasattr(pd.DataFrame, sub.attr) or sub.attr not in columns:
                    raise _Refuse(f"`{ast.unparse(sub)}` is not a column read", lineno)
                found.append(sub.attr)
                allowed.add(id(sub.value))
        for sub in ast.walk(expr):
            if isinstance(sub, ast.Name) and sub.id == frame and id(sub) not in allowed:
                raise _Refuse(f"`{frame}` is used other than by selecting columns", lineno)
            if isinstance(sub, ast.Name) and (
                sub.id in self.stale
                or (sub.id == self.parameter and self.parameter_mutated and frame != self.parameter)
            ):
                raise _Refuse(f"`{sub.id}` (an earlier version of the frame) is read", lineno)
        missing = [c for c in found if c not in columns]
        if missing:
            raise _Refuse(f"columns {missing} are not in the frame at this point", lineno)
        unique: list[Any] = []
        for c in found:
            if c not in unique:
                unique.append(c)
        return unique

    # ------------------------------------------------------------------ index and base columns

    def _key_frame(self, owner: _Family, key: str, node: ast.stmt, out: list[ast.stmt]) -> ast.Name:
        """A one-column frame of the merge key (``frame[key].to_frame()``: what ``frame[[key]]``
        holds, several times cheaper in pandas), made once per frame version and key."""
        owner.read.add(key)
        name = self.key_frames.get((owner.var, key))
        if name is None:
            name = self.ctx.fresh_name(f"{owner.hint.removesuffix('_columns')}_{key}")
            column = ast.Subscript(value=_load(owner.var), slice=ast.Constant(key), ctx=ast.Load())
            out.append(_assign(name, _method(column, "to_frame"), node))
            self.key_frames[(owner.var, key)] = name
        return _load(name)

    def _update(self, family: _Family, value: ast.expr, node: ast.stmt, out: list[ast.stmt]) -> None:
        """A new version of ``family``'s frame, under a new name: the rewritten function assigns
        each name once, so a cascade may reorder its statements freely."""
        family.var = self.ctx.fresh_name(family.hint)
        out.append(_assign(family.var, value, node))

    def _align(self, family: _Family, out: list[ast.stmt], node: ast.stmt) -> None:
        """Give ``family``'s frame the index the original frame has at this point."""
        if family.state == self.state:
            return
        if family.state == "input" and self.state == "range":
            reset = _method(_load(family.var), "reset_index", drop=ast.Constant(True))
            self._update(family, reset, node, out)
            family.state = "range"
            return
        raise _Refuse("a frame would need the row input's index back", node.lineno)  # pragma: no cover

    # ------------------------------------------------------------------ the final selection

    def _selection(self, node: ast.stmt) -> list[ast.stmt] | None:
        """The stack and the rewritten statement, when ``node`` selects the model's columns."""
        uses = [
            n
            for n in ast.walk(node)
            if isinstance(n, ast.Name) and n.id == self.current and isinstance(n.ctx, ast.Load)
        ]
        if not uses:
            return None
        found = None
        for sub in ast.walk(node):
            if (
                isinstance(sub, ast.Subscript)
                and isinstance(sub.value, ast.Name)
                and sub.value.id == self.current
            ):
                key, holder = sub.slice, sub
            elif (
                isinstance(sub, ast.Subscript)
                and isinstance(sub.value, ast.Attribute)
                and sub.value.attr == "loc"
                and isinstance(sub.value.value, ast.Name)
                and sub.value.value.id == self.current
                and isinstance(sub.slice, ast.Tuple)
                and len(sub.slice.elts) == 2
                and isinstance(sub.slice.elts[0], ast.Slice)
                and sub.slice.elts[0].lower is None
                and sub.slice.elts[0].upper is None
                and sub.slice.elts[0].step is None
            ):
                key, holder = sub.slice.elts[1], sub
            else:
                continue
            if isinstance(key, ast.Constant):
                continue
            columns = _columns_of(key, self.ctx)
            if columns is not None:
                found = (holder, columns)
                break
        if found is None or len(uses) != 1:
            self._check_untouched(node)
            return None
        holder, columns = found
        missing = [c for c in columns if c not in self.columns]
        if missing:
            raise _Refuse(f"the selected columns {missing} are not in the frame", node.lineno)
        if not self.changed:
            return []
        out: list[ast.stmt] = []
        order: list[_Family] = []
        layout: list[Any] = []  # the stacked frame's columns
        for c in columns:
            if self.columns[c] not in order:
                order.append(self.columns[c])
        self.groups = len(order)
        self.group_names = []
        elements = []
        for family in order:
            family.read.update(c for c in columns if self.columns[c] is family)
        for family in self.families:
            self._narrow(family)
        for family in order:
            self._align(family, out, node)
            owned = []
            for c in columns:
                if self.columns[c] is family and c not in owned:
                    owned.append(c)
            if family is not self.base and set(family.frame) == set(owned):
                # the frame holds just these columns (the final selection orders them)
                elements.append(_load(family.var))
                self.group_names.append(family.var)
                layout.extend(family.frame)
                continue
            group = self.ctx.fresh_name(family.hint.removesuffix("_columns") + "_features")
            out.append(_assign(group, self._pick(family, owned), node))
            elements.append(_load(group))
            self.group_names.append(group)
            layout.extend(owned)
        stacked = self.ctx.fresh_name("stacked")
        concat = ast.Call(
            func=self._pd("concat"),
            args=[ast.List(elts=elements, ctx=ast.Load())],
            keywords=[ast.keyword(arg="axis", value=ast.Constant(1))],
        )
        out.append(_assign(stacked, concat, node))
        statement = copy.deepcopy(node)
        if self.stacked_as_is and layout == list(columns):
            # the stack is already the selected frame: the model reads it as it is
            statement = _Replace(holder, _load(stacked)).replace(node, statement)
            selected: ast.expr = _load(stacked)
        elif len(set(layout)) == len(layout):
            # the stack's columns are known: the user's selection is a take by position (a column
            # list makes pandas 3 build an index engine of the labels at every call, ~5x slower)
            positions = ast.List(elts=[ast.Constant(layout.index(c)) for c in columns], ctx=ast.Load())
            selected = _method(_load(stacked), "take", positions, axis=ast.Constant(1))
            statement = _Replace(holder, selected).replace(node, statement)
        else:
            for sub in ast.walk(statement):
                if isinstance(sub, ast.Name) and sub.id == self.current and isinstance(sub.ctx, ast.Load):
                    sub.id = stacked
            selected = _Rename(self.current, stacked).visit(copy.deepcopy(holder))
        self.selections = (holder, selected)
        self.stored = {
            n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
        }
        out.append(statement)
        return out

    def _narrow(self, family: _Family) -> None:
        """Drop from a float-form merge the table columns nothing reads: the compiled lookup then
        gathers only the columns used, and the group is the merged frame itself (no selection).
        Only for a merge frame that nothing was assigned into and that no take by position reads."""
        if family.lookup is None or family.picked or not family.read:
            return
        dropped, labels, dtypes = family.lookup
        added = [e.value for e in labels.elts]  # type: ignore[attr-defined]
        if family.frame != added or set(added) <= family.read:
            return
        unread = [c for c in added if c not in family.read]
        key = dropped.keywords[0].value.value  # type: ignore[attr-defined]
        dropped.keywords[0].value = ast.List(elts=[ast.Constant(c) for c in [key, *unread]], ctx=ast.Load())
        labels.elts = [ast.Constant(c) for c in added if c in family.read]
        if dtypes is not None:
            kept = [(k, v) for k, v in zip(dtypes.keys, dtypes.values) if k.value in family.read]  # type: ignore[union-attr]
            dtypes.keys, dtypes.values = [k for k, _ in kept], [v for _, v in kept]
        family.frame = [c for c in added if c in family.read]

    def _pick(self, family: _Family, columns: list[Any]) -> ast.expr:
        """``family``'s frame restricted to ``columns``, in that order: a take by position where
        the pass knows the frame's columns (a frame it built), else :func:`select_columns` (the
        row input's columns are known only at serving)."""
        family.read.update(columns)
        family.picked = True
        known = family is not self.base and len(set(family.frame)) == len(family.frame)
        if known and all(c in family.frame for c in columns):
            positions = [ast.Constant(family.frame.index(c)) for c in columns]
            return _method(
                _load(family.var), "take", ast.List(elts=positions, ctx=ast.Load()), axis=ast.Constant(1)
            )
        labels = ast.List(elts=[ast.Constant(c) for c in columns], ctx=ast.Load())
        return ast.Call(
            func=self.ctx.bind(select_columns, "select_columns"),
            args=[_load(family.var), labels],
            keywords=[],
        )

    # ------------------------------------------------------------------ verification

    def _verify(self, original: list[ast.stmt], rewritten: list[ast.stmt]) -> None:
        """Run the original and rewritten statements up to the selection on calibration rows."""
        holder, selected = self.selections
        problem = check_rewrite(
            self.tree, (original, holder), (rewritten, selected), self.ctx, self.parameter
        )
        if problem is not None:
            kind, message = problem
            raise _Refuse(message, self.tree.lineno, verification=kind == "different")


_EXACT_INTEGERS = 2**53


def _restorable(columns: pd.DataFrame) -> dict[str, str] | None:
    """The dtypes to give back to a float64 lookup of ``columns`` (``{}`` when all are float64),
    or ``None`` when the float form cannot reproduce pandas' merge: a column that is not float or
    integer, or integers that float64 does not hold exactly."""
    restore: dict[str, str] = {}
    for name, dtype in columns.dtypes.items():
        if not isinstance(dtype, np.dtype) or dtype.kind not in "iuf":
            return None
        if dtype.kind in "iu":
            values = columns[name].to_numpy()
            if len(values) and max(abs(int(values.min())), abs(int(values.max()))) > _EXACT_INTEGERS:
                return None
        if dtype != np.float64:
            restore[name] = dtype.name
    return restore


def merged_frame(values: np.ndarray, columns: list[str], dtypes: dict[str, str]) -> pd.DataFrame:
    """The frame pandas' left merge gives, from its columns computed as float64 (``values``):
    float32 columns are float32; integer columns keep their dtype when every key matched, and are
    float64 (NaN for the missing keys) otherwise. An integer column holds NaN only where a key is
    missing, so the first one tells. Exact: the integers were checked to fit float64 (53 bits)."""
    integers = [columns.index(c) for c, d in dtypes.items() if np.dtype(d).kind in "iu"]
    missing = bool(integers) and bool(np.isnan(values[:, integers[0]]).any())
    data = {}
    for position, column in enumerate(columns):
        dtype = dtypes.get(column)
        keep = dtype is None or (missing and np.dtype(dtype).kind in "iu")
        data[column] = values[:, position] if keep else values[:, position].astype(dtype)
    return pd.DataFrame(data, columns=columns)


def _assign_call(node: ast.stmt) -> tuple[str, str, ast.Call] | None:
    """``(target, frame, call)`` for ``target = frame.assign(name=expr, ...)``."""
    if not (
        isinstance(node, ast.Assign)
        and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Attribute)
        and node.value.func.attr == "assign"
        and isinstance(node.value.func.value, ast.Name)
        and not node.value.args
        and all(k.arg is not None for k in node.value.keywords)
    ):
        return None
    return node.targets[0].id, node.value.func.value.id, node.value


def _column_reads(expr: ast.expr, frame: str) -> list[Any] | None:
    """The columns ``expr`` reads from the name ``frame`` (``frame["c"]``, ``frame.c``), or
    ``None`` when it uses the name any other way."""
    reads: list[Any] = []
    allowed: set[int] = set()
    for sub in ast.walk(expr):
        if isinstance(sub, (ast.Subscript, ast.Attribute)) and isinstance(sub.value, ast.Name):
            if sub.value.id != frame:
                continue
            if isinstance(sub, ast.Attribute):
                reads.append(sub.attr)
            elif isinstance(sub.slice, ast.Constant):
                reads.append(sub.slice.value)
            else:
                return None
            allowed.add(id(sub.value))
    if any(isinstance(n, ast.Name) and n.id == frame and id(n) not in allowed for n in ast.walk(expr)):
        return None
    return reads


def _fuse_assigns(statements: list[ast.stmt], rest: list[ast.stmt]) -> list[ast.stmt]:
    """Fuse ``b = a.assign(x=e1)`` followed by ``c = b.assign(y=e2)`` into ``c = a.assign(x=e1,
    y=e2')`` (``e2'`` reads ``a`` where ``e2`` read ``b``) when nothing else reads ``b`` and ``e2``
    reads no column the first call assigns: the same frame, one pandas ``assign`` (a frame copy
    and a column insertion, ~0.2 ms) less. A lambda sees the frame as built so far in both forms.
    ``rest`` are the statements after these (they must not read ``b`` either)."""
    out: list[ast.stmt] = []
    for node in statements:
        second = _assign_call(node)
        first = _assign_call(out[-1]) if out and second is not None else None
        if first is None or second is None or second[1] != first[0]:
            out.append(node)
            continue
        middle, source, call = first
        assigned = {k.arg for k in call.keywords}
        keywords = second[2].keywords
        uses = sum(
            1
            for stmt in [*statements, *rest]
            for n in ast.walk(stmt)
            if isinstance(n, ast.Name) and n.id == middle and isinstance(n.ctx, ast.Load)
        )
        reads = [_column_reads(k.value, middle) for k in keywords]
        if (
            any(r is None or assigned & set(r) for r in reads)
            or uses != 1 + sum(len(r) for r in reads)  # type: ignore[arg-type]
            or assigned & {k.arg for k in keywords}
        ):
            out.append(node)
            continue
        fused_keywords = [*call.keywords]
        for keyword in keywords:
            fused_keywords.append(
                ast.keyword(
                    arg=keyword.arg, value=_Rename(middle, source).visit(copy.deepcopy(keyword.value))
                )
            )
        fused = ast.Assign(targets=[_store(second[0])], value=_method(_load(source), "assign"))
        fused.value.keywords = fused_keywords  # type: ignore[attr-defined]
        out[-1] = ast.fix_missing_locations(ast.copy_location(fused, out[-1]))
    return out


def select_columns(frame: pd.DataFrame, columns: list[Any]) -> pd.DataFrame:
    """``frame[columns]`` (same columns, order, dtypes, values and index), as a take by position
    when the frame's column labels are unique: under pandas 3 a label list builds an index engine
    of the labels at every call, which costs more than the take itself."""
    names = frame.columns.tolist()
    positions = {name: i for i, name in enumerate(names)}
    if len(positions) != len(names) or not all(c in positions for c in columns):
        return frame[columns]  # duplicates select every copy; a missing label raises as pandas does
    return frame.take([positions[c] for c in columns], axis=1)


class _Replace:
    """Replace one node of a statement in its deep copy (found by its position in a walk)."""

    def __init__(self, target: ast.AST, replacement: ast.expr) -> None:
        self.target, self.replacement = target, replacement

    def replace(self, original: ast.stmt, copied: ast.stmt) -> ast.stmt:
        for parent, twin in zip(ast.walk(original), ast.walk(copied)):
            for name, value in ast.iter_fields(parent):
                if value is self.target:
                    setattr(twin, name, ast.copy_location(self.replacement, self.target))
                elif isinstance(value, list) and any(v is self.target for v in value):
                    getattr(twin, name)[[v is self.target for v in value].index(True)] = ast.copy_location(
                        self.replacement, self.target
                    )
        return copied


class _Rename(ast.NodeTransformer):
    def __init__(self, old: str, new: str) -> None:
        self.old, self.new = old, new

    def visit_Name(self, node: ast.Name) -> ast.Name:
        if node.id == self.old:
            return ast.copy_location(ast.Name(id=self.new, ctx=node.ctx), node)
        return node


def _hint(expr: ast.expr) -> str:
    node = expr
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else "table"


def _is_docstring(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )
