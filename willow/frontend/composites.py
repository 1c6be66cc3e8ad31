"""Expand scikit-learn composites into the statements they run, one per step and per branch.

``pipe.predict_proba(texts)`` on a fitted ``Pipeline(FeatureUnion([word, char]), model)`` is one
opaque call to tracing: one feature group, no lowering. scikit-learn's own code for it is a short
loop (each step's ``transform``, then the final estimator's method), and a ``FeatureUnion`` or
``ColumnTransformer`` is "transform each branch, stack the results". This pass writes that loop
out in the user's function, at calibration time when the fitted objects are known::

    X_union_word = union_word.transform(texts)
    X_union_char = union_char.transform(texts)
    X_union = sparse.hstack([X_union_word, X_union_char]).tocsr()
    return clf.predict_proba(X_union)

so each branch is a statement (a feature group of its own), each step a fitted object bound to a
name (which the compile pass lowers), and the final call is tracing's ``<model>.predict(X)``.

The expansion reproduces the composite exactly: the same calls in the same order on the same
objects, transformer weights as ``_transform_one`` applies them, ``'drop'``/``'passthrough'``
and ``None`` steps as scikit-learn treats them, and the stacking each composite does
(``FeatureUnion._hstack``, ``ColumnTransformer._hstack``: sparse or dense, with the sparse path's
``check_array`` conversion). Whether a stack is sparse is decided from the branches' real outputs
on a few calibration rows (the composite's input at that call is recorded by running the function
once on them). ``ColumnTransformer`` selects each transformer's fitted columns as
``_safe_indexing`` does (labels of a frame, a 1-D column for a scalar selection, positions of an
array); a list of labels, and the composite's own input when written ``frame[[...]]``, is taken
through :func:`frame_columns` (by position where that gives the same frame: at serving sizes the
label index pandas 3 builds at every ``frame[list]`` costs more than the take), and the sparse
stack's ``check_array`` through :func:`numeric_output` (skipped where it returns its input).

Under ``set_output(transform="pandas")`` the branches' DataFrames are stacked with
``pd.concat(axis=1)`` and given the composite's ``get_feature_names_out()`` as columns, as its
``_hstack`` and output wrapper do (ColumnTransformer's check that the stacked frame kept the input's
row count is not repeated: it fails only for transformers that return other row labels).

The expansion's statements go right before the statement holding the call, so they run before
the rest of that statement (``return g(texts) + pipe.predict(texts)`` computes the features before
``g``); calls inside lambdas, comprehensions, conditional expressions and short-circuited operands,
which may not run, are left alone.

What is not expanded (and why, in a note): composites with metadata routing enabled or a
``set_output`` container other than the default and pandas (or pandas where a branch returns no
DataFrame), subclasses of the composites, calls with extra
arguments, calls whose input the calibration run did not reach, and inputs a
``ColumnTransformer`` would handle differently from a frame or a 2-D array. A nested composite that
cannot be expanded stays one opaque ``.transform()`` call (one group). The expansion is
specialised on the calibration input's kind: a ``ColumnTransformer`` calibrated on a DataFrame
selects columns by label, so a call with missing columns raises pandas' ``KeyError`` where
scikit-learn raises ``ValueError``. A frame with duplicate column labels, which scikit-learn
refuses before selecting anything, is checked once at the expansion's start
(:func:`unique_columns`): the composite's own ``transform`` then raises its error.
"""

from __future__ import annotations

import ast
import copy
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from willow.frontend.context import UNRESOLVED, FrontEndContext, ObjectGuard
from willow.frontend.frames import select_columns
from willow.rows import n_rows, supports_rows, take_rows

__all__ = ["expand_composites", "COMPOSITE_METHODS"]

COMPOSITE_METHODS = frozenset(
    {"predict", "predict_proba", "predict_log_proba", "decision_function", "transform"}
)
"""Methods of a composite that are expanded (a FeatureUnion or ColumnTransformer: transform)."""

CALIBRATION_ROWS = 16
"""Rows of the calibration call the recording run uses (enough to see each branch's output type)."""


class _NotExpandable(Exception):
    """A composite that must stay one call; the message says why."""


def _composite_types() -> tuple[type, type, type]:
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import FeatureUnion, Pipeline

    return Pipeline, FeatureUnion, ColumnTransformer


def _is_composite(obj: Any) -> bool:
    return type(obj) in _composite_types()


# --------------------------------------------------------------------------- finding call sites


@dataclass
class _Site:
    """One ``<composite>.<method>(<arg>)`` call in a statement."""

    number: int
    call: ast.Call
    statement: ast.stmt
    body: list[ast.stmt]
    composite: Any
    method: str


_SIMPLE = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr, ast.Return)


