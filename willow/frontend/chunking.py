"""Row-chunked calls of a row-wise estimator become one call on all the rows.

People predict in batches to bound memory::

    if X.shape[0] > batch_size:
        return np.concatenate([model.predict(X[i : i + batch_size]) for i in range(0, len(X), batch_size)])
    return model.predict(X)

Traced as written, the comprehension is control flow around the model call and the ``if`` a
branch on the data, so the pipeline is refused. But when ``model.predict`` is *row-wise* (each
output row depends only on its input row), applying it to consecutive slices that partition the
rows and concatenating the pieces along the rows gives exactly ``model.predict(X)``. This pass
rewrites such a chunked application into the single call, and then folds an ``if`` whose branches
have become identical into that branch.

What is recognised (``X`` a name, ``b`` the batch size, ``m.f`` the estimator method):

- the chunks: ``[m.f(X[i : i + b]) for i in range(0, len(X), b)]`` (also ``X.iloc[i : i + b]``,
  ``X[i : b + i]``, ``range(0, X.shape[0], b)``), or a loop ``L = []`` / ``for i in range(...):
  L.append(m.f(X[i : i + b]))`` whose list is read once, by the statement right after the loop;
  ``L.extend(...)`` instead of ``append`` makes ``L`` the list of output rows: ``L = list(m.f(X))``;
- the combination: ``np.concatenate(chunks)`` (``axis=0``) gives ``m.f(X)`` for the predicting
  methods (whose output is a dense array) and ``np.concatenate([m.f(X)])`` for ``transform`` (its
  output may be sparse or a frame: one piece behaves as the pieces do); ``np.vstack`` /
  ``np.row_stack`` give ``m.f(X)`` for the probabilities of a single-output classifier (2-D);
  ``pd.concat(chunks)`` gives ``pd.concat([m.f(X)])``.

What is row-wise (:func:`row_wise_reason`): a fitted scikit-learn or LightGBM estimator's
``predict``, ``predict_proba``, ``predict_log_proba``, ``decision_function`` and ``transform`` --
scikit-learn's own estimator checks hold every estimator to giving the same rows on mini-batches
as on the whole set (``check_methods_subset_invariance``), and the few it exempts are refused here
-- as long as nothing inside it (a Pipeline step, a ColumnTransformer's transformer, a
FunctionTransformer's ``func``) is user code or another library's object. An arbitrary user
function (``X - X.mean()``) is not row-wise, so its chunks stay as written.

The batch size must be a positive ``int`` at calibration: a literal, a helper's default, or a
constant (a global, a non-row argument); one that can change between calls is guarded, like the
estimator itself, with the existing :class:`~willow.frontend.context.ObjectGuard` machinery: a call
with another object runs the original function with a :class:`~willow.ModelChangedWarning`.

"The same" is the estimator's own arithmetic on more rows at once: a BLAS product may round a
row's last bit differently in a batch of another size (scikit-learn's check allows 1e-7), so a
float output agrees with the batched original to rounding, labels exactly.

Edge cases: on 0 rows the compiled function always runs the original function as written (which
raises ``ValueError`` from ``np.concatenate([])`` or calls the model on 0 rows, whichever it
does). The folded ``if`` test must read only row counts (``len(X)``, ``X.shape[0]``, ``X.size``),
names and constants: it is dropped, so an ``X`` without a ``shape`` would raise in the original
but not in the rewrite, as would ``len(X)`` of a scipy.sparse ``X`` in ``range(0, len(X), b)``
(willow's row inputs and the arrays built from them have both).
"""

from __future__ import annotations

import ast
import builtins
import copy
import functools
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from willow.compiler.execution import closure_values
from willow.frontend.context import UNRESOLVED, FrontEndContext, ObjectGuard

__all__ = ["ROW_METHODS", "ChunkScope", "row_wise_reason", "rewrite_chunks", "rewrite_chunked_body"]

