"""Helper inlining: calls to the user's own plain functions become their statements.

``X = make_features(df)`` or ``return predict_function(model, X)`` hide the pipeline's structure
inside a helper; tracing sees one opaque statement. This pass replaces such a call by the
helper's body: parameters are bound (a caller name or constant argument is substituted, any
other argument expression is assigned to a fresh name, so it is evaluated once and in order),
the helper's locals get fresh names, its globals are read from *its own* module (bound as
constants where the caller's names differ), and its final ``return e`` becomes the value of the
call. Helpers called by a helper are inlined too, up to :data:`MAX_DEPTH` levels.

Only straight-line helpers are inlined: a body of assignments and expression statements ending
in one ``return``, once its decided type tests are folded and its batched calls of a row-wise
estimator made one call (:mod:`willow.frontend.chunking`, which may fold an ``if`` on row counts). A helper with other control flow (an ``if`` returning early, a loop), a
generator, a lambda or nested function, variadic parameters, no readable source, or one that
lives in a library (numpy, pandas, scikit-learn, willow, the standard library, site-packages)
stays an opaque call, as before.
"""

from __future__ import annotations

import ast
import builtins
import copy
import inspect
import os
import sysconfig
import types
from typing import Any

from willow.errors import UnsupportedPipelineError
from willow.frontend.chunking import add_guards, helper_scope, rewrite_chunked_body
from willow.frontend.context import UNRESOLVED, FrontEndContext
from willow.frontend.statics import FoldReport, Known, StaticTypes, fold_statements
from willow.functions import parse_function

__all__ = ["MAX_DEPTH", "inline_helpers", "inlinable"]

MAX_DEPTH = 3
_LIBRARIES = frozenset(
    {
        "numpy",
        "pandas",
        "scipy",
        "sklearn",
        "willow",
        "pyarrow",
        "numba",
        "joblib",
        "lightgbm",
        "xgboost",
        "polars",
        "torch",
    }
)
_SIMPLE = (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Expr, ast.Pass)
_CONSTANT_TYPES = (int, float, complex, str, bytes, bool, type(None))


def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    return tuple(sorted(dirs))


def _in_library(fn: types.FunctionType) -> bool:
    module = (getattr(fn, "__module__", None) or "").split(".")[0]
    if module in _LIBRARIES or module == "builtins":
        return True
    filename = os.path.realpath(fn.__code__.co_filename)
    parts = filename.split(os.sep)
    if "site-packages" in parts or "dist-packages" in parts:
        return True
    return any(filename.startswith(d + os.sep) for d in _library_dirs())


def _helper_def(fn: types.FunctionType) -> ast.FunctionDef | None:
    """``fn``'s ``def`` if it may be inlined: a plain user function with readable source (its
    body is checked by :func:`_straight_line` once its type tests are folded), else ``None``."""
    flags = fn.__code__.co_flags
    if flags & (inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR):
        return None
    if flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS) or hasattr(fn, "__wrapped__"):
        return None
    if _in_library(fn):
        return None
    try:
        tree, _ = parse_function(fn)
    except (UnsupportedPipelineError, SyntaxError):
        return None
    if tree.name != fn.__code__.co_name:
        return None
    return tree


def _straight_line(tree: ast.FunctionDef, body: list[ast.stmt]) -> ast.FunctionDef | None:
    """``tree`` with ``body`` (its statements, type tests folded) when that body can be inlined (see
    the module doc), else ``None``. A leading empty-batch guard is dropped (and remembered)."""
    body, guard = _without_empty_guard(body, tree)
    tree.body = body
    if guard is not None:
        tree._willow_empty_guard = guard  # type: ignore[attr-defined]
    if not body or not isinstance(body[-1], ast.Return) or body[-1].value is None:
        return None
    if not all(isinstance(st, _SIMPLE) for st in body[:-1]):
        return None
    forbidden = (
        ast.Return,
        ast.Yield,
        ast.YieldFrom,
        ast.Await,
        ast.Lambda,
        ast.FunctionDef,
        ast.AsyncFunctionDef,
        ast.ClassDef,
        ast.Global,
        ast.Nonlocal,
    )
    for st in body[:-1]:
        if any(isinstance(n, forbidden) for n in ast.walk(st)):
            return None
    if any(isinstance(n, forbidden) for n in ast.walk(body[-1].value)):
        return None
    return tree