def _evaluated_once(stmt: ast.stmt) -> list[ast.expr]:
    """Sub-expressions of a simple statement that are evaluated exactly once when it runs, outermost
    first (not inside a lambda, comprehension, conditional branch or short-circuited operand)."""
    found: list[ast.expr] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            return
        if isinstance(node, ast.IfExp):
            visit(node.test)
            return
        if isinstance(node, ast.BoolOp):
            visit(node.values[0])
            return
        if isinstance(node, ast.expr):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(stmt)
    return found


def _resolve(expr: ast.expr, ctx: FrontEndContext) -> Any:
    """``ctx.resolve``, plus constant slices of a Pipeline (``pipe[:-1]``: a new Pipeline over the
    same fitted steps, as ``Pipeline.__getitem__`` builds it at every call)."""
    if isinstance(expr, ast.Subscript) and isinstance(expr.slice, ast.Slice):
        base = _resolve(expr.value, ctx)
        parts = [expr.slice.lower, expr.slice.upper, expr.slice.step]
        values = [None if p is None else ctx._constant_key(p) for p in parts]
        if base is UNRESOLVED or any(v is UNRESOLVED for v in values):
            return UNRESOLVED
        if type(base) is not _composite_types()[0]:
            return UNRESOLVED
        try:
            return base[slice(*values)]
        except Exception:  # noqa: BLE001 - an invalid slice stays the user's call
            return UNRESOLVED
    if isinstance(expr, ast.Subscript):
        base = _resolve(expr.value, ctx)
        key = ctx._constant_key(expr.slice)
        if base is UNRESOLVED or key is UNRESOLVED:
            return UNRESOLVED
        if isinstance(base, (dict, list, tuple)) or _is_composite(base):
            try:
                return base[key]
            except Exception:  # noqa: BLE001
                return UNRESOLVED
        return UNRESOLVED
    if isinstance(expr, ast.Attribute):
        base = _resolve(expr.value, ctx)
        if base is UNRESOLVED:
            return UNRESOLVED
        try:
            return getattr(base, expr.attr)
        except Exception:  # noqa: BLE001
            return UNRESOLVED
    return ctx.resolve(expr)


def _through_composite(expr: ast.expr, ctx: FrontEndContext) -> bool:
    """Whether ``expr`` reaches its object through a composite (``pipe.named_steps["clf"]``,
    ``pipe[-1]``): such a receiver is rebound to a plain name the compile pass can lower."""
    node = expr
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
        if _is_composite(_resolve(node, ctx)):
            return True
    return False


def _find_sites(body: list[ast.stmt], ctx: FrontEndContext, sites: list[_Site], receivers: list) -> None:
    for stmt in body:
        if isinstance(stmt, _SIMPLE):
            inner: set[int] = set()
            for node in _evaluated_once(stmt):
                if not (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in COMPOSITE_METHODS
                ):
                    continue
                obj = _resolve(node.func.value, ctx)
                if _is_composite(obj):
                    if (
                        len(node.args) == 1
                        and not node.keywords
                        and not isinstance(node.args[0], ast.Starred)
                    ):
                        sites.append(_Site(len(sites), node, stmt, body, obj, node.func.attr))
                        inner |= {id(n) for n in ast.walk(node.args[0])}
                    else:
                        ctx.note(
                            f"line {node.lineno}: `{ast.unparse(node)}` passes extra arguments to a "
                            f"{type(obj).__name__}; it stays one call."
                        )
                elif obj is not UNRESOLVED and _through_composite(node.func.value, ctx):
                    receivers.append((node.func, obj, stmt))
            # a composite call inside another one's argument stays in the outer one's hoisted input
            sites[:] = [s for s in sites if id(s.call) not in inner]
        elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        else:
            for name in ("body", "orelse", "finalbody"):
                block = getattr(stmt, name, None)
                if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                    _find_sites(block, ctx, sites, receivers)
            for handler in getattr(stmt, "handlers", []) or []:
                _find_sites(handler.body, ctx, sites, receivers)
            for case in getattr(stmt, "cases", []) or []:
                _find_sites(case.body, ctx, sites, receivers)


# --------------------------------------------------------------------------- calibration inputs