_PREDICTING = frozenset({"predict", "predict_proba", "predict_log_proba", "decision_function"})
ROW_METHODS = _PREDICTING | {"transform"}
_PROBABILITIES = frozenset({"predict_proba", "predict_log_proba"})
# The libraries whose estimators are held to row-wise prediction (see the module doc).
_ESTIMATOR_LIBRARIES = frozenset({"sklearn", "lightgbm"})
# What an estimator may hold besides other estimators: data and library functions.
_DATA_LIBRARIES = frozenset({"numpy", "scipy", "pandas", "ctypes", "builtins", "collections", "numbers"})
# Estimators scikit-learn exempts from check_methods_subset_invariance (1.6+; a fallback when its
# private table cannot be read): their output for a row depends on the batch.
_EXEMPT = frozenset({"DummyClassifier", "BernoulliRBM", "SpectralCoclustering", "SpectralBiclustering"})
_MAX_NESTING = 12


@functools.cache
def _exempt_classes() -> frozenset[str]:
    names = set(_EXEMPT)
    try:
        from sklearn.utils._test_common.instance_generator import PER_ESTIMATOR_XFAIL_CHECKS
    except Exception:  # noqa: BLE001 - a private table: the fallback list stands
        return frozenset(names)
    for estimator, checks in PER_ESTIMATOR_XFAIL_CHECKS.items():
        if any("subset_invariance" in str(check) for check in checks):
            names.add(getattr(estimator, "__name__", str(estimator)))
    return frozenset(names)


def _root_module(obj: Any) -> str:
    return (getattr(obj, "__module__", None) or "").split(".")[0]


def row_wise_reason(obj: Any, method: str) -> str | None:
    """``None`` when ``obj.<method>`` gives each row's output from that row alone (see the module
    doc), else why willow cannot tell that it does."""
    if method not in ROW_METHODS:
        return f"`{method}` is not one of the row-wise estimator methods ({', '.join(sorted(ROW_METHODS))})"
    if not callable(getattr(obj, method, None)):
        return f"a {type(obj).__name__} has no method `{method}`"
    if _root_module(type(obj)) not in _ESTIMATOR_LIBRARIES:
        return (
            f"it is a {type(obj).__module__}.{type(obj).__qualname__}, not a scikit-learn or LightGBM "
            "estimator, so willow cannot tell that each output row depends on its input row alone"
        )
    return _inner_reason(obj, set(), 0)


def _inner_reason(obj: Any, seen: set[int], depth: int) -> str | None:
    """Why something an estimator holds (recursively) may not be row-wise, or ``None``."""
    if id(obj) in seen or obj is None:
        return None
    if depth > _MAX_NESTING:
        return "it nests estimators too deeply to check"
    seen.add(id(obj))
    if isinstance(obj, (str, bytes, int, float, complex, bool, type, np.ndarray, np.generic, np.ufunc)):
        return None
    if isinstance(obj, (list, tuple, set, frozenset)):
        return next((r for r in (_inner_reason(v, seen, depth + 1) for v in obj) if r), None)
    if isinstance(obj, dict):
        return next((r for r in (_inner_reason(v, seen, depth + 1) for v in obj.values()) if r), None)
    if isinstance(obj, (types.FunctionType, types.MethodType, types.BuiltinFunctionType, functools.partial)):
        target = obj.func if isinstance(obj, functools.partial) else obj
        if _root_module(target) in _ESTIMATOR_LIBRARIES | _DATA_LIBRARIES | {"math"}:
            return None
        name = getattr(target, "__qualname__", repr(target))
        return f"it calls `{name}` (user code), which may read other rows"
    module = _root_module(type(obj))
    if module in _DATA_LIBRARIES:
        return None
    if module not in _ESTIMATOR_LIBRARIES:
        return (
            f"it holds a {type(obj).__module__}.{type(obj).__qualname__}, which willow cannot tell "
            "treats each row alone"
        )
    if type(obj).__name__ in _exempt_classes():
        return (
            f"it holds a {type(obj).__name__}, whose output for a row depends on the batch "
            "(scikit-learn exempts it from check_methods_subset_invariance)"
        )
    state = getattr(obj, "__dict__", None)
    if state is None:
        return None
    return next((r for r in (_inner_reason(v, seen, depth + 1) for v in list(state.values())) if r), None)