def _is_empty_test(test: ast.expr, parameters: set[str]) -> bool:
    """Whether ``test`` asks if a parameter holds no rows: ``len(p) == 0``, ``p.shape[0] == 0``,
    ``p.size == 0`` (also ``< 1``, ``<= 0``), ``not len(p)``, ``not p.shape[0]``."""

    def counts_rows(node: ast.expr) -> bool:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "len":
            return (
                len(node.args) == 1 and isinstance(node.args[0], ast.Name) and node.args[0].id in parameters
            )
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "shape"
            and isinstance(node.slice, ast.Constant)
            and node.slice.value == 0
        ):
            base = node.value.value
            return isinstance(base, ast.Name) and base.id in parameters
        return (
            isinstance(node, ast.Attribute)
            and node.attr == "size"
            and isinstance(node.value, ast.Name)
            and node.value.id in parameters
        )

    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return counts_rows(test.operand)
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and counts_rows(test.left)):
        return False
    right = test.comparators[0]
    if not isinstance(right, ast.Constant) or isinstance(right.value, bool):
        return False
    op = type(test.ops[0])
    return (op in (ast.Eq, ast.LtE) and right.value == 0) or (op is ast.Lt and right.value == 1)


# Methods that give one output row per input row: a name computed by them from a parameter is
# empty exactly when the parameter is.
_ROW_PRESERVING = frozenset(
    {"fillna", "copy", "astype", "to_numpy", "reset_index", "rename", "round", "abs", "clip", "replace"}
)


def _row_aliases(prefix: list[ast.stmt], parameters: set[str]) -> set[str]:
    """``parameters`` and the names ``prefix`` assigns from them by row-preserving methods
    (``X = X.fillna(0)``); a name assigned anything else is dropped."""
    rows = set(parameters)
    for st in prefix:
        stored = {n.id for n in ast.walk(st) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        value = st.value if isinstance(st, ast.Assign) and len(st.targets) == 1 else None
        keep = False
        while isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute):
            if value.func.attr not in _ROW_PRESERVING or any(k.arg == "inplace" for k in value.keywords):
                break
            value = value.func.value
        else:
            keep = isinstance(value, ast.Name) and value.id in rows
        rows -= stored
        if keep:
            rows |= stored
    return rows


def _without_empty_guard(body: list[ast.stmt], helper: ast.FunctionDef) -> tuple[list[ast.stmt], int | None]:
    """The helper's body for a non-empty batch, and the line of the empty-batch guard it skips.

    Willump's helpers answer an empty batch before calling the model (``if X.shape[0] == 0:
    return np.zeros(0)`` / ``else: return model.predict(X)``). willow never runs the inlined
    statements on 0 rows: a generated function hands a 0-row call to the original function,
    which runs the guard as written. So for inlining, such a guard is dropped and its ``else``
    (or what follows it) is the helper's body. The guard may follow straight-line statements
    when the name it tests is a parameter or computed from one row for row (``X = X.fillna(0)``)."""
    at = next((i for i, st in enumerate(body) if not isinstance(st, _SIMPLE)), None)
    guard = body[at] if at is not None else None
    if not (isinstance(guard, ast.If) and len(guard.body) == 1 and isinstance(guard.body[0], ast.Return)):
        return body, None
    parameters = {a.arg for a in helper.args.posonlyargs + helper.args.args + helper.args.kwonlyargs}
    if not _is_empty_test(guard.test, _row_aliases(body[:at], parameters)):
        return body, None
    rest = list(guard.orelse) + body[at + 1 :]
    if not rest:
        return body, None
    return body[:at] + rest, guard.lineno


def inlinable(obj: Any) -> tuple[types.FunctionType, Any] | None:
    """``(function, bound self or None)`` when ``obj`` is a plain user function or a method bound
    to an object, else ``None``."""
    bound = None
    if isinstance(obj, types.MethodType):
        bound, obj = obj.__self__, obj.__func__
    if not isinstance(obj, types.FunctionType):
        return None
    return obj, bound


def _without_docstring(body: list[ast.stmt]) -> list[ast.stmt]:
    first = body[0] if body else None
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        return body[1:]
    return body