def _record_inputs(tree: ast.FunctionDef, ctx: FrontEndContext, sites: list[_Site]) -> dict[int, Any]:
    """Each site's input on the first rows of the calibration call, from one run of the function
    with every site's call recorded (sites the run does not reach are absent)."""
    recorded: dict[int, Any] = {}

    def record(number: int, method: Any, value: Any) -> Any:
        recorded.setdefault(number, value)
        return method(value)

    for site in sites:
        site.call._willow_site = site.number  # type: ignore[attr-defined]
    instrumented = copy.deepcopy(tree)
    for site in sites:
        del site.call._willow_site  # type: ignore[attr-defined]
    recorder = ctx.fresh_name("__willow_record__")

    class _Instrument(ast.NodeTransformer):
        def visit_Call(self, node: ast.Call) -> ast.AST:
            self.generic_visit(node)
            number = getattr(node, "_willow_site", None)
            if number is None:
                return node
            call = ast.Call(
                func=ast.Name(id=recorder, ctx=ast.Load()),
                args=[ast.Constant(number), node.func, node.args[0]],
                keywords=[],
            )
            return ast.copy_location(call, node)

    instrumented = _Instrument().visit(instrumented)
    module = ast.Module(body=[instrumented], type_ignores=[])
    ast.fix_missing_locations(module)
    namespace: dict[str, Any] = {**ctx.constants, **ctx.bindings, recorder: record}
    arguments = {}
    for name, value in ctx.arguments.items():
        if name in ctx.row_parameters and supports_rows(value) and n_rows(value) > CALIBRATION_ROWS:
            value = take_rows(value, np.arange(CALIBRATION_ROWS))
        arguments[name] = value
    try:
        exec(compile(module, ctx.filename, "exec"), namespace)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            namespace[tree.name](**arguments)
    except Exception as exc:  # noqa: BLE001 - the inputs recorded before the failure still count
        ctx.note(
            f"The run on {CALIBRATION_ROWS} calibration rows that records the composites' inputs "
            f"raised {type(exc).__name__}: {exc}."
        )
    return recorded


# --------------------------------------------------------------------------- expansion


@dataclass
class _Expansion:
    """Statements written so far for one call site, and the names they bind."""

    ctx: FrontEndContext
    lineno: int
    guard_root: str | None  # the user's expression for the composite, when it comes from a parameter
    statements: list[ast.stmt] = field(default_factory=list)
    modules: dict[str, ast.Name] = field(default_factory=dict)
    final_call: ast.Call | None = None  # a Pipeline's final estimator call, replacing the user's call

    def checkpoint(self) -> tuple[int, set[str], int]:
        """What :meth:`rollback` needs to undo the statements, bindings and guards added after it."""
        return len(self.statements), set(self.ctx.bindings), len(self.ctx.guards)

    def rollback(self, saved: tuple[int, set[str], int]) -> None:
        """Forget what a composite that turned out not to be expandable wrote."""
        statements, bindings, guards = saved
        del self.statements[statements:]
        for name in set(self.ctx.bindings) - bindings:
            del self.ctx.bindings[name]
        self.modules = {
            k: v for k, v in self.modules.items() if v.id in self.ctx.bindings or v.id in self.ctx.constants
        }
        del self.ctx.guards[guards:]
        self.final_call = None

    def object(self, obj: Any, hint: str, path: str) -> ast.Name:
        """A name bound to a fitted step (guarded through the user's parameter if it came from one)."""
        name = self.ctx.bind(obj, hint)
        if self.guard_root is not None:
            guard = ObjectGuard(name.id, f"{self.guard_root}{path}", self.lineno)
            if all(g.name != guard.name for g in self.ctx.guards):
                self.ctx.guards.append(guard)
        return name

    def module(self, module: Any, hint: str) -> ast.Name:
        """A name for ``module``: the user's own import if the function can see one, else a binding."""
        if hint not in self.modules:
            for name, value in self.ctx.constants.items():
                if value is module and not self.ctx.is_local(name) and name not in self.ctx.parameters:
                    self.modules[hint] = ast.Name(id=name, ctx=ast.Load())
                    break
            else:
                self.modules[hint] = self.ctx.bind(module, hint)
        return copy.copy(self.modules[hint])

    def assign(self, hint: str, value: ast.expr) -> ast.Name:
        """Append ``<fresh name> = value`` (on the user's line) and return a load of the name."""
        target = self.ctx.fresh_name(hint)
        node = ast.Assign(targets=[ast.Name(id=target, ctx=ast.Store())], value=value)
        self._locate(node)
        self.statements.append(node)
        return ast.Name(id=target, ctx=ast.Load())

    def _locate(self, node: ast.AST) -> None:
        for sub in ast.walk(node):
            if "lineno" in sub._attributes:
                sub.lineno = sub.end_lineno = self.lineno
                sub.col_offset = sub.end_col_offset = 0


def _call(receiver: ast.expr, method: str, *args: ast.expr, **keywords: ast.expr) -> ast.Call:
    return ast.Call(
        func=ast.Attribute(value=receiver, attr=method, ctx=ast.Load()),
        args=list(args),
        keywords=[ast.keyword(arg=k, value=v) for k, v in keywords.items()],
    )


def _output_mode(obj: Any) -> str:
    """``"default"`` or ``"pandas"``: the composite's ``set_output`` container (others refused)."""
    from sklearn.utils._set_output import _auto_wrap_is_configured, _get_output_config

    dense = _get_output_config("transform", obj)["dense"]
    if dense == "default" or not _auto_wrap_is_configured(obj):
        return "default"
    if dense != "pandas":
        raise _NotExpandable(
            f"its set_output container is {dense!r} (scikit-learn's default output and pandas are expanded)"
        )
    return "pandas"