# --------------------------------------------------------------------------- scopes


@dataclass
class ChunkScope:
    """Where a body's names come from, for the rewrite.

    ``resolve(expr)`` is the calibration object of a constant expression (``UNRESOLVED`` for a
    local or a row input); ``guard_path(expr)`` is ``None`` when ``expr``'s object cannot change
    between calls (a literal, a bound constant, a helper's default), else the expression over the
    decorated function's parameters and globals that evaluates to it at each call (``""`` when
    there is none: the rewrite is then not made). Guards to add are collected in ``guards`` as
    ``(object, hint, path, lineno)``, notes in ``notes``.
    """

    resolve: Callable[[ast.expr], Any]
    guard_path: Callable[[ast.expr], str | None]
    filename: str
    guards: list[tuple[Any, str, str, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)  # why a chunked call was left as written

    def builtin(self, func: ast.expr, name: str) -> bool:
        return (
            isinstance(func, ast.Name) and func.id == name and self.resolve(func) is getattr(builtins, name)
        )

    def keep(self, expr: ast.expr, value: Any, lineno: int) -> list[tuple[Any, str, str, int]] | None:
        """The guard a rewrite resting on ``expr`` still being ``value`` needs (``[]`` for none),
        or ``None`` when that cannot be checked at a call."""
        path = self.guard_path(expr)
        if path is None:
            return []
        if not path:
            return None
        return [(value, _hint(expr), path, lineno)]

    def commit(self, chunks: _Chunks, note: str) -> None:
        """Record a rewrite of ``chunks``: its guards and its note."""
        self.guards.extend(chunks.guards)
        self.notes.append(note)


def _hint(expr: ast.expr) -> str:
    return ast.unparse(expr).replace(".", "_").replace("[", "_").replace("]", "").replace("'", "")


def _root(expr: ast.expr) -> ast.Name | None:
    """The name an attribute/subscript chain starts from (``None`` for anything else)."""
    while isinstance(expr, (ast.Attribute, ast.Subscript)):
        expr = expr.value
    return expr if isinstance(expr, ast.Name) else None


def _top_guard_path(ctx: FrontEndContext) -> Callable[[ast.expr], str | None]:
    """Guard paths for expressions of the decorated function itself."""

    def path(expr: ast.expr) -> str | None:
        if isinstance(expr, ast.Constant):
            return None
        root = _root(expr)
        if root is None or ctx.is_local(root.id) or root.id in ctx.row_parameters:
            return ""
        if root.id in ctx.bindings:
            return None  # an object bound by an earlier pass: fixed
        return ast.unparse(expr)

    return path


def top_scope(ctx: FrontEndContext) -> ChunkScope:
    """The scope of the decorated function's own body."""
    return ChunkScope(ctx.resolve, _top_guard_path(ctx), ctx.filename)


def helper_scope(
    fn: types.FunctionType,
    parameters: list[str],
    arguments: dict[str, ast.expr],
    stored: set[str],
    caller: FrontEndContext,
) -> ChunkScope:
    """The scope of a helper's body being inlined: a parameter is the caller's argument expression
    (resolved and guarded in the caller's scope) or its default; other names are the helper's
    globals and closure (fixed objects when the helper lives in another module, as the inliner
    binds them)."""
    closure = closure_values(fn)
    defaults = {}
    for name, parameter in _signature_defaults(fn).items():
        if name not in arguments:
            defaults[name] = parameter
    constants = {**fn.__globals__, **closure, **defaults}
    values = {}
    for name, expr in arguments.items():
        value = expr.value if isinstance(expr, ast.Constant) else caller.resolve(expr)
        if value is not UNRESOLVED:
            values[name] = value
    constants.update(values)
    local = FrontEndContext(
        filename=fn.__code__.co_filename,
        constants=constants,
        row_parameters=(),
        parameters=tuple(parameters),
        locals_=stored | {p for p in parameters if p not in values and p not in defaults},
    )
    caller_path = _top_guard_path(caller)

    def path(expr: ast.expr) -> str | None:
        if isinstance(expr, ast.Constant):
            return None
        root = _root(expr)
        if root is None or root.id in stored:
            return ""
        if root.id in arguments:  # the caller's expression stands for the parameter
            substituted = _Substitute(root.id, arguments[root.id]).visit(copy.deepcopy(expr))
            return caller_path(substituted)
        if root.id in defaults:
            return None
        same = (
            not caller.is_local(root.id)
            and root.id not in caller.parameters
            and caller.resolve(ast.Name(id=root.id, ctx=ast.Load())) is local.resolve(root)
        )
        # a global of the caller's own namespace is read at each call; another module's global is
        # a fixed constant of the rewrite, as the inliner binds it
        return caller_path(expr) if same else None

    return ChunkScope(local.resolve, path, fn.__code__.co_filename)


def _signature_defaults(fn: types.FunctionType) -> dict[str, Any]:
    code = fn.__code__
    positional = code.co_varnames[: code.co_argcount]
    defaults = dict(zip(positional[len(positional) - len(fn.__defaults__ or ()) :], fn.__defaults__ or ()))
    defaults.update(fn.__kwdefaults__ or {})
    return defaults


class _Substitute(ast.NodeTransformer):
    def __init__(self, name: str, expr: ast.expr) -> None:
        self.name, self.expr = name, expr

    def visit_Name(self, node: ast.Name) -> ast.expr:
        return copy.deepcopy(self.expr) if node.id == self.name else node


# --------------------------------------------------------------------------- recognition


@dataclass(frozen=True)
class _Chunks:
    """``[estimator.method(rows[i : i + size]) for i in range(0, <rows' count>, size)]``."""

    estimator: ast.expr
    method: str
    rows: str
    size: ast.expr
    lineno: int
    guards: tuple[tuple[Any, str, str, int], ...] = ()

    def whole(self) -> ast.Call:
        """``estimator.method(rows)``."""
        return ast.Call(
            func=ast.Attribute(value=copy.deepcopy(self.estimator), attr=self.method, ctx=ast.Load()),
            args=[ast.Name(id=self.rows, ctx=ast.Load())],
            keywords=[],
        )


def _same(a: ast.AST, b: ast.AST) -> bool:
    return ast.dump(a) == ast.dump(b)


def _row_count(node: ast.expr, rows: str, scope: ChunkScope) -> bool:
    """``len(rows)`` or ``rows.shape[0]``."""
    if isinstance(node, ast.Call) and scope.builtin(node.func, "len"):
        return len(node.args) == 1 and not node.keywords and _is_name(node.args[0], rows)
    return (
        isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "shape"
        and _is_name(node.value.value, rows)
        and isinstance(node.slice, ast.Constant)
        and node.slice.value == 0
    )


def _is_name(node: ast.expr, name: str | None = None) -> bool:
    return isinstance(node, ast.Name) and (name is None or node.id == name)


def _chunk_call(
    call: ast.expr, var: str, iterator: ast.expr, lineno: int, scope: ChunkScope
) -> _Chunks | str | None:
    """The chunks ``call`` (the body over ``for var in iterator``) computes, a reason it is a
    chunked call that cannot be rewritten, or ``None`` when it is not a chunked call at all."""
    if not (
        isinstance(iterator, ast.Call)
        and scope.builtin(iterator.func, "range")
        and len(iterator.args) == 3
        and not iterator.keywords
        and isinstance(iterator.args[0], ast.Constant)
        and iterator.args[0].value == 0
        and type(iterator.args[0].value) is int
    ):
        return None
    size = iterator.args[2]
    if not (
        isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and len(call.args) == 1
        and not call.keywords
        and isinstance(call.args[0], ast.Subscript)
    ):
        return None
    piece = call.args[0]
    rows_node = piece.value
    if isinstance(rows_node, ast.Attribute) and rows_node.attr == "iloc":
        rows_node = rows_node.value
    sl = piece.slice
    if not (
        _is_name(rows_node) and isinstance(sl, ast.Slice) and sl.step is None and _is_name(sl.lower, var)
    ):
        return None
    upper = sl.upper
    if not (
        isinstance(upper, ast.BinOp)
        and isinstance(upper.op, ast.Add)
        and (
            (_is_name(upper.left, var) and _same(upper.right, size))
            or (_is_name(upper.right, var) and _same(upper.left, size))
        )
    ):
        return None
    rows = rows_node.id  # type: ignore[attr-defined]
    if rows == var or not _row_count(iterator.args[1], rows, scope):
        return None
    estimator, method = call.func.value, call.func.attr
    if any(_is_name(n, var) or _is_name(n, rows) for n in ast.walk(estimator)) or any(
        _is_name(n, var) for n in ast.walk(size)
    ):
        return None
    obj = scope.resolve(estimator)
    if obj is UNRESOLVED:
        return f"`{ast.unparse(estimator)}` is not an object willow knows at calibration"
    reason = row_wise_reason(obj, method)
    if reason is not None:
        return f"`{ast.unparse(call.func)}` may not be row-wise: {reason}"
    value = size.value if isinstance(size, ast.Constant) else scope.resolve(size)
    if not (isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and value > 0):
        shown = "not known at calibration" if value is UNRESOLVED else repr(value)
        return f"the batch size `{ast.unparse(size)}` is {shown}, not a positive int"
    model_guard = scope.keep(estimator, obj, lineno)
    if model_guard is None:
        return f"`{ast.unparse(estimator)}` can change between calls and willow cannot check it"
    size_guard = scope.keep(size, value, lineno)
    if size_guard is None:
        return f"the batch size `{ast.unparse(size)}` can change between calls and willow cannot check it"
    return _Chunks(estimator, method, rows, size, lineno, tuple(model_guard + size_guard))


def _comprehension(node: ast.expr, lineno: int, scope: ChunkScope) -> _Chunks | str | None:
    if not (isinstance(node, ast.ListComp) and len(node.generators) == 1):
        return None
    gen = node.generators[0]
    if gen.is_async or gen.ifs or not isinstance(gen.target, ast.Name):
        return None
    return _chunk_call(node.elt, gen.target.id, gen.iter, lineno, scope)


def _combined(call: ast.Call, chunks: _Chunks, scope: ChunkScope) -> ast.expr | None:
    """What ``call`` (a combination of the chunks, its first argument) is on all the rows at once,
    or ``None`` when it is not a combination along the rows this pass knows."""
    func = scope.resolve(call.func)
    keywords = {k.arg: k.value for k in call.keywords}
    extra = call.args[1:]
    import pandas as pd

    if func is np.concatenate:
        axis = keywords.pop("axis", extra[0] if extra else ast.Constant(0))
        if keywords or len(extra) > 1 or not (isinstance(axis, ast.Constant) and axis.value == 0):
            return None
        if chunks.method in _PREDICTING and _dense_output(scope.resolve(chunks.estimator), chunks.method):
            return chunks.whole()
        return _with_pieces(call, [chunks.whole()])
    if func in (np.vstack, getattr(np, "row_stack", None)):
        if keywords or extra or chunks.method not in _PROBABILITIES:
            return None
        return chunks.whole() if _dense_output(scope.resolve(chunks.estimator), chunks.method) else None
    if func is pd.concat:
        axis = keywords.pop("axis", ast.Constant(0))
        if keywords or extra or not (isinstance(axis, ast.Constant) and axis.value in (0, "index")):
            return None
        return _with_pieces(call, [chunks.whole()])
    return None


def _with_pieces(call: ast.Call, pieces: list[ast.expr]) -> ast.Call:
    new = copy.deepcopy(call)
    new.args[0] = ast.List(elts=pieces, ctx=ast.Load())
    return new


def _dense_output(obj: Any, method: str) -> bool:
    """Whether ``obj.<method>`` returns one dense array with a row per input row: the predicting
    methods of scikit-learn and LightGBM do, except the probabilities of a multi-output classifier
    (a list of arrays, one per output)."""
    if method not in _PROBABILITIES:
        return True
    classes = getattr(obj, "classes_", None)
    return isinstance(classes, np.ndarray) and classes.ndim == 1


# --------------------------------------------------------------------------- the rewrite


class _Expressions(ast.NodeTransformer):
    """Rewrite ``combine([<chunks>])`` expressions inside one statement."""

    def __init__(self, scope: ChunkScope, lineno: int) -> None:
        self.scope = scope
        self.lineno = lineno
        self.count = 0

    def _skip(self, node: ast.AST) -> ast.AST:
        return node

    visit_Lambda = visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _skip

    def visit_Call(self, node: ast.Call) -> ast.expr:
        self.generic_visit(node)
        if not node.args:
            return node
        chunks = _comprehension(node.args[0], self.lineno, self.scope)
        if chunks is None:
            return node
        if isinstance(chunks, str):
            self.scope.refusals.append(f"{self.scope.filename}:{self.lineno}: {chunks}")
            return node
        combined = _combined(node, chunks, self.scope)
        if combined is None:
            self.scope.refusals.append(
                f"{self.scope.filename}:{self.lineno}: `{ast.unparse(node.func)}` is not a combination "
                "along the rows willow knows for this method's output"
            )
            return node
        self.count += 1
        self.scope.commit(
            chunks,
            f"{self.scope.filename}:{self.lineno}: `{ast.unparse(node)[:80]}` applies the row-wise "
            f"`{ast.unparse(chunks.estimator)}.{chunks.method}` to batches of the rows of "
            f"`{chunks.rows}`: rewritten to `{ast.unparse(combined)}`",
        )
        return ast.copy_location(combined, node)


def _loop(st: ast.stmt, scope: ChunkScope) -> tuple[str, str, _Chunks] | str | None:
    """``(list name, "append"|"extend", chunks)`` for ``for i in range(...): L.append(m.f(X[...]))``,
    a reason it cannot be rewritten, or ``None``."""
    if not (
        isinstance(st, ast.For)
        and not st.orelse
        and isinstance(st.target, ast.Name)
        and len(st.body) == 1
        and isinstance(st.body[0], ast.Expr)
    ):
        return None
    call = st.body[0].value
    if not (
        isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and call.func.attr in ("append", "extend")
        and _is_name(call.func.value)
        and len(call.args) == 1
        and not call.keywords
    ):
        return None
    chunks = _chunk_call(call.args[0], st.target.id, st.iter, st.lineno, scope)
    if chunks is None or isinstance(chunks, str):
        return chunks
    return call.func.value.id, call.func.attr, chunks  # type: ignore[attr-defined]


def _uses(tree: ast.AST, name: str) -> int:
    return sum(1 for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == name)


def _is_empty_list(st: ast.stmt, name: str) -> bool:
    return (
        isinstance(st, ast.Assign)
        and len(st.targets) == 1
        and _is_name(st.targets[0], name)
        and isinstance(st.value, ast.List)
        and not st.value.elts
    )


def _loops(body: list[ast.stmt], whole: ast.AST, scope: ChunkScope) -> tuple[list[ast.stmt], bool]:
    """``body`` with chunk-appending loops rewritten (see :func:`_loop`)."""
    out: list[ast.stmt] = []
    changed = False
    i = 0
    while i < len(body):
        st = body[i]
        found = _loop(st, scope) if out else None
        if isinstance(found, str):
            scope.refusals.append(f"{scope.filename}:{st.lineno}: {found}")
        if not isinstance(found, tuple) or not _is_empty_list(out[-1], found[0]):
            out.append(st)
            i += 1
            continue
        name, how, chunks = found
        var = st.target.id  # type: ignore[attr-defined]
        loop_var_elsewhere = _uses(whole, var) != _uses(st, var)
        if how == "extend":
            if loop_var_elsewhere or chunks.method not in _PREDICTING:
                out.append(st)
                i += 1
                continue
            init = out.pop()
            new = ast.Call(func=ast.Name(id="list", ctx=ast.Load()), args=[chunks.whole()], keywords=[])
            if not scope.builtin(new.func, "list"):
                out.extend([init, st])
                i += 1
                continue
            out.append(
                ast.copy_location(ast.Assign(targets=[ast.Name(id=name, ctx=ast.Store())], value=new), init)
            )
            scope.commit(
                chunks,
                f"{scope.filename}:{st.lineno}: the loop extending `{name}` with the row-wise "
                f"`{ast.unparse(chunks.estimator)}.{chunks.method}` of batches of `{chunks.rows}` is "
                f"`{name} = {ast.unparse(new)}`",
            )
            changed = True
            i += 1
            continue
        following = body[i + 1] if i + 1 < len(body) else None
        # the list must be read only by the loop and once by the next statement, as the chunks
        uses = _uses(whole, name)
        combine = _combine_call(following, name) if following is not None else None
        if combine is None or loop_var_elsewhere or uses != 3 or _uses(following, name) != 1:
            out.append(st)
            i += 1
            continue
        combined = _combined(combine, chunks, scope)
        if combined is None:
            out.append(st)
            i += 1
            continue
        out.pop()  # L = []
        new_following = _Replace(combine, combined).visit(copy.deepcopy(following))
        ast.fix_missing_locations(new_following)
        out.append(new_following)
        scope.commit(
            chunks,
            f"{scope.filename}:{st.lineno}: the loop appending the row-wise "
            f"`{ast.unparse(chunks.estimator)}.{chunks.method}` of batches of `{chunks.rows}` to `{name}` "
            f"and `{ast.unparse(combine)}` are `{ast.unparse(combined)}`",
        )
        changed = True
        i += 2
    return out, changed


def _combine_call(st: ast.stmt, name: str) -> ast.Call | None:
    for node in ast.walk(st):
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.GeneratorExp, ast.SetComp, ast.DictComp)):
            return None
    for node in ast.walk(st):
        if isinstance(node, ast.Call) and node.args and _is_name(node.args[0], name):
            return node
    return None