def _relocate(node: ast.AST, where: ast.AST) -> None:
    """Give every node under ``node`` the location of the user statement ``where``."""
    for sub in ast.walk(node):
        if "lineno" in sub._attributes:
            sub.lineno = where.lineno  # type: ignore[attr-defined]
            sub.col_offset = where.col_offset  # type: ignore[attr-defined]
            sub.end_lineno = getattr(where, "end_lineno", where.lineno)  # type: ignore[attr-defined]
            sub.end_col_offset = getattr(where, "end_col_offset", where.col_offset)  # type: ignore[attr-defined]


_MISSING = object()


class _Inliner:
    def __init__(self, ctx: FrontEndContext) -> None:
        self.ctx = ctx
        self.count = 0
        # what the calibration call fixes (types, frame columns) of the flattened body's names, as
        # its statements are emitted: a helper's type tests are decided by its arguments' types
        self.types = StaticTypes.of_parameters(ctx.arguments, ctx.parameters, ctx.resolve, ctx.is_local)
        self.roots = dict(self.types.env)
        self.opaque: list[tuple[types.FunctionType, ast.FunctionDef, ast.stmt]] = []  # not inlined
        self.unchunked: dict[types.FunctionType, list[str]] = {}  # why batched calls stayed (chunking)

    def _fold(
        self,
        fn: types.FunctionType,
        helper: ast.FunctionDef,
        binding: inspect.BoundArguments,
        report: FoldReport,
    ) -> ast.FunctionDef | None:
        """``helper`` with the type tests its call decides folded, if it is then straight-line."""
        parameters = [a.arg for a in helper.args.posonlyargs + helper.args.args + helper.args.kwonlyargs]
        signature = inspect.signature(fn)
        known: dict[str, Known] = {}
        for name in parameters:
            if name in binding.arguments:
                found = self.types.infer(binding.arguments[name])
            else:
                found = Known(type(signature.parameters[name].default))
            if found is not None:
                known[name] = found
        stored = {n.id for n in ast.walk(helper) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        closure = {}
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
            try:
                closure[name] = cell.cell_contents
            except ValueError:
                continue
        scope = FrontEndContext(
            filename=fn.__code__.co_filename,
            constants={**fn.__globals__, **closure},
            row_parameters=(),
            parameters=tuple(parameters),
            locals_=stored | set(parameters),
        )
        local_types = StaticTypes(scope.resolve, scope.is_local, known)
        body = fold_statements(
            _without_docstring(helper.body), local_types, report, scope.filename, self.roots
        )
        # batched calls of a row-wise estimator become one call (willow.frontend.chunking)
        chunks = helper_scope(fn, parameters, dict(binding.arguments), stored, self.ctx)
        body, _ = rewrite_chunked_body(body, chunks)
        helper._willow_chunks = chunks  # type: ignore[attr-defined] # committed if inlined
        if chunks.refusals:
            self.unchunked[fn] = chunks.refusals
        return _straight_line(helper, body)

    # ------------------------------------------------------------------ statements

    def statements(self, body: list[ast.stmt], depth: int) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for st in body:
            if depth > MAX_DEPTH or not isinstance(st, (*_SIMPLE, ast.Return)):
                out.append(st)
                self.types.step(st)
                continue
            prelude: list[ast.stmt] = []
            rewriter = _CallRewriter(self, prelude, depth, st)
            if (
                isinstance(st, ast.Assign)
                and len(st.targets) == 1
                and isinstance(st.targets[0], ast.Name)
                and isinstance(st.value, ast.Call)
            ):
                rewriter.target = (st.value, st.targets[0].id)
            new = rewriter.visit(st)
            out.extend(prelude)
            self.types.step(new)
            if not (
                isinstance(new, ast.Assign)
                and isinstance(new.value, ast.Name)
                and isinstance(new.targets[0], ast.Name)
                and new.value.id == new.targets[0].id
            ):
                out.append(new)
        return out

    # ------------------------------------------------------------------ one call

    def inline_call(
        self, call: ast.Call, depth: int, where: ast.stmt, prelude: list[ast.stmt], target: str | None = None
    ) -> ast.expr | None:
        """Inline ``call`` (its statements go to ``prelude``) and return its value expression, or
        ``None`` to keep the call. ``target`` is the caller name the value is assigned to
        (``v = call(...)``): the helper's returned local then takes that name directly, so the
        caller's statements read the helper's own (``v = v`` is dropped by the caller)."""
        if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
            return None
        callee = self.ctx.resolve(call.func)
        if callee is UNRESOLVED:
            return None
        found = inlinable(callee)
        if found is None:
            return None
        fn, bound = found
        helper = _helper_def(fn)
        if helper is None:
            return None
        args = list(call.args)
        if bound is not None:
            if not isinstance(call.func, ast.Attribute):
                return None
            args = [call.func.value, *args]
        try:
            binding = inspect.signature(fn).bind(*args, **{k.arg: k.value for k in call.keywords})
        except TypeError:
            return None  # the call fails as written; let it fail the same way
        helper = copy.deepcopy(helper)
        report = FoldReport([], [])
        folded = self._fold(fn, copy.deepcopy(helper), binding, report)
        if folded is None:
            self.opaque.append((fn, helper, where))
            return None
        helper = folded
        body = helper.body
        stored = {
            n.id
            for st in body
            for n in ast.walk(st)
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
        }
        parameters = [a.arg for a in helper.args.posonlyargs + helper.args.args + helper.args.kwonlyargs]
        mapping: dict[str, ast.expr] = {}
        assignments: list[ast.stmt] = []
        signature = inspect.signature(fn)
        for name in parameters:
            if name in binding.arguments:
                value = binding.arguments[name]
                if isinstance(value, (ast.Name, ast.Constant)) and name not in stored:
                    mapping[name] = value
                    continue
                fresh = self.ctx.fresh_name(name)
                assignments.append(ast.Assign(targets=[ast.Name(id=fresh, ctx=ast.Store())], value=value))
                mapping[name] = ast.Name(id=fresh, ctx=ast.Load())
            else:
                default = signature.parameters[name].default
                value = (
                    ast.Constant(value=default)
                    if isinstance(default, _CONSTANT_TYPES)
                    else self.ctx.bind(default, name)
                )
                if name in stored:
                    fresh = self.ctx.fresh_name(name)
                    assignments.append(ast.Assign(targets=[ast.Name(id=fresh, ctx=ast.Store())], value=value))
                    value = ast.Name(id=fresh, ctx=ast.Load())
                mapping[name] = value
        free = {
            n.id
            for st in body
            for n in ast.walk(st)
            if isinstance(n, ast.Name)
            and isinstance(n.ctx, ast.Load)
            and n.id not in mapping
            and n.id not in stored
        }
        returned = body[-1].value
        if (
            target is not None
            and isinstance(returned, ast.Name)
            and returned.id in stored
            and returned.id not in mapping
            and target not in free
            and not any(
                isinstance(n, ast.Name) and n.id == target
                for value in mapping.values()
                for n in ast.walk(value)
            )
            and not any(isinstance(n, ast.Name) and n.id == target for a in assignments for n in ast.walk(a))
        ):
            mapping[returned.id] = ast.Name(id=target, ctx=ast.Load())
        for name in sorted(stored - set(mapping)):
            mapping[name] = ast.Name(id=self.ctx.fresh_name(name), ctx=ast.Load())
        closure = dict(zip(fn.__code__.co_freevars, fn.__closure__ or ()))
        for name in sorted(free):
            if name in closure:
                try:
                    value = closure[name].cell_contents
                except ValueError:
                    return None
            elif name in fn.__globals__:
                value = fn.__globals__[name]
            elif hasattr(builtins, name):
                value = getattr(builtins, name)
            else:
                value = _MISSING
            if value is _MISSING:
                continue  # a NameError in the helper stays a NameError
            shadowed = self.ctx.is_local(name) or name in self.ctx.parameters or name in self.ctx.bindings
            same = self.ctx.constants.get(name, _MISSING) is value or (
                name not in self.ctx.constants and getattr(builtins, name, _MISSING) is value
            )
            if shadowed or not same:
                mapping[name] = self.ctx.bind(value, name)
        renamed = [_Rename(mapping).visit(st) for st in body]
        result = renamed.pop()
        assert isinstance(result, ast.Return) and result.value is not None
        inner = self.statements([*assignments, *renamed, result], depth + 1)
        final = inner.pop()
        assert isinstance(final, ast.Return) and final.value is not None
        for st in inner:
            _relocate(st, where)
        _relocate(final, where)
        prelude.extend(inner)
        self.count += 1
        self.ctx.type_guards.extend(report.guards)
        for note in report.notes:
            self.ctx.note(note)
        chunks = getattr(helper, "_willow_chunks", None)
        if chunks is not None:
            add_guards(chunks, self.ctx)
            for note in chunks.notes:
                self.ctx.note(note)
        module = getattr(fn, "__module__", "?")
        self.ctx.note(
            f"line {where.lineno}: inlined {module}.{fn.__qualname__}() "
            f"({len(body) - 1} statement(s) and its return value)"
        )
        guard = getattr(helper, "_willow_empty_guard", None)
        if guard is not None:
            self.ctx.note(
                f"line {where.lineno}: {fn.__qualname__}()'s early return for an empty batch (its line "
                f"{guard}) is left to the original function, which willow runs on 0 rows"
            )
        return final.value


class _Rename(ast.NodeTransformer):
    def __init__(self, mapping: dict[str, ast.expr]) -> None:
        self.mapping = mapping

    def visit_Name(self, node: ast.Name) -> ast.expr:
        target = self.mapping.get(node.id)
        if target is None:
            return node
        if isinstance(node.ctx, ast.Load):
            return ast.copy_location(copy.deepcopy(target), node)
        assert isinstance(target, ast.Name)
        return ast.copy_location(ast.Name(id=target.id, ctx=node.ctx), node)


class _CallRewriter(ast.NodeTransformer):
    """Inline the helper calls of one statement, innermost first, skipping sub-expressions that
    are evaluated conditionally or in their own scope."""

    def __init__(self, inliner: _Inliner, prelude: list[ast.stmt], depth: int, where: ast.stmt) -> None:
        self.inliner = inliner
        self.prelude = prelude
        self.depth = depth
        self.where = where
        self.target: tuple[ast.Call, str] | None = None

    def _skip(self, node: ast.AST) -> ast.AST:
        return node

    visit_IfExp = visit_BoolOp = visit_Lambda = _skip
    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _skip

    def visit_Call(self, node: ast.Call) -> ast.expr:
        self.generic_visit(node)
        target = self.target[1] if self.target is not None and self.target[0] is node else None
        replaced = self.inliner.inline_call(node, self.depth, self.where, self.prelude, target)
        return node if replaced is None else replaced


def inline_helpers(tree: ast.FunctionDef, ctx: FrontEndContext) -> ast.FunctionDef:
    """The front-end pass (see the module doc)."""
    inliner = _Inliner(ctx)
    body = list(tree.body)
    docstring = body[: len(body) - len(_without_docstring(body))]
    new_body = inliner.statements(_without_docstring(body), 1)
    _refuse_hidden_model_call(inliner, new_body)
    if not inliner.count:
        return tree
    tree.body = docstring + new_body
    return ast.fix_missing_locations(tree)


def _model_calls(nodes: list[ast.stmt]) -> bool:
    """Whether ``nodes`` call ``<something>.predict / predict_proba / decision_function(X)``."""
    from willow.frontend.arguments import MODEL_METHODS

    return any(
        isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr in MODEL_METHODS
        and n.args
        for st in nodes
        for n in ast.walk(st)
    )


def _refuse_hidden_model_call(inliner: _Inliner, body: list[ast.stmt]) -> None:
    """Refuse, naming the helper's line and the fix, when the only model call is inside a helper
    that could not be inlined (tracing would find no model call and could not say why)."""
    if _model_calls(body):
        return
    for fn, helper, where in inliner.opaque:
        statements = _without_docstring(helper.body)
        if not _model_calls(statements):
            continue
        branch = next(
            (st for st in statements if not isinstance(st, (*_SIMPLE, ast.Return))),
            statements[-1],
        )
        raise inliner.ctx.fail(
            f"the model is called inside {fn.__qualname__}() ({fn.__code__.co_filename}:{branch.lineno}: "
            f"`{ast.unparse(branch).splitlines()[0]}`), which willow cannot inline: it only folds type "
            "tests decided at calibration (`isinstance`, `type(x) is`, `hasattr`), an empty-batch "
            "guard (`if len(X) == 0: return ...`) and batches of a row-wise estimator's rows"
            f"{_unchunked(inliner.unchunked.get(fn, []))}, so no recognisable model call is left. Call "
            "the model in the function itself (`return model.predict(X)`), or move the branch out of "
            "the helper.",
            where.lineno,
        )


def _unchunked(reasons: list[str]) -> str:
    """Why the helper's batched calls were left as written (willow.frontend.chunking), if any."""
    return f" (here {'; '.join(reasons)})" if reasons else ""