def _pandas_stack(
    ex: _Expansion, composite: Any, hint: str, names: list[ast.Name], values: list[Any]
) -> tuple[ast.Name, Any]:
    """``pd.concat(outputs, axis=1)`` then the composite's feature names as columns: what
    ``_hstack`` and the ``set_output`` wrapper do when every output is a DataFrame."""
    import pandas as pd

    if not all(isinstance(v, pd.DataFrame) for v in values):
        raise _NotExpandable(
            "under set_output(transform='pandas') not every branch returns a DataFrame "
            "(scikit-learn then stacks arrays and wraps them)"
        )
    concat = _call(ex.module(pd, "pd"), "concat", ast.List(elts=names, ctx=ast.Load()))
    concat.keywords = [ast.keyword(arg="axis", value=ast.Constant(1))]
    stacked = ex.assign(f"X_{hint}", concat)
    columns = composite.get_feature_names_out()
    result = pd.concat(values, axis=1).set_axis(columns, axis=1)
    named = _call(stacked, "set_axis", ex.ctx.bind(columns, f"{hint}_columns"))
    named.keywords = [ast.keyword(arg="axis", value=ast.Constant(1))]
    return ex.assign(f"X_{hint}_named", named), result


def _routing_disabled() -> None:
    import sklearn

    if sklearn.get_config().get("enable_metadata_routing", False):
        raise _NotExpandable("metadata routing is enabled (steps may receive routed parameters)")


def _step(
    ex: _Expansion, obj: Any, hint: str, path: str, X: ast.Name, value: Any, method: str = "transform"
) -> tuple[ast.Name, Any]:
    """``obj.method(X)`` as statements: expanded if ``obj`` is a composite that can be, otherwise
    one call; returns the name of the result and its value on the calibration rows."""
    if _is_composite(obj):
        saved = ex.checkpoint()
        try:
            return _expand(ex, obj, hint, path, X, value, method)
        except _NotExpandable as exc:
            ex.rollback(saved)
            ex.ctx.note(
                f"line {ex.lineno}: the {type(obj).__name__} {hint!r} stays one `.{method}()` call: {exc}."
            )
    receiver = ex.object(obj, hint, path)
    result = getattr(obj, method)(value)
    return ex.assign(f"X_{hint}", _call(receiver, method, X)), result


def _expand(
    ex: _Expansion, obj: Any, hint: str, path: str, X: ast.Name, value: Any, method: str
) -> tuple[ast.Name, Any]:
    Pipeline, FeatureUnion, ColumnTransformer = _composite_types()
    _routing_disabled()
    if type(obj) is Pipeline:
        return _expand_pipeline(ex, obj, hint, path, X, value, method)
    if method != "transform":
        raise _NotExpandable(f"{type(obj).__name__}.{method} is not a composite method")
    if type(obj) is FeatureUnion:
        return _expand_union(ex, obj, hint, path, X, value)
    return _expand_column_transformer(ex, obj, hint, path, X, value)


def _expand_pipeline(
    ex: _Expansion, pipe: Any, hint: str, path: str, X: ast.Name, value: Any, method: str
) -> tuple[ast.Name, Any]:
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(pipe)
    except Exception as exc:  # noqa: BLE001
        raise _NotExpandable(f"it is not fitted ({exc})") from None
    steps = list(pipe.steps)
    final_name, final = steps[-1]
    skipped = (None, "passthrough")
    transforms = [
        (i, n, s) for i, (n, s) in enumerate(steps[:-1]) if not (s is None or _eq(s, "passthrough"))
    ]
    if method == "transform" and any(s is None or _eq(s, "passthrough") for s in (final,)):
        last = None
    elif method != "transform" and any(final is s or _eq(final, s) for s in skipped):
        raise _NotExpandable(f"its final step is {final!r}, which has no {method}")
    else:
        last = (len(steps) - 1, final_name, final)
    for i, name, step in transforms:
        X, value = _step(ex, step, name, f"{path}.steps[{i}][1]", X, value)
    if last is None:
        return X, value
    i, name, step = last
    if method == "transform":
        return _step(ex, step, name, f"{path}.steps[{i}][1]", X, value)
    if _is_composite(step):
        return _step(ex, step, name, f"{path}.steps[{i}][1]", X, value, method)
    if not hasattr(step, method):
        raise _NotExpandable(f"its final step {name!r} has no {method}")
    receiver = ex.object(step, name, f"{path}.steps[{i}][1]")
    # the model call is the expression that replaces the user's call (tracing's model call)
    ex.final_call = _call(receiver, method, X)
    return X, value


def _eq(obj: Any, text: str) -> bool:
    return isinstance(obj, str) and obj == text