class _Replace(ast.NodeTransformer):
    def __init__(self, old: ast.AST, new: ast.expr) -> None:
        self.old, self.new = ast.dump(old), new

    def generic_visit(self, node: ast.AST) -> ast.AST:
        if isinstance(node, ast.expr) and ast.dump(node) == self.old:
            return ast.copy_location(copy.deepcopy(self.new), node)
        return super().generic_visit(node)


def _pure_test(test: ast.expr, scope: ChunkScope) -> bool:
    """Whether ``test`` reads only row counts, names and constants (dropping it changes nothing
    but an error on an input without them; see the module doc)."""
    if isinstance(test, ast.BoolOp):
        return all(_pure_test(v, scope) for v in test.values)
    if isinstance(test, ast.UnaryOp):
        return _pure_test(test.operand, scope)
    if isinstance(test, ast.Compare):
        return all(_pure_test(v, scope) for v in [test.left, *test.comparators])
    if isinstance(test, (ast.Constant, ast.Name)):
        return True
    if isinstance(test, ast.Call):
        return scope.builtin(test.func, "len") and len(test.args) == 1 and _is_name(test.args[0])
    if isinstance(test, ast.Attribute):
        return test.attr in ("size", "ndim") and _is_name(test.value)
    return (
        isinstance(test, ast.Subscript)
        and isinstance(test.value, ast.Attribute)
        and test.value.attr == "shape"
        and _is_name(test.value.value)
        and isinstance(test.slice, ast.Constant)
    )


def _ends(branch: list[ast.stmt]) -> bool:
    return bool(branch) and isinstance(branch[-1], (ast.Return, ast.Raise))


def _body(body: list[ast.stmt], whole: ast.AST, scope: ChunkScope) -> tuple[list[ast.stmt], bool]:
    """``body`` rewritten, nested ``if`` branches included, and ``if`` s whose branches became
    identical folded."""
    body, changed = _loops(body, whole, scope)
    statements, more = _statements(body, whole, scope)
    return statements, changed or more


def _statements(body: list[ast.stmt], whole: ast.AST, scope: ChunkScope) -> tuple[list[ast.stmt], bool]:
    out: list[ast.stmt] = []
    changed = False
    for index, st in enumerate(body):
        if not isinstance(st, ast.If):
            rewriter = _Expressions(scope, st.lineno)
            new = rewriter.visit(st)
            if rewriter.count:
                ast.fix_missing_locations(new)
                changed = True
            out.append(new)
            continue
        then, then_changed = _body(st.body, whole, scope)
        rest_is_else = not st.orelse and _ends(then)
        if rest_is_else:  # `if t: ... return` then the rest: the rest is the else branch
            other, other_changed = _statements(body[index + 1 :], whole, scope)
        else:
            other, other_changed = _body(st.orelse, whole, scope)
            st.orelse = other
        st.body = then
        changed |= then_changed or other_changed
        if (then_changed or other_changed) and _pure_test(st.test, scope) and _same_body(then, other):
            scope.notes.append(
                f"{scope.filename}:{st.lineno}: both branches of `if {ast.unparse(st.test)}` are "
                "now the same: folded to one (the test reads only row counts)"
            )
            out.extend(then)
        else:
            out.append(st)
            if rest_is_else:
                out.extend(other)
        if rest_is_else:
            return out, changed
    return out, changed