def _weighted(ex: _Expansion, name: ast.Name, value: Any, weight: Any, hint: str) -> tuple[ast.Name, Any]:
    """``_transform_one``'s ``res * weight`` (as its own statement, in the branch's group)."""
    if weight is None:
        return name, value
    if type(weight) in (int, float):
        factor: ast.expr = ast.Constant(weight)
    else:  # a numpy scalar (its dtype matters) or anything else: the very object
        factor = ex.ctx.bind(weight, f"{hint}_weight")
    product = ast.BinOp(left=name, op=ast.Mult(), right=factor)
    return ex.assign(f"{name.id}_weighted", product), value * weight


def _branch_hint(composite: Any, hint: str, name: str) -> str:
    """``union_word`` for branch ``word`` of ``union``; just ``word`` under the name ``make_union``
    or ``make_column_transformer`` gave the composite (``featureunion``, ``columntransformer``)."""
    return name if hint == type(composite).__name__.lower() else f"{hint}_{name}"


def _two_dimensional(name: str, value: Any) -> None:
    if len(getattr(value, "shape", ())) != 2:
        raise _NotExpandable(f"branch {name!r} returns {type(value).__name__} that is not 2-D")


def _expand_union(
    ex: _Expansion, union: Any, hint: str, path: str, X: ast.Name, value: Any
) -> tuple[ast.Name, Any]:
    import scipy.sparse as sparse

    mode = _output_mode(union)
    weights = union.transformer_weights or {}
    names: list[ast.Name] = []
    values: list[Any] = []
    for j, (name, trans) in enumerate(union.transformer_list):
        if _eq(trans, "drop"):
            continue
        branch_hint = _branch_hint(union, hint, name)
        if _eq(trans, "passthrough") or _is_identity(trans):  # FunctionTransformer(): the input itself
            out, out_value = ex.assign(f"X_{branch_hint}", copy.copy(X)), value
        else:
            out, out_value = _step(ex, trans, branch_hint, f"{path}.transformer_list[{j}][1]", X, value)
        out, out_value = _weighted(ex, out, out_value, weights.get(name), branch_hint)
        _two_dimensional(name, out_value)
        names.append(out)
        values.append(out_value)
    if not names:
        raise _NotExpandable("every transformer is 'drop' (scikit-learn returns an empty array)")
    if mode == "pandas":
        return _pandas_stack(ex, union, hint, names, values)
    if any(sparse.issparse(v) for v in values):
        stacked = _call(
            _call(ex.module(sparse, "sparse"), "hstack", ast.List(elts=names, ctx=ast.Load())), "tocsr"
        )
        result = sparse.hstack(values).tocsr()
    else:
        stacked = _call(ex.module(np, "np"), "hstack", ast.List(elts=names, ctx=ast.Load()))
        result = np.hstack(values)
    return ex.assign(f"X_{hint}", stacked), result


def frame_columns(frame: Any, columns: list[Any]) -> Any:
    """``frame[columns]`` for the expansion's column selections: a DataFrame's columns taken by
    position (:func:`select_columns`: the same frame, without the index engine of the labels that
    pandas 3 builds at every ``frame[list]``, most of a selection's cost at serving sizes); any
    other container is indexed as written."""
    if type(frame) is pd.DataFrame:
        return select_columns(frame, columns)
    return frame[columns]


def _input_selection(argument: ast.expr, ex: _Expansion) -> ast.expr:
    """The composite's argument as its hoisted statement computes it: ``frame[["a", "b"]]`` (a
    name indexed by a literal list of labels) through :func:`frame_columns`, anything else as
    written."""
    if (
        isinstance(argument, ast.Subscript)
        and isinstance(argument.value, ast.Name)
        and isinstance(argument.slice, ast.List)
        and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in argument.slice.elts)
    ):
        func = ex.ctx.bind(frame_columns, "frame_columns")
        return ast.Call(func=func, args=copy.deepcopy([argument.value, argument.slice]), keywords=[])
    return copy.deepcopy(argument)