def _same_body(a: list[ast.stmt], b: list[ast.stmt]) -> bool:
    return len(a) == len(b) and bool(a) and all(_same(x, y) for x, y in zip(a, b))


def rewrite_chunked_body(body: list[ast.stmt], scope: ChunkScope) -> tuple[list[ast.stmt], bool]:
    """``body`` (a function's statements) with chunked row-wise calls rewritten (module doc) and
    whether anything changed; ``scope`` collects the notes and the guards to add."""
    whole = ast.Module(body=list(body), type_ignores=[])
    return _body(copy.deepcopy(body), whole, scope)


def add_guards(scope: ChunkScope, ctx: FrontEndContext) -> None:
    """Bind and guard what ``scope``'s rewrites rest on (see :class:`ChunkScope`)."""
    paths = {g.path for g in ctx.guards}
    for value, hint, path, lineno in scope.guards:
        if path in paths:
            continue
        paths.add(path)
        ctx.guards.append(ObjectGuard(ctx.bind(value, hint).id, path, lineno))


def rewrite_chunks(tree: ast.FunctionDef, ctx: FrontEndContext) -> ast.FunctionDef:
    """The front-end pass over the decorated function's own body (helpers are rewritten as they
    are inlined, :mod:`willow.frontend.inline`)."""
    scope = top_scope(ctx)
    body, changed = rewrite_chunked_body(tree.body, scope)
    if not changed:
        return tree
    tree = copy.copy(tree)
    tree.body = body
    add_guards(scope, ctx)
    for note in scope.notes:
        ctx.note(note)
    return ast.fix_missing_locations(tree)