def _column_key(columns: Any, ex: _Expansion) -> ast.expr:
    """A literal for a column selection (label, list of labels, position, positions, slice or mask)."""
    if isinstance(columns, slice):
        parts = [
            None if p is None else ast.Constant(_plain(p))
            for p in (columns.start, columns.stop, columns.step)
        ]
        return ast.Slice(lower=parts[0], upper=parts[1], step=parts[2])
    if isinstance(columns, (list, tuple, np.ndarray)):
        return ast.List(elts=[ast.Constant(_plain(c)) for c in columns], ctx=ast.Load())
    if np.isscalar(columns):
        return ast.Constant(_plain(columns))
    raise _NotExpandable(f"its column selection {columns!r} is not a label, position, list, slice or mask")


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python scalar a literal holds (``np.str_`` -> ``str``)."""
    if isinstance(value, np.generic):
        value = value.item()
    if not isinstance(value, (str, int, float, bool)) and value is not None:
        raise _NotExpandable(f"column {value!r} is not a str, int, float or bool")
    return value


def _expand_column_transformer(
    ex: _Expansion, ct: Any, hint: str, path: str, X: ast.Name, value: Any
) -> tuple[ast.Name, Any]:
    import pandas as pd
    import scipy.sparse as sparse
    from sklearn.utils import _safe_indexing
    from sklearn.utils._indexing import _determine_key_type
    from sklearn.utils.validation import check_array, check_is_fitted

    try:
        check_is_fitted(ct)
    except Exception as exc:  # noqa: BLE001
        raise _NotExpandable(f"it is not fitted ({exc})") from None
    mode = _output_mode(ct)
    if mode == "pandas" and ct.sparse_output_:
        raise _NotExpandable(
            "its output is sparse under set_output(transform='pandas') (scikit-learn raises)"
        )
    if type(value) is pd.DataFrame:
        by_label = hasattr(ct, "feature_names_in_")
    elif type(value) is np.ndarray and value.ndim == 2:
        by_label = False
    else:
        raise _NotExpandable(
            f"its input at calibration is a {type(value).__name__}, not a DataFrame or a 2-D array"
        )
    try:
        entries = list(
            ct._iter(fitted=True, column_as_labels=by_label, skip_drop=True, skip_empty_columns=True)
        )
    except Exception as exc:  # noqa: BLE001 - another scikit-learn version's private API
        raise _NotExpandable(
            f"its fitted transformers cannot be listed ({type(exc).__name__}: {exc})"
        ) from None
    if type(value) is pd.DataFrame:  # scikit-learn refuses duplicate labels before selecting
        checker = ex.ctx.bind(unique_columns, "unique_columns")
        receiver = ex.object(ct, hint, path)
        X = ex.assign(f"{hint}_input", ast.Call(func=checker, args=[copy.copy(X), receiver], keywords=[]))
    positions = {name: k for k, (name, *_rest) in enumerate(ct.transformers_)}
    names: list[ast.Name] = []
    values: list[Any] = []
    for name, trans, columns, weight in entries:
        key = _column_key(columns, ex)
        if type(value) is pd.DataFrame and by_label:  # labels: X[num_columns], X["a"]
            if isinstance(key, ast.List):  # by position where that is the same: see frame_columns
                selector = ast.Call(
                    func=ex.ctx.bind(frame_columns, "frame_columns"), args=[copy.copy(X), key], keywords=[]
                )
            else:  # one label: a Series, which X[label] already gets without a label index
                selector = ast.Subscript(value=copy.copy(X), slice=key, ctx=ast.Load())
        elif type(value) is pd.DataFrame:  # _safe_indexing: iloc for positions, loc otherwise
            indexer = "iloc" if _determine_key_type(columns) == "int" else "loc"
            selector = ast.Subscript(
                value=ast.Attribute(value=copy.copy(X), attr=indexer, ctx=ast.Load()),
                slice=ast.Tuple(elts=[ast.Slice(), key], ctx=ast.Load()),
                ctx=ast.Load(),
            )
        else:
            selector = ast.Subscript(
                value=copy.copy(X), slice=ast.Tuple(elts=[ast.Slice(), key], ctx=ast.Load()), ctx=ast.Load()
            )
        selected = _safe_indexing(value, columns, axis=1)
        branch_hint = _branch_hint(ct, hint, name)
        if _is_identity(trans):  # 'passthrough': the selected columns themselves
            out, out_value = ex.assign(f"X_{branch_hint}", selector), selected
        elif _is_composite(trans):
            sel_name = ex.assign(f"{branch_hint}_columns", selector)
            out, out_value = _step(
                ex, trans, branch_hint, f"{path}.transformers_[{positions[name]}][1]", sel_name, selected
            )
        else:
            receiver = ex.object(trans, branch_hint, f"{path}.transformers_[{positions[name]}][1]")
            out_value = trans.transform(selected)
            call = _call(receiver, "transform", selector)
            if not ct.sparse_output_ and sparse.issparse(out_value) and weight is None:
                out, out_value = ex.assign(f"X_{branch_hint}", _call(call, "toarray")), out_value.toarray()
            else:
                out = ex.assign(f"X_{branch_hint}", call)
        out, out_value = _weighted(ex, out, out_value, weight, branch_hint)
        _two_dimensional(name, out_value)
        if ct.sparse_output_:
            if not _always_numeric(trans, out_value):  # _hstack's conversion to a numeric array
                checker = ex.ctx.bind(numeric_output, "numeric_output")
                converted = ast.Call(func=checker, args=[out], keywords=[])
                out = ex.assign(f"{out.id}_numeric", converted)
                out_value = check_array(out_value, accept_sparse=True, ensure_all_finite=False)
        elif sparse.issparse(out_value):
            out = ex.assign(f"{out.id}_dense", _call(out, "toarray"))
            out_value = out_value.toarray()
        names.append(out)
        values.append(out_value)
    if not names:
        raise _NotExpandable("no transformer selects any column (scikit-learn returns an empty array)")
    if mode == "pandas":
        return _pandas_stack(ex, ct, hint, names, values)
    if ct.sparse_output_:
        stacked = _call(
            _call(ex.module(sparse, "sparse"), "hstack", ast.List(elts=names, ctx=ast.Load())), "tocsr"
        )
        result = sparse.hstack(values).tocsr()
    else:
        stacked = _call(ex.module(np, "np"), "hstack", ast.List(elts=names, ctx=ast.Load()))
        result = np.hstack(values)
    return ex.assign(f"X_{hint}", stacked), result


def unique_columns(frame: Any, composite: Any) -> Any:
    """``frame`` itself, the input an expanded ``ColumnTransformer`` selects from, when it is not a
    DataFrame or its column labels are unique (the usual case: a set of the labels, cheaper than
    ``columns.is_unique``, which builds the label index of every new frame).

    scikit-learn validates a frame's column labels before it selects any column, and refuses
    duplicates (narwhals' ``DuplicateError`` or a ``ValueError``, depending on the version), while
    the expansion's selections by label would select around them. With duplicates the composite's
    own ``transform`` runs, so its error (type and message) is the one raised; should a version
    accept them, :class:`~willow.errors.DuplicateColumnsError` is raised instead (a served
    pipeline then runs the original function)."""
    if type(frame) is not pd.DataFrame:
        return frame
    labels = frame.columns.tolist()
    if len(set(labels)) == len(labels) or frame.columns.is_unique:
        return frame
    composite.transform(frame)
    from willow.errors import DuplicateColumnsError

    repeated = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
    raise DuplicateColumnsError(
        f"Expected unique column labels in the DataFrame given to the {type(composite).__name__}, found "
        f"{', '.join(repeated)} more than once; scikit-learn's transform accepted them, which willow's "
        "expansion (selections by label) does not reproduce. Rename or drop the duplicate columns."
    )


def numeric_output(out: Any) -> Any:
    """``check_array(out, accept_sparse=True, ensure_all_finite=False)``, the conversion a sparse
    ``ColumnTransformer`` applies to each output, without its validation overhead where it would
    return ``out`` itself: a 2-D sparse matrix of numbers with at least one row and one column (a
    vectorizer's output). Anything else goes through ``check_array`` (conversions and errors)."""
    import scipy.sparse as sparse

    if (
        sparse.issparse(out)
        and out.ndim == 2
        and out.shape[0] > 0
        and out.shape[1] > 0
        and out.dtype.kind in "fiu"
    ):
        return out
    from sklearn.utils.validation import check_array

    return check_array(out, accept_sparse=True, ensure_all_finite=False)


def _always_numeric(trans: Any, value: Any) -> bool:
    """Whether ``check_array(out, accept_sparse=True, ensure_all_finite=False)``, which a sparse
    ``ColumnTransformer`` applies to each output, returns every output of ``trans`` unchanged: the
    transformer always returns a numeric array or sparse matrix (default output) and itself refuses
    0 rows, as ``check_array`` would."""
    import scipy.sparse as sparse
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, OrdinalEncoder, StandardScaler

    if type(trans) in (OneHotEncoder, OrdinalEncoder, StandardScaler, MinMaxScaler):
        always = True
    else:  # mean and median convert to float; the other strategies keep object input as it is
        always = type(trans) is SimpleImputer and trans.strategy in ("mean", "median")
    container = sparse.issparse(value) or type(value) is np.ndarray
    return always and container and value.dtype.kind in "fiu" and _output_is_default(trans)


def _is_identity(trans: Any) -> bool:
    """Whether ``trans.transform(X)`` returns ``X`` itself: the ``FunctionTransformer`` that
    scikit-learn puts in place of ``'passthrough'`` (no function, no validation, default output)."""
    from sklearn.preprocessing import FunctionTransformer

    return (
        type(trans) is FunctionTransformer
        and trans.func is None
        and not trans.validate
        and _output_is_default(trans)
    )


def _output_is_default(obj: Any) -> bool:
    try:
        return _output_mode(obj) == "default"
    except _NotExpandable:
        return False


# --------------------------------------------------------------------------- the pass


def _guard_root(expr: ast.expr, ctx: FrontEndContext) -> str | None:
    node = expr
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    if isinstance(node, ast.Name) and node.id in ctx.parameters and not ctx.is_local(node.id):
        return ast.unparse(expr)
    return None


def _hint(expr: ast.expr) -> str:
    """A readable name for the composite: the last attribute or key of the user's expression,
    in lower case (``PIPE`` -> ``pipe``)."""
    return _raw_hint(expr).lower()


def _raw_hint(expr: ast.expr) -> str:
    if isinstance(expr, ast.Name):
        return expr.id
    if isinstance(expr, ast.Attribute):
        return expr.attr
    if isinstance(expr, ast.Subscript) and isinstance(expr.slice, ast.Constant):
        return str(expr.slice.value)
    if isinstance(expr, ast.Subscript):
        return _raw_hint(expr.value)
    return "composite"


def _step_name(expr: ast.expr, obj: Any, ctx: FrontEndContext) -> str:
    """The name a composite gives ``obj`` (``pipe[-1]`` -> ``clf``), else a hint from ``expr``."""
    node = expr
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
        base = _resolve(node, ctx)
        if _is_composite(base):
            entries = getattr(base, "steps", None) or getattr(base, "transformer_list", None)
            entries = entries or getattr(base, "transformers_", [])
            for name, step, *_ in entries:
                if step is obj:
                    return name
    return _hint(expr)


class _Replace(ast.NodeTransformer):
    def __init__(self, replacements: dict[int, ast.expr]) -> None:
        self.replacements = replacements

    def visit(self, node: ast.AST) -> ast.AST:
        if id(node) in self.replacements:
            return ast.copy_location(self.replacements[id(node)], node)
        return super().visit(node)


def expand_composites(tree: ast.FunctionDef, ctx: FrontEndContext) -> ast.FunctionDef:
    """Expand every fitted ``Pipeline``/``FeatureUnion``/``ColumnTransformer`` call in ``tree`` into
    one statement per step and branch (see the module docstring)."""
    sites: list[_Site] = []
    receivers: list[tuple[ast.Attribute, Any, ast.stmt]] = []
    _find_sites(tree.body, ctx, sites, receivers)
    replacements: dict[int, ast.expr] = {}
    for func, obj, stmt in receivers:  # pipe.named_steps["clf"].predict(X) -> clf.predict(X)
        ex = _Expansion(ctx, stmt.lineno, _guard_root(func.value, ctx))
        replacements[id(func.value)] = ex.object(obj, _step_name(func.value, obj, ctx), "")
    inputs = _record_inputs(tree, ctx, sites) if sites else {}
    inserts: dict[int, list[ast.stmt]] = {}
    for site in sites:
        kind = type(site.composite).__name__
        where = f"line {site.call.lineno}: `{ast.unparse(site.call)}`"
        if site.number not in inputs:
            ctx.note(f"{where}: the calibration run did not reach this call, so the {kind} stays one call.")
            continue
        receiver = site.call.func.value  # type: ignore[attr-defined]
        ex = _Expansion(ctx, site.call.lineno, _guard_root(receiver, ctx))
        argument = site.call.args[0]
        if isinstance(argument, ast.Name):
            X = ast.Name(id=argument.id, ctx=ast.Load())
        else:
            X = ex.assign("X", _input_selection(argument, ex))
        saved = ex.checkpoint()
        try:
            _routing_disabled()
            if ex.guard_root is not None:  # the composite itself is checked too (not only its steps)
                ex.object(site.composite, _hint(receiver), "")
            result, _ = _expand(ex, site.composite, _hint(receiver), "", X, inputs[site.number], site.method)
        except _NotExpandable as exc:
            ex.rollback(saved)
            ctx.note(f"{where}: the {kind} stays one call: {exc}.")
            continue
        except Exception as exc:  # noqa: BLE001 - the composite itself fails here: keep its own call
            ex.rollback(saved)
            ctx.note(f"{where}: the {kind} stays one call: expanding it raised {type(exc).__name__}: {exc}.")
            continue
        replacements[id(site.call)] = ex.final_call or result
        inserts.setdefault(id(site.statement), []).extend(ex.statements)
        ctx.note(
            f"{where}: {kind} expanded into {len(ex.statements)} statements: "
            + "; ".join(ast.unparse(s) for s in ex.statements)
        )
    if not replacements:
        return tree
    tree = _Replace(replacements).visit(tree)
    _insert(tree, inserts)
    ast.fix_missing_locations(tree)
    return tree


def _insert(node: ast.AST, inserts: dict[int, list[ast.stmt]]) -> None:
    """Put each statement's expansion right before it, in whichever block holds it."""
    for name in ("body", "orelse", "finalbody"):
        block = getattr(node, name, None)
        if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
            new: list[ast.stmt] = []
            for stmt in block:
                new.extend(inserts.get(id(stmt), []))
                new.append(stmt)
                _insert(stmt, inserts)
            setattr(node, name, new)
    for child in getattr(node, "handlers", []) or []:
        _insert(child, inserts)
    for case in getattr(node, "cases", []) or []:
        _insert(case, inserts)
